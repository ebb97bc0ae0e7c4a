"""The Twilio REST stand-in's calls to the browser phone: instead of answering a call itself
(softphone/twilio_rest.py), the stand-in rings the page at ``/phone``, and a person answers or declines.

The split is Twilio's own: the stand-in stays Twilio's control plane (the REST resource, the signed
answering-machine and status callbacks, the signed stream upgrade and ``<Redirect>``, none of which a
browser can sign without the auth token), and the page plays Twilio's side of the Media Stream, the
same messages it sends for an inbound call. The page's stream reaches the bridge through a relay here,
which adds the upgrade's ``X-Twilio-Signature`` and passes every message on unchanged.

For the page (a loopback origin only; CORS, since the page comes from the bridge's origin):
- ``GET /browser``: the line is up (the page enables its button);
- ``GET /browser/calls/{CallSid}/events``: the call's status as Server-Sent Events, until it ends;
- ``POST /browser/calls/{CallSid}/answer`` and ``/decline``, while it rings;
- ``GET /browser/calls/{CallSid}/stream``: the WebSocket relayed to the TwiML's ``<Stream url>``.

Twilio's documentation gives no call status for a callee who declines: a rejected mobile call usually
reaches Twilio as ``busy``, so a decline here ends the call ``busy``. Nobody answering within the create
request's ``Timeout`` (Twilio's default 60 s) ends it ``no-answer``. Detection hears a person: they
pressed Answer, so its verdict is ``human``, after Twilio's usual time for a short "Hello?".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from softphone.webhook import CallError, fetch_twiml, parse_twiml, upgrade_headers

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
OPEN_S = 15.0  # an answered call whose page opens no stream this soon is over
POLL_S = 0.05
ENDED = ("completed", "busy", "no-answer", "canceled", "failed")
MAX_MESSAGE = 1 << 20


@dataclass
class Ring:
    """A call ringing, or answered by, the browser phone."""
    session: aiohttp.ClientSession
    choice: str = ""  # "answer" or "decline", once the person chose
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    closed_by: str = ""  # "server" (the bridge) or "browser"
    start: dict | None = None  # the page's `start` message, once sent
    seq: int = 0  # the last sequenceNumber the page sent
    sockets: list = field(default_factory=list)  # the page's and the bridge's WebSockets


def loopback_origin(origin: str | None) -> bool:
    """A request without Origin (not a browser) or from a page on this host."""
    if origin is None:
        return True
    return urlsplit(origin).hostname in LOOPBACK_HOSTS


def ring_timeout(form: dict[str, str]) -> int:
    """The create request's ``Timeout``: Twilio's default 60 s, at most 600 s."""
    try:
        return max(5, min(600, int(form.get("Timeout", "60"))))
    except ValueError:
        return 60


class BrowserLine:
    def __init__(self, rest, amd_after_s: float):
        self.rest = rest  # the TwilioRest whose calls these are
        self.amd_after_s = amd_after_s  # how long detection takes to call a short "Hello?" human
        self.rings: dict[str, Ring] = {}
        self.refused = 0  # requests refused: malformed, unknown call, wrong state, foreign origin

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/browser", self.health)
        app.router.add_get("/browser/calls/{sid}/events", self.events)
        app.router.add_post("/browser/calls/{sid}/{choice}", self.choose)
        app.router.add_get("/browser/calls/{sid}/stream", self.stream)

    def _refuse(self, request: web.Request, status: int, why: str) -> web.Response:
        self.refused += 1
        log.warning("browser line: %s %s refused (%d): %s", request.method, request.path[:80], status, why)
        return web.json_response({"error": why}, status=status, headers=_cors(request))

    def _find(self, request: web.Request) -> tuple[object, Ring | None, web.Response | None]:
        if not loopback_origin(request.headers.get("Origin")):
            return None, None, self._refuse(request, 403, "only a page on this host may use the line")
        call, ring = self.rest.calls.get(request.match_info["sid"]), self.rings.get(request.match_info["sid"])
        if call is None or ring is None:
            return None, None, self._refuse(request, 404, "no such call on the browser line")
        return call, ring, None

    async def health(self, request: web.Request) -> web.Response:
        if not loopback_origin(request.headers.get("Origin")):
            return self._refuse(request, 403, "only a page on this host may use the line")
        return web.json_response({"line": "browser", "ringing": len(self.rings)}, headers=_cors(request))

    # --- the call's life -----------------------------------------------------------------------

    async def ring(self, session: aiohttp.ClientSession, call) -> None:
        """From ringing to the final status callback; the stand-in's ``_run`` for a browser call."""
        ring = self.rings[call.sid] = Ring(session)
        deadline = time.monotonic() + ring_timeout(call.form)
        try:
            while not ring.choice and call.status != "canceled" and time.monotonic() < deadline:
                await asyncio.sleep(POLL_S)
            if ring.choice != "answer" or call.status == "canceled":
                call.status = ("canceled" if call.status == "canceled" else
                               "busy" if ring.choice == "decline" else "no-answer")
                log.info("browser line: call %s %s", call.sid, call.status)
            else:
                await self._talk(session, call, ring)
                call.status = "completed"
            await self.rest.callback(session, call, call.form.get("StatusCallback"), self.rest.status_params(call))
        finally:
            self.rings.pop(call.sid, None)

    async def _talk(self, session: aiohttp.ClientSession, call, ring: Ring) -> None:
        try:
            await asyncio.wait_for(ring.opened.wait(), OPEN_S)
        except TimeoutError:
            log.warning("browser line: call %s answered, but the page opened no stream", call.sid)
            return
        await ring.ended.wait()
        twiml = parse_twiml(call.form["Twiml"], call.form.get("StatusCallback") or "http://127.0.0.1/")
        if ring.closed_by == "server" and twiml.redirect:  # Twilio runs the <Redirect> after </Connect>
            params = {**self.rest.call_params(call), "CallStatus": "in-progress"}
            try:
                after = await fetch_twiml(session, twiml.redirect, params, self.rest.auth_token)
                if after.stream_url:
                    log.warning("browser line: the bridge connected a new stream; the page follows only one")
            except CallError as e:
                if "has no <Response><Connect><Stream" not in str(e):  # <Hangup/>: the call is over
                    log.warning("browser line: %s", e)

    def end_call(self, call) -> None:
        """Twilio ends an answered call (a REST hang-up): ``stop`` to the bridge, then both sockets close."""
        ring = self.rings.get(call.sid)
        if ring is not None and ring.start is not None and len(ring.sockets) == 2:
            page, bridge = ring.sockets
            ring.closed_by = ring.closed_by or "twilio"
            stop = {"event": "stop", "sequenceNumber": str(ring.seq + 1), "streamSid": ring.start["streamSid"],
                    "stop": {"accountSid": self.rest.account_sid, "callSid": call.sid}}
            asyncio.create_task(_stop_then_close(bridge, page, json.dumps(stop)))

    # --- the page's requests -------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        call, ring, refused = self._find(request)
        if refused is not None:
            return refused
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               **_cors(request)})
        await response.prepare(request)
        sent = ""
        try:
            await response.write(b": ringing\n\n")
            while True:
                if call.status != sent:
                    sent = call.status
                    event = {"status": sent, "from": call.form.get("From", ""), "to": call.form.get("To", "")}
                    await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                if sent in ENDED:
                    break
                await asyncio.sleep(POLL_S)
        except ConnectionResetError:
            pass  # the page went away
        return response

    async def choose(self, request: web.Request) -> web.Response:
        choice = request.match_info["choice"]
        if choice not in ("answer", "decline"):
            return self._refuse(request, 404, "the page may answer or decline")
        call, ring, refused = self._find(request)
        if refused is not None:
            return refused
        if ring.choice or call.status != "ringing":
            return self._refuse(request, 409, f"the call is {call.status}, not ringing")
        ring.choice = choice
        log.info("browser line: call %s %s", call.sid, "answered" if choice == "answer" else "declined")
        if choice == "decline":
            return web.json_response({"status": "busy"}, headers=_cors(request))
        call.status, call.answered_at = "in-progress", time.monotonic()  # from now, as at Twilio
        twiml = parse_twiml(call.form["Twiml"], call.form.get("StatusCallback") or "http://127.0.0.1/")
        relay = str(request.url.with_path(f"/browser/calls/{call.sid}/stream").with_scheme("ws"))
        return web.json_response({"call_sid": call.sid, "account_sid": self.rest.account_sid,
                                  "stream_url": relay, "parameters": twiml.parameters}, headers=_cors(request))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        call, ring, refused = self._find(request)
        if refused is not None:
            return refused
        if ring.choice != "answer" or ring.opened.is_set():
            return self._refuse(request, 409, "answer first; one stream per call")
        page = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
        await page.prepare(request)
        twiml = parse_twiml(call.form["Twiml"], call.form.get("StatusCallback") or "http://127.0.0.1/")
        try:
            bridge = await ring.session.ws_connect(twiml.stream_url, max_msg_size=MAX_MESSAGE,
                                                   headers=upgrade_headers(self.rest.auth_token, twiml.stream_url))
        except aiohttp.ClientError as e:  # Twilio's 31920: the page sees its stream close unopened
            log.warning("browser line: the bridge's stream would not open: %s", e)
            await page.close(code=1011)
            ring.opened.set()
            ring.ended.set()
            return page
        ring.sockets[:] = [page, bridge]
        ring.opened.set()
        up = asyncio.create_task(self._up(page, bridge, call, ring))
        down = asyncio.create_task(_pipe(bridge, page))
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        ring.closed_by = ring.closed_by or ("server" if down in done else "browser")
        await asyncio.gather(page.close(), bridge.close(), return_exceptions=True)
        await asyncio.gather(up, down, return_exceptions=True)
        ring.ended.set()
        return page

    async def _up(self, page: web.WebSocketResponse, bridge, call, ring: Ring) -> None:
        """The page's messages to the bridge, unchanged; its ``start`` starts detection."""
        amd = None
        try:
            async for msg in page:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue  # Twilio sends text frames only
                event = _peek(msg.data)
                ring.seq = max(ring.seq, _int(event.get("sequenceNumber")))
                if event.get("event") == "start" and ring.start is None and isinstance(event.get("streamSid"), str):
                    ring.start = event
                    if call.detect:
                        amd = asyncio.create_task(self._detect(call, ring))
                await bridge.send_str(msg.data)
        finally:
            if amd is not None:
                amd.cancel()

    async def _detect(self, call, ring: Ring) -> None:
        await asyncio.sleep(self.amd_after_s)
        params = {"AccountSid": self.rest.account_sid, "AnsweredBy": "human", "CallSid": call.sid,
                  "MachineDetectionDuration": str(round(self.amd_after_s * 1000))}
        await self.rest.callback(ring.session, call, call.form.get("AsyncAmdStatusCallback"), params)


async def _pipe(source, sink) -> None:
    async for msg in source:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)


async def _stop_then_close(bridge, page, stop: str) -> None:
    try:
        await bridge.send_str(stop)
    except (ConnectionResetError, RuntimeError):
        pass
    await asyncio.gather(bridge.close(), page.close(), return_exceptions=True)


def _peek(text: str) -> dict:
    try:
        event = json.loads(text)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _cors(request: web.Request) -> dict[str, str]:
    """The page comes from the bridge's origin; only a loopback one gets here (``loopback_origin``)."""
    origin = request.headers.get("Origin")
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}
