"""The load bench runs (tiny N, no timing assertions): what it reports is there and sane."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bench.caller_view import bucket_counts, caller_view, end_spread_ms
from bench.lean_caller import audible
from bench.load import percentile_ms
from common.g711 import ULAW_SILENCE, encode_ulaw
from harness.stack import ROOT


def run_bench(module: str, out, *args: str) -> tuple[dict, str]:
    """``python -m bench.<module> ... --json out``: (its JSON report, its stdout)."""
    run = subprocess.run([sys.executable, "-m", f"bench.{module}", *args, "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text()), run.stdout


@pytest.mark.parametrize("before, after, q, expected", [
    ([0] * 12, [0, 0, 5, 10, 10, 10, 10, 10, 10, 10, 10, 10], 0.5, 1.0),  # 5 ≤ 1 ms, 5 more ≤ 2 ms
    ([0] * 12, [0, 0, 5, 10, 10, 10, 10, 10, 10, 10, 10, 10], 0.99, 2.0),
    ([0] * 12, [0] * 11 + [4], 0.5, float("inf")),  # all above the last bound
    ([3] * 12, [3] * 12, 0.5, None),  # nothing observed in the step
])
def test_percentile_from_bucket_counts(before, after, q, expected):
    assert percentile_ms(before, after, q) == expected


METRICS = """\
bridge_event_loop_lag_seconds_bucket{role="gateway",peer="gateway",le="0.001"} 3.0
bridge_event_loop_lag_seconds_bucket{role="gateway",peer="gateway",le="+Inf"} 4.0
bridge_event_loop_lag_seconds_bucket{role="transcoder",peer="t1",le="0.001"} 1.0
bridge_hop_latency_seconds_bucket{direction="up",peer="mc",le="0.001"} 2.0
bridge_hop_latency_seconds_bucket{direction="up",peer="mc2",le="0.001"} 5.0
"""


def test_bucket_counts_per_label():
    lag = bucket_counts(METRICS, "bridge_event_loop_lag_seconds", "role", "peer")
    assert set(lag) == {"gateway/gateway", "transcoder/t1"}
    assert lag["gateway/gateway"][2] == 3.0 and lag["gateway/gateway"][-1] == 4.0
    assert bucket_counts(METRICS, "bridge_hop_latency_seconds", "direction")["up"][2] == 7.0  # peers summed


@pytest.mark.parametrize("ends, expected", [
    ([[1.0, 5.0], [1.01, 5.002]], 10.0),  # the widest n-th end: the first utterances, 10 ms apart
    ([[1.0, 5.0], [], [1.0, 5.0]], 0.0),  # a failed call said nothing: left out
    ([[1.0]], None),  # one call: no spread
])
def test_end_spread(ends, expected):
    assert end_spread_ms(ends) == expected


def test_caller_view_sets_the_emulator_apart():
    outcomes = [{"turn_ms": [100.0, 110.0], "unanswered": 1, "speech_ended": [1.0, 2.0]},
                {"turn_ms": [120.0], "unanswered": 0, "speech_ended": [1.0, 2.0]}]
    view = caller_view(outcomes, [10.0, 10.0, 10.0])
    assert view["turns"] == 3 and view["turns_unanswered"] == 1 and view["turn_p50_ms"] == 110.0
    assert view["emulator_p50_ms"] == 10.0 and view["turn_less_emulator_p50_ms"] == 100.0
    assert view["turn_end_spread_ms"] == 0.0 and view["callers_loop_lag_p99_ms"] is None


@pytest.mark.parametrize("ulaw, heard", [
    (bytes([ULAW_SILENCE]) * 160, False),
    (encode_ulaw(np.full(160, 100, np.int16)), False),  # below -40 dBFS
    (encode_ulaw(np.full(160, 2000, np.int16)), True),
    (b"", False),
])
def test_audible_reply_frame(ulaw, heard):
    assert audible(ulaw) is heard


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["full-stack", "bridge-only", "burst"])
def test_load_bench_at_two_calls(tmp_path, mode):
    bridge_only = mode == "bridge-only"
    report, stdout = run_bench("load", tmp_path / "load.json", "--steps", "2", "--step-s", "12",
                               # a burst's two calls in one caller process: their ends share a loop pass
                               "--per-worker", "2" if mode == "burst" else "1",
                               "--transcoders", "1", "--model-clients", "1",
                               *(["--bridge-only"] if bridge_only else []), *(["--burst"] if mode == "burst" else []),
                               "--png", "")  # the plot needs the bench extra
    step = report["steps"][0]
    assert step["calls"] == 2 and step["calls_failed"] == 0 and step["frames_sent"] > 600
    assert step["up_p50_ms"] is not None and step["down_p50_ms"] is not None
    assert "gateway" in step["cpu_pct"] and step["callers_cpu_pct"] > 0
    # What a caller feels: every utterance answered, its latency measured, each process's loop lag.
    assert step["turns"] >= 4 and step["turns_unanswered"] == 0 and step["turn_p50_ms"] > 0
    assert {"gateway/gateway"} <= set(step["loop_lag_p99_ms"]) and step["callers_loop_lag_p99_ms"] is not None
    assert len(step["loop_lag_p99_ms"]) == 3  # the gateway, one transcoder, one model_client
    assert (step["emulator_turns"] >= step["turns"]) != bridge_only  # the emulator's share, apart
    assert step["burst"] == (mode == "burst")
    if mode == "burst":
        assert step["turn_end_spread_ms"] < 20  # every turn ended in the same tick
    # The echo in the model_clients replaces the emulator, and every utterance still comes back.
    assert ("emulator" in step["cpu_pct"]) != bridge_only
    assert list(report["capacity"]) == ["bridge_only" if bridge_only else "full_stack"]
    if bridge_only:
        assert step["frames_lost"] == 0
    assert "capacity:" in stdout


@pytest.mark.e2e
def test_soak_bench_briefly(tmp_path):
    report, _ = run_bench("soak", tmp_path / "soak.json", "--calls", "2", "--minutes", "0.35", "--call-s", "9")
    assert report["calls_placed"] == 4 and report["calls_failed"] == 0
    assert {"gateway", "emulator"} <= set(report["processes"]) and not report["process_restarted"]


@pytest.mark.e2e
def test_model_client_bench_at_two_sessions(tmp_path):
    report, _ = run_bench("model_client", tmp_path / "mc.json", "--steps", "2", "--step-s", "6", "--warmup-s", "2")
    step = report["steps"][0]
    assert step["calls"] == 2 and step["calls_ended"] == 0
    assert step["utterances"] >= 2 and step["turns"] >= step["utterances"] - 2  # the echoes came back
    assert step["model_client_cpu_pct"] > 0 and step["emulator_cpu_pct"] > 0


@pytest.mark.e2e
def test_gateway_bench_at_two_calls(tmp_path):
    report, _ = run_bench("gateway", tmp_path / "gw.json", "--steps", "2", "--step-s", "9")
    step = report["steps"][0]
    assert step["calls"] == 2 and step["calls_failed"] == 0 and step["frames_sent"] > 600
    assert step["frames_heard"] > 0.9 * step["frames_sent"]  # the loopback came back through the gateway
    assert step["gateway_cpu_pct"] > 0 and step["up_p50_ms"] is not None


@pytest.mark.e2e
def test_transcoder_bench_at_three_calls(tmp_path):
    report, _ = run_bench("transcoder", tmp_path / "tc.json", "--steps", "3", "--step-s", "1",
                          "--warmup-s", "1", "--repeat", "2")
    step = report["steps"][0]
    assert step["calls"] == 3 and step["frames_in"] > 100 and len(step["windows_p99_ms"]) == 2
    assert step["lost_in_any_window"] == 0
    assert step["up_p50_ms"] is not None and step["down_p50_ms"] is not None


def test_dsp_bench_quickly(tmp_path):
    report, _ = run_bench("dsp", tmp_path / "dsp.json", "--engines", "fir", "--quick", "--rounds", "2",
                          "--png", "")
    assert [row["direction"] for row in report["rows"]] == ["up 8k→16k", "down 24k→8k"]
    for row in report["rows"]:
        assert row["stream_error_lsb"] == 0 and row["rejection_db"] >= 80 and row["delay_ms"] <= 3
        assert len(row["single_us_rounds"]) == 2 and row["single_us"] > 0 and row["batch1000_us"] > 0


def test_wakeup_bench_briefly(tmp_path):
    report, _ = run_bench("wakeup", tmp_path / "wakeup.json", "--rounds", "3")
    assert [row["path"] for row in report["rounds"]] == ["pipe", "zeromq_ipc", "zeromq_ipc_our_links"]
    assert all(row["p50_us"] > 0 for row in report["rounds"])
