"""Fixtures any test file may ask for: the whole stack under supervisord (``stack``), a real
redis-server (``redis_server``), emulator stages in the test's own process (``start_emulator``), a
ZeroMQ context (``ctx``) and ``until``, which awaits a condition.

Test files share helpers through these fixtures and never import this file. What they share with the
benches (the stack harness: free ports, a clean environment, ``Stack``, ``wait_for``) lives in
harness/stack.py, which both import."""

from __future__ import annotations

import asyncio

import pytest
import zmq.asyncio

from common.settings import load
from emulator.server import EmulatorStage
from harness.stack import RedisServer, Stack, free_port


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path / "run", GEMINI_SILENCE_MS="300").start()
    yield s
    assert s.stop() == 0
    text = s.log.read_text()
    for name in ("gateway", "transcoder", "model_client", "emulator"):
        assert f"{name} stopped" in text, f"{name} did not stop cleanly on SIGTERM\n{text[-4000:]}"
    assert "Traceback" not in text, text[-8000:]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the whole run (.ci/run installs it; no fake Redis anywhere)."""
    if not RedisServer.available():
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def start_emulator(tmp_path_factory):
    """Start an in-process emulator on a free port with the given settings (EMULATOR_* knobs and more);
    every one started is stopped after the test."""
    stages = []

    async def start(**env: str) -> EmulatorStage:
        run_dir = tmp_path_factory.mktemp("emu")  # short: BRIDGE_RUN_DIR is capped at 80 characters
        stage = EmulatorStage(load({"BRIDGE_RUN_DIR": str(run_dir), "EMULATOR_PORT": str(free_port()),
                                    **env}))
        await stage.start()
        stages.append(stage)
        return stage

    yield start
    for stage in stages:
        await stage.stop()


@pytest.fixture
async def ctx():
    """A ZeroMQ asyncio context for the test's links, destroyed after it."""
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def until():
    """``await until(predicate, timeout=5.0)``: poll ``predicate`` on the test's loop until it is true;
    past ``timeout`` seconds the test fails with TimeoutError."""

    async def until(predicate, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    return until
