"""`make call` against the real stack, run by make from the Makefile's own recipe: a short summary, the
WAV and the JSON where it says, from a folder that has no out/ yet."""

import json
import re
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from harness.stack import ROOT, Stack

pytestmark = pytest.mark.e2e


def make_call(port: str, cwd: Path) -> subprocess.CompletedProcess:
    """The recipe as a user runs it; ``-o`` keeps make from reinstalling the venv this test runs in."""
    venv = Path(sys.executable).parents[1]
    return subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"),
                           "-o", str(venv / ".installed"), "call", f"VENV={venv}", f"PY={sys.executable}",
                           f"PORT={port}"], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_make_call_prints_a_summary(stack, tmp_path):
    done = make_call(stack.env["PORT"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    details = json.loads((tmp_path / "out" / "reply.json").read_text())
    assert details["reply_heard_s"] > 0.5 and details["turn_latencies_s"]
    assert done.stdout.splitlines() == [
        f"call {details['call_sid']}, stream {details['stream_sid']}",
        f"reply: {details['reply_heard_s']:.2f} s heard; the first began "
        f"{details['turn_latencies_s'][0]:.2f} s after the caller stopped speaking",
        "heard: out/reply.wav; details: out/reply.json"]
    assert not re.search(r"softphone|python", done.stdout)  # no command line echoed
    with wave.open(str(tmp_path / "out" / "reply.wav")) as wav:
        assert wav.getnframes() == round(details["heard_s"] * 8000)


def test_make_call_without_a_reply_fails_saying_so(tmp_path):
    # The emulated model says nothing: the call ends unanswered.
    stack = Stack(tmp_path / "run", EMULATOR_PERSONA="silent").start()
    try:
        done = make_call(stack.env["PORT"], tmp_path)
    finally:
        assert stack.stop() == 0
    assert done.returncode != 0
    assert "reply: 0.00 s heard; none began after the caller stopped speaking" in done.stdout
    no_reply = r"^softphone: no reply: nothing played on the call in the 5\.0 s it lasted$"
    assert re.search(no_reply, done.stderr, re.M), done.stderr
    assert (tmp_path / "out" / "reply.wav").exists() and (tmp_path / "out" / "reply.json").exists()
