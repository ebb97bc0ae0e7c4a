"""G.711 µ-law in numpy, bit-exact with the ITU-T G.191 reference (no audioop: gone in Python 3.13,
and its encoder differs from the reference on 508 negative inputs).

Both directions are table lookups built once at import from the reference algorithm: decoding
indexes a 256-entry table with the bytes; encoding indexes a 65536-entry table with the samples'
uint16 view, so any int16 maps in one vectorised step.
"""

from __future__ import annotations

import numpy as np

ULAW_SILENCE = 0xFF  # the code for 0


def _expand(code: np.ndarray) -> np.ndarray:
    """G.191 ulaw_expand: code byte → linear sample (16-bit scale, ±32124)."""
    inverted = ~code & 0xFF
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    step = 4 << (exponent + 1)
    magnitude = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    return np.where(code < 0x80, -magnitude, magnitude)


def _compress(x: np.ndarray) -> np.ndarray:
    """G.191 ulaw_compress: linear sample → code byte (the reference works on 14 bits, x >> 2)."""
    absno = np.where(x < 0, ((~x) >> 2) + 33, (x >> 2) + 33)
    absno = np.minimum(absno, 0x1FFF)
    segment = np.zeros_like(absno)
    for shift in range(1, 9):  # segno = 1 + number of significant bits of absno >> 6
        segment = np.where((absno >> 6) >> (shift - 1) > 0, shift, segment)
    segment += 1
    high = 0x08 - segment
    low = 0x0F - ((absno >> segment) & 0x0F)
    code = (high << 4) | low
    return np.where(x >= 0, code | 0x80, code)


_DECODE = _expand(np.arange(256, dtype=np.int32)).astype(np.int16)
_ENCODE = _compress(np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
                    ).astype(np.uint8)


# The float paths of the FIR resampler: decode straight to float64, and encode float samples through
# tables indexed by the rounded sample offset by WIDE, which saturate instead of needing a clip.
WIDE = 1 << 17  # float samples in (-WIDE, WIDE) index the wide tables directly (filters overshoot 2x)
DECODE_FLOAT = _DECODE.astype(np.float64)
CLIP_WIDE = np.clip(np.arange(-WIDE, WIDE), -32768, 32767).astype("<i2")
ENCODE_WIDE = _ENCODE[CLIP_WIDE.view("<u2")]


def wide_index(y: np.ndarray) -> np.ndarray:
    """Float samples, |y| < WIDE, rounded half up, as indices into CLIP_WIDE and ENCODE_WIDE."""
    return (y + (WIDE + 0.5)).astype(np.intp)


def float_to_pcm16(y: np.ndarray) -> bytes:
    """Float samples on the int16 scale (|y| < WIDE) → rounded, saturated, PCM16 LE bytes."""
    return CLIP_WIDE[wide_index(y)].tobytes()


def float_to_ulaw(y: np.ndarray) -> bytes:
    """Float samples on the int16 scale (|y| < WIDE) → rounded, saturated, µ-law bytes."""
    return ENCODE_WIDE[wide_index(y)].tobytes()


def decode_ulaw(data: bytes) -> np.ndarray:
    """µ-law bytes → int16 samples."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)]


def encode_ulaw(pcm: np.ndarray) -> bytes:
    """int16 samples → µ-law bytes."""
    return _ENCODE[np.ascontiguousarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """Round float samples on the int16 scale and clip, never wrap (a wrapped peak is a loud click)."""
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
