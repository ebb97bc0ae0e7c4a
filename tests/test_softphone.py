"""The softphone (our stand-in for Twilio) against a toy bridge that checks every message it sends
against the Media Streams reference, and answers the way a bridge would: echo, marks, clear, bad
messages, hang-ups. Plus the pure pieces: playback model, signing, TwiML, speech signal, CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from twilio.request_validator import RequestValidator

from common.g711 import ULAW_SILENCE, encode_ulaw
from softphone import cli
from softphone.caller import CallError, place_call
from softphone.playback import MAX_QUEUED, REPLY_GAP, Echo, Playback
from softphone.speech import silence, speech_like
from softphone.webhook import parse_twiml, signed_url, twilio_signature

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 800  # the toy bridge echoes 100 ms at a time
FRAME = 160
B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")  # the standard alphabet, padded
SID = {"accountSid": re.compile(r"AC[0-9a-f]{32}"), "streamSid": re.compile(r"MZ[0-9a-f]{32}"),
       "callSid": re.compile(r"CA[0-9a-f]{32}")}
TONE = encode_ulaw(speech_like(1.0, seed=5))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ToyBridge:
    """Just enough of a bridge to drive the softphone, written from the reference rather than from the
    softphone's own message builders, so a shape mistake in either shows up as a problem here."""

    def __init__(self, scenario: str = "echo"):
        self.scenario = scenario
        self.webhooks: list[tuple[str, dict, dict]] = []  # (url, headers, form)
        self.upgrade_headers: dict = {}
        self.problems: list[str] = []  # anything the softphone sent that the reference does not allow
        self.inbound: list[dict] = []  # every message after start
        self.frames = 0  # media frames received so far
        self.marks_out: dict[str, int] = {}  # mark name → frames received when the bridge sent it
        self.marks_back: list[tuple[str, int]] = []  # (name, frames received when it came back)
        self.sid = ""
        self.start: dict = {}
        self.url = ""  # set once the test server is up
        self._seq = 1

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twiml", self.twiml)
        app.router.add_get("/ws/twilio", self.stream)
        return app

    async def twiml(self, request: web.Request) -> web.Response:
        self.webhooks.append((str(request.url), dict(request.headers), dict(await request.post())))
        if self.scenario == "busy":
            return web.Response(text="<Response><Say>Busy.</Say><Hangup/></Response>",
                                content_type="text/xml")
        return web.Response(content_type="text/xml", text=(
            f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="ws://{request.host}'
            '/ws/twilio"><Parameter name="token" value="abc"/></Stream></Connect><Redirect method="POST">'
            f'http://{request.host}/twiml/after</Redirect></Response>'))

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        self.upgrade_headers = dict(request.headers)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connected = await self._text(ws)
        if connected != {"event": "connected", "protocol": "Call", "version": "1.0.0"}:
            self.problems.append(f"first message {connected}")
        self._check_start(await self._text(ws))
        await getattr(self, f"_{self.scenario}")(ws)
        return ws

    async def _text(self, ws) -> dict | None:
        message = await ws.receive(timeout=10)
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return None
        if message.type != WSMsgType.TEXT:
            self.problems.append(f"non-text frame {message.type}")
            return {}
        return json.loads(message.data)

    async def _recv(self, ws) -> dict | None:
        """The next message after start, checked against Twilio's documentation."""
        message = await self._text(ws)
        if message is not None:
            self.inbound.append(message)
            self._check(message)
        return message

    def _check_start(self, start: dict) -> None:
        body = start.get("start", {})
        self.sid, self.start = start.get("streamSid", ""), body
        ok = (set(start) == {"event", "sequenceNumber", "start", "streamSid"} and start["event"] == "start"
              and start["sequenceNumber"] == "1" and body.get("streamSid") == self.sid
              and set(body) == {"accountSid", "streamSid", "callSid", "tracks", "mediaFormat",
                                "customParameters"}
              and all(SID[k].fullmatch(body[k]) for k in SID) and body["tracks"] == ["inbound"]
              and body["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
              and type(body["mediaFormat"]["sampleRate"]) is int
              and body["customParameters"] == {"token": "abc"})
        if not ok:
            self.problems.append(f"bad start {start}")

    def _check(self, m: dict) -> None:
        self._seq += 1
        if m.get("sequenceNumber") != str(self._seq) or m.get("streamSid") != self.sid:
            self.problems.append(f"sequence/streamSid: expected {self._seq}: {m}")
        event = m.get("event")
        body = m.get(event)
        expected = {"media": {"track", "chunk", "timestamp", "payload"}, "mark": {"name"},
                    "dtmf": {"track", "digit"}, "stop": {"accountSid", "callSid"}}.get(event)
        envelope = {"event", "sequenceNumber", "streamSid", event}
        if expected is None or set(m) != envelope or set(body) != expected:
            self.problems.append(f"bad shape {m}")
        elif event == "media":
            self._check_media(body)
        elif event == "mark":
            self.marks_back.append((body["name"], self.frames))
        elif event == "dtmf" and body["track"] != "inbound_track":
            self.problems.append(f"bad dtmf {m}")
        elif event == "stop" and body != {k: self.start[k] for k in ("accountSid", "callSid")}:
            self.problems.append(f"bad stop {m}")

    def _check_media(self, media: dict) -> None:
        payload = media["payload"]
        if (media["track"] != "inbound" or media["chunk"] != str(self.frames + 1)
                or media["timestamp"] != str(20 * self.frames) or not B64.fullmatch(payload)
                or len(base64.b64decode(payload)) != FRAME):
            self.problems.append(f"bad media #{self.frames + 1}: {dict(media, payload=payload[:12])}")
        self.frames += 1

    async def _say(self, ws, audio: bytes, mark: str | None = None) -> None:
        await ws.send_json({"event": "media", "streamSid": self.sid, "media": {"payload": b64(audio)}})
        if mark is not None:
            await ws.send_json({"event": "mark", "streamSid": self.sid, "mark": {"name": mark}})
            self.marks_out[mark] = self.frames

    # Scenarios: each runs until the caller hangs up.

    async def _echo(self, ws) -> None:
        pending = b""
        while (m := await self._recv(ws)) is not None:
            if m.get("event") == "media":
                pending += base64.b64decode(m["media"]["payload"])
                if len(pending) >= CHUNK:
                    await self._say(ws, pending[:CHUNK], f"echo-{len(self.marks_out)}")
                    pending = pending[CHUNK:]

    async def _clear(self, ws) -> None:
        while (m := await self._recv(ws)) is not None:
            if m.get("event") == "media" and self.frames == 10:
                await self._say(ws, TONE, "a")
                await self._say(ws, TONE, "b")
                await ws.send_json({"event": "clear", "streamSid": self.sid})
            elif m.get("event") == "media" and self.frames == 20:
                await self._say(ws, TONE[-CHUNK:], "c")

    async def _replies(self, ws) -> None:
        while (m := await self._recv(ws)) is not None:
            if m.get("event") == "media" and self.frames in (35, 75):
                await self._say(ws, TONE[:3200])

    async def _violations(self, ws) -> None:
        frame = TONE[:FRAME]
        await ws.send_json({"event": "media", "streamSid": "MZ" + "0" * 32, "media": {"payload": b64(frame)}})
        await ws.send_bytes(frame)
        await ws.send_json({"event": "media", "streamSid": self.sid,
                            "media": {"payload": b64(frame), "track": "outbound"}})
        await ws.send_json({"event": "mark", "streamSid": self.sid, "mark": {}})
        await ws.send_str("not json")
        await ws.send_json({"event": "hello", "streamSid": self.sid})
        await ws.send_json({"event": "media", "streamSid": self.sid, "media": {"payload": "-_-_"}})
        await self._say(ws, frame, "ok")
        while await self._recv(ws) is not None:
            pass

    async def _silent(self, ws) -> None:
        while await self._recv(ws) is not None:
            pass

    async def _hangup(self, ws) -> None:
        while await self._recv(ws) is not None:
            if self.frames == 10:
                await ws.close()
                return


async def serve(scenario: str = "echo"):
    bridge = ToyBridge(scenario)
    server = TestServer(bridge.app(), host="127.0.0.1")
    await server.start_server()
    bridge.url = str(server.make_url("")).rstrip("/")
    return bridge, server


@pytest.fixture
async def bridge(request):
    toy, server = await serve(getattr(request, "param", "echo"))
    yield toy
    await server.close()


def chunk_positions(result, chunks: int) -> list[int]:
    """Where each echoed 100 ms chunk of what was sent shows up in what was heard."""
    return [result.heard.find(result.sent[j * CHUNK:(j + 1) * CHUNK]) for j in range(chunks)]


# --- calls against the toy bridge ---------------------------------------------------------------


async def test_fast_echo_call_follows_the_reference(bridge):
    speech = speech_like(1.0, seed=1)
    result = await place_call(bridge.url, speech, realtime=False, listen_s=0.5, timeout_s=10,
                              dtmf=[(0.1, "5"), (0.3, "#")])

    assert bridge.problems == []
    assert result.protocol_errors == []
    assert result.closed_by == "caller" and bridge.inbound[-1]["event"] == "stop"
    assert result.after_connect == ["Redirect"] and result.custom_parameters == {"token": "abc"}
    assert len(result.sent) == len(result.heard) == 75 * FRAME and bridge.frames == 75
    assert result.sent[:len(speech)] == encode_ulaw(speech)
    assert result.sent[len(speech):] == bytes([ULAW_SILENCE]) * (len(result.sent) - len(speech))
    # DTMF goes out right after the frame during which it falls due.
    events = [(m["event"], m.get("media", {}).get("timestamp")) for m in bridge.inbound]
    for digit, after_ts in (("5", "80"), ("#", "280")):
        i = next(i for i, m in enumerate(bridge.inbound) if m.get("dtmf", {}).get("digit") == digit)
        assert events[i - 1] == ("media", after_ts)


async def test_marks_echo_in_order_only_after_their_audio_played(bridge):
    result = await place_call(bridge.url, speech_like(1.0, seed=2), realtime=False, listen_s=0.5,
                              timeout_s=10)

    names = [mark.name for mark in result.marks_sent_back]
    assert names == [f"echo-{i}" for i in range(len(names))] and len(names) >= 12
    assert [name for name, _ in bridge.marks_back] == names
    assert not any(mark.flushed for mark in result.marks_sent_back)
    for name, frames_back in bridge.marks_back:  # 100 ms of audio = 5 frames on the virtual clock
        assert frames_back >= bridge.marks_out[name] + 5, name
    for position, mark in zip(chunk_positions(result, 10), result.marks_sent_back):
        end = position + CHUNK  # the chunk has played out, and the echo follows within a frame
        assert end <= round(mark.t_s * 8000) < end + FRAME


async def test_fast_heard_is_aligned_with_sent(bridge):
    result = await place_call(bridge.url, speech_like(1.0, seed=3), realtime=False, listen_s=0.5,
                              timeout_s=10)

    for j, position in enumerate(chunk_positions(result, 10)):
        # Chunk j is complete once frame 5j+4 is sent, at sample 800(j+1); the fast clock only moves
        # in whole frames, and the round trip through the loop takes a few (3–4 here).
        assert position % FRAME == 0 and 0 <= position - CHUNK * (j + 1) <= 10 * FRAME, (j, position)
    assert result.received == result.sent[:len(result.received)]
    assert result.reply_starts_s[0] == pytest.approx(result.first_audio_s + FRAME / 8000)


async def test_realtime_heard_is_aligned_with_sent(bridge):
    result = await place_call(bridge.url, speech_like(0.6, seed=4), realtime=True, listen_s=0.3,
                              timeout_s=10)

    assert bridge.problems == [] and result.protocol_errors == []
    assert len(result.heard) == len(result.sent) == 45 * FRAME
    for j, position in enumerate(chunk_positions(result, 6)):
        assert 0 <= position - CHUNK * (j + 1) <= 400, (j, position)  # ≤ 50 ms of loop jitter
    assert 0.08 <= result.first_audio_s < 0.13


@pytest.mark.parametrize("bridge", ["clear"], indirect=True)
async def test_clear_echoes_every_pending_mark_at_once(bridge):
    result = await place_call(bridge.url, speech_like(0.4, seed=5), realtime=False, listen_s=0.6,
                              timeout_s=10)

    assert bridge.problems == [] and result.protocol_errors == []
    marks = {mark.name: mark for mark in result.marks_sent_back}
    assert [mark.name for mark in result.marks_sent_back] == ["a", "b", "c"]
    assert marks["a"].flushed and marks["b"].flushed and not marks["c"].flushed
    back = dict(bridge.marks_back)
    assert back["a"] == back["b"] < bridge.marks_out["a"] + 50  # together, long before 2 s could play
    assert marks["a"].t_s == marks["b"].t_s == result.clears[0]
    assert back["c"] >= bridge.marks_out["c"] + 5
    assert len(result.clears) == 1 and len(result.received) == 2 * len(TONE) + CHUNK
    # Of "a", only what played before the clear was heard; then chunk "c", in full, on time.
    c_at = result.heard.find(TONE[-CHUNK:])
    assert 20 * FRAME <= c_at < 30 * FRAME
    assert len(result.heard[:c_at].replace(bytes([ULAW_SILENCE]), b"")) < 5 * FRAME


@pytest.mark.parametrize("bridge", ["replies"], indirect=True)
async def test_turn_latencies_measure_from_the_end_of_speech(bridge):
    result = await place_call(bridge.url, speech_like(0.5, seed=6), realtime=False, listen_s=1.5,
                              timeout_s=10)

    assert result.speech_end_s == 0.5
    first, second = result.turn_latencies_s  # the bridge answers after frames 35 and 75 arrive
    assert 0.2 <= first < 0.4 and 1.0 <= second < 1.2  # + the few frames of the loop's round trip
    assert result.first_audio_s == pytest.approx(0.5 + first - 0.02)
    json.dumps(result.summary())


@pytest.mark.parametrize("bridge", ["violations"], indirect=True)
async def test_server_protocol_violations_are_recorded(bridge):
    result = await place_call(bridge.url, speech_like(0.2, seed=7), realtime=False, listen_s=0.2,
                              timeout_s=10)

    errors = result.protocol_errors
    assert len(errors) == 7, errors
    assert any(e.startswith("31951") and "streamSid" in e for e in errors)
    assert any(e.startswith("31950") for e in errors)
    assert any(e.startswith("31951") and "extra fields ['track']" in e for e in errors)
    assert any(e.startswith("31951") and "missing ['name']" in e for e in errors)
    assert any(e.startswith("31951") and "not JSON" in e for e in errors)
    assert any(e.startswith("31951") and "'hello'" in e for e in errors)
    assert any(e.startswith("31951") and "base64" in e for e in errors)
    assert result.received == TONE[:FRAME]  # bad messages are ignored, as Twilio ignores them
    assert [mark.name for mark in result.marks_sent_back] == ["ok"]


@pytest.mark.parametrize("bridge", ["hangup"], indirect=True)
async def test_server_hangup_ends_the_call(bridge):
    result = await place_call(bridge.url, speech_like(1.0, seed=8), realtime=False, listen_s=1.0,
                              timeout_s=10)

    assert result.closed_by == "server"
    assert 10 * FRAME <= len(result.sent) < 100 * FRAME and len(result.heard) == len(result.sent)
    assert all(m["event"] != "stop" for m in bridge.inbound)


@pytest.mark.parametrize("bridge", ["hangup"], indirect=True)
async def test_without_hangup_the_caller_waits_for_the_server(bridge):
    result = await place_call(bridge.url, speech_like(0.1), realtime=False, listen_s=0, hangup=False,
                              timeout_s=10)

    assert result.closed_by == "server" and len(result.sent) >= 10 * FRAME


async def test_timeout_raises_with_what_was_recorded(bridge):
    with pytest.raises(CallError, match="timeout_s=0.5") as caught:
        await place_call(bridge.url, speech_like(0.1), realtime=True, hangup=False, timeout_s=0.5)

    partial = caught.value.result  # a call that would run forever: stopped, and what happened is kept
    assert partial.closed_by == "caller" and 0 < len(partial.sent) == len(partial.heard) <= 26 * FRAME


async def test_signed_webhook_and_upgrade(bridge):
    await place_call(bridge.url, speech_like(0.1), realtime=False, listen_s=0, auth_token="s3cret",
                     call_sid="CA" + "ab" * 16, timeout_s=10)

    (url, headers, form), = bridge.webhooks
    assert headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert headers["X-Twilio-Signature"] == twilio_signature("s3cret", url, form)
    assert form["CallSid"] == bridge.start["callSid"] == "CA" + "ab" * 16
    assert form["AccountSid"] == bridge.start["accountSid"]
    assert {k: form[k] for k in ("CallStatus", "Direction", "ApiVersion")} == {
        "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}
    # The upgrade is signed as Twilio signs it: the stream's URL with scheme wss, empty params.
    stream_url = f"wss://{url.split('/')[2]}/ws/twilio"
    assert RequestValidator("s3cret").validate(stream_url, {}, bridge.upgrade_headers["X-Twilio-Signature"])


@pytest.mark.parametrize("bridge", ["busy"], indirect=True)
async def test_twiml_without_a_stream_is_a_clear_error(bridge):
    with pytest.raises(CallError, match=r"no <Response><Connect><Stream"):
        await place_call(bridge.url, speech_like(0.1), realtime=False, timeout_s=10)


async def test_unreachable_bridge_is_a_clear_error():
    with pytest.raises(CallError, match="unreachable"):
        await place_call("http://127.0.0.1:1", speech_like(0.1), realtime=False, timeout_s=5)


# --- signing and TwiML --------------------------------------------------------------------------

VECTOR_PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675310", "Digits": "1234",
                 "From": "+14158675310", "To": "+18005551212"}


def test_signature_matches_reference_vectors():
    url = "https://example.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, VECTOR_PARAMS) == "L/OH5YylLD5NRKLltdqwSvS0BnU="
    older = dict(VECTOR_PARAMS, Caller="+14158675309", From="+14158675309")
    older_url = url.replace("example", "mycompany")
    assert twilio_signature("12345", older_url, older) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    upgrade = "wss://bridge.example.com/twilio/media"  # the stream URL as written in the TwiML
    assert twilio_signature("12345", upgrade, {}) == "hGVJmeOLwZmJhPeWsyRDIvgH8Zc="
    assert signed_url("https://user:pw@example.com:8443/twiml?x=1") == "https://example.com/twiml?x=1"
    assert signed_url("http://127.0.0.1:8080/twiml") == "http://127.0.0.1:8080/twiml"


def test_signature_agrees_with_twilios_validator():
    validator = RequestValidator("s3cret")  # a test-only oracle (the `test` extra installs it)
    url = "https://bridge.example.com/twiml?x=a%20b"
    params = {"CallSid": "CA" + "0" * 32, "From": "+15550100001", "Body": "é & ü", "a": "", "B": "2"}
    assert validator.validate(url, params, twilio_signature("s3cret", url, params))


def test_twiml_parsing():
    twiml = parse_twiml('<?xml version="1.0" encoding="UTF-8"?><Response><Say>Hi</Say><Connect>'
                        '<Stream url="/media/t0k?x=1"><Parameter name="a" value="1&amp;2"/></Stream>'
                        '</Connect><Say>Bye</Say><Hangup/></Response>', "https://h.example/twiml")
    assert twiml.stream_url == "wss://h.example/media/t0k" and twiml.parameters == {"a": "1&2"}
    assert twiml.after_connect == ["Say", "Hangup"] and "query" in twiml.warnings[0]
    for bad in ("not xml", "<Response><Connect/></Response>",
                "<Response><Stream url='wss://x/'/></Response>"):
        with pytest.raises(CallError):
            parse_twiml(bad, "https://h.example/twiml")
    with pytest.raises(CallError, match="31922"):
        parse_twiml("<Response><Connect><Stream url='https://x/'/></Connect></Response>", "https://h/")


# --- the playback model -------------------------------------------------------------------------


def test_playback_plays_in_order_with_silence_between():
    p = Playback()
    p.advance(100)
    p.add_audio(b"\x01" * 200)
    p.add_audio(b"\x02" * 100)
    p.advance(500)
    quiet = bytes([ULAW_SILENCE])
    assert p.heard == quiet * 100 + b"\x01" * 200 + b"\x02" * 100 + quiet * 100
    assert p.clock == 500 and p.queued == 0 and p.reply_starts == [100]


def test_playback_marks_come_back_when_reached():
    p = Playback()
    assert p.add_mark("empty") == [Echo("empty", 0, False)]  # nothing queued: at once
    p.add_audio(b"\x01" * 300)
    assert p.add_mark("A") == []
    p.add_audio(b"\x02" * 100)
    assert p.add_mark("B") == [] and p.add_mark("C") == []
    assert p.advance(299) == []
    assert p.advance(300) == [Echo("A", 300, False)]
    assert p.advance(1000) == [Echo("B", 400, False), Echo("C", 400, False)]


def test_playback_clear_flushes_audio_and_echoes_all_pending_marks():
    p = Playback()
    p.add_audio(b"\x01" * 300)
    p.add_mark("A")
    p.add_audio(b"\x02" * 300)
    p.add_mark("B")
    p.advance(100)
    assert p.clear() == [Echo("A", 100, True), Echo("B", 100, True)]
    assert p.queued == 0 and p.advance(200) == []
    p.add_audio(b"\x03" * 10)  # right after a clear: a new reply, however short the gap
    p.advance(300)
    assert p.heard == b"\x01" * 100 + bytes([ULAW_SILENCE]) * 100 + b"\x03" * 10 + bytes([ULAW_SILENCE]) * 90
    assert p.reply_starts == [0, 200]


def test_playback_reply_starts_need_a_gap():
    p = Playback()
    for start in (0, 110, 110 + 100 + REPLY_GAP - 1, 5000):
        p.advance(start)
        p.add_audio(b"\x01" * 100)
    assert p.reply_starts == [0, 5000]


def test_playback_discards_past_ten_minutes():
    p = Playback()
    assert p.add_audio(bytes(MAX_QUEUED)) and not p.add_audio(b"\x01")
    assert p.discarded == 1 and p.queued == MAX_QUEUED


# --- the speech-like signal ---------------------------------------------------------------------


def test_speech_like_is_deterministic_voiced_band_limited_and_aperiodic():
    x = speech_like(3.0, seed=11)
    assert x.dtype == np.int16 and len(x) == 24000
    assert np.array_equal(x, speech_like(3.0, seed=11)) and not np.array_equal(x, speech_like(3.0, seed=12))
    assert 20 * np.log10(np.abs(x).max() / 32768) == pytest.approx(-6, abs=0.5)
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 8000)
    assert power[freqs < 250].sum() < 0.1 * power.sum() and power[freqs > 3450].sum() < 1e-3 * power.sum()
    frames = x.astype(np.float64).reshape(-1, FRAME)
    level = 10 * np.log10((frames**2).mean(axis=1) / 32768**2 + 1e-12)
    assert (level > -40).mean() > 0.95  # an energy VAD hears speech nearly throughout
    padded = np.concatenate([np.zeros(3000), x, np.zeros(3000)])
    xcorr = np.correlate(padded, x.astype(np.float64), "valid")
    assert np.argmax(xcorr) == 3000
    away = np.abs(np.arange(len(xcorr)) - 3000) > 80  # beyond ±10 ms of the true lag
    assert np.abs(xcorr[away]).max() < 0.5 * xcorr.max()
    assert np.array_equal(silence(0.5), np.zeros(4000, np.int16)) and len(speech_like(1, rate=16000)) == 16000


# --- the command line ---------------------------------------------------------------------------


async def run_cli(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "softphone", "call", *args, cwd=ROOT, env=dict(os.environ, **(env or {})),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_cli_call_writes_wav_and_summary(bridge, tmp_path):
    # Real-time pace: in --fast mode the call can end before the toy bridge's echo and mark arrive.
    # The folders do not exist yet: the softphone makes them.
    out, summary = tmp_path / "new" / "reply.wav", tmp_path / "also" / "new" / "summary.json"
    code, stdout, stderr = await run_cli(
        "--url", bridge.url, "--say-tone", "--seconds", "0.5", "--listen", "0.3", "--out", str(out),
        "--summary", str(summary), "--dtmf", "0.2:7", env={"TWILIO_AUTH_TOKEN": "tok"})

    assert code == 0, stderr
    details = json.loads(summary.read_text())
    assert details["closed_by"] == "caller" and details["reply_heard_s"] > 0.2
    assert details["dtmf_sent"] == [{"t_s": 0.2, "digit": "7"}] and details["marks_sent_back"]
    call, reply, files = stdout.splitlines()
    assert call == f"call {details['call_sid']}, stream {details['stream_sid']}"
    assert reply.startswith(f"reply: {details['reply_heard_s']:.2f} s heard; ")
    assert files == f"heard: {out}; details: {summary}"
    with wave.open(str(out)) as wav:
        shape = wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()
        assert shape == (1, 2, 8000, 6400)
        heard = np.frombuffer(wav.readframes(6400), "<i2")
    assert np.abs(heard).max() > 1000  # the echo is in it
    url, headers, form = bridge.webhooks[0]
    assert headers["X-Twilio-Signature"] == twilio_signature("tok", url, form)
    assert bridge.problems == []


@pytest.mark.parametrize("bridge", ["silent"], indirect=True)
async def test_cli_without_a_reply_says_so_and_exits_1(bridge, tmp_path):
    out = tmp_path / "reply.wav"
    code, stdout, stderr = await run_cli("--url", bridge.url, "--say-tone", "--seconds", "0.3",
                                         "--listen", "0.2", "--out", str(out))
    assert code == 1 and "reply: 0.00 s heard; none began" in stdout
    assert stderr == "softphone: no reply: nothing played on the call in the 0.5 s it lasted\n"
    assert out.exists()  # what the call recorded is kept


async def test_cli_refuses_a_path_it_cannot_write_before_calling(bridge, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for out, summary in ((a_file / "reply.wav", None), (tmp_path / "r.wav", tmp_path),
                         (tmp_path / "r.wav", a_file / "s.json")):
        args = ["--url", bridge.url, "--say-tone", "--fast", "--out", str(out)]
        code, _, stderr = await run_cli(*args, *(["--summary", str(summary)] if summary else []))
        assert code == 1 and stderr.startswith("softphone: error: cannot write "), stderr
    assert bridge.webhooks == [] and not (tmp_path / "r.wav").exists()


def test_cli_failures_exit_1_with_a_message(tmp_path, capsys):
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(400))
    args = ["call", "--out", str(tmp_path / "o.wav"), "--fast", "--timeout", "5"]
    assert cli.main(args + ["--url", "http://127.0.0.1:1", "--wav", str(stereo)], {}) == 1
    assert "need mono 16-bit PCM" in capsys.readouterr().err
    assert cli.main(args + ["--url", "http://127.0.0.1:1", "--say-tone"], {}) == 1
    assert "unreachable" in capsys.readouterr().err


def test_cli_resamples_other_rates(tmp_path):
    path = tmp_path / "in16k.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(speech_like(1.0, rate=16000).astype("<i2").tobytes())
    pcm = cli.read_wav(path)
    assert pcm.dtype == np.int16 and abs(len(pcm) - 8000) <= 1 and np.abs(pcm).max() > 8000
