"""One session's running tool calls. Each runs as its own task, so the conversation carries on while
a tool works; the model may cancel one by its id."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from google.genai import types

from common.lifecycle import spawn
from model_client import tool_results
from model_client.tool_results import ToolAnswer
from model_client.tools import ToolContext, Toolbox

log = logging.getLogger(__name__)


class ToolCalls:
    def __init__(self, call: str, toolbox: Toolbox, context: ToolContext):
        self.call, self.toolbox, self.context = call, toolbox, context
        self._running: dict[str, asyncio.Task] = {}  # by the call's id (its name if it has none)

    def __bool__(self) -> bool:
        return bool(self._running)

    def tasks(self) -> list[asyncio.Task]:
        return list(self._running.values())

    def start(self, fc: types.FunctionCall, connection: int, respond: Callable[[ToolAnswer], None],
              finished: Callable[[], None]) -> None:
        """Run ``fc`` (called on ``connection``); ``finished()`` when it ends however it ends, then
        ``respond`` with its answer unless it was cancelled. The task holds the two only while it runs:
        nothing here keeps the session alive after its end."""
        log.info("tool call %s(%s)", fc.name, fc.args or {})
        self._running[fc.id or fc.name] = spawn(self._run(fc, connection, respond, finished),
                                                f"tool:{self.call}:{fc.name}")

    def cancel(self, ids: list[str]) -> None:
        for tool_id in ids:
            task = self._running.pop(tool_id, None)
            if task is not None:
                log.info("tool call %s cancelled by the model", tool_id)
                task.cancel()

    async def _run(self, fc: types.FunctionCall, connection: int, respond: Callable[[ToolAnswer], None],
                   finished: Callable[[], None]) -> None:
        try:
            result = await self.toolbox.run(fc.name, fc.args or {}, self.context)
        except Exception as e:  # a user tool's bug must not end the call
            log.exception("tool %s failed", fc.name)
            result = tool_results.failed(fc.name, f"{type(e).__name__}: {e}", retryable=True)
        finally:
            self._running.pop(fc.id or fc.name, None)
            finished()
        log.info("tool %s → %s", fc.name, result)
        response = types.FunctionResponse(id=fc.id, name=fc.name, response=result,
                                          scheduling=self.toolbox.schedulings.get(fc.name))
        respond(ToolAnswer(response=response, connection=connection))
