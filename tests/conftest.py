"""Fixtures any test file may ask for: the whole stack under supervisord (``stack``), a real
redis-server (``redis_server``) and emulator stages in the test's own process (``start_emulator``).

Test files share helpers through these fixtures and never import this file. What they share with the
benches (the stack harness: free ports, a clean environment, ``Stack``, ``wait_for``) lives in
harness/stack.py, which both import."""

from __future__ import annotations

import pytest

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
