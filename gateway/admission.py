"""Per-call stream tokens: issued with the TwiML, checked once on the stream's ``start``.

The upgrade's signature is not relied on alone (a proxy may rewrite the URL), so the stream
authenticates with a token in a ``<Parameter>``, checked when ``start`` delivers it. A token is

    v1.<expiry>.<nonce>.<mac>     mac = HMAC-SHA256(key, "v1.<expiry>.<nonce>.<CallSid>"), 160 bits

so it is bound to the CallSid it was issued for (checked against ``start.callSid``), expires (unix
time, so that any gateway sharing the key can check it), and is single use: a used token is
remembered until it expires. The nonce names the call (``c<nonce>``), so no table of issued tokens is
needed to admit one.

The key comes from ``BRIDGE_SECRET``. Without it each process draws a random key, which is fine for
one gateway, but then a stream is admitted only by the gateway that answered its ``/twiml``: several
gateways behind one load balancer need the same ``BRIDGE_SECRET`` (or sticky routing), and a gateway
restart voids the tokens it issued (they live a minute at most). Used tokens are remembered per
process, so with N gateways sharing a key a token could be replayed once on each of the others within
its lifetime; the CallSid binding and the token's secrecy (it only ever travels in the TwiML, over
TLS, to Twilio) are what stop that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Callable, NamedTuple

log = logging.getLogger(__name__)

TOKEN_TTL_S = 60.0  # Twilio opens the stream within seconds of fetching the TwiML
VERSION = "v1"
_TOKEN = re.compile(r"v1\.([0-9]{1,12})\.([0-9a-f]{12})\.([A-Za-z0-9_-]{27})")
_MAX_TOKEN = 64


class _Pending(NamedTuple):
    expiry: float
    call_sid: str
    call: str


def derive_key(secret: str) -> bytes:
    """A key for this one purpose, so BRIDGE_SECRET could sign other things without confusion."""
    return hmac.new(secret.encode(), b"gemini-bridge stream token v1", hashlib.sha256).digest()


class Admissions:
    """Issues and admits stream tokens. ``refused`` counts refusals by reason (unknown, expired,
    reused, malformed, missing); ``pending`` is how many tokens were issued here and not yet used."""

    def __init__(self, secret: str = "", ttl_s: float = TOKEN_TTL_S,
                 counters: dict[str, int] | None = None, clock: Callable[[], float] = time.time):
        self._key = derive_key(secret) if secret else secrets.token_bytes(32)
        self.ephemeral_key = not secret
        self.ttl_s, self.clock = ttl_s, clock
        self.counters = {} if counters is None else counters
        self._used: dict[str, float] = {}  # mac -> expiry: single use
        self._pending: dict[str, _Pending] = {}  # mac -> issued here, stream not started yet
        self._bound: dict[str, _Pending] = {}  # outbound CallSid -> its token's placeholder (in call_sid)
        self._next_expire = 0.0

    def _mac(self, expiry: int, nonce: str, call_sid: str) -> str:
        message = f"{VERSION}.{expiry}.{nonce}.{call_sid}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:20]
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def issue(self, call_sid: str, ttl_s: float | None = None) -> tuple[str, str]:
        """(call id, token) for a call our webhook accepted."""
        self._expire()
        expiry, nonce = int(self.clock() + (ttl_s or self.ttl_s)) + 1, secrets.token_hex(6)
        mac = self._mac(expiry, nonce, call_sid)
        self._pending[mac] = _Pending(expiry, call_sid, "c" + nonce)
        return "c" + nonce, f"{VERSION}.{expiry}.{nonce}.{mac}"

    def issue_outbound(self, ttl_s: float) -> tuple[str, str, str]:
        """(call id, token, placeholder) for a call we are about to place: its TwiML goes with the
        request that creates it, before Twilio has named its CallSid. The token is bound to the
        placeholder until ``bind`` ties that to the CallSid; a stream whose CallSid was never bound is
        refused. Only this gateway knows the binding, so the stream must come back here."""
        placeholder = "outbound" + secrets.token_hex(8)
        call, token = self.issue(placeholder, ttl_s)
        return call, token, placeholder

    def bind(self, placeholder: str, call_sid: str) -> None:
        for mac, pending in list(self._pending.items()):
            if pending.call_sid == placeholder:
                self._pending[mac] = pending._replace(call_sid=call_sid)
                self._bound[call_sid] = pending._replace(call_sid=placeholder)

    def revoke(self, call_sid: str) -> list[str]:
        """The call is over (our last answer for it hung up or dialled elsewhere): streams we said yes
        to that have not started never will. Their tokens are void from now on (refused as reused);
        returns their call ids, whose pre-warmed sessions must end too."""
        calls = []
        self._bound.pop(call_sid, None)
        for mac in [mac for mac, p in self._pending.items() if p.call_sid == call_sid]:
            pending = self._pending.pop(mac)
            self._used[mac] = pending.expiry
            calls.append(pending.call)
        return calls

    def admit(self, token: str, call_sid: str) -> str | None:
        """The call id if ``token`` was issued for ``call_sid``, is fresh and unused; else None (the
        reason is logged and counted as ``stream_token_<reason>``)."""
        call, reason = self.check(token, call_sid)
        if call is None:
            self._count(f"stream_token_{reason.split()[0]}")
            log.warning("stream for %s refused: token %s", _short(call_sid), reason)
        return call

    def check(self, token: str, call_sid: str) -> tuple[str | None, str]:
        """(call id, "ok") or (None, reason). Uses the token up when it is good."""
        self._expire()
        if not token:
            return None, "missing"
        match = _TOKEN.fullmatch(token) if isinstance(token, str) and len(token) <= _MAX_TOKEN else None
        if match is None:
            return None, "malformed"
        expiry, nonce, mac = int(match[1]), match[2], match[3]
        bound = self._bound.get(call_sid) if isinstance(call_sid, str) else None
        signed_for = bound.call_sid if bound is not None else call_sid  # an outbound call's placeholder
        if not isinstance(call_sid, str) or not hmac.compare_digest(
                self._mac(expiry, nonce, signed_for).encode(), mac.encode()):
            return None, "unknown (not ours, or issued for another CallSid)"
        if expiry < self.clock():
            return None, f"expired ({self.clock() - expiry:.0f} s ago)"
        if mac in self._used:
            return None, "reused"
        self._used[mac] = expiry
        self._pending.pop(mac, None)
        self._bound.pop(call_sid, None)
        return "c" + nonce, "ok"

    @property
    def pending(self) -> int:
        """Streams we said yes to at /twiml that have not started yet: they hold capacity."""
        self._expire()
        return len(self._pending)

    def _expire(self) -> None:
        now = self.clock()
        if now < self._next_expire:
            return
        self._next_expire = now + 1.0  # at most once a second: a flood of bad tokens costs no scans
        for mac in [m for m, expiry in self._used.items() if expiry < now]:
            del self._used[mac]
        for mac in [m for m, pending in self._pending.items() if pending.expiry < now]:
            del self._pending[mac]
        for sid in [s for s, bound in self._bound.items() if bound.expiry < now]:
            del self._bound[sid]

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def __len__(self) -> int:
        return self.pending


def _short(value: object) -> str:
    """Outside input, safe to log: repr escapes newlines (no forged log lines), and it is clipped."""
    text = repr(value[:41] if isinstance(value, str) else value)
    return text if len(text) <= 44 else text[:44] + "…"
