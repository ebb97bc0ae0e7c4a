"""Per-call stream tokens: issued with the TwiML, checked once on the stream's ``start``.

A token is random, bound to the CallSid it was issued for, short-lived and single use, so a stream
can only be opened for a call our webhook accepted (Twilio reference §10: the upgrade itself may not be
signed, so the stream authenticates with a ``<Parameter>`` checked at ``start``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

TOKEN_TTL_S = 120.0  # Twilio opens the stream within seconds of fetching the TwiML


@dataclass(frozen=True)
class _Issued:
    call: str
    call_sid: str
    expires: float


class Admissions:
    def __init__(self, ttl_s: float = TOKEN_TTL_S):
        self.ttl_s = ttl_s
        self._issued: dict[str, _Issued] = {}

    def issue(self, call_sid: str) -> tuple[str, str]:
        """(call id, token) for a call our webhook accepted."""
        self._expire()
        call, token = "c" + secrets.token_hex(6), secrets.token_urlsafe(18)
        self._issued[token] = _Issued(call, call_sid, time.monotonic() + self.ttl_s)
        return call, token

    def admit(self, token: str, call_sid: str) -> str | None:
        """The call id if ``token`` was issued for ``call_sid``, is fresh and unused; else None."""
        issued = self._issued.pop(token, None)
        if issued is None or issued.call_sid != call_sid or issued.expires < time.monotonic():
            return None
        return issued.call

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [t for t, i in self._issued.items() if i.expires < now]:
            del self._issued[token]

    def __len__(self) -> int:
        return len(self._issued)
