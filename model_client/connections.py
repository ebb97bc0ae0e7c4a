"""A Gemini session's connections: opened (``Dialer``), served until they end, replaced by handle, and
the loops that send the queue on the current one and receive what it says. ``SessionConnections`` is
mixed into ``GeminiSession`` (model_client/session.py), whose state it works on (declared below); it
is apart so that what flows through a session and how its connections come and go each read whole."""

from __future__ import annotations

import asyncio
import logging

import websockets
from google.genai import errors

from common import messages as m
from common.lifecycle import cancel_all, spawn
from common.logs import call_context
from model_client.gemini_wire import Connection, Dialer
from model_client.handover import Handover
from model_client.line_watch import LineWatch
from model_client.reconnect import Ended, Journal, Opening, RetryBudget, next_step
from model_client.send_queue import AUDIO, PCM_BYTES_PER_S, STREAM_END, TEXT, TOOL, Outgoing, SendQueue
from model_client.tool_results import outcome_text
from model_client.turns import ModelTurns
from model_client.usage import UsageMeter

log = logging.getLogger("model_client.session")


class SessionConnections:
    """Besides the attributes below it uses ``GeminiSession``'s ``emit``, ``on_end`` and ``_handle``."""

    call: str
    handle: str
    connection: Connection | None
    stats: dict[str, int]
    line: LineWatch
    usage: UsageMeter
    _turns: ModelTurns
    _dialer: Dialer
    _queue: SendQueue
    _journal: Journal
    _budget: RetryBudget
    _handover: Handover
    _ended: asyncio.Future | None
    _rx: asyncio.Task | None
    _closing: bool
    _active: bool
    _sent_t_in: int

    async def _run(self) -> None:
        with call_context(self.call):
            sender = spawn(self._send_loop(), f"session-send:{self.call}")
            watch = spawn(self.line.run(), f"session-line:{self.call}")
            try:
                reason = await self._keep_connected()
            except Exception as e:  # a bug here must still end the call, not leave it silent
                log.exception("session failed")
                reason = f"session failed: {type(e).__name__}"
            finally:
                await cancel_all([t for t in (sender, watch, self._rx, self._handover.task) if t is not None])
                for conn in (self.connection, self._handover.standby):
                    if conn is not None:
                        await conn.close()
            log.info("session summary: %s, %d bytes of caller audio shed", ", ".join(
                f"{v} {k}" for k, v in self.stats.items()), self._queue.shed_bytes + self._journal.shed)
            if not self._closing:
                log.warning("session ended: %s", reason)
                self.emit(m.CallEnd(call=self.call, reason=reason))
            self.on_end(self.call)

    async def _keep_connected(self) -> str:
        """Open, serve, and on each end decide: resume, start fresh, or end the call."""
        opening = Opening(handle=self.handle, replay_from=self.handle)
        while True:
            conn = await self._next_connection(opening)
            opened = isinstance(conn, Connection)
            ended = await self._serve(conn) if opened else conn
            self._turns.cut()
            if self._dialer.give_up:
                return self._dialer.give_up
            step = next_step(ended, resuming=not opened and bool(opening.handle))
            if step == "fatal":
                return f"model closed the session ({ended})"
            opening = self._reopening(step, ended, opening)
            delay = self._budget.next_delay(asyncio.get_running_loop().time())
            if delay is None:
                return f"gave up after {self._budget.attempts} reconnects (last: {ended})"
            if step == "fresh":
                delay = 0.0  # the service answered: it only refused the handle
            self.stats["reconnects"] += 1
            log.warning("Gemini connection ended (%s): reconnecting in %.2f s %s", ended, delay,
                        "with the latest handle" if opening.handle else "without a handle")
            await asyncio.sleep(delay)

    async def _next_connection(self, opening: Opening) -> Connection | Ended:
        """The standby a goAway opened, if it lacks nothing ``opening`` needs; else a new one."""
        conn = self._handover.take_standby()  # opened after a goAway, before the old one ended
        if conn is not None and conn.replay_from != opening.replay_from:
            await conn.close()  # the model said more since its handle
            conn = None
        return conn or await self._dialer.open(opening)

    def _reopening(self, step: str, ended: Ended, last: Opening) -> Opening:
        if step == "fresh":
            log.warning("resumption handle refused (%s): starting a fresh session told the "
                        "conversation so far", ended)
            self.stats["fresh"] += 1
            self.handle = ""
            return Opening(handle="", replay_from=last.handle, fresh=True)
        if self.handle:
            return Opening(handle=self.handle, replay_from=self.handle)
        return last

    async def _serve(self, conn: Connection) -> Ended:
        """Until the current connection ends (following any handovers on the way)."""
        self._ended = asyncio.get_running_loop().create_future()
        self._use(conn)
        try:
            return await self._ended
        finally:
            self._queue.disconnected()
            await cancel_all([t for t in (self._rx, self._handover.task) if t is not None])
            self._rx = None  # see common.lifecycle.cancel_all
            self._handover.stopped()
            current, self.connection = self.connection, None
            if current is not None:
                await current.close()

    def _use(self, conn: Connection) -> None:
        """Send on ``conn`` from now on, starting with what its handle lacks."""
        self.connection = conn
        self.stats["connections"] += 1
        self.usage.connected()
        resend = [Outgoing(kind=sent.kind, payload=sent.payload, resend=True)
                  for sent in self._journal.since(conn.replay_from)]
        self._queue.connected(resend)
        if self.stats["connections"] > 1:
            self.stats["resent_items"] += len(resend)
            audio = sum(len(item.payload) for item in resend if item.kind == AUDIO)
            log.info("connection %d: re-sending %d items (%.2f s of caller audio) its handle lacks",
                     conn.number, len(resend), audio / PCM_BYTES_PER_S)
        self._active = False
        self._rx = spawn(self._receive(conn), f"session-receive:{self.call}:{conn.number}")
        self._budget.connected(asyncio.get_running_loop().time())

    async def _send_loop(self) -> None:
        while True:
            item = await self._queue.next()
            conn = self.connection
            if not item.resend and item.kind != STREAM_END:  # a stream end belongs to its moment
                self._journal.sent(item.kind, item.payload)
            if item.kind == TOOL and item.payload.connection != conn.number:
                # The call was made on an earlier connection (tool_results.py): told as text. Once
                # journaled, an answer a new connection's handle lacks is told to it the same way.
                log.info("tool %s answered on an earlier connection: told to connection %d as text",
                         item.payload.response.name, conn.number)
                item = Outgoing(kind=TEXT, payload=outcome_text(item.payload), resend=item.resend)
            try:
                await conn.send(item)
            except websockets.ConnectionClosed:
                if self.connection is conn:
                    self._queue.disconnected()  # the receive side learns why, and what comes next
                continue
            if item.kind == AUDIO:
                self._sent_t_in = max(self._sent_t_in, item.t_in)

    async def _receive(self, conn: Connection) -> None:
        try:
            async for msg in conn.messages():
                if conn is not self.connection:
                    return  # handed over: the new connection speaks from now on
                self._handle(msg)
        except errors.APIError as e:
            ended = Ended(code=e.code, detail=str(e))
        except (OSError, websockets.WebSocketException) as e:
            ended = Ended(code=None, detail=f"{type(e).__name__}: {e}")
        except Exception as e:
            log.exception("receiving from Gemini failed")
            ended = Ended(code=None, detail=f"bug: {type(e).__name__}: {e}")
        if conn is self.connection and self._ended is not None and not self._ended.done():
            self._ended.set_result(ended)
