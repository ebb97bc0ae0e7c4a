"""Streaming resamplers: one object per call per direction, state carried from frame to frame.

Every engine has the same small interface (``StreamResampler``): ``process`` (int16 in, int16 out),
``flush`` (the samples still withheld, at the end of a model turn; the stream then starts clean),
``reset`` (drop them, on barge-in), ``ratio``, ``rate_in``/``rate_out``; and its float64 core,
``filter``/``flush_float``, that the transcoder uses to fuse G.711 with resampling. Engines:

- ``fir`` (the default): polyphase FIR filters designed for the telephone band (``fir.py``): 1.5 ms of
  delay, flat within ±0.1 dB to 3.4 kHz, ≥ 90 dB rejection of aliases and images, and many calls can be
  filtered in one matrix product (``batched``).
- ``sinc_fastest``, ``sinc_medium``, ``sinc_best``: libsamplerate (python-samplerate), kept for
  comparison and as a fallback. Its converters withhold a few samples at each call; ``flush`` pushes
  silence through and cuts the output where the real input ends.

Samples come back rounded and clipped, never wrapped.
"""

from __future__ import annotations

from functools import cache
from typing import Protocol

import numpy as np

from common import fir
from common.g711 import float_to_int16
from common.settings import RESAMPLERS as ENGINES  # the names BRIDGE_RESAMPLER accepts: "fir" first

DEFAULT_ENGINE = ENGINES[0]
SCALE = 32768.0
FLUSH_PAD = 512  # input samples of silence: more than any sinc converter's half-length at our ratios


class StreamResampler(Protocol):
    rate_in: int
    rate_out: int
    ratio: float
    batched: bool  # True: ``fir.filter_many`` can run many of these at once

    def process(self, pcm: np.ndarray) -> np.ndarray: ...
    def flush(self) -> np.ndarray: ...
    def reset(self) -> None: ...
    def filter(self, x: np.ndarray) -> np.ndarray: ...
    def flush_float(self) -> np.ndarray: ...


class SincResampler:
    """libsamplerate, one converter per stream."""

    batched = False

    def __init__(self, rate_in: int, rate_out: int, converter: str = "sinc_medium"):
        import samplerate  # only when chosen: the default engine needs nothing but numpy

        self.rate_in, self.rate_out, self.converter = rate_in, rate_out, converter
        self.ratio = rate_out / rate_in
        self._engine = samplerate.Resampler(converter, channels=1)
        self._taken = 0  # input samples since the last flush/reset
        self._given = 0  # output samples since then

    def filter(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0)
        y = self._engine.process(np.asarray(x, np.float32) / SCALE, self.ratio, end_of_input=False)
        self._taken += len(x)
        self._given += len(y)
        return y.astype(np.float64) * SCALE

    def process(self, pcm: np.ndarray) -> np.ndarray:
        return float_to_int16(self.filter(pcm))

    def flush_float(self) -> np.ndarray:
        """The held-back samples only come out when more input pushes them through the filter, so
        silence is fed in and the output cut where the real input ends (ratio × samples taken)."""
        due = int(round(self._taken * self.ratio)) - self._given
        tail = self._engine.process(np.zeros(FLUSH_PAD, np.float32), self.ratio, end_of_input=True)
        self.reset()
        return tail[:max(due, 0)].astype(np.float64) * SCALE

    def flush(self) -> np.ndarray:
        return float_to_int16(self.flush_float())

    def reset(self) -> None:
        self._engine.reset()
        self._taken = self._given = 0


@cache
def _design(name: str) -> fir.FirDesign:
    return fir.FirDesign(name)


def make(name: str, engine: str = DEFAULT_ENGINE) -> StreamResampler:
    """A resampler for one of our ratios (``up_8k_to_16k``, ``down_24k_to_8k``, ``up_16k_to_24k``)."""
    if engine == "fir":
        return fir.FirResampler(_design(name))
    if engine in ENGINES:
        rate_in, rate_out = _design(name).rate_in, _design(name).rate_out
        return SincResampler(rate_in, rate_out, engine)
    raise ValueError(f"unknown resampler engine {engine!r} (known: {', '.join(ENGINES)})")


def up_8k_to_16k(engine: str = DEFAULT_ENGINE) -> StreamResampler:
    return make("up_8k_to_16k", engine)


def down_24k_to_8k(engine: str = DEFAULT_ENGINE) -> StreamResampler:
    return make("down_24k_to_8k", engine)


def up_16k_to_24k(engine: str = DEFAULT_ENGINE) -> StreamResampler:
    return make("up_16k_to_24k", engine)


def one_shot(name: str, pcm: np.ndarray, engine: str = DEFAULT_ENGINE) -> np.ndarray:
    """A whole signal at once, unrounded float64 on the int16 scale (the stream's output, flushed)."""
    r = make(name, engine)
    return np.concatenate([r.filter(pcm), r.flush_float()])
