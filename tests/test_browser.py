"""The browser phone: the BRIDGE_PHONE setting, the /phone routes and transcript feed, the page's audio
arithmetic checked in the browser itself, and a real call from headless Chromium through the stack.

Chromium (Debian's, never a downloaded build) is driven over the DevTools protocol with aiohttp, which
the project already has, so no Node or Playwright is needed. Its fake microphone plays a WAV of
speech-like audio; the page is the same one a developer opens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
import wave
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from common import messages as m
from common.g711 import decode_ulaw, encode_ulaw
from common.settings import SettingsError, load
from gateway import phone, phone_dial
from gateway import twilio_codec as tw
from gateway.app import PIPELINE, make_app
from harness.stack import Stack, free_port, wait_for
from softphone.speech import silence, speech_like
from softphone.twilio_rest import TwilioRest

# Debian's Chromium, headless, with a fake microphone that plays a file and no permission prompt.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
WAV_RATE = 48000
CALL_SID = "CA" + "0123456789abcdef" * 2


# --- the setting and the routes (no browser) ------------------------------------------------------

@pytest.mark.parametrize("env, on", [
    ({}, True),  # the emulator: development
    ({"GEMINI_API_KEY": "k"}, False),  # real Gemini: off unless asked for
    ({"GEMINI_API_KEY": "k", "BRIDGE_PHONE": "true"}, True),
    ({"BRIDGE_PHONE": "false"}, False),
    ({"BRIDGE_PHONE": " "}, True),
])
def test_phone_setting(env, on):
    assert load(env).phone is on


def test_malformed_phone_setting_names_the_variable():
    with pytest.raises(SettingsError, match="BRIDGE_PHONE must be true or false"):
        load({"BRIDGE_PHONE": "maybe"})


def gateway_app(tmp_path: Path, **env: str):
    return make_app(load({"BRIDGE_RUN_DIR": str(tmp_path), **env}))


async def test_phone_is_not_served_when_off(tmp_path):
    async with TestClient(TestServer(gateway_app(tmp_path, BRIDGE_PHONE="false"))) as client:
        for path in ("/phone", "/phone/phone.js", f"/phone/events?call={CALL_SID}"):
            assert (await client.get(path)).status == 404, path


async def test_phone_page_and_assets(tmp_path):
    async with TestClient(TestServer(gateway_app(tmp_path))) as client:
        page = await client.get("/phone")
        assert page.status == 200 and page.content_type == "text/html"
        for name, kind in phone.ASSETS.items():
            asset = await client.get(f"/phone/{name}")
            assert (asset.status, asset.content_type) == (200, kind), name
        assert (await client.get("/phone/index.py")).status == 404
        assert (await client.get("/phone/..%2Fapp.py")).status == 404
        assert (await client.get("/phone/events?call=nope")).status == 400
        # A CallSid is no secret: a remote page (here, relayed by a proxy) gets no transcripts.
        relayed = {"X-Forwarded-For": "203.0.113.9"}
        assert (await client.get(f"/phone/events?call={CALL_SID}", headers=relayed)).status == 403


async def test_transcripts_reach_the_listening_page_and_shutdown_ends_the_stream(tmp_path):
    class Call:  # the gateway's Call, as far as the feed looks at it
        call_sid = CALL_SID

    async with TestClient(TestServer(gateway_app(tmp_path))) as client:
        response = await client.get(f"/phone/events?call={CALL_SID}")
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await response.content.readuntil(b"\n\n") == b": listening\n\n"
        publish = client.app[PIPELINE].on_transcript
        publish(Call(), m.Transcript("c1", "caller", "hello", True))
        line = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert json.loads(line.removeprefix(b"data: ")) == {"role": "caller", "text": "hello", "final": True}
        started = time.monotonic()
        await asyncio.wait_for(client.server.close(), 5)  # with the page still listening
        assert time.monotonic() - started < 1.0, "an open event stream must not hold up shutdown"
        assert await response.content.read() == b""  # the stream ended cleanly
        assert len(client.app[phone.FEED]) == 0


# --- Chromium over the DevTools protocol ----------------------------------------------------------

class Page:
    """One browser tab over the DevTools protocol: numbered commands, results matched by id, and the
    page's console and exceptions kept to explain a failure."""

    def __init__(self, session: aiohttp.ClientSession, port: int, target: dict):
        self.session, self.port, self.target = session, port, target
        self.console: list[str] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._reader: asyncio.Task | None = None

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, port: int) -> "Page":
        async with session.put(f"http://127.0.0.1:{port}/json/new?about:blank") as r:
            page = cls(session, port, await r.json())
        page._ws = await session.ws_connect(page.target["webSocketDebuggerUrl"], max_msg_size=0)
        page._reader = asyncio.create_task(page._read())
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        return page

    async def close(self) -> None:
        await self._ws.close()
        await self._reader
        async with self.session.get(f"http://127.0.0.1:{self.port}/json/close/{self.target['id']}"):
            pass

    async def send(self, method: str, **params) -> dict:
        self._next_id += 1
        reply = self._pending[self._next_id] = asyncio.get_running_loop().create_future()
        await self._ws.send_json({"id": self._next_id, "method": method, "params": params})
        return await asyncio.wait_for(reply, 30)

    async def _read(self) -> None:
        async for msg in self._ws:
            data = json.loads(msg.data)
            if "id" in data:
                reply = self._pending.pop(data["id"])
                if "error" in data:
                    reply.set_exception(AssertionError(f"DevTools error: {data['error']}"))
                else:
                    reply.set_result(data["result"])
            elif data["method"] == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description")))
                                             for a in data["params"]["args"]))
            elif data["method"] == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.console.append("exception: " + details.get("exception", {}).get("description",
                                                                                     details["text"]))

    async def eval(self, expression: str):
        """The value of a JavaScript expression (awaited if it is a promise)."""
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}: {result['exceptionDetails']}\n{self.console}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", width=960, height=560, deviceScaleFactor=1,
                        mobile=False)
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && 'phone' in window", 15, "the page to load")

    async def until(self, condition: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := await self.eval(condition):
                return value
            await asyncio.sleep(0.1)
        state = await self.eval("JSON.stringify(window.phone)")
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\nphone: {state}\n"
                             f"console: {self.console}")

    async def click(self, selector: str) -> None:
        """A real mouse click, so the page gets a user gesture (the autoplay policy wants one)."""
        box = await self.eval(f"(({{x, y, width, height}}) => ({{x, y, width, height}}))"
                              f"(document.querySelector({selector!r}).getBoundingClientRect())")
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.astype("<i2").tobytes())


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """Headless Chromium; yields its DevTools port. Its fake microphone loops 0.5 s of silence, 1.5 s
    of speech-like audio and 4 s of silence."""
    yield from launch_chromium(tmp_path_factory.mktemp("chromium"), [
        silence(0.5, WAV_RATE), speech_like(1.5, seed=11, rate=WAV_RATE), silence(4.0, WAV_RATE)])


@pytest.fixture(scope="module")
def callee_chromium(tmp_path_factory):
    """Chromium whose fake microphone answers a call as a person would: a short "Hello?", a pause long
    enough to be greeted in, then something to talk about (looped)."""
    yield from launch_chromium(tmp_path_factory.mktemp("callee"), [
        silence(0.3, WAV_RATE), speech_like(0.5, seed=13, rate=WAV_RATE), silence(5.0, WAV_RATE),
        speech_like(1.5, seed=11, rate=WAV_RATE), silence(6.0, WAV_RATE)])


def launch_chromium(home: Path, microphone: list[np.ndarray]):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run does this)")
    wav = home / "caller.wav"
    write_wav(wav, np.concatenate(microphone), WAV_RATE)
    profile, log = home / "profile", home / "chromium.log"
    with open(log, "wb") as out:
        # Port 0: Chromium picks a free one and writes it to DevToolsActivePort (no race for a port).
        proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}",
                                 f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def devtools_port() -> int | None:
        if proc.poll() is not None:
            raise AssertionError(f"Chromium exited with {proc.returncode}")
        lines = (profile / "DevToolsActivePort").read_text().split()  # OSError until it exists
        return int(lines[0]) if lines else None

    try:
        port = wait_for(devtools_port, 30, "Chromium's DevTools")
    except AssertionError as e:
        _stop(proc)
        pytest.skip(f"Chromium could not be launched here ({e}): {log.read_text(errors='replace')[-2000:]}")
    yield port
    _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """End Chromium and its helper processes: the session we started it in holds them all."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# --- the page's pure modules, run where they run -----------------------------------------------------

DSP_CHECKS = """(async () => {
  const d = await import('/phone/dsp.js');
  const encoded = Uint8Array.from({length: 65536}, (_, i) => d.encodeSample((i << 16) >> 16));
  const decoded = Array.from({length: 256}, (_, code) => d.decodeSample(code));
  const sine = (hz, rate, n) => Float32Array.from({length: n}, (_, i) => 0.5 * Math.sin(2 * Math.PI * hz * i / rate));
  const peak = (x) => x.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
  const input = sine(1000, 44100, 44100).map((v, i) => v + 0.3 * Math.sin(i * 0.37) * (i % 7 === 0));
  const whole = new d.Resampler(44100, 8000).push(input);
  const chunked = new d.Resampler(44100, 8000);
  const parts = [];
  for (let i = 0, size = 0; i < input.length; i += size) {
    size = [1, 127, 128, 0, 3, 1000][parts.length % 6];
    parts.push(...chunked.push(input.subarray(i, i + size)));
  }
  const steady = (x) => x.subarray(x.length / 4, x.length * 3 / 4);
  const down = new d.Resampler(48000, 8000);
  const pass = peak(steady(down.push(sine(1000, 48000, 48000))));
  const stop = peak(steady(new d.Resampler(48000, 8000).push(sine(5000, 48000, 48000))));
  const playout = new d.Playout(48000);
  const early = playout.addMark('empty');  // nothing queued: echoed at once
  playout.addAudio(sine(1000, 8000, 8000));
  playout.addMark('one-second');
  const out = new Float32Array(128);
  let reached = -1, started = -1, loudest = 0;
  for (let block = 0; block < 400; block++) {
    const r = playout.render(out);
    if (r.started >= 0 && started < 0) started = block * 128 + r.started;
    if (r.echoes.length && reached < 0) reached = block * 128;
    if (block > 100 && block < 300) loudest = Math.max(loudest, peak(out));
  }
  playout.addAudio(sine(1000, 8000, 800));
  playout.addMark('flushed');
  playout.render(out);
  const cleared = playout.clear();
  return {encoded: btoa(String.fromCharCode(...encoded)), decoded, same: whole.length === parts.length &&
          whole.every((v, i) => v === parts[i]), outputs: whole.length, pass, stop, early, reached,
          started, loudest, cleared, queuedAfterClear: playout.queued};
})()"""


TWILIO_CHECKS = """(async () => {
  const tw = await import('/phone/twilio.js');
  const verdict = (text) => { try { return tw.parseServer(text, 'MZ1'); } catch (e) { return e.message; } };
  const twiml = '<?xml version="1.0"?><Response><Connect><Stream url="wss://h/ws/twilio?x=1">' +
    '<Parameter name="token" value="a&amp;b"/></Stream></Connect><Redirect method="POST">/twiml/after</Redirect></Response>';
  return {
    media: Array.from(verdict('{"event":"media","streamSid":"MZ1","media":{"payload":"AAE="}}').ulaw),
    mark: verdict('{"event":"mark","streamSid":"MZ1","mark":{"name":"1.2"}}'),
    clear: verdict('{"event":"clear","streamSid":"MZ1"}'),
    extra: verdict('{"event":"media","streamSid":"MZ1","media":{"payload":"AAE=","track":"outbound"}}'),
    wrongSid: verdict('{"event":"clear","streamSid":"MZ2"}'),
    unknown: verdict('{"event":"constructor","streamSid":"MZ1"}'),
    badBase64: verdict('{"event":"media","streamSid":"MZ1","media":{"payload":"A-_="}}'),
    twiml: tw.parseTwiml(twiml, 'http://h/twiml'),
    start: tw.start(1, {callSid: 'CA1', accountSid: 'AC1', streamSid: 'MZ1'}, {token: 't'}),
    frame: tw.media(2, 'MZ1', 1, 0, new Uint8Array([255, 127])),
  };
})()"""


async def test_page_modules(chromium, tmp_path):
    """The page's pure modules, run in Chromium: G.711 bit-exact with G.191, the resampler, Twilio's
    playback queue, and Twilio's protocol as the page speaks and checks it."""
    async with TestClient(TestServer(gateway_app(tmp_path))) as client, aiohttp.ClientSession() as session:
        page = await Page.open(session, chromium)
        try:
            await page.goto(str(client.make_url("/phone")))
            r = await page.eval(DSP_CHECKS)
            twilio = await page.eval(TWILIO_CHECKS)
        finally:
            await page.close()
    every_int16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16)
    assert base64.b64decode(r["encoded"]) == encode_ulaw(every_int16), "µ-law encoder differs from G.191"
    assert r["decoded"] == decode_ulaw(bytes(range(256))).tolist(), "µ-law decoder differs from G.191"
    assert r["same"] and r["outputs"] > 7900, "chunked resampling must equal one-shot"
    assert 0.49 < r["pass"] < 0.51, "1 kHz passes at unit gain"
    assert r["stop"] < 0.005, "5 kHz (above the 4 kHz Nyquist rate) is filtered out"
    assert r["early"] == [{"name": "empty", "flushed": False}]
    assert abs(r["reached"] - 48000) <= 128, "the mark comes back when its second of audio has played"
    assert r["started"] == 0 and 0.49 < r["loudest"] < 0.51
    assert r["cleared"] == [{"name": "flushed", "flushed": True}] and r["queuedAfterClear"] < 1
    # Twilio's side of the protocol, as the page speaks and checks it.
    assert twilio["media"] == [0, 1] and twilio["mark"] == {"event": "mark", "name": "1.2"}
    assert twilio["clear"] == {"event": "clear"}
    for bad in ("extra", "wrongSid", "unknown", "badBase64"):
        assert twilio[bad].startswith("31951"), (bad, twilio[bad])
    assert twilio["twiml"]["streamUrl"] == "wss://h/ws/twilio"  # a query string is dropped
    assert twilio["twiml"]["parameters"] == {"token": "a&b"}
    assert twilio["twiml"]["redirect"] == "http://h/twiml/after" and twilio["twiml"]["after"] == ["Redirect"]
    parsed = tw.parse_event(json.dumps(twilio["start"]))  # the gateway's own parser accepts the page's
    assert (parsed.call_sid, parsed.stream_sid, parsed.custom_parameters) == ("CA1", "MZ1", {"token": "t"})
    frame = tw.parse_event(json.dumps(twilio["frame"]))
    assert (frame.chunk, frame.timestamp_ms, frame.payload, frame.track) == (1, 0, b"\xff\x7f", "inbound")


# --- a real call: Chromium → gateway → transcoder → model_client → emulator (echo) → back -------

@pytest.fixture
def phone_stack(tmp_path):
    """The stack as conftest's ``stack`` runs it, but with production heartbeats (1 s, dead after 3 s):
    Chromium shares the machine's two cores, and the suite's fast 0.25 s heartbeats would let a busy
    moment get a healthy stage declared dead, which is not what this test is about."""
    s = Stack(tmp_path / "run", GEMINI_SILENCE_MS="300", BRIDGE_HEARTBEAT_S="1").start()
    yield s
    assert s.stop() == 0
    assert "Traceback" not in s.log.read_text(), s.log.read_text()[-8000:]


async def test_call_from_the_browser(chromium, phone_stack, tmp_path):
    stack = phone_stack
    async with aiohttp.ClientSession() as session:
        page = await Page.open(session, chromium)
        try:
            await page.goto(stack.url + "/phone")
            await page.click("#call")
            await page.until("phone.state === 'in-call'", 15, "the stream to start")
            # The echo persona repeats the caller's 1.5 s; the turn is over once every mark the bridge
            # sent has come back and nothing is left to play.
            await page.until("phone.framesPlayed > 0 && phone.queued === 0 && phone.marksReceived > 0 && "
                             "phone.marksEchoed === phone.marksReceived && "
                             "phone.transcript.some(line => line.role === 'model')", 20,
                             "a whole echoed turn")
            await page.screenshot(tmp_path / "phone.png")
            state = await page.eval("window.phone")
            await page.click("#call")  # hang up
            await page.until("phone.state === 'ended'", 5, "the call to end")
        finally:
            await page.close()

    assert not state["errors"], state["errors"]
    assert state["framesSent"] > 100  # 20 ms frames on the audio clock, more than 2 s of them
    assert state["framesPlayed"] >= 60, "most of the 1.5 s echo was played"
    assert state["replyPeakDb"] > -20, "what played was the echo, not silence"
    assert 0 < state["latenciesMs"][0] < 2000, state["latenciesMs"]
    assert state["marksReceived"] >= 1 and state["clears"] == 0
    lines = {line["role"]: line["text"] for line in state["transcript"]}
    assert "s of speech" in lines["caller"] and "echo of" in lines["model"], state["transcript"]
    assert (tmp_path / "phone.png").stat().st_size > 10_000

    counters = stack.health()["counters"]
    assert counters.get("twilio_rejected", 0) == 0, "every message the page sent must be Twilio's"
    wait_for(lambda: stack.health()["calls"] == 0, 10, "the gateway to free the call", stack.log)


# --- "Call me": the bridge dials the page, through the real twilio client and the REST stand-in -------

ACCOUNT = "AC" + "0" * 32
AUTH = "test-auth-token"
API_TOKEN = "test-api-token"
OUTBOUND = {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": AUTH, "BRIDGE_API_TOKEN": API_TOKEN,
            "BRIDGE_DIAL_ALLOW": "+1555*", "BRIDGE_DIAL_FROM": "+15550100001"}


@pytest.mark.parametrize("env, why", [
    ({}, "BRIDGE_API_TOKEN is not set"),
    ({**OUTBOUND, "TWILIO_API_URL": "https://api.twilio.com"}, "would ring a real phone"),
])
async def test_call_me_is_offered_disabled_with_the_reason(chromium, tmp_path, env, why):
    async with TestClient(TestServer(gateway_app(tmp_path, **env))) as client, aiohttp.ClientSession() as session:
        page = await Page.open(session, chromium)
        try:
            await page.goto(str(client.make_url("/phone")))
            await page.until("phone.callMe && !phone.callMe.why.startsWith('Checking')", 10, "the check")
            offer = await page.eval("({...phone.callMe, disabled: document.querySelector('#call-me').disabled,"
                                    " shown: document.querySelector('#call-me-why').textContent})")
        finally:
            await page.close()
    assert offer["disabled"] and not offer["available"] and why in offer["shown"], offer


async def test_call_me_says_when_the_stand_in_is_not_running(chromium, tmp_path):
    app = gateway_app(tmp_path, **OUTBOUND, TWILIO_API_URL=f"http://127.0.0.1:{free_port()}")
    async with TestClient(TestServer(app)) as client, aiohttp.ClientSession() as session:
        page = await Page.open(session, chromium)
        try:
            await page.goto(str(client.make_url("/phone")))
            shown = await page.until("document.querySelector('#call-me-why').textContent.includes('phone-line')"
                                     " && document.querySelector('#call-me-why').textContent", 10, "the reason")
            assert await page.eval("document.querySelector('#call-me').disabled")
        finally:
            await page.close()
    assert "make phone-line" in shown


@pytest.fixture(scope="module")
def line_port():
    return free_port()


@pytest.fixture(scope="module")
def outbound_stack(tmp_path_factory, line_port):
    """The stack set up as `make run-outbound` sets it, with production heartbeats (see phone_stack)."""
    s = Stack(tmp_path_factory.mktemp("call-me") / "run", **OUTBOUND, TWILIO_API_URL=f"http://127.0.0.1:{line_port}",
              GEMINI_SILENCE_MS="300", BRIDGE_HEARTBEAT_S="1").start()
    yield s
    assert s.stop() == 0
    assert "Traceback" not in s.log.read_text(), s.log.read_text()[-8000:]


@pytest.fixture
async def line(line_port):
    """The Twilio REST stand-in as `make phone-line` runs it: its calls ring the browser phone."""
    twilio = TwilioRest(ACCOUNT, AUTH, answer="browser")
    await twilio.start(line_port)
    yield twilio
    await twilio.stop()


def metrics(stack) -> str:
    with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as r:
        return r.read().decode()


def counted(text: str, name: str, label: str, value: str) -> float:
    found = re.search(rf'{name}{{{label}="{re.escape(value)}"}} (\S+)', text)
    return float(found[1]) if found else 0.0


def call_events(stack, sid: str) -> list[tuple[str, str | None]]:
    path = stack.run_dir / "transcripts" / f"{sid}.jsonl"
    wait_for(lambda: '"ended"' in path.read_text(), 15, "the call's final status", stack.log)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return lines, [(x["event"], x.get("by") or x.get("status")) for x in lines if x["role"] == "call"]


async def ring(page: Page, stack) -> str:
    await page.goto(stack.url + "/phone")
    await page.until("phone.callMe && phone.callMe.available", 15, "Call me to be offered")
    await page.click("#call-me")
    await page.until("phone.state === 'ringing' && phone.lineStatus === 'ringing'", 15, "the page to ring")
    return await page.eval("phone.callSid")


async def test_call_me_rings_the_page_and_a_person_answers(callee_chromium, outbound_stack, line):
    stack = outbound_stack
    before = metrics(stack)
    async with aiohttp.ClientSession() as session:
        page = await Page.open(session, callee_chromium)
        try:
            sid = await ring(page, stack)
            assert await page.eval("document.querySelector('#status').textContent") == \
                "Incoming call from +15550100001"
            await page.click("#answer")
            await page.until("phone.state === 'in-call'", 15, "the stream to start")
            # The held greeting, once detection said human; then the echo of what the person said.
            await page.until("phone.transcript.filter(line => line.role === 'model').length >= 2 && "
                             "phone.queued === 0 && phone.marksEchoed === phone.marksReceived", 40,
                             "the greeting, then an echoed turn")
            state = await page.eval("window.phone")
            await page.click("#call")  # hang up
            await page.until("phone.state === 'ended' && phone.lineStatus === 'completed'", 15, "the call's end")
        finally:
            await page.close()

    assert not state["errors"], state["errors"]
    assert state["callSid"] == sid and state["framesSent"] > 100 and state["replyPeakDb"] > -20
    model = [x["text"] for x in state["transcript"] if x["role"] == "model"]
    assert model[0] == phone_dial.GREETING and model.count(phone_dial.GREETING) == 1, model
    assert any("echo of" in text for text in model[1:]), model
    lines, events = call_events(stack, sid)
    assert events == [("dialled", None), ("answered", "human"), ("ended", "completed")]
    assert [x["text"] for x in lines if x["role"] == "model"].count(phone_dial.GREETING) == 1
    after = metrics(stack)
    greeted = ("bridge_gateway_events_total", "event", "outbound_answered_greet")
    assert counted(after, *greeted) == counted(before, *greeted) + 1
    hung_up = ("bridge_calls_ended_total", "outcome", "caller hung up")
    wait_for(lambda: counted(metrics(stack), *hung_up) == counted(before, *hung_up) + 1, 10, "the outcome")
    assert stack.health()["counters"].get("twilio_rejected", 0) == 0
    assert [p for p, _, status in line.calls[sid].callbacks if status != 204] == []


async def test_call_me_declined_ends_busy(callee_chromium, outbound_stack, line):
    stack = outbound_stack
    before = metrics(stack)
    async with aiohttp.ClientSession() as session:
        page = await Page.open(session, callee_chromium)
        try:
            sid = await ring(page, stack)
            await page.click("#decline")
            await page.until("phone.state === 'ended' && phone.lineStatus === 'busy'", 15, "the call's end")
            state = await page.eval("window.phone")
        finally:
            await page.close()
    assert not state["errors"] and state["framesSent"] == 0, state
    _, events = call_events(stack, sid)
    assert events == [("dialled", None), ("ended", "busy")]
    busy = ("bridge_calls_ended_total", "outcome", "outbound busy")
    assert counted(metrics(stack), *busy) == counted(before, *busy) + 1
    wait_for(lambda: stack.health()["pending_streams"] == 0, 10, "the call's place freed", stack.log)
