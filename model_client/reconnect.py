"""The pieces that keep one call's Gemini session alive across connections (docs/architecture.md#gemini);
the connection itself is in gemini_wire.py.

- ``Journal``: what was sent since each handle we may still resume from. A handle is the service's
  state at some point; what we sent after it is not in it, so a new connection opened with that handle
  gets it again. Bounded (``max_bytes`` of audio; the oldest goes, counted).
- ``RetryBudget``: reconnects in a row, with backoff; a connection that stayed up ``stable_s`` resets
  the count (Pipecat's Gemini service does the same).
- ``next_step``: what a close code means for the call; ``time_left_s``: what a goAway leaves.
- ``Conversation``: a fresh session's system instruction when a handle is refused: the
  conversation so far, from the transcripts.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from model_client.send_queue import AUDIO

BACKOFF_S = 0.25  # the first retry is immediate, then 0.25 s doubling ...
BACKOFF_CAP_S = 4.0  # ... to this
MAX_CONTEXT_CHARS = 6000  # of transcript handed to a fresh session
DEFAULT_TIME_LEFT_S = 10.0  # a goAway whose timeLeft we cannot read


class Opening(NamedTuple):
    """How to open the next connection."""
    handle: str  # the resumption handle to open with ("": a new session)
    replay_from: str  # the journal mark whose items the connection is sent again
    fresh: bool = False  # a refused handle: the model is told the conversation so far


@dataclass(frozen=True)
class Ended:
    """Why a connection ended (or failed to open): the WebSocket close code if there was one."""
    code: int | None
    detail: str

    def __str__(self) -> str:
        detail = self.detail[:120]
        return detail if detail.startswith(str(self.code)) else f"{self.code or 'no close code'}: {detail}"


def next_step(ended: Ended, resuming: bool) -> str:
    """"resume" (reconnect with the latest handle), "fresh" (the handle was refused: start again,
    telling the model the conversation so far) or "fatal" (end the call). By close code: 1000
    while the call is live, 1001, 1006, 1011 → resume; 1007 on a resume → fresh; 1007 otherwise is a
    bad setup and 1008 a policy refusal, which retrying will not fix."""
    if ended.code == 1007 and resuming:
        return "fresh"
    if ended.code in (1007, 1008):
        return "fatal"
    return "resume"


def time_left_s(text: str | None) -> float:
    """goAway's ``timeLeft`` is a proto Duration string ("50s", "0.3s")."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)s\s*", text or "")
    return float(match.group(1)) if match else DEFAULT_TIME_LEFT_S


class Sent(NamedTuple):
    kind: str  # AUDIO, TEXT or TOOL (send_queue.py)
    payload: object


class _Entry(NamedTuple):
    index: int  # in the order sent, from 0
    kind: str
    payload: object


class Journal:
    """Items sent, in order, with a mark per handle; ``since(handle)`` is what that handle lacks."""

    def __init__(self, max_bytes: int):
        self._items: deque[_Entry] = deque()
        self._next = 0
        self._marks: dict[str, int] = {"": 0}  # no handle yet: everything since the session began
        self._bytes = 0
        self._max = max_bytes
        self.shed = 0  # audio bytes forgotten before any handle covered them

    def sent(self, kind: str, payload: object) -> None:
        self._items.append(_Entry(index=self._next, kind=kind, payload=payload))
        self._next += 1
        if kind == AUDIO:
            self._bytes += len(payload)
            while self._bytes > self._max:
                self._drop_oldest(counted=True)

    def mark(self, handle: str, keep: tuple[str, ...] = ()) -> None:
        """``handle`` covers everything sent so far; only it and ``keep`` will be resumed from."""
        self._marks = {h: i for h, i in self._marks.items() if h in keep}
        self._marks[handle] = self._next
        oldest = min(self._marks.values())
        while self._items and self._items[0].index < oldest:
            self._drop_oldest(counted=False)

    def since(self, handle: str) -> list[Sent]:
        start = self._marks.get(handle, 0)  # a handle we never saw (the gateway's): all we have
        return [Sent(kind=e.kind, payload=e.payload) for e in self._items if e.index >= start]

    def _drop_oldest(self, counted: bool) -> None:
        """``counted``: the audio is lost to every handle, not merely covered by one."""
        oldest = self._items.popleft()
        if oldest.kind == AUDIO:
            self._bytes -= len(oldest.payload)
            if counted:
                self.shed += len(oldest.payload)


class RetryBudget:
    def __init__(self, max_attempts: int, stable_s: float):
        self.max_attempts, self.stable_s = max_attempts, stable_s
        self.attempts = 0
        self._up_since: float | None = None

    def connected(self, now: float) -> None:
        self._up_since = now

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None when the budget is spent."""
        if self._up_since is not None and now - self._up_since >= self.stable_s:
            self.attempts = 0
        self._up_since = None
        if self.attempts >= self.max_attempts:
            return None
        delay = 0.0 if self.attempts == 0 else min(BACKOFF_CAP_S, BACKOFF_S * 2 ** (self.attempts - 1))
        self.attempts += 1
        return delay


@dataclass
class _Said:
    role: str  # "caller" or "model"
    text: str


class Conversation:
    """What was said so far, from the transcripts, for a fresh session (bounded)."""

    def __init__(self, max_chars: int = MAX_CONTEXT_CHARS):
        self._lines: deque[_Said] = deque()
        self._chars = 0
        self._max = max_chars

    def add(self, role: str, text: str) -> None:
        if not text:
            return
        if self._lines and self._lines[-1].role == role:
            self._lines[-1].text += text
        else:
            self._lines.append(_Said(role=role, text=text))
        self._chars += len(text)
        while self._chars > self._max and len(self._lines) > 1:
            self._chars -= len(self._lines.popleft().text)

    def __bool__(self) -> bool:
        return bool(self._lines)

    def instruction(self, base: str) -> str:
        said = "\n".join(f"{'Caller' if line.role == 'caller' else 'You'}: {line.text.strip()}"
                         for line in self._lines)
        return (f"{base}\n\nThis phone call is already in progress. The connection to you was lost and "
                f"could not be resumed, so here is the conversation so far:\n{said}\n"
                "Carry on from there; do not greet the caller again.")
