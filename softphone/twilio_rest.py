"""A local stand-in for the Twilio REST endpoints the bridge uses: create a call and update a call
(https://www.twilio.com/docs/voice/api/call-resource). The real ``twilio`` client talks to it over HTTP
(``TWILIO_API_URL``), and it "answers" each call by playing Twilio's part against the bridge with the
softphone: as a human (a short "Hello?", then speech once greeted), as a voicemail (a long greeting,
a beep, then silence while it records), or not at all (no answer, busy); or it rings the browser phone
and a person answers (``answer="browser"``, softphone/browser_line.py).

Callbacks follow Twilio's documented fields and are signed like every Twilio webhook:
- AsyncAmdStatusCallback (https://www.twilio.com/docs/voice/answering-machine-detection): AccountSid,
  CallSid, AnsweredBy, MachineDetectionDuration; once per call, after the greeting's end for a machine
  (``MachineDetection=DetectMessageEnd``), after about a second of silence for a human.
- StatusCallback (https://www.twilio.com/docs/voice/api/call-resource#statuscallback): the standard call
  parameters with the final CallStatus (and CallDuration once answered); with no StatusCallbackEvent
  only the final status is sent.
Where the docs give no figure (how long detection takes), the timings here are ours.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hmac
import json
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from aiohttp import web

from common.g711 import ULAW_SILENCE, encode_ulaw
from softphone.browser_line import BrowserLine
from softphone.result import CallResult
from softphone.speech import silence, speech_like
from softphone.stream import FRAME, MediaStream
from softphone.webhook import API_VERSION, CallError, fetch_twiml, new_sid, parse_twiml, signed_url, \
    twilio_signature

ANSWERS = ("human", "voicemail", "no-answer", "busy")
RATE = 8000
SPEECH_END_S = 1.2  # Twilio's MachineDetectionSpeechEndThreshold default: silence that ends a human's words
HELLO_S, GREETED_AFTER_S, REPLY_S = 0.6, 4.0, 1.5  # "Hello?", the pause for the greeting, then speech
VOICEMAIL_GREETING_S, BEEP_S, BEEP_HZ = 4.0, 0.5, 1000.0
RECORD_S = 20.0  # how long the voicemail records after the beep, at most
LISTEN_S = 4.0


@dataclass
class FakeCall:
    sid: str
    form: dict[str, str]
    status: str = "queued"
    answer: str = "human"
    detect: bool = True  # False: no AsyncAmdStatusCallback (as when detection is off, or the callback is lost)
    stream: MediaStream | None = None
    result: CallResult | None = None
    callbacks: list[tuple[str, dict[str, str], int]] = field(default_factory=list)  # (url, params, HTTP status)
    answered_at: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)


def human_audio() -> np.ndarray:
    """ "Hello?", a pause long enough to be greeted, then something to talk about."""
    return np.concatenate([speech_like(HELLO_S, seed=11), silence(GREETED_AFTER_S),
                           speech_like(REPLY_S, seed=12)])


def voicemail_audio() -> np.ndarray:
    """A voicemail greeting, its beep, then the silence it records."""
    t = np.arange(round(BEEP_S * RATE)) / RATE
    beep = np.round(8000 * np.sin(2 * np.pi * BEEP_HZ * t)).astype(np.int16)
    return np.concatenate([speech_like(VOICEMAIL_GREETING_S, seed=13), beep, silence(RECORD_S)])


class TwilioRest:
    """An aiohttp server for ``/2010-04-01/Accounts/{AccountSid}/Calls[/{CallSid}].json``.
    ``answer`` is how the next calls are answered, ``detect`` whether detection reports a verdict;
    ``calls`` keeps every call created."""

    def __init__(self, account_sid: str, auth_token: str, answer: str = "human", ring_s: float = 0.5):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.answer, self.ring_s, self.detect = answer, ring_s, True
        self.line = BrowserLine(self, amd_after_s=HELLO_S + SPEECH_END_S)  # calls answered in a browser
        self.calls: dict[str, FakeCall] = {}
        self.updates: list[tuple[str, dict[str, str]]] = []
        self._tasks: set[asyncio.Task] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        base = f"/{API_VERSION}/Accounts/{{account}}/Calls"
        app.router.add_post(base + ".json", self.create)
        app.router.add_post(base + "/{sid}.json", self.update)
        self.line.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    # --- REST -------------------------------------------------------------------------------------

    def _refused(self, request: web.Request) -> web.Response | None:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected.encode()) \
                or request.match_info["account"] != self.account_sid:
            return _twilio_error(401, 20003, "Authenticate")
        return None

    async def create(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not form.get("To"):
            return _twilio_error(400, 21201, "No 'To' number is specified")
        if not form.get("From"):
            return _twilio_error(400, 21213, "No 'From' number is specified")
        call = FakeCall(new_sid("CA"), form, answer=self.answer, detect=self.detect)
        self.calls[call.sid] = call
        task = asyncio.create_task(self._run(call), name=f"twilio-rest-{call.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(self._resource(call), status=201)

    async def update(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        call = self.calls.get(request.match_info["sid"])
        if call is None:
            return _twilio_error(404, 20404, "The requested resource was not found")
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.updates.append((call.sid, form))
        if form.get("Status") in ("completed", "canceled"):
            if call.stream is not None:
                call.stream.end_call()  # Twilio ends the stream with `stop`, then the call
            elif call.answer == "browser" and call.status == "in-progress":
                self.line.end_call(call)
            elif call.status in ("queued", "ringing"):
                call.status = "canceled"
        elif "Twiml" in form or "Url" in form:
            return _twilio_error(400, 0, "the stand-in does not redirect calls (the bridge never asks)")
        return web.json_response(self._resource(call))

    def _resource(self, call: FakeCall) -> dict:
        now = email.utils.formatdate(usegmt=True)
        return {"sid": call.sid, "account_sid": self.account_sid, "to": call.form.get("To"),
                "from": call.form.get("From"), "status": call.status, "direction": "outbound-api",
                "api_version": API_VERSION, "answered_by": None, "date_created": now, "date_updated": now,
                "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{call.sid}.json"}

    # --- the call ---------------------------------------------------------------------------------

    async def _run(self, call: FakeCall) -> None:
        try:
            async with aiohttp.ClientSession() as session:
                call.status = "ringing"
                if call.answer == "browser":
                    return await self.line.ring(session, call)
                await asyncio.sleep(self.ring_s)
                if call.status == "canceled" or call.answer in ("no-answer", "busy"):
                    call.status = "canceled" if call.status == "canceled" else call.answer
                    await self.callback(session, call, call.form.get("StatusCallback"), self.status_params(call))
                    return
                await self._answer(session, call)
        finally:
            call.done.set()

    async def _answer(self, session: aiohttp.ClientSession, call: FakeCall) -> None:
        call.status, call.answered_at = "in-progress", time.monotonic()
        webhook = call.form.get("StatusCallback") or "http://127.0.0.1/"
        twiml = parse_twiml(call.form["Twiml"], webhook)
        if call.answer == "human":
            audio, verdict, after_s = human_audio(), "human", HELLO_S + SPEECH_END_S
        else:
            audio, verdict = voicemail_audio(), "machine_end_beep"
            after_s = VOICEMAIL_GREETING_S + BEEP_S + 0.2
        frames = _frames(audio)
        call.stream = MediaStream(twiml, call.sid, self.account_sid, frames + _frames(silence(LISTEN_S)),
                                  len(frames), [], realtime=True, hangup=True)
        amd = asyncio.create_task(self._detect(session, call, verdict, after_s)) if call.detect else None
        try:
            await call.stream.run(session, self.auth_token)
        except CallError as e:
            call.stream.errors.append(str(e))
        finally:
            if amd is not None:
                amd.cancel()
        call.result = call.stream.result()
        if call.stream.closed_by == "server" and twiml.redirect:  # Twilio runs the <Redirect>
            try:
                await fetch_twiml(session, twiml.redirect, {**self.call_params(call), "CallStatus": "in-progress"},
                                  self.auth_token)
            except CallError as e:
                if "has no <Response><Connect><Stream" not in str(e):  # <Hangup/>: the call is over
                    call.result.protocol_errors.append(str(e))
        call.status = "completed"
        await self.callback(session, call, call.form.get("StatusCallback"), self.status_params(call))

    async def _detect(self, session: aiohttp.ClientSession, call: FakeCall, verdict: str, after_s: float):
        while not call.stream.t0:
            await asyncio.sleep(0.02)
        await asyncio.sleep(max(0.0, call.stream.t0 + after_s - asyncio.get_running_loop().time()))
        params = {"AccountSid": self.account_sid, "AnsweredBy": verdict, "CallSid": call.sid,
                  "MachineDetectionDuration": str(round(after_s * 1000))}
        await self.callback(session, call, call.form.get("AsyncAmdStatusCallback"), params)

    def call_params(self, call: FakeCall) -> dict[str, str]:
        return {"AccountSid": self.account_sid, "ApiVersion": API_VERSION, "CallSid": call.sid,
                "Called": call.form["To"], "Caller": call.form["From"], "Direction": "outbound-api",
                "From": call.form["From"], "To": call.form["To"]}

    def status_params(self, call: FakeCall) -> dict[str, str]:
        params = {**self.call_params(call), "CallStatus": call.status}
        if call.answered_at:
            params["CallDuration"] = str(round(time.monotonic() - call.answered_at))
        return params

    async def callback(self, session: aiohttp.ClientSession, call: FakeCall, url: str | None,
                        params: dict[str, str]) -> None:
        if not url:
            return
        headers = {"X-Twilio-Signature": twilio_signature(self.auth_token, signed_url(url), params),
                   "User-Agent": "TwilioProxy/1.1"}
        try:
            async with session.post(url, data=params, headers=headers) as response:
                call.callbacks.append((url, params, response.status))
        except aiohttp.ClientError as e:
            call.callbacks.append((url, params, 0))
            if call.result is not None:
                call.result.protocol_errors.append(f"callback {url} failed: {e}")


def _frames(audio: np.ndarray) -> list[bytes]:
    ulaw = encode_ulaw(np.asarray(audio, dtype=np.int16))
    ulaw += bytes([ULAW_SILENCE]) * (-len(ulaw) % FRAME)
    return [ulaw[i:i + FRAME] for i in range(0, len(ulaw), FRAME)]


def _twilio_error(status: int, code: int, message: str) -> web.Response:
    """Twilio's error body (https://www.twilio.com/docs/usage/twilios-response#response-formats-exceptions)."""
    return web.json_response({"code": code, "message": message, "status": status,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}"}, status=status)


async def call_outbound(bridge_url: str, api_token: str, request: dict, *, answer: str, port: int,
                        account_sid: str, auth_token: str, timeout_s: float = 90.0) -> tuple[dict, FakeCall]:
    """Serve the stand-in on ``port`` (where the bridge's ``TWILIO_API_URL`` points), ask the bridge to
    place ``request`` (``POST /calls``), answer it as ``answer`` and wait for the call's end. Returns the
    bridge's answer and the call; a refused request raises ``CallError`` with the bridge's reason."""
    twilio = TwilioRest(account_sid, auth_token, answer=answer)
    await twilio.start(port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(bridge_url.rstrip("/") + "/calls", json=request,
                                    headers={"Authorization": f"Bearer {api_token}"}) as response:
                text = await response.text()
                if response.status != 201:
                    raise CallError(f"POST /calls answered HTTP {response.status}: {text.strip()[:300]}")
        placed = json.loads(text)
        call = twilio.calls[placed["call_sid"]]
        await asyncio.wait_for(call.done.wait(), timeout_s)
        return placed, call
    finally:
        await twilio.stop()
