"""What happens to a call when its stream ends: ``/twiml/after`` asks, keyed by CallSid.

Twilio runs the ``<Redirect>`` after ``</Connect>`` only when the stream ended and the call did not
(the caller hanging up ends everything). So: a hang-up or transfer the model asked for; or the stream
died under a live caller (the model failed, the gateway restarted) and the call resumes with a fresh
stream, a bounded number of times, then apologises and hangs up. Never a dead line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

TTL_S = 4 * 3600.0
MAX_RESUMES = 2


@dataclass
class Disposition:
    kind: str  # "hangup" | "transfer" | "resume" | "apologise"
    target: str = ""
    resumes: int = 0
    expires: float = 0.0


class Dispositions:
    def __init__(self):
        self._by_sid: dict[str, Disposition] = {}

    def set(self, call_sid: str, kind: str, target: str = "") -> None:
        old = self._by_sid.get(call_sid)
        resumes = old.resumes if old else 0
        self._by_sid[call_sid] = Disposition(kind, target, resumes, time.monotonic() + TTL_S)

    def after(self, call_sid: str) -> Disposition:
        """The disposition for a stream that ended: what was set, else resume (bounded)."""
        self._expire()
        d = self._by_sid.get(call_sid) or Disposition("resume")
        if d.kind == "resume":
            d = Disposition("resume" if d.resumes < MAX_RESUMES else "apologise", "", d.resumes + 1)
        d.expires = time.monotonic() + TTL_S
        self._by_sid[call_sid] = Disposition("resume", "", d.resumes, d.expires)  # next time: resume
        return d

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, d in self._by_sid.items() if d.expires < now]:
            del self._by_sid[sid]

    def __len__(self) -> int:
        return len(self._by_sid)
