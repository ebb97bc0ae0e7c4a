"""One session's scripted tool calls (``EMULATOR_TOOL_SCRIPT``), played as the session's generation
plays them (``emulator.generations``).

- BLOCKING: the model sends the call and says nothing until the result comes, then speaks it. New input
  from the caller (speech, text) cancels a call still waiting: ``toolCallCancellation`` (documented for
  3.8; the Live API reference says cancellation follows the client interrupting the server's turn).
- NON_BLOCKING: the model sends the call and keeps talking (a short "working on it" turn); new input
  does not cancel it. The result's ``scheduling`` decides what happens when it comes: ``SILENT``
  nothing is said, ``WHEN_IDLE`` it is spoken once the running turn is over, ``INTERRUPT`` the running
  turn is cut and it is spoken at once, or, on 3.8, once the caller has stopped talking.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Awaitable, Callable

from common.lifecycle import spawn
from emulator import generations as g
from emulator import persona, wire
from emulator.turns import Gone, TurnPlayer

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 15.0  # how long a scripted tool call waits for the client's response
WORKING_S = 0.4  # the "working on it" turn a NON_BLOCKING call's model says meanwhile
CALLER_POLL_S = 0.02


class ToolRunner:
    def __init__(self, send: Callable[[str], Awaitable[None]], player: TurnPlayer, gen: g.Generation,
                 behaviours: dict[str, str], caller_speaking: Callable[[], bool], label: str,
                 tasks: set[asyncio.Task]):
        self._send, self._player, self._gen, self._behaviours = send, player, gen, behaviours
        self._caller_speaking, self._label, self._tasks = caller_speaking, label, tasks
        self._waiting: dict[str, tuple[str, asyncio.Future]] = {}  # id → (behaviour, its response)
        self.calls = 0

    def call(self, name: str, args: dict, number: int) -> None:
        self.calls += 1
        call_id = f"call-{number}-{self.calls}"
        behaviour = self._behaviours.get(name, g.BLOCKING if not self._gen.async_tools else self._gen.tool_default)
        spawn(self._run(call_id, name, args, behaviour), f"{self._label}.tool{self.calls}", self._tasks)

    def response(self, call_id: str, response: dict, scheduling: str) -> None:
        waiting = self._waiting.get(call_id)
        if waiting is not None and not waiting[1].done():
            waiting[1].set_result((response, scheduling))

    def new_input(self) -> None:
        """The caller said something: BLOCKING calls still waiting are cancelled."""
        ids = [i for i, (behaviour, w) in self._waiting.items() if behaviour == g.BLOCKING and not w.done()]
        for i in ids:
            self._waiting[i][1].cancel()
        if ids:
            spawn(self._send_quietly(wire.tool_call_cancellation(ids)), f"{self._label}.cancel", self._tasks)

    async def _run(self, call_id: str, name: str, args: dict, behaviour: str) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = (behaviour, waiter)
        try:
            await self._send(wire.tool_call(call_id, name, args))
            if behaviour == g.NON_BLOCKING:
                self._player.start("", {}, lambda: persona.Reply(persona.tone(WORKING_S), f"(working on {name})"))
            response, scheduling = await asyncio.wait_for(waiter, TOOL_TIMEOUT_S)
        except (Gone, asyncio.CancelledError, asyncio.TimeoutError) as e:
            log.info("%s: tool call %s %s ended without a response (%s)", self._label, call_id, name,
                     type(e).__name__)
            return
        finally:
            self._waiting.pop(call_id, None)
        text = f"({name} returned {json.dumps(response, sort_keys=True)})"
        if behaviour == g.BLOCKING:
            scheduling = g.WHEN_IDLE  # the model was waiting for it: scheduling has nothing to order
        log.info("%s: %s %s result, %s", self._label, behaviour, name, scheduling)
        if scheduling == g.SILENT:
            return
        if scheduling == g.INTERRUPT:
            while self._gen.interrupt_waits_for_caller and self._caller_speaking():
                await asyncio.sleep(CALLER_POLL_S)
            self._player.cut()
        self._player.start("", {"TEXT": len(text) // 4}, lambda: persona.Reply(persona.tone(), text))

    async def _send_quietly(self, text: str) -> None:
        try:
            await self._send(text)
        except Gone:
            pass
