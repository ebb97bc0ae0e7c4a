"""The whole stack under supervisord, in the foreground: ``python -m common.stack``. And a running
stack's state: ``python -m common.stack status`` (any other supervisorctl command works the same way).

supervisord.conf takes what varies from BRIDGE_* environment variables; this fills them in from the
settings (so the emulator runs only without Gemini credentials). It stays supervisord's parent instead
of becoming it, because supervisord exits 0 however it stopped: when common/stack_watch.py stopped
the stack because a program went FATAL, this prints the reason it recorded and exits 1. SIGTERM and
SIGINT are passed on (SIGHUP as SIGTERM: a closed terminal stops the stack rather than reloading
it), so a plain stop still exits 0. As a container's PID 1 it also reaps any orphan handed to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from common import model_profiles
from common import settings as settings_module
from common.curve import private_dir
from common.stack_watch import FATAL_FILE

HOME = Path(__file__).resolve().parents[1]
CONF = HOME / "supervisord.conf"
# Every program in supervisord.conf, as supervisorctl names them (``group:*`` for numprocs groups).
PROGRAMS = ("stack_watch", "emulator", "transcoder:*", "model_client:*", "gateway")
# What the stack does with each signal it gets: supervisord's clean shutdown, in every case.
FORWARD = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT, signal.SIGHUP: signal.SIGTERM}


def supervisord_env(config: settings_module.Settings, environ: dict[str, str]) -> dict[str, str]:
    return {
        **environ,
        "BRIDGE_HOME": str(HOME),
        "BRIDGE_PYTHON": sys.executable,
        "BRIDGE_RUN_DIR": config.run_dir,
        "BRIDGE_EMULATOR": "true" if config.backend == "emulator" else "false",
        "BRIDGE_TRANSCODERS": str(config.transcoders),
        "BRIDGE_MODEL_CLIENTS": str(config.model_clients),
        # The bench's echo model is the model_client stage with echo sessions (bench/echo_model.py).
        "BRIDGE_MODEL_CLIENT_MODULE": "bench.echo_model" if config.backend == "echo" else "model_client",
        # supervisord must wait out the gateway's drain before it kills it.
        "BRIDGE_GATEWAY_STOPWAIT": str(int(config.drain_s) + 7),
    }


def die_with_parent():
    """A preexec function: the child gets SIGTERM (supervisord's clean shutdown) if this process is
    killed outright, so that no stage outlives the stack. Linux only; elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the child
    return lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_reaping(pid: int) -> int:
    """Wait for ``pid``, reaping any other child on the way (as PID 1, orphans are ours); its exit
    code, or 128 + the signal that killed it."""
    while True:
        child, status = os.wait()
        if child == pid:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


def run(config: settings_module.Settings) -> int | str:
    """Run supervisord until it stops; the exit code, or the reason the stack stopped itself."""
    try:
        private_dir(config.run_dir)  # ipc sockets, keys and supervisord's socket: this user only
    except PermissionError as e:
        return f"run directory: {e}"
    fatal = Path(config.run_dir) / FATAL_FILE
    fatal.unlink(missing_ok=True)  # from an earlier run
    print(f"stack: backend {config.backend}, {config.transcoders} transcoder(s), "
          f"{config.model_clients} model_client(s), http://{config.host}:{config.port} "
          f"(public {config.public_url}), run dir {config.run_dir}", flush=True)
    # Its own process group: a Ctrl-C reaches supervisord once, through us, not twice.
    supervisord = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(CONF)],
        env=supervisord_env(config, dict(os.environ)), process_group=0, preexec_fn=die_with_parent())

    def forward(signum: int, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone: nothing left to stop
            os.kill(supervisord.pid, FORWARD[signum])

    for signum in FORWARD:
        signal.signal(signum, forward)
    supervisord.returncode = code = wait_reaping(supervisord.pid)
    if fatal.exists():
        return fatal.read_text().strip()
    return code


def running_programs(config: settings_module.Settings) -> list[str]:
    """The programs this configuration runs (the emulator only without Gemini credentials)."""
    return [p for p in PROGRAMS if p != "emulator" or config.backend == "emulator"]


def control(config: settings_module.Settings, args: list[str]) -> int | str:
    """supervisorctl against the stack these settings name (the same BRIDGE_RUN_DIR)."""
    if not (Path(config.run_dir) / "supervisor.sock").exists():
        return (f"stack: no stack is running with run dir {config.run_dir} (BRIDGE_RUN_DIR); "
                f"start one with `make run`")
    if args == ["status"]:
        args = ["status", *running_programs(config)]  # exit 3 if one is down (not the unused emulator)
    elif args == ["stop"]:
        args = ["shutdown"]  # the whole stack; `stop gateway` stops one program
    command = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(CONF), *args]
    return subprocess.run(command, env=supervisord_env(config, dict(os.environ))).returncode


def main(args: list[str]) -> None:
    try:
        config = settings_module.load()
        if config.backend != "echo" and not args:  # what the model refuses stops `make run` too
            model_profiles.check(config)
    except settings_module.SettingsError as e:
        sys.exit(f"configuration error: {e}")
    sys.exit(control(config, args) if args else run(config))


if __name__ == "__main__":
    main(sys.argv[1:])
