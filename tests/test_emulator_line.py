"""The emulator's part in the line tests, through the real google-genai SDK: audioStreamEnd ends the
caller's turn, and EMULATOR_STALL scripts a model that stops answering."""

from __future__ import annotations

import asyncio
import ssl

from google import genai
from google.genai import types

from softphone.speech import speech_like

MODEL = "gemini-3.8-live"
FRAME = 640  # 20 ms at 16 kHz


def client(stage) -> genai.Client:
    s = stage.settings
    return genai.Client(api_key="dummy", http_options=types.HttpOptions(
        base_url=s.emulator_base_url, api_version="v1beta",
        async_client_args={"ssl": ssl.create_default_context(cafile=s.emulator_cert)}))


def config(handle: str | None = None) -> types.LiveConnectConfig:
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO], session_resumption=types.SessionResumptionConfig(handle=handle),
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(silence_duration_ms=300)))


async def say(session, seconds: float, seed: int = 1) -> None:
    """Speech with no trailing silence at all."""
    data = speech_like(seconds, seed=seed, rate=16000).astype("<i2").tobytes()
    for i in range(0, len(data), FRAME):
        await session.send_realtime_input(audio=types.Blob(data=data[i:i + FRAME], mime_type="audio/pcm;rate=16000"))


async def turn(session, timeout: float = 5.0) -> tuple[int, str]:
    """(bytes of audio, the newest handle) up to turn_complete."""
    audio, handle = 0, ""
    async with asyncio.timeout(timeout):
        async for msg in session.receive():
            audio += len(msg.data or b"")
            if msg.session_resumption_update and msg.session_resumption_update.new_handle:
                handle = msg.session_resumption_update.new_handle
    return audio, handle


async def handle_within(session, timeout: float) -> str:
    async with asyncio.timeout(timeout):
        async for msg in session.receive():
            if msg.session_resumption_update and msg.session_resumption_update.new_handle:
                return msg.session_resumption_update.new_handle
            assert not msg.data, "no_reply: no audio"


async def test_audio_stream_end_ends_the_callers_turn(start_emulator):
    stage = await start_emulator()
    async with client(stage).aio.live.connect(model=MODEL, config=config()) as session:
        await say(session, 1.0)
        await session.send_realtime_input(audio_stream_end=True)
        audio, _ = await turn(session)
    assert audio > 0, "answered without waiting for silence that never came"


async def test_empty_turn_completes_a_connections_first_turn_with_no_audio(start_emulator):
    stage = await start_emulator(EMULATOR_STALL="empty_turn")
    async with client(stage).aio.live.connect(model=MODEL, config=config()) as session:
        await say(session, 0.8)
        await session.send_realtime_input(audio_stream_end=True)
        first, _ = await turn(session)
        await session.send_realtime_input(text="hello?")
        second, _ = await turn(session)
    assert first == 0 and second > 0


async def test_no_reply_answers_nothing_until_resumed_by_handle(start_emulator):
    stage = await start_emulator(EMULATOR_STALL="no_reply")
    async with client(stage).aio.live.connect(model=MODEL, config=config()) as session:
        await say(session, 0.8)
        await session.send_realtime_input(audio_stream_end=True)
        handle = await handle_within(session, 5.0)
        await session.send_realtime_input(text="hello?")
        try:
            await turn(session, timeout=1.0)
            answered = True
        except TimeoutError:
            answered = False
    assert not answered
    async with client(stage).aio.live.connect(model=MODEL, config=config(handle)) as session:
        await session.send_realtime_input(text="hello?")
        audio, _ = await turn(session)
    assert audio > 0
