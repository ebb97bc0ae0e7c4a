"""The whole stack under supervisord, as tests and benchmarks start it: free ports, a clean
environment (never real Gemini), readiness from /healthz, SIGTERM to stop."""

from __future__ import annotations

import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import settings as settings_module
from common.stack import die_with_parent

ROOT = Path(__file__).resolve().parents[1]

# Variables that would point a test at real Gemini or at another stack.
FOREIGN = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT",
           "GOOGLE_GEMINI_BASE_URL", "PORT", "PUBLIC_URL", "BRIDGE_RUN_DIR", "GATEWAY_ENDPOINT",
           "MODEL_CLIENT_ENDPOINT", "EMULATOR_PORT", "TWILIO_AUTH_TOKEN", "REDIS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(run_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    port = free_port()
    env.update(BRIDGE_RUN_DIR=str(run_dir), PORT=str(port), HOST="127.0.0.1",
               EMULATOR_PORT=str(free_port()), BRIDGE_HEARTBEAT_S="0.25", PYTHONUNBUFFERED="1",
               NO_PROXY="127.0.0.1,localhost",
               # Admission by loop lag refuses calls whenever the box is slow, which on a small shared
               # CI box says more about the box than the test; tests/test_lag_gate.py turns it on.
               BRIDGE_ADMIT_LAG_MS="0",
               # The same processes on any box (by default their number follows the cores).
               BRIDGE_TRANSCODERS="2", BRIDGE_MODEL_CLIENTS="1")
    env.update(extra)
    return env


def get_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.1)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


class Stack:
    """The real stack: `python -m common.stack` runs supervisord, which runs every process."""

    def __init__(self, run_dir: Path, **extra: str):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.env = clean_env(run_dir, **extra)
        self.url = f"http://127.0.0.1:{self.env['PORT']}"
        self.log = run_dir / "stack.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Stack":
        """Once every process is up and the model_client's Gemini check is done (/healthz "backend" up,
        or down when a test means it to be: /readyz tells which)."""
        # Opened for append: supervisord reopens /dev/stdout for every program, and a writer at its own
        # offset would overwrite the others' lines.
        self.log.write_bytes(b"")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "common.stack"], cwd=ROOT, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
        try:
            model_clients = settings_module.load(self.env).model_clients
            wait_for(lambda: self._started(model_clients), timeout, "the stack to be ready", self.log)
        except BaseException:
            self.stop()  # never leave a half-started stack running behind a failed test
            raise
        return self

    def _started(self, model_clients: int) -> bool:
        """Every model_client is live and has done its Gemini check (so its check session is over)."""
        health = self.health()
        settled = [p for p in health["peers"] if p.get("backend") not in (None, "checking", "unknown")]
        return health["status"] == "ok" and len(settled) >= model_clients

    def health(self) -> dict:
        if self.proc.poll() is not None:
            raise AssertionError(f"stack exited with {self.proc.returncode}\n{self.log.read_text()[-4000:]}")
        return get_json(self.url + "/healthz")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"supervisord did not stop in {timeout}s\n{self.log.read_text()[-4000:]}")




class RedisServer:
    """A real ``redis-server`` on a free port, its files in ``run_dir``, gone with ``stop()``."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = run_dir / "redis.log"
        self._run_dir = run_dir
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> "RedisServer":
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self._run_dir)],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
        wait_for(lambda: _answers(self.port), 10, "redis-server to listen", self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
