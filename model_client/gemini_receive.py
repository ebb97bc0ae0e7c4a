"""The receive side of the last hop: the model's audio read off a Live connection without the SDK's
parsing of every message.

A reply streams as many small audio messages, and the SDK spends most of each one's cost on its
converters and pydantic validation (docs/performance.md#what-a-caller-feels). ``audio_message`` builds
the same ``LiveServerMessage`` for the one shape that dominates (the model's audio, with or without its
output transcription in the same event) from copies of prepared instances. ``Receiver`` reads the
session's socket (its private ``_ws``, as ``gemini_wire.Connection.send`` does) and hands every other
frame, and the socket's close, to the SDK's own ``_receive`` through a one-frame stand-in socket, so
anything unexpected is parsed, or raised, exactly as the SDK does. ``receives_audio_directly`` checks
each connection first that both paths give the same message; if not, the SDK's ``receive`` is used.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
from typing import AsyncIterator

from google.genai import types

# Prepared once; a message is built from shallow copies of them (pydantic's public model_copy).
_BLOB, _PART, _CONTENT = types.Blob.model_construct(), types.Part.model_construct(), types.Content.model_construct()
_SERVER_CONTENT, _MESSAGE = types.LiveServerContent.model_construct(), types.LiveServerMessage.model_construct()
_TRANSCRIPTION = types.Transcription.model_construct()
_PROBE_PCM = bytes(range(256)) * 15  # every base64 character, '+' and '/' included


def audio_message(raw: bytes | str) -> types.LiveServerMessage | None:
    """The message the SDK makes of ``raw`` when it is exactly the model's audio (one inline-data part)
    and at most its output transcription; None for anything else."""
    try:
        frame = json.loads(raw)
        content = frame["serverContent"]
        (part,) = content["modelTurn"]["parts"]
        blob = part["inlineData"]
        data, mime = blob["data"], blob["mimeType"]
        said = content.get("outputTranscription")
        shape_ok = (len(frame) == 1 and content.keys() <= {"modelTurn", "outputTranscription"}
                    and len(content["modelTurn"]) == 1 and len(part) == 1 and len(blob) == 2
                    and isinstance(data, str) and isinstance(mime, str)
                    and (said is None or (said.keys() == {"text"} and isinstance(said["text"], str))))
        if not shape_ok:
            return None
        pcm = binascii.a2b_base64(data, strict_mode=True)  # padded standard base64 only; else the SDK's path
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return None  # not this shape (or not JSON): the SDK's path decides what it is
    update = {"model_turn": _CONTENT.model_copy(update={"parts": [_PART.model_copy(update={
        "inline_data": _BLOB.model_copy(update={"data": pcm, "mime_type": mime})})]})}
    if said is not None:
        update["output_transcription"] = _TRANSCRIPTION.model_copy(update={"text": said["text"]})
    return _MESSAGE.model_copy(update={"server_content": _SERVER_CONTENT.model_copy(update=update)})


class _OneFrame:
    """Stands in for the SDK session's WebSocket on receive: hands the SDK one frame, or one error."""

    def __init__(self):
        self.frame: bytes | str = b""
        self.error: BaseException | None = None

    async def recv(self, decode: bool | None = None) -> bytes | str:
        error, self.error = self.error, None
        if error is not None:
            raise error
        return self.frame


class Receiver:
    """Every message on ``session``'s socket: the model's audio built by ``audio_message``, the rest
    (and the socket's close, as the SDK's ``APIError``) by the SDK's own ``_receive``."""

    def __init__(self, session: object):
        self._ws = session._ws
        self._stand_in = _OneFrame()
        self._sdk = type(session)(api_client=session._api_client, websocket=self._stand_in)

    async def messages(self) -> AsyncIterator[types.LiveServerMessage]:
        while True:
            try:
                raw = await self._ws.recv(decode=False)
            except Exception as e:  # noqa: BLE001 - the SDK turns a close into its APIError
                self._stand_in.error = e
                raw = b""
            yield (audio_message(raw) if raw else None) or await self._sdk_message(raw)

    async def _sdk_message(self, raw: bytes | str) -> types.LiveServerMessage:
        self._stand_in.frame = raw
        return await self._sdk._receive()


def _probe_frames() -> list[str]:
    data = base64.b64encode(_PROBE_PCM).decode("ascii")
    audio = {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}]}}
    return [json.dumps({"serverContent": audio}),
            json.dumps({"serverContent": {**audio, "outputTranscription": {"text": " Hello"}}})]


async def receives_audio_directly(session: object) -> bool:
    """Whether ``Receiver`` can read this session: its socket takes ``recv(decode=False)``, and on
    the audio frames it builds directly this SDK makes the same messages. If not (another SDK
    version), the session is read with the SDK's ``receive``."""
    ws = getattr(session, "_ws", None)
    if ws is None or not hasattr(session, "_api_client"):
        return False
    try:
        if "decode" not in inspect.signature(ws.recv).parameters:
            return False
        receiver = Receiver(session)
        for frame in _probe_frames():
            direct, sdk = audio_message(frame), await receiver._sdk_message(frame.encode())
            if direct is None or direct.model_dump() != sdk.model_dump() or direct.data != sdk.data:
                return False
        return True
    except Exception:  # noqa: BLE001 - any surprise means: use the SDK's receive
        return False
