"""Twilio's side of the voice webhook: the signed form POST to ``/twiml`` and reading the TwiML back.

Mirrors what Twilio does when a call rings (docs/architecture.md#twilio): standard call parameters, an
``X-Twilio-Signature`` (HMAC-SHA1 over URL + sorted params), then only ``<Connect><Stream>`` and the verbs
after ``</Connect>`` matter to a bidirectional stream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

API_VERSION = "2010-04-01"
FROM_NUMBER = "+15550100001"  # 555-01xx numbers are reserved for fiction
TO_NUMBER = "+15550100002"


class CallError(Exception):
    """The call could not be placed or did not run as Twilio would run it. ``result`` holds whatever
    was recorded before the failure (a ``CallResult``), when the stream got that far."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


@dataclass
class Twiml:
    """What a bidirectional stream needs from the webhook's answer."""
    text: str
    stream_url: str
    parameters: dict[str, str]
    after_connect: list[str] = field(default_factory=list)  # verbs that run once the stream ends
    redirect: str = ""  # the <Redirect> after </Connect>, resolved: where Twilio goes when the stream ends
    warnings: list[str] = field(default_factory=list)


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's webhook signature: HMAC-SHA1 keyed with the Auth Token over the URL then each
    param's name and value in byte order of the names, base64 (standard alphabet)."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def signed_url(url: str) -> str:
    """The URL as Twilio signs it: over HTTPS it drops userinfo and port; otherwise as is."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return url
    return urlunsplit(parts._replace(netloc=parts.hostname or ""))


def upgrade_url(stream_url: str) -> str:
    """The URL Twilio signs for the stream's upgrade (with empty params): the stream URL it connects to,
    scheme wss, the only one Twilio opens (locally the softphone may open ws://)."""
    return "wss://" + stream_url.split("://", 1)[1]


def upgrade_headers(auth_token: str | None, stream_url: str) -> dict[str, str]:
    """The stream upgrade's headers as Twilio sends them: signed when there is a token."""
    if auth_token is None:
        return {}
    return {"X-Twilio-Signature": twilio_signature(auth_token, upgrade_url(stream_url), {})}


def voice_params(call_sid: str, account_sid: str) -> dict[str, str]:
    """The standard parameters of an inbound call's first webhook, while the phone still rings."""
    return {"AccountSid": account_sid, "ApiVersion": API_VERSION, "CallSid": call_sid,
            "CallStatus": "ringing", "Called": TO_NUMBER, "Caller": FROM_NUMBER,
            "Direction": "inbound", "From": FROM_NUMBER, "To": TO_NUMBER}


async def fetch_twiml(session: aiohttp.ClientSession, url: str, params: dict[str, str],
                      auth_token: str | None) -> Twiml:
    """POST the webhook like Twilio (form-encoded, signed when a token is given) and parse the answer.
    Each on a connection of its own: a pooled one could still lead to a gateway that has just died (the
    call's stream ends with it, and ``/twiml/after`` would go out on that dead connection at once)."""
    headers = {"User-Agent": "TwilioProxy/1.1", "Connection": "close"}
    if auth_token is not None:
        headers["X-Twilio-Signature"] = twilio_signature(auth_token, signed_url(url), params)
    try:
        async with session.post(url, data=params, headers=headers) as response:
            text = await response.text()
            status = response.status
    except aiohttp.ClientError as exc:
        raise CallError(f"webhook {url} unreachable: {exc}") from exc
    if status != 200:
        raise CallError(f"webhook {url} answered HTTP {status}: {text[:200]!r}")
    return parse_twiml(text, url)


def parse_twiml(text: str, webhook_url: str) -> Twiml:
    """Find ``Response/Connect/Stream`` (its url and ``<Parameter>``s) and the verbs after ``</Connect>``."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise CallError(f"TwiML is not XML ({exc}): {text[:200]!r}") from exc
    verbs = list(root) if root.tag == "Response" else []
    connect = next((i for i, verb in enumerate(verbs) if verb.tag == "Connect"), None)
    stream = verbs[connect].find("Stream") if connect is not None else None
    if stream is None or not stream.get("url"):
        raise CallError(f"TwiML has no <Response><Connect><Stream url=…>: {text[:300]!r}")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    url, warnings = _stream_url(stream.get("url"), webhook_url)
    after = verbs[connect + 1:]
    redirect = next((urljoin(webhook_url, (verb.text or "").strip()) for verb in after if verb.tag == "Redirect"), "")
    return Twiml(text=text, stream_url=url, parameters=parameters,
                 after_connect=[verb.tag for verb in after], redirect=redirect, warnings=warnings)


def _stream_url(url: str, webhook_url: str) -> tuple[str, list[str]]:
    """Resolve a relative url against the webhook (Twilio allows it) and drop any query string, which
    Twilio does not support and reportedly strips: a bridge must not depend on it."""
    warnings = []
    parts = urlsplit(url)
    if not parts.scheme:
        base = urlsplit(urljoin(webhook_url, url))
        parts = base._replace(scheme={"https": "wss", "http": "ws"}.get(base.scheme, base.scheme))
    if parts.scheme not in ("ws", "wss"):
        raise CallError(f"stream url scheme must be wss (Twilio 31922): {url!r}")
    if parts.query or parts.fragment:
        warnings.append(f"stream url has a query string or fragment, which Twilio strips: {url!r}")
        parts = parts._replace(query="", fragment="")
    return urlunsplit(parts), warnings
