"""Caller audio is written on the SDK's socket as exactly the text ``send_realtime_input`` would send
(model_client/gemini_wire.py): checked here against the installed SDK, and again at every connection."""

import numpy as np
import pytest
from google import genai
from google.genai.live import AsyncSession

from model_client.gemini_wire import _Capture, audio_blob, audio_text, sends_audio_text

PAYLOADS = {
    "one byte": b"\x01",
    "20 ms of noise": np.random.default_rng(1).integers(-32768, 32767, 320, dtype=np.int16).tobytes(),
    "URL-safe characters": bytes([0xfb, 0xff, 0xbf]) * 100,
    "padding": bytes(range(256)) * 5 + b"\xff",
    "1 s of silence": bytes(32000),
}
CLIENTS = {
    "Gemini API": lambda: genai.Client(api_key="k"),
    "Vertex AI": lambda: genai.Client(vertexai=True, api_key="k"),
}


@pytest.mark.parametrize("client", CLIENTS.values(), ids=CLIENTS.keys())
@pytest.mark.parametrize("pcm", PAYLOADS.values(), ids=PAYLOADS.keys())
async def test_audio_text_is_what_the_sdk_sends(client, pcm):
    capture = _Capture()
    session = AsyncSession(api_client=client()._api_client, websocket=capture)
    await session.send_realtime_input(audio=audio_blob(pcm))
    assert capture.sent == [audio_text(pcm)]
    assert await sends_audio_text(session)


class _OtherSdkSession(AsyncSession):
    async def send_realtime_input(self, **kwargs):
        await self._ws.send('{"realtimeInput": {"mediaChunks": []}}')


class _Broken(AsyncSession):
    async def send_realtime_input(self, **kwargs):
        raise ValueError("not this way")


async def test_another_sdk_is_used_through_its_own_method():
    api = genai.Client(api_key="k")._api_client
    assert not await sends_audio_text(_OtherSdkSession(api_client=api, websocket=_Capture()))
    assert not await sends_audio_text(_Broken(api_client=api, websocket=_Capture()))
    assert not await sends_audio_text(object())
