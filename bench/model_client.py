"""What one model_client process costs per Gemini session: the real google-genai SDK over TLS.

    python -m bench.model_client [--steps 10,20,30] [--step-s 15] [--env GEMINI_SEND_MS=20]
                                 [--json docs/model_client.json]

Starts the emulator and one ``python -m model_client`` (a temp BRIDGE_RUN_DIR) and plays the model_client's
other two neighbours from this process with synchronous pyzmq: the gateway (a ROUTER at GATEWAY_ENDPOINT
answering Hello and heartbeats) and a transcoder (a DEALER to the model_client's endpoint) that starts
the calls and sends each one AudioUp of 20 ms every 20 ms (spread over the period, as real calls are):
one second of speech-like sound, then two of silence, over and over, so the emulator echoes every
utterance back as the model's turn.

Calls are added step by step. For each step: the model_client's CPU (% of one core), per session, and
what that implies for sessions per core (100 / CPU per session: the process's cost grows with its
sessions); its CPU per message (each AudioUp in and AudioDown out counted); model turns received
against utterances said (every utterance is echoed, so a shortfall is lost replies or a session that
fell behind); each turn's latency as this process sees it, from the last 20 ms of an utterance sent
to the first AudioDown of its reply (the emulator's VAD waiting for ``GEMINI_SILENCE_MS`` of silence
included), p50/p99 over the step, and the model_client's event-loop lag p99 (from its ``Stats``, a
bucket bound); and the emulator's and this generator's CPU apart (the emulator stands in for Google:
~0.3 % of a core per session). Attach py-spy to the pid printed at the start to see where the
model_client's time goes.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from bench.caller_view import percentile_ms, spread
from bench.load import TICKS, cpu_ticks
from bench.report import save_report
from common import messages as m
from common import settings as settings_module
from common.link import new_epoch
from harness.stack import ROOT, clean_env, wait_for

RATE, FRAME = 16000, 320  # PCM16 16 kHz, 20 ms
PERIOD_NS = 20_000_000
SAY_FRAMES, QUIET_FRAMES = 50, 100  # 1 s of sound, 2 s of silence
AUDIO_UP, AUDIO_DOWN, TURN_DONE = m.AudioUp.TAG, m.AudioDown.TAG, m.TurnDone.TAG
LOOP_LAG = "loop_lag_ms"  # the model_client's histogram in its Stats


def caller_cycle() -> list[bytes]:
    """Three seconds of caller audio as 20 ms frames: speech-like sound (a modulated 220 Hz tone and
    noise, about −20 dBFS), then silence the emulator's VAD ends the turn on."""
    rng = np.random.default_rng(7)
    t = np.arange(SAY_FRAMES * FRAME) / RATE
    sound = 4000 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + rng.normal(0, 500, len(t))
    pcm = np.concatenate([sound, np.zeros(QUIET_FRAMES * FRAME)]).astype("<i2").tobytes()
    return [pcm[i * 2 * FRAME:(i + 1) * 2 * FRAME] for i in range(SAY_FRAMES + QUIET_FRAMES)]


class Harness:
    def __init__(self, run_dir: str, extra_env: dict[str, str]):
        gateway_ep = f"ipc://{run_dir}/gateway.ipc"
        self.env = clean_env(Path(run_dir), GATEWAY_ENDPOINT=gateway_ep, BRIDGE_HEARTBEAT_S="1.0",
                             PROCESS_NUM="0", LOG_LEVEL="WARNING", **extra_env)
        self.model_ep = settings_module.load(self.env).model_client_endpoint_for(0)
        self.epoch = new_epoch()
        self.ctx = zmq.Context()
        self.gw = self.ctx.socket(zmq.ROUTER)
        self.gw.setsockopt(zmq.LINGER, 0)
        self.gw.bind(gateway_ep)
        self.tc = self.ctx.socket(zmq.DEALER)
        self.tc.setsockopt(zmq.LINGER, 0)
        self.tc.setsockopt(zmq.IDENTITY, f"transcoder-{self.epoch}".encode())
        self.tc.setsockopt(zmq.SNDHWM, 100000)
        self.tc.connect(self.model_ep)
        self.logs = open(Path(run_dir) / "stages.log", "wb")
        self.emulator = self._start("emulator")
        cert = Path(run_dir) / "emulator-cert.pem"
        wait_for(lambda: os.path.exists(cert), 20, "the emulator's certificate")
        self.model = self._start("model_client")
        self.gw_route: bytes | None = None
        self.frames = caller_cycle()
        self.calls = 0
        self.seq: list[int] = []
        self.due: list[int] = []
        self.counts = {"up": 0, "down": 0, "turns": 0, "ended": 0, "said": 0}
        self.said_at: list[int] = []  # per call: when its latest utterance ended (0: answered)
        self.turn_of: list[int] = []  # per call: its latest model turn
        self.turn_ms: list[float] = []  # end of utterance -> first AudioDown of the reply
        self.loop_lag: list[int] = []  # the model_client's latest loop-lag counts per bucket
        self.last_beat = 0.0

    def _start(self, module: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=self.env, stdout=self.logs,
                                stderr=subprocess.STDOUT)

    def connect(self) -> None:
        self.tc.send(m.pack([m.Hello(role=m.ROLE_TRANSCODER, epoch=self.epoch, capacity=0, endpoint="")]))
        deadline = time.monotonic() + 30
        while self.gw_route is None:
            if time.monotonic() > deadline or self.model.poll() is not None:
                raise SystemExit(f"the model_client did not say hello; see {self.logs.name}")
            self.pump(time.monotonic() + 0.05)

    def add_calls(self, total: int) -> None:
        new = [m.CallStart(call=f"c{i}", call_sid=f"CA{i}", stream_sid=f"MZ{i}", params={},
                           model=self.model_ep) for i in range(self.calls, total)]
        self.tc.send(m.pack(new))
        now = time.monotonic_ns()
        self.seq += [0] * len(new)
        self.said_at += [0] * len(new)
        self.turn_of += [0] * len(new)
        self.due = [now + PERIOD_NS + i * PERIOD_NS // total for i in range(total)]  # spread evenly
        self.calls = total

    # --- the loop -----------------------------------------------------------------------------------

    def play(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.tick()
            self.pump(time.monotonic() + 0.002)

    def tick(self) -> None:
        now, batch = time.monotonic_ns(), []
        for i in range(self.calls):
            if self.due[i] <= now:
                k = self.seq[i] % len(self.frames)
                self.seq[i] += 1
                self.counts["said"] += k == SAY_FRAMES  # an utterance just ended
                if k == SAY_FRAMES - 1:
                    self.said_at[i] = now  # its last sound goes now
                batch.append((AUDIO_UP, f"c{i}", self.seq[i], now, self.frames[k]))
                self.due[i] += PERIOD_NS
        if batch:
            self.counts["up"] += len(batch)
            self.tc.send(msgpack.packb(batch, use_bin_type=True))
        if time.monotonic() - self.last_beat >= 1.0:
            self.last_beat = time.monotonic()
            self.tc.send(m.pack([m.Heartbeat(epoch=self.epoch, load=self.calls)]))
            if self.gw_route is not None:
                self.gw.send_multipart([self.gw_route, m.pack([m.Heartbeat(epoch=self.epoch, load=0)])])

    def pump(self, until: float) -> None:
        poller = zmq.Poller()
        poller.register(self.gw, zmq.POLLIN)
        poller.register(self.tc, zmq.POLLIN)
        while (left := until - time.monotonic()) > 0:
            for sock, _ in poller.poll(max(1, round(left * 1000))):
                if sock is self.gw:
                    self._from_model_to_gateway(*sock.recv_multipart())
                else:
                    self._from_model_to_transcoder(sock.recv())

    def _from_model_to_gateway(self, route: bytes, frame: bytes) -> None:
        for item in msgpack.unpackb(frame, raw=False):
            if item[0] == m.Hello.TAG:
                self.gw_route = route
                hello = m.Hello(role=m.ROLE_GATEWAY, epoch=self.epoch, capacity=0, endpoint="")
                self.gw.send_multipart([route, m.pack([hello])])
            elif item[0] == m.CallEnd.TAG:
                self.counts["ended"] += 1
            elif item[0] == m.Stats.TAG and isinstance(lag := item[3].get(LOOP_LAG), list):
                self.loop_lag = lag[:-1]

    def _reply(self, call: str, turn: int) -> None:
        i = int(call[1:])
        if turn > self.turn_of[i]:
            self.turn_of[i] = turn
            if self.said_at[i]:
                self.turn_ms.append((time.monotonic_ns() - self.said_at[i]) / 1e6)
                self.said_at[i] = 0

    def _from_model_to_transcoder(self, frame: bytes) -> None:
        for item in msgpack.unpackb(frame, raw=False):
            if item[0] == AUDIO_DOWN:
                self.counts["down"] += 1
                self._reply(item[1], item[5])
            elif item[0] == m.AudioRun.TAG and item[1] == AUDIO_DOWN:
                self.counts["down"] += len(item[2])
                for call, turn in zip(item[2], item[7]):
                    self._reply(call, turn)
            elif item[0] == TURN_DONE:
                self.counts["turns"] += 1
            elif item[0] == m.CallEnd.TAG:
                self.counts["ended"] += 1

    # --- one step -----------------------------------------------------------------------------------

    def run_step(self, calls: int, seconds: float, warmup_s: float) -> dict:
        self.add_calls(calls)
        self.play(warmup_s)
        before, cpu0, t0 = dict(self.counts), self._cpu(), time.monotonic()
        lag0, self.turn_ms = list(self.loop_lag), []
        self.play(seconds)
        wall, cpu1, lag1 = time.monotonic() - t0, self._cpu(), list(self.loop_lag)
        self.play(3.0)  # the replies to the step's last utterances
        turn_p50, turn_p99 = spread(self.turn_ms)
        lag_p99 = percentile_ms(list(np.cumsum(lag0 or [0] * len(lag1))), list(np.cumsum(lag1)), 0.99) \
            if lag1 else None
        got = {k: self.counts[k] - before[k] for k in self.counts}
        pct = {k: 100 * (cpu1[k] - cpu0[k]) / wall for k in cpu0}
        per_session = pct["model_client"] / calls
        cpu_s, messages = pct["model_client"] * wall / 100, max(1, got["up"] + got["down"])
        return {"calls": calls, "seconds": seconds, "model_client_cpu_pct": round(pct["model_client"], 1),
                "cpu_pct_per_session": round(per_session, 2),
                "sessions_per_core": round(100 / per_session) if per_session else None,
                "us_per_message": round(1e6 * cpu_s / messages, 1),
                "utterances": got["said"], "turns": got["turns"], "calls_ended": got["ended"],
                "turn_p50_ms": turn_p50, "turn_p99_ms": turn_p99, "loop_lag_p99_ms": lag_p99,
                "emulator_cpu_pct": round(pct["emulator"], 1), "generator_cpu_pct": round(pct["self"], 1)}

    def _cpu(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return {"model_client": cpu_ticks(self.model.pid) / TICKS,
                "emulator": cpu_ticks(self.emulator.pid) / TICKS, "self": own.ru_utime + own.ru_stime}

    def close(self) -> None:
        for proc in (self.model, self.emulator):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.ctx.destroy(linger=0)
        self.logs.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="10,20,30", help="concurrent sessions, step by step")
    p.add_argument("--step-s", type=float, default=15.0, help="measured seconds per step")
    p.add_argument("--warmup-s", type=float, default=4.0, help="before each step's window (sessions open)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the model_client and emulator (repeatable), e.g. GEMINI_SEND_MS=20")
    p.add_argument("--json", default="docs/model_client.json")
    args = p.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.env)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mc-", dir="/tmp") as run_dir:
        harness = Harness(run_dir, extra)
        try:
            harness.connect()
            print(f"model_client pid {harness.model.pid} (py-spy top --pid {harness.model.pid})", flush=True)
            print(f"{'sessions':>8} {'mc CPU %':>8} {'% /session':>10} {'sessions/core':>13} {'µs/msg':>7} "
                  f"{'turns/utterances':>16} {'ended':>5} {'turn p50/p99 ms':>15} {'loop lag p99':>12} "
                  f"{'emulator %':>10} {'generator %':>11}", flush=True)
            for n in (int(s) for s in args.steps.split(",")):
                row = harness.run_step(n, args.step_s, args.warmup_s)
                rows.append(row)
                print(f"{n:>8} {row['model_client_cpu_pct']:>8} {row['cpu_pct_per_session']:>10} "
                      f"{row['sessions_per_core']!s:>13} {row['us_per_message']:>7} "
                      f"{row['turns']:>7}/{row['utterances']:<8} {row['calls_ended']:>5} "
                      f"{_ms(row['turn_p50_ms']):>7}/{_ms(row['turn_p99_ms']):<7} {'≤' + _ms(row['loop_lag_p99_ms']):>12} "
                      f"{row['emulator_cpu_pct']:>10} {row['generator_cpu_pct']:>11}", flush=True)
        finally:
            harness.close()
    report = {"command": "python -m bench.model_client " + " ".join(sys.argv[1:]), "env": extra,
              "load_average": os.getloadavg(), "steps": rows}
    save_report(args.json, report)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()
