"""Streaming resamplers: one object per call per direction, state carried from frame to frame.

The engine for now is libsamplerate (python-samplerate). Its sinc converters withhold a few samples
at each call; ``flush`` returns them at the end of a model turn so no audio is lost, and ``reset``
drops them on barge-in so no tail of an interrupted turn leaks into the next one.
Samples travel as float32 on the int16 scale divided by 32768, and come back clipped, never wrapped.
"""

from __future__ import annotations

import numpy as np
import samplerate

from transcoder.g711 import float_to_int16

SCALE = 32768.0
_EMPTY = np.zeros(0, dtype=np.int16)
FLUSH_PAD = 512  # input samples of silence: more than any sinc converter's half-length at our ratios


class StreamResampler:
    def __init__(self, rate_in: int, rate_out: int, converter: str = "sinc_medium"):
        self.rate_in, self.rate_out, self.converter = rate_in, rate_out, converter
        self.ratio = rate_out / rate_in
        self._engine = samplerate.Resampler(converter, channels=1)
        self._taken = 0  # input samples since the last flush/reset
        self._given = 0  # output samples since then

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """int16 in, int16 out; may hold back a few samples until more input or ``flush``."""
        if len(pcm) == 0:
            return _EMPTY
        x = pcm.astype(np.float32) / SCALE
        y = self._engine.process(x, self.ratio, end_of_input=False)
        self._taken += len(pcm)
        self._given += len(y)
        return float_to_int16(y * SCALE)

    def flush(self) -> np.ndarray:
        """Everything still held back, as int16; the next call starts from clean state.

        The held-back samples only come out when more input pushes them through the filter, so
        silence is fed in and the output cut where the real input ends (ratio × samples taken).
        """
        due = int(round(self._taken * self.ratio)) - self._given
        pad = np.zeros(FLUSH_PAD, dtype=np.float32)
        tail = self._engine.process(pad, self.ratio, end_of_input=True)
        self.reset()
        return float_to_int16(tail[:max(due, 0)] * SCALE)

    def reset(self) -> None:
        self._engine.reset()
        self._taken = self._given = 0


def up_8k_to_16k(converter: str = "sinc_medium") -> StreamResampler:
    return StreamResampler(8000, 16000, converter)


def down_24k_to_8k(converter: str = "sinc_medium") -> StreamResampler:
    return StreamResampler(24000, 8000, converter)


def up_16k_to_24k(converter: str = "sinc_medium") -> StreamResampler:
    return StreamResampler(16000, 24000, converter)
