"""Playback tracking for one call (pure: no sockets, no clock).

The model generates faster than real time. Twilio would queue it all, and a barge-in would then have
to flush seconds of stale audio, so audio is sent ahead of the caller's playback by at most
``ahead_bytes`` (~1 s) and the rest is held here. Every sent chunk (≤ ``mark_bytes``, ~200 ms) is
followed by a Twilio ``mark``; a mark coming back means the audio before it is no longer queued at
Twilio: played, or flushed by a ``clear`` (Twilio then echoes every pending mark).
So for each turn we know what was sent and what the caller actually heard.

At a turn's start the audio goes out as it comes (playback must not wait); once ``low_water`` is
queued at Twilio, chunks are coalesced to ``mark_bytes`` so marks come every ~200 ms, not every frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

BYTES_PER_MS = 8  # µ-law 8 kHz


@dataclass
class TurnState:
    sent: int = 0  # bytes sent to Twilio
    played: int = 0  # bytes whose mark came back before any clear
    done: bool = False  # the model finished generating it
    interrupted: bool = False
    interrupted_by: str = ""  # who cut it off (gateway/pipeline.py BARGE_SOURCES)
    finished: bool = False  # done and every mark back (or cleared): nothing of it is queued anywhere

    @property
    def heard_ms(self) -> int:
        return self.played // BYTES_PER_MS

    @property
    def sent_ms(self) -> int:
        return self.sent // BYTES_PER_MS


@dataclass(frozen=True)
class Echo:
    turn: int
    name: str
    flushed: bool  # it came back because of a clear, not because it played
    heard_ms: int
    finished: bool  # this echo completed the turn


class Playout:
    def __init__(self, ahead_ms: int = 1000, mark_ms: int = 200, low_water_ms: int = 300,
                 max_held_ms: int = 120_000):
        self.ahead = ahead_ms * BYTES_PER_MS
        self.mark_bytes = mark_ms * BYTES_PER_MS
        self.low_water = low_water_ms * BYTES_PER_MS
        self.max_held = max_held_ms * BYTES_PER_MS  # bounded: overload sheds the oldest audio
        self._held_bytes = 0
        self.turns: dict[int, TurnState] = {}
        self.latest = 0  # the newest turn seen
        self.cleared_turn = 0  # audio of this turn or older arrives late: drop it
        self.shed = 0  # bytes dropped: late chunks of cleared turns, or held past max_held
        self._held: deque[list] = deque()  # [turn, bytearray], oldest first
        self._unacked: deque[list] = deque()  # [name, turn, nbytes, flushed]
        self._queued = 0  # bytes sent and not yet acknowledged by a mark
        self._marks = 0

    @property
    def playing(self) -> bool:
        """Is any model audio still held here or queued at Twilio?"""
        return bool(self._held) or self._queued > 0

    @property
    def generating(self) -> bool:
        """Is the model still sending the latest turn?"""
        state = self.turns.get(self.latest)
        return state is not None and not state.done

    @property
    def queued_ms(self) -> int:
        """Model audio not yet heard: sent to Twilio and unacknowledged, or held here."""
        return (self._queued + self._held_bytes) // BYTES_PER_MS

    def add(self, ulaw: bytes, turn: int) -> bool:
        """Model audio for ``turn``; False if it belongs to a cleared turn and was dropped."""
        if turn <= self.cleared_turn:
            self.shed += len(ulaw)
            return False
        self.turns.setdefault(turn, TurnState())
        self.latest = max(self.latest, turn)
        if self._held and self._held[-1][0] == turn:
            self._held[-1][1].extend(ulaw)
        else:
            self._held.append([turn, bytearray(ulaw)])
        self._held_bytes += len(ulaw)
        while self._held_bytes > self.max_held:
            excess = self._held_bytes - self.max_held
            oldest = self._held[0][1]
            cut = min(excess, len(oldest))
            del oldest[:cut]
            self._held_bytes -= cut
            self.shed += cut
            if not oldest:
                self._held.popleft()
        return True

    def turn_done(self, turn: int) -> None:
        state = self.turns.get(turn)
        if state is not None:
            state.done = True
            self._check_finished(turn)

    def pump(self) -> list[tuple[str, object]]:
        """What to send to Twilio now: ("media", bytes) and ("mark", name), in order."""
        out: list[tuple[str, object]] = []
        while self._held and self._queued < self.ahead:
            turn, buf = self._held[0]
            turn_complete = self.turns[turn].done or len(self._held) > 1
            if len(buf) < self.mark_bytes and not turn_complete and self._queued > self.low_water:
                break  # wait for a fuller chunk: playback has enough queued
            chunk = bytes(buf[:self.mark_bytes])
            del buf[:self.mark_bytes]
            self._held_bytes -= len(chunk)
            if not buf:
                self._held.popleft()
            out += self._send(turn, chunk)
        return out

    def _send(self, turn: int, chunk: bytes) -> list[tuple[str, object]]:
        self._marks += 1
        name = f"{turn}.{self._marks}"
        self.turns[turn].sent += len(chunk)
        self._unacked.append([name, turn, len(chunk), False])
        self._queued += len(chunk)
        return [("media", chunk), ("mark", name)]

    def echoed(self, name: str) -> Echo | None:
        """A mark came back from Twilio; None if we never sent it (ignored)."""
        for i, (sent_name, turn, nbytes, flushed) in enumerate(self._unacked):
            if sent_name == name:
                del self._unacked[i]
                break
        else:
            return None
        state = self.turns[turn]
        if not flushed:
            self._queued -= nbytes
            state.played += nbytes
        return Echo(turn, name, flushed, state.heard_ms, self._check_finished(turn))

    def clear(self, interrupted_by: str = "") -> int:
        """Barge-in: drop what is held, count what is queued at Twilio as flushed. Returns the turn
        that was playing (0 if none). The caller sends Twilio ``clear``."""
        turn = self.latest
        self.cleared_turn = max(self.cleared_turn, turn)
        self._held.clear()
        self._held_bytes = 0
        for mark in self._unacked:
            mark[3] = True
        self._queued = 0
        for number, state in self.turns.items():
            if not state.finished:
                state.interrupted = state.done = True
                state.interrupted_by = interrupted_by
                self._check_finished(number)
        return turn

    def _check_finished(self, turn: int) -> bool:
        state = self.turns[turn]
        if state.finished or not state.done:
            return False
        if any(t == turn for t, _ in self._held) or any(m[1] == turn for m in self._unacked):
            return False
        state.finished = True
        return True

    def forget(self, turn: int) -> TurnState | None:
        """Drop a finished turn's bookkeeping (per-call state stays small on long calls)."""
        return self.turns.pop(turn, None)
