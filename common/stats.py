"""What the transcoders and model_clients report to the gateway for ``/metrics`` (gateway/metrics.py).

Each stage keeps cumulative counters, current gauges and a few fixed-bucket histograms, and sends them
to the gateway in one ``Stats`` message every ``STATS_INTERVAL_S``. Cumulative values survive a lost
message; a restarted process has a new epoch, so it starts new series instead of going backwards.
Observing is one bisect and two additions: cheap enough for every frame.
"""

from __future__ import annotations

import asyncio
import bisect

from common import messages as m

STATS_INTERVAL_S = 2.0
# Upper bounds, in milliseconds, shared by every latency histogram (Prometheus "le" buckets).
LATENCY_BUCKETS_MS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0)
# Upper bounds, in microseconds, for per-frame processing time.
FRAME_BUCKETS_US = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
LOOP_LAG_EVERY_S = 0.1  # how often each process checks how late its event loop runs a timer
# What every ZeroMQ link counts (common/link.py): batches shed on a full pipe, frames that broke the schema.
LINK_EVENTS = ("dropped", "rejected")


class Histogram:
    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def wire(self) -> list:
        """[count per bucket..., sum] as msgpack carries it; the sum in thousandths to stay an int."""
        return [*self.counts, round(self.total * 1000)]


def from_wire(value, bounds: tuple[float, ...]) -> tuple[list[int], float] | None:
    """(counts per bucket, sum) from a peer's ``Stats``, or None if it is not that shape."""
    if (not isinstance(value, list) or len(value) != len(bounds) + 2
            or not all(type(v) is int and v >= 0 for v in value)):
        return None
    return value[:-1], value[-1] / 1000


class StageStats:
    """One stage's numbers: ``counters`` only grow, ``gauges`` are set, ``histograms`` observe."""

    def __init__(self, histograms: dict[str, tuple[float, ...]]):
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, int] = {}
        self.histograms = {name: Histogram(bounds) for name, bounds in histograms.items()}
        self._closed_links = dict.fromkeys(LINK_EVENTS, 0)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def count_links(self, links) -> None:
        """``link_dropped`` / ``link_rejected``: the open links' counts plus those of links closed."""
        for name in LINK_EVENTS:
            open_links = sum(getattr(link, name) for link in links)
            self.counters[f"link_{name}"] = self._closed_links[name] + open_links

    def link_closed(self, link) -> None:
        for name in LINK_EVENTS:
            self._closed_links[name] += getattr(link, name)

    def message(self) -> m.Stats:
        return m.Stats(counters=dict(self.counters), gauges=dict(self.gauges),
                       histograms={name: h.wire() for name, h in self.histograms.items()})


async def watch_loop_lag(histogram: Histogram, every_s: float = LOOP_LAG_EVERY_S) -> None:
    """How late the event loop runs a timer, in ms, every ``every_s``. A process waiting for a core, or a
    long loop pass (a full collection), shows here before it shows in the hop latencies."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every_s
        await asyncio.sleep(every_s)
        histogram.observe(max(0.0, loop.time() - due) * 1000)
