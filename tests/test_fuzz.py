"""Bad input never hurts a call: property-based fuzzing of the real stack while healthy calls run.

Malformed Twilio events go over real WebSockets to the real gateway (under supervisord): bad JSON,
missing fields, wrong types, bad base64, binary frames, huge payloads, events out of order, the wrong
streamSid, bad tokens, floods, silent sockets. Malformed frames go to each ZeroMQ socket: the gateway's
ROUTER, a model_client's ROUTER, and a transcoder's DEALER (a real transcoder process between a fake
gateway and a fake model_client). Every example checks that each rejection was counted (or logged, for
the internal sockets); the module's fixture checks that the healthy calls placed back to back the whole
time never noticed (echo intact, no protocol error) and that no process restarted or raised.

Deterministic and bounded: derandomize=True, few examples, deadline=None.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from common import messages as m
from gateway import twilio_codec as tw
from gateway.security import signature
from harness.stack import ROOT, Stack, clean_env, get_json, wait_for
from softphone import wire
from softphone.caller import place_call
from softphone.measure import echo_loss
from softphone.speech import speech_like
from softphone.webhook import new_sid, upgrade_headers, voice_params

pytestmark = pytest.mark.e2e

AUTH = "fuzz-auth-token"
SID = "MZ" + "5" * 32  # placeholder for the stream's real sid in generated events
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
REJECTIONS = ("twilio_rejected", "stream_refused", "twilio_flood_dropped", "ws_error")


# --- healthy calls, back to back, for as long as the module runs --------------------------------

class HealthyCalls(threading.Thread):
    """Real-time calls from the softphone, one after another, each checked for an intact echo."""

    def __init__(self, url: str):
        super().__init__(name="healthy-calls", daemon=True)
        self.url, self.results, self.failures = url, [], []
        self._done = threading.Event()

    def run(self) -> None:
        seed = 0
        while not self._done.is_set():
            seed += 1
            speech = speech_like(1.0, seed=seed)
            try:  # 3 s of listening: an echo the fuzzing's load delays still ends before the hang-up
                result = asyncio.run(place_call(self.url, speech, realtime=True, listen_s=3.0,
                                                auth_token=AUTH, timeout_s=30))
            except Exception as e:  # noqa: BLE001 - recorded and asserted on in the main thread
                self.failures.append(f"call {seed}: {type(e).__name__}: {e}")
                continue
            self.results.append((speech, result))

    def finish(self) -> tuple[list, list]:
        self._done.set()
        self.join(40)
        return self.results, self.failures


def check_echo(speech: np.ndarray, result) -> str | None:
    if result.protocol_errors:
        return f"protocol errors {result.protocol_errors}"
    if result.closed_by != "caller":
        return f"closed by {result.closed_by}"
    corr, lost, frames = echo_loss(speech, result)  # every 20 ms of speech must come back
    if corr < 0.9:
        return f"echo correlation {corr:.3f}"
    return (f"speech frames {lost} of {frames} lost in the echo (heard {len(result.heard)} B, replies at "
            f"{result.reply_starts_s} s)") if lost else None


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    # Production heartbeats: the tests' 0.25 s leaves a 0.75 s liveness window that a loaded 2-core
    # box can miss, and a reconnect then costs the healthy call frames that no bad input took.
    stack = Stack(tmp_path_factory.mktemp("fuzz") / "run", TWILIO_AUTH_TOKEN=AUTH, GEMINI_SILENCE_MS="300",
                  BRIDGE_HEARTBEAT_S="1.0", BRIDGE_START_TIMEOUT_S="1.5", BRIDGE_FLOOD_CLOSE_S="1")
    stack.start()
    calls = HealthyCalls(stack.url)
    calls.start()
    wait_for(lambda: stack.health()["calls"] >= 1, 20, "the first healthy call", stack.log)
    try:
        yield stack
    finally:
        try:
            results, failures = calls.finish()
        finally:
            code = stack.stop()
    text = stack.log.read_text()
    assert code == 0, text[-4000:]
    assert not failures, failures
    problems = [p for p in (check_echo(*r) for r in results) if p]
    assert results and not problems, (len(results), problems)
    # supervisord says "spawned" once per start (five stages and stack_watch) and "exited" for any exit
    # it did not ask for.
    assert text.count("spawned: ") == 6 and "exited: " not in text, "a process crashed or restarted"
    assert "Traceback" not in text, text[-8000:]


# --- helpers ------------------------------------------------------------------------------------

def counters(stack: Stack) -> dict:
    return get_json(stack.url + "/healthz")["counters"]


def rejections(stack: Stack) -> int:
    got = counters(stack)
    return sum(got.get(k, 0) for k in REJECTIONS) + sum(v for k, v in got.items()
                                                        if k.startswith(("stream_token_", "ws_closed_")))


def until(predicate, timeout: float = 5.0, what: str = "the counters"):
    return wait_for(predicate, timeout, what)


def stream_token(stack: Stack, call_sid: str) -> str:
    params = voice_params(call_sid, new_sid("AC"))
    url = stack.url + "/twiml"
    request = urllib.request.Request(url, urllib.parse.urlencode(params).encode(),
                                     {"X-Twilio-Signature": signature(AUTH, url, params)})
    with urllib.request.urlopen(request, timeout=5) as r:
        body = r.read().decode()
    return body.split('name="token" value="', 1)[1].split('"', 1)[0]


@dataclass(frozen=True)
class Frame:
    data: str | bytes

    def text(self, stream_sid: str = SID) -> str | bytes:
        return self.data.replace(SID, stream_sid) if isinstance(self.data, str) else self.data


async def exchange(stack: Stack, frames: list, start: dict | None = None, end: list | None = None,
                   wait_close: bool = False) -> tuple[bool, str]:
    """Open a stream, optionally start it, send the frames; (closed by the server?, stream sid)."""
    async with aiohttp.ClientSession() as session:
        stream_url = stack.url.replace("http", "ws") + "/ws/twilio"
        async with session.ws_connect(stream_url, headers=upgrade_headers(AUTH, stream_url),
                                      max_msg_size=0) as ws:
            stream_sid = new_sid("MZ")
            if start is not None:
                await ws.send_json(wire.connected())
                await ws.send_json(wire.start(1, new_sid("AC"), stream_sid, start["call_sid"],
                                              start["params"]))
            try:
                for frame in [*frames, *(end or [])]:
                    data = frame.text(stream_sid)
                    await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_str(data))
            except (ConnectionResetError, aiohttp.ClientConnectionError):
                return True, stream_sid  # the server hung up on us mid-send
            try:
                async with asyncio.timeout(5 if wait_close else 0.05):
                    while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                                             aiohttp.WSMsgType.CLOSING):
                        pass
                return True, stream_sid
            except TimeoutError:
                return False, stream_sid


def expected_rejections(frames: list[Frame], started: bool) -> int:
    """What the gateway must count: every frame that is not a good event for this stream."""
    count = 0
    for frame in frames:
        if isinstance(frame.data, bytes):
            count += 1
            continue
        try:
            event = tw.parse_event(frame.text())
        except tw.TwilioProtocolError:
            count += 1
            continue
        if isinstance(event, tw.Connected):
            continue
        if not started or isinstance(event, tw.Start) or event.stream_sid != SID:
            count += 1  # before start; a second start; the wrong stream
    return count


# --- strategies: Twilio events, valid and broken -------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | \
    st.text(max_size=12)
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.text(max_size=6), kids, max_size=3), max_leaves=8)


def good_events(stream_sid: str = SID):
    payloads = st.binary(min_size=1, max_size=320)
    return st.one_of(
        st.builds(lambda p, k: wire.media(k + 2, stream_sid, k + 1, 20 * k, p), payloads,
                  st.integers(0, 500)),
        st.builds(lambda d: wire.dtmf(3, stream_sid, d), st.sampled_from("0123456789*#")),
        st.builds(lambda n: {"event": "mark", "sequenceNumber": "4", "streamSid": stream_sid,
                             "mark": {"name": n}}, st.text(max_size=10)),
        st.just(wire.connected()),
    )


def _mutate(event: dict, path: list[str], action: str, value) -> dict:
    event = json.loads(json.dumps(event))
    holder = event
    for key in path[:-1]:
        holder = holder.get(key) if isinstance(holder.get(key), dict) else holder
    key = path[-1]
    if action == "drop":
        holder.pop(key, None)
    elif action == "retype":
        holder[key] = value
    elif action == "badb64" and "media" in event:
        event["media"]["payload"] = "!!" + str(value) + "=="
    return event


PATHS = [["event"], ["streamSid"], ["media"], ["media", "payload"], ["media", "chunk"],
         ["media", "timestamp"], ["media", "track"], ["dtmf", "digit"], ["mark", "name"], ["mark"],
         ["sequenceNumber"]]

broken_events = st.builds(_mutate, good_events(), st.sampled_from(PATHS),
                          st.sampled_from(["drop", "retype", "badb64"]), json_values)

text_frames = st.one_of(
    st.text(max_size=120),  # mostly not JSON at all
    json_values.map(json.dumps),  # JSON, rarely an object with an event
    broken_events.map(json.dumps),
    good_events().map(json.dumps),
    good_events("MZ" + "0" * 32).map(json.dumps),  # the wrong streamSid
    good_events().map(lambda e: json.dumps(e)[: len(json.dumps(e)) // 2]),  # truncated
    st.integers(100, 3000).map(lambda n: "[" * n + "]" * n),  # nested deep
    st.integers(16001, 40000).map(lambda n: json.dumps(wire.media(9, SID, 1, 0, b"\x7f" * n))),  # huge
    st.just(json.dumps({"event": "clear", "streamSid": SID})),  # ours to send, never Twilio's
    st.just(json.dumps({**wire.start(1, "AC1", SID, "CA1", {}), "start": {"streamSid": SID}})),
)
frames = st.lists(st.one_of(text_frames.map(Frame), st.binary(max_size=200).map(Frame)), min_size=1,
                  max_size=12)


# --- the Twilio socket ----------------------------------------------------------------------------

@settings(FUZZ, max_examples=40)
@given(batch=frames)
def test_garbage_before_start_is_counted_and_survived(live, batch):
    assume(not any(isinstance(f.data, str) and _is_start(f.text()) for f in batch))
    before = rejections(live)
    was_closed, _ = asyncio.run(exchange(live, batch))
    expected = expected_rejections(batch, started=False)
    until(lambda: rejections(live) >= before + expected)
    assert rejections(live) == before + expected
    assert not was_closed, "bad frames are dropped; the socket is not closed for them"


def _is_start(text: str) -> bool:
    try:
        return isinstance(tw.parse_event(text), tw.Start)
    except tw.TwilioProtocolError:
        return False


@settings(FUZZ, max_examples=25)
@given(batch=frames)
def test_garbage_on_an_admitted_stream_is_counted_and_the_call_survives(live, batch):
    call_sid = new_sid("CA")
    start = {"call_sid": call_sid, "params": {"token": stream_token(live, call_sid)}}
    before = rejections(live)
    stop = Frame(json.dumps(wire.stop(99, SID, "AC1", call_sid)))
    closed, _ = asyncio.run(exchange(live, batch, start=start, end=[stop], wait_close=True))
    expected = expected_rejections(batch, started=True)
    until(lambda: rejections(live) >= before + expected)
    assert rejections(live) == before + expected
    assert closed, "the call ended normally on stop"


TOKENS = st.one_of(st.just(""), st.text(max_size=80), st.just("v1.9999999999.0123456789ab." + "A" * 27),
                   st.sampled_from(["other-call", "reused", "truncated"]))


@settings(FUZZ, max_examples=12)
@given(kind=TOKENS, params=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2))
def test_bad_tokens_close_the_stream_and_are_counted(live, kind, params):
    call_sid = new_sid("CA")
    token = kind
    if kind in ("other-call", "truncated"):
        token = stream_token(live, new_sid("CA") if kind == "other-call" else call_sid)
        token = token if kind == "other-call" else token[:-1]
    elif kind == "reused":
        token = stream_token(live, call_sid)
        asyncio.run(exchange(live, [], start={"call_sid": call_sid, "params": {"token": token}},
                             end=[Frame(json.dumps(wire.stop(2, SID, "AC1", call_sid)))], wait_close=True))
    before = counters(live).get("stream_refused", 0)
    start = {"call_sid": call_sid, "params": {**params, "token": token}}
    closed, _ = asyncio.run(exchange(live, [], start=start, wait_close=True))
    assert closed
    until(lambda: counters(live).get("stream_refused", 0) == before + 1)


@settings(FUZZ, max_examples=3)
@given(size=st.integers(64 * 1024 + 1, 2_000_000), binary=st.booleans())
def test_oversized_frames_close_only_their_socket(live, size, binary):
    before = counters(live).get("ws_error", 0)
    frame = Frame(b"\x00" * size if binary else "x" * size)
    closed, _ = asyncio.run(exchange(live, [frame], wait_close=True))
    assert closed
    until(lambda: counters(live).get("ws_error", 0) == before + 1)


async def flood(stack: Stack, seconds: float) -> bool:
    """An admitted stream that sends media as fast as it can; True once the server closes it."""
    call_sid = new_sid("CA")
    token = await asyncio.to_thread(stream_token, stack, call_sid)
    async with aiohttp.ClientSession() as session:
        stream_url = stack.url.replace("http", "ws") + "/ws/twilio"
        async with session.ws_connect(stream_url, headers=upgrade_headers(AUTH, stream_url)) as ws:
            stream_sid = new_sid("MZ")
            await ws.send_json(wire.start(1, new_sid("AC"), stream_sid, call_sid, {"token": token}))
            media = json.dumps(wire.media(2, stream_sid, 1, 0, b"\xff" * 160))
            reader = asyncio.ensure_future(ws.receive_str())  # anything but text: the server closed
            deadline = asyncio.get_running_loop().time() + seconds
            try:
                while not reader.done() and asyncio.get_running_loop().time() < deadline:
                    for _ in range(20):
                        await ws.send_str(media)
                    await asyncio.sleep(0.001)
            except (ConnectionResetError, aiohttp.ClientConnectionError):
                pass
            while not reader.done() or reader.exception() is None:
                try:
                    async with asyncio.timeout(2):
                        await reader
                    reader = asyncio.ensure_future(ws.receive_str())  # model audio: keep reading
                except (TypeError, aiohttp.WSMessageTypeError):
                    return True
                except TimeoutError:
                    return False
            return True


def test_a_flood_is_dropped_logged_and_closed(live):
    before = counters(live)
    assert asyncio.run(flood(live, 8.0)), "a persistent flood closes the stream"
    after = until(lambda: (c := counters(live)).get("ws_closed_flood", 0) > before.get("ws_closed_flood", 0)
                  and c)
    assert after["twilio_flood_dropped"] - before.get("twilio_flood_dropped", 0) > 300
    # supervisord relays the gateway's output: the lines may land a moment after the counters moved.
    until(lambda: "flood:" in (text := live.log.read_text()) and "flooding for" in text, what="the log")


def test_silent_sockets_are_closed(live):
    before = counters(live).get("ws_closed_start_timeout", 0)
    closed, _ = asyncio.run(exchange(live, [Frame(json.dumps(wire.connected()))], wait_close=True))
    assert closed
    until(lambda: counters(live).get("ws_closed_start_timeout", 0) == before + 1)


@settings(FUZZ, max_examples=15)
@given(form=st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=5),
       sig=st.one_of(st.none(), st.text("abcdefABCDEF0123456789+/=", max_size=40)))
def test_forged_webhooks_get_403(live, form, sig):
    before = counters(live)
    headers = {} if sig is None else {"X-Twilio-Signature": sig}
    request = urllib.request.Request(live.url + "/twiml", urllib.parse.urlencode(form).encode(), headers)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5).close()
    refused.value.close()
    assert refused.value.code == 403
    name = "webhook_unsigned" if not sig else "webhook_bad_signature"
    assert counters(live).get(name, 0) == before.get(name, 0) + 1


# --- ZeroMQ sockets ---------------------------------------------------------------------------

def _malformed(frame: bytes) -> bool:
    try:
        m.unpack(frame)
    except m.WireError:
        return True
    return False


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8) |
    st.binary(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=10)
near_messages = st.builds(lambda tag, fields: [[tag, *fields]], st.integers(0, 20),
                          st.lists(msgpack_values, max_size=8))
zmq_frames = st.one_of(
    st.binary(max_size=64),
    msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    near_messages.map(lambda v: msgpack.packb(v, use_bin_type=True)),  # a tag and the wrong fields
    st.integers(900, 1100).map(lambda n: b"\x91" * n + b"\x90"),  # nested past repr's recursion limit
)
zmq_messages = st.lists(st.lists(zmq_frames, min_size=1, max_size=3), min_size=1, max_size=8)


def _send_all(endpoint: str, messages: list[list[bytes]]) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 1000
    sock.connect(endpoint)
    for frames_ in messages:
        sock.send_multipart(frames_)
    sock.close()


def _log_lines(path: Path, *needles: str) -> int:
    return sum(1 for line in path.read_text(errors="replace").splitlines() if all(n in line for n in needles))


@settings(FUZZ, max_examples=30)
@given(messages=zmq_messages)
def test_malformed_frames_at_the_gateway_router(live, messages):
    assume(all(len(f) > 1 or _malformed(f[0]) for f in messages))
    before = counters(live)["pipeline_rejected"]
    lines = _log_lines(live.log, "ERROR gateway", "malformed internal message")
    _send_all(f"ipc://{live.run_dir}/gateway.ipc", messages)
    until(lambda: counters(live)["pipeline_rejected"] >= before + len(messages))
    assert counters(live)["pipeline_rejected"] == before + len(messages)
    logged = lambda: _log_lines(live.log, "ERROR gateway", "malformed internal message")  # noqa: E731
    until(lambda: logged() == lines + len(messages), what="a log line per rejection")


@settings(FUZZ, max_examples=20)
@given(messages=zmq_messages)
def test_malformed_frames_at_a_model_client_router(live, messages):
    assume(all(len(f) > 1 or _malformed(f[0]) for f in messages))
    lines = lambda: _log_lines(live.log, "model_client-0", "malformed internal message")  # noqa: E731
    before = lines()
    _send_all(f"ipc://{live.run_dir}/model_client-0.ipc", messages)
    until(lambda: lines() >= before + len(messages), what="the model_client's log")
    assert lines() == before + len(messages)


@pytest.fixture(scope="module")
def transcoder(tmp_path_factory):
    """A real transcoder process between a fake gateway and a fake model_client (raw ROUTERs)."""
    run = tmp_path_factory.mktemp("tc")
    ctx = zmq.Context.instance()
    gateway, model = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for sock in (gateway, model):
        sock.linger, sock.rcvtimeo = 0, 10000
    gateway.bind(f"ipc://{run}/gateway.ipc")
    model_endpoint = f"ipc://{run}/mc.ipc"
    model.bind(model_endpoint)
    log = run / "transcoder.log"
    env = clean_env(run, BRIDGE_HEARTBEAT_S="30")  # nobody heartbeats it: a long liveness window
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "transcoder"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        route, _ = gateway.recv_multipart()  # its Hello
        gateway.send_multipart([route, m.pack([m.Hello(m.ROLE_GATEWAY, "fake-gw", 0, "")])])
        gateway.send_multipart([route, m.pack([m.CallStart("c1", "CA1", "MZ1", {}, model_endpoint)])])
        model_route = None
        while model_route is None:
            r, frame = model.recv_multipart()
            if any(isinstance(x, m.CallStart) for x in m.unpack(frame)):
                model_route = r
        yield proc, log, (gateway, route), (model, model_route)
        # After all the garbage it still does its job, both ways, and stops cleanly.
        gateway.send_multipart([route, m.pack([m.AudioIn("c1", 1, 0, b"\xff" * 160, 0)])])
        assert _recv_kind(model, m.AudioUp).audio, "caller audio still flows"
        for seq in range(1, 6):
            model.send_multipart([model_route, m.pack([m.AudioDown("c1", seq, 0, b"\x00\x10" * 480, 1)])])
        assert _recv_kind(gateway, m.AudioOut).audio, "model audio still flows"
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        gateway.close()
        model.close()


def _recv_kind(sock, kind):
    while True:
        _, frame = sock.recv_multipart()
        for msg in m.unpack(frame):
            if isinstance(msg, kind):
                return msg


@settings(FUZZ, max_examples=30)
@given(messages=zmq_messages, to_model_side=st.booleans())
def test_malformed_frames_at_a_transcoders_dealers(transcoder, messages, to_model_side):
    proc, log, gateway, model = transcoder
    assume(all(_malformed(f[-1]) for f in messages))  # a DEALER reads the last frame of a message
    sock, route = model if to_model_side else gateway
    before = _log_lines(log, "malformed internal message")
    for frames_ in messages:
        sock.send_multipart([route, *frames_])
    until(lambda: _log_lines(log, "malformed internal message") >= before + len(messages),
          what="the transcoder's log")
    assert _log_lines(log, "malformed internal message") == before + len(messages)
    assert proc.poll() is None


def test_audio_runs_of_the_wrong_kind_are_logged_and_dropped(transcoder):
    proc, log, (gateway, route), (model, model_route) = transcoder
    wrong_way_up = m.AudioRun(m.AudioUp.TAG, ["c1", "c2"], [1, 1], [0, 0], [2, 2], b"\0" * 4, [])
    wrong_way_down = m.AudioRun(m.AudioIn.TAG, ["c1", "c2"], [1, 1], [0, 0], [1, 1], b"\xff\xff", [0, 0])
    gateway.send_multipart([route, m.pack([wrong_way_up])])
    model.send_multipart([model_route, m.pack([wrong_way_down])])
    until(lambda: _log_lines(log, "unexpected run of AudioUp from the gateway dropped") == 1
          and _log_lines(log, "unexpected run of AudioIn from the model_client dropped") == 1,
          what="the transcoder's log")
    assert proc.poll() is None
