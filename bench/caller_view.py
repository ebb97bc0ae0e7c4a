"""What the load bench reads from the stack besides its callers' results (bench/load.py): histograms
from the gateway's ``/metrics`` and the emulator's turn timings, turned into one step's numbers.

- hop latency per direction and each process's event-loop lag: ``bridge_hop_latency_seconds`` and
  ``bridge_event_loop_lag_seconds``, bucket counts differenced over the step's window, so a
  percentile reads "≤ bound";
- the emulator's own share of a turn: from its end-of-turn decision to its first reply audio frame
  written to the SDK's socket (its ``/healthz`` ``turns_ns``, CLOCK_MONOTONIC like the callers'
  clocks). It stands in for Google and never runs in production, so it is reported apart;
- the caller's view: each utterance's end of speech → first audible reply frame (bench/lean_caller.py),
  exact percentiles over every utterance of the step.
"""

from __future__ import annotations

import json
import math
import ssl
import urllib.request

import numpy as np

from common.stats import LATENCY_BUCKETS_MS
from harness.stack import Stack

HOP = "bridge_hop_latency_seconds"
LOOP_LAG = "bridge_event_loop_lag_seconds"
_BOUNDS = [*(f"{b / 1000!r}" for b in LATENCY_BUCKETS_MS), "+Inf"]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


def bucket_counts(text: str, metric: str, *labels: str) -> dict[str, list[float]]:
    """Cumulative bucket counts of one of our latency histograms, summed per value of ``labels``
    (joined with "/")."""
    counts: dict[str, list[float]] = {}
    prefix = metric + "_bucket{"
    for line in text.splitlines():
        if line.startswith(prefix):
            text_labels, value = line[len(prefix):].rsplit("} ", 1)
            pairs = dict(part.split("=", 1) for part in text_labels.split(","))
            key = "/".join(pairs[name].strip('"') for name in labels)
            counts.setdefault(key, [0.0] * len(_BOUNDS))[_BOUNDS.index(pairs["le"].strip('"'))] += float(value)
    return counts


def hop_counts(text: str) -> dict[str, list[float]]:
    """Per direction (``up``, ``down``), all peers summed."""
    empty = [0.0] * len(_BOUNDS)
    found = bucket_counts(text, HOP, "direction")
    return {"up": found.get("up", empty), "down": found.get("down", empty)}


def lag_counts(text: str) -> dict[str, list[float]]:
    """Per process, "role/peer": the gateway's own, and each transcoder's and model_client's."""
    return bucket_counts(text, LOOP_LAG, "role", "peer")


def percentile_ms(before: list[float], after: list[float], q: float) -> float | None:
    """The bucket bound (ms) under which ``q`` of the step's observations fall; inf above the last."""
    delta = [a - b for a, b in zip(after, before)]
    total = delta[-1]
    if total <= 0:
        return None
    for bound, cumulative in zip((*LATENCY_BUCKETS_MS, math.inf), delta):
        if cumulative >= q * total:
            return bound
    return math.inf


def lag_p99(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, float | None]:
    return {name: percentile_ms(before.get(name, [0.0] * len(_BOUNDS)), counts, 0.99)
            for name, counts in sorted(after.items())}


def emulator_turns_ms(stack: Stack, since_ns: int) -> list[float]:
    """The emulator's own share of each turn whose end it detected after ``since_ns``, in ms."""
    ctx = ssl.create_default_context(cafile=str(stack.run_dir / "emulator-cert.pem"))
    url = f"https://127.0.0.1:{stack.env['EMULATOR_PORT']}/healthz"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        turns = json.loads(r.read()).get("turns_ns", [])
    return [(first - heard) / 1e6 for heard, first in turns if heard >= since_ns]


def spread(values: list[float]) -> tuple[float | None, float | None]:
    """(p50, p99) in ms, exact (numpy's linear interpolation), or Nones for no values."""
    if not values:
        return None, None
    p50, p99 = np.percentile(values, [50, 99])
    return round(float(p50), 1), round(float(p99), 1)


def caller_view(outcomes: list[dict], emulator_ms: list[float]) -> dict:
    """The step's turn latencies: the callers' view, the emulator's share, and the rest (the bridge,
    the model's VAD wait and the callers' own socket) as the same percentile of one minus the other:
    the emulator cannot tell which call a turn belongs to, so the two are not paired per turn."""
    turns = [t for o in outcomes for t in o.get("turn_ms", [])]
    turn_p50, turn_p99 = spread(turns)
    emu_p50, emu_p99 = spread(emulator_ms)
    lags = [o["caller_lag_counts"] for o in outcomes if o.get("caller_lag_counts")]
    caller_lag = None
    if lags:
        worst = max(lags, key=lambda c: percentile_ms([0] * len(c), list(np.cumsum(c)), 0.99) or 0)
        caller_lag = percentile_ms([0] * len(worst), list(np.cumsum(worst)), 0.99)
    return {"turns": len(turns), "turns_unanswered": sum(o.get("unanswered", 0) for o in outcomes),
            "turn_end_spread_ms": end_spread_ms([o.get("speech_ended", []) for o in outcomes]),
            "turn_p50_ms": turn_p50, "turn_p99_ms": turn_p99,
            "emulator_turns": len(emulator_ms), "emulator_p50_ms": emu_p50, "emulator_p99_ms": emu_p99,
            "turn_less_emulator_p50_ms": _less(turn_p50, emu_p50),
            "turn_less_emulator_p99_ms": _less(turn_p99, emu_p99),
            "callers_loop_lag_p99_ms": caller_lag}


def end_spread_ms(ends: list[list[float]]) -> float | None:
    """How far apart the calls' n-th ends of speech fall, the largest over n: within a tick (20 ms)
    for a burst, over the whole cycle otherwise."""
    ends = [e for e in ends if e]
    widths = [max(nth) - min(nth) for nth in zip(*ends)] if len(ends) > 1 else []
    return round(1000 * max(widths), 1) if widths else None


def _less(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)
