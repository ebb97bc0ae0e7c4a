"""Deterministic speech-like test signals for the softphone.

A formant synthesiser in miniature: a glottal source built as a sum of harmonics of a slowly wandering
f0 (120–220 Hz), each harmonic weighted by a cascade of three vowel-like resonances that glide from
syllable to syllable, under a 3–5 Hz syllabic envelope. Building it harmonic by harmonic keeps it
band-limited by construction: nothing is generated outside the telephone band (300–3400 Hz), so
µ-law and the 8/16/24 kHz resamplers see what a phone line would carry.

Why not a tone or noise: an energy VAD must hear it as voice, and cross-correlating what was sent with
what came back must have one clear peak. f0, syllable lengths and vowels are random (seeded), so the
signal never repeats itself over long stretches the way a tone or a fixed pulse train would.
"""

from __future__ import annotations

import numpy as np

BAND_HZ = (300.0, 3400.0)  # the telephone band
PEAK = 0.5  # -6 dBFS
F0_RANGE_HZ = (120.0, 220.0)
SYLLABLE_S = (0.2, 0.33)  # 3–5 syllables a second
# (F1, F2, F3) of a few vowels (Peterson & Barney averages) and the resonances' bandwidths.
VOWELS_HZ = np.array([(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480),
                      (570, 840, 2410), (660, 1720, 2410)], dtype=np.float64)
BANDWIDTHS_HZ = np.array([90.0, 120.0, 170.0])


def silence(seconds: float, rate: int = 8000) -> np.ndarray:
    """Digital silence, int16."""
    return np.zeros(round(seconds * rate), dtype=np.int16)


def speech_like(seconds: float, seed: int = 0, rate: int = 8000) -> np.ndarray:
    """``seconds`` of voiced, speech-like int16 audio at ``rate`` Hz, peaking at -6 dBFS; same seed,
    same samples."""
    n = round(seconds * rate)
    if n <= 0:
        return np.zeros(0, dtype=np.int16)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    f0 = _wander(rng, t, rate, knots_hz=3.0, low=F0_RANGE_HZ[0], high=F0_RANGE_HZ[1])
    envelope, formants = _syllables(rng, t)
    signal = _harmonics(f0, formants, rate) * envelope
    peak = float(np.max(np.abs(signal))) or 1.0
    return np.round(signal * (PEAK * 32767 / peak)).astype(np.int16)


def _wander(rng: np.random.Generator, t: np.ndarray, rate: int, knots_hz: float, low: float,
            high: float) -> np.ndarray:
    """A smooth random contour between ``low`` and ``high`` (random knots, linearly joined, smoothed)."""
    knot_t = np.arange(0.0, t[-1] + 2.0 / knots_hz, 1.0 / knots_hz)
    contour = np.interp(t, knot_t, rng.uniform(low, high, len(knot_t)))
    width = max(1, int(rate / knots_hz / 2))  # half a knot spacing takes the corners off
    padded = np.pad(contour, (width, width), mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="same")[width:width + len(t)]


def _syllables(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The syllabic envelope (a raised-cosine hump per syllable, random length and loudness) and the
    per-sample formant frequencies gliding between one random vowel per syllable."""
    bounds = [0.0]
    while bounds[-1] < t[-1]:
        bounds.append(bounds[-1] + rng.uniform(*SYLLABLE_S))
    bounds = np.array(bounds)
    index = np.clip(np.searchsorted(bounds, t, side="right") - 1, 0, len(bounds) - 2)
    start, length = bounds[index], np.diff(bounds)[index]
    loudness = rng.uniform(0.55, 1.0, len(bounds) - 1)[index]
    # A floor keeps the voicing continuous through syllable joins, as in connected speech.
    envelope = loudness * (0.15 + 0.85 * np.sin(np.pi * (t - start) / length) ** 2)
    centres = (bounds[:-1] + bounds[1:]) / 2
    vowels = VOWELS_HZ[rng.integers(0, len(VOWELS_HZ), len(centres))]
    formants = np.stack([np.interp(t, centres, vowels[:, i]) for i in range(3)])
    return envelope, formants


def _harmonics(f0: np.ndarray, formants: np.ndarray, rate: int) -> np.ndarray:
    """Sum of the harmonics of ``f0`` that fall in the telephone band, each weighted by the source's
    1/h tilt and the cascade of formant resonances at its frequency."""
    phase = 2 * np.pi * np.cumsum(f0) / rate
    top = min(BAND_HZ[1], 0.45 * rate)
    out = np.zeros(len(f0))
    for h in range(1, int(top / F0_RANGE_HZ[0]) + 1):
        freq = h * f0
        gain = _resonances(freq, formants) / h * _band_edges(freq, top)
        out += gain * np.sin(h * phase)
    return out


def _resonances(freq: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Magnitude of a cascade of second-order resonators (unity gain at DC), as in a Klatt synthesiser."""
    gain = np.ones_like(freq)
    for centre, bandwidth in zip(formants, BANDWIDTHS_HZ):
        ratio = freq / centre
        gain /= np.sqrt((1 - ratio**2) ** 2 + (freq * bandwidth / centre**2) ** 2)
    return gain


def _band_edges(freq: np.ndarray, top: float) -> np.ndarray:
    """Telephone-band shaping: second-order roll-off below 300 Hz (the fundamental is mostly removed,
    as on a real line) and nothing at or above ``top``."""
    low = np.minimum(1.0, (freq / BAND_HZ[0]) ** 2)
    return np.where(freq < top, low, 0.0)
