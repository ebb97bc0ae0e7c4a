"""How many calls one box carries: the real stack under supervisord (emulator, real google-genai SDK),
N concurrent softphone calls at real-time pace, N ramped.

    python -m bench.load [--steps 10,25,50,75,100] [--step-s 20] [--json docs/load.json] [--png docs/load.png]
    python -m bench.load --burst [--steps 1,100]    (every turn ends in the same tick → docs/load-burst.*)
    python -m bench.load --bridge-only [--steps 50,100,200,300]    (→ docs/load-bridge.json, .png)

Each call talks for ``--step-s`` seconds: speech-like utterances (1.0-1.6 s) with pauses, each echoed
back by the emulator's echo persona; the calls' utterances are spread over the cycle, or with
``--burst`` every call's turn ends in the same 20 ms tick (the callers start their scripts together,
after silence). The callers are bench/lean_caller.py in worker processes
(``--per-worker`` calls each, one shared 20 ms tick per process) whose CPU is reported apart from the
stack's. CPU and latency are read over the middle of each step, when every call is up. For each N:

- what a caller feels: each utterance's end of speech → the first audible reply frame on its Twilio
  socket, p50/p99 over every utterance of the step; next to it the emulator's own share (its end-of-
  turn decision → its first reply audio sent), which stands in for Google and is reported apart,
  and each process's event-loop lag p99 (``bridge_event_loop_lag_seconds``; the callers' own too)
  (bench/caller_view.py says exactly what each number is);
- hop latency per direction, p50/p99, from the gateway's ``/metrics`` (the difference over the step):
  ``up`` = gateway → model_client (stamped at the gateway, read at the model_client: the transcoder's
  work and two ZeroMQ hops), ``down`` = model_client → gateway. Histogram buckets, so a percentile
  reads "≤ bound";
- frames lost: caller audio missing from the echoes (200 ms pieces, bench/chaos.py's alignment), and
  calls that failed or were ended by the bridge;
- late frames at the softphone: a reply whose audio ran out mid-reply and then went on (underrun);
- CPU (% of one core) and RSS of every process of the stack, and of the callers.

The box's capacity is the largest N whose p99 stays ≤ 20 ms both ways with nothing lost.

``--bridge-only`` measures the bridge alone: the model_clients answer with a lean echo themselves
(``BRIDGE_ECHO_MODEL``, bench/echo_model.py: the same ZeroMQ messages, no SDK, no emulator), so the
gateway, the transcoders and the ZeroMQ hops carry the load.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.caller_view import caller_view, emulator_turns_ms, hop_counts, lag_counts, lag_p99, percentile_ms, scrape
from bench.chaos import Supervisor
from bench.lean_caller import HANG_S, start_workers, worker_results
from bench.report import save_report
from harness.stack import Stack

P99_LIMIT_MS = 20.0
SPREAD_S = 2.0  # calls of a step start over this long
BURST_WAIT_S = 2.0  # with --burst, the scripts start this long after the last call was placed
SILENCE_MS = 300  # the model's VAD: the silence that ends a turn, part of every turn's latency
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- measuring the stack ----------------------------------------------------------------------------

def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def box_ticks() -> tuple[int, int]:
    """(all CPU ticks, ticks stolen by the hypervisor for other guests) of the whole box (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return sum(ticks), ticks[7]


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    return round(100 * (after[1] - before[1]) / max(1, after[0] - before[0]), 1)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def program_pids(stack: Stack) -> dict[str, int]:
    return {name.split(":")[-1]: info["pid"] for name, info in Supervisor(stack).processes().items()
            if info["pid"]}


# --- one step -----------------------------------------------------------------------------------------

def run_step(stack: Stack, calls: int, seconds: float, per_worker: int, seed: int, burst: bool = False) -> dict:
    """One step: ``calls`` calls for ``seconds``; CPU and latency are read over the middle of it,
    when every call is up and none has ended (the callers' own analysis comes after)."""
    pids = program_pids(stack)
    started, started_ns = time.monotonic(), time.monotonic_ns()
    wait = SPREAD_S + BURST_WAIT_S if burst else 0.0
    flags = ("--start-at", repr(started + wait)) if burst else ()
    workers = start_workers(stack.url, calls, per_worker, seed, seconds, SPREAD_S, *flags)
    time.sleep(wait or SPREAD_S)
    time.sleep(2.0)
    window0 = time.monotonic()
    cpu0 = {name: cpu_ticks(pid) for name, pid in pids.items()}
    callers0 = sum(cpu_ticks(w.pid) for w in workers if _alive(w.pid))
    metrics0, box0 = scrape(stack.url), box_ticks()
    time.sleep(max(1.0, seconds - (0 if burst else SPREAD_S) - 6.0))
    window = time.monotonic() - window0
    cpu = {name: round(100 * (cpu_ticks(pid) - cpu0[name]) / TICKS / window, 1)
           for name, pid in pids.items() if _alive(pid)}
    callers = sum(cpu_ticks(w.pid) for w in workers if _alive(w.pid)) - callers0
    metrics1, steal = scrape(stack.url), steal_pct(box0, box_ticks())
    hops0, hops1 = hop_counts(metrics0), hop_counts(metrics1)
    rss = {name: round(rss_mb(pid), 1) for name, pid in pids.items() if _alive(pid)}
    # Each call's echoes take a moment to align after it ends (more on a busy box).
    outcomes = worker_results(workers, calls, per_worker, timeout=seconds + wait + HANG_S + 3.0 * per_worker)
    failed = [o["failed"] for o in outcomes if o.get("failed")]
    emulator = emulator_turns_ms(stack, started_ns) if "emulator" in pids else []
    return {
        "calls": calls, "burst": burst, "seconds": round(time.monotonic() - started, 1),
        **caller_view(outcomes, emulator), "vad_silence_ms": SILENCE_MS,
        "loop_lag_p99_ms": lag_p99(lag_counts(metrics0), lag_counts(metrics1)),
        "up_p50_ms": percentile_ms(hops0["up"], hops1["up"], 0.5),
        "up_p99_ms": percentile_ms(hops0["up"], hops1["up"], 0.99),
        "down_p50_ms": percentile_ms(hops0["down"], hops1["down"], 0.5),
        "down_p99_ms": percentile_ms(hops0["down"], hops1["down"], 0.99),
        "calls_failed": len(failed), "why_failed": sorted(set(failed))[:3],
        "frames_lost": int(sum(o.get("missing_ms", 0) for o in outcomes) / 20),
        "frames_sent": sum(o.get("frames_sent", 0) for o in outcomes),
        "underruns": sum(o.get("underruns", 0) for o in outcomes),
        "cpu_pct": cpu, "stack_cpu_pct": round(sum(cpu.values()), 1),
        "callers_cpu_pct": round(100 * callers / TICKS / window, 1), "rss_mb": rss, "steal_pct": steal,
    }


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def holds(row: dict) -> bool:
    p99 = [row["up_p99_ms"], row["down_p99_ms"]]
    return (all(v is not None and v <= P99_LIMIT_MS for v in p99) and row["frames_lost"] == 0
            and row["calls_failed"] == 0)


# --- the report ---------------------------------------------------------------------------------------

def table(rows: list[dict]) -> str:
    head = (f"{'calls':>5} {'turn p50/p99 ms':>15} {'emulator p50/p99':>16} {'loop lag p99 ms (worst)':>28} "
            f"{'up p50/p99 ms':>14} {'down p50/p99 ms':>16} {'lost':>5} {'failed':>6} "
            f"{'underruns':>9} {'stack cpu %':>11} {'callers cpu %':>13} {'steal %':>7}  "
            "per process cpu % (rss MB)")
    lines = [head, "-" * len(head)]
    for r in rows:
        procs = ", ".join(f"{n} {c} ({r['rss_mb'].get(n, 0):.0f})" for n, c in sorted(r["cpu_pct"].items()))
        lag = worst_lag(r)
        lines.append(f"{r['calls']:>5} {_num(r['turn_p50_ms'])}/{_num(r['turn_p99_ms']):<8} "
                     f"{_num(r['emulator_p50_ms'])}/{_num(r['emulator_p99_ms']):<9} "
                     f"{_ms(lag[1])} {lag[0][:20]:<21} "
                     f"{_ms(r['up_p50_ms'])}/{_ms(r['up_p99_ms']):<7} "
                     f"{_ms(r['down_p50_ms'])}/{_ms(r['down_p99_ms']):<8} {r['frames_lost']:>5} "
                     f"{r['calls_failed']:>6} {r['underruns']:>9} {r['stack_cpu_pct']:>11} "
                     f"{r['callers_cpu_pct']:>13} {r['steal_pct']:>7}  {procs}")
    return "\n".join(lines)


def worst_lag(row: dict) -> tuple[str, float | None]:
    """(process, loop lag p99) of the step's latest process, the callers' own included."""
    lags = {**row["loop_lag_p99_ms"], "callers": row["callers_loop_lag_p99_ms"]}
    known = {name: lag for name, lag in lags.items() if lag is not None}
    return max(known.items(), key=lambda item: item[1], default=("-", None))


def _num(value) -> str:
    return f"{value:.0f}".rjust(6) if value is not None else "-".rjust(6)


def _ms(value) -> str:
    return f"{'≤' if value not in (None, math.inf) else ''}{value if value is not None else '-'}".rjust(6)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = [r["calls"] for r in rows]
    fig, (turn, lat, cpu) = plt.subplots(1, 3, figsize=(16, 4))
    for key, style in (("turn_p50_ms", "k-"), ("turn_p99_ms", "k--"), ("emulator_p50_ms", "m-"),
                       ("emulator_p99_ms", "m--")):
        turn.plot(n, [r[key] or 0 for r in rows], style, marker="o", label=key.replace("_ms", ""))
    turn.plot(n, [min(worst_lag(r)[1] or 0, 1000) for r in rows], "r:", marker=".",
              label="worst loop lag p99 (bucket bound)")
    turn.set(xlabel="concurrent calls", ylabel="ms", title="what a caller feels: end of speech → reply"
             + (" (burst)" if rows[0]["burst"] else ""))
    turn.legend(fontsize=8)
    for key, style in (("up_p50_ms", "b-"), ("up_p99_ms", "b--"), ("down_p50_ms", "g-"), ("down_p99_ms", "g--")):
        lat.plot(n, [min(r[key] or 0, 1000) for r in rows], style, marker="o", label=key.replace("_ms", ""))
    lat.axhline(P99_LIMIT_MS, color="r", lw=0.8, label=f"{P99_LIMIT_MS:g} ms")
    lat.set(xlabel="concurrent calls", ylabel="hop latency, ms (bucket bound)", yscale="log",
            title="pipeline latency")
    lat.legend(fontsize=8)
    for name in sorted({k for r in rows for k in r["cpu_pct"]}):
        cpu.plot(n, [r["cpu_pct"].get(name, 0) for r in rows], marker=".", label=name)
    cpu.plot(n, [r["callers_cpu_pct"] for r in rows], "k--", label="callers (load generator)")
    cpu.set(xlabel="concurrent calls", ylabel="% of one core", title="CPU per process")
    cpu.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


async def main_async(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        # Admission by loop lag off unless --env sets it: the bench measures what the stack carries.
        env = {"LOG_LEVEL": "WARNING", "GEMINI_SILENCE_MS": str(SILENCE_MS), "BRIDGE_ADMIT_LAG_MS": "0",
               "BRIDGE_TRANSCODERS": str(args.transcoders), "BRIDGE_MODEL_CLIENTS": str(args.model_clients),
               "BRIDGE_MAX_CALLS": str(max(int(s) for s in args.steps.split(",")) * 2),
               **dict(kv.split("=", 1) for kv in args.env)}
        stack = Stack(Path(tmp) / "run", **env).start()
        try:
            for i, calls in enumerate(int(s) for s in args.steps.split(",")):
                row = await asyncio.to_thread(run_step, stack, calls, args.step_s, args.per_worker, 1000 * i,
                                              args.burst)
                rows.append(row)
                print(table([row]).splitlines()[-1] if rows[1:] else table([row]), flush=True)
                if not holds(row) and not args.keep_going:
                    break
        finally:
            stack.stop()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="10,25,50,75,100")
    p.add_argument("--step-s", type=float, default=20.0)
    p.add_argument("--per-worker", type=int, default=50, help="calls per load-generator process")
    p.add_argument("--transcoders", type=int, default=0, help="default: the stack's own (0: from the cores)")
    p.add_argument("--model-clients", type=int, default=0, help="default: the stack's own (0: from the cores)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the stack under test (repeatable), e.g. GEMINI_SEND_MS=20")
    p.add_argument("--keep-going", action="store_true", help="run every step even past capacity")
    p.add_argument("--burst", action="store_true",
                   help="every call's turn ends in the same 20 ms tick (default: spread over the cycle)")
    p.add_argument("--bridge-only", action="store_true",
                   help="the model side is a lean echo in the model_clients (no SDK, no emulator)")
    p.add_argument("--json", help="default docs/load.json (load-burst.json with --burst, load-bridge.json "
                   "with --bridge-only)")
    p.add_argument("--png", help="default docs/load.png (likewise); empty: no plot")
    args = p.parse_args()
    name = "load-bridge" if args.bridge_only else "load-burst" if args.burst else "load"
    args.json = f"docs/{name}.json" if args.json is None else args.json
    args.png = f"docs/{name}.png" if args.png is None else args.png
    if args.bridge_only:
        args.env.append("BRIDGE_ECHO_MODEL=true")
    rows = asyncio.run(main_async(args))
    held = [r["calls"] for r in rows if holds(r)]
    capacity = max(held, default=0)
    print(f"\ncapacity: {capacity} concurrent calls (p99 ≤ {P99_LIMIT_MS:g} ms each way, nothing lost)")
    report = {"command": "python -m bench.load " + " ".join(sys.argv[1:]),
              "capacity": {"bridge_only" if args.bridge_only else "full_stack": capacity},
              "p99_limit_ms": P99_LIMIT_MS, "steps": rows}
    save_report(args.json, report)
    if args.png and rows:
        try:
            plot(rows, args.png)
            print(f"saved {args.png}")
        except ImportError:
            print(f"no plot: matplotlib is not installed (pip install -e '.[bench]'), {args.png} not written")


if __name__ == "__main__":
    main()
