"""What the gateway alone costs per call: Twilio's WebSockets on one side, ZeroMQ on the other.

    python -m bench.gateway [--steps 25,50,100] [--step-s 20] [--json docs/gateway.json]

Starts one ``python -m gateway`` (a temp BRIDGE_RUN_DIR) and plays everything behind it from this
process with synchronous pyzmq: a transcoder (a DEALER that says Hello and heartbeats, and answers
every AudioIn at once with an AudioOut of the same audio: the caller hears itself, a loopback) and a
model_client (a DEALER that only says Hello and that its Gemini backend is up, so calls are
admitted). The callers are bench/lean_caller.py worker processes, as in bench/load.py. So the gateway carries both directions
all the time, 50 frames a second each way per call: more than a real conversation, where the
model mostly speaks while the caller is quiet.

For each step: the gateway's CPU (% of one core), per call, and per message (media frames in from
Twilio plus out to Twilio); the hop gateway → transcoder measured at the fake transcoder from each
AudioIn's ``t_in`` (set when the WebSocket frame arrived) and the hop transcoder → gateway from the
gateway's /metrics, p50/p99; frames the callers heard against frames they sent; the callers' CPU
apart. Attach py-spy to the pid printed at the start to see where the gateway's time goes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

from bench.lean_caller import HANG_S, start_workers, worker_results
from bench.load import SPREAD_S, TICKS, cpu_ticks, hop_counts, percentile_ms
from bench.report import save_report
from common import messages as m
from common.link import new_epoch
from harness.stack import ROOT, clean_env, get_json, wait_for

AUDIO_IN = m.AudioIn.TAG


class BackSide:
    """The transcoder and model_client the gateway sees, in one synchronous loop."""

    def __init__(self, ctx: zmq.Context, gateway_ep: str, model_ep: str):
        self.epoch = new_epoch()
        self.tc = self._dealer(ctx, gateway_ep, m.Hello(role=m.ROLE_TRANSCODER, epoch=self.epoch,
                                                        capacity=100000, endpoint=""))
        self.mc = self._dealer(ctx, gateway_ep, m.Hello(role=m.ROLE_MODEL_CLIENT, epoch=self.epoch,
                                                        capacity=100000, endpoint=model_ep))
        self.mc.send(m.pack([m.Stats(counters={}, gauges={}, histograms={}, backend=m.BACKEND_UP,
                                     backend_why="bench: no model")]))  # for /readyz
        self.up_ms: list[float] = []
        self.counts = {"audio_in": 0, "audio_out": 0, "calls_started": 0, "calls_ended": 0}
        self.last_beat = 0.0

    @staticmethod
    def _dealer(ctx: zmq.Context, endpoint: str, hello: m.Hello) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, f"{hello.role}-{hello.epoch}".encode())
        sock.setsockopt(zmq.SNDHWM, 100000)
        sock.connect(endpoint)
        sock.send(m.pack([hello]))
        return sock

    def pump(self, until: float) -> None:
        poller = zmq.Poller()
        poller.register(self.tc, zmq.POLLIN)
        poller.register(self.mc, zmq.POLLIN)
        while (left := until - time.monotonic()) > 0:
            if time.monotonic() - self.last_beat >= 1.0:
                self.last_beat = time.monotonic()
                for sock in (self.tc, self.mc):
                    sock.send(m.pack([m.Heartbeat(epoch=self.epoch, load=0)]))
            for sock, _ in poller.poll(max(1, round(min(left, 0.5) * 1000))):
                frame = sock.recv()
                if sock is self.tc:
                    self._as_transcoder(frame)

    def _as_transcoder(self, frame: bytes) -> None:
        now, replies = time.monotonic_ns(), []
        for item in msgpack.unpackb(frame, raw=False):
            if item[0] == AUDIO_IN:
                _, call, seq, t_in, audio = item[:5]
                self.up_ms.append((now - t_in) / 1e6)
                replies.append((m.AudioOut.TAG, call, seq, now, audio, 1))
            elif item[0] == m.AudioRun.TAG and item[1] == AUDIO_IN:  # the same, as columns
                _, _, calls, seqs, t_ins, sizes, audio, _ = item
                self.up_ms += [(now - t_in) / 1e6 for t_in in t_ins]
                n = len(calls)
                replies.append((m.AudioRun.TAG, m.AudioOut.TAG, calls, seqs, [now] * n, sizes, audio,
                                [1] * n))
            elif item[0] == m.CallStart.TAG:
                self.counts["calls_started"] += 1
            elif item[0] == m.CallEnd.TAG:
                self.counts["calls_ended"] += 1
        if replies:
            echoed = sum(len(r[2]) if r[0] == m.AudioRun.TAG else 1 for r in replies)
            self.counts["audio_in"] += echoed
            self.counts["audio_out"] += echoed
            self.tc.send(msgpack.packb(replies, use_bin_type=True))


def run_step(gateway: subprocess.Popen, back: BackSide, url: str, calls: int, seconds: float,
             per_worker: int, seed: int) -> dict:
    workers = start_workers(url, calls, per_worker, seed, seconds, SPREAD_S, "--no-echo-check")
    back.pump(time.monotonic() + SPREAD_S + 2.0)
    t0, cpu0, callers0 = time.monotonic(), cpu_ticks(gateway.pid), sum(cpu_ticks(w.pid) for w in workers)
    counts0, hops0, back.up_ms = dict(back.counts), hop_counts(url), []
    back.pump(time.monotonic() + max(1.0, seconds - SPREAD_S - 6.0))
    window = time.monotonic() - t0
    cpu = 100 * (cpu_ticks(gateway.pid) - cpu0) / TICKS / window
    callers = 100 * (sum(cpu_ticks(w.pid) for w in workers) - callers0) / TICKS / window
    hops1, up_ms = hop_counts(url), sorted(back.up_ms)
    messages = sum(back.counts[k] - counts0[k] for k in ("audio_in", "audio_out"))
    deadline = time.monotonic() + seconds + 2 * HANG_S
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        back.pump(time.monotonic() + 0.2)
    outcomes = worker_results(workers, calls, per_worker, timeout=1.0)
    failed = [o["failed"] for o in outcomes if o.get("failed")]
    return {
        "calls": calls, "gateway_cpu_pct": round(cpu, 1), "cpu_pct_per_call": round(cpu / calls, 2),
        "us_per_message": round(1e4 * cpu * window / max(1, messages), 1),
        "up_p50_ms": round(up_ms[len(up_ms) // 2], 2) if up_ms else None,
        "up_p99_ms": round(up_ms[int(len(up_ms) * 0.99)], 2) if up_ms else None,
        "down_p50_ms": percentile_ms(hops0["down"], hops1["down"], 0.5),
        "down_p99_ms": percentile_ms(hops0["down"], hops1["down"], 0.99),
        "frames_sent": sum(o.get("frames_sent", 0) for o in outcomes),
        "frames_heard": sum(o.get("frames_heard", 0) for o in outcomes),
        "calls_failed": len(failed), "why_failed": sorted(set(failed))[:3],
        "callers_cpu_pct": round(callers, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="25,50,100", help="concurrent calls, step by step")
    p.add_argument("--step-s", type=float, default=20.0, help="seconds each step's calls last")
    p.add_argument("--per-worker", type=int, default=50, help="calls per load-generator process")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the gateway (repeatable)")
    p.add_argument("--json", default="docs/gateway.json")
    args = p.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.env)
    steps = [int(s) for s in args.steps.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gw-", dir="/tmp") as run_dir:
        gateway_ep = f"ipc://{run_dir}/gateway.ipc"
        env = clean_env(Path(run_dir), GATEWAY_ENDPOINT=gateway_ep, BRIDGE_HEARTBEAT_S="1.0",
                        LOG_LEVEL="WARNING", BRIDGE_MAX_CALLS=str(2 * max(steps)), **extra)
        url = f"http://127.0.0.1:{env['PORT']}"
        ctx = zmq.Context()
        with open(Path(run_dir) / "gateway.log", "wb") as logs:
            gateway = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=logs,
                                       stderr=subprocess.STDOUT)
        try:
            back = BackSide(ctx, gateway_ep, f"ipc://{run_dir}/model.ipc")
            wait_for(lambda: back.pump(time.monotonic() + 0.1) or get_json(url + "/readyz").get("ready"),
                     30, "the gateway to be ready", Path(run_dir) / "gateway.log")
            print(f"gateway pid {gateway.pid} (py-spy top --pid {gateway.pid})", flush=True)
            print(f"{'calls':>5} {'gw CPU %':>8} {'% /call':>7} {'µs/msg':>6} {'up p50/p99 ms':>14} "
                  f"{'down p50/p99 ms':>15} {'heard/sent':>17} {'failed':>6} {'callers %':>9}", flush=True)
            for i, calls in enumerate(steps):
                row = run_step(gateway, back, url, calls, args.step_s, args.per_worker, 1000 * i)
                rows.append(row)
                print(f"{calls:>5} {row['gateway_cpu_pct']:>8} {row['cpu_pct_per_call']:>7} "
                      f"{row['us_per_message']:>6} {row['up_p50_ms']!s:>6}/{row['up_p99_ms']!s:<7} "
                      f"{'≤'}{row['down_p50_ms']!s:>5}/≤{row['down_p99_ms']!s:<7} "
                      f"{row['frames_heard']:>8}/{row['frames_sent']:<8} {row['calls_failed']:>6} "
                      f"{row['callers_cpu_pct']:>9}", flush=True)
                back.pump(time.monotonic() + 2.0)  # the step's calls end at the gateway
        finally:
            gateway.terminate()
            try:
                gateway.wait(10)
            except subprocess.TimeoutExpired:
                gateway.kill()
            ctx.destroy(linger=0)
    report = {"command": "python -m bench.gateway " + " ".join(sys.argv[1:]), "env": extra,
              "load_average": os.getloadavg(), "steps": rows}
    save_report(args.json, report)


if __name__ == "__main__":
    main()
