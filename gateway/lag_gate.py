"""Admission that protects latency: no new calls while a bridge process's event loop runs late.

Capacity (gateway/limits.py) is what the stages advertise; loop lag is what they measure. Every
process samples how late its event loop runs a timer (common/stats.py ``watch_loop_lag``); the
transcoders and model_clients send that histogram in each ``Stats`` (every ``STATS_INTERVAL_S``),
the gateway keeps its own. Each process's latest interval is read as its 90th percentile,
interpolated within the bucket as Prometheus's ``histogram_quantile`` does: a process short of CPU
runs most of its timers late, while one long loop pass (a full collection) is one sample in twenty
and does not count.

A process is *full* from an interval at or above ``BRIDGE_ADMIT_LAG_MS`` until an interval below half
of it (hysteresis, so admission does not flap around the line). While any live process is full,
``why_full()`` names the latest one: the webhook refuses new calls with the busy answer and
``/readyz`` says 503. Live calls go on. Closing and opening are logged and counted
(``admission_closed_loop_lag``); the webhook counts each refusal.
"""

from __future__ import annotations

import asyncio
import logging
import time

from common.stats import LATENCY_BUCKETS_MS, STATS_INTERVAL_S, from_wire

log = logging.getLogger(__name__)

QUANTILE = 0.9
LOOK_EVERY_S = 0.5  # how often the peers' latest Stats are looked at (they come every STATS_INTERVAL_S)
GATEWAY = "gateway"


def interval_lag_ms(before: list[int], after: list[int], q: float = QUANTILE,
                    bounds: tuple[float, ...] = LATENCY_BUCKETS_MS) -> float | None:
    """The ``q``-quantile, in ms, of the samples between two snapshots of a loop-lag histogram's
    per-bucket counts (``after`` alone when the counts went backwards: a restarted process); None when
    there were no samples. Above the last bound it reads as the last bound."""
    delta = [a - b for a, b in zip(after, before)]
    if any(d < 0 for d in delta):
        delta = list(after)
    total = sum(delta)
    if total <= 0:
        return None
    rank, seen, lower = q * total, 0, 0.0
    for upper, n in zip((*bounds, bounds[-1]), delta):
        if n and seen + n >= rank:
            return lower + (upper - lower) * (rank - seen) / n
        seen, lower = seen + n, upper
    return bounds[-1]


class LagGate:
    """Which processes are full, from snapshots of their loop-lag histograms (``observe``), or read
    off the pipeline (``look``, every ``LOOK_EVERY_S`` in ``run``)."""

    def __init__(self, limit_ms: int, counters: dict[str, int]):
        self.limit_ms, self.counters = limit_ms, counters
        self.lag_ms: dict[str, float] = {}  # process → its latest interval's lag
        self.full: set[str] = set()
        self._counts: dict[str, list[int]] = {}  # process → its histogram at the last snapshot
        self._read: dict[str, object] = {}  # peer process → the Stats last read from it
        self._own_at = 0.0

    def why_full(self) -> str:
        """Why no new call should come in now, or "" if none is full (or the gate is off)."""
        if not self.full:
            return ""
        worst = max(self.full, key=lambda name: self.lag_ms.get(name, 0.0))
        return (f"{worst}'s event loop runs {self.lag_ms.get(worst, 0.0):.0f} ms late "
                f"(BRIDGE_ADMIT_LAG_MS={self.limit_ms})")

    def observe(self, process: str, counts: list[int]) -> None:
        """A new snapshot of ``process``'s loop-lag histogram: its interval since the last one decides."""
        before = self._counts.get(process)
        self._counts[process] = list(counts)
        lag = interval_lag_ms(before, counts) if before is not None else None
        if lag is None:
            return
        self.lag_ms[process] = lag
        was_full = bool(self.full)
        if lag >= self.limit_ms:
            self.full.add(process)
        elif lag < self.limit_ms / 2:
            self.full.discard(process)
        self._changed(was_full)

    def forget(self, live: set[str]) -> None:
        """Processes no longer live (gone, or restarted under a new name) hold nothing back."""
        was_full = bool(self.full)
        for gone in set(self._counts) - live:
            self._counts.pop(gone)
            self.lag_ms.pop(gone, None)
            self._read.pop(gone, None)
            self.full.discard(gone)
        self._changed(was_full)

    def look(self, pipeline) -> None:
        """Each live peer's Stats that is new since the last look, and the gateway's own histogram
        once per ``STATS_INTERVAL_S``."""
        live = {GATEWAY}
        for peer, stats in list(pipeline.peer_stats.values()):
            process = f"{peer.role} {peer.route.decode(errors='replace')[:60]}"
            live.add(process)
            if self._read.get(process) is stats:
                continue
            self._read[process] = stats
            parsed = from_wire(stats.histograms.get("loop_lag_ms"), LATENCY_BUCKETS_MS)
            if parsed is not None:  # malformed: /metrics skips it too (gateway/metrics.py)
                self.observe(process, parsed[0])
        now = time.monotonic()
        if now - self._own_at >= STATS_INTERVAL_S:
            self._own_at = now
            self.observe(GATEWAY, pipeline.loop_lag.counts)
        self.forget(live)

    async def run(self, pipeline) -> None:
        while True:
            self.look(pipeline)
            await asyncio.sleep(LOOK_EVERY_S)

    def _changed(self, was_full: bool) -> None:
        if self.full and not was_full:
            self.counters["admission_closed_loop_lag"] = self.counters.get("admission_closed_loop_lag", 0) + 1
            log.warning("admission closed: %s; new calls get the busy answer until every event loop "
                        "runs under %g ms late", self.why_full(), self.limit_ms / 2)
        elif was_full and not self.full:
            log.warning("admission open again: every event loop runs under %g ms late", self.limit_ms / 2)
