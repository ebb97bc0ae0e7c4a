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


def level_db(pcm: np.ndarray) -> float:
    power = float(np.dot(pcm, pcm)) / max(len(pcm), 1) / FULL_SCALE ** 2
    return 10 * np.log10(power + 1e-12)


class BargeInDetector:
    def __init__(self, floor_db: float = -40.0, echo_margin_db: float = 15.0, onset_ms: int = 160,
                 release_ms: int = 300, echo_memory_s: float = 3.0):
        self.floor_db, self.echo_margin_db, self.echo_memory_s = floor_db, echo_margin_db, echo_memory_s
        self.onset_frames, self.release_frames = onset_ms // 20, release_ms // 20
        self._out: deque[tuple[float, float]] = deque()  # (time, dB) of the model's recent audio
        self._rest = np.zeros(0, dtype=np.float64)
        self._loud = 0
        self._quiet = 0
        self._speaking = False

    def model_audio(self, pcm24: bytes, now: float) -> None:
        if pcm24:
            self._out.append((now, level_db(np.frombuffer(pcm24, dtype="<i2").astype(np.float64))))

    def caller_audio(self, pcm16: bytes, now: float) -> bool:
        """Feed the caller's audio; True when a new stretch of speech has just begun."""
        samples = np.concatenate([self._rest, np.frombuffer(pcm16, dtype="<i2").astype(np.float64)])
        whole = len(samples) // FRAME * FRAME
        self._rest = samples[whole:]
        threshold = max(self.floor_db, self._echo_db(now) - self.echo_margin_db)
        onset = False
        for frame in samples[:whole].reshape(-1, FRAME):
            onset |= self._frame(level_db(frame) > threshold)
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

    def _echo_db(self, now: float) -> float:
        while self._out and self._out[0][0] < now - self.echo_memory_s:
            self._out.popleft()
        return max((db for _, db in self._out), default=-120.0)
