"""A line that never goes dead or deaf, through the real stack (supervisord, softphone, emulator, real
SDK): hold audio while a tool runs, paused input answered, a silent caller prompted then hung up, a
stalled model recovered or handed to /twiml/after, the longest call warned and ended."""

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

QUIET_LINE = {"BRIDGE_IDLE_PROMPT_S": "0", "BRIDGE_IDLE_HANGUP_S": "0"}


def started(tmp_path, **env) -> Stack:
    return Stack(tmp_path / "run", GEMINI_SILENCE_MS="300", **env).start()


def stopped(stack: Stack) -> str:
    """Stop the stack; its log."""
    assert stack.stop() == 0
    text = stack.log.read_text()
    assert "Traceback" not in text, text[-8000:]
    return text


def transcript(stack, call_sid) -> list[dict]:
    wait_for(lambda: stack.health()["calls"] == 0, 10, "the gateway to end the call", stack.log)
    path = stack.run_dir / "transcripts" / f"{call_sid}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def line_events(lines) -> list[str]:
    return [line["text"] for line in lines if line["role"] == "line"]


def metrics(stack) -> str:
    with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as r:
        return r.read().decode()


def counted(stack, name: str, n: int = 1) -> None:
    """Wait for a stage counter in /metrics (the stages report every 2 s)."""
    line = re.compile(rf'^bridge_stage_events_total{{[^}}]*event="{name}"[^}}]*}} {n}\.0$', re.M)
    wait_for(lambda: line.search(metrics(stack)), 10, f"{name} = {n} in /metrics", stack.log)


def after(stack, call_sid) -> str:
    data = urllib.parse.urlencode({"CallSid": call_sid}).encode()
    with urllib.request.urlopen(stack.url + "/twiml/after", data=data, timeout=5) as r:
        return r.read().decode()


def levels(ulaw: bytes) -> np.ndarray:
    """RMS of each 20 ms of what the caller heard, full scale = 1."""
    pcm = decode_ulaw(ulaw).astype(np.float64) / 32768
    frames = pcm[:len(pcm) // 160 * 160].reshape(-1, 160)
    return np.sqrt((frames ** 2).mean(axis=1))


@pytest.fixture(scope="module")
def tool_stack(tmp_path_factory):
    script = [{"when": "pressed 3", "call": "slow_lookup"}]
    stack = started(tmp_path_factory.mktemp("hold"), EMULATOR_TOOL_SCRIPT=json.dumps(script),
                    BRIDGE_TOOLS_MODULE="tests.line_tools", **QUIET_LINE)
    yield stack
    stopped(stack)


async def test_a_slow_tool_plays_hold_audio_that_never_overlaps_the_model(tool_stack):
    result = await place_call(tool_stack.url, silence(0.5), listen_s=7.0, dtmf=[(0.5, "3")], timeout_s=30)
    lines = transcript(tool_stack, result.call_sid)
    level = levels(result.heard)
    loud = np.flatnonzero(level > 0.1)  # the reply: the emulator's tone at −12 dBFS
    assert len(loud), "the model spoke after its tool"
    first, last = loud[0], loud[-1]
    hold = np.flatnonzero((level > 0.002) & (level < 0.06))
    assert np.any((hold > 25) & (hold < first)), "hold audio played while the tool ran"
    assert np.all(level[first + 1:last] > 0.06), "nothing else within the model's turn"
    assert not np.any(level[last + 2:] > 0.002), "no hold audio once the model has spoken"
    events = line_events(lines)
    assert any(e.startswith("hold: started") for e in events)
    assert any("hold: stopped" in e and "the model speaks" in e for e in events)
    wait_for(lambda: 'bridge_gateway_events_total{event="hold_plays"} 1.0' in metrics(tool_stack), 5,
             "hold_plays in /metrics")


async def test_the_hold_sound_stops_when_the_caller_speaks(tool_stack):
    caller = np.concatenate([silence(2.5), speech_like(1.0, seed=7)])
    result = await place_call(tool_stack.url, caller, listen_s=3.0, dtmf=[(0.5, "3")], timeout_s=30)
    events = line_events(transcript(tool_stack, result.call_sid))
    assert any("hold: stopped" in e and "the caller speaks" in e for e in events)
    assert result.clears, "what was queued of the hold sound is flushed"
    reply = [t for t in result.reply_starts_s if t > result.clears[0]]
    assert reply, "the model answered the caller"
    level = levels(result.heard)
    between = level[round(result.clears[0] / 0.02) + 1:round(reply[0] / 0.02)]
    assert len(between) and not np.any(between > 0.002), "silence from the clear to the model's answer"


async def test_a_media_pause_gets_the_turn_answered_and_input_resumes(tmp_path):
    stack = started(tmp_path, **QUIET_LINE)
    try:
        caller = np.concatenate([speech_like(1.5, seed=1), silence(3.5), speech_like(1.0, seed=2)])
        # Twilio sends nothing from 1.6 s to 4.6 s: the caller's trailing silence never arrives.
        result = await place_call(stack.url, caller, listen_s=3.0, pauses=[(1.6, 3.0)], timeout_s=30)
        counted(stack, "session_input_pauses")
    finally:
        log = stopped(stack)
    assert result.reply_starts_s and result.reply_starts_s[0] < 4.6, "answered while the media was paused"
    assert any(t > 6.0 for t in result.reply_starts_s), "the turn after the pause is answered too"
    assert "audio_stream_end sent" in log and "caller audio resumed" in log


async def test_a_silent_caller_is_prompted_then_hung_up(tmp_path):
    stack = started(tmp_path, BRIDGE_IDLE_PROMPT_S="2", BRIDGE_IDLE_HANGUP_S="6")
    try:
        result = await place_call(stack.url, silence(0.5), listen_s=20.0, timeout_s=40)
        lines = transcript(stack, result.call_sid)
        answer = after(stack, result.call_sid)
        counted(stack, "session_idle_hangups")
    finally:
        stopped(stack)
    events = line_events(lines)
    assert any("prompting the model" in e for e in events)
    assert any("goodbye" in e for e in events)
    said = " ".join(line["text"] for line in lines if line["role"] == "model")
    assert "still there" in said, "the model was asked to check in"
    assert result.closed_by == "server" and "<Hangup" in answer


async def test_a_model_turn_with_no_audio_is_nudged_and_recovers(tmp_path):
    stack = started(tmp_path, EMULATOR_STALL="empty_turn", BRIDGE_STALL_S="2", **QUIET_LINE)
    try:
        result = await place_call(stack.url, speech_like(1.0, seed=3), listen_s=5.0, timeout_s=30)
        lines = transcript(stack, result.call_sid)
        counted(stack, "session_stall_recovered")
    finally:
        stopped(stack)
    assert result.reply_starts_s, "the caller heard an answer"
    events = line_events(lines)
    assert any("completed with no audio" in e and "nudging" in e for e in events)
    assert any("answered after 1 step" in e for e in events)


async def test_a_model_that_never_replies_is_reconnected_by_handle_and_recovers(tmp_path):
    stack = started(tmp_path, EMULATOR_STALL="no_reply", BRIDGE_STALL_S="1.5", **QUIET_LINE)
    try:
        result = await place_call(stack.url, speech_like(1.0, seed=4), listen_s=8.0, timeout_s=30)
        lines = transcript(stack, result.call_sid)
        counted(stack, "session_stall_reconnects")
    finally:
        log = stopped(stack)
    assert result.reply_starts_s, "the caller heard an answer"
    events = line_events(lines)
    assert [e for e in events if "nudging" in e] and [e for e in events if "reconnecting by handle" in e]
    assert any("answered after 2 step" in e for e in events)
    assert "reconnecting in 0.00 s with the latest handle" in log


async def test_a_model_that_stays_silent_hands_the_call_to_twiml_after_with_an_apology(tmp_path):
    stack = started(tmp_path, EMULATOR_PERSONA="silent", BRIDGE_STALL_S="1", **QUIET_LINE)
    try:
        result = await place_call(stack.url, speech_like(1.0, seed=5), listen_s=10.0, timeout_s=30)
        lines = transcript(stack, result.call_sid)
        answer = after(stack, result.call_sid)
    finally:
        stopped(stack)
    assert result.closed_by == "server"
    assert any("with an apology" in e for e in line_events(lines))
    assert "<Say>Sorry, that took me a moment" in answer and "<Connect><Stream" in answer


async def test_the_longest_call_is_warned_then_ended(tmp_path):
    stack = started(tmp_path, BRIDGE_MAX_CALL_S="8", **QUIET_LINE)
    try:
        result = await place_call(stack.url, silence(0.5), listen_s=20.0, timeout_s=40)
        lines = transcript(stack, result.call_sid)
        answer = after(stack, result.call_sid)
    finally:
        stopped(stack)
    said = " ".join(line["text"] for line in lines if line["role"] == "model")
    assert "time limit in about 2 seconds" in said and "time limit is reached" in said
    assert result.closed_by == "server" and "<Hangup" in answer
