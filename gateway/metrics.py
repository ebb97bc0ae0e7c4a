"""``GET /metrics``: Prometheus text, rendered at scrape time from what the gateway already keeps and
from each live peer's latest ``Stats`` (common/stats.py).

Who may scrape: loopback peers (a sidecar, `curl` on the box), or anyone presenting
``Authorization: Bearer $BRIDGE_METRICS_TOKEN`` when that is set (a Prometheus elsewhere). Nothing
in here is secret, but call volumes and peer names are nobody else's business. Labels stay bounded:
roles, peer names, end reasons cut to their first words.
"""

from __future__ import annotations

import hmac
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from common import messages as m
from common.stats import FRAME_BUCKETS_US, LATENCY_BUCKETS_MS, from_wire
from gateway.security import is_loopback_peer

# Each peer histogram: its Prometheus name, help, bucket bounds and the unit its bounds are in.
PEER_HISTOGRAMS = {
    "up_hop_ms": ("bridge_hop_latency_seconds", "Time a frame spends between hops", LATENCY_BUCKETS_MS, 1e-3),
    "up_frame_us": ("bridge_transcoder_frame_seconds", "Transcoder DSP time per 20 ms frame",
                    FRAME_BUCKETS_US, 1e-6),
    "down_frame_us": ("bridge_transcoder_frame_seconds", "Transcoder DSP time per 20 ms frame",
                      FRAME_BUCKETS_US, 1e-6),
    "loop_lag_ms": ("bridge_event_loop_lag_seconds", "How late a process's event loop runs a timer",
                    LATENCY_BUCKETS_MS, 1e-3),
}


class BridgeCollector:
    def __init__(self, pipeline, counters: dict[str, int], admissions):
        self.pipeline, self.counters, self.admissions = pipeline, counters, admissions

    def collect(self):
        p = self.pipeline
        yield GaugeMetricFamily("bridge_calls_active", "Calls with a live stream", value=len(p.calls))
        yield GaugeMetricFamily("bridge_calls_pending", "Calls admitted whose stream has not started",
                                value=self.admissions.pending)
        ended = CounterMetricFamily("bridge_calls_ended", "Calls ended, by why", labels=["outcome"])
        for outcome, n in sorted(p.outcomes.items()):
            ended.add_metric([outcome], n)
        yield ended
        events = CounterMetricFamily("bridge_gateway_events", "Gateway events: rejected inputs, refusals, "
                                     "moves after faults", labels=["event"])
        for name, n in sorted(self._events().items()):
            events.add_metric([name], n)
        yield events
        barge_ins = CounterMetricFamily("bridge_barge_ins", "Model turns cut off because the caller spoke, by "
                                        "who heard it (gateway/pipeline.py BARGE_SOURCES)", labels=["source"])
        for source, n in sorted(p.barge_ins.items()):
            barge_ins.add_metric([source], n)
        yield barge_ins
        tokens = CounterMetricFamily("bridge_model_tokens", "Model tokens of ended calls, as the service "
                                     "reported them (model_client/usage.py)", labels=["direction", "modality"])
        for key, n in sorted(p.tokens.items()):
            tokens.add_metric(key.split("_", 1), n)
        yield tokens
        yield from self._queues()
        yield from self._peers()

    def _events(self) -> dict[str, int]:
        p = self.pipeline
        return {**self.counters, **p.moves, "unknown_call": p.unknown_call,
                "pipeline_rejected": p.router.rejected, "pipeline_dropped": p.router.dropped,
                "peer_disconnects": p.router.disconnects, "call_state_errors": p.state.errors}

    def _queues(self):
        calls = list(self.pipeline.calls.values())
        ahead = GaugeMetricFamily("bridge_playout_queued_seconds", "Model audio queued for the caller "
                                  "(all calls; and the largest)", labels=["stat"])
        queued = [call.playout.queued_ms / 1000 for call in calls]
        ahead.add_metric(["sum"], sum(queued))
        ahead.add_metric(["max"], max(queued, default=0.0))
        yield ahead
        out = GaugeMetricFamily("bridge_twilio_outbox_messages", "Messages waiting for a Twilio socket "
                                "(all calls; and the largest)", labels=["stat"])
        waiting = [call.unwritten for call in calls]
        out.add_metric(["sum"], sum(waiting))
        out.add_metric(["max"], max(waiting, default=0))
        yield out

    def _peers(self):
        p, now = self.pipeline, time.monotonic()
        up = GaugeMetricFamily("bridge_peer_up", "A transcoder or model_client is live", labels=["role", "peer"])
        load = GaugeMetricFamily("bridge_peer_calls", "Calls a peer holds", labels=["role", "peer"])
        age = GaugeMetricFamily("bridge_peer_last_seen_seconds", "Since a peer was last heard from",
                                labels=["role", "peer"])
        for peer in p.router.peers.values():
            labels = [peer.role, _name(peer)]
            up.add_metric(labels, 1)
            load.add_metric(labels, peer.load)
            age.add_metric(labels, max(0.0, now - peer.last_seen))
        yield from (up, load, age)
        hop = HistogramMetricFamily("bridge_hop_latency_seconds", "Time a frame spends between hops: up = "
                                    "gateway to model_client, down = model_client to gateway",
                                    labels=["direction", "peer"])
        hop.add_metric(["down", "gateway"], *_buckets(p.down_hop.counts, p.down_hop.total, LATENCY_BUCKETS_MS, 1e-3))
        dsp = HistogramMetricFamily("bridge_transcoder_frame_seconds", "Transcoder DSP time per 20 ms frame "
                                    "(G.711, resampling, conversions)", labels=["direction", "peer"])
        lag = HistogramMetricFamily("bridge_event_loop_lag_seconds", "How late each process's event loop "
                                    "runs a timer, sampled every 0.1 s: a process short of a core shows here "
                                    "first", labels=["role", "peer"])
        own = _buckets(p.loop_lag.counts, p.loop_lag.total, LATENCY_BUCKETS_MS, 1e-3)
        lag.add_metric(["gateway", "gateway"], *own)
        stage_counters = CounterMetricFamily("bridge_stage_events", "Stage counters (frames, reconnects, "
                                             "hand-overs, duplicates…)", labels=["role", "peer", "event"])
        stage_gauges = GaugeMetricFamily("bridge_stage_gauge", "Stage gauges (sessions, calls held, queued "
                                         "caller audio bytes)", labels=["role", "peer", "name"])
        for peer, stats in p.peer_stats.values():
            name = _name(peer)
            for key, value in stats.counters.items():
                if isinstance(key, str) and type(value) is int:
                    stage_counters.add_metric([peer.role, name, key[:40]], value)
            for key, value in stats.gauges.items():
                if isinstance(key, str) and type(value) is int:
                    stage_gauges.add_metric([peer.role, name, key[:40]], value)
            for key, value in stats.histograms.items():
                spec = PEER_HISTOGRAMS.get(key)
                parsed = from_wire(value, spec[2]) if spec else None
                if parsed is None:
                    continue  # not a histogram we know, or malformed: skipped, never a crash
                if key == "loop_lag_ms":
                    lag.add_metric([peer.role, name], *_buckets(*parsed, spec[2], spec[3]))
                    continue
                family = hop if key == "up_hop_ms" else dsp
                direction = "up" if key.startswith("up") else "down"
                family.add_metric([direction, name], *_buckets(*parsed, spec[2], spec[3]))
        yield from (hop, dsp, lag, stage_counters, stage_gauges)


def _name(peer) -> str:
    return peer.route.decode(errors="replace")[:60] if peer.role == m.ROLE_TRANSCODER else \
        (peer.endpoint.rsplit("/", 1)[-1][:60] or peer.route.decode(errors="replace")[:60])


def _buckets(counts: list[int], total: float, bounds: tuple[float, ...], unit: float):
    """Prometheus wants cumulative (le, count) pairs ending with +Inf, and the sum, in seconds."""
    cumulative, running = [], 0
    for bound, n in zip((*bounds, float("inf")), counts):
        running += n
        cumulative.append(("+Inf" if bound == float("inf") else repr(bound * unit), running))
    return cumulative, total * unit


def make_handler(pipeline, counters: dict[str, int], admissions, token: str):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(pipeline, counters, admissions))

    async def metrics(request: web.Request) -> web.Response:
        if not (is_loopback_peer(request) or (token and hmac.compare_digest(
                request.headers.get("Authorization", ""), f"Bearer {token}"))):
            counters["metrics_refused"] = counters.get("metrics_refused", 0) + 1
            raise web.HTTPForbidden(text="metrics: loopback only, or Authorization: Bearer <BRIDGE_METRICS_TOKEN>")
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
