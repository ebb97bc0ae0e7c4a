"""The hold sound: while the model waits on a tool, the caller hears a quiet sound, not dead air.

It is made here, in the gateway, because the gateway is what paces audio to Twilio and knows from the
marks what is still queued there: it starts the sound only when nothing of the model's is playing or
arriving, keeps at most ``AHEAD_CHUNKS`` of it queued at Twilio (so it stops within a fraction of a
second), and when the model's audio arrives it sends ``clear`` first, so the two never overlap. The
sound is µ-law already: no resampling, no trip through the transcoder, and no model turn to count.

The model_client says when the model is waiting (``Action(kind="hold")``, model_client/line_watch.py);
the sound begins ``BRIDGE_HOLD_AFTER_MS`` into a wait and stops when the model speaks, the wait ends,
the caller speaks, or the call ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
import wave
from typing import Callable

import numpy as np

from common.g711 import encode_ulaw
from common.lifecycle import spawn
from common.settings import SettingsError

log = logging.getLogger(__name__)

RATE = 8000
MARK_PREFIX = "hold."
CHUNK_MS = 200
AHEAD_CHUNKS = 2  # queued at Twilio at most: a stop flushes ≤ 400 ms
TICK_S = 0.1
NOTES_HZ = (523.25, 659.25)  # C5, E5: a soft two-note chime, far from speech's loudness
NOTE_S, GAP_S, REST_S = 0.35, 0.1, 2.2
PEAK = 0.06  # about −24 dBFS: quiet on a phone line


def default_sound() -> bytes:
    """Two soft notes with raised-cosine ends, then a rest; µ-law 8 kHz, looped."""
    parts = []
    for hz in NOTES_HZ:
        t = np.arange(round(NOTE_S * RATE)) / RATE
        envelope = np.sin(np.pi * t / NOTE_S) ** 2
        parts += [PEAK * envelope * np.sin(2 * np.pi * hz * t), np.zeros(round(GAP_S * RATE))]
    parts.append(np.zeros(round(REST_S * RATE)))
    return encode_ulaw(np.round(np.concatenate(parts) * 32767).astype(np.int16))


def load_sound(path: str) -> bytes:
    """``BRIDGE_HOLD_AUDIO``: a mono 16-bit PCM WAV at 8 kHz, as µ-law; else a SettingsError naming it."""
    try:
        with wave.open(path, "rb") as w:
            shape = (w.getnchannels(), w.getsampwidth(), w.getframerate())
            frames = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as e:
        raise SettingsError(f"BRIDGE_HOLD_AUDIO: cannot read {path!r}: {e}") from None
    if shape != (1, 2, RATE) or not frames:
        raise SettingsError(f"BRIDGE_HOLD_AUDIO: {path!r} must be a mono 16-bit PCM WAV at 8 kHz with audio "
                            f"(got {shape[0]} channel(s), {8 * shape[1]}-bit, {shape[2]} Hz)")
    return encode_ulaw(np.frombuffer(frames, dtype="<i2"))


def sound_from(path: str) -> bytes:
    return load_sound(path) if path else default_sound()


class Hold:
    """One call's hold sound. ``send(kind, data)`` queues a Twilio message (media, mark, clear);
    ``busy()`` says whether model audio is playing or arriving; ``event(text)`` notes it in the
    transcript; ``counters`` are the gateway's."""

    def __init__(self, sound: bytes, after_s: float, send: Callable[[str, object], None],
                 busy: Callable[[], bool], event: Callable[[str], None], counters: dict[str, int]):
        self.sound, self.after_s = sound, after_s
        self.send, self.busy, self.event, self.counters = send, busy, event, counters
        self.playing = False
        self._task: asyncio.Task | None = None
        self._quiet_since = 0.0  # nothing of the model's playing since then
        self._pos = 0  # in the sound
        self._unacked = 0  # hold chunks queued at Twilio
        self._marks = 0
        self._began = 0.0

    def waiting(self, *, on: bool) -> None:
        """The model began (or stopped) waiting on a tool."""
        if on and self._task is None:
            self._quiet_since = time.monotonic()
            self._task = spawn(self._run(), "hold")
        elif not on:
            self.stop("the wait is over")
            self.close()

    def stop(self, why: str) -> None:
        """Stop the sound now, flushing what is queued at Twilio (the caller speaks, the model speaks)."""
        self._quiet_since = time.monotonic()
        if not self.playing:
            return
        self.playing = False
        if self._unacked:
            self.send("clear", None)
            self._unacked = 0
        held_s = time.monotonic() - self._began
        self.counters["hold_ms"] = self.counters.get("hold_ms", 0) + round(held_s * 1000)
        log.info("hold sound stopped after %.1f s: %s", held_s, why)
        self.event(f"hold: stopped after {held_s:.1f} s ({why})")

    def close(self) -> None:
        """The call is over or the wait ended: no more sound, no timer."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.playing = False

    def owns(self, mark: str) -> bool:
        return mark.startswith(MARK_PREFIX)

    def echoed(self, mark: str) -> None:
        """One of our marks came back: its chunk played (or a clear flushed it)."""
        if self.playing and self._unacked:
            self._unacked -= 1
            self._top_up()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if self.busy():
                self._quiet_since = now
                self.stop("the model speaks")
            elif not self.playing and now - self._quiet_since >= self.after_s:
                self._start(now)

    def _start(self, now: float) -> None:
        self.playing, self._began = True, now
        self.counters["hold_plays"] = self.counters.get("hold_plays", 0) + 1
        log.info("the model has been waiting on a tool for %.1f s: hold sound on", now - self._quiet_since)
        self.event("hold: started (the model waits on a tool)")
        self._top_up()

    def _top_up(self) -> None:
        size = CHUNK_MS * RATE // 1000
        while self._unacked < AHEAD_CHUNKS:
            chunk = (self.sound[self._pos:] + self.sound * (size // len(self.sound) + 1))[:size]
            self._pos = (self._pos + size) % len(self.sound)
            self._marks += 1
            self._unacked += 1
            self.send("media", chunk)
            self.send("mark", f"{MARK_PREFIX}{self._marks}")
