"""The emulator, driven by the real google-genai SDK over TLS (plus a raw client for bad frames)."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time

import aiohttp
import numpy as np
import pytest
import samplerate
from google import genai
from google.genai import errors, types

from common import resample
from common.voice_activity import EnergyVad, SpeechEnded, SpeechStarted, VadConfig
from emulator import persona
from emulator.server import EmulatorStage
from emulator.turns import CHUNK_BYTES
from softphone.measure import best_lag_correlation
from softphone.speech import speech_like

MODEL = "gemini-3.8-live"
MIME = "audio/pcm;rate=16000"
FRAME = 640  # 20 ms at 16 kHz
LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


def sdk_client(stage: EmulatorStage, base_suffix: str = "", api_version: str = "v1beta") -> genai.Client:
    s = stage.settings
    return genai.Client(api_key="dummy", http_options=types.HttpOptions(
        base_url=s.emulator_base_url + base_suffix, api_version=api_version,
        async_client_args={"ssl": ssl.create_default_context(cafile=s.emulator_cert)}))


def live_config(handle: str | None = None) -> types.LiveConnectConfig:
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(silence_duration_ms=300)),
        session_resumption=types.SessionResumptionConfig(handle=handle),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig())


def speech(seconds: float, seed: int = 1) -> np.ndarray:
    return speech_like(seconds, seed=seed, rate=16000)


async def send_pcm(session, pcm: np.ndarray) -> None:
    data = pcm.astype("<i2").tobytes()
    for i in range(0, len(data), FRAME):
        await session.send_realtime_input(audio=types.Blob(data=data[i:i + FRAME], mime_type=MIME))


async def one_turn(session, timeout: float = 10.0) -> list[tuple[float, types.LiveServerMessage]]:
    """Every message up to and including turn_complete, with its arrival time."""
    messages = []
    async with asyncio.timeout(timeout):
        async for msg in session.receive():
            messages.append((time.monotonic(), msg))
    return messages


async def one_turn_or_first(session, timeout: float = 5.0) -> types.LiveServerMessage:
    async with asyncio.timeout(timeout):
        async for msg in session.receive():
            return msg


def server_content(messages) -> list[types.LiveServerContent]:
    return [m.server_content for _, m in messages if m.server_content]


async def test_echo_turn_through_the_real_sdk(start_emulator):
    stage = await start_emulator()
    said = speech(1.0)
    async with sdk_client(stage).aio.live.connect(model=MODEL, config=live_config()) as session:
        await send_pcm(session, np.concatenate([said, np.zeros(8000, np.int16)]))
        turn = await one_turn(session)
        update = (await one_turn_or_first(session)).session_resumption_update

    audio = [(t, m.data) for t, m in turn if m.data]
    heard = np.frombuffer(b"".join(d for _, d in audio), "<i2").astype(np.float64)
    assert abs(len(heard) - 1.5 * len(said)) < 0.15 * 24000, len(heard)
    expected = samplerate.resample(said.astype(np.float32) / 32768, 1.5, "sinc_best") * 32768
    lag, corr = best_lag_correlation(expected, heard)
    assert corr > 0.9, f"echo correlation {corr:.3f} at lag {lag}"
    # Streamed in 40-100 ms chunks, faster than real time. (How they spread out in time is seen at the
    # receiver only, after its own scheduling on a busy machine: not asserted here.)
    assert all(len(d) <= CHUNK_BYTES for _, d in audio) and 40 <= CHUNK_BYTES / 48 <= 100
    assert audio[-1][0] - audio[0][0] < len(heard) / 24000

    contents = server_content(turn)
    inputs = [c.input_transcription for c in contents if c.input_transcription]
    assert [(i.text, i.finished) for i in inputs] == [("(1.0 s of speech)", True)]
    outputs = "".join(c.output_transcription.text for c in contents if c.output_transcription)
    assert outputs.startswith("(echo of ")
    flags = [(bool(c.generation_complete), bool(c.turn_complete)) for c in contents if
             c.generation_complete or c.turn_complete]
    assert flags == [(True, False), (False, True)]  # generationComplete, then turnComplete, last
    assert not any(c.interrupted for c in contents)
    assert update and update.resumable and update.new_handle


async def test_resumption_handles_are_unique_and_resume(start_emulator):
    stage = await start_emulator()
    client = sdk_client(stage)
    handles = []
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        for seed in (2, 3):
            await send_pcm(session, np.concatenate([speech(0.4, seed), np.zeros(8000, np.int16)]))
            await one_turn(session)
            handles.append((await one_turn_or_first(session)).session_resumption_update.new_handle)
    assert len(set(handles)) == 2 and all(handles)
    async with client.aio.live.connect(model=MODEL, config=live_config(handles[-1])) as session:
        await send_pcm(session, np.concatenate([speech(0.4, 4), np.zeros(8000, np.int16)]))
        assert any(m.data for _, m in await one_turn(session))
    with pytest.raises(errors.APIError) as e:  # an unknown handle is refused, as an expired one
        async with client.aio.live.connect(model=MODEL, config=live_config("no-such-handle")):
            pass
    assert e.value.code == 1007


async def test_barge_in_interrupts_the_turn(start_emulator):
    stage = await start_emulator()
    async with sdk_client(stage).aio.live.connect(model=MODEL, config=live_config()) as session:
        await send_pcm(session, np.concatenate([speech(4.0, 5), np.zeros(8000, np.int16)]))
        first, barged = [], False
        async with asyncio.timeout(10):
            async for msg in session.receive():
                first.append((time.monotonic(), msg))
                if msg.data and not barged:  # the long reply is streaming: talk over it
                    barged = True
                    await send_pcm(session, np.concatenate([speech(0.5, 6), np.zeros(8000, np.int16)]))
        second = await one_turn(session)

    contents = server_content(first)
    flags = [("interrupted" if c.interrupted else "") + ("done" if c.turn_complete else "")
             + ("generated" if c.generation_complete else "") for c in contents]
    assert [f for f in flags if f] == ["interrupted", "done"]
    cut = sum(len(m.data) for _, m in first if m.data)
    assert 0 < cut < 4.0 * 24000 * 2 * 0.8, "the interrupted turn must stop early"
    replied = sum(len(m.data) for _, m in second if m.data) / 48000
    assert 0.4 < replied < 0.8, replied  # the echo of what was said over it
    assert server_content(second)[-1].turn_complete


async def test_go_away_then_close(start_emulator):
    stage = await start_emulator(EMULATOR_GOAWAY_AFTER_S="0.3")
    async with sdk_client(stage).aio.live.connect(model=MODEL, config=live_config()) as session:
        msg = await one_turn_or_first(session)
        assert msg.go_away and msg.go_away.time_left == "0.3s"
        with pytest.raises(errors.APIError) as e:
            await one_turn(session, timeout=5)
    assert e.value.code == 1000


async def test_drop_is_reported_as_1006(start_emulator):
    stage = await start_emulator(EMULATOR_DROP_AFTER_S="0.2")
    async with sdk_client(stage).aio.live.connect(model=MODEL, config=live_config()) as session:
        with pytest.raises(errors.APIError) as e:
            await one_turn(session, timeout=5)
    assert e.value.code == 1006


async def raw_session(stage: EmulatorStage, http: aiohttp.ClientSession, path: str = LIVE_PATH):
    ctx = ssl.create_default_context(cafile=stage.settings.emulator_cert)
    return await http.ws_connect(stage.settings.emulator_base_url + path, ssl=ctx)


SETUP = json.dumps({"setup": {"model": "models/" + MODEL}})


@pytest.mark.parametrize("frames", [
    ["not json"],
    ['["setup"]'],
    ['{"realtime_input": {"text": "hi"}}'],  # not a setup first
    [SETUP, SETUP],
    [SETUP, '{"realtimeInput": {"audio": {"data": "@@@@", "mimeType": "audio/pcm;rate=16000"}}}'],
    [SETUP, '{"realtimeInput": {"audio": {"data": "AAÄA", "mimeType": "audio/pcm;rate=16000"}}}'],
    [SETUP, '{"realtimeInput": {"audio": {"data": "AA=A", "mimeType": "audio/pcm;rate=16000"}}}'],
    [SETUP, '{"realtime_input": {"audio": {"data": "AAAA", "mime_type": "video/mp4"}}}'],
    [SETUP, '{"someUnknownKey": {}}'],
])
async def test_malformed_frames_close_with_1007(start_emulator, frames):
    stage = await start_emulator()
    async with aiohttp.ClientSession() as http:
        ws = await raw_session(stage, http)
        for frame in frames:
            await ws.send_str(frame)
        async with asyncio.timeout(5):
            replies = [msg async for msg in ws]  # ends at the close frame
        assert ws.close_code == 1007, (ws.close_code, replies)
    assert [r.data for r in replies] == (['{"setupComplete":{}}'] if frames[0] == SETUP else [])


async def test_paths_health_and_snake_or_camel_input(start_emulator):
    stage = await start_emulator()
    url = stage.settings.emulator_base_url
    ctx = ssl.create_default_context(cafile=stage.settings.emulator_cert)
    paths = ["//ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent",
             "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained",
             "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"]
    pcm = np.concatenate([speech(0.5, 8), np.zeros(8000, np.int16)]).astype("<i2").tobytes()
    async with aiohttp.ClientSession() as http:
        for path in paths:
            ws = await raw_session(stage, http, path)
            await ws.send_str(json.dumps({"setup": {"model": "m", "realtime_input_config": {
                "automaticActivityDetection": {"silenceDurationMs": 300}}}}))
            assert json.loads((await ws.receive(timeout=5)).data) == {"setupComplete": {}}
            async with http.get(url + "/healthz", ssl=ctx) as r:
                assert (await r.json())["sessions"] == 1
            await ws.send_str(json.dumps({"realtimeInput": {"mediaChunks": [
                {"mimeType": MIME, "data": base64.b64encode(pcm).decode()}]}}))
            kinds = []
            while "turnComplete" not in kinds:
                msg = json.loads((await ws.receive(timeout=5)).data)
                kinds.extend(msg.get("serverContent", {}))
            assert "modelTurn" in kinds and "inputTranscription" not in kinds  # not asked for
            await ws.close()
        async with http.get(url + "/ws/elsewhere", ssl=ctx) as r:
            assert r.status == 404


async def test_sdk_default_version_and_trailing_slash(start_emulator):
    stage = await start_emulator()
    client = sdk_client(stage, base_suffix="/", api_version="v1")  # path becomes //ws/...v1...
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        await session.send_realtime_input(text="hello there")
        turn = await one_turn(session)
    text = "".join(c.output_transcription.text for c in server_content(turn) if c.output_transcription)
    assert text == "hello there" and any(m.data for _, m in turn)


async def test_stop_closes_sessions_with_1001_and_twice_is_fine(start_emulator):
    stage = await start_emulator()
    async with sdk_client(stage).aio.live.connect(model=MODEL, config=live_config()) as session:
        await asyncio.wait_for(stage.stop(), 10)
        with pytest.raises(errors.APIError) as e:
            await one_turn(session, timeout=5)
    assert e.value.code == 1001
    await stage.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection(stage.settings.emulator_host, stage.settings.emulator_port)


# Pure parts.

def test_vad_is_independent_of_chunking():
    pcm = np.concatenate([np.zeros(4000, np.int16), speech(1.0, 9), np.zeros(9600, np.int16)])
    data = pcm.astype("<i2").tobytes()

    def run(step: int) -> list:
        vad = EnergyVad(VadConfig(silence_ms=300))
        return [e for i in range(0, len(data), step) for e in vad.feed(data[i:i + step])]

    events = run(640)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert 0.95 < events[1].seconds < 1.15
    for step in (1, 3, 641, 5000, len(data)):
        assert run(step) == events


def test_vad_ignores_silence_and_quiet_noise():
    noise = np.random.default_rng(0).normal(0, 50, 32000).astype(np.int16)  # about -56 dBFS
    assert EnergyVad().feed(noise.tobytes()) == []


def test_echo_is_clipped_not_wrapped():
    square = np.tile(np.r_[np.full(20, 32767), np.full(20, -32768)], 200).astype("<i2")
    out = np.frombuffer(persona.echo(square.tobytes()), "<i2")
    assert len(out) == 1.5 * len(square)
    # The resampler rings past full scale at every edge; those samples must saturate, not wrap.
    ideal = resample.one_shot("up_16k_to_24k", square)  # the echo's own engine, unrounded
    over, under = ideal > 32767.5, ideal < -32768.5
    assert over.any() and under.any()
    assert np.all(out[over] == 32767) and np.all(out[under] == -32768)
    assert np.max(np.abs(out[~(over | under)] - ideal[~(over | under)])) <= 0.5 + 1e-3
