"""One call's Gemini Live session: caller audio in, the model's audio and events out.

Caller audio is queued until the session is open (bounded: the oldest is shed past MAX_PENDING_S) and
then sent coalesced: whatever arrived while the previous send was in flight leaves as one
``send_realtime_input``, so a busy loop sends fewer, larger chunks instead of falling behind.
Turn ids are ours: a model turn starts with its first audio and ends at ``turn_complete`` or
``interrupted``; downstream stages use them to drop late chunks of an interrupted turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import websockets
from google import genai
from google.genai import errors, types

from common import messages as m
from common.lifecycle import cancel_all, spawn
from common.logs import call_context
from common.settings import Settings
from model_client.config import audio_blob, live_config

log = logging.getLogger(__name__)

MAX_PENDING_S = 10.0
MAX_PENDING_BYTES = int(MAX_PENDING_S * 32000)  # PCM16 16 kHz


class GeminiSession:
    def __init__(self, call: str, client: genai.Client, settings: Settings,
                 emit: Callable[[object], None], on_end: Callable[[str], None], handle: str = ""):
        self.call, self.client, self.settings = call, client, settings
        self.emit, self.on_end = emit, on_end
        self.handle = handle
        self.turn = 0
        self.in_turn = False
        self.seq = 0
        self.shed_bytes = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._task = spawn(self._run(), f"session:{self.call}")

    def send_audio(self, pcm: bytes) -> None:
        self._pending.append(pcm)
        self._pending_bytes += len(pcm)
        while self._pending_bytes > MAX_PENDING_BYTES:
            dropped = self._pending.pop(0)
            self._pending_bytes -= len(dropped)
            self.shed_bytes += len(dropped)
        self._wake.set()

    def dtmf(self, digit: str) -> None:
        with call_context(self.call):
            log.info("caller pressed %s", digit)

    def played(self, msg: m.Played) -> None:
        with call_context(self.call):
            log.debug("mark %s of turn %d %s", msg.mark, msg.turn, "cleared" if msg.cleared else "played")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            await cancel_all([self._task])

    async def _run(self) -> None:
        with call_context(self.call):
            reason = await self._session()
            if not self._closing:
                log.warning("session ended: %s", reason)
                self.emit(m.CallEnd(self.call, reason))
            self.on_end(self.call)

    async def _session(self) -> str:
        config = live_config(self.settings, self.handle)
        try:
            started = time.monotonic()
            async with self.client.aio.live.connect(model=self.settings.model, config=config) as session:
                log.info("Gemini session open in %.0f ms", (time.monotonic() - started) * 1000)
                sender = spawn(self._send_loop(session), f"session-send:{self.call}")
                try:
                    await self._receive_loop(session)
                finally:
                    await cancel_all([sender])
        except errors.APIError as e:
            return f"model closed the session ({e.code})"
        except (OSError, websockets.WebSocketException) as e:
            return f"model unreachable: {type(e).__name__}: {e}"
        return "model session ended"

    async def _send_loop(self, session) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            pcm = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            try:
                await session.send_realtime_input(audio=audio_blob(pcm))
            except websockets.ConnectionClosed:
                return  # the receive loop reports why

    async def _receive_loop(self, session) -> None:
        while True:  # receive() ends at every turn_complete (wire reference §6)
            async for msg in session.receive():
                self._handle(msg)

    def _handle(self, msg: types.LiveServerMessage) -> None:
        update = msg.session_resumption_update
        if update and update.resumable and update.new_handle:
            self.handle = update.new_handle
            self.emit(m.Resumption(self.call, update.new_handle))
        if msg.go_away:
            log.warning("Gemini goAway, %s left", msg.go_away.time_left)
        if msg.tool_call:
            log.warning("tool call %s ignored: no tools are declared",
                        [c.name for c in msg.tool_call.function_calls or []])
        content = msg.server_content
        if content is not None:
            self._handle_content(content, msg.data)

    def _handle_content(self, content: types.LiveServerContent, audio: bytes | None) -> None:
        if audio:
            if not self.in_turn:
                self.turn += 1
                self.in_turn = True
            self.seq += 1
            self.emit(m.AudioDown(self.call, self.seq, time.monotonic_ns(), audio, self.turn))
        if content.input_transcription and content.input_transcription.text:
            text = content.input_transcription
            self.emit(m.Transcript(self.call, "caller", text.text, bool(text.finished)))
        if content.output_transcription and content.output_transcription.text:
            text = content.output_transcription
            self.emit(m.Transcript(self.call, "model", text.text, bool(text.finished)))
        if content.interrupted:
            self.emit(m.Interrupt(self.call, self.turn))
            self.in_turn = False
        elif content.turn_complete and self.in_turn:
            self.emit(m.TurnDone(self.call, self.turn))
            self.in_turn = False
