"""One call's Gemini Live session: caller audio in, the model's audio and events out.

Everything sent to Gemini goes through one ordered queue (audio, text such as DTMF or the greeting
prompt, tool responses), drained by one sender task. Audio queued while the previous send was in
flight leaves as one ``send_realtime_input``, so a busy loop sends fewer, larger chunks instead of
falling behind; before the session is open the queue is bounded (the oldest audio is shed).
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
from model_client.barge import BargeInDetector
from model_client.config import audio_blob, live_config
from model_client.tools import ToolContext, Toolbox

log = logging.getLogger(__name__)

MAX_PENDING_AUDIO = int(10.0 * 32000)  # 10 s of PCM16 16 kHz


class GeminiSession:
    def __init__(self, call: str, client: genai.Client, settings: Settings, toolbox: Toolbox,
                 context: ToolContext, emit: Callable[[object], None], on_end: Callable[[str], None],
                 handle: str = ""):
        self.call, self.client, self.settings, self.toolbox = call, client, settings, toolbox
        self.context, self.emit, self.on_end = context, emit, on_end
        self.handle = handle
        self.turn = 0
        self.in_turn = False
        self.seq = 0
        self.shed_bytes = 0
        self.barge = BargeInDetector()
        self._queue: list[tuple[str, object]] = []  # ("audio", bytes) | ("text", str) | ("tool", resp)
        self._audio_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._tools: dict[str, asyncio.Task] = {}  # running tool calls by id
        self._closing = False
        if settings.greeting:
            self._put("text", settings.greeting)

    def start(self) -> None:
        self._task = spawn(self._run(), f"session:{self.call}")

    # --- from the caller's side -----------------------------------------------------------------

    def send_audio(self, pcm: bytes) -> None:
        if self.barge.caller_audio(pcm, time.monotonic()):
            self.emit(m.CallerSpeech(self.call, "vad"))
        if self._queue and self._queue[-1][0] == "audio":
            self._queue[-1] = ("audio", self._queue[-1][1] + pcm)
        else:
            self._queue.append(("audio", pcm))
        self._audio_bytes += len(pcm)
        if self._audio_bytes > MAX_PENDING_AUDIO:
            self._shed_oldest_audio()
        self._wake.set()

    def dtmf(self, digit: str) -> None:
        with call_context(self.call):
            log.info("caller pressed %s", digit)
        self.context.digits.append(digit)
        self._put("text", self.settings.dtmf_text.format(digit=digit))

    def played(self, msg: m.Played) -> None:
        self.context.heard_ms[msg.turn] = msg.heard_ms

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            await cancel_all([self._task, *self._tools.values()])

    def _put(self, kind: str, item: object) -> None:
        self._queue.append((kind, item))
        self._wake.set()

    def _shed_oldest_audio(self) -> None:
        for i, (kind, item) in enumerate(self._queue):
            if kind == "audio":
                del self._queue[i]
                self._audio_bytes -= len(item)
                self.shed_bytes += len(item)
                return

    # --- the session ----------------------------------------------------------------------------

    async def _run(self) -> None:
        with call_context(self.call):
            reason = await self._session()
            if not self._closing:
                log.warning("session ended: %s", reason)
                self.emit(m.CallEnd(self.call, reason))
            self.on_end(self.call)

    async def _session(self) -> str:
        config = live_config(self.settings, self.handle, self.toolbox.config())
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
            queue, self._queue, self._audio_bytes = self._queue, [], 0
            try:
                for kind, item in queue:
                    if kind == "audio":
                        await session.send_realtime_input(audio=audio_blob(item))
                    elif kind == "text":
                        await session.send_realtime_input(text=item)
                    else:
                        await session.send_tool_response(function_responses=[item])
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
        if msg.voice_activity and msg.voice_activity.voice_activity_type == \
                types.VoiceActivityType.ACTIVITY_START:
            self.emit(m.CallerSpeech(self.call, "gemini"))
        if msg.tool_call:
            for fc in msg.tool_call.function_calls or []:
                self._start_tool(fc)
        if msg.tool_call_cancellation:
            self._cancel_tools(msg.tool_call_cancellation.ids or [])
        if msg.server_content is not None:
            self._handle_content(msg.server_content, msg.data)

    def _handle_content(self, content: types.LiveServerContent, audio: bytes | None) -> None:
        if audio:
            if not self.in_turn:
                self.turn += 1
                self.in_turn = True
            self.seq += 1
            self.barge.model_audio(audio, time.monotonic())
            self.emit(m.AudioDown(self.call, self.seq, time.monotonic_ns(), audio, self.turn))
        heard, said = content.input_transcription, content.output_transcription
        if heard and heard.text:
            self.emit(m.Transcript(self.call, "caller", heard.text, bool(heard.finished)))
        if said and said.text:
            turn = self.turn if self.in_turn else self.turn + 1  # text may come before the audio
            self.emit(m.Transcript(self.call, "model", said.text, bool(said.finished), turn))
        if content.interrupted:
            self.emit(m.Interrupt(self.call, self.turn))
            self.in_turn = False
        elif content.turn_complete and self.in_turn:
            self.emit(m.TurnDone(self.call, self.turn))
            self.in_turn = False

    # --- tools ----------------------------------------------------------------------------------

    def _start_tool(self, fc: types.FunctionCall) -> None:
        log.info("tool call %s(%s)", fc.name, fc.args or {})
        self._tools[fc.id or fc.name] = spawn(self._run_tool(fc), f"tool:{self.call}:{fc.name}")

    async def _run_tool(self, fc: types.FunctionCall) -> None:
        try:
            result = await self.toolbox.run(fc.name, fc.args or {}, self.context)
        except Exception as e:  # a user tool's bug must not end the call
            log.exception("tool %s failed", fc.name)
            result = {"error": f"{type(e).__name__}: {e}"}
        finally:
            self._tools.pop(fc.id or fc.name, None)
        log.info("tool %s → %s", fc.name, result)
        self._put("tool", types.FunctionResponse(id=fc.id, name=fc.name, response=result))

    def _cancel_tools(self, ids: list[str]) -> None:
        for tool_id in ids:
            task = self._tools.pop(tool_id, None)
            if task is not None:
                log.info("tool call %s cancelled by the model", tool_id)
                task.cancel()
