"""Caller audio the gateway keeps per call, so that no single fault loses what the caller said.

Every ``AudioIn`` sent to a call's transcoder is also kept here until the call's Gemini session has
it inside a resumption handle: the model_client's ``Resumption`` says up to which frame the handle
may cover (``upto``, that frame's ``t_in``), and everything up to it is forgotten. When the call
moves, what is kept is sent again right behind the ``CallStart``, in order:

- its transcoder died (re-pin): what was sent since shortly before the transcoder was last heard
  from goes again. The model_client still has the session and drops every frame it already had (by
  ``t_in``), so only what the dead transcoder swallowed goes on to Gemini, and the new transcoder's
  resampler is warmed up on real audio instead of starting cold;
- its model_client died (re-assignment): the new session resumes from the handle and gets exactly
  the audio the handle may lack.

Why here and not in the transcoder: the gateway survives the other stages' faults, already keeps the
handle, and µ-law is the cheapest form of the audio (8 kB a second). Bounded by ``max_s`` per call:
a caller who talks longer than that with no turn ending (so no new handle) loses the oldest; counted.
"""

from __future__ import annotations

from collections import deque

from common import messages as m


class CallerRing:
    """Kept as plain tuples of ints and bytes, not ``AudioIn``s: the collector stops tracking such a
    tuple after its first pass, while 15 s of messages for each of 300 calls made every full pass
    walk them all (a long stall of the gateway's loop: docs/performance.md#code-choices)."""

    def __init__(self, max_s: float):
        self._frames: deque[tuple[int, int, bytes, int]] = deque()  # (seq, t_in, audio, ts)
        self._call = ""
        self._max = max(1, int(max_s * m.FRAMES_PER_S))
        self.shed = 0  # frames dropped because the ring was full

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, msg: m.AudioIn) -> None:
        self._call = msg.call
        self._frames.append((msg.seq, msg.t_in, msg.audio, msg.ts))
        if len(self._frames) > self._max:
            self._frames.popleft()
            self.shed += 1

    def covered(self, upto: int) -> None:
        """A resumption handle covers every frame up to ``t_in == upto``: forget them."""
        while self._frames and self._frames[0][1] <= upto:
            self._frames.popleft()

    def frames(self, since_ns: int = 0) -> list[m.AudioIn]:
        """What is kept, from ``t_in >= since_ns`` on."""
        return [m.AudioIn(call=self._call, seq=seq, t_in=t_in, audio=audio, ts=ts)
                for seq, t_in, audio, ts in self._frames if t_in >= since_ns]
