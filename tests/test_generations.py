"""The emulator plays each Live model generation, driven by the real google-genai SDK over TLS: one
conversation script per generation, then what each refuses and how each runs tools."""

from __future__ import annotations

import asyncio
import json
import ssl

import numpy as np
import pytest
from google import genai
from google.genai import errors, types

from emulator import generations as g
from softphone.speech import speech_like

MIME = "audio/pcm;rate=16000"
FRAME = 640
SCRIPT = json.dumps([{"when": "check order", "call": "lookup", "args": {"id": 7}}])
MODELS = {  # model id → the generation it is played as
    "gemini-3.8-live": g.GEMINI_3_8,
    "gemini-3.1-flash-live-preview": g.GEMINI_3_1,
    "gemini-2.5-flash-native-audio-preview-12-2025": g.GEMINI_2_5,
    "gemini-live-2.5-flash-native-audio": g.GEMINI_2_5,
    "some-future-model": g.PLAIN,
}


def client(stage) -> genai.Client:
    s = stage.settings
    return genai.Client(api_key="dummy", http_options=types.HttpOptions(
        base_url=s.emulator_base_url, api_version="v1beta",
        async_client_args={"ssl": ssl.create_default_context(cafile=s.emulator_cert)}))


def config(behavior: types.Behavior | None = None, **extra) -> types.LiveConnectConfig:
    lookup = types.FunctionDeclaration(name="lookup", description="Look an order up.", behavior=behavior)
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO], tools=[types.Tool(function_declarations=[lookup])],
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(silence_duration_ms=300)),
        session_resumption=types.SessionResumptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(), **extra)


async def say(session, seconds: float, seed: int) -> None:
    pcm = np.concatenate([speech_like(seconds, seed=seed, rate=16000), np.zeros(8000, np.int16)])
    data = pcm.astype("<i2").tobytes()
    for i in range(0, len(data), FRAME):
        await session.send_realtime_input(audio=types.Blob(data=data[i:i + FRAME], mime_type=MIME))


async def collect(session, until, timeout: float = 10.0) -> list[types.LiveServerMessage]:
    """Messages until ``until(messages)`` is true (receive() ends at every turn_complete)."""
    got: list[types.LiveServerMessage] = []
    async with asyncio.timeout(timeout):
        while True:
            async for msg in session.receive():
                got.append(msg)
                if until(got):
                    return got


def turns_done(n: int):
    return lambda got: sum(bool(m.server_content and m.server_content.turn_complete) for m in got) >= n


def the_tool_call(got) -> types.FunctionCall:
    return next(m.tool_call.function_calls[0] for m in got if m.tool_call)


@pytest.mark.parametrize("model", sorted(MODELS))
async def test_one_conversation_on_every_generation(start_emulator, model):
    gen = MODELS[model]
    stage = await start_emulator()
    async with client(stage).aio.live.connect(model=model, config=config()) as session:
        await say(session, 0.8, seed=1)
        first = await collect(session, turns_done(1))
        await say(session, 0.6, seed=2)
        second = await collect(session, turns_done(1))

    both = [*first, *second]
    audio_events = [m for m in both if m.data]
    together = [m for m in audio_events if m.server_content.output_transcription]
    assert audio_events and bool(together) == (gen.parts_per_event > 1)  # audio + transcript in one event
    said = "".join(m.server_content.output_transcription.text for m in both
                   if m.server_content and m.server_content.output_transcription)
    assert said.startswith("(echo of ")
    activity = [m.voice_activity.voice_activity_type for m in both if m.voice_activity]
    assert activity == ([types.VoiceActivityType.ACTIVITY_START, types.VoiceActivityType.ACTIVITY_END] * 2
                        if gen.voice_activity else [])
    usage = [m.usage_metadata for m in both if m.usage_metadata]
    assert len(usage) == 2 and all(m.server_content.turn_complete for m in both if m.usage_metadata)
    for u in usage:
        assert u.total_token_count == u.prompt_token_count + u.response_token_count
        assert [(d.modality, d.token_count) for d in u.response_tokens_details] == [
            (types.MediaModality.AUDIO, u.response_token_count)]
    # Per turn, the prompt counting the session's context so far: the second one holds the first turn.
    assert usage[1].prompt_token_count > usage[0].prompt_token_count + usage[0].response_token_count


@pytest.mark.parametrize("extra, refused_on_3_8", [
    ({"proactivity": types.ProactivityConfig(proactive_audio=False)}, "proactive_audio cannot be false"),
    ({"proactivity": types.ProactivityConfig(proactive_audio=True)}, ""),
    ({"enable_affective_dialog": True}, "enable_affective_dialog is not supported"),
    ({"thinking_config": types.ThinkingConfig(thinking_budget=0)}, "thinking_config is not supported"),
])
async def test_what_each_generation_refuses_at_setup(start_emulator, extra, refused_on_3_8):
    stage = await start_emulator()
    for model, gen in MODELS.items():
        if gen is g.GEMINI_3_8 and refused_on_3_8:
            with pytest.raises(errors.APIError) as e:
                async with client(stage).aio.live.connect(model=model, config=config(**extra)):
                    pass
            assert e.value.code == 1007 and refused_on_3_8 in str(e.value)
        else:
            async with client(stage).aio.live.connect(model=model, config=config(**extra)) as session:
                await session.send_realtime_input(text="hello")
                assert any(m.data for m in await collect(session, turns_done(1)))


@pytest.mark.parametrize("model, refused", [("gemini-3.1-flash-live-preview", True),
                                            ("gemini-2.5-flash-native-audio-preview-12-2025", False)])
async def test_media_chunks_refused_where_documented(start_emulator, model, refused):
    stage = await start_emulator()
    pcm = np.concatenate([speech_like(0.5, seed=3, rate=16000), np.zeros(8000, np.int16)])
    async with client(stage).aio.live.connect(model=model, config=config()) as session:
        await session.send_realtime_input(media=types.Blob(data=pcm.astype("<i2").tobytes(), mime_type=MIME))
        if refused:
            with pytest.raises(errors.APIError) as e:
                await collect(session, turns_done(1))
            assert e.value.code == 1007 and "media_chunks" in str(e.value)
        else:
            assert any(m.data for m in await collect(session, turns_done(1)))


async def test_3_8_non_blocking_by_default_keeps_talking_and_survives_new_input(start_emulator):
    stage = await start_emulator(EMULATOR_TOOL_SCRIPT=SCRIPT)
    async with client(stage).aio.live.connect(model="gemini-3.8-live", config=config()) as session:
        await session.send_realtime_input(text="please check order seven")
        got = await collect(session, turns_done(1))
        call = the_tool_call(got)
        working = "".join(m.server_content.output_transcription.text for m in got
                          if m.server_content and m.server_content.output_transcription)
        assert working == "(working on lookup)" and any(m.data for m in got)  # it talks while the tool runs
        await say(session, 0.5, seed=4)  # new input: a NON_BLOCKING call is not cancelled
        got = await collect(session, turns_done(1))
        assert not any(m.tool_call_cancellation for m in got)
        await session.send_tool_response(function_responses=[types.FunctionResponse(
            id=call.id, name=call.name, response={"status": "shipped"},
            scheduling=types.FunctionResponseScheduling.WHEN_IDLE)])
        got = await collect(session, turns_done(1))
    said = "".join(m.server_content.output_transcription.text for m in got
                   if m.server_content and m.server_content.output_transcription)
    assert said == '(lookup returned {"status": "shipped"})'


async def test_3_8_silent_result_is_not_spoken(start_emulator):
    stage = await start_emulator(EMULATOR_TOOL_SCRIPT=SCRIPT)
    async with client(stage).aio.live.connect(model="gemini-3.8-live", config=config()) as session:
        await session.send_realtime_input(text="check order")
        call = the_tool_call(await collect(session, turns_done(1)))
        await session.send_tool_response(function_responses=[types.FunctionResponse(
            id=call.id, name=call.name, response={"status": "shipped"},
            scheduling=types.FunctionResponseScheduling.SILENT)])
        await session.send_realtime_input(text="anything else")
        got = await collect(session, turns_done(1))
    said = "".join(m.server_content.output_transcription.text for m in got
                   if m.server_content and m.server_content.output_transcription)
    assert said == "anything else"  # the next turn answers the text; the result was taken silently


@pytest.mark.parametrize("model", ["gemini-3.8-live", "gemini-2.5-flash-native-audio-preview-12-2025"])
async def test_blocking_call_waits_and_new_input_cancels_it(start_emulator, model):
    stage = await start_emulator(EMULATOR_TOOL_SCRIPT=SCRIPT)
    async with client(stage).aio.live.connect(model=model, config=config(types.Behavior.BLOCKING)) as session:
        await session.send_realtime_input(text="check order")
        got = await collect(session, lambda got: any(m.tool_call for m in got))
        call = the_tool_call(got)
        await say(session, 0.5, seed=5)
        got = await collect(session, lambda got: any(m.tool_call_cancellation for m in got))
    assert not any(m.data for m in got[:1])  # nothing said between the call and the caller's words
    assert [m.tool_call_cancellation.ids for m in got if m.tool_call_cancellation] == [[call.id]]


@pytest.mark.parametrize("model, waits", [("gemini-3.8-live", True),
                                          ("gemini-2.5-flash-native-audio-preview-12-2025", False)])
async def test_interrupt_result_waits_for_the_caller_only_on_3_8(start_emulator, model, waits):
    stage = await start_emulator(EMULATOR_TOOL_SCRIPT=SCRIPT)
    cfg = config(types.Behavior.NON_BLOCKING)
    async with client(stage).aio.live.connect(model=model, config=cfg) as session:
        await session.send_realtime_input(text="check order")
        call = the_tool_call(await collect(session, turns_done(1)))
        speech = speech_like(1.5, seed=6, rate=16000).astype("<i2").tobytes()
        await session.send_realtime_input(audio=types.Blob(data=speech[:16000], mime_type=MIME))  # talking
        await session.send_tool_response(function_responses=[types.FunctionResponse(
            id=call.id, name=call.name, response={"status": "shipped"},
            scheduling=types.FunctionResponseScheduling.INTERRUPT)])
        # The emulator reads frames in order: its VAD is in speech when the response arrives.
        if not waits:  # the result is spoken at once, over the caller
            got = await collect(session, turns_done(1))
            assert any(m.data for m in got)
        else:
            got = []
            with pytest.raises(TimeoutError):
                await collect(session, lambda got: any(m.data for m in got), timeout=0.5)
            rest = speech[16000:] + bytes(16000)
            for i in range(0, len(rest), FRAME):
                await session.send_realtime_input(audio=types.Blob(data=rest[i:i + FRAME], mime_type=MIME))
            got = await collect(session, lambda got: any(m.data for m in got))
    assert got


def test_model_ids_map_to_their_generation():
    for model, gen in MODELS.items():
        for prefix in ("", "models/", "publishers/google/models/",
                       "projects/p/locations/us-central1/publishers/google/models/"):
            assert g.of_model(prefix + model) is gen


@pytest.mark.parametrize("model, cuts", [("gemini-3.8-live", True),
                                         ("gemini-2.5-flash-native-audio-preview-12-2025", False)])
async def test_a_completed_client_turn_interrupts_on_3_8_whatever_activity_handling(start_emulator, model, cuts):
    stage = await start_emulator()
    polite = config()
    polite.realtime_input_config = types.RealtimeInputConfig(
        automatic_activity_detection=types.AutomaticActivityDetection(silence_duration_ms=300),
        activity_handling=types.ActivityHandling.NO_INTERRUPTION)
    async with client(stage).aio.live.connect(model=model, config=polite) as session:
        await say(session, 3.0, seed=7)  # a long echo is streaming...
        await collect(session, lambda got: any(m.data for m in got))
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="part one")]),
                                          turn_complete=False)  # waits for more
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="and two")]))
        first = await collect(session, turns_done(1))
        second = await collect(session, turns_done(1))
    assert any(m.server_content and m.server_content.interrupted for m in first) == cuts
    said = "".join(m.server_content.output_transcription.text for m in second
                   if m.server_content and m.server_content.output_transcription)
    assert said == "part one and two"
