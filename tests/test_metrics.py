"""/metrics: the histogram and Stats pieces as tables, and a real stack scraped after a call."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from common.stats import LATENCY_BUCKETS_MS, Histogram, StageStats, from_wire, watch_loop_lag
from gateway.metrics import _buckets, make_handler
from gateway.pipeline import outcome_of
from harness.stack import wait_for
from softphone.caller import place_call
from softphone.speech import speech_like


def test_histogram_buckets_by_upper_bound():
    h = Histogram((1.0, 5.0))
    for value in (0.5, 1.0, 1.5, 5.0, 99.0):
        h.observe(value)
    assert h.counts == [2, 2, 1] and h.wire() == [2, 2, 1, 107000]
    assert _buckets(h.counts, h.total, h.bounds, 1e-3) == ([("0.001", 2), ("0.005", 4), ("+Inf", 5)], 0.107)


@pytest.mark.parametrize("value", [
    None, "x", [1, 2], [1] * 13 + [-1], [1] * 12 + [1.5, 0], [1] * 12 + [True, 0], [1] * 15,
])
def test_a_malformed_histogram_from_a_peer_is_skipped(value):
    assert from_wire(value, LATENCY_BUCKETS_MS) is None


def test_stage_stats_message_carries_cumulative_values():
    stats = StageStats({"up_hop_ms": LATENCY_BUCKETS_MS})
    stats.count("frames_up", 3)
    stats.count("frames_up")
    stats.histograms["up_hop_ms"].observe(0.3)
    msg = stats.message()
    assert msg.counters == {"frames_up": 4}
    assert from_wire(msg.histograms["up_hop_ms"], LATENCY_BUCKETS_MS) == ([0, 1] + [0] * 10, 0.3)


def test_link_counts_include_links_already_closed():
    class Link:
        def __init__(self, dropped, rejected):
            self.dropped, self.rejected = dropped, rejected
    stats, closed = StageStats({}), Link(2, 1)
    stats.link_closed(closed)
    stats.count_links([Link(0, 3), Link(5, 0)])
    assert stats.counters == {"link_dropped": 7, "link_rejected": 4}


@pytest.mark.parametrize("reason, outcome", [
    ("caller hung up", "caller hung up"),
    ("model closed the session (1008: policy)", "model closed the session"),
    ("gave up after 5 reconnects (last: 1011: internal)", "gave up after 5 reconnects"),
    ("model unreachable: OSError: boom", "model unreachable"),
    ("", "unknown"),
])
def test_end_reasons_become_few_labels(reason, outcome):
    assert outcome_of(reason) == outcome


@pytest.mark.e2e
async def test_metrics_after_a_call(stack):
    result = await place_call(stack.url, speech_like(1.0, seed=11), listen_s=2.0, timeout_s=30)
    assert result.received

    def scrape() -> dict:
        with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        return {s.name + str(sorted(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def has_stage_reports() -> dict | None:  # stages report every 2 s: one after the call ended
        samples = scrape()
        ups = [k for k, v in samples.items() if k.startswith("bridge_hop_latency_seconds_count")
               and "'up'" in k and v > 0]
        sessions = [v for k, v in samples.items() if k.startswith("bridge_stage_gauge") and "'sessions'" in k]
        return samples if ups and sessions == [0] * len(sessions) and sessions else None
    samples = wait_for(has_stage_reports, 10, "the stages' Stats", stack.log)
    def value(prefix: str, *labels: str) -> float:
        return sum(v for k, v in samples.items() if k.startswith(prefix) and all(l in k for l in labels))
    assert value("bridge_calls_active") == 0 and value("bridge_calls_ended_total", "caller hung up") == 1
    assert value("bridge_hop_latency_seconds_count", "'down'") > 0
    assert value("bridge_transcoder_frame_seconds_count", "'up'") > 0
    assert value("bridge_transcoder_frame_seconds_count", "'down'") > 0
    health = stack.health()
    assert value("bridge_peer_up", "'transcoder'") == health["transcoders"] >= 1
    assert value("bridge_peer_up", "'model_client'") == health["model_clients"] >= 1
    assert value("bridge_stage_events_total", "frames_up") > 40  # ~1 s of speech and more
    assert value("bridge_stage_gauge", "'sessions'") == 0
    # Every process's loop is watched; the stages' reports carry theirs.
    assert value("bridge_event_loop_lag_seconds_count", "'gateway'") > 0
    for role in ("transcoder", "model_client"):  # present for every peer, and nothing shed on a calm call
        peers = health[role + "s"]
        assert len([k for k in samples if k.startswith("bridge_event_loop_lag_seconds_count")
                    and f"'{role}'" in k and samples[k] > 0]) == peers
        assert value("bridge_stage_events_total", f"'{role}'", "'link_") == 0
        assert len([k for k in samples if k.startswith("bridge_stage_events_total") and f"'{role}'" in k
                    and "'link_rejected'" in k]) == peers


async def test_metrics_refuse_remote_peers_without_the_token():
    handler = make_handler(object(), {}, object(), token="metrics-token-1")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        request = make_mocked_request("GET", "/metrics", headers=headers,
                                      transport=_Transport(("203.0.113.9", 5555)))
        with pytest.raises(web.HTTPForbidden):
            await handler(request)


class _Transport:
    """Just enough of a transport for ``request.remote``: a peer that is not loopback."""

    def __init__(self, peer):
        self.peer = peer

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" else default


async def test_a_blocked_loop_shows_as_lag():
    lag = Histogram(LATENCY_BUCKETS_MS)
    watcher = asyncio.create_task(watch_loop_lag(lag, every_s=0.01))
    await asyncio.sleep(0.05)
    time.sleep(0.12)  # one pass that holds the loop: the watcher's timer runs ≥ 100 ms late
    await asyncio.sleep(0.05)
    watcher.cancel()
    assert sum(lag.counts) >= 3
    assert sum(lag.counts[LATENCY_BUCKETS_MS.index(100.0) + 1:]) >= 1  # above the 100 ms bucket
