"""Tools that fit the model: declarations and result scheduling per profile, a tool the model cannot
run refused at start, informative answers (empty, failed, timed out), and end_call / transfer_call
leaving after the goodbye even where the model keeps talking (its NON_BLOCKING calls)."""

import asyncio
import logging

import pytest
from google.genai import types

from common import messages as m
from common import model_profiles as mp
from model_client.barge import BargeInDetector
from model_client.profiles import ToolRefused
from model_client.reconnect import Conversation
from model_client.tool_calls import ToolCalls
from model_client.tools import ToolContext, Toolbox, end_call, tool, transfer_call
from model_client.turns import ModelTurns

V38, V31 = "gemini-3.8-live", "gemini-3.1-flash-live-preview"
V25 = "gemini-2.5-flash-native-audio-preview-12-2025"
VERTEX25 = "gemini-live-2.5-flash-native-audio"


async def slow(seconds: int) -> dict:
    """Wait."""
    await asyncio.sleep(seconds)
    return {"ok": True}


@tool(behavior="BLOCKING")
async def blocking() -> dict:
    """Blocks."""
    return {}


@tool(behavior="NON_BLOCKING", scheduling="INTERRUPT")
async def urgent() -> dict:
    """Speaks at once."""
    return {}


@tool(scheduling="SILENT")
async def quiet() -> dict:
    """Says nothing."""
    return {}


def with_tool(monkeypatch, fn) -> str:
    """tests.sample_tools with ``fn`` as its one tool (as BRIDGE_TOOLS_MODULE names it)."""
    monkeypatch.setattr(f"tests.sample_tools.{fn.__name__}", fn, raising=False)
    monkeypatch.setattr("tests.sample_tools.__all__", [fn.__name__], raising=False)
    return "tests.sample_tools"


# The declaration's behavior (None: the model's default is meant) and the response's scheduling.
@pytest.mark.parametrize("model, fn, behavior, scheduling", [
    (V38, slow, None, "WHEN_IDLE"), (V38, blocking, "BLOCKING", None), (V38, urgent, None, "INTERRUPT"),
    (V38, quiet, None, "SILENT"),
    (V31, slow, None, None), (V31, blocking, None, None),
    (V25, slow, None, None), (V25, blocking, None, None), (V25, urgent, "NON_BLOCKING", "INTERRUPT"),
    (VERTEX25, slow, None, None), (VERTEX25, blocking, None, None),
    ("gemini-9-live", slow, None, None),
])
def test_tool_declarations_and_result_scheduling_fit_the_model(model, fn, behavior, scheduling, monkeypatch):
    box = Toolbox(transfer=True, module=with_tool(monkeypatch, fn), profile=mp.lookup(model))
    declared = {d.name: d.behavior for d in box.declarations}
    assert declared == {"end_call": None, "transfer_call": None,
                        fn.__name__: types.Behavior(behavior) if behavior else None}
    builtin = types.FunctionResponseScheduling.WHEN_IDLE if model == V38 else None
    assert box.schedulings == {"end_call": builtin, "transfer_call": builtin,
                               fn.__name__: types.FunctionResponseScheduling(scheduling) if scheduling else None}


@pytest.mark.parametrize("model, fn, message", [
    (V31, urgent, "tool 'urgent' asks for behavior NON_BLOCKING, which model gemini-3.1-flash-live-preview"),
    (VERTEX25, urgent, "which model gemini-live-2.5-flash-native-audio does not take"),
    (V25, quiet, "tool 'quiet' asks for scheduling SILENT, which model gemini-2.5-flash-native-audio-preview "
                 "does not take for its BLOCKING calls"),
    (V31, quiet, "asks for scheduling SILENT"),
])
def test_a_tool_the_model_cannot_run_stops_the_process(model, fn, message, monkeypatch):
    with pytest.raises(ToolRefused, match=message):
        Toolbox(module=with_tool(monkeypatch, fn), profile=mp.lookup(model))


@pytest.mark.parametrize("args, message", [
    ({"behavior": "ASYNC"}, "behavior must be BLOCKING or NON_BLOCKING"),
    ({"scheduling": "LATER"}, "scheduling must be one of SILENT, WHEN_IDLE, INTERRUPT"),
])
def test_the_tool_decorator_refuses_what_no_model_takes(args, message):
    with pytest.raises(ValueError, match=message):
        tool(**args)


# --- tool answers ------------------------------------------------------------------------------


async def empty_list() -> list:
    """Finds nothing."""
    return []


async def nothing() -> None:
    """Returns nothing."""


async def broken() -> dict:
    """Raises."""
    raise TimeoutError("the shop's API timed out")


@pytest.mark.parametrize("fn, args, status, retryable", [
    (empty_list, {}, "no_result", False), (nothing, {}, "no_result", False),
    (slow, {"seconds": 5}, "timeout", True), (slow, {"wrong": 1}, "error", False),
])
async def test_tool_answers_are_informative(fn, args, status, retryable):
    box = Toolbox(profile=mp.GEMINI_3_8, timeout_s=0.05)
    box.tools[fn.__name__] = fn
    answer = await box.run(fn.__name__, args, ToolContext("c1", "CA1", {}))
    assert (answer["status"], answer["retryable"]) == (status, retryable)
    assert fn.__name__ in (answer.get("message") or answer.get("error"))


async def test_a_failing_tool_is_answered_with_its_error_and_the_model_scheduling():
    box = Toolbox(profile=mp.GEMINI_3_8)
    box.tools["broken"] = broken
    box.schedulings["broken"] = types.FunctionResponseScheduling.WHEN_IDLE
    answers = []
    calls = ToolCalls("c1", box, ToolContext("c1", "CA1", {}))
    calls.start(types.FunctionCall(id="f1", name="broken", args={}), connection=3, respond=answers.append,
                finished=lambda: None)
    await asyncio.gather(*calls.tasks())
    (answer,) = answers
    assert answer.connection == 3 and answer.response.id == "f1"
    assert answer.response.scheduling == types.FunctionResponseScheduling.WHEN_IDLE
    assert answer.response.response["status"] == "error" and "timed out" in answer.response.response["error"]
    assert answer.response.response["retryable"] is True


# --- end_call and transfer_call where the model keeps talking ---------------------------------------


def audio_event(text: str = "", done: bool = False) -> types.LiveServerContent:
    return types.LiveServerContent(
        model_turn=types.Content(parts=[types.Part(inline_data=types.Blob(data=b"\x01\x00" * 240,
                                                                          mime_type="audio/pcm"))]),
        output_transcription=types.Transcription(text=text) if text else None, turn_complete=done or None)


@pytest.mark.parametrize("tool_fn, args, during_goodbye", [
    (end_call, {}, True), (end_call, {}, False), (transfer_call, {"target": "+15550001111"}, True),
])
async def test_the_goodbye_is_the_last_turn_the_caller_hears(tool_fn, args, during_goodbye):
    out: list = []
    turns = ModelTurns("c1", out.append, BargeInDetector(), Conversation())
    ctx = ToolContext("c1", "CA1", {}, emit=out.append, transfer_allowed=lambda t: True,
                      last_words=turns.last_words)
    if during_goodbye:  # NON_BLOCKING: the call comes while the goodbye streams
        turns.content(audio_event("Goodbye"), b"\x01\x00" * 240)
        await tool_fn(call=ctx, **args)
    else:  # BLOCKING: the goodbye is the answer to the result
        await tool_fn(call=ctx, **args)
        turns.content(audio_event("Goodbye"), b"\x01\x00" * 240)
    turns.content(audio_event(done=True), b"\x01\x00" * 240)
    for text in ("Is there anything else?", "Hello?"):  # the model keeps talking
        turns.content(audio_event(text), b"\x01\x00" * 240)
        turns.content(audio_event(done=True), None)
    turns.content(types.LiveServerContent(input_transcription=types.Transcription(text="Bye")), None)
    played = {msg.turn for msg in out if isinstance(msg, m.AudioDown)}
    said = [(msg.role, msg.text) for msg in out if isinstance(msg, m.Transcript)]
    assert played == {1} and said == [("model", "Goodbye"), ("caller", "Bye")] and turns.unplayed == 5
    assert [type(msg).__name__ for msg in out if isinstance(msg, (m.Action, m.TurnDone))].count("TurnDone") == 1
    assert any(isinstance(msg, m.Action) for msg in out)


async def test_a_refused_transfer_leaves_the_floor_open():
    out: list = []
    turns = ModelTurns("c1", out.append, BargeInDetector(), Conversation())
    ctx = ToolContext("c1", "CA1", {}, emit=out.append, last_words=turns.last_words)
    answer = await transfer_call("+19005550000", call=ctx)
    assert answer["status"] == "error" and not answer["retryable"] and "not allowed" in answer["error"]
    assert turns.last_turn is None and not out


async def test_every_part_of_a_several_part_event_is_used(caplog):  # ModelTurns runs on a loop
    """3.1 and 3.8 put audio parts and the transcript in one event: all of it reaches the call."""
    out: list = []
    turns = ModelTurns("c1", out.append, BargeInDetector(), Conversation())
    parts = [types.Part(inline_data=types.Blob(data=bytes([i]) * 480, mime_type="audio/pcm;rate=24000"))
             for i in (1, 2)]
    msg = types.LiveServerMessage(server_content=types.LiveServerContent(
        model_turn=types.Content(parts=parts), output_transcription=types.Transcription(text="Hi there"),
        input_transcription=types.Transcription(text="hello")))
    with caplog.at_level(logging.WARNING):
        turns.content(msg.server_content, msg.data)
    (audio,) = [o for o in out if isinstance(o, m.AudioDown)]
    assert audio.audio == bytes([1]) * 480 + bytes([2]) * 480
    assert [(o.role, o.text) for o in out if isinstance(o, m.Transcript)] == [("caller", "hello"), ("model", "Hi there")]
