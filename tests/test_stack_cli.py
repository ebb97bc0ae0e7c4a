"""The stack as a user drives it: `make run` (or `python -m common.stack`), `make status`, `make stop`.

A program that goes FATAL (here a gateway whose port is taken) stops the whole stack with one line
saying why and a non-zero exit; `make status` lists every program with its pid; a malformed setting
stops `make run` before anything starts, naming the variable; `make run` installs the runtime only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from common.settings import load
from common.stack import PROGRAMS, die_with_parent, running_programs, supervisord_env
from common.stack_watch import Event, fatal_line, parse_event, record_fatal
from harness.stack import ROOT, Stack, clean_env, get_json, wait_for

VENV = Path(sys.prefix)
# Never install from inside a test: the venv the tests run in has the runtime dependencies already.
MAKE = ["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/.installed"]
STAGES = ("gateway", "transcoder", "model_client", "emulator")


def start_make(target: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """In a session of its own, as in a terminal: ``stop_session`` ends whatever is left of it."""
    with open(log, "ab") as out:  # append: every writer lands at the end (see harness/stack.py)
        return subprocess.Popen([*MAKE, target], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent())


def stop_session(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def spawned_pids(text: str) -> dict[str, int]:
    """supervisord's own pid and every process it spawned, from its log lines."""
    spawned = re.findall(r"spawned: '([\w-]+)' with pid (\d+)", text)
    pids = {f"{name}@{pid}": int(pid) for name, pid in spawned}
    pids.update({"supervisord": int(p) for p in re.findall(r"supervisord started with pid (\d+)", text)})
    return pids


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- a program that goes FATAL stops everything ---------------------------------------------------

def test_gateway_that_cannot_bind_stops_the_whole_stack(tmp_path):
    env = clean_env(tmp_path / "run")
    log = tmp_path / "make-run.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["PORT"])))
        taken.listen()
        run = start_make("run", env, log)
        try:
            run.wait(120)  # three failed starts, then everything stops: a bound, not a measurement
        except subprocess.TimeoutExpired:
            pass  # asserted below, once nothing is left running
        finally:
            stop_session(run)
    text = log.read_text()
    assert run.returncode != 0, text[-4000:]
    lines = text.splitlines()
    assert fatal_line("gateway") in lines, text[-4000:]
    # The one line comes after every stage stopped; only make's own "Error 1" may follow it.
    after = lines[lines.index(fatal_line("gateway")) + 1:]
    assert all(line.startswith("make") for line in after), after
    assert "address already in use" in text  # the gateway's own last line, above
    for name in ("transcoder", "model_client", "emulator"):
        assert f"{name} stopped" in text, f"{name} did not stop cleanly\n{text[-4000:]}"
    pids = spawned_pids(text)
    assert "supervisord" in pids and any(name.startswith("gateway@") for name in pids), pids
    left = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not left, f"still running after the stack stopped: {left}"
    assert "Traceback" not in text, text[-8000:]


def test_a_clean_stop_after_a_fatal_run_exits_0(tmp_path):
    """The reason file of a FATAL run does not outlive it: the next run in the same run directory,
    stopped by SIGTERM, exits 0 (and every stage logs that it stopped, as the conftest fixture checks)."""
    stack = Stack(tmp_path / "run", GEMINI_SILENCE_MS="300")
    record_fatal(str(stack.run_dir), "gateway")
    stack.start()
    assert stack.stop() == 0
    text = stack.log.read_text()
    assert fatal_line("gateway") not in text
    for name in STAGES:
        assert f"{name} stopped" in text, text[-4000:]


def test_as_pid_1_it_reaps_orphans_and_stops_cleanly_on_sigterm(tmp_path):
    """The Dockerfile's ENTRYPOINT makes `python -m common.stack` a container's PID 1: the orphans
    the kernel hands it must be reaped, and `docker stop`'s SIGTERM must stop everything with exit 0.
    A PID namespace of its own plays the container."""
    namespace = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    probe = subprocess.run([*namespace, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here to play a container: {probe.stderr.strip()}")
    env = clean_env(tmp_path / "run")
    log = tmp_path / "stack.log"
    with open(log, "ab") as out:
        unshare = subprocess.Popen([*namespace, sys.executable, "-m", "common.stack"], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    try:
        init = wait_for(lambda: children(unshare.pid)[0] if children(unshare.pid) else None, 10, "PID 1")
        url = f"http://127.0.0.1:{env['PORT']}/healthz"
        wait_for(lambda: get_json(url)["status"] == "ok", 60, "the stack to be ready", log)
        supervisord = children(init)
        # An orphan in the namespace: its shell exits at once, so its sleep is handed to PID 1.
        orphan = ["nsenter", "-t", str(init), "-p", "-m", "sh", "-c", "sleep 1 &"]
        subprocess.run(orphan, check=True, timeout=30)
        wait_for(lambda: children(init) == supervisord, 30, "PID 1 to reap the orphan", log)
        os.kill(init, signal.SIGTERM)
        assert unshare.wait(60) == 0, log.read_text()[-4000:]
    finally:
        if unshare.poll() is None:
            unshare.kill()
            unshare.wait(30)
    text = log.read_text()
    for name in STAGES:
        assert f"{name} stopped" in text, text[-4000:]


# --- make status and make stop --------------------------------------------------------------------

def status_lines(env: dict[str, str], command: list[str]) -> tuple[int, dict[str, str]]:
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert not run.stderr, run.stderr
    return run.returncode, {line.split()[0]: line for line in run.stdout.splitlines() if line.strip()}


def test_status_lists_every_program_with_its_pid_and_stop_stops_the_stack(tmp_path):
    stack = Stack(tmp_path / "run", GEMINI_SILENCE_MS="300").start()
    try:
        plain = [sys.executable, "-m", "common.stack", "status"]

        def all_running():  # a program counts as started after startsecs (supervisord.conf)
            code, lines = status_lines(stack.env, plain)
            return lines if code == 0 and all(" RUNNING " in line for line in lines.values()) else None
        lines = wait_for(all_running, 30, "every program RUNNING", stack.log)
        code, from_make = status_lines(stack.env, [*MAKE, "-s", "status"])
        assert code == 0 and from_make.keys() == lines.keys(), from_make
        assert set(lines) == {"stack_watch", "emulator", "transcoder:transcoder-0", "transcoder:transcoder-1",
                              "model_client:model_client-0", "gateway"}, lines
        for name, line in from_make.items():
            pid = int(re.search(r"pid (\d+)", line).group(1))
            group = name.split(":")[0]
            module = "common.stack_watch" if group == "stack_watch" else group
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert cmdline[1:3] == [b"-m", module.encode()], (name, cmdline)

        stop = subprocess.run([*MAKE, "-s", "stop"], cwd=ROOT, env=stack.env, capture_output=True, text=True,
                              timeout=60)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert stack.proc.wait(60) == 0
    finally:
        stack.stop()
    text = stack.log.read_text()
    for name in STAGES:
        assert f"{name} stopped" in text, text[-4000:]
    assert "FATAL" not in text and "Traceback" not in text, text[-8000:]


def test_status_without_a_running_stack_says_so(tmp_path):
    env = clean_env(tmp_path / "nothing-here")
    run = subprocess.run([sys.executable, "-m", "common.stack", "status"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"no stack is running with run dir {tmp_path / 'nothing-here'} (BRIDGE_RUN_DIR)" in run.stderr


def test_status_names_every_program_in_supervisord_conf(tmp_path, monkeypatch):
    """`status` names the programs explicitly (so that an emulator left unstarted with real Gemini is
    not reported as down): the list must follow supervisord.conf."""
    env = {"BRIDGE_RUN_DIR": str(tmp_path)}
    for name, value in supervisord_env(load(env), env).items():
        monkeypatch.setenv(name, value)
    options = ServerOptions()
    options.configfile = str(ROOT / "supervisord.conf")
    options.process_config(do_usage=False)
    groups = {g.name: len(g.process_configs) for g in options.process_group_configs}
    assert {p.removesuffix(":*") for p in PROGRAMS} == set(groups)
    assert all(p.endswith(":*") == (p in ("transcoder:*", "model_client:*")) for p in PROGRAMS)
    assert "emulator" in running_programs(load(env))
    assert "emulator" not in running_programs(load({**env, "GEMINI_API_KEY": "k"}))


# --- the listener's pieces ------------------------------------------------------------------------

@pytest.mark.parametrize("header, payload, expected", [
    ("ver:3.0 server:supervisor serial:21 pool:stack_watch poolserial:10 eventname:PROCESS_STATE_FATAL len:54",
     "processname:gateway groupname:gateway from_state:BACKOFF",
     Event("PROCESS_STATE_FATAL", {"processname": "gateway", "groupname": "gateway",
                                   "from_state": "BACKOFF"})),
    ("ver:3.0 server:supervisor serial:3 pool:stack_watch poolserial:1 eventname:PROCESS_STATE_FATAL len:68",
     "processname:transcoder-1 groupname:transcoder from_state:BACKOFF",
     Event("PROCESS_STATE_FATAL", {"processname": "transcoder-1", "groupname": "transcoder",
                                   "from_state": "BACKOFF"})),
    ("ver:3.0 server:supervisor serial:4 pool:stack_watch poolserial:2 eventname:TICK_5 len:15",
     "when:1700000000", Event("TICK_5", {"when": "1700000000"})),
])
def test_parse_event(header, payload, expected):
    assert parse_event(header, payload) == expected


def test_the_first_fatal_is_the_reason(tmp_path):
    assert record_fatal(str(tmp_path), "model_client-0")
    assert not record_fatal(str(tmp_path), "gateway")
    assert (tmp_path / "stack.fatal").read_text() == fatal_line("model_client-0") + "\n"


# --- make run: a bad setting, and what it installs -------------------------------------------------

@pytest.mark.parametrize("port", ["abc", "80000"])
def test_make_run_with_a_bad_port_stops_naming_it(tmp_path, port):
    env = clean_env(tmp_path / "run", PORT=port)
    run = subprocess.run([*MAKE, "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    errors = [line for line in output.splitlines() if line.startswith("configuration error:")]
    assert run.returncode != 0 and len(errors) == 1 and "PORT" in errors[0], output[-4000:]
    assert "spawned" not in output, "supervisord started anyway"


def dry_run(folder: Path, target: str) -> str:
    run = subprocess.run(["make", "-n", "--no-print-directory", f"PYTHON={sys.executable}", target],
                         cwd=folder, capture_output=True, text=True, timeout=60, check=True)
    return run.stdout


@pytest.fixture
def make_folder(tmp_path) -> Path:
    """The Makefile beside a pyproject.toml older than any stamp a test writes."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    os.utime(tmp_path / "pyproject.toml", (1, 1))
    (tmp_path / ".venv").mkdir()
    return tmp_path


def test_make_run_installs_the_runtime_only(make_folder):
    commands = dry_run(make_folder, "run")
    assert "-m venv .venv" in commands and "pip install --quiet -e .\n" in commands
    assert "[test]" not in commands and "[bench]" not in commands
    assert commands.rstrip().endswith(".venv/bin/python -m common.stack")


def test_make_test_adds_the_test_extras_to_a_run_venv(make_folder):
    assert "-e '.[test]'" in dry_run(make_folder, "test") and "-e .\n" in dry_run(make_folder, "test")
    (make_folder / ".venv" / ".installed").touch()  # `make run` installed the runtime
    commands = dry_run(make_folder, "test")
    assert "-m venv" not in commands and "-e .\n" not in commands and "-e '.[test]'" in commands
    bench = dry_run(make_folder, "bench")
    assert "-e '.[bench]'" in bench and "[test]" not in bench


def test_make_run_uses_a_test_venv_as_it_is(make_folder):
    (make_folder / ".venv" / ".installed").touch()
    (make_folder / ".venv" / ".installed-test").touch()  # as `make test` leaves them
    assert "pip" not in dry_run(make_folder, "run") and "pip" not in dry_run(make_folder, "test")
