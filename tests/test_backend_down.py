"""Gemini unreachable or refusing the key: the model_client says so at start, /readyz follows it, /twiml
answers at once (the apology, or a <Dial> to BRIDGE_FALLBACK_DIAL), a call whose session cannot be
opened ends at once, and no session outlives its call. Through the real stack; the real google-genai
SDK is what connects (to a closed port, or to the emulator refusing the key)."""

from __future__ import annotations

import json
import re
import socket
import ssl
import urllib.error
import urllib.request
from xmlrpc.client import ServerProxy

import pytest
from google.genai import errors
from supervisor.xmlrpc import SupervisorTransport
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.http11 import Response

from common import messages as m
from common.settings import SettingsError, load
from gateway import backends, twiml
from gateway.admission import Admissions
from model_client.backend_check import describe, down_kind
from softphone.caller import place_call
from softphone.speech import speech_like
from harness.stack import Stack, free_port, wait_for

KEY = "bogus-key-d41d8cd98f00"
SORRY = "<Say>Sorry, we are having technical difficulties."


# --- pure pieces ------------------------------------------------------------------------------------

def _status(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "", Headers()))


@pytest.mark.parametrize("error, resuming, kind", [
    (errors.APIError(1008, {"message": "API key not valid."}), False, m.BACKEND_KEY_REFUSED),
    (errors.APIError(1007, {"message": "Invalid setup"}), False, m.BACKEND_SETUP_REFUSED),
    (errors.APIError(1007, {"message": "API key not valid. Please pass a valid API key."}), False,
     m.BACKEND_KEY_REFUSED),
    (errors.APIError(1007, {"message": "handle expired"}), True, ""),  # the call starts afresh
    (errors.APIError(1011, {"message": "internal"}), False, m.BACKEND_UNREACHABLE),
    (errors.APIError(1006, {"message": "Abnormal closure."}), False, m.BACKEND_UNREACHABLE),
    (_status(403), False, m.BACKEND_KEY_REFUSED),
    (_status(401), False, m.BACKEND_KEY_REFUSED),
    (_status(502), False, m.BACKEND_UNREACHABLE),
    (ConnectionRefusedError(111, "Connect call failed"), False, m.BACKEND_UNREACHABLE),
    (socket.gaierror(-2, "Name or service not known"), False, m.BACKEND_UNREACHABLE),
    (ssl.SSLCertVerificationError("certificate verify failed"), False, m.BACKEND_UNREACHABLE),
    (TimeoutError(), False, m.BACKEND_UNREACHABLE),
    (FileNotFoundError("emulator certificate not found"), False, m.BACKEND_UNREACHABLE),
    (ConnectionClosedError(None, None), False, m.BACKEND_UNREACHABLE),
    (ValueError("a bug of ours"), False, ""),
])
def test_what_a_failed_connect_says_about_the_backend(error, resuming, kind):
    assert down_kind(error, resuming=resuming) == kind


def test_the_reason_is_one_bounded_line():
    text = describe(OSError("line one\nline two " + "x" * 500))
    assert "\n" not in text and len(text) <= 200 and text.startswith("OSError: line one line two")


def _b(state: str, why: str = "") -> backends.Backend:
    return backends.Backend("ipc:///run/model_client-0.ipc", state, why)


@pytest.mark.parametrize("found, not_ready, down, summary", [
    ([], True, False, "checking"),
    ([_b("up")], False, False, "up"),
    ([_b("unreachable", "refused"), _b("up")], False, False, "up"),
    ([_b("checking")], True, False, "checking"),
    ([_b("unknown")], True, False, "checking"),  # not heard from yet: calls still go to it
    ([_b("unreachable", "refused"), _b("checking")], True, False, "checking"),
    ([_b("unreachable", "refused"), _b("key_refused", "1008")], True, True, "down"),
])
def test_readiness_needs_one_working_backend_and_refusal_needs_all_down(found, not_ready, down, summary):
    assert bool(backends.not_ready(found)) is not_ready
    assert bool(backends.down(found)) is down
    assert backends.summary(found) == summary


def test_stats_carry_the_backend_state():
    msg = m.Stats({}, {"backend_up": 0}, {}, m.BACKEND_UNREACHABLE, "ConnectionRefusedError: [Errno 111]")
    assert m.unpack(m.pack([msg])) == [msg]
    assert m.unpack(m.pack([m.Stats({}, {}, {})]))[0].backend == ""  # a transcoder's


@pytest.mark.parametrize("target", ["+15550100999", "15550100999", "sip:desk@pbx.example.com",
                                    "sips:desk@pbx.example.com:5061"])
def test_fallback_dial_takes_a_number_or_a_sip_uri(target):
    settings = load({"BRIDGE_FALLBACK_DIAL": f" {target} "})
    assert settings.fallback_dial == target
    assert "<Dial>" in twiml.dial_twiml(settings.fallback_dial)  # what /twiml will answer with


@pytest.mark.parametrize("target", ["+1555*", "+", "desk", "+1 555 0100", "tel:+15550100999", "sip:",
                                    "sip:a b", "sip:a<b>"])
def test_a_bad_fallback_dial_stops_the_process_naming_the_variable(target):
    with pytest.raises(SettingsError, match="BRIDGE_FALLBACK_DIAL"):
        load({"BRIDGE_FALLBACK_DIAL": target})


def test_revoking_a_call_voids_its_unused_tokens():
    admissions = Admissions("s3cret")
    call_a, token_a = admissions.issue("CA1")
    call_b, _ = admissions.issue("CA1")
    _, token_c = admissions.issue("CA2")
    assert admissions.pending == 3
    assert sorted(admissions.revoke("CA1")) == sorted([call_a, call_b])
    assert admissions.pending == 1 and admissions.revoke("CA1") == []
    assert admissions.admit(token_a, "CA1") is None  # a stream that comes after all is refused
    assert admissions.admit(token_c, "CA2") is not None


# --- through the stack ------------------------------------------------------------------------------

def _post(url: str, form: dict[str, str]) -> str:
    data = "&".join(f"{k}={v}" for k, v in form.items()).encode()
    with urllib.request.urlopen(url, data=data, timeout=5) as r:
        return r.read().decode()


def _readyz(stack: Stack) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(stack.url + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _model_client(health: dict) -> dict:
    return next(p for p in health["peers"] if p["role"] == m.ROLE_MODEL_CLIENT)


def _backend_is(stack: Stack, state: str):
    return lambda: stack.health()["peers"] and any(
        p.get("backend") == state for p in stack.health()["peers"])


def _metrics(stack: Stack) -> str:
    with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as r:
        return r.read().decode()


def _stopped_cleanly(stack: Stack) -> str:
    assert stack.stop() == 0
    text = stack.log.read_text()
    assert "Traceback" not in text, text[-8000:]
    return text


def _sid(n: int) -> str:
    return f"CA{n:032x}"


def test_unreachable_at_start_refuses_calls_at_once_with_the_apology(tmp_path):
    # The case a new user meets: a key and no route to Google. A closed port stands in for Google.
    stack = Stack(tmp_path / "run", GEMINI_API_KEY=KEY,
                  GOOGLE_GEMINI_BASE_URL=f"https://127.0.0.1:{free_port()}").start()
    try:
        wait_for(_backend_is(stack, m.BACKEND_UNREACHABLE), 20, "the model_client to report", stack.log)
        status, ready = _readyz(stack)
        assert status == 503 and "no model_client has a working Gemini backend" in ready["why"]
        assert "unreachable: ConnectionRefusedError" in ready["why"]
        health = stack.health()
        assert health["status"] == "ok" and health["backend"] == "down"  # our processes are fine

        body = _post(stack.url + "/twiml", {"CallSid": _sid(1)})
        assert SORRY in body and body.endswith("<Hangup/></Response>")
        health = stack.health()
        assert health["counters"]["calls_refused_backend_down"] == 1
        assert health["pending_streams"] == 0 and health["calls"] == 0  # no token, no pre-warm
        assert 'bridge_gateway_events_total{event="calls_refused_backend_down"} 1.0' in _metrics(stack)
        assert 'name="backend_up"' in _metrics(stack)
    finally:
        text = _stopped_cleanly(stack)
    assert text.count("Gemini unreachable: ConnectionRefusedError") == 1, "one line, not one per re-check"
    assert KEY not in text


def test_key_refused_sends_calls_to_the_fallback(tmp_path):
    stack = Stack(tmp_path / "run", EMULATOR_REFUSE_KEY="true",
                  BRIDGE_FALLBACK_DIAL="sip:desk@pbx.example.com").start()
    try:
        wait_for(_backend_is(stack, m.BACKEND_KEY_REFUSED), 30, "the model_client to report", stack.log)
        status, ready = _readyz(stack)
        assert status == 503 and "key_refused: 1008" in ready["why"]
        assert "API key not valid" in _model_client(stack.health())["backend_why"]

        body = _post(stack.url + "/twiml", {"CallSid": _sid(2)})
        assert body.endswith("<Dial><Sip>sip:desk@pbx.example.com</Sip></Dial></Response>")
        counters = stack.health()["counters"]
        assert counters["calls_refused_backend_down"] == 1 and counters["fallback_dials"] == 1
        # While down it checks again (with backoff): the emulator sees more refused setups.
        wait_for(lambda: _emulator_health(stack)["log"][1:], 20, "a re-check", stack.log)
        assert {s["ended_by"] for s in _emulator_health(stack)["log"]} == {"key refused"}
    finally:
        text = _stopped_cleanly(stack)
    assert text.count("Gemini refused the key: 1008") == 1


def _emulator_health(stack: Stack) -> dict:
    ctx = ssl.create_default_context(cafile=str(stack.run_dir / "emulator-cert.pem"))
    url = f"https://127.0.0.1:{stack.env['EMULATOR_PORT']}/healthz"
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return json.loads(r.read())


def _supervisor(stack: Stack, method: str, name: str) -> None:
    transport = SupervisorTransport(None, None, f"unix://{stack.run_dir}/supervisor.sock")
    try:
        getattr(ServerProxy("http://127.0.0.1", transport=transport).supervisor, method)(name)
    finally:
        transport.close()


async def test_backend_lost_then_back(tmp_path):
    stack = Stack(tmp_path / "run", GEMINI_SILENCE_MS="300").start()
    try:
        assert "Gemini backend ok (gemini-3.8-live, " in stack.log.read_text()
        assert _model_client(stack.health())["backend"] == m.BACKEND_UP
        _supervisor(stack, "stopProcess", "emulator:emulator")  # Gemini goes away; nobody knows yet

        # The call is admitted (and pre-warmed); its session cannot be opened: it ends at once, with
        # no retries, and the first /twiml/after apologises (not the third, after three silences).
        sid = _sid(3)
        result = await place_call(stack.url, speech_like(1.0, seed=5), listen_s=15, call_sid=sid,
                                  timeout_s=30)
        assert result.closed_by == "server" and not result.heard.strip(b"\xff")
        body = _post(stack.url + "/twiml/after", {"CallSid": sid})
        assert SORRY in body and body.endswith("<Hangup/></Response>")
        assert _readyz(stack)[0] == 503

        # Nothing outlives the call: no stream pending, no session held anywhere.
        def all_free():
            health = stack.health()
            return health["pending_streams"] == 0 and health["calls"] == 0 and all(
                p["load"] == 0 for p in health["peers"])
        wait_for(all_free, 10, "every stage to free the call", stack.log)

        _supervisor(stack, "startProcess", "emulator:emulator")
        wait_for(lambda: _readyz(stack)[0] == 200, 30, "/readyz to return", stack.log)
        result = await place_call(stack.url, speech_like(1.0, seed=5), listen_s=3, timeout_s=30)
        assert result.closed_by == "caller" and result.heard.strip(b"\xff"), "the echo came back"
    finally:
        text = _stopped_cleanly(stack)
    assert "Gemini unreachable: " in text and "model unavailable (Gemini unreachable" in text
    assert "Gemini connection ended (" not in text, "a session with no backend must not retry"
    back = re.search(r"Gemini backend ok \(gemini-3.8-live, \d+ ms\) after \d+ s down", text)
    assert back, "back up, and said so"


def test_a_given_up_call_ends_its_pre_warmed_sessions(stack):
    # Webhooks whose streams never start (a caller who hung up while it rang), until /twiml/after
    # gives up on the call: its tokens are void and its pre-warmed Gemini sessions end at once,
    # not a minute later.
    sid = _sid(4)
    assert "<Connect>" in _post(stack.url + "/twiml", {"CallSid": sid})
    for _ in range(2):  # resumed twice ...
        assert "<Connect>" in _post(stack.url + "/twiml/after", {"CallSid": sid})
    wait_for(lambda: _emulator_health(stack)["sessions"] == 3, 10, "three pre-warmed sessions", stack.log)
    assert stack.health()["pending_streams"] == 3
    assert SORRY in _post(stack.url + "/twiml/after", {"CallSid": sid})  # ... then given up
    assert stack.health()["pending_streams"] == 0
    wait_for(lambda: _emulator_health(stack)["sessions"] == 0, 10, "the pre-warmed sessions to end",
             stack.log)
    wait_for(lambda: _model_client(stack.health())["load"] == 0, 10, "the model_client to free them",
             stack.log)
