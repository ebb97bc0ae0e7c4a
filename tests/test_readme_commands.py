"""Every shell command the README shows works as written: the stack started with `make run`, then each
command of the README's `sh` blocks run verbatim in a folder that holds only the Makefile, pyproject.toml
and this venv (so nothing lands in the checkout). The one change: the README's port 8080 becomes the
free port this test's stack listens on."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.stack import die_with_parent
from harness.stack import ROOT, clean_env, get_json, wait_for

# Commands the README shows that this test does not run, and who does.
RUN_ELSEWHERE = {"make test": "CI runs it (.ci/run): it is this very suite"}
STARTS_THE_STACK = "make run"


def readme_commands() -> list[str]:
    """The README's shell commands in order, without their trailing comments."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                commands.append(command)
    return commands


def test_the_readme_shows_commands_and_each_is_run_by_a_test():
    commands = readme_commands()
    assert STARTS_THE_STACK in commands and "make call" in commands
    # A command added to the README is run below, unless it is listed (with who runs it) in RUN_ELSEWHERE.
    assert set(RUN_ELSEWHERE) <= set(commands)


def shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.e2e
def test_every_readme_command_works_as_written(tmp_path):
    workdir = tmp_path / "user"
    workdir.mkdir()
    venv = Path(sys.executable).parents[1]
    (workdir / "Makefile").symlink_to(ROOT / "Makefile")
    (workdir / ".venv").symlink_to(venv)
    # A copy no newer than the venv's install stamp: make sees an installed venv, as after `make test`.
    shutil.copy(ROOT / "pyproject.toml", workdir / "pyproject.toml")
    stamp = (venv / ".installed").stat().st_mtime
    os.utime(workdir / "pyproject.toml", (stamp - 1, stamp - 1))
    env = clean_env(tmp_path / "run")
    port = env["PORT"]
    log = tmp_path / "make-run.log"
    with open(log, "ab") as out:
        run = subprocess.Popen(STARTS_THE_STACK, shell=True, cwd=workdir, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent())
    try:
        wait_for(lambda: get_json(f"http://127.0.0.1:{port}/readyz")["ready"], 60, "make run's stack", log)
        for command in readme_commands():
            if command == STARTS_THE_STACK or command in RUN_ELSEWHERE:
                continue
            done = shell(command.replace("8080", port), workdir, env)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        assert (workdir / "out" / "reply-again.wav").exists()
        stopped = shell("make stop", workdir, env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert run.wait(60) == 0, log.read_text()[-4000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
            run.wait(60)
