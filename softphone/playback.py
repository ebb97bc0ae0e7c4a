"""Twilio's outbound playback queue, as a pure model on the call's sample clock.

Per Twilio's docs: media from the server is queued and played in arrival order at 8000 samples/s; a mark
is echoed when playback reaches it (at once if nothing is queued); ``clear`` drops the queued audio and
echoes every pending mark. Past 10 minutes queued, Twilio discards further audio (31931).

Time is in samples of the call clock; the owner decides what drives it (the wall clock, or the frames
sent in fast mode) and calls ``advance`` before each event so everything happens at the right sample.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from common.g711 import ULAW_SILENCE

RATE = 8000
MAX_QUEUED = 10 * 60 * RATE  # 31931: more than 10 minutes queued and Twilio drops what follows
REPLY_GAP = RATE // 4  # playback idle this long and new audio counts as a new reply


@dataclass(frozen=True)
class Echo:
    """A mark Twilio sends back: reached by playback, or ``flushed`` by a clear."""
    name: str
    sample: int
    flushed: bool


class Playback:
    """Queue + clock. ``heard`` holds one µ-law byte per elapsed sample: what was playing, or silence."""

    def __init__(self) -> None:
        self._items: deque[bytes | str] = deque()  # audio chunks (bytes) and mark names (str), in order
        self._offset = 0  # bytes of the head chunk already played
        self._queued = 0  # audio bytes still to play
        self._idle_since: int | None = 0  # sample at which the queue last ran dry; None while playing
        self._new_reply = True  # the next audio starts a reply whatever the gap (call start, clear)
        self.clock = 0
        self.heard = bytearray()
        self.underruns = 0  # audio arrived after the queue had run dry inside a reply
        self.reply_starts: list[int] = []  # samples where audio began after silence or a clear
        self.discarded = 0  # bytes dropped past the 31931 cap
        self.played = 0  # samples of the server's audio played so far (cleared audio never plays)

    @property
    def queued(self) -> int:
        """Audio samples still to play."""
        return self._queued

    def add_audio(self, data: bytes) -> bool:
        """Queue ``data`` at the current sample; False if Twilio would discard it (31931)."""
        if self._queued + len(data) > MAX_QUEUED:
            self.discarded += len(data)
            return False
        if data and self._idle_since is not None:
            if self._new_reply or self.clock - self._idle_since >= REPLY_GAP:
                self.reply_starts.append(self.clock)
            elif self.clock > self._idle_since:
                self.underruns += 1  # the reply's audio ran out before the rest of it came
            self._idle_since, self._new_reply = None, False
        if data:
            self._items.append(bytes(data))
            self._queued += len(data)
        return True

    def add_mark(self, name: str) -> list[Echo]:
        """Queue a mark behind the audio; echoed at once when nothing is queued."""
        if not self._queued:
            return [Echo(name, self.clock, flushed=False)]
        self._items.append(name)
        return []

    def clear(self) -> list[Echo]:
        """Drop everything queued; every pending mark comes back at once, in order."""
        echoes = [Echo(item, self.clock, flushed=True) for item in self._items if isinstance(item, str)]
        self._items.clear()
        self._offset = self._queued = 0
        if self._idle_since is None:
            self._idle_since = self.clock
        self._new_reply = True  # the clear ended the last reply, so what follows is a new one
        return echoes

    def advance(self, to: int) -> list[Echo]:
        """Play until the clock reads ``to``; returns the marks reached, each at its own sample."""
        echoes: list[Echo] = []
        while self.clock < to:
            if not self._items:
                self.heard.extend(bytes([ULAW_SILENCE]) * (to - self.clock))
                self.clock = to
                break
            self._play_head(to - self.clock)
            echoes.extend(self._reached_marks())
        return echoes

    def _play_head(self, budget: int) -> None:
        head = self._items[0]
        n = min(len(head) - self._offset, budget)
        self.heard += head[self._offset:self._offset + n]
        self._offset += n
        self._queued -= n
        self.clock += n
        self.played += n
        if self._offset == len(head):
            self._items.popleft()
            self._offset = 0

    def _reached_marks(self) -> list[Echo]:
        # Marks sit behind audio; once the audio ahead of them is played they are due.
        echoes = []
        while self._items and isinstance(self._items[0], str):
            echoes.append(Echo(self._items.popleft(), self.clock, flushed=False))
        if not self._items and self._idle_since is None:
            self._idle_since = self.clock
        return echoes
