"""Conversation latencies through the real stack (supervisord, emulator, real SDK, softphone):

- barge-in: the emulator sending ``interrupted`` → the softphone receiving Twilio ``clear``;
- first audio: the stream's ``start`` → the first model audio, with a greeting, with and
  without pre-warm (the Gemini session opened at the webhook vs at the stream's start).

    python -m bench.conversation [--calls 10] [--json docs/conversation.json]

Both clocks are CLOCK_MONOTONIC on one host, so the emulator's and the softphone's timestamps compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from bench.report import save_report
from harness.stack import Stack
from softphone.caller import place_call
from softphone.speech import silence, speech_like


def barge_in_script(seed: int) -> np.ndarray:
    """Speak, pause just long enough to end the turn, then talk over the streaming reply; repeat."""
    parts = [speech_like(2.0, seed=seed)]
    for i in range(10):
        parts += [silence(0.42), speech_like(1.2, seed=seed * 100 + i)]
    return np.concatenate(parts)


def emulator_interrupts(stack: Stack) -> list[int]:
    ctx = ssl.create_default_context(cafile=str(stack.run_dir / "emulator-cert.pem"))
    url = f"https://127.0.0.1:{stack.env['EMULATOR_PORT']}/healthz"
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return json.loads(r.read())["interrupted_ns"]


def pair(interrupts: list[int], clears: list[int], window_ns: int = 200_000_000) -> list[float]:
    """ms from each clear's closest preceding interrupt (within the window)."""
    interrupts = sorted(interrupts)
    latencies = []
    for clear in clears:
        before = [t for t in interrupts if clear - window_ns <= t <= clear]
        if before:
            latencies.append((clear - before[-1]) / 1e6)
    return latencies


async def measure_barge_in(run_dir: Path, calls: int, concurrency: int = 3) -> list[float]:
    stack = Stack(run_dir, GEMINI_SILENCE_MS="300").start()
    try:
        clears: list[int] = []
        for start in range(0, calls, concurrency):
            batch = [place_call(stack.url, barge_in_script(seed), listen_s=1.0, timeout_s=120)
                     for seed in range(start + 1, min(calls, start + concurrency) + 1)]
            for result in await asyncio.gather(*batch):
                clears += result.clears_ns
            print(f"  barge-in: {min(calls, start + concurrency)}/{calls} calls, {len(clears)} clears",
                  flush=True)
        return pair(emulator_interrupts(stack), clears)
    finally:
        stack.stop()


async def measure_first_audio(run_dir: Path, calls: int, prewarm: bool) -> list[float]:
    stack = Stack(run_dir, BRIDGE_GREETING="Greet the caller.",
                  BRIDGE_PREWARM="true" if prewarm else "false").start()
    try:
        firsts = []
        for _ in range(calls):
            result = await place_call(stack.url, silence(0.3), listen_s=1.5, timeout_s=30)
            if result.start_to_audio_s is not None:
                firsts.append(result.start_to_audio_s * 1000)
        print(f"  first audio, pre-warm {'on' if prewarm else 'off'}: {len(firsts)} calls", flush=True)
        return firsts
    finally:
        stack.stop()


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    q = np.percentile(values, [50, 99])
    return {"n": len(values), "p50_ms": round(float(q[0]), 1), "p99_ms": round(float(q[1]), 1),
            "max_ms": round(max(values), 1), "mean_ms": round(statistics.fmean(values), 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=12, help="calls for the barge-in run")
    parser.add_argument("--first-audio-calls", type=int, default=15)
    parser.add_argument("--json", default="docs/conversation.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-conv-") as tmp:
        tmp = Path(tmp)
        barge = await measure_barge_in(tmp / "barge", args.calls)
        cold = await measure_first_audio(tmp / "cold", args.first_audio_calls, prewarm=False)
        warm = await measure_first_audio(tmp / "warm", args.first_audio_calls, prewarm=True)
    rows = {"barge-in: interrupted → clear": percentiles(barge),
            "first audio, no pre-warm": percentiles(cold),
            "first audio, pre-warm": percentiles(warm)}
    print(f"\n{'measure':34} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, row in rows.items():
        print(f"{name:34} {row['n']:>5} {row.get('p50_ms', '-'):>8} {row.get('p99_ms', '-'):>8} "
              f"{row.get('max_ms', '-'):>8}")
    save_report(args.json, rows)


if __name__ == "__main__":
    asyncio.run(main())
