"""Run one stage as a process: SIGTERM/SIGINT → ``stop()``, a clean exit inside supervisord's window.

A stage has ``start()`` (bind/connect, no waiting), ``run()`` (returns when stopped) and ``stop()``
(safe to call twice). Tasks a stage owns are started with ``spawn`` so a crash is logged with where it
happened instead of vanishing, and cancelled with a timeout by ``cancel_all``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import weakref
from typing import Awaitable, Callable, Protocol

# Every stage is one process on one core. OpenBLAS would otherwise start a thread per core
# for numpy's matrix products (the transcoder's and the emulator's FIR), threads that spin while they
# wait and compete with the other stages. Each __main__ imports this module before numpy loads; an
# explicit value in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0  # well inside supervisord's stopwaitsecs (10)


class Stage(Protocol):
    async def start(self) -> None: ...
    async def run(self) -> None: ...
    async def stop(self) -> None: ...


def run_stage(stage: Stage, name: str) -> int:
    """The body of every ``__main__``: run the stage until a signal, return the exit code."""
    return asyncio.run(_main(stage, name))


async def _main(stage: Stage, name: str) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stage.start()
    except (ValueError, OSError) as e:  # configuration the settings could not check (a tools module…)
        log.error("%s cannot start: %s", name, e)
        await stage.stop()
        return 2
    log.info("%s started", name)
    # What exists now (modules, the SDK, settings) lives as long as the process. Frozen, it is left out
    # of the collector's full passes, which otherwise walk all of it and stall the loop for tens of ms
    # (docs/performance.md#code-choices).
    gc.collect()
    gc.freeze()
    runner = asyncio.create_task(stage.run(), name=f"{name}.run")
    waiter = asyncio.create_task(stopping.wait(), name=f"{name}.signal")
    done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if runner in done and runner.exception() is not None:
        log.error("%s crashed", name, exc_info=runner.exception())
        code = 1
    await stage.stop()
    waiter.cancel()
    await cancel_all([runner])
    log.info("%s stopped", name)
    return code


def spawn(coro: Awaitable, name: str, tasks: set[asyncio.Task] | None = None) -> asyncio.Task:
    """Start an owned task whose unexpected exception is logged, not lost."""
    task = asyncio.ensure_future(coro)
    task.set_name(name)
    if tasks is not None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    task.add_done_callback(_report)
    return task


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


async def cancel_all(tasks, timeout: float = STOP_TIMEOUT_S) -> None:
    """Cancel ``tasks`` and wait for them. Per-call objects drop their references to the tasks after:
    a cancelled task keeps its CancelledError, whose traceback holds the coroutine's frames and so
    their ``self``: a reference cycle that only the collector's rare full pass frees, with everything
    the call held (docs/performance.md#code-choices)."""
    tasks = [t for t in tasks if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            log.warning("task %s did not stop within %.1fs", t.get_name(), timeout)


def main(role: str, build) -> None:
    """A whole ``__main__``: settings from the environment, logging, the stage built and run."""
    import sys

    from common import logs, settings

    try:
        config = settings.load()
    except settings.SettingsError as e:
        print(f"{role}: configuration error: {e}", file=sys.stderr)
        sys.exit(2)
    logs.setup(f"{role}-{config.process_num}" if role in ("transcoder", "model_client") else role,
               config.log_level, config.secrets, json_lines=config.log_format == "json")
    sys.exit(run_stage(build(config), role))


def weak(method: Callable) -> Callable:
    """``method``, without keeping its object alive: a session's line watch must not hold the session
    in a reference cycle (a closed session is freed at once, not at the collector's next pass)."""
    ref = weakref.WeakMethod(method)

    def call(*args):
        target = ref()
        if target is not None:
            target(*args)
    return call
