"""Nobody gets in who shouldn't: webhook signatures (official vectors, and twilio's RequestValidator as an
oracle), stream tokens, loopback-only development, the upgrade signature, limits and capacity, CURVE on
tcp://, private ipc directories, and secrets kept out of the logs of a real stack."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import aiohttp
import pytest
import zmq
import zmq.asyncio
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from hypothesis import given, settings, strategies as st
from multidict import CIMultiDict, MultiDict
from twilio.request_validator import RequestValidator

from common import messages as m
from common.curve import CurveKeys, private_dir
from common.link import DealerLink, RouterLink, new_epoch
from common.settings import SettingsError, load
from gateway import security
from gateway.admission import Admissions
from gateway.app import make_app
from harness.stack import Stack, free_port
from softphone import wire
from softphone.caller import place_call
from softphone.speech import speech_like
from softphone.webhook import new_sid, parse_twiml, upgrade_headers, voice_params

TOKEN = "12345"
VECTOR_PARAMS = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "To": "+18005551212"}


def vector_params(caller: str) -> dict[str, str]:
    return {**VECTOR_PARAMS, "Caller": caller, "From": caller}


# --- webhook signatures: the reference's vectors, and RequestValidator as an oracle --------------

@pytest.mark.parametrize("url, caller, expected", [
    ("https://example.com/myapp.php?foo=1&bar=2", "+14158675310", "L/OH5YylLD5NRKLltdqwSvS0BnU="),  # A
    ("https://mycompany.com/myapp.php?foo=1&bar=2", "+14158675309", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),  # B
    ("https://mycompany.com/myapp.php?foo=1&bar=2", "+12349013030", "0/KCTR6DLpKmkAf8muzZqo1nDgQ="),  # C
])
def test_official_form_vectors(url, caller, expected):
    params = vector_params(caller)
    assert security.signature(TOKEN, url, params) == expected
    assert RequestValidator(TOKEN).compute_signature(url, params) == expected
    assert security.valid_form_signature(TOKEN, url, params, expected)
    assert security.valid_form_signature(TOKEN, url.replace(".com/", ".com:443/"), params, expected)
    assert not security.valid_form_signature("54321", url, params, expected)
    assert not security.valid_form_signature(TOKEN, url, {**params, "Digits": "9"}, expected)
    # The documented negative: SHA-256 is not the default scheme.
    assert security.signature(TOKEN, url, params) != "qMztBq0IANMH/q0K9sCfKQJLylezvRdRzRS647SAVow="


def test_official_json_vector():
    body = b'{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}'
    digest = hashlib.sha256(body).hexdigest()
    assert digest == "5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9"
    url = f"https://example.com/myapp?bodySHA256={digest}"
    sig = "hPXmLwIy3Fgqv1i9KPmH/HhQ6zo="
    assert security.valid_json_signature(TOKEN, url, body, sig)
    assert RequestValidator(TOKEN).validate(url, body.decode(), sig)
    assert not security.valid_json_signature(TOKEN, url, body.replace(b"3030", b"3031"), sig)
    assert not RequestValidator(TOKEN).validate(url, body.decode().replace("3030", "3031"), sig)


@pytest.mark.parametrize("public, received, signed_over, ok", [
    # wss, PUBLIC_URL's host (and path), the path as received: the reference's vector is this one
    ("https://bridge.example.com", "/twilio/media", "wss://bridge.example.com/twilio/media", True),
    ("https://bridge.example.com", "/twilio/media", "wss://bridge.example.com/twilio/media/", False),
    ("https://bridge.example.com", "/twilio/media", "https://bridge.example.com/twilio/media", False),
    ("https://bridge.example.com", "/twilio/media", "ws://bridge.example.com/twilio/media", False),
    ("https://bridge.example.com", "/twilio/media", "wss://other.example.com/twilio/media", False),
    ("https://bridge.example.com", "/ws/twilio?x=1&y=%20", "wss://bridge.example.com/ws/twilio?x=1&y=%20",
     True),
    ("https://bridge.example.com", "/ws/twilio?x=1", "wss://bridge.example.com/ws/twilio", False),
    ("https://bridge.example.com:8443", "/ws/twilio", "wss://bridge.example.com:8443/ws/twilio", True),
    ("https://bridge.example.com:8443", "/ws/twilio", "wss://bridge.example.com/ws/twilio", True),
    ("https://bridge.example.com/edge", "/ws/twilio", "wss://bridge.example.com/edge/ws/twilio", True),
    ("http://127.0.0.1:8080", "/ws/twilio", "wss://127.0.0.1:8080/ws/twilio", True),  # always wss
    ("http://127.0.0.1:8080", "/ws/twilio", "ws://127.0.0.1:8080/ws/twilio", False),
])
def test_upgrade_signature_rule_agrees_with_request_validator(public, received, signed_over, ok):
    url = security.upgrade_url(load({"PUBLIC_URL": public}), make_mocked_request("GET", received))
    header = RequestValidator(TOKEN).compute_signature(signed_over, {})
    assert security.valid_upgrade_signature(TOKEN, url, header) == ok
    assert RequestValidator(TOKEN).validate(url, {}, header) == ok
    if signed_over == "wss://bridge.example.com/twilio/media":
        assert header == "hGVJmeOLwZmJhPeWsyRDIvgH8Zc="


@settings(max_examples=200, deadline=None, derandomize=True)
@given(path=st.text("ab/%2F-._~", max_size=16), query=st.text("ab=&%2F+", max_size=16),
       signed_over=st.sampled_from(["same", "https", "slash", "no query", "other path"]))
def test_upgrade_rule_matches_request_validator_for_any_path(path, query, signed_over):
    received = "/ws/" + path + (f"?{query}" if query else "")
    url = security.upgrade_url(load({"PUBLIC_URL": "https://bridge.example.com"}),
                               make_mocked_request("GET", received))
    signed = {"same": url, "https": url.replace("wss://", "https://"), "slash": url + "/",
              "no query": url.split("?")[0], "other path": url.replace("/ws/", "/wz/")}[signed_over]
    header = RequestValidator(TOKEN).compute_signature(signed, {})
    ours = security.valid_upgrade_signature(TOKEN, url, header)
    assert ours == RequestValidator(TOKEN).validate(url, {}, header) == (signed == url)


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(path=st.text("abc/?=&%+é", max_size=20), pairs=st.lists(st.tuples(text, text), max_size=6),
       token=st.text(min_size=1, max_size=40))
def test_signature_equals_request_validator(path, pairs, token):
    url = "https://bridge.example.com/" + path
    params = MultiDict(pairs)
    ours = security.signature(token, url, {k: params.getall(k) for k in params})
    assert ours == RequestValidator(token).compute_signature(url, params)
    assert security.valid_form_signature(token, url, {k: params.getall(k) for k in params}, ours)


@given(header=st.text(max_size=40))
@settings(max_examples=100, deadline=None, derandomize=True)
def test_any_header_text_is_just_wrong_never_an_error(header):
    assert not security.valid_form_signature(TOKEN, "https://x.example/twiml", {}, header + "x")
    assert not security.valid_json_signature(TOKEN, "https://x.example/?bodySHA256=ab", b"", header)
    assert not security.valid_upgrade_signature(TOKEN, "wss://x.example/ws", header + "x")


def test_loopback_means_the_tcp_peer_without_proxy_headers():
    def request(peer, **headers):
        transport = type("T", (), {"get_extra_info": lambda self, k, d=None: peer if k == "peername" else d})
        transport = transport()
        return make_mocked_request("POST", "/twiml", headers=CIMultiDict(headers), transport=transport)

    assert security.is_loopback_peer(request(("127.0.0.1", 5000)))
    assert security.is_loopback_peer(request(("127.8.9.1", 5000)))
    assert security.is_loopback_peer(request(("::1", 5000, 0, 0)))
    assert security.is_loopback_peer(request(("::ffff:127.0.0.1", 5000, 0, 0)))
    assert not security.is_loopback_peer(request(("192.0.2.7", 5000)))
    assert not security.is_loopback_peer(request(("192.0.2.7", 5000), **{"X-Forwarded-For": "127.0.0.1"}))
    # A proxy on this host relaying someone else: loopback peer, but not local traffic.
    assert not security.is_loopback_peer(request(("127.0.0.1", 5000), **{"X-Forwarded-For": "203.0.113.9"}))
    assert not security.is_loopback_peer(request(("127.0.0.1", 5000), Forwarded="for=203.0.113.9"))
    assert not security.is_loopback_peer(request(None))


# --- stream tokens ------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


def test_token_is_single_use_bound_and_short_lived():
    clock, counters = Clock(), {}
    admissions = Admissions("s3cret", clock=clock, counters=counters)
    call, token = admissions.issue("CA1")
    assert call.startswith("c") and len(token) < 64 and admissions.pending == 1
    assert admissions.admit(token, "CA2") is None  # bound to the CallSid it was issued for
    assert admissions.admit(token, "CA1") == call and admissions.pending == 0
    assert admissions.admit(token, "CA1") is None  # single use
    _, late = admissions.issue("CA3")
    clock.now += 62
    assert admissions.admit(late, "CA3") is None
    assert admissions.admit("", "CA3") is None and admissions.admit("v1.x", "CA3") is None
    forged = late[:-3] + ("AAA" if not late.endswith("AAA") else "BBB")
    assert admissions.admit(forged, "CA3") is None
    assert counters == {"stream_token_unknown": 2, "stream_token_reused": 1, "stream_token_expired": 1,
                        "stream_token_missing": 1, "stream_token_malformed": 1}


def test_shared_secret_lets_any_gateway_admit_and_a_random_key_does_not():
    a, b = Admissions("shared"), Admissions("shared")
    call, token = a.issue("CA1")
    assert b.admit(token, "CA1") == call
    lone = Admissions()
    _, token = lone.issue("CA1")
    assert lone.ephemeral_key and Admissions().admit(token, "CA1") is None


# --- the gateway app, in process, with fake peers -----------------------------------------------

@contextlib.asynccontextmanager
async def gateway(capacity: int = 10, peers: bool = True, host: str = "127.0.0.1", **env):
    """The real gateway app on a real socket, with a fake transcoder and model_client said Hello."""
    run_dir = tempfile.mkdtemp(prefix="gw", dir="/tmp")
    port = free_port()
    config = load({"BRIDGE_RUN_DIR": run_dir, "PORT": str(port), "BRIDGE_HEARTBEAT_S": "0.2",
                   "BRIDGE_PREWARM": "false", **env})
    ctx = zmq.asyncio.Context()
    links = []
    async with TestClient(TestServer(make_app(config), host=host, port=port)) as client:
        if peers:
            for role in (m.ROLE_TRANSCODER, m.ROLE_MODEL_CLIENT):
                hello = m.Hello(role, new_epoch(), capacity, f"ipc://{run_dir}/{role}.ipc")
                links.append(DealerLink(ctx, config.gateway_endpoint, 0.2, lambda h=hello: h, lambda: 0,
                                        lambda batch: None))
                await links[-1].start()
            wait = asyncio.get_running_loop().time() + 5
            while (await (await client.get("/healthz")).json())["status"] != "ok":
                assert asyncio.get_running_loop().time() < wait, "fake peers never joined"
                await asyncio.sleep(0.05)
        client.config = config
        try:
            yield client
        finally:
            for link in links:
                await link.stop()
            ctx.destroy(linger=0)
    shutil.rmtree(run_dir, ignore_errors=True)


def signed(config, path: str, params: dict[str, str], token: str | None) -> dict[str, str]:
    if token is None:
        return {}
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(config.public_url + path, params)}


async def ring(client, token: str | None = None, call_sid: str | None = None) -> tuple[int, str, str]:
    """POST /twiml as Twilio would: (status, body, stream token or "")."""
    params = voice_params(call_sid or new_sid("CA"), new_sid("AC"))
    r = await client.post("/twiml", data=params, headers=signed(client.config, "/twiml", params, token))
    body = await r.text()
    stream_token = parse_twiml(body, "http://x/twiml").parameters["token"] if "<Connect>" in body else ""
    return r.status, body, stream_token


async def counters(client) -> dict:
    return (await (await client.get("/healthz")).json())["counters"]


async def test_webhooks_need_a_valid_signature_over_the_public_url(caplog):
    auth = "distinctive-auth-token-7d1c"
    public = "https://bridge.example.com"
    async with gateway(TWILIO_AUTH_TOKEN=auth, PUBLIC_URL=public) as client:
        assert (await ring(client))[0] == 403  # unsigned
        params = voice_params(new_sid("CA"), new_sid("AC"))
        local = f"http://127.0.0.1:{client.port}/twiml"  # what the server sees: not what Twilio signed
        for bad in (RequestValidator(auth).compute_signature(local, params),
                    RequestValidator("wrong").compute_signature(public + "/twiml", params), "é" * 28):
            r = await client.post("/twiml", data=params, headers={"X-Twilio-Signature": bad})
            assert r.status == 403
        status, body, token = await ring(client, auth)
        assert status == 200 and token, body
        # The query string is part of what Twilio signs, exactly as sent.
        r = await client.post("/twiml?x=1&y=%20", data=params,
                              headers=signed(client.config, "/twiml?x=1&y=%20", params, auth))
        assert r.status == 200
        for path in ("/twiml/after", "/twiml/stream-status"):
            assert (await client.post(path, data=params)).status == 403
            assert (await client.post(path, data=params, headers=signed(client.config, path, params, auth))
                    ).status in (200, 204)
        got = await counters(client)
    assert got["webhook_unsigned"] == 3 and got["webhook_bad_signature"] == 3
    assert "refused" in caplog.text and auth not in caplog.text
    assert "é" * 28 not in caplog.text  # never the whole signature


async def test_json_webhook_uses_body_sha256():
    auth = "tok-json"
    async with gateway(TWILIO_AUTH_TOKEN=auth) as client:
        body = json.dumps({"CallSid": "CA1", "StreamEvent": "stream-started"}).encode()
        path = f"/twiml/stream-status?bodySHA256={hashlib.sha256(body).hexdigest()}"
        sig = RequestValidator(auth).compute_signature(client.config.public_url + path, {})
        headers = {"X-Twilio-Signature": sig, "Content-Type": "application/json"}
        assert (await client.post(path, data=body, headers=headers)).status == 204
        assert (await client.post(path, data=body + b" ", headers=headers)).status == 403


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 9))  # no packet is sent; this only picks the outgoing address
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("insecure", [False, True])
async def test_without_a_token_only_loopback_peers_get_in(insecure, caplog):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback address")
    env = {"BRIDGE_INSECURE_DEV": "true"} if insecure else {}
    async with gateway(host="0.0.0.0", **env) as client:
        assert (await ring(client))[0] == 200  # the test client is on loopback
        assert (await client.post("/twiml", data={"CallSid": "CA1"}, headers={"X-Forwarded-For": "1.2.3.4"})
                ).status == (200 if insecure else 403)
        async with aiohttp.ClientSession() as session:
            r = await session.post(f"http://{address}:{client.port}/twiml", data={"CallSid": "CA1"})
            assert r.status == (200 if insecure else 403)
            with contextlib.suppress(aiohttp.WSServerHandshakeError):
                ws = await session.ws_connect(f"http://{address}:{client.port}/ws/twilio")
                assert insecure, "a remote stream must not open without a token"
                await ws.close()
        got = await counters(client)
    assert got.get("forbidden_not_loopback", 0) == (0 if insecure else 3)
    assert ("INSECURE:" in caplog.text) == insecure


@pytest.mark.parametrize("mode, sign, opens", [
    (None, False, False), (None, True, True),  # enforce, the default with TWILIO_AUTH_TOKEN set
    ("log", False, True), ("enforce", False, False), ("enforce", True, True), ("off", False, True)])
async def test_upgrade_signature_modes(mode, sign, opens, caplog):
    auth = "tok-upgrade"
    env = {"BRIDGE_UPGRADE_SIGNATURE": mode} if mode else {}
    async with gateway(TWILIO_AUTH_TOKEN=auth, **env) as client:
        headers = upgrade_headers(auth, client.config.stream_url) if sign else {}
        try:
            ws = await client.ws_connect("/ws/twilio", headers=headers)
            await ws.close()
            opened = True
        except aiohttp.WSServerHandshakeError as e:
            assert e.status == 403
            opened = False
        got = await counters(client)
    assert opened == opens
    if mode != "off":
        assert got.get("ws_signature_ok" if sign else "ws_signature_missing") == 1
    if not opens:
        assert "stream upgrade refused: it carries no X-Twilio-Signature" in caplog.text


async def open_stream(client, token: str, call_sid: str):
    ws = await client.ws_connect("/ws/twilio")
    stream_sid = new_sid("MZ")
    await ws.send_json(wire.connected())
    await ws.send_json(wire.start(1, new_sid("AC"), stream_sid, call_sid, {"token": token}))
    return ws, stream_sid


async def closed(ws, timeout: float = 5.0) -> bool:
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return True


async def test_stream_tokens_are_checked_at_start(caplog):
    async with gateway() as client:
        sid = new_sid("CA")
        _, _, token = await ring(client, call_sid=sid)
        for bad_token, bad_sid in (("", sid), ("v1.1.abc.def", sid), (token, new_sid("CA"))):
            ws, _ = await open_stream(client, bad_token, bad_sid)
            assert await closed(ws)
        ws, _ = await open_stream(client, token, sid)
        await asyncio.sleep(0.3)
        assert (await (await client.get("/healthz")).json())["calls"] == 1
        reuse, _ = await open_stream(client, token, sid)
        assert await closed(reuse)
        await ws.close()
        got = await counters(client)
    assert got["stream_refused"] == 4
    assert (got["stream_token_missing"], got["stream_token_malformed"], got["stream_token_unknown"],
            got["stream_token_reused"]) == (1, 1, 1, 1)
    assert token not in caplog.text


async def test_an_ended_call_is_freed_without_the_garbage_collector():
    """The stream closes without a ``stop`` (a dropped connection: aiohttp's test server cancels the
    handler then, which must still end the call). The call's tasks are cancelled; a cancelled task's
    traceback holds the coroutine's ``self``, so an object that kept its tasks would wait, with its
    replay ring, for the collector's next full pass (common.lifecycle.cancel_all)."""
    async with gateway() as client:
        sid = new_sid("CA")
        _, _, token = await ring(client, call_sid=sid)
        gc.collect()
        gc.disable()
        try:
            ws, stream_sid = await open_stream(client, token, sid)
            for seq in range(2, 12):
                await ws.send_json(wire.media(seq, stream_sid, seq - 1, 20 * seq, b"\xff" * 160))
            await asyncio.sleep(0.3)
            assert [type(o).__name__ for o in gc.get_objects()].count("Call") == 1
            await ws.close()
            async with asyncio.timeout(5):
                while (await (await client.get("/healthz")).json())["calls"]:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            assert [type(o).__name__ for o in gc.get_objects()].count("Call") == 0
        finally:
            gc.enable()


async def test_capacity_refuses_politely_at_the_webhook():
    async with gateway(capacity=5, BRIDGE_MAX_CALLS="2") as client:
        health = await (await client.get("/healthz")).json()
        assert health["capacity"] == 2
        assert (await ring(client))[2] and (await ring(client))[2]  # two promised streams hold capacity
        status, body, token = await ring(client)
        assert status == 200 and not token and "<Say>" in body and "<Hangup/>" in body
        assert (await counters(client))["calls_refused_capacity"] == 1
    async with gateway(capacity=1) as client:  # derived from what the peers advertise
        assert (await ring(client))[2] and not (await ring(client))[2]


async def test_silent_sockets_time_out():
    async with gateway(BRIDGE_START_TIMEOUT_S="0.3", BRIDGE_MEDIA_TIMEOUT_S="0.6") as client:
        quiet = await client.ws_connect("/ws/twilio")
        sid = new_sid("CA")
        _, _, token = await ring(client, call_sid=sid)
        ws, stream_sid = await open_stream(client, token, sid)
        await ws.send_json(wire.media(2, stream_sid, 1, 0, b"\xff" * 160))
        assert await closed(quiet, 3) and await closed(ws, 4)
        got = await counters(client)
    assert got["ws_closed_start_timeout"] == 1 and got["ws_closed_media_timeout"] == 1


async def test_a_flood_is_dropped_logged_once_and_then_closed(caplog):
    env = dict(BRIDGE_MAX_MSG_RATE="20", BRIDGE_MAX_MSG_BURST="10", BRIDGE_FLOOD_CLOSE_S="0.5")
    async with gateway(**env) as client:
        sid = new_sid("CA")
        _, _, token = await ring(client, call_sid=sid)
        ws, stream_sid = await open_stream(client, token, sid)
        frame = json.dumps(wire.media(3, stream_sid, 1, 0, b"\xff" * 160))
        with contextlib.suppress(ConnectionResetError):
            for _ in range(2000):
                await ws.send_str(frame)
                await asyncio.sleep(0.0005)
                if ws.closed:
                    break
        assert await closed(ws)
        got = await counters(client)
    assert got["twilio_flood_dropped"] > 100 and got["ws_closed_flood"] == 1
    assert caplog.text.count("flood:") <= 2


async def test_oversized_frames_are_refused():
    async with gateway(BRIDGE_MAX_WS_MESSAGE="4096", BRIDGE_MAX_MEDIA_PAYLOAD="400") as client:
        sid = new_sid("CA")
        _, _, token = await ring(client, call_sid=sid)
        ws, stream_sid = await open_stream(client, token, sid)
        await ws.send_json(wire.media(2, stream_sid, 1, 0, b"\xff" * 800))  # payload over 400 bytes
        await asyncio.sleep(0.2)
        assert not ws.closed
        await ws.send_str("x" * 5000)  # a frame over the WebSocket limit closes the socket
        assert await closed(ws)
        got = await counters(client)
    assert got["twilio_rejected"] == 1 and got["ws_error"] == 1


async def test_a_callsid_that_could_name_a_path_is_refused():
    async with gateway() as client:
        for sid in ("../../etc/passwd", "CA1/2", "", "CA" + "0" * 80):
            r = await client.post("/twiml", data={"CallSid": sid})
            assert r.status == 400, sid
        assert (await ring(client, call_sid="CA" + "f" * 32))[2]


def test_the_queue_to_a_stuck_socket_is_bounded_and_sheds_the_oldest_audio():
    from gateway.calls import MAX_UNWRITTEN, Call
    from gateway.playout import Playout
    from gateway.transcripts import TranscriptLog

    counters: dict[str, int] = {}
    call = Call("c1", "CA1", "MZ1", None, Playout(), TranscriptLog("", "CA1"), counters=counters)
    for i in range(MAX_UNWRITTEN + 50):  # nobody drains it (no writer task)
        call._queue("media", bytes([i % 256]) * 160)
        if i % 10 == 0:
            call._queue("mark", f"m{i}")
    assert len(call._out) == MAX_UNWRITTEN
    marks = [data for kind, data in call._out if kind == "mark"]
    assert len(marks) == len(range(0, MAX_UNWRITTEN + 50, 10)), "marks are kept: their echoes close the books"
    assert call._out[-1] == ("media", bytes([(MAX_UNWRITTEN + 49) % 256]) * 160), "the newest audio stays"
    assert counters["out_audio_shed"] == (MAX_UNWRITTEN + 50) + len(marks) - MAX_UNWRITTEN


# --- settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("env, message", [
    ({"BRIDGE_UPGRADE_SIGNATURE": "sometimes"}, "BRIDGE_UPGRADE_SIGNATURE must be off, log or enforce"),
    ({"BRIDGE_INSECURE_DEV": "perhaps"}, "BRIDGE_INSECURE_DEV must be true or false"),
    ({"BRIDGE_MAX_CALLS": "-1"}, "BRIDGE_MAX_CALLS must be >= 0"),
    ({"BRIDGE_MAX_MSG_RATE": "0.5"}, "BRIDGE_MAX_MSG_RATE must be >= 1"),
    ({"BRIDGE_MAX_WS_MESSAGE": "12"}, "BRIDGE_MAX_WS_MESSAGE must be >= 1024"),
    ({"BRIDGE_START_TIMEOUT_S": "soon"}, "BRIDGE_START_TIMEOUT_S must be a number"),
    ({"BRIDGE_CURVE_SERVER_SECRET": "short"}, "BRIDGE_CURVE_SERVER_SECRET must be a 40-character Z85"),
    ({"BRIDGE_CURVE_DIR": "/nonexistent"}, "BRIDGE_CURVE_DIR must be a directory"),
    ({"GATEWAY_ENDPOINT": "tcp://10.0.0.1:5555"}, "tcp:// but no CURVE keys"),
])
def test_malformed_security_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        load(env)


def test_secrets_stay_out_of_repr_and_curve_keys_load_from_a_directory(tmp_path):
    from common.curve import make_certificates

    make_certificates(str(tmp_path / "keys"))
    config = load({"TWILIO_AUTH_TOKEN": "tok-a1", "BRIDGE_SECRET": "sec-b2", "BRIDGE_CURVE_DIR":
                   str(tmp_path / "keys"), "GATEWAY_ENDPOINT": "tcp://127.0.0.1:5555"})
    assert config.curve_server_secret and config.curve_client_secret
    assert len(config.secrets) == 4
    for secret in config.secrets:
        assert secret not in repr(config)
    os.chmod(tmp_path / "keys" / "server.key_secret", 0o644)
    with pytest.raises(SettingsError, match="readable by others"):
        load({"BRIDGE_CURVE_DIR": str(tmp_path / "keys")})
    os.remove(tmp_path / "keys" / "server.key_secret")  # a gateway-less host: the public half only
    config = load({"BRIDGE_CURVE_DIR": str(tmp_path / "keys")})
    assert config.curve_server_public and not config.curve_server_secret


# --- ZeroMQ: CURVE on tcp://, a private directory for ipc:// -------------------------------------

def curve_keys() -> CurveKeys:
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    return CurveKeys(server_public.decode(), client_public.decode(), server_secret.decode(),
                     client_secret.decode())


async def test_links_talk_over_tcp_with_curve_and_strangers_get_nothing_through(caplog, until):
    keys, other = curve_keys(), curve_keys()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.asyncio.Context()
    got, heard = [], []
    router = RouterLink(ctx, endpoint, 0.25, lambda: m.Hello(m.ROLE_GATEWAY, "gw", 0, endpoint),
                        lambda peer, batch: got.append((peer.role, batch)), curve=keys)

    def dealer(curve, role, sink):
        hello = m.Hello(role, new_epoch(), 1, "")
        return DealerLink(ctx, endpoint, 0.25, lambda: hello, lambda: 0, sink.extend, curve=curve)

    friend = dealer(keys, m.ROLE_TRANSCODER, heard)
    strangers = [dealer(CurveKeys(keys.server_public, other.client_public, "", other.client_secret),
                        m.ROLE_MODEL_CLIENT, []),  # the wrong client key
                 dealer(CurveKeys(other.server_public, keys.client_public, "", keys.client_secret),
                        m.ROLE_MODEL_CLIENT, []),  # our key, but it expects another server
                 dealer(None, m.ROLE_MODEL_CLIENT, [])]  # no CURVE at all
    await router.start()
    for link in (friend, *strangers):
        await link.start()
    try:
        await until(lambda: router.peers and friend.remote_epoch)
        friend.send(m.Dtmf("c1", "5"))
        for stranger in strangers:
            stranger.send(m.Dtmf("c2", "6"))
        await until(lambda: got)
        router.send(next(iter(router.peers)), m.CallEnd("c1", "bye"))
        await until(lambda: heard)
        await asyncio.sleep(1.0)  # time enough for the strangers' heartbeats and messages
        assert got == [(m.ROLE_TRANSCODER, [m.Dtmf("c1", "5")])]
        assert [p.role for p in router.peers.values()] == [m.ROLE_TRANSCODER]
        assert heard == [m.CallEnd("c1", "bye")]
        assert not any(s.remote_epoch for s in strangers)
        assert "CURVE client key" in caplog.text  # the wrong client key was refused and logged
    finally:
        for link in (friend, *strangers):
            await link.stop()
        await router.stop()
        ctx.destroy(linger=0)


def test_run_dir_is_private(tmp_path):
    run = tmp_path / "run"
    private_dir(str(run))
    assert run.stat().st_mode & 0o777 == 0o700 and run.stat().st_uid == os.geteuid()
    os.chmod(run, 0o755)
    private_dir(str(run))  # ours but too open: tightened
    assert run.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)  # someone else's (say a pre-created /tmp path): refused
        with pytest.raises(PermissionError, match="belongs to uid 65534"):
            private_dir(str(theirs))


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to try as another user) and a system python")
async def test_other_users_cannot_reach_the_ipc_sockets():
    parent = Path(tempfile.mkdtemp(prefix="ipc", dir="/tmp"))
    os.chmod(parent, 0o755)  # the parent is open: only the run dir itself may keep others out
    run = parent / "run"
    endpoint = f"ipc://{run}/gateway.ipc"
    ctx = zmq.asyncio.Context()
    router = RouterLink(ctx, endpoint, 0.1, lambda: m.Hello(m.ROLE_GATEWAY, "gw", 0, endpoint),
                        lambda peer, batch: None)
    await router.start()
    try:
        probe = ("import os, socket, sys\n"
                 "try:\n    os.listdir(sys.argv[1]); print('listed')\n"
                 "except PermissionError: print('no list')\n"
                 "s = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(sys.argv[1] + '/gateway.ipc'); print('connected')\n"
                 "except PermissionError: print('no connect')\n")
        # The system python: ours may live where that user cannot reach it.
        done = await asyncio.to_thread(subprocess.run, ["/usr/bin/python3", "-I", "-c", probe, str(run)],
                                       user=65534, group=65534, capture_output=True, text=True, timeout=20)
        assert done.stdout.split("\n")[:2] == ["no list", "no connect"], done.stdout + done.stderr
        assert run.stat().st_mode & 0o777 == 0o700
    finally:
        await router.stop()
        ctx.destroy(linger=0)
        shutil.rmtree(parent, ignore_errors=True)


# --- the real stack: CURVE over tcp, signed calls, and no secret in any log --------------------

def free_port_ending_in_0() -> int:
    while True:
        port = free_port() // 10 * 10
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def curve_env(keys: CurveKeys) -> dict[str, str]:
    base = free_port_ending_in_0() // 10  # model_client n listens on port {base}{n}
    return {"GATEWAY_ENDPOINT": f"tcp://127.0.0.1:{free_port()}",
            "MODEL_CLIENT_ENDPOINT": f"tcp://127.0.0.1:{base}{{n}}",
            "BRIDGE_CURVE_SERVER_SECRET": keys.server_secret,
            "BRIDGE_CURVE_CLIENT_SECRET": keys.client_secret}


def all_logs(stack: Stack) -> str:
    return "".join(p.read_text(errors="replace") for p in stack.run_dir.rglob("*.log"))


async def attacks(url: str, auth: str) -> None:
    """What a stranger can try: unsigned and wrongly signed webhooks, a stream with a forged token."""
    async with aiohttp.ClientSession() as session:
        params = voice_params(new_sid("CA"), new_sid("AC"))
        for sig in ("", security.signature(auth + "x", url + "/twiml", params)):
            async with session.post(url + "/twiml", data=params, headers={"X-Twilio-Signature": sig}) as r:
                assert r.status == 403
        stream_url = url.replace("http", "ws") + "/ws/twilio"
        with pytest.raises(aiohttp.WSServerHandshakeError, match="403"):  # an unsigned upgrade
            await session.ws_connect(stream_url)
        async with session.ws_connect(stream_url, headers=upgrade_headers(auth, stream_url)) as ws:
            await ws.send_json(wire.start(1, new_sid("AC"), new_sid("MZ"), params["CallSid"],
                                          {"token": "v1.9999999999.0123456789ab." + "A" * 27}))
            await closed(ws)


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["emulator", "gemini"])
async def test_real_stack_keeps_every_secret_out_of_its_logs(backend, tmp_path):
    keys = curve_keys()
    secrets = {"TWILIO_AUTH_TOKEN": "twilio-9f3e2a71c4", "BRIDGE_SECRET": "bridge-secret-51ab9e0d77"}
    if backend == "gemini":  # real Gemini is unreachable from here: the failure paths are logged too
        secrets.update(GEMINI_API_KEY="AIzaSyGeminiLike-4c1b7e90aa", GOOGLE_API_KEY="AIzaSyGoogleLike-7a2d3f")
    stack = Stack(tmp_path / "run", LOG_LEVEL="DEBUG", GEMINI_SILENCE_MS="300", **secrets, **curve_env(keys))
    try:
        stack.start()
        await attacks(stack.url, secrets["TWILIO_AUTH_TOKEN"])
        if backend == "emulator":  # a real call, signed, through CURVE-protected tcp links
            result = await place_call(stack.url, speech_like(1.0, seed=5), listen_s=2.5,
                                      auth_token=secrets["TWILIO_AUTH_TOKEN"], timeout_s=30)
            assert not result.protocol_errors and len(result.received) > 4000
        else:
            with contextlib.suppress(Exception):
                await place_call(stack.url, speech_like(0.5, seed=5), listen_s=1.0,
                                 auth_token=secrets["TWILIO_AUTH_TOKEN"], timeout_s=15)
        counted = stack.health()["counters"]
        assert counted["webhook_unsigned"] == 1 and counted["webhook_bad_signature"] == 1
        assert counted["stream_token_unknown"] == 1 and counted["ws_signature_missing"] == 1
    finally:
        assert stack.proc is None or stack.stop() == 0
    text = all_logs(stack)
    assert "webhook '/twiml' refused" in text and "DEBUG" in text
    secrets.update({"CURVE server key": keys.server_secret, "CURVE client key": keys.client_secret})
    for name, value in secrets.items():
        assert value not in text, f"{name} appears in the logs"
