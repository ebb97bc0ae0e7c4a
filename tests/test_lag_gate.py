"""Admission by measured loop lag (gateway/lag_gate.py): Stats built by hand, a stand-in pipeline that
holds only what the gate reads; and one e2e where a transcoder is made laggy with SIGSTOP/SIGCONT."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace

import pytest

from common import messages as m
from common.link import Peer
from common.settings import load
from common.stats import LATENCY_BUCKETS_MS, Histogram
from gateway.lag_gate import GATEWAY, LagGate, interval_lag_ms
from harness.stack import Stack, get_json, wait_for

SAMPLES = 20  # one Stats interval: 2 s of samples every 0.1 s


def counts(ms: float, n: int = SAMPLES, base: list[int] | None = None) -> list[int]:
    """Per-bucket counts: ``n`` samples of ``ms`` added to ``base``."""
    h = Histogram(LATENCY_BUCKETS_MS)
    h.counts = list(base) if base else h.counts
    for _ in range(n):
        h.observe(ms)
    return h.counts


@pytest.mark.parametrize("before, after, expected", [
    ([0] * 12, counts(3.0), 2.0 + 3.0 * 0.9),  # all in (2, 5]: 90 % of the way up the bucket
    (counts(3.0), counts(3.0, base=counts(3.0)), 2.0 + 3.0 * 0.9),  # only the interval counts
    ([0] * 12, counts(400.0, 18, base=counts(1.0, 2)), 250.0 + 750.0 * 16 / 18),
    ([0] * 12, counts(1.0, 19, base=counts(400.0, 1)), 0.5 + 0.5 * 18 / 19),  # one long pass in twenty
    ([0] * 12, counts(5000.0), 1000.0),  # above the last bound reads as the last bound
    (counts(1.0), counts(1.0), None),  # no samples in the interval
    (counts(1.0, 40), counts(300.0, 20), 250.0 + 750.0 * 18 / 20),  # went backwards: a restart
])
def test_interval_lag(before, after, expected):
    lag = interval_lag_ms(before, after)
    assert lag == pytest.approx(expected) if expected is not None else lag is None


class Pipeline(SimpleNamespace):
    """What the gate reads of gateway.pipeline.Pipeline: the peers' latest Stats and its own lag."""

    def __init__(self):
        super().__init__(peer_stats={}, loop_lag=Histogram(LATENCY_BUCKETS_MS))
        self.sent: dict[bytes, list[int]] = {}

    def stats(self, route: bytes, lag_ms: float, role: str = m.ROLE_TRANSCODER) -> None:
        """A peer's next Stats, its cumulative loop-lag histogram grown by one interval of ``lag_ms``."""
        self.sent[route] = counts(lag_ms, base=self.sent.get(route))
        peer = Peer(route=route, role=role, epoch="e1", capacity=10, endpoint=f"ipc:///run/{route.decode()}.ipc")
        self.peer_stats[route] = (peer, m.Stats({}, {}, {"loop_lag_ms": [*self.sent[route], 0]}))


def gate(limit_ms: int = 100) -> tuple[LagGate, dict]:
    counters: dict[str, int] = {}
    return LagGate(limit_ms, counters), counters


def test_full_at_the_limit_and_open_only_below_half_of_it(caplog):
    g, counters = gate(100)
    pipeline = Pipeline()
    for lag_ms, full in [(1, False), (1, False), (150, True), (80, True), (60, True), (20, False),
                         (90, False), (120, True)]:
        pipeline.stats(b"tc1", lag_ms)
        with caplog.at_level(logging.WARNING, "gateway.lag_gate"):
            g.look(pipeline)
        assert bool(g.why_full()) is full, lag_ms
    assert counters["admission_closed_loop_lag"] == 2
    assert "transcoder tc1's event loop runs" in g.why_full() and "BRIDGE_ADMIT_LAG_MS=100" in g.why_full()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("admission closed" in t for t in messages) == 2 and sum("open again" in t for t in messages) == 1


def test_the_first_stats_of_a_peer_is_no_interval_yet():
    g, _ = gate(100)
    pipeline = Pipeline()
    pipeline.stats(b"mc", 900, role=m.ROLE_MODEL_CLIENT)  # since its start: a slow start is no verdict
    g.look(pipeline)
    assert not g.why_full()
    pipeline.stats(b"mc", 900, role=m.ROLE_MODEL_CLIENT)
    g.look(pipeline)
    assert g.why_full().startswith("model_client mc's")


def test_the_same_stats_read_twice_is_one_interval():
    g, _ = gate(100)
    pipeline = Pipeline()
    pipeline.stats(b"tc1", 1)
    g.look(pipeline)
    pipeline.stats(b"tc1", 500)
    g.look(pipeline)
    g.look(pipeline)  # nothing new: still full, not an empty interval
    assert g.why_full()


def test_a_peer_that_is_gone_holds_nothing_back():
    g, _ = gate(100)
    pipeline = Pipeline()
    for lag_ms in (1, 500):
        pipeline.stats(b"tc1", lag_ms)
        pipeline.stats(b"tc2", 1)
        g.look(pipeline)
    assert "tc1" in g.why_full()
    del pipeline.peer_stats[b"tc1"]
    g.look(pipeline)
    assert not g.why_full()


def test_the_worst_full_process_is_named():
    g, _ = gate(100)
    for lag_ms in (1, 150):
        g.observe("transcoder a", counts(lag_ms, base=g._counts.get("transcoder a")))
    for lag_ms in (1, 900):
        g.observe("model_client b", counts(lag_ms, base=g._counts.get("model_client b")))
    assert g.why_full().startswith("model_client b's event loop runs 9")


def test_the_gateways_own_lag_counts_too():
    g, _ = gate(100)
    pipeline = Pipeline()
    g.look(pipeline)  # the first snapshot of its own histogram
    for _ in range(SAMPLES):
        pipeline.loop_lag.observe(400.0)
    g._own_at = 0.0  # as if STATS_INTERVAL_S had passed
    g.look(pipeline)
    assert g.why_full().startswith(f"{GATEWAY}'s event loop")


@pytest.mark.parametrize("histogram", [None, [1, 2, 3], "x", [-1] * 13, [1.5] * 13])
def test_a_malformed_histogram_is_skipped(histogram):
    g, _ = gate(100)
    pipeline = Pipeline()
    pipeline.stats(b"tc1", 1)
    g.look(pipeline)
    peer, _ = pipeline.peer_stats[b"tc1"]
    pipeline.peer_stats[b"tc1"] = (peer, m.Stats({}, {}, {"loop_lag_ms": histogram} if histogram else {}))
    g.look(pipeline)
    assert not g.why_full()


def test_the_setting_has_a_default_and_zero_is_off():
    assert load({}).admit_lag_ms == 200
    assert load({"BRIDGE_ADMIT_LAG_MS": "0"}).admit_lag_ms == 0


# --- the whole stack ------------------------------------------------------------------------------


def post_twiml(url: str, call_sid: str) -> str:
    body = urllib.parse.urlencode({"CallSid": call_sid, "AccountSid": "AC" + "0" * 32}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + "/twiml", data=body), timeout=10) as r:
        return r.read().decode()


def readyz(url: str) -> tuple[int, dict]:
    try:
        return 200, get_json(url + "/readyz", timeout=5)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def stutter(pid: int, stop: threading.Event, stopped_s: float = 0.3, running_s: float = 0.02) -> None:
    """Keep ``pid`` mostly stopped, as a process short of CPU is: its timers run ~``stopped_s`` late."""
    try:
        while not stop.is_set():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(stopped_s)
            os.kill(pid, signal.SIGCONT)
            time.sleep(running_s)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.e2e
def test_a_laggy_stage_closes_admission_politely_then_it_opens_again(tmp_path):
    from bench.chaos import Supervisor

    stack = Stack(tmp_path / "run", BRIDGE_TRANSCODERS="1", BRIDGE_ADMIT_LAG_MS="150",
                  BRIDGE_HEARTBEAT_S="1").start()
    try:
        wait_for(lambda: readyz(stack.url)[0] == 200, 30, "ready")
        assert "<Connect>" in post_twiml(stack.url, "CA" + "1" * 32)
        stop = threading.Event()
        pid = next(p["pid"] for name, p in Supervisor(stack).processes().items() if "transcoder" in name)
        stutterer = threading.Thread(target=stutter, args=(pid, stop))
        stutterer.start()
        try:
            status, why = wait_for(lambda: (r := readyz(stack.url))[0] == 503 and r, 30, "/readyz 503")
            assert "transcoder" in why["why"] and "event loop runs" in why["why"]
            answer = post_twiml(stack.url, "CA" + "2" * 32)
            assert "<Say>" in answer and "busy" in answer and "<Connect>" not in answer
        finally:
            stop.set()
            stutterer.join()
        wait_for(lambda: readyz(stack.url)[0] == 200, 30, "/readyz 200 again")
        assert "<Connect>" in post_twiml(stack.url, "CA" + "3" * 32)
        health = stack.health()
        assert any(name.startswith("transcoder") for name in health["loop_lag_ms"])
        events = health["counters"]
        assert events["calls_refused_loop_lag"] >= 1 and events["admission_closed_loop_lag"] >= 1
    finally:
        stack.stop()
