"""Outbound calls: ``POST /calls`` places one through Twilio's REST API, and two webhooks Twilio calls
about it, ``/twiml/amd`` (the asynchronous answering-machine detection's verdict) and
``/twiml/call-status`` (the call's final status). Both are under ``/twiml``, so they are signed and
checked like every webhook (gateway/security.py). What a request may hold and what each verdict does:
gateway/outbound_rules.py. The whole flow, and the Twilio console settings: docs/outbound.md.

A placed call holds capacity from the request on (its stream token is pending, gateway/admission.py),
and its Gemini session is pre-warmed while the phone rings, with the greeting held. Twilio runs our
``<Connect><Stream>`` when the callee answers and detection listens meanwhile; the callee's audio
reaches the model only once the verdict is in, so the model answers neither "Hello?" nor a voicemail
greeting. No verdict ``AMD_WAIT_S`` after the stream started, with the callee heard speaking: the
greeting goes anyway.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import aiohttp
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from common import messages as m
from common.lifecycle import spawn
from common.logs import call_context, name_call, register_call
from common.settings import Settings
from gateway import twiml
from gateway.calls import Call
from gateway.limits import TokenBucket
from gateway.outbound_rules import FINAL_STATUSES, MAX_BODY, DialError, DialRequest, next_step, parse_request
from gateway.transcripts import TranscriptLog
from gateway.twilio_api import RedirectedHttpClient

log = logging.getLogger(__name__)

RING_TIMEOUT_S = 30  # Twilio's `Timeout`: how long the phone rings before the call is no-answer
TOKEN_TTL_S = RING_TIMEOUT_S + 30  # Twilio may add a few seconds to the ring; the stream opens at answer
AMD_WAIT_S = 8.0  # no verdict this long after the stream started: a callee heard speaking is greeted
DIAL_PER_MIN = 10.0  # calls placed a minute, and as many at once: an open dialler costs money
KEEP_S = 4 * 3600.0  # a placed call Twilio never reported the end of is forgotten after this


class Keys(NamedTuple):
    """The app keys this module reads (declared by gateway/app.py)."""
    pipeline: web.AppKey
    admissions: web.AppKey
    counters: web.AppKey


@dataclass
class Placed:
    """One outbound call, from the request to Twilio's final status callback."""
    call: str
    call_sid: str
    request: DialRequest
    transcript: TranscriptLog
    placed_at: float
    stream: Call | None = None  # the call's stream, once the callee answered
    verdict: str = ""  # AnsweredBy, or "none" when the greeting went without one
    reason: str = ""  # why we ended it (a machine), counted as its outcome
    waiter: asyncio.Task | None = None


class Dialler:
    def __init__(self, app: web.Application, settings: Settings, keys: Keys, refusal: Callable[..., str]):
        self.app, self.settings, self.keys, self.refusal = app, settings, keys, refusal
        self.bucket = TokenBucket(DIAL_PER_MIN / 60, DIAL_PER_MIN, time.monotonic())
        self.placed: dict[str, Placed] = {}  # CallSid -> the call
        self._twilio: Client | None = None

    pipeline = property(lambda self: self.app[self.keys.pipeline])

    def _count(self, name: str) -> None:
        counters = self.app[self.keys.counters]
        counters[name] = counters.get(name, 0) + 1

    def _client(self) -> Client:
        if self._twilio is None:  # made in the running loop: its aiohttp session belongs to it
            http = RedirectedHttpClient(self.settings.twilio_api_url)
            self._twilio = Client(self.settings.twilio_account_sid, self.settings.twilio_auth_token,
                                  http_client=http)
        return self._twilio

    async def close(self, app: web.Application) -> None:
        for waiter in [p.waiter for p in self.placed.values() if p.waiter is not None]:
            waiter.cancel()
        if self._twilio is not None:
            await self._twilio.http_client.close()

    # --- POST /calls ----------------------------------------------------------------------------

    async def place(self, request: web.Request) -> web.Response:
        settings = self.settings
        if not settings.api_token:
            return _error(404, "outbound calls are off: set BRIDGE_API_TOKEN to turn POST /calls on")
        if not _bearer_ok(request, settings.api_token):
            self._count("calls_api_unauthorized")
            log.warning("POST /calls refused: no or wrong bearer token")
            return _error(401, "send Authorization: Bearer <BRIDGE_API_TOKEN>",
                          headers={"WWW-Authenticate": "Bearer"})
        if not (settings.twilio_account_sid and settings.twilio_auth_token):
            return _error(503, "outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        if (request.content_length or 0) > MAX_BODY:
            return _error(413, f"the body is larger than {MAX_BODY} bytes")
        try:
            dial = parse_request(await request.read(), settings)
        except DialError as e:
            self._count("calls_api_refused")
            log.warning("POST /calls refused (%d): %s", e.status, e)
            return _error(e.status, str(e))
        return await self.dial_checked(dial)

    async def dial_checked(self, dial: DialRequest) -> web.Response:
        """Place a checked request, if there is room and the rate allows (also the browser phone's)."""
        why = self.refusal(self.app)
        if why:
            self._count("calls_api_busy")
            log.warning("POST /calls refused: %s", why)
            return _error(429 if why == "at capacity" else 503, f"no call placed: {why}",
                          headers={"Retry-After": "10"})
        if not self.bucket.take(time.monotonic()):
            self._count("calls_api_rate_limited")
            log.warning("POST /calls refused: more than %g calls a minute", DIAL_PER_MIN)
            return _error(429, f"at most {DIAL_PER_MIN:g} calls a minute", headers={"Retry-After": "6"})
        return await self._dial(dial)

    async def _dial(self, dial: DialRequest) -> web.Response:
        settings, admissions = self.settings, self.app[self.keys.admissions]
        call, token, placeholder = admissions.issue_outbound(TOKEN_TTL_S)
        base = settings.public_url
        body = twiml.connect_stream_twiml(settings.stream_url, {"token": token},
                                          after_url=f"{base}/twiml/after?call={call}",
                                          status_callback_url=f"{base}/twiml/stream-status?call={call}")
        try:
            created = await self._client().calls.create_async(
                to=dial.to, from_=dial.from_, twiml=body, timeout=RING_TIMEOUT_S,
                machine_detection="DetectMessageEnd", async_amd="true",
                async_amd_status_callback=f"{base}/twiml/amd?call={call}", async_amd_status_callback_method="POST",
                status_callback=f"{base}/twiml/call-status?call={call}", status_callback_method="POST")
        except TwilioRestException as e:
            admissions.revoke(placeholder)
            self._count("calls_api_twilio_refused")
            log.error("Twilio refused the call to %s: HTTP %s, code %s: %s", dial.to, e.status, e.code, e.msg)
            return _error(502, f"Twilio refused the call: {e.msg} (code {e.code})")
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            admissions.revoke(placeholder)
            self._count("calls_api_twilio_unreachable")
            log.error("Twilio's API unreachable: %s", e)
            return _error(502, f"Twilio's API unreachable: {type(e).__name__}")
        sid = created.sid
        admissions.bind(placeholder, sid)
        register_call(call, sid)
        placed = Placed(call, sid, dial, TranscriptLog(settings.transcript_dir, sid), time.monotonic())
        self._forget_stale()
        self.placed[sid] = placed
        self.pipeline.prewarm(call, sid, m.CallStart(
            call=call, call_sid=sid, stream_sid="", params=dial.params, model="",
            instruction=dial.system_instruction, greeting=dial.greeting, hold_greeting=True))
        self._count("calls_placed")
        with call_context(call, sid):
            log.info("outbound call to %s placed (voicemail: %s)", dial.to, dial.voicemail_policy)
            placed.transcript.event("dialled", to=dial.to, voicemail=dial.voicemail_policy)
        return web.json_response({"call_sid": sid, "call": call}, status=201)

    # --- the stream, and Twilio's callbacks --------------------------------------------------------

    def on_call_start(self, call: Call) -> None:
        """The pipeline's hook: a stream started; if it is one of ours, the callee answered."""
        placed = self.placed.get(call.call_sid)
        if placed is None or placed.call != call.id:
            return
        placed.stream = call
        call.end_reason = placed.reason
        if not placed.verdict:
            placed.waiter = spawn(self._wait_for_verdict(placed), f"amd-wait:{call.id}")

    async def _wait_for_verdict(self, placed: Placed) -> None:
        await asyncio.sleep(AMD_WAIT_S)
        with call_context(placed.call):
            while not placed.verdict and placed.call in self.pipeline.calls:
                if placed.stream.caller_spoke:
                    placed.verdict = "none"
                    log.warning("no answering-machine verdict %g s after the answer, and the callee "
                                "spoke: greeting now", AMD_WAIT_S)
                    placed.transcript.event("answered", by="no verdict")
                    self.pipeline.greet(placed.call)
                    return
                await asyncio.sleep(0.25)

    async def amd(self, request: web.Request) -> web.Response:
        """AsyncAmdStatusCallback: AccountSid, CallSid, AnsweredBy, MachineDetectionDuration."""
        form = await request.post()
        sid, answered_by = str(form.get("CallSid", "")), str(form.get("AnsweredBy", ""))[:40]
        placed = self.placed.get(sid)
        if placed is None:
            log.warning("answering-machine verdict for unknown call %.40r ignored", sid)
            return web.Response(status=204)
        name_call(placed.call, sid)
        if placed.verdict:
            log.info("answering-machine verdict %r after %r: ignored", answered_by, placed.verdict)
            return web.Response(status=204)
        placed.verdict, step = answered_by, next_step(answered_by, placed.request.voicemail_policy)
        self._count(f"outbound_answered_{step.kind}")
        placed.transcript.event("answered", by=answered_by,
                                detection_ms=str(form.get("MachineDetectionDuration", ""))[:12])
        self._act(placed, step)
        return web.Response(status=204)

    def _act(self, placed: Placed, step) -> None:
        stream = placed.stream if placed.stream is not None and placed.call in self.pipeline.calls else None
        if step.kind == "greet":
            if not self.pipeline.greet(placed.call):
                log.warning("a human answered, but no model_client holds the call's session")
            return
        if step.kind == "message" and stream is not None:
            log.info("voicemail: leaving the message, then hanging up")
            stream.end_reason = placed.reason = step.reason
            self.pipeline.state.update(placed.call_sid, disposition="hangup", target="")
            self.pipeline.greet(placed.call, placed.request.voicemail_text)
            stream.leave_after_playback()
            return
        reason = step.reason if step.kind == "hangup" else f"{step.reason}: no stream to speak on"
        log.info("%s: hanging up", reason)
        placed.reason = reason
        if stream is not None:
            stream.end_reason = reason
        spawn(self._hang_up(placed), f"outbound-hangup:{placed.call}")

    async def _hang_up(self, placed: Placed) -> None:
        with call_context(placed.call):
            try:
                await self._client().calls(placed.call_sid).update_async(status="completed")
            except (TwilioRestException, aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                self._count("outbound_hangup_failed")
                log.error("hanging up through Twilio's API failed: %s", e)

    async def status(self, request: web.Request) -> web.Response:
        """StatusCallback: the call's final CallStatus (completed, busy, no-answer, failed, canceled)."""
        form = await request.post()
        sid, status = str(form.get("CallSid", "")), str(form.get("CallStatus", ""))[:20]
        placed = self.placed.get(sid)
        if placed is None:
            log.info("status %r of unknown call %.40r ignored", status, sid)
            return web.Response(status=204)
        name_call(placed.call, sid)
        if status not in FINAL_STATUSES:
            log.info("outbound call %s", status)
            return web.Response(status=204)
        placed.transcript.event("ended", status=status, duration_s=str(form.get("CallDuration", ""))[:12])
        if placed.stream is None:  # no stream: the pipeline never counted it
            self.pipeline.count_ended(placed.reason or f"outbound {status}")
            log.info("outbound call ended without an answer: %s", placed.reason or status)
        self._forget(placed)
        return web.Response(status=204)

    def _forget(self, placed: Placed) -> None:
        self.placed.pop(placed.call_sid, None)
        if placed.waiter is not None:
            placed.waiter.cancel()
        for call in {placed.call, *self.app[self.keys.admissions].revoke(placed.call_sid)}:
            self.pipeline.drop_prewarm(call, "outbound call over")

    def _forget_stale(self) -> None:
        now = time.monotonic()
        for placed in [p for p in self.placed.values() if now - p.placed_at > KEEP_S]:
            log.warning("outbound call %s: Twilio never reported its end; forgotten", placed.call_sid)
            self._forget(placed)


def _bearer_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}) + "\n",
                        content_type="application/json", headers=headers)


def setup(app: web.Application, settings: Settings, keys: Keys, refusal: Callable[..., str]) -> Dialler:
    dialler = Dialler(app, settings, keys, refusal)
    app.router.add_post("/calls", dialler.place)
    app.router.add_post("/twiml/amd", dialler.amd)
    app.router.add_post("/twiml/call-status", dialler.status)
    app.on_cleanup.append(dialler.close)

    async def hook(app: web.Application) -> None:  # the pipeline exists once its cleanup context ran
        app[keys.pipeline].on_call_start = dialler.on_call_start
    app.on_startup.append(hook)
    return dialler
