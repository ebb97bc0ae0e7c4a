"""Each stage runs alone (`python -m <stage>`) and stops cleanly on SIGTERM, as supervisord stops it."""

import signal
import subprocess
import sys

import pytest

from harness.stack import ROOT, clean_env, wait_for


@pytest.mark.parametrize("module", ["gateway", "transcoder", "model_client", "emulator"])
def test_stage_runs_alone_and_stops_on_sigterm(module, tmp_path):
    log = tmp_path / f"{module}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=clean_env(tmp_path),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b" started" in log.read_bytes(), 20, f"{module} to start", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert f"{module} stopped" in text
    assert "Traceback" not in text, text


def test_bad_setting_is_a_clear_error(tmp_path):
    env = clean_env(tmp_path, PORT="eighty")
    done = subprocess.run([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=20)
    assert done.returncode == 2
    assert "PORT must be an integer, got 'eighty'" in done.stderr
