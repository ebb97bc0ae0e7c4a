"""Outbound calls: POST /calls through the real stack, the real ``twilio`` client and the local Twilio
REST stand-in (softphone/twilio_rest.py), which answers as a human, a voicemail, or nobody; and the
pure rules (gateway/outbound_rules.py) and outbound stream tokens (gateway/admission.py) as tables."""

import asyncio
import json
import re
import urllib.request

import aiohttp
import pytest

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from common import messages as m
from common.settings import load
from gateway.admission import Admissions
from gateway.outbound import AMD_WAIT_S, Dialler, Keys
from gateway.outbound_rules import DialError, next_step, parse_request
from model_client.stage import call_settings
from harness.stack import Stack, free_port, wait_for
from softphone import cli
from softphone.twilio_rest import BEEP_S, HELLO_S, VOICEMAIL_GREETING_S, TwilioRest

ACCOUNT = "AC" + "0" * 32
AUTH = "test-auth-token"
API_TOKEN = "test-api-token"
GREETING = "Say hello to Jane and remind her of tomorrow's appointment."
VOICEMAIL = "Please call the clinic back about tomorrow's appointment."
SETTINGS = load({"BRIDGE_DIAL_ALLOW": "+1555*,+442071234567", "BRIDGE_DIAL_FROM": "+15550100001"})


# --- the rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, why", [
    (b"{not json", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"to": ""}', 400, "`to` is required"),
    (b'{"to": 15550001111}', 400, "`to` must be a string"),
    (b'{"to": "+15550001111", "persona": "x"}', 400, "unknown field(s): persona"),
    (b'{"to": "+19005550000"}', 403, "not on BRIDGE_DIAL_ALLOW"),
    (b'{"to": "+1555000111x"}', 403, "not on BRIDGE_DIAL_ALLOW"),
    (b'{"to": "+15550001111", "params": {"n": 1}}', 400, "string values"),
    (b'{"to": "+15550001111", "voicemail": {"policy": "sing"}}', 400, "one of hangup, message"),
    (b'{"to": "+15550001111", "voicemail": {"policy": "message"}}', 400, "needs `text`"),
    (b'{"to": "+15550001111", "voicemail": "hangup"}', 400, "must be an object"),
])
def test_bad_requests_are_refused_with_the_reason(body, status, why):
    with pytest.raises(DialError) as e:
        parse_request(body, SETTINGS)
    assert e.value.status == status and why in str(e.value)


def test_a_good_request_keeps_everything_it_said():
    body = {"to": "+15550001111", "system_instruction": "Be brief.", "greeting": "Hi.",
            "params": {"order": "A17"}, "voicemail": {"policy": "message", "text": "Call back."}}
    dial = parse_request(json.dumps(body).encode(), SETTINGS)
    assert dial == ("+15550001111", "+15550100001", "Be brief.", "Hi.", {"order": "A17"}, "message",
                    "Call back.")
    assert parse_request(b'{"to": "+442071234567"}', SETTINGS).voicemail_policy == "hangup"


@pytest.mark.parametrize("answered_by, policy, kind, outcome", [
    ("human", "message", "greet", ""),
    ("machine_end_beep", "message", "message", "outbound voicemail message left"),
    ("machine_end_silence", "message", "message", "outbound voicemail message left"),
    ("machine_end_other", "hangup", "hangup", "outbound voicemail hung up"),
    ("machine_end_beep", "hangup", "hangup", "outbound voicemail hung up"),
    ("fax", "message", "hangup", "outbound machine hung up"),
    ("unknown", "message", "hangup", "outbound machine hung up"),
    ("<script>", "message", "hangup", "outbound machine hung up"),
])
def test_each_verdict_has_one_next_step(answered_by, policy, kind, outcome):
    step = next_step(answered_by, policy)
    assert step.kind == kind and step.reason.split("(")[0].strip() == outcome
    assert "<script>" not in step.reason  # a verdict Twilio does not send never becomes a metric label


def test_a_call_may_bring_its_own_instruction_and_greeting():
    start = m.CallStart("c1", "CA1", "", {}, "", instruction="Be brief.", greeting="Hi.")
    assert (call_settings(SETTINGS, start).system_instruction, call_settings(SETTINGS, start).greeting) == \
        ("Be brief.", "Hi.")
    assert call_settings(SETTINGS, m.CallStart("c1", "CA1", "", {}, "")) is SETTINGS


async def test_outbound_calls_are_off_without_an_api_token():
    dialler = Dialler(web.Application(), load({}), Keys(None, None, None), lambda app: "")
    response = await dialler.place(make_mocked_request("POST", "/calls"))
    assert response.status == 404 and "set BRIDGE_API_TOKEN" in response.text


def test_an_outbound_token_admits_only_the_callsid_it_was_bound_to():
    admissions = Admissions("secret")
    call, token, placeholder = admissions.issue_outbound(60)
    assert admissions.pending == 1
    assert admissions.check(token, "CA1")[0] is None  # not bound yet: nobody's
    admissions.bind(placeholder, "CA1")
    assert admissions.check(token, "CA2")[0] is None
    assert admissions.check(token, "CA1") == (call, "ok")
    assert admissions.check(token, "CA1")[0] is None and admissions.pending == 0  # single use
    call, token, placeholder = admissions.issue_outbound(60)
    admissions.bind(placeholder, "CA3")
    assert admissions.revoke("CA3") == [call] and admissions.pending == 0  # nobody answered


# --- through the stack ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rest_port():
    return free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, rest_port):
    s = Stack(tmp_path_factory.mktemp("outbound") / "run", TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=AUTH,
              TWILIO_API_URL=f"http://127.0.0.1:{rest_port}", BRIDGE_API_TOKEN=API_TOKEN,
              BRIDGE_DIAL_ALLOW="+1555*", BRIDGE_DIAL_FROM="+15550100001", BRIDGE_MAX_CALLS="1",
              GEMINI_SILENCE_MS="300", BRIDGE_TOOLS_MODULE="tests.outbound_tools",
              EMULATOR_TOOL_SCRIPT=json.dumps([{"when": "Read the call params", "call": "read_call_params"}])
              ).start()
    yield s
    assert s.stop() == 0


@pytest.fixture
async def rest(rest_port):
    twilio = TwilioRest(ACCOUNT, AUTH)
    await twilio.start(rest_port)
    yield twilio
    await twilio.stop()


async def dial(stack, body, token=API_TOKEN) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.url + "/calls", data=data, headers=headers) as response:
            return response.status, json.loads(await response.text())


async def finished(rest, sid):
    await asyncio.wait_for(rest.calls[sid].done.wait(), 60)
    return rest.calls[sid]


def transcript(stack, sid) -> list[dict]:
    wait_for(lambda: stack.health()["calls"] == 0, 10, "the gateway to end the call", stack.log)
    path = stack.run_dir / "transcripts" / f"{sid}.jsonl"
    wait_for(lambda: '"ended"' in path.read_text(), 10, "the call's final status", stack.log)
    return [json.loads(line) for line in path.read_text().splitlines()]


def ended(stack, outcome) -> float:
    with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(rf'bridge_calls_ended_total{{outcome="{outcome}"}} (\S+)', text)
    return float(found[1]) if found else 0.0


async def test_a_human_is_greeted_once_after_hello_then_talks(stack, rest):
    status, answer = await dial(stack, {"to": "+15550001111", "greeting": GREETING,
                                        "voicemail": {"policy": "message", "text": VOICEMAIL}})
    assert status == 201, answer
    call = await finished(rest, answer["call_sid"])
    result, lines = call.result, transcript(stack, answer["call_sid"])
    assert not result.protocol_errors
    model = [line for line in lines if line["role"] == "model"]
    assert model[0]["text"] == GREETING, "the first thing the model says is the greeting"
    assert [line["text"] for line in model].count(GREETING) == 1, "one greeting, never restarted"
    assert any("echo" in line["text"] for line in model[1:]), "then a normal exchange"
    assert result.reply_starts_s[0] > HELLO_S, "the greeting waits until the callee said hello"
    events = [(line["event"], line.get("by") or line.get("status")) for line in lines if line["role"] == "call"]
    assert events == [("dialled", None), ("answered", "human"), ("ended", "completed")]


async def test_with_no_verdict_a_callee_heard_speaking_is_greeted_after_a_while(stack, rest):
    rest.detect = False  # the AMD callback never comes
    status, answer = await dial(stack, {"to": "+15550001111", "greeting": GREETING})
    assert status == 201, answer
    call = await finished(rest, answer["call_sid"])
    lines = transcript(stack, answer["call_sid"])
    assert [line["text"] for line in lines if line["role"] == "model"][0] == GREETING
    assert call.result.reply_starts_s[0] > AMD_WAIT_S
    assert {"role": "call", "event": "answered", "by": "no verdict"} in [
        {k: v for k, v in line.items() if k != "t"} for line in lines]


async def test_the_request_params_reach_the_tools(stack, rest):
    status, answer = await dial(stack, {"to": "+15550001111", "greeting": "Read the call params.",
                                        "params": {"patient": "Jane", "appointment": "A17"}})
    assert status == 201, answer
    await finished(rest, answer["call_sid"])
    model = [line["text"] for line in transcript(stack, answer["call_sid"]) if line["role"] == "model"]
    assert '(read_call_params returned {"params": {"appointment": "A17", "patient": "Jane"}})' in model


async def test_a_voicemail_gets_the_message_after_the_beep_then_the_line_hangs_up(stack, rest):
    rest.answer = "voicemail"
    before = ended(stack, "outbound voicemail message left")
    status, answer = await dial(stack, {"to": "+15550001111", "greeting": GREETING,
                                        "voicemail": {"policy": "message", "text": VOICEMAIL}})
    assert status == 201, answer
    call = await finished(rest, answer["call_sid"])
    result, lines = call.result, transcript(stack, answer["call_sid"])
    model = [line for line in lines if line["role"] == "model"]
    assert [line["text"] for line in model] == [VOICEMAIL], "the message, never the greeting"
    assert model[0]["heard_ms"] == model[0]["sent_ms"] > 0, "it played to its end"
    assert result.reply_starts_s[0] > VOICEMAIL_GREETING_S + BEEP_S, "after the beep"
    assert result.closed_by == "server", "then the bridge hung up"
    assert ended(stack, "outbound voicemail message left") == before + 1
    assert ("answered", "machine_end_beep") in [(x.get("event"), x.get("by")) for x in lines]


async def test_a_voicemail_with_the_hangup_policy_is_hung_up_on(stack, rest):
    rest.answer = "voicemail"
    before = ended(stack, "outbound voicemail hung up")
    status, answer = await dial(stack, {"to": "+15550001111"})
    assert status == 201, answer
    call = await finished(rest, answer["call_sid"])
    assert (call.sid, {"Status": "completed"}) in rest.updates, "hung up through the REST API"
    assert call.result.reply_heard_s == 0, "the model never spoke into the voicemail"
    transcript(stack, call.sid)
    assert ended(stack, "outbound voicemail hung up") == before + 1


@pytest.mark.parametrize("answer", ["no-answer", "busy"])
async def test_no_answer_and_busy_end_cleanly(stack, rest, answer):
    rest.answer = answer
    before = ended(stack, f"outbound {answer}")
    status, reply = await dial(stack, {"to": "+15550001111"})
    assert status == 201, reply
    call = await finished(rest, reply["call_sid"])
    assert call.stream is None and call.callbacks[-1][1]["CallStatus"] == answer
    assert call.callbacks[-1][2] == 204, "the signed status callback was accepted"
    lines = transcript(stack, call.sid)
    assert lines[-1]["event"] == "ended" and lines[-1]["status"] == answer
    assert ended(stack, f"outbound {answer}") == before + 1
    wait_for(lambda: stack.health()["pending_streams"] == 0, 5, "its capacity to be given back")


@pytest.mark.parametrize("body, token, status", [
    ({"to": "+15550001111"}, "", 401),
    ({"to": "+15550001111"}, "wrong-token", 401),
    ({"to": "+19005550000"}, API_TOKEN, 403),
    (b'{"to": "+1555', API_TOKEN, 400),
])
async def test_bad_requests_dial_nothing(stack, rest, body, token, status):
    code, answer = await dial(stack, body, token=token)
    assert code == status and answer["error"]
    assert not rest.calls, "nothing was dialled"


async def test_over_capacity_nothing_is_dialled(stack, rest):
    rest.answer, rest.ring_s = "no-answer", 3.0  # the first call rings, holding the only place
    status, first = await dial(stack, {"to": "+15550001111"})
    assert status == 201
    status, answer = await dial(stack, {"to": "+15550001112"})
    assert status == 429 and "at capacity" in answer["error"]
    assert list(rest.calls) == [first["call_sid"]]
    await finished(rest, first["call_sid"])


def test_the_command_line_places_one_through_the_stand_in(stack, rest_port, capsys):
    env = {"BRIDGE_API_TOKEN": API_TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": AUTH}
    argv = ["outbound", "--url", stack.url, "--answer", "busy", "--rest-port", str(rest_port)]
    assert cli.main(argv, env) == 0
    assert "answered as busy: 0.00 s of the bridge heard, final status busy" in capsys.readouterr().out
    env["BRIDGE_API_TOKEN"] = "wrong"
    assert cli.main(argv, env) == 1
    assert "POST /calls answered HTTP 401" in capsys.readouterr().err


async def test_twilio_unreachable_is_a_clear_502_and_holds_nothing(stack):
    status, answer = await dial(stack, {"to": "+15550001111"})  # no stand-in serving
    assert status == 502 and "Twilio's API unreachable" in answer["error"]
    assert stack.health()["pending_streams"] == 0
