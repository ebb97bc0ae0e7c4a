"""Shared test helpers: free ports, a clean environment, and the whole stack under supervisord."""

from __future__ import annotations

import pytest

from bench.stack import ROOT, RedisServer, Stack, clean_env, free_port, get_json, wait_for  # noqa: F401


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
