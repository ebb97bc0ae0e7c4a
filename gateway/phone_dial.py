"""The browser phone's "Call me": ``/phone/call-me`` has the bridge dial the browser phone, through the
same code as ``POST /calls`` (the ``twilio`` client, answering-machine detection, pre-warm, a greeting
held until a human answers).

``GET`` says whether the button works here and, if not, why (the page shows the reason on a disabled
button); ``POST`` places the call. The page never holds ``BRIDGE_API_TOKEN``: this host's own page asks
(a loopback peer, never a proxy's relay), and only when the bridge dials through the local Twilio
stand-in (``TWILIO_API_URL`` on this host, softphone/twilio_rest.py), which rings the browser instead of
a phone. Pointed at the real Twilio, a "Call me" would dial a real number and cost money, so it is off.
A POST must be ``application/json``: a page of another origin cannot send that without a CORS preflight,
which this endpoint never answers, so no other site can make a visitor's browser dial.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from aiohttp import web

from common.settings import Settings
from gateway import security
from gateway.outbound import Dialler
from gateway.outbound_rules import MAX_BODY, DialError, parse_request

log = logging.getLogger(__name__)

PHONE_NUMBER = "+15550100002"  # the browser phone's number (555-01xx numbers are reserved for fiction)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Spoken once a person answers, when neither the page nor BRIDGE_GREETING gives one: an outbound call
# whose callee hears nothing would not show the held greeting at all.
GREETING = "Greet the person who just answered, and say that you are calling to try out the phone bridge."


def why_not(settings: Settings) -> str:
    """Why "Call me" cannot work with these settings, "" if it can. Pure: a table in the tests."""
    if not settings.api_token:
        return "outbound calls are off (BRIDGE_API_TOKEN is not set): start the stack with make run-outbound"
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        return "outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (make run-outbound sets them)"
    url = urlsplit(settings.twilio_api_url)
    if url.scheme != "http" or url.hostname not in LOOPBACK_HOSTS:
        return ("the bridge dials through Twilio itself (TWILIO_API_URL): that would ring a real phone, "
                "not this page; use the local stand-in (make run-outbound, then make phone-line)")
    if not settings.dial_allowed(PHONE_NUMBER):
        return f"the browser phone's number {PHONE_NUMBER} is not on BRIDGE_DIAL_ALLOW"
    return ""


def dial_body(raw: bytes, greeting: str) -> bytes:
    """The page's request as a ``POST /calls`` body: its number is the browser phone's, fixed here,
    and ``greeting`` unless it brings its own."""
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise DialError(400, f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise DialError(400, "the body must be a JSON object")
    if {"to", "from"} & set(body):
        raise DialError(400, f"the browser phone's number is fixed ({PHONE_NUMBER}): send no `to` or `from`")
    return json.dumps({"greeting": greeting, **body, "to": PHONE_NUMBER}).encode()


class CallMe:
    def __init__(self, settings: Settings, dialler: Dialler, counters: dict[str, int]):
        self.settings, self.dialler, self.counters = settings, dialler, counters

    def _refuse(self, status: int, why: str) -> web.Response:
        self.counters["phone_call_me_refused"] = self.counters.get("phone_call_me_refused", 0) + 1
        log.warning("browser phone's call-me refused (%d): %s", status, why)
        return web.json_response({"error": why}, status=status)

    async def available(self, request: web.Request) -> web.Response:
        why = why_not(self.settings) or ("" if security.is_loopback_peer(request) else
                                         "only a page opened on this host may have the bridge dial it")
        return web.json_response({"available": not why, "why": why, "number": PHONE_NUMBER,
                                  "line": self.settings.twilio_api_url if not why else ""})

    async def place(self, request: web.Request) -> web.Response:
        why = why_not(self.settings)
        if why:
            return self._refuse(409, why)
        if not security.is_loopback_peer(request):
            return self._refuse(403, "only a page opened on this host may have the bridge dial it")
        if request.content_type != "application/json":
            return self._refuse(415, "send Content-Type: application/json")
        if (request.content_length or 0) > MAX_BODY:
            return self._refuse(413, f"the body is larger than {MAX_BODY} bytes")
        try:
            raw = dial_body(await request.read(), self.settings.greeting or GREETING)
            dial = parse_request(raw, self.settings)
        except DialError as e:
            return self._refuse(e.status, str(e))
        log.info("the browser phone asked to be called")
        placed = await self.dialler.dial_checked(dial)
        if placed.status == 201:
            answer = json.loads(placed.text)
            return web.json_response({**answer, "line": self.settings.twilio_api_url}, status=201)
        return placed


def setup(app: web.Application, settings: Settings, dialler: Dialler, counters: dict[str, int]) -> None:
    """Mount ``/phone/call-me``; before the browser phone's ``/phone/{name}``, which would match it too."""
    call_me = CallMe(settings, dialler, counters)
    app.router.add_get("/phone/call-me", call_me.available)
    app.router.add_post("/phone/call-me", call_me.place)
