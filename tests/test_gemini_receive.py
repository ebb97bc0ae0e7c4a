"""The model's audio is read off the connection without the SDK's parsing (model_client/gemini_receive.py):
every frame the emulator sends, read through ``Receiver``, is the message the SDK's own ``_receive``
makes of it; anything unexpected goes through the SDK; and the check at every connection says so."""

import base64
import json

import numpy as np
import pytest
import websockets
from google import genai
from google.genai import errors
from google.genai.live import AsyncSession

from emulator import wire
from model_client.gemini_receive import Receiver, audio_message, receives_audio_directly

PCM = np.random.default_rng(1).integers(-32768, 32767, 1920, dtype=np.int16).tobytes()
AUDIO_B64 = base64.b64encode(PCM).decode("ascii")
AUDIO_PART = {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": AUDIO_B64}}]}}

# Every shape the emulator sends (emulator/wire.py), and whether it takes the direct path.
EMULATOR_FRAMES = {
    "audio": (wire.audio(PCM), True),
    "audio with its transcript": (wire.audio(PCM, " Hello there"), True),
    "audio of padding": (wire.audio(bytes(range(256)) * 3 + b"\x01"), True),
    "output transcription": (wire.output_transcription(" word"), False),
    "input transcription": (wire.input_transcription("hello"), False),
    "generation complete": (wire.generation_complete(), False),
    "turn complete with usage": (wire.turn_complete({"AUDIO": 10}, {"AUDIO": 25, "TEXT": 3}), False),
    "voice activity": (wire.voice_activity(True), False),
    "interrupted": (wire.interrupted(), False),
    "resumption update": (wire.resumption_update("h-1"), False),
    "go away": (wire.go_away(5.0), False),
    "tool call": (wire.tool_call("c1", "lookup", {"q": "x"}), False),
    "tool call cancellation": (wire.tool_call_cancellation(["c1"]), False),
}
# Near misses: each goes through the SDK (which may read it differently, or refuse it).
UNEXPECTED_FRAMES = {
    "two parts": {"serverContent": {"modelTurn": {"parts": [AUDIO_PART["modelTurn"]["parts"][0]] * 2}}},
    "a role": {"serverContent": {"modelTurn": {**AUDIO_PART["modelTurn"], "role": "model"}}},
    "turn complete too": {"serverContent": {**AUDIO_PART, "turnComplete": True}},
    "usage too": {"serverContent": AUDIO_PART, "usageMetadata": {"totalTokenCount": 3}},
    "unpadded base64": {"serverContent": {"modelTurn": {"parts": [{"inlineData": {
        "mimeType": "audio/pcm", "data": AUDIO_B64.rstrip("=") + "QQ"}}]}}},
    "URL-safe base64": {"serverContent": {"modelTurn": {"parts": [{"inlineData": {
        "mimeType": "audio/pcm", "data": base64.urlsafe_b64encode(bytes([0xfb, 0xff]) * 30).decode()}}]}}},
    "text part": {"serverContent": {"modelTurn": {"parts": [{"text": "hi"}]}}},
    "transcript with finished": {"serverContent": {**AUDIO_PART, "outputTranscription": {"text": "a",
                                                                                        "finished": True}}},
    "data not a string": {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType": "a", "data": 3}}]}}},
    "not an object": [1, 2],
}


class _Frames:
    """A WebSocket that hands out the given frames, then closes as the server did."""

    def __init__(self, frames: list, close_code: int = 1011):
        self.frames, self.close_code = list(frames), close_code

    async def recv(self, decode: bool | None = None):
        if not self.frames:
            raise websockets.ConnectionClosedError(websockets.frames.Close(self.close_code, "gone"), None)
        return self.frames.pop(0)


def _session(frames: list) -> AsyncSession:
    return AsyncSession(api_client=genai.Client(api_key="k")._api_client, websocket=_Frames(frames))


async def _sdk_reads(frame: bytes):
    try:
        return await _session([frame])._receive()
    except Exception as e:  # noqa: BLE001 - the same exception, either way
        return type(e)


async def _receiver_reads(frame: bytes):
    try:
        return await anext(Receiver(_session([frame])).messages())
    except Exception as e:  # noqa: BLE001
        return type(e)


def _same(a, b) -> bool:
    if isinstance(a, type) or isinstance(b, type):
        return a == b
    return a.model_dump() == b.model_dump() and a.data == b.data


@pytest.mark.parametrize("frame, direct", EMULATOR_FRAMES.values(), ids=EMULATOR_FRAMES.keys())
async def test_every_emulator_frame_reads_as_the_sdk_reads_it(frame, direct):
    raw = frame.encode()
    assert (audio_message(raw) is not None) == direct
    ours, sdks = await _receiver_reads(raw), await _sdk_reads(raw)
    assert _same(ours, sdks)
    if direct:
        assert ours.data == json_audio(frame)


def json_audio(frame: str) -> bytes:
    return base64.b64decode(json.loads(frame)["serverContent"]["modelTurn"]["parts"][0]["inlineData"]["data"])


@pytest.mark.parametrize("frame", UNEXPECTED_FRAMES.values(), ids=UNEXPECTED_FRAMES.keys())
async def test_anything_unexpected_goes_through_the_sdk(frame):
    raw = json.dumps(frame).encode()
    assert audio_message(raw) is None
    assert _same(await _receiver_reads(raw), await _sdk_reads(raw))


async def test_not_json_fails_as_in_the_sdk():
    assert audio_message(b"{nope") is None
    assert await _receiver_reads(b"{nope") == await _sdk_reads(b"{nope") == ValueError


async def test_messages_in_order_then_the_close_as_the_sdk_raises_it():
    frames = [wire.audio(PCM).encode(), wire.output_transcription(" hi").encode(), wire.audio(PCM[:100]).encode()]
    received = []
    with pytest.raises(errors.APIError) as ours:
        async for msg in Receiver(_session(frames)).messages():
            received.append(msg)
    assert [m.data for m in received] == [PCM, None, PCM[:100]]
    assert received[1].server_content.output_transcription.text == " hi"
    with pytest.raises(errors.APIError) as sdks:
        await _session([])._receive()
    assert ours.value.code == sdks.value.code == 1011


class _NoDecode:
    async def recv(self):
        return b""


class _OtherSdkSession(AsyncSession):
    async def _receive(self):
        raise ValueError("parsed differently")


async def test_the_check_passes_on_this_sdk_and_fails_on_a_surprise():
    api = genai.Client(api_key="k")._api_client
    assert await receives_audio_directly(AsyncSession(api_client=api, websocket=_Frames([])))
    assert await receives_audio_directly(AsyncSession(api_client=genai.Client(vertexai=True, api_key="k")._api_client,
                                                      websocket=_Frames([])))
    assert not await receives_audio_directly(AsyncSession(api_client=api, websocket=_NoDecode()))
    assert not await receives_audio_directly(_OtherSdkSession(api_client=api, websocket=_Frames([])))
    assert not await receives_audio_directly(object())
