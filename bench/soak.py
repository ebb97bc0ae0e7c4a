"""Does anything grow? The real stack under supervisord carries ``--calls`` concurrent calls for
``--minutes``, in rounds: every call talks for ``--call-s`` seconds (utterances echoed back), hangs up,
and a new one takes its place. Each minute, every process's RSS and open file descriptors are sampled.

    python -m bench.soak [--calls 10] [--minutes 10] [--call-s 60] [--json docs/soak.json]

Reported per process: RSS at the first sample (after a minute of warm-up) and at the end, growth per
minute (least-squares slope) as a share of the first sample, and file descriptors first/last. At the
end no call may be held anywhere (``/healthz``: no calls, every peer's load zero).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.load import program_pids, rss_mb
from bench.report import save_report
from harness.stack import ROOT, Stack, wait_for


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def callers(stack: Stack, calls: int, call_s: float, until: float, outcomes: list) -> None:
    """Rounds of ``calls`` calls until ``until`` (monotonic)."""
    seed = 0
    while time.monotonic() + call_s < until:
        run = subprocess.run([sys.executable, "-m", "bench.lean_caller", "--url", stack.url, "--calls",
                              str(calls), "--first-seed", str(seed), "--seconds", str(call_s)],
                             cwd=ROOT, capture_output=True, text=True)
        outcomes += json.loads(run.stdout) if run.returncode == 0 else [{"failed": run.stderr[-200:]}]
        seed += calls


def soak(calls: int, minutes: float, call_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        stack = Stack(Path(tmp) / "run", GEMINI_SILENCE_MS="300", LOG_LEVEL="WARNING").start()
        try:
            pids = program_pids(stack)
            started = time.monotonic()
            outcomes: list[dict] = []
            load = threading.Thread(target=callers, args=(stack, calls, call_s, started + minutes * 60, outcomes))
            load.start()
            samples = []  # (minute, {name: (rss MB, fds)})
            while load.is_alive():
                load.join(timeout=60)
                minute = (time.monotonic() - started) / 60
                samples.append((minute, {n: (rss_mb(p), fds(p)) for n, p in pids.items()}))
                print(f"{minute:5.1f} min: " + ", ".join(f"{n} {r:.1f} MB/{f} fds"
                                                       for n, (r, f) in samples[-1][1].items()), flush=True)

            def idle():
                h = stack.health()
                return h["calls"] == 0 and all(p["load"] == 0 for p in h["peers"])
            wait_for(idle, 15, "every stage to free every call", stack.log)
            restarted = program_pids(stack) != pids
        finally:
            stack.stop()
    return summarise(samples, outcomes, restarted, calls, minutes, call_s)


def summarise(samples, outcomes, restarted: bool, calls: int, minutes: float, call_s: float) -> dict:
    warm = samples[1:] if len(samples) > 2 else samples  # the first minute is warm-up
    minutes_at = np.array([m for m, _ in warm])
    processes = {}
    for name in warm[0][1]:
        rss = np.array([s[name][0] for _, s in warm])
        slope = float(np.polyfit(minutes_at, rss, 1)[0]) if len(rss) > 1 else 0.0
        processes[name] = {"rss_first_mb": round(rss[0], 1), "rss_last_mb": round(rss[-1], 1),
                           "growth_pct_per_min": round(100 * slope / rss[0], 3),
                           "growth_pct_over_run": round(100 * (rss[-1] - rss[0]) / rss[0], 2),
                           "fds_first": warm[0][1][name][1], "fds_last": warm[-1][1][name][1]}
    return {"calls": calls, "minutes": minutes, "call_s": call_s, "calls_placed": len(outcomes),
            "calls_failed": sum(1 for o in outcomes if o.get("failed")),
            "frames_lost": int(sum(o.get("missing_ms", 0) for o in outcomes) / 20),
            "process_restarted": restarted, "processes": processes}


def table(report: dict) -> str:
    head = f"{'process':16} {'RSS first/last MB':>18} {'growth %/min':>13} {'over run %':>11} {'fds first/last':>15}"
    lines = [head, "-" * len(head)]
    for name, p in sorted(report["processes"].items()):
        lines.append(f"{name:16} {p['rss_first_mb']:>8} / {p['rss_last_mb']:<7} {p['growth_pct_per_min']:>13} "
                     f"{p['growth_pct_over_run']:>11} {p['fds_first']:>7} / {p['fds_last']:<5}")
    lines.append(f"{report['calls_placed']} calls placed, {report['calls_failed']} failed, "
                 f"{report['frames_lost']} frames lost, a process restarted: {report['process_restarted']}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--call-s", type=float, default=60.0)
    p.add_argument("--json", default="docs/soak.json")
    args = p.parse_args()
    report = soak(args.calls, args.minutes, args.call_s)
    print("\n" + table(report))
    save_report(args.json, {"command": "python -m bench.soak " + " ".join(sys.argv[1:]), **report})


if __name__ == "__main__":
    main()
