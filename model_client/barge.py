"""Local barge-in detection: the caller starting to speak while the model's audio is playing.

Gemini finishes generating faster than real time, so while Twilio is still playing a turn the
service often has nothing left to interrupt and sends no ``interrupted``. This detector hears the
caller instead, and only while the model's audio may still be playing (``playing``): the model's
chunks are laid end to end from their arrival, as the caller hears them. Between turns it only keeps
the line's noise level, one dot product a frame.

A 20 ms frame is speech when all of these hold:

- it is louder than an absolute floor, and than the line's own noise by ``noise_margin_db`` (the
  noise level follows the quieter frames: it falls faster than it rises, so a caller's speech hardly
  lifts it and steady babble, hum or hiss is measured, not heard as a voice);
- it is not within ``echo_margin_db`` of the model's own level (the echo of the model's voice on the
  line comes back attenuated by the handset and the network's echo canceller);
- a voice-activity detector (``voice``, WebRTC's by default) hears a voice in it.

Speech must then run ``confirm_ms`` (gaps up to ``gap_ms`` bridged) before it counts, and the frames
that begin and confirm the run must be ``over_before_db`` louder than the line was in the
``before_ms`` before the run began (a voice over the line, not the swing of babble or of a burst of
noise). "Uh-huh", "mm-hm", "okay" and clicks are shorter and do not clear the playback, nor does one
that a swell of noise drags on past ``confirm_ms``; a caller who keeps talking does.
For ``guard_ms`` from the start of each model turn nothing counts: the line's echo canceller is still
converging on the new sound, and the echo's level is not known yet.
"""

from __future__ import annotations

from collections import deque
from itertools import takewhile
from operator import itemgetter
from typing import Callable

import numpy as np
import webrtcvad

RATE = 16000
FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16
FRAME_S = 0.02
MODEL_BYTES_PER_S = 48000  # the model's audio: 24 kHz PCM16
FULL_SCALE = 32768.0
SILENT = 1e-12  # the power of "nothing": −120 dB
PLAYOUT_TAIL_S = 1.0  # the gateway's and Twilio's buffers: the model may still be heard this much later
NOISE_RISE_DB_PER_S = 1.0
ECHO_AHEAD_S = 0.1
NOISE_RESET = 10 ** (-15 / 10)  # 15 dB under the noise level
BEFORE_MS = 200  # the line just before a run of speech: what its first and confirming frames stand out from
OVER_BEFORE_DB = 6.0  # by this much (a voice over the line, not the line's own swing)

Voice = Callable[[bytes], bool]  # 20 ms of 16 kHz PCM16 -> a voice in it?


def power(pcm: np.ndarray) -> float:
    """Mean square, full scale = 1 (levels are compared as powers: no logarithm per frame)."""
    return float(np.dot(pcm, pcm)) / max(len(pcm), 1) / FULL_SCALE ** 2 + SILENT


def from_db(db: float) -> float:
    return 10 ** (db / 10)


def webrtc_voice(mode: int = 3) -> Voice:
    """WebRTC's VAD (Gaussian mixtures over six sub-bands), mode 3: the least ready to call noise a voice."""
    vad = webrtcvad.Vad(mode)
    return lambda frame: vad.is_speech(frame, RATE)


def any_sound(frame: bytes) -> bool:
    """No voice detector: every frame loud enough is taken as speech (the energy detector alone)."""
    return True


class BargeInDetector:
    def __init__(self, *, voice: Voice | None = None, floor_db: float = -50.0, echo_margin_db: float = 15.0,
                 noise_margin_db: float = 9.0, confirm_ms: int = 400, gap_ms: int = 300, guard_ms: int = 200,
                 echo_back_s: float = 0.6, only_while_playing: bool = True, noise_fall_db_per_s: float = 3.0,
                 over_before_db: float = OVER_BEFORE_DB, before_ms: int = BEFORE_MS):
        self.voice = voice or webrtc_voice()
        self.floor, self.echo_margin = from_db(floor_db), from_db(echo_margin_db)
        self.noise_margin = from_db(noise_margin_db)
        self.confirm_s, self.gap_s, self.guard_s = confirm_ms / 1000, gap_ms / 1000, guard_ms / 1000
        self.echo_back_s = echo_back_s
        self.over_before, self.before_s = from_db(over_before_db), before_ms / 1000
        self._recent: deque[tuple[float, float]] = deque()  # (frame end, power) of the frames lately heard
        self._before = SILENT  # the line's mean power just before the current run of speech began
        self.only_while_playing = only_while_playing
        self._noise_rise = from_db(NOISE_RISE_DB_PER_S * FRAME_S)
        self._noise_fall = from_db(-noise_fall_db_per_s * FRAME_S)
        # The model's audio as (plays from, plays until, power), in time order, from ``echo_back_s`` ago on.
        self._out: deque[tuple[float, float, float]] = deque()
        self._plays_until = float("-inf")  # when the model's audio received so far has played out
        self._turn_from = -1.0  # when the current model turn started playing
        self._cleared = False  # this detector barged in: the rest of the turn is dropped, not played
        self._noise = 0.0  # the line's noise power (0: not measured yet)
        self._pending = b""
        self._run_from: float | None = None  # the first speech frame of the current run
        self._last_speech = 0.0
        self._fired = False  # the current run has barged in already

    # --- the model's side ----------------------------------------------------------------------

    def model_audio(self, pcm24: bytes, now: float, *, new_turn: bool = False) -> None:
        if new_turn:
            self._cleared = False
            self._turn_from = max(now, self._plays_until)
        if not pcm24 or self._cleared:
            return
        start = max(now, self._plays_until)
        self._plays_until = start + len(pcm24) / MODEL_BYTES_PER_S
        self._out.append((start, self._plays_until, power(np.frombuffer(pcm24, dtype="<i2").astype(np.float64))))

    def stopped(self, now: float) -> None:
        """The model's audio was cleared (interrupted): nothing of it plays any more."""
        self._plays_until = min(self._plays_until, now)
        self._cleared = True

    def playing(self, now: float) -> bool:
        return now < self._plays_until + PLAYOUT_TAIL_S

    # --- the caller's side ---------------------------------------------------------------------

    def caller_audio(self, pcm16: bytes, now: float) -> bool:
        """Feed the caller's audio (``now``: when its last sample arrived); True when a stretch of speech
        over the model's audio has just been confirmed."""
        data = self._pending + pcm16
        whole = len(data) - len(data) % FRAME_BYTES
        self._pending = data[whole:]
        listening = self.playing(now) or not self.only_while_playing
        if not listening:
            self._run_from, self._fired = None, False
        threshold = max(self.floor, self._echo_power(now) / self.echo_margin) if listening else 0.0
        onset = False
        for start in range(0, whole, FRAME_BYTES):
            frame = data[start:start + FRAME_BYTES]
            level = power(np.frombuffer(frame, dtype="<i2").astype(np.float64))
            self._track_noise(level)
            if listening:
                at = now - (whole - start - FRAME_BYTES) / (2 * RATE)
                speech = level > threshold and level > self._noise * self.noise_margin \
                    and at >= self._turn_from + self.guard_s and self.voice(frame)
                onset |= self._frame(speech, at, level)
                self._remember(at, level)
        return onset

    def _track_noise(self, level: float) -> None:
        """Follow the line's quieter frames: down fast, up slowly (a low percentile of the frames' power);
        at once down to a frame far quieter (the call began with the caller talking, not with the line)."""
        if not self._noise or level < self._noise * NOISE_RESET:
            self._noise = level
        elif level < self._noise:
            self._noise = max(level, self._noise * self._noise_fall)
        else:
            self._noise *= self._noise_rise

    def _remember(self, at: float, level: float) -> None:
        self._recent.append((at, level))
        while self._recent[0][0] <= at - self.before_s:
            self._recent.popleft()

    def _level_before(self, at: float) -> float:
        """The mean power of the line over ``before_s`` up to the frame ending at ``at`` (the mean, not
        the quietest: babble dips far under its own level between syllables)."""
        heard = [p for end, p in self._recent if end > at - FRAME_S - self.before_s]
        return sum(heard) / len(heard) if heard else SILENT

    def _frame(self, speech: bool, at: float, level: float) -> bool:
        if not speech:
            if self._run_from is not None and at - self._last_speech > self.gap_s:
                self._run_from, self._fired = None, False
            return False
        if self._run_from is None:
            # A run begins only on a frame well over the line just before it (its mean): a swell of
            # babble or of a burst of noise, passing the gates but no louder than the line already
            # was, does not begin a run that a backchannel after it would carry to ``confirm_s``.
            before = self._level_before(at)
            if level < before * self.over_before:
                return False
            self._run_from, self._before = at - FRAME_S, before
        self._last_speech = at
        # It counts only on a frame still well over what the line carried before the run began: a
        # backchannel over a burst of noise or babble has ended by ``confirm_s``, and the noise that
        # bridges its end to the run's confirmation is no louder than it was before the caller spoke.
        if self._fired or at - self._run_from < self.confirm_s or level < self._before * self.over_before:
            return False
        self._fired = True
        self._cleared = True
        self._plays_until = min(self._plays_until, at)
        return True

    def _echo_power(self, now: float) -> float:
        """The loudest of the model's audio that played from ``echo_back_s`` ago until ``ECHO_AHEAD_S`` from
        now: its echo may be on the line now (the estimate of when it plays is a little early or late)."""
        while self._out and self._out[0][1] < now - self.echo_back_s:
            self._out.popleft()
        return max(takewhile(lambda out: out[0] <= now + ECHO_AHEAD_S, self._out), key=itemgetter(2),
                   default=(0, 0, SILENT))[2]
