"""What the emulated model says back (pure): a ``Reply`` of 24 kHz PCM16 audio and its transcript.

- ``echo`` (the default): the caller's utterance, resampled 16 → 24 kHz. Tests and the softphone can
  then find exactly what they sent in what came back (cross-correlation), with a known delay.
- ``tone``: a short 440 Hz tone, whatever was said.
- ``silent``: no reply at all (for idle-watchdog and timeout tests).

Text input (``realtime_input.text`` or ``client_content`` turns) has no audio to echo: ``echo``
answers it with the tone and the text itself as the transcript.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common import resample
from common.g711 import float_to_pcm16
from common.settings import PERSONAS  # the names EMULATOR_PERSONA accepts

INPUT_RATE = 16000
OUTPUT_RATE = 24000
TONE_HZ = 440.0
TONE_S = 0.6
TONE_PEAK = 0.25  # -12 dBFS
FADE_S = 0.01  # raised-cosine ramps, so the tone starts and stops without a click
MAX_TEXT = 2000  # characters of text input echoed back (keeps every transcript frame small)


@dataclass(frozen=True)
class Reply:
    audio: bytes  # PCM16 LE mono 24 kHz
    text: str  # the output transcription

    @property
    def seconds(self) -> float:
        return len(self.audio) / (2 * OUTPUT_RATE)


def heard(utterance: bytes) -> str:
    """The input transcription of an utterance: the emulator cannot recognise words, so it says how
    much speech it heard."""
    return f"({len(utterance) / (2 * INPUT_RATE):.1f} s of speech)"


def reply(persona: str, utterance: bytes) -> Reply | None:
    """The model's turn after the caller said ``utterance`` (PCM16 16 kHz), or None for no turn."""
    if persona == "echo":
        audio = echo(utterance)
        return Reply(audio, f"(echo of {len(audio) / (2 * OUTPUT_RATE):.1f} s)")
    return _fixed(persona)


def reply_to_text(persona: str, text: str) -> Reply | None:
    """The model's turn after the client sent ``text``."""
    if persona == "echo":
        return Reply(tone(), text[:MAX_TEXT])
    return _fixed(persona)


def _fixed(persona: str) -> Reply | None:
    if persona == "tone":
        return Reply(tone(), "(tone)")
    if persona == "silent":
        return None
    raise ValueError(f"unknown persona {persona!r} (known: {', '.join(PERSONAS)})")


def echo(utterance: bytes) -> bytes:
    """16 → 24 kHz in one shot (the whole utterance is at hand, so no stream state) with the transcoder's
    own FIR engine (0–7 kHz flat, images ≥ 90 dB down, time-aligned), so a round trip measures the
    transcoder, not this stand-in. Rounded and clipped to int16: a band-limited resampler may overshoot
    full scale, and a wrapped sample is a loud click."""
    x = np.frombuffer(utterance[: len(utterance) // 2 * 2], dtype="<i2")
    if len(x) == 0:
        return b""
    return float_to_pcm16(resample.one_shot("up_16k_to_24k", x))


def tone(seconds: float = TONE_S, hz: float = TONE_HZ) -> bytes:
    n = round(seconds * OUTPUT_RATE)
    t = np.arange(n) / OUTPUT_RATE
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / FADE_S) if n else t
    envelope = 0.5 - 0.5 * np.cos(np.pi * ramp)
    y = TONE_PEAK * envelope * np.sin(2 * np.pi * hz * t)
    return np.round(y * 32767).astype("<i2").tobytes()
