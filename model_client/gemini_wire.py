"""The last hop to Gemini: one Live connection, how a session opens one (``Dialer``), and the text
frame that carries caller audio on it.

Caller audio is 25 sends a second per session, and ``send_realtime_input`` spends most of each on
pydantic and the SDK's converters; a leaner path is worth having, ideally without leaning on the SDK's
internals. ``audio_text`` builds the same text and ``Connection.send`` writes it on the session's
socket, which does lean on the session's private ``_ws`` (and ``_api_client`` for the check), so
``sends_audio_text`` checks every connection first: anything unexpected and audio goes through the
SDK's own method, as before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import time
from typing import AsyncIterator, Callable

import websockets
from google import genai
from google.genai import errors, types

from common.settings import Settings
from model_client.config import live_config
from model_client.gemini_receive import Receiver, receives_audio_directly
from model_client.reconnect import Conversation, Ended, Opening
from model_client.send_queue import AUDIO, STREAM_END, TEXT, Outgoing
from model_client.tools import Toolbox

log = logging.getLogger(__name__)

INPUT_MIME = "audio/pcm;rate=16000"
CONNECT_TIMEOUT_S = 10.0


class Connection:
    """One Live connection. ``replay_from`` names the journal mark whose items it must be sent again:
    its own handle, or for a fresh session the refused handle."""

    def __init__(self, handle: str, replay_from: str, number: int):
        self.handle, self.replay_from, self.number = handle, replay_from, number
        self.session = None
        self.direct_audio = False  # audio_text written on the SDK's socket (see send)
        self.receiver: Receiver | None = None  # the model's audio read without the SDK's parsing
        self._stack = contextlib.AsyncExitStack()

    async def open(self, client: genai.Client, model: str, config: types.LiveConnectConfig) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            self.session = await self._stack.enter_async_context(
                client.aio.live.connect(model=model, config=config))
        self.direct_audio = await sends_audio_text(self.session)
        if not self.direct_audio:
            _warn_sdk_audio()
        if await receives_audio_directly(self.session):
            self.receiver = Receiver(self.session)
        else:
            _warn_sdk_receive()

    def messages(self) -> AsyncIterator[types.LiveServerMessage]:
        """Everything the model says on this connection, until it ends (the SDK's APIError, or the
        socket's own exception)."""
        return self.receiver.messages() if self.receiver is not None else self._sdk_messages()

    async def _sdk_messages(self) -> AsyncIterator[types.LiveServerMessage]:
        while True:  # the SDK's receive() ends at every turn_complete
            async for msg in self.session.receive():
                yield msg

    async def send(self, item: Outgoing) -> None:
        if item.kind == AUDIO and self.direct_audio:
            await self.session._ws.send(audio_text(item.payload))  # what send_realtime_input would send
        elif item.kind == AUDIO:
            await self.session.send_realtime_input(audio=audio_blob(item.payload))
        elif item.kind == TEXT:
            await self.session.send_realtime_input(text=item.payload)
        elif item.kind == STREAM_END:
            await self.session.send_realtime_input(audio_stream_end=True)
        else:
            await self.session.send_tool_response(function_responses=[item.payload.response])  # a ToolAnswer

    async def close(self) -> None:
        """Leave the SDK's context: a close frame with 1000, if the socket is still open."""
        try:
            await self._stack.aclose()
        except Exception as e:  # the socket may already be gone; nothing is left to do about it
            log.debug("closing connection %d: %s: %s", self.number, type(e).__name__, e)


# A connect's outcome, told to whoever watches the backend: (the error or None, resuming=...) -> a reason
# to end the session now, or "".
OnConnect = Callable[..., str]


class Dialer:
    """Opens one session's connections: numbered (for the logs), configured from the settings, and
    for a fresh session (its handle refused) told the conversation so far."""

    def __init__(self, client: genai.Client, settings: Settings, toolbox: Toolbox,
                 conversation: Conversation, on_connect: OnConnect = lambda error, resuming: ""):
        self.client, self.settings, self.toolbox = client, settings, toolbox
        self.conversation = conversation
        # Told each connect's outcome (the error or None, and whether it resumed): the backend's health
        # (model_client/backend_check.py). A reason it returns ends the session now, without retries.
        self.on_connect = on_connect
        self.give_up = ""
        self.opened = 0

    async def open(self, opening: Opening) -> Connection | Ended:
        self.opened += 1
        conn = Connection(handle=opening.handle, replay_from=opening.replay_from, number=self.opened)
        instruction = self.conversation.instruction(self.settings.system_instruction) \
            if opening.fresh and self.conversation else ""
        config = live_config(self.settings, handle=opening.handle, tools=self.toolbox.config(),
                             instruction=instruction)
        started = time.monotonic()
        try:
            await conn.open(self.client, self.settings.model, config)
        except errors.APIError as e:
            self.give_up = self.on_connect(e, resuming=bool(opening.handle))
            return Ended(code=e.code, detail=str(e))
        except (OSError, websockets.WebSocketException, TimeoutError) as e:
            self.give_up = self.on_connect(e, resuming=bool(opening.handle))
            return Ended(code=None, detail=f"model unreachable: {type(e).__name__}: {e}")
        self.on_connect(None, resuming=bool(opening.handle))
        log.info("Gemini connection %d open in %.0f ms (%s)", conn.number,
                 (time.monotonic() - started) * 1000,
                 "resumed" if opening.handle else "fresh, with the conversation so far" if instruction else "new")
        return conn


@functools.cache  # once per process
def _warn_sdk_audio() -> None:
    log.warning("this google-genai sends audio differently from what model_client/gemini_wire.py "
                "expects: caller audio goes through send_realtime_input (dearer per send)")


@functools.cache  # once per process
def _warn_sdk_receive() -> None:
    log.warning("this google-genai parses the model's audio differently from what "
                "model_client/gemini_receive.py expects: every message goes through the SDK (dearer)")


def audio_blob(pcm16k: bytes) -> types.Blob:
    return types.Blob(data=pcm16k, mime_type=INPUT_MIME)


def audio_text(pcm16k: bytes) -> str:
    """The text frame ``send_realtime_input(audio=audio_blob(pcm16k))`` sends (docs/architecture.md#gemini),
    built directly, without the SDK's pydantic validation and converters, which cost more than the
    rest of a send (docs/performance.md#code-choices)."""
    data = base64.urlsafe_b64encode(pcm16k).decode("ascii")
    return '{"realtime_input": {"audio": {"data": "%s", "mime_type": "%s"}}}' % (data, INPUT_MIME)


class _Capture:
    """Stands in for the SDK session's WebSocket: keeps what would be sent."""
    def __init__(self):
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)


async def sends_audio_text(session: object) -> bool:
    """Whether this SDK's ``send_realtime_input`` sends exactly ``audio_text`` (as a JSON value) on
    ``session._ws``, checked with a probe session on a capturing socket. If not (another SDK
    version), audio goes through the SDK's own method."""
    if not hasattr(session, "_ws") or not hasattr(session, "_api_client"):
        return False
    pcm = bytes([0xfb, 0xff, 0xbf, 0x00, 0x01, 0x7f]) * 11  # both URL-safe characters, and padding
    capture = _Capture()
    try:
        probe = type(session)(api_client=session._api_client, websocket=capture)
        await probe.send_realtime_input(audio=audio_blob(pcm))
        return [json.loads(text) for text in capture.sent] == [json.loads(audio_text(pcm))]
    except Exception:  # noqa: BLE001 - any surprise means: use the SDK's method
        return False
