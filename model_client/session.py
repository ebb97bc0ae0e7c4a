"""One call's Gemini Live session: caller audio in, the model's audio and events out, kept alive
across connections (docs/architecture.md#failure-model).

``GeminiSession`` coordinates the pieces, each in its own module:

- ``SessionConnections`` (connections.py): opening, serving and replacing connections, the send and
  receive loops.
- ``SendQueue`` (send_queue.py): everything for Gemini in one ordered queue, taken by one sender task
  that writes it on the current ``Connection`` (gemini_wire.py, the last hop; a ``Dialer`` opens
  them). Caller audio carries the gateway's ``t_in``: a frame seen before (the gateway replays after a
  fault) is dropped.
- ``Journal`` (reconnect.py): everything sent is journaled until a resumption handle covers it, and a
  new connection, opened with a handle, first gets again what that handle lacks. So:
  - an unexpected close (1000 while live, 1001, 1006, 1011, a transport error): reconnect with the
    latest handle; bounded retries with backoff (``RetryBudget``), reset by a stable connection;
  - a refused handle (1007 on resume): a fresh session whose system instruction tells the
    conversation so far (``Conversation``), then what was said since the refused handle;
  - goAway: ``Handover`` (handover.py) opens the next connection and picks the moment to switch.
- ``ModelTurns`` (turns.py): what the model says, as our messages, in turns numbered by us.
- ``ToolCalls`` (tool_calls.py): the model's tool calls, running while the conversation goes on.
- ``LineWatch`` (line_watch.py): hold, a silent caller, a stalled model, the longest call, paused input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Callable

from google import genai
from google.genai import types

from common import messages as m
from common.lifecycle import cancel_all, spawn, weak
from common.logs import call_context
from common.settings import Settings
from model_client.barge import BargeInDetector
from model_client.connections import SessionConnections
from model_client.gemini_wire import Connection, Dialer, OnConnect
from model_client.handover import Handover
from model_client.line_watch import LineActions, LineWatch
from model_client.reconnect import Conversation, Ended, Journal, RetryBudget
from model_client.send_queue import PCM_BYTES_PER_S, STREAM_END, TEXT, TOOL, SendQueue
from model_client.tool_calls import ToolCalls
from model_client.tool_results import ToolAnswer
from model_client.tools import ToolContext, Toolbox
from model_client.turns import ModelTurns
from model_client.usage import UsageMeter

log = logging.getLogger(__name__)


class GeminiSession(SessionConnections):
    def __init__(self, call: str, client: genai.Client, settings: Settings, toolbox: Toolbox,
                 context: ToolContext, emit: Callable[[object], None], on_end: Callable[[str], None],
                 handle: str = "", turn: int = 0, resumed: bool = False, *,
                 on_connect: OnConnect = lambda error, resuming: "", hold_greeting: bool = False,
                 age_s: float = 0.0):
        """``handle``, ``turn``, ``resumed``: the call is under way (taken over from another
        model_client, or a stream that came back): carry on from there, without a greeting.
        ``on_connect``: told each connect's outcome (gemini_wire.Dialer). ``hold_greeting``: an outbound
        call; the greeting, and the callee's audio, wait for ``greet()`` (a human answered, or a machine).
        ``age_s``: how long the call has been up already (the longest call counts from its start)."""
        self.call, self.settings, self.context = call, settings, context
        self.emit, self.on_end = emit, on_end
        self.handle = handle  # the latest resumption handle
        self.connection: Connection | None = None  # the one sent on
        self.stats = {"connections": 0, "handovers": 0, "reconnects": 0, "fresh": 0, "resent_items": 0,
                      "duplicates": 0}
        self.barge = BargeInDetector(confirm_ms=settings.barge_confirm_ms, guard_ms=settings.barge_guard_ms)
        self.usage = UsageMeter()  # the call's tokens (model_client/usage.py)
        conversation = Conversation()  # told to a fresh session, should a handle be refused
        self._turns = ModelTurns(call, emit, self.barge, conversation, turn=turn)
        self.emit = self._turns.emit  # after the model's audio held in this loop pass (turns.py)
        self._dialer = Dialer(client, settings, toolbox, conversation, on_connect=on_connect)
        self._queue = SendQueue(send_gap_s=settings.send_ms / 1000)
        self._journal = Journal(int(settings.replay_s * PCM_BYTES_PER_S))
        self._budget = RetryBudget(settings.reconnect_max, settings.reconnect_stable_s)
        self._handover = Handover(call, self._dialer, margin_s=settings.handover_margin_s)
        self._tools = ToolCalls(call, toolbox, context)
        context.last_words = self._turns.last_words  # end_call, transfer_call
        self.line = LineWatch(call, settings, LineActions(
            say=partial(self._queue.add, TEXT), stream_end=partial(self._queue.add, STREAM_END, None),
            reconnect=weak(self._reconnect), emit=self.emit), self.stats, age_s=age_s)
        self._last_t_in = 0  # the newest caller frame received
        self._sent_t_in = 0  # the newest caller frame sent to Gemini
        self._active = False  # the model did something since the latest handle
        self._ended: asyncio.Future | None = None  # the current connection's end
        self._rx: asyncio.Task | None = None  # receives on the current connection
        self._task: asyncio.Task | None = None
        self._closing = False
        under_way = resumed or bool(handle)  # a handle: the call is under way
        # Held, the callee's "Hello?" or voicemail greeting would make the model answer before it greets.
        self.line.greeting_held = hold_greeting and not under_way
        if settings.greeting and not under_way and not self.line.greeting_held:
            self._queue.add(TEXT, settings.greeting)

    @property
    def pending_audio_bytes(self) -> int:
        """Caller audio queued for Gemini, not sent yet (a queue depth for /metrics)."""
        return self._queue.audio_bytes

    def start(self) -> None:
        self._task = spawn(self._run(), f"session:{self.call}")

    # --- from the caller's side -----------------------------------------------------------------

    def send_audio(self, pcm: bytes, t_in: int = 0) -> None:
        if t_in:
            if t_in <= self._last_t_in:
                self.stats["duplicates"] += 1
                return
            self._last_t_in = t_in
        now = time.monotonic()
        self.line.caller_audio(pcm, now)
        if self.barge.caller_audio(pcm, now):
            self.emit(m.CallerSpeech(call=self.call, source="vad"))
        if not self.line.greeting_held:
            self._queue.add_audio(pcm, t_in)

    def greet(self, text: str = "") -> None:
        """The held greeting goes now (or ``text`` in its place: a voicemail message), then the
        callee's audio from here on. A second greeting is logged and ignored."""
        with call_context(self.call):
            if not self.line.greeting_held and not text:
                log.warning("greeting released twice (or never held): ignored")
                return
            # A voicemail message after a greeting released early (no verdict in time) is still left.
            prompt = text or self.settings.greeting
            log.info("%s", "voicemail message released" if text else "greeting released")
            self.line.greeting_held = False
        if prompt:
            self._queue.add(TEXT, prompt)

    def dtmf(self, digit: str) -> None:
        with call_context(self.call):
            log.info("caller pressed %s", digit)
        self.context.digits.append(digit)
        self.line.dtmf()
        self._queue.add(TEXT, self.settings.dtmf_text.format(digit=digit))

    def played(self, msg: m.Played) -> None:
        self.context.heard_ms[msg.turn] = msg.heard_ms
        self.line.played(msg, time.monotonic())

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            await cancel_all([self._task, *self._tools.tasks()])
            self._task = None  # see common.lifecycle.cancel_all

    # --- for the goAway hand-over (handover.Host) --------------------------------------------------

    def quiet(self) -> bool:
        return not self._turns.in_turn and not self._tools and not self._active

    def switch(self, new: Connection, forced: bool) -> None:
        """The hand-over's end: send on ``new`` from now on, and let the old connection go."""
        old, old_rx = self.connection, self._rx
        self.stats["handovers"] += 1
        log.info("handing over to connection %d%s", new.number,
                 " (time ran out: not at a turn boundary)" if forced else " at a turn boundary")
        self._turns.cut()
        self._use(new)
        if old_rx is not None:
            old_rx.cancel()
        spawn(old.close(), f"session-close-old:{self.call}")

    # --- what Gemini says ------------------------------------------------------------------------

    def _handle(self, msg: types.LiveServerMessage) -> None:
        if msg.voice_activity and msg.voice_activity.voice_activity_type == \
                types.VoiceActivityType.ACTIVITY_START:
            self.emit(m.CallerSpeech(call=self.call, source="gemini"))
        if msg.tool_call:
            self._active = True
            for fc in msg.tool_call.function_calls or []:
                self._tools.start(fc, connection=self.connection.number, respond=self._tool_answered,
                                  finished=self._tool_finished)
            self.line.tools_changed(len(self._tools.tasks()))
        if msg.tool_call_cancellation:
            self._tools.cancel(msg.tool_call_cancellation.ids or [])
            self.line.tools_changed(len(self._tools.tasks()), cancelled=True)
        if msg.server_content is not None:
            self._active = True
            audio = msg.data or b""  # once: the SDK's property serialises every part it looks at
            self._turns.content(msg.server_content, audio)
            self.usage.model_audio(len(audio))
            self.line.content(msg.server_content, len(audio), self._turns.turn, time.monotonic())
        if msg.usage_metadata:
            self.usage.report(msg.usage_metadata, turn_complete=bool(msg.server_content and
                                                                   msg.server_content.turn_complete))
            self.emit(m.Usage(call=self.call, session=self.usage.session, tokens=self.usage.totals()))
        # The handle last: in a frame that carries both, it describes the state after the content.
        update = msg.session_resumption_update
        if update and update.resumable and update.new_handle:
            self._new_handle(update.new_handle)
        if msg.go_away:
            self._handover.go_away(msg.go_away.time_left, host=self)
        self._handover.poke()

    def _tool_answered(self, answer: ToolAnswer) -> None:
        self._queue.add(TOOL, answer)
        self.line.tool_answered(time.monotonic())

    def _tool_finished(self) -> None:
        self._handover.poke()
        self.line.tools_changed(len(self._tools.tasks()))

    def _reconnect(self, why: str) -> None:
        """End the current connection as if it dropped: the session reconnects with its latest handle."""
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(Ended(code=None, detail=why))

    def _new_handle(self, handle: str) -> None:
        self.handle = handle
        self._journal.mark(handle, keep=self._handover.keep())
        self._active = False
        self.emit(m.Resumption(call=self.call, handle=handle, upto=self._sent_t_in))
