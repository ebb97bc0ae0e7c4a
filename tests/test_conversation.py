"""Conversation control through the real stack (supervisord, softphone, emulator, real SDK):
barge-in, marks and what was heard, DTMF, transcripts, tools, end_call, transfer, pre-warm."""

import json
import re
import urllib.parse
import urllib.request

import numpy as np
import pytest

from common.g711 import decode_ulaw
from harness.stack import Stack, wait_for
from softphone.caller import place_call
from softphone.speech import silence, speech_like

pytestmark = pytest.mark.e2e

SCRIPT = [
    {"when": "pressed 9", "call": "end_call"},
    {"when": "pressed 8", "call": "transfer_call", "args": {"target": "+15550001111"}},
    {"when": "pressed 7", "call": "transfer_call", "args": {"target": "+19005550000"}},
    {"when": "pressed 6", "call": "lookup_order", "args": {"order_id": "A17", "express": True}},
    {"when": "pressed 4", "call": "wait_for_agent", "args": {"seconds": 60}},
    {"when": "pressed 2", "call": "wait_in_line", "args": {"seconds": 60}},
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("conversation") / "run", GEMINI_SILENCE_MS="300",
              EMULATOR_TOOL_SCRIPT=json.dumps(SCRIPT), BRIDGE_TRANSFER_TARGETS="+1555*",
              BRIDGE_TOOLS_MODULE="tests.sample_tools").start()
    yield s
    assert s.stop() == 0


def transcript(stack, call_sid) -> list[dict]:
    """The call's transcript, once the gateway has finished the call (it writes the last lines then)."""
    wait_for(lambda: stack.health()["calls"] == 0, 10, "the gateway to end the call", stack.log)
    path = stack.run_dir / "transcripts" / f"{call_sid}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def after(stack, call_sid) -> str:
    data = urllib.parse.urlencode({"CallSid": call_sid}).encode()
    with urllib.request.urlopen(stack.url + "/twiml/after", data=data, timeout=5) as r:
        return r.read().decode()


def barge_ins(stack, source) -> float:
    """The gateway's count of barge-ins from ``source`` (/metrics)."""
    with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(rf'^bridge_barge_ins_total{{source="{source}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def model_lines(stack, call_sid):
    return [line for line in transcript(stack, call_sid) if line["role"] == "model"]


async def test_barge_in_clears_playback_and_records_what_was_heard(stack):
    first, second = speech_like(3.0, seed=1), speech_like(1.5, seed=2)
    caller = np.concatenate([first, silence(0.6), second])
    result = await place_call(stack.url, caller, listen_s=3.0, timeout_s=30)
    assert result.clears, "the caller spoke over the reply: Twilio must get a clear"
    clear = result.clears[0]
    second_end = (len(first) + 0.6 * 8000 + len(second)) / 8000
    after_clear = decode_ulaw(result.heard[int(clear * 8000) + 160:int((second_end + 0.25) * 8000)])
    assert not np.any(after_clear), "no audio of the interrupted turn may play after the clear"
    assert any(m.flushed for m in result.marks_sent_back), "pending marks come back flushed"
    interrupted = [line for line in model_lines(stack, result.call_sid) if line["interrupted"]]
    assert interrupted and interrupted[0]["heard_ms"] < interrupted[0]["sent_ms"]
    assert interrupted[0]["interrupted_by"] in ("gemini_interrupted", "bridge_detector", "gemini_activity")


async def test_local_barge_in_when_the_model_already_finished(stack):
    # The echo of 5 s streams in ~1.3 s; 2.5 s into playback the emulator has nothing left to
    # interrupt, so only the bridge's own detector can clear what Twilio is still playing.
    first = speech_like(5.0, seed=3)
    caller = np.concatenate([first, silence(2.8), speech_like(1.0, seed=4)])
    before = barge_ins(stack, "bridge_detector")
    result = await place_call(stack.url, caller, listen_s=2.0, timeout_s=30)
    assert result.clears
    interrupted = [line for line in model_lines(stack, result.call_sid) if line["interrupted"]]
    assert [line["interrupted_by"] for line in interrupted] == ["bridge_detector"]
    assert barge_ins(stack, "bridge_detector") == before + 1


async def test_dtmf_reaches_the_model_and_transcripts_are_written(stack):
    result = await place_call(stack.url, speech_like(1.0, seed=5), listen_s=4.0, dtmf=[(3.0, "5")])
    lines = transcript(stack, result.call_sid)
    assert any(line["role"] == "caller" for line in lines)
    said = " ".join(line["text"] for line in lines if line["role"] == "model")
    assert "The caller pressed 5 on the phone keypad." in said
    assert all(line["heard_ms"] == line["sent_ms"] for line in lines if line["role"] == "model")


async def test_end_call_hangs_up_after_the_goodbye_has_played(stack):
    result = await place_call(stack.url, silence(0.5), listen_s=8.0, dtmf=[(0.5, "9")], timeout_s=30)
    assert result.closed_by == "server"
    # The goodbye is the model's turn after the call (BLOCKING: it speaks the result; NON_BLOCKING, the
    # default on gemini-3.8-live: it talks on while the tool runs, and what it says after is not played).
    goodbye = model_lines(stack, result.call_sid)
    assert len(goodbye) == 1 and goodbye[0]["heard_ms"] == goodbye[0]["sent_ms"] > 0, goodbye
    assert not any(m.flushed for m in result.marks_sent_back)
    assert "<Hangup" in after(stack, result.call_sid)


async def test_transfer_to_an_allowed_target_dials_it(stack):
    result = await place_call(stack.url, silence(0.5), listen_s=8.0, dtmf=[(0.5, "8")], timeout_s=30)
    assert result.closed_by == "server"
    assert "<Dial>+15550001111</Dial>" in after(stack, result.call_sid)


async def test_transfer_to_a_target_off_the_allow_list_is_refused(stack):
    result = await place_call(stack.url, silence(0.5), listen_s=3.0, dtmf=[(0.5, "7")], timeout_s=30)
    assert result.closed_by == "caller"
    said = " ".join(line["text"] for line in model_lines(stack, result.call_sid))
    assert "not allowed" in said


async def test_user_tool_from_a_module_path_gets_its_arguments(stack):
    result = await place_call(stack.url, silence(0.5), listen_s=3.0, dtmf=[(0.5, "6")], timeout_s=30)
    said = " ".join(line["text"] for line in model_lines(stack, result.call_sid))
    assert 'lookup_order returned {"digits": "6", "express": true, "order": "A17"}' in said


async def test_non_blocking_tool_call_survives_the_caller_speaking(stack):
    # gemini-3.8-live (the default) runs a tool declared without a behaviour NON_BLOCKING: the model
    # keeps talking while it runs, and the caller speaking does not cancel it (only a BLOCKING call is
    # cancelled by new input: tests/test_generations.py).
    caller = np.concatenate([silence(1.5), speech_like(1.0, seed=6)])
    result = await place_call(stack.url, caller, listen_s=2.0, dtmf=[(0.5, "4")], timeout_s=30)
    said = " ".join(line["text"] for line in model_lines(stack, result.call_sid))  # the call is over
    log = stack.log.read_text()
    assert "tool call wait_for_agent({'seconds': 60})" in log
    assert "(working on wait_for_agent)" in said and "cancelled by the model" not in log


async def test_blocking_tool_call_cancelled_when_the_caller_speaks(stack):
    # Declared BLOCKING (tests/sample_tools.py): on gemini-3.8-live new input cancels it.
    caller = np.concatenate([silence(1.5), speech_like(1.0, seed=6)])
    result = await place_call(stack.url, caller, listen_s=2.0, dtmf=[(0.5, "2")], timeout_s=30)
    transcript(stack, result.call_sid)  # the call is over
    log = stack.log.read_text()
    assert "tool call wait_in_line({'seconds': 60})" in log
    assert "cancelled by the model" in log


async def test_prewarmed_greeting_plays_before_the_caller_speaks(tmp_path):
    s = Stack(tmp_path / "run", BRIDGE_GREETING="Greet the caller.").start()
    try:
        result = await place_call(s.url, silence(0.5), listen_s=2.0, timeout_s=30)
        log = s.log.read_text()
    finally:
        assert s.stop() == 0
    assert result.first_audio_s is not None and result.reply_starts_s[0] < 1.0
    assert "session starting (pre-warm)" in log and "stream joined its pre-warmed session" in log
