"""Who may talk to the gateway: Twilio webhook signatures, loopback-only development, the upgrade check.

- Every request under ``/twiml`` is a Twilio webhook. With ``TWILIO_AUTH_TOKEN`` set it must carry a
  valid ``X-Twilio-Signature`` (docs/architecture.md#twilio): HMAC-SHA1 keyed with the token over the
  URL Twilio requested plus the form parameters sorted by name; for a JSON body the URL carries ``bodySHA256``
  and the parameters are empty. That URL is the PUBLIC one, ``PUBLIC_URL`` + path + query exactly as
  sent: behind a proxy or tunnel the server sees another scheme, host and port. A missing or wrong
  signature gets HTTP 403 and one log line that holds neither the token nor the whole signature.
- Without a token nothing can be verified, so webhooks and streams are served to loopback peers only,
  unless ``BRIDGE_INSECURE_DEV=true``. "Loopback" is the TCP peer address, never X-Forwarded-For
  (anyone can write that header); and a loopback peer that sends proxy headers is a reverse proxy on
  this host relaying someone else, so it does not count as local.
- Twilio signs the stream's WebSocket upgrade too: ``X-Twilio-Signature`` over the ``wss://`` URL it
  connected to, with empty params (a GET has no body); Twilio's own twilio-agent-connect-python
  validates it so. ``BRIDGE_UPGRADE_SIGNATURE`` is ``enforce`` (the default: a missing or wrong
  signature gets HTTP 403), ``log`` (note it and let the stream's token decide: for a proxy that
  rewrites the URL) or ``off``. The stream itself is always authenticated by its per-call token
  (gateway/admission.py) at ``start``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit, urlunsplit

from aiohttp import web

from common.settings import Settings

log = logging.getLogger(__name__)

WEBHOOK_PREFIX = "/twiml"  # every route at or under it is a Twilio webhook
STREAM_PREFIX = "/ws/"
SIGNATURE_HEADER = "X-Twilio-Signature"
SHARED_KEY_HEADER = "X-Twilio-Webhooks-Signature-Settings"  # opt-in SharedKey scheme: not supported
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host")
MAX_WEBHOOK_BODY = 64 * 1024  # Twilio's voice webhooks are a few hundred bytes of form data
UPGRADE_MODES = ("off", "log", "enforce")
CALL_SID = re.compile(r"[A-Za-z0-9]{1,64}")  # Twilio's are CA + 32 hex digits
SOCKET_SLACK = 32  # open streams allowed beyond call capacity: those between upgrade and start
_SHOWN = 4  # characters of a signature a log line may show


# --- signatures (pure) ------------------------------------------------------------------------

def signature(token: str, url: str, params: Mapping[str, str | Sequence[str]]) -> str:
    """Twilio's scheme: base64(HMAC-SHA1(token, url + name1 + value1 + ...)), names in code-point order.
    A repeated name contributes each distinct value in order, as Twilio's own validator does."""
    parts = [url]
    for name in sorted(params):
        values = params[name]
        for value in sorted(set([values] if isinstance(values, str) else values)):
            parts.append(name + value)
    digest = hmac.new(token.encode(), "".join(parts).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def url_variants(url: str) -> list[str]:
    """The URL as configured, without its port and with the scheme's default port: Twilio drops the
    port from https URLs before signing (a documented pitfall) and its own validator accepts either form."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number: nothing to vary
        return [url]
    host = parts.netloc.rpartition("@")[2]  # Twilio also drops userinfo
    bare = host.rsplit(":", 1)[0] if port is not None else host
    default = {"https": 443, "wss": 443}.get(parts.scheme, 80)
    found = [url, urlunsplit(parts._replace(netloc=bare)),
             urlunsplit(parts._replace(netloc=f"{bare}:{port or default}"))]
    return list(dict.fromkeys(found))


def _same(expected: str, header: str) -> bool:
    # Bytes, because hmac.compare_digest refuses str with non-ASCII characters (a header can hold any).
    return hmac.compare_digest(expected.encode(), header.encode("utf-8", "surrogateescape"))


def valid_form_signature(token: str, url: str, params: Mapping[str, str | Sequence[str]],
                         header: str) -> bool:
    return any(_same(signature(token, u, params), header) for u in url_variants(url))


def valid_json_signature(token: str, url: str, body: bytes, header: str) -> bool:
    """A JSON body: the URL's ``bodySHA256`` must be the body's SHA-256 and the URL (which includes it)
    must be signed with empty params."""
    claimed = parse_qs(urlsplit(url).query).get("bodySHA256", [""])[0]
    if not _same(hashlib.sha256(body).hexdigest(), claimed):
        return False
    return any(_same(signature(token, u, {}), header) for u in url_variants(url))


def upgrade_url(settings: Settings, request: web.Request) -> str:
    """The URL Twilio signs for a stream's upgrade: scheme wss (the only one Twilio opens), host and
    path from PUBLIC_URL, then the path and query exactly as received, as for a webhook.

    Twilio's docs do not spell the rule out for the upgrade. Its stream URLs carry no query (TwiML's
    <Stream url> does not support one, and ours has none), so how a query would be signed is moot here;
    twilio-agent-connect-python passes one as params instead of leaving it in the URL. Whether Twilio
    drops a port before signing is not documented either: like its RequestValidator, the URL is
    accepted with and without one (``url_variants``)."""
    return "wss://" + settings.public_url.split("://", 1)[1] + request.raw_path


def valid_upgrade_signature(token: str, url: str, header: str) -> bool:
    return any(_same(signature(token, u, {}), header) for u in url_variants(url))


# --- who is asking ----------------------------------------------------------------------------

def is_loopback_peer(request: web.Request) -> bool:
    """The TCP peer is this host, and it is not a reverse proxy relaying someone else."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
        return False
    return not any(name in request.headers for name in PROXY_HEADERS)


def public_url(settings: Settings, request: web.Request) -> str:
    """The URL Twilio requested: PUBLIC_URL, then the path and query exactly as they arrived."""
    return settings.public_url + request.raw_path


def _shown(sig: str) -> str:
    return f"{sig[:_SHOWN]!r}…({len(sig)} chars)" if len(sig) > _SHOWN else f"({len(sig)} chars)"


# --- the middleware ---------------------------------------------------------------------------

class Guard:
    """An aiohttp middleware: webhooks signed, streams and webhooks loopback-only without a token, the
    upgrade's signature checked per ``BRIDGE_UPGRADE_SIGNATURE``. Every refusal is logged and counted."""

    def __init__(self, settings: Settings, counters: dict[str, int], *,
                 open_sockets: Callable[[], int] = lambda: 0, capacity: Callable[[], int] = lambda: 1 << 30):
        self.settings, self.counters = settings, counters
        self.open_sockets, self.capacity = open_sockets, capacity

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        path = request.path
        if path == WEBHOOK_PREFIX or path.startswith(WEBHOOK_PREFIX + "/"):
            await self._check_webhook(request)
        elif path.startswith(STREAM_PREFIX):
            self._check_upgrade(request)
        return await handler(request)

    def _refuse_remote(self, request: web.Request, what: str) -> None:
        if self.settings.twilio_auth_token or self.settings.insecure_dev or is_loopback_peer(request):
            return
        self._count("forbidden_not_loopback")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        log.warning("%s from %s refused: TWILIO_AUTH_TOKEN is not set, so only loopback peers are served "
                    "(a proxy's X-Forwarded-For does not count)", what, peer[0] if peer else "?")
        raise web.HTTPForbidden(text="forbidden\n")

    async def _check_webhook(self, request: web.Request) -> None:
        self._refuse_remote(request, f"webhook {request.path[:80]!r}")
        token = self.settings.twilio_auth_token
        if not token:
            return
        if (request.content_length or 0) > MAX_WEBHOOK_BODY:
            self._count("webhook_too_large")
            log.warning("webhook %r refused: body of %d bytes", request.path[:80], request.content_length)
            raise web.HTTPRequestEntityTooLarge(MAX_WEBHOOK_BODY, request.content_length)
        header = request.headers.get(SIGNATURE_HEADER, "")
        if not header:
            self._count("webhook_unsigned")
            log.warning("webhook %r refused: no %s", request.path[:80], SIGNATURE_HEADER)
            raise web.HTTPForbidden(text="forbidden\n")
        url = public_url(self.settings, request)
        if "bodySHA256" in request.query:
            ok = valid_json_signature(token, url, await request.read(), header)
        else:
            form = await request.post()
            ok = valid_form_signature(token, url, {k: form.getall(k) for k in form}, header)
        if not ok:
            self._count("webhook_bad_signature")
            hint = (f" (signed with a SharedKey, per {SHARED_KEY_HEADER}: not supported)"
                    if SHARED_KEY_HEADER in request.headers else "")
            log.warning("webhook %r refused: %s %s does not match %s with TWILIO_AUTH_TOKEN%s",
                        request.path[:80], SIGNATURE_HEADER, _shown(header), url[:200], hint)
            raise web.HTTPForbidden(text="forbidden\n")

    def _check_upgrade(self, request: web.Request) -> None:
        self._refuse_remote(request, f"stream {request.path[:80]!r}")
        if self.open_sockets() >= self.capacity() + SOCKET_SLACK:
            # Sockets that have not sent a valid start yet cost memory until their start deadline.
            self._count("ws_refused_busy")
            log.warning("stream upgrade refused: %d sockets open, capacity %d calls", self.open_sockets(),
                        self.capacity())
            raise web.HTTPServiceUnavailable(text="busy\n")
        token, mode = self.settings.twilio_auth_token, self.settings.upgrade_signature
        if not token or mode == "off":
            return
        header = request.headers.get(SIGNATURE_HEADER, "")
        url = upgrade_url(self.settings, request)
        if header and valid_upgrade_signature(token, url, header):
            self._count("ws_signature_ok")
            return
        self._count("ws_signature_missing" if not header else "ws_signature_bad")
        what = (f"carries no {SIGNATURE_HEADER}" if not header else
                f"{SIGNATURE_HEADER} {_shown(header)} does not match {url[:200]} with TWILIO_AUTH_TOKEN")
        if mode == "enforce":
            log.warning("stream upgrade refused: it %s (BRIDGE_UPGRADE_SIGNATURE=enforce; behind a proxy "
                        "that rewrites the URL, set it to log)", what)
            raise web.HTTPForbidden(text="forbidden\n")
        log.info("stream upgrade %s; allowed (BRIDGE_UPGRADE_SIGNATURE=log), the stream token decides",
                 what)


def announce(settings: Settings) -> None:
    """Say loudly at start what is and is not being checked."""
    if settings.twilio_auth_token:
        log.info("webhooks must carry a valid X-Twilio-Signature for %s; upgrade signature check: %s",
                 settings.public_url, settings.upgrade_signature)
    elif settings.insecure_dev:
        log.error("INSECURE: TWILIO_AUTH_TOKEN is not set and BRIDGE_INSECURE_DEV=true: anyone who can "
                  "reach this port can place calls. Never run like this in production.")
    else:
        log.warning("TWILIO_AUTH_TOKEN is not set: webhooks and streams are served to loopback peers "
                    "only. Set TWILIO_AUTH_TOKEN to take real Twilio calls (or BRIDGE_INSECURE_DEV=true "
                    "for a trusted development network).")
    if not settings.bridge_secret:
        log.info("BRIDGE_SECRET is not set: stream tokens use a random per-process key, so a stream "
                 "must reach the gateway that answered its /twiml")
