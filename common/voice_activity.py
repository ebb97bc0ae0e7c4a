"""An energy voice-activity detector over 16 kHz PCM16, standing in for Gemini's server-side VAD (pure):
the emulator's, and the bench's echo model's (bench/echo_model.py).

Audio is cut into 20 ms frames (any chunking of the input gives the same result: the detector is a
function of the samples alone). A frame is loud when its RMS is above ``START_DBFS`` (``HOLD_DBFS``
once speech has started: hysteresis, so syllable joins do not end a turn). The two setup knobs keep
the meaning the SDK documents for them:

- ``prefix_padding_ms``: how long loud frames must run before start-of-speech is committed;
- ``silence_duration_ms``: how long quiet frames must run before end-of-speech is committed.

The utterance handed on starts ``PREROLL_MS`` before the first loud frame of the run that started
speech (so a soft onset is not clipped) and ends ``TAIL_MS`` after the last loud frame (the committed
silence itself is not part of it). With activity detection disabled, the client's ``activityStart`` /
``activityEnd`` bound the utterance instead, and nothing is trimmed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

RATE = 16000
FRAME_MS = 20
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2
START_DBFS = -40.0
HOLD_DBFS = -45.0
PREROLL_MS = 40
TAIL_MS = 40
MAX_UTTERANCE_S = 60  # longer speech is cut at this length (the turn still waits for the silence)
DEFAULT_SILENCE_MS = 500
DEFAULT_PREFIX_MS = 60


@dataclass(frozen=True)
class VadConfig:
    silence_ms: int = DEFAULT_SILENCE_MS
    prefix_ms: int = DEFAULT_PREFIX_MS
    disabled: bool = False


@dataclass(frozen=True)
class SpeechStarted:
    pass


@dataclass(frozen=True)
class SpeechEnded:
    utterance: bytes  # PCM16 16 kHz

    @property
    def seconds(self) -> float:
        return len(self.utterance) / (2 * RATE)


def _frames(ms: int) -> int:
    return max(1, math.ceil(ms / FRAME_MS))


def _level(dbfs: float) -> float:
    return 32768.0 * 10 ** (dbfs / 20)


class EnergyVad:
    """Feed audio, get ``SpeechStarted`` / ``SpeechEnded`` events back, in order."""

    def __init__(self, config: VadConfig = VadConfig()):
        self.config = config
        self._start_frames = _frames(config.prefix_ms)
        self._silence_frames = _frames(config.silence_ms)
        self._tail_frames = _frames(TAIL_MS)
        self._max_frames = MAX_UTTERANCE_S * 1000 // FRAME_MS
        self._pending = b""
        self._recent: deque[bytes] = deque(maxlen=self._start_frames + _frames(PREROLL_MS))
        self._loud_run = 0
        self._utterance: list[bytes] | None = None  # None: not in speech
        self._quiet_run = 0
        self._manual = False

    @property
    def speaking(self) -> bool:
        return self._utterance is not None

    def feed(self, pcm: bytes) -> list[SpeechStarted | SpeechEnded]:
        data = self._pending + pcm
        whole = len(data) - len(data) % FRAME_BYTES
        self._pending = data[whole:]
        events: list[SpeechStarted | SpeechEnded] = []
        for i in range(0, whole, FRAME_BYTES):
            events.extend(self._frame(data[i:i + FRAME_BYTES]))
        return events

    def activity_start(self) -> list[SpeechStarted | SpeechEnded]:
        """The client says speech starts now (manual activity signalling)."""
        self._manual = True
        if self.speaking:
            return []
        self._utterance, self._quiet_run = [], 0
        return [SpeechStarted()]

    def activity_end(self) -> list[SpeechStarted | SpeechEnded]:
        """The client says speech ended (``activityEnd``): the utterance is everything since the start."""
        self._manual = False
        return [self._end(trim=False)] if self.speaking else []

    def stream_end(self) -> list[SpeechStarted | SpeechEnded]:
        """The client's audio stream ended (``audioStreamEnd``): end any speech now, without waiting for
        the silence."""
        trim, self._manual, self._pending = not self._manual, False, b""
        return [self._end(trim=trim)] if self.speaking else []

    def _frame(self, frame: bytes) -> list[SpeechStarted | SpeechEnded]:
        if self._utterance is not None:
            return self._in_speech(frame)
        self._recent.append(frame)
        if self.config.disabled:
            return []
        self._loud_run = self._loud_run + 1 if self._loud(frame, START_DBFS) else 0
        if self._loud_run < self._start_frames:
            return []
        self._utterance, self._quiet_run, self._loud_run = list(self._recent), 0, 0
        self._recent.clear()
        return [SpeechStarted()]

    def _in_speech(self, frame: bytes) -> list[SpeechEnded]:
        if len(self._utterance) < self._max_frames:
            self._utterance.append(frame)
        if self._manual or self.config.disabled:
            return []
        self._quiet_run = 0 if self._loud(frame, HOLD_DBFS) else self._quiet_run + 1
        if self._quiet_run < self._silence_frames:
            return []
        return [self._end(trim=True)]

    def _end(self, trim: bool) -> SpeechEnded:
        frames = self._utterance
        if trim and len(frames) < self._max_frames:  # a capped utterance may not end in its silence
            keep = max(0, self._quiet_run - self._tail_frames)
            frames = frames[:len(frames) - keep] if keep else frames
        self._utterance, self._quiet_run = None, 0
        return SpeechEnded(b"".join(frames))

    @staticmethod
    def _loud(frame: bytes, dbfs: float) -> bool:
        # RMS ≥ level, as energy ≥ level² × n: one dot product, the cheapest numpy call for a frame.
        x = np.frombuffer(frame, dtype="<i2").astype(np.float64)
        return float(x @ x) >= _level(dbfs) ** 2 * len(x)
