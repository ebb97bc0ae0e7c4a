"""Local barge-in detection: the caller starting to speak while the model's audio may be playing.

Gemini finishes generating faster than real time, so while Twilio is still playing a turn the
service often has nothing left to interrupt and sends no ``interrupted``. This detector hears the
caller instead. A 20 ms frame counts as speech when it is louder than a floor (line noise stays
below it) and not within ``echo_margin_db`` of the model's own recent output level (an echo of the
model's voice on the line is attenuated by the handset and the network's echo canceller). Speech
must last ``onset_ms`` to count, so clicks and short bursts do not clear the playback.
"""

from __future__ import annotations

from collections import deque

import numpy as np

FRAME = 320  # 20 ms of 16 kHz PCM16
FULL_SCALE = 32768.0
SILENT = 1e-12  # the power of "nothing": −120 dB


def power(pcm: np.ndarray) -> float:
    """Mean square, full scale = 1 (levels are compared as powers: no logarithm per frame)."""
    return float(np.dot(pcm, pcm)) / max(len(pcm), 1) / FULL_SCALE ** 2 + SILENT


def from_db(db: float) -> float:
    return 10 ** (db / 10)


class BargeInDetector:
    def __init__(self, floor_db: float = -40.0, echo_margin_db: float = 15.0, onset_ms: int = 160,
                 release_ms: int = 300, echo_memory_s: float = 3.0):
        self.floor, self.echo_margin = from_db(floor_db), from_db(echo_margin_db)
        self.echo_memory_s = echo_memory_s
        self.onset_frames, self.release_frames = onset_ms // 20, release_ms // 20
        # The model's recent output as (time, power), powers decreasing from the front: the front is
        # the loudest of the last ``echo_memory_s`` (a sliding-window maximum, O(1) per frame).
        self._out: deque[tuple[float, float]] = deque()
        self._rest = np.zeros(0, dtype=np.float64)
        self._loud = 0
        self._quiet = 0
        self._speaking = False

    def model_audio(self, pcm24: bytes, now: float) -> None:
        if pcm24:
            level = power(np.frombuffer(pcm24, dtype="<i2").astype(np.float64))
            while self._out and self._out[-1][1] <= level:
                self._out.pop()  # never the loudest again: this one is as loud and outlives it
            self._out.append((now, level))

    def caller_audio(self, pcm16: bytes, now: float) -> bool:
        """Feed the caller's audio; True when a new stretch of speech has just begun."""
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
        if len(self._rest):
            samples = np.concatenate([self._rest, samples])
        whole = len(samples) // FRAME * FRAME
        self._rest = samples[whole:]
        threshold = max(self.floor, self._echo_power(now) / self.echo_margin)
        onset = False
        for start in range(0, whole, FRAME):
            onset |= self._frame(power(samples[start:start + FRAME]) > threshold)
        return onset

    def _frame(self, loud: bool) -> bool:
        if loud:
            self._loud, self._quiet = self._loud + 1, 0
        else:
            self._quiet += 1
            if self._quiet >= self.release_frames:
                self._loud, self._speaking = 0, False
        if not self._speaking and self._loud >= self.onset_frames:
            self._speaking = True
            return True
        return False

    def _echo_power(self, now: float) -> float:
        while self._out and self._out[0][0] < now - self.echo_memory_s:
            self._out.popleft()
        return self._out[0][1] if self._out else SILENT
