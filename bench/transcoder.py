"""How many concurrent calls one real transcoder process sustains.

    python -m bench.transcoder [--calls 1000] [--beyond] [--keep-going] [--steps 200,500,1000]
                               [--step-s 10] [--repeat 3] [--nice -10] [--json docs/transcoder.json]

Starts ``python -m transcoder`` (a temp BRIDGE_RUN_DIR) and plays both of its neighbours from this
process: the gateway (a ROUTER at GATEWAY_ENDPOINT that answers Hello and heartbeats) and a lean
model_client (a ROUTER at the endpoint named in every CallStart, echoing each AudioUp back at once as a
24 kHz AudioDown of 20 ms). Calls send one AudioIn per 20 ms each at real-time rate, spread evenly
over the 20 ms period as real streams are; every tick (1 ms) the frames that are due leave as one
AudioRun, as the gateway sends whatever is ready in one pass.

The ramp adds calls step by step up to ``--calls`` (and beyond while it passes, with --beyond). A step
passes when both directions' p99 per-frame latency through the transcoder is under 5 ms and no frame
is lost. Latency: up = AudioUp arrival − AudioIn's t_in; down = AudioOut arrival − AudioDown's t_in,
so each is one transcoder pass plus two ZeroMQ ipc hops, and any lateness of this load generator. Its
own CPU is reported apart from the transcoder's (the box has 2 cores). With ``--repeat 3`` a step is
measured three times and judged by its median window, because the box's neighbours stall it now and
then; a frame lost in any window still fails the step.

Each step also reports the transcoder's CPU per frame (both directions counted; a call is 100 frames a
second) and how loaded the box is ("box ×": a LUT-decode yardstick timed now, against its 0.75 µs
on a quiet box) and the share of the box's CPU time the hypervisor gave to
other guests ("steal", from /proc/stat). On a shared box, latency fails first: read all three.

The load generator stays lean: synchronous pyzmq, audio packed and read as plain msgpack arrays in the
schema's field order, as AudioRuns the way the real stages send it (control messages go through
common/messages).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import zmq

from bench.dsp import ANCHOR_LUT_US, reference_us
from bench.load import box_ticks, steal_pct
from bench.report import save_report
from common import messages as m
from common.link import new_epoch

P99_LIMIT_MS = 5.0
SILENCE_ULAW = bytes([0xFF]) * 160
ROOT = Path(__file__).resolve().parents[1]
AUDIO_IN, AUDIO_UP, AUDIO_DOWN, AUDIO_OUT = m.AudioIn.TAG, m.AudioUp.TAG, m.AudioDown.TAG, m.AudioOut.TAG
RUN = m.AudioRun.TAG


def audio_columns(item: list, kind: int) -> tuple[list, list, list] | None:
    """(calls, seqs, t_ins) of a raw audio item of ``kind``, a single message or a run; else None."""
    if item[0] == kind:
        return [item[1]], [item[2]], [item[3]]
    if item[0] == RUN and item[1] == kind:
        return item[2], item[3], item[4]
    return None


def worst_p99(window: dict) -> float:
    """A measured window's worse direction (no latency at all counts as worst)."""
    return max(window["up_p99_ms"] or 1e9, window["down_p99_ms"] or 1e9)


def caller_frames(count: int = 50) -> list[bytes]:
    """A second of speech-like µ-law to cycle through (not silence: every path does real work)."""
    from common.g711 import encode_ulaw
    rng = np.random.default_rng(3)
    t = np.arange(160 * count) / 8000
    pcm = 6000 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + rng.normal(0, 800, len(t))
    ulaw = encode_ulaw(np.clip(pcm, -32768, 32767).astype(np.int16))
    return [ulaw[i * 160:(i + 1) * 160] for i in range(count)]


def model_chunk() -> bytes:
    """The echo's 24 kHz audio: 20 ms of a 440 Hz tone (it is only load)."""
    t = np.arange(480) / 24000
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


@dataclass
class Step:
    calls: int
    seconds: float
    start_ns: int  # frames stamped before this belong to the warm-up
    up_ms: list = field(default_factory=list)
    down_ms: list = field(default_factory=list)
    sent_in: int = 0
    got_up: int = 0
    sent_down: int = 0
    got_out: int = 0
    late_ticks: int = 0

    def summary(self, tc_cpu: float, gen_cpu: float, tc_cpu_s: float) -> dict:
        def pct(values, q):
            return round(float(np.percentile(values, q)), 2) if values else None
        lost_up, lost_down = self.sent_in - self.got_up, self.sent_down - self.got_out
        p99 = max(pct(self.up_ms, 99) or 1e9, pct(self.down_ms, 99) or 1e9)
        return {"calls": self.calls, "seconds": self.seconds, "frames_in": self.sent_in,
                "up_p50_ms": pct(self.up_ms, 50), "up_p99_ms": pct(self.up_ms, 99),
                "up_max_ms": pct(self.up_ms, 100), "down_p50_ms": pct(self.down_ms, 50),
                "down_p99_ms": pct(self.down_ms, 99), "down_max_ms": pct(self.down_ms, 100),
                "lost_up": lost_up, "lost_down": lost_down, "transcoder_cpu_pct": round(tc_cpu, 1),
                "loadgen_cpu_pct": round(gen_cpu, 1), "late_ticks": self.late_ticks,
                # transcoder CPU per frame, both directions counted (a call is 100 frames a second)
                "tc_cpu_us_per_frame": round(1e6 * tc_cpu_s / max(1, self.got_up + self.got_out), 1),
                "passed": p99 < P99_LIMIT_MS and lost_up == 0 and lost_down == 0}


class Harness:
    """The transcoder process, and the two ROUTERs around it."""

    def __init__(self, run_dir: str, tick_ms: float, extra_env: dict, nice: int = 0):
        self.run_dir, self.tick_s = run_dir, tick_ms / 1000
        self.gateway_ep = f"ipc://{run_dir}/gateway.ipc"
        self.model_ep = f"ipc://{run_dir}/model.ipc"
        self.ctx = zmq.Context()
        self.gw = self._router(self.gateway_ep)
        self.mc = self._router(self.model_ep)
        self.epoch = new_epoch()
        self.gw_route = self.mc_route = None
        env = {**os.environ, "BRIDGE_RUN_DIR": run_dir, "GATEWAY_ENDPOINT": self.gateway_ep,
               "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **extra_env}
        self.log = open(Path(run_dir) / "transcoder.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "transcoder"], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=(lambda: os.nice(nice)) if nice else None)
        self.frames, self.chunk = caller_frames(), model_chunk()
        self.started = 0  # calls started so far
        self.seq: list[int] = []
        self.slots: list[list[int]] = []  # per tick of the 20 ms period: the calls whose frame falls due
        self.slot, self.slot_due = 0, 0  # the next slot, and when it falls due (monotonic ns)
        self.step: Step | None = None
        self.last_beat = 0.0
        self.started_at_model = 0  # CallStarts the transcoder passed on

    def _router(self, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, 100000)
        sock.setsockopt(zmq.RCVHWM, 100000)
        sock.bind(endpoint)
        return sock

    def hello(self, role: str, endpoint: str) -> bytes:
        return m.pack([m.Hello(role=role, epoch=self.epoch, capacity=0, endpoint=endpoint)])

    # --- receiving ------------------------------------------------------------------------------

    def drain(self, sock: zmq.Socket) -> None:
        while True:
            try:
                route, frame = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic_ns()
            items = msgpack.unpackb(frame, raw=False)
            if sock is self.gw:
                self.gw_route = route
                self._from_transcoder_to_gateway(route, items, now)
            else:
                self.mc_route = route
                self._from_transcoder_to_model(route, items, now)

    def _from_transcoder_to_gateway(self, route: bytes, items: list, now: int) -> None:
        for item in items:
            if (audio := audio_columns(item, AUDIO_OUT)) is not None:
                if self.step:
                    late = [(now - t) / 1e6 for t in audio[2] if t >= self.step.start_ns]
                    self.step.got_out += len(late)
                    self.step.down_ms += late
            elif item[0] == m.Hello.TAG:
                self.gw.send_multipart([route, self.hello(m.ROLE_GATEWAY, "")])

    def _from_transcoder_to_model(self, route: bytes, items: list, now: int) -> None:
        echo = []
        for item in items:
            if (audio := audio_columns(item, AUDIO_UP)) is not None:
                calls, seqs, t_ins = audio
                if self.step:
                    late = [(now - t) / 1e6 for t in t_ins if t >= self.step.start_ns]
                    self.step.got_up += len(late)
                    self.step.up_ms += late
                n, t = len(calls), time.monotonic_ns()  # the echo: a run of AudioDown, turn 1
                echo.append((RUN, AUDIO_DOWN, calls, seqs, [t] * n, [len(self.chunk)] * n, self.chunk * n,
                             [1] * n))
                if self.step:
                    self.step.sent_down += n
            elif item[0] == m.Hello.TAG:
                self.mc.send_multipart([route, self.hello(m.ROLE_MODEL_CLIENT, self.model_ep)])
            elif item[0] == m.CallStart.TAG:
                self.started_at_model += 1
        if echo:
            self.mc.send_multipart([route, msgpack.packb(echo, use_bin_type=True)])

    def pump(self, until: float) -> None:
        """Receive (and echo) until ``until`` (monotonic seconds)."""
        poller = zmq.Poller()
        poller.register(self.gw, zmq.POLLIN)
        poller.register(self.mc, zmq.POLLIN)
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            for sock, _ in poller.poll(max(1, round(left * 1000))):
                self.drain(sock)

    # --- sending --------------------------------------------------------------------------------

    def connect(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while self.gw_route is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the transcoder did not say hello; see {self.log.name}")
            self.pump(time.monotonic() + 0.05)

    def add_calls(self, total: int) -> bool:
        """Start calls up to ``total``; False if the transcoder did not pass them all on in time."""
        new = [m.CallStart(call=f"c{i}", call_sid=f"CA{i}", stream_sid=f"MZ{i}", params={},
                           model=self.model_ep) for i in range(self.started, total)]
        for i in range(0, len(new), 200):
            self.gw.send_multipart([self.gw_route, m.pack(new[i:i + 200])])
        self.seq += [0] * len(new)
        ticks = max(1, round(0.02 / self.tick_s))
        self.slots = [list(range(k, total, ticks)) for k in range(ticks)]  # spread evenly
        self.slot, self.slot_due = 0, time.monotonic_ns()
        self.started = total
        deadline = time.monotonic() + 20
        while self.started_at_model < total:
            if time.monotonic() > deadline:
                print(f"only {self.started_at_model} of {total} calls reached the model side", flush=True)
                return False
            self.pump(time.monotonic() + 0.02)
        return True

    def tick(self) -> None:
        """Send the frames of every slot that has fallen due, as one run."""
        now = time.monotonic_ns()
        calls, seqs, audio = [], [], []
        frames, seq, tick_ns = self.frames, self.seq, round(self.tick_s * 1e9)
        for _ in self.slots:  # a whole period at most: a call's frame leaves at most once a tick
            if self.slot_due > now:
                break
            for i in self.slots[self.slot]:
                seq[i] += 1
                calls.append(f"c{i}")
                seqs.append(seq[i])
                audio.append(frames[seq[i] % 50])
            self.slot = (self.slot + 1) % len(self.slots)
            self.slot_due += tick_ns
        self.slot_due = max(self.slot_due, now - 20_000_000)  # more than a period late: skip ahead
        if calls:  # one run of AudioIn, as the gateway sends what is ready in one pass
            n = len(calls)
            if self.step:
                self.step.sent_in += n
            run = (RUN, AUDIO_IN, calls, seqs, [now] * n, [160] * n, b"".join(audio), [s * 20 for s in seqs])
            self.gw.send_multipart([self.gw_route, msgpack.packb([run], use_bin_type=True)])
        if time.monotonic() - self.last_beat >= 1.0:
            self.last_beat = time.monotonic()
            beat = m.pack([m.Heartbeat(epoch=self.epoch, load=0)])
            self.gw.send_multipart([self.gw_route, beat])
            if self.mc_route:
                self.mc.send_multipart([self.mc_route, beat])

    def run_step(self, calls: int, seconds: float, warmup_s: float, repeat: int = 1) -> dict | None:
        """``repeat`` measured windows at ``calls``: the row is the window with the median p99 (this
        box's neighbours stall it now and then), and it passes only if no window lost a frame."""
        if not self.add_calls(calls):
            return None
        self.play(warmup_s)
        windows = sorted((self.measure(calls, seconds) for _ in range(repeat)), key=worst_p99)
        row = windows[len(windows) // 2]
        lost = sum(w["lost_up"] + w["lost_down"] for w in windows)
        if repeat > 1:
            row["windows_p99_ms"] = [worst_p99(w) for w in windows]
        return {**row, "passed": row["passed"] and lost == 0, "lost_in_any_window": lost}

    def measure(self, calls: int, seconds: float) -> dict:
        slowdown = reference_us(2000) / ANCHOR_LUT_US  # how loaded the box is right now
        self.step = step = Step(calls, seconds, time.monotonic_ns())
        tc0, gen0, t0, box0 = self.transcoder_cpu(), self.own_cpu(), time.monotonic(), box_ticks()
        self.play(seconds)
        tc1, gen1, wall, box1 = self.transcoder_cpu(), self.own_cpu(), time.monotonic() - t0, box_ticks()
        self.pump(time.monotonic() + 0.3)  # replies still in flight count; nothing new is sent
        self.step = None
        return {**step.summary(100 * (tc1 - tc0) / wall, 100 * (gen1 - gen0) / wall, tc1 - tc0),
                "box_slowdown": round(slowdown, 2), "steal_pct": steal_pct(box0, box1)}

    def play(self, seconds: float) -> None:
        """Send every call's frames as they fall due, one batch per tick, for ``seconds``."""
        t0 = next_tick = time.monotonic()
        while time.monotonic() - t0 < seconds:
            self.tick()
            next_tick += self.tick_s
            if next_tick < time.monotonic():
                if self.step:
                    self.step.late_ticks += 1
                next_tick = time.monotonic()
            self.pump(next_tick)

    def transcoder_cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def own_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.ctx.destroy(linger=0)
        self.log.close()


def ramp(target: int, beyond: bool) -> list[int]:
    steps = [n for n in (10, 50, 100, 200, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000) if n < target]
    steps.append(target)
    if beyond:
        steps += [n for n in (1200, 1500, 2000, 2500, 3000, 4000) if n > target]
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description="calls one transcoder process sustains")
    parser.add_argument("--calls", type=int, default=1000, help="ramp up to this many calls")
    parser.add_argument("--beyond", action="store_true", help="keep ramping past --calls while passing")
    parser.add_argument("--step-s", type=float, default=10.0, help="measured seconds per step")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=1, help="measured windows per step; the step's "
                        "row is the one with the median p99, and any frame lost in any window fails it")
    parser.add_argument("--tick-ms", type=float, default=1.0)
    parser.add_argument("--steps", default="", help="comma-separated call counts instead of the ramp")
    parser.add_argument("--keep-going", action="store_true", help="run every step even after a failure "
                        "(max calls is then the largest passing step)")
    parser.add_argument("--resampler", default="fir", help="BRIDGE_RESAMPLER for the transcoder")
    parser.add_argument("--blas-threads", default="1", help="OPENBLAS_NUM_THREADS for the transcoder "
                        "(python -m transcoder defaults it to 1: one core per transcoder)")
    parser.add_argument("--nice", type=int, default=0, help="niceness for the transcoder and this load "
                        "generator (e.g. -10 as root, to shield the measurement from other work on a "
                        "shared box; reported in the JSON)")
    parser.add_argument("--json", default="docs/transcoder.json")
    args = parser.parse_args()
    extra = {"BRIDGE_RESAMPLER": args.resampler, "OPENBLAS_NUM_THREADS": args.blas_threads}
    rows, best = [], 0
    if args.nice:
        os.nice(args.nice)
    with tempfile.TemporaryDirectory(prefix="bench-tc-", dir="/tmp") as run_dir:
        harness = Harness(run_dir, args.tick_ms, extra, args.nice)
        try:
            harness.connect()
            print(f"transcoder pid {harness.proc.pid} (py-spy top --pid {harness.proc.pid})", flush=True)
            print(f"{'calls':>6} {'up p50/p99/max ms':>20} {'down p50/p99/max ms':>20} {'lost':>11} "
                  f"{'tc CPU':>7} {'µs/frame':>8} {'gen CPU':>7} {'steal':>6} result", flush=True)
            steps = [int(n) for n in args.steps.split(",")] if args.steps else ramp(args.calls, args.beyond)
            for n in steps:
                row = harness.run_step(n, args.step_s, args.warmup_s, args.repeat)
                if row is None:  # the previous step left it too far behind to take more calls
                    break
                rows.append(row)
                print(f"{n:>6} {row['up_p50_ms']!s:>6}/{row['up_p99_ms']}/{row['up_max_ms']!s:<7} "
                      f"{row['down_p50_ms']!s:>6}/{row['down_p99_ms']}/{row['down_max_ms']!s:<7} "
                      f"{row['lost_up']:>5}/{row['lost_down']:<5} {row['transcoder_cpu_pct']:>6}% "
                      f"{row['tc_cpu_us_per_frame']:>8} {row['loadgen_cpu_pct']:>6}% {row['steal_pct']:>5}% "
                      f"{'pass' if row['passed'] else 'FAIL'} (box ×{row['box_slowdown']})", flush=True)
                if row["passed"]:
                    best = max(best, n)
                elif not args.keep_going:
                    break
        finally:
            harness.close()
    print(f"\nmax calls with p99 < {P99_LIMIT_MS} ms both ways and no frame lost: {best}")
    result = {"command": "python -m bench.transcoder " + " ".join(sys.argv[1:]), "max_calls": best,
              "p99_limit_ms": P99_LIMIT_MS, "tick_ms": args.tick_ms, "resampler": args.resampler,
              "blas_threads": args.blas_threads, "nice": args.nice, "load_average": os.getloadavg(),
              "steps": rows}
    save_report(args.json, result)


if __name__ == "__main__":
    main()
