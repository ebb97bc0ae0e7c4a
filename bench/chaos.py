"""Faults under load, through the real stack (supervisord, emulator, real SDK, softphone):

- ``transcoder``: kill -9 the busiest transcoder mid-call (supervisord restarts it);
- ``model_client``: kill -9 one of two model_clients mid-call;
- ``goaway``: the emulator sends goAway a few seconds into every connection, then closes it;
- ``drop``: the emulator drops every connection (no close frame) a few seconds in;
- ``refused``: as ``drop``, and every resumption handle is refused: fresh sessions told the story so far;
- ``gateway``: two stacks share a real redis-server behind a load balancer (bench/failover.py); the
  gateway holding the calls is killed and stays down; each caller follows Twilio's ``<Redirect>`` to
  the other stack, which resumes the call from the handle kept in Redis.

Every call says three utterances with pauses between them; the emulator's echo persona says each
back. A call is *lost* if it ended early or an echo never came. For each utterance the echo is
aligned piece by piece (200 ms) with what was said: a piece missing from the echo is caller audio
lost, and a piece that comes back shifted against the rest means audio went missing (or came twice)
inside the utterance. The *gap* of an utterance is the larger of the two, in ms.

    python -m bench.chaos [--calls 20] [--faults transcoder,model_client,goaway,drop,refused,gateway]
                          [--json docs/chaos.json]

The same helpers drive tests/test_chaos.py (one call per fault, asserted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from xmlrpc.client import ServerProxy

import numpy as np
from supervisor.xmlrpc import SupervisorTransport

from bench.failover import Failover
from bench.report import save_report
from common.g711 import decode_ulaw
from harness.stack import RedisServer, Stack, wait_for
from softphone.caller import CallError, place_call
from softphone.speech import silence, speech_like

RATE = 8000
PIECE_S = 0.2  # the echo is aligned in pieces this long
FOUND_CORR = 0.8  # a piece is in the echo if it correlates this well somewhere
VOICED_RMS = 300.0  # pieces quieter than this (int16) are pauses between syllables: not checked

# Calls start over the first 2 s and say their first utterance from 0.3 s; a process is killed 6 s in:
# for each call, between the end of the first pause and the middle of the second utterance. Pauses
# are long (4 s) so that an echo made late by the load is not talked over by the next utterance (a
# barge-in, rightly, which would cut the echo and count as audio lost).
KILL_AT_S = 6.0

# Each stack's environment for a fault: short timers so a call sees the fault within seconds.
FAULT_ENV = {
    "transcoder": {"BRIDGE_TRANSCODERS": "2"},
    "model_client": {"BRIDGE_MODEL_CLIENTS": "2"},
    "goaway": {"EMULATOR_GOAWAY_AFTER_S": "5"},
    "drop": {"EMULATOR_DROP_AFTER_S": "5", "GEMINI_RECONNECT_STABLE_S": "1"},
    "refused": {"EMULATOR_DROP_AFTER_S": "6", "EMULATOR_REFUSE_HANDLES": "true",
                "GEMINI_RECONNECT_STABLE_S": "1"},
}
BASE_ENV = {"GEMINI_SILENCE_MS": "300", "LOG_FORMAT": "json", "BRIDGE_HEARTBEAT_S": "0.25"}  # tests


# --- the script a caller follows --------------------------------------------------------------

@dataclass
class Script:
    """Utterances (int16, 8 kHz) with pauses; ``starts[i]`` is where utterance i begins (samples)."""
    audio: np.ndarray
    utterances: list[np.ndarray]
    starts: list[int]


def script(seed: int, lengths=(1.0, 1.6, 1.0), pause_s: float = 2.2, lead_s: float = 0.3) -> Script:
    parts, utterances, starts, at = [silence(lead_s)], [], [], round(lead_s * RATE)
    for i, length in enumerate(lengths):
        said = speech_like(length, seed=seed * 10 + i)
        utterances.append(said)
        starts.append(at)
        parts += [said, silence(pause_s)]
        at += len(said) + round(pause_s * RATE)
    return Script(np.concatenate(parts), utterances, starts)


# --- what came back -----------------------------------------------------------------------------

@dataclass
class Echo:
    found: float  # share of the utterance's voiced pieces found in what the caller heard
    missing_ms: float  # voiced pieces not found
    shift_ms: float  # how far the found pieces disagree on the delay (audio lost or doubled inside)
    delay_s: float  # utterance end → its echo's start: the reply latency the caller noticed

    @property
    def gap_ms(self) -> float:
        return max(self.missing_ms, self.shift_ms)


def _xcorr(piece: np.ndarray, window: np.ndarray) -> tuple[int, float]:
    n = len(piece)
    if len(window) < n:
        return 0, 0.0
    size = len(window) + n
    spectrum = np.fft.rfft(window, size) * np.conj(np.fft.rfft(piece, size))
    xc = np.fft.irfft(spectrum, size)[: len(window) - n + 1]
    # Normalise by the window's energy at each lag, so a loud stretch elsewhere does not win; the
    # floor keeps rounding noise in silent stretches from scoring.
    norm = np.linalg.norm(piece) + 1e-9
    running = np.concatenate(([0.0], np.cumsum(window ** 2)))  # windowed sums in O(len), not O(len × n)
    energy = np.sqrt(np.maximum(running[n:] - running[:-n], 0.0))
    score = xc / (np.maximum(energy, 0.25 * norm) * norm)
    lag = int(np.argmax(score))
    return lag, float(score[lag])


def echo_of(utterance: np.ndarray, start: int, heard: np.ndarray, search_s: float = 6.0,
            slack_s: float = 0.3) -> Echo:
    """Where ``utterance`` (said at sample ``start``) came back in ``heard``: first as a whole (the
    best, i.e. most complete, echo), then piece by piece within ``slack_s`` of that. Speech-like
    pieces resemble each other, and a reply cut by a dropped connection is heard again in full, so a
    piece is only looked for near where its own echo must be; audio lost beyond ``slack_s`` shows up
    as missing pieces instead of a shift."""
    said = decode_ulaw(_ulaw(utterance)).astype(np.float64)
    window = heard[start + len(said): start + len(said) + round(search_s * RATE) + len(said)]
    whole, corr = _xcorr(said, window)
    step, slack = round(PIECE_S * RATE), round(slack_s * RATE)
    shifts, missing, voiced = [], 0, 0
    for at in range(0, len(said) - step + 1, step):
        piece = said[at:at + step]
        if np.sqrt(np.mean(piece ** 2)) < VOICED_RMS:
            continue
        voiced += 1
        lo = max(0, whole + at - slack)
        lag, score = _xcorr(piece, window[lo: whole + at + slack + step])
        if score >= FOUND_CORR:
            shifts.append(lo + lag - (whole + at))
        else:
            missing += 1
    if not shifts:
        return Echo(0.0, voiced * PIECE_S * 1000, 0.0, float("inf"))
    rel = np.array(shifts)
    return Echo(len(shifts) / max(voiced, 1), missing * PIECE_S * 1000,
                float(np.max(rel) - np.min(rel)) / RATE * 1000, whole / RATE)


def _ulaw(x: np.ndarray) -> bytes:
    from common.g711 import encode_ulaw
    return encode_ulaw(x)


def heard_of(result) -> np.ndarray:
    return decode_ulaw(result.heard).astype(np.float64)


# --- the stack's processes ------------------------------------------------------------------------

class Supervisor:
    """supervisord's XML-RPC over the run directory's socket."""

    def __init__(self, stack: Stack):
        self.stack, self.sock = stack, f"unix://{stack.run_dir}/supervisor.sock"

    def processes(self) -> dict[str, dict]:
        transport = SupervisorTransport(None, None, self.sock)
        try:
            infos = ServerProxy("http://127.0.0.1", transport=transport).supervisor.getAllProcessInfo()
        finally:
            transport.close()
        return {f"{p['group']}:{p['name']}": p for p in infos}

    def pid(self, name: str) -> int:
        return self.processes()[name]["pid"]

    def kill9(self, name: str) -> int:
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self, name: str, wait: bool = True) -> None:
        transport = SupervisorTransport(None, None, self.sock)
        try:
            ServerProxy("http://127.0.0.1", transport=transport).supervisor.stopProcess(name, wait)
        finally:
            transport.close()

    def kill9_and_keep_down(self, name: str) -> int:
        """SIGKILL, and supervisord does not start it again: told to stop the process first, it waits
        for it to exit. Frozen meanwhile (SIGSTOP), the process never runs its SIGTERM handler, so the
        SIGKILL is the death its peers see. (A stop after the kill could come while supervisord is
        already starting it again: the new process takes the port back for an instant and drops
        whatever connects then.)"""
        pid = self.pid(name)
        os.kill(pid, signal.SIGSTOP)
        self.stop(name, wait=False)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: self.processes()[name]["statename"] == "STOPPED", 10, f"{name} to stay down",
                 self.stack.log)
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 20.0) -> int:
        def restarted():
            p = self.processes()[name]
            return p["pid"] if p["statename"] == "RUNNING" and p["pid"] not in (0, old_pid) else 0
        return wait_for(restarted, timeout, f"supervisord to restart {name}", self.stack.log)


def log_records(stack: Stack) -> list[dict]:
    """The stack's JSON log lines (LOG_FORMAT=json)."""
    records = []
    for line in stack.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def holder(stack: Stack, call_sid: str, role: str) -> str | None:
    """The supervisord name of the process of ``role`` that holds the call, from the logs."""
    marker = "call pinned here" if role == "transcoder" else "session starting"
    procs = [r["process"] for r in log_records(stack)
             if r.get("call_sid") == call_sid and r["message"].startswith(marker)
             and r["process"].startswith(role)]
    return f"{role}:{procs[-1]}" if procs else None


def busiest(stack: Stack, role: str) -> str:
    """The process of ``role`` that holds the most calls now (by the logs' pinning lines)."""
    counts: dict[str, int] = {}
    for r in log_records(stack):
        if r["process"].startswith(role) and r["message"].startswith(
                "call pinned here" if role == "transcoder" else "session starting"):
            counts[r["process"]] = counts.get(r["process"], 0) + 1
    return f"{role}:{max(counts, key=counts.get)}"


def emulator_log(stack: Stack) -> list[dict]:
    ctx = ssl.create_default_context(cafile=str(stack.run_dir / "emulator-cert.pem"))
    url = f"https://127.0.0.1:{stack.env['EMULATOR_PORT']}/healthz"
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return json.loads(r.read())["log"]


# --- one fault, many calls --------------------------------------------------------------------------

@dataclass
class Outcome:
    call_sid: str
    lost: str = ""  # why the call counts as lost ("" if it survived)
    echoes: list[Echo] = field(default_factory=list)


async def run_call(url: str, seed: int, call_sid: str, listen_s: float = 1.5,
                   follow_redirect: bool = False, pause_s: float = 4.0) -> tuple[Script, object]:
    plan = script(seed, pause_s=pause_s)
    try:
        result = await place_call(url, plan.audio, listen_s=listen_s, call_sid=call_sid, timeout_s=90,
                                  follow_redirect=follow_redirect)
    except CallError as e:
        return plan, e
    return plan, result


def judge(plan: Script, result, fault: str = "") -> Outcome:
    """Lost: the bridge ended the call, or an echo never came. A gateway's death takes with it what
    the caller said since the model's last handle (it kept that audio), so there only the last
    utterance, said on the new stream, must come back; the others count in ``utterances_lost``."""
    if isinstance(result, Exception):
        return Outcome(getattr(result, "call_sid", "?"), lost=f"call failed: {result}")
    outcome = Outcome(result.call_sid)
    if result.closed_by != "caller":
        outcome.lost = "the bridge ended the call"
    heard = heard_of(result)
    for utterance, start in zip(plan.utterances, plan.starts):
        echo = echo_of(utterance, start, heard)
        outcome.echoes.append(echo)
        must = fault != "gateway" or start == plan.starts[-1]
        if echo.found < 0.5 and must and not outcome.lost:
            outcome.lost = "an echo never came back"
    return outcome


async def inject(stack: Stack, fault: str, at_s: float) -> str:
    """Kill the busiest process of the fault's role ``at_s`` into the run; "" for emulator faults."""
    if fault not in ("transcoder", "model_client", "gateway"):
        return ""
    await asyncio.sleep(at_s)
    sup = Supervisor(stack)
    if fault == "gateway":
        await asyncio.to_thread(sup.kill9_and_keep_down, "gateway:gateway")
        return "gateway:gateway"
    name = await asyncio.to_thread(busiest, stack, fault)
    pid = await asyncio.to_thread(sup.kill9, name)
    await asyncio.to_thread(sup.wait_restarted, name, pid)
    return name


async def run_fault(fault: str, calls: int, run_dir: Path, spread_s: float = 2.0,
                    heartbeat_s: float = 1.0) -> dict:
    env = {**BASE_ENV, "BRIDGE_HEARTBEAT_S": str(heartbeat_s), **FAULT_ENV.get(fault, {})}
    if fault == "gateway":
        return await _run_gateway_fault(env, calls, run_dir, spread_s)
    stack = Stack(run_dir, **env).start()
    try:
        return await _drive(fault, stack, stack.url, stack, calls, spread_s)
    finally:
        stack.stop()


async def _run_gateway_fault(env: dict, calls: int, run_dir: Path, spread_s: float) -> dict:
    redis_server = RedisServer(run_dir / "redis").start()
    stacks: list[Stack] = []
    try:
        async with Failover() as lb:
            shared = dict(env, REDIS_URL=redis_server.url, PUBLIC_URL=lb.url, BRIDGE_SECRET="bench-chaos-secret")
            stacks = [Stack(run_dir / "one", **shared).start(), Stack(run_dir / "two", **shared).start()]
            lb.backends = [int(s.env["PORT"]) for s in stacks]
            return await _drive("gateway", stacks[0], lb.url, stacks[1], calls, spread_s)
    finally:
        for stack in stacks:
            stack.stop()
        redis_server.stop()


async def _drive(fault: str, victim: Stack, url: str, survivor: Stack, calls: int, spread_s: float) -> dict:
    """The calls, placed at ``url``, with the fault injected into ``victim`` ``KILL_AT_S`` in; the state
    is read from ``survivor`` (the same stack unless the fault moves the calls)."""
    started = time.monotonic()
    tasks = []
    for i in range(calls):
        sid = f"CA{fault[:4]}{i:028d}"[:34]
        tasks.append(asyncio.create_task(run_call(url, 1000 + i, sid, follow_redirect=url != victim.url)))
        await asyncio.sleep(spread_s / calls)
    killer = asyncio.create_task(inject(victim, fault, KILL_AT_S - (time.monotonic() - started)))
    results = await asyncio.gather(*tasks)
    killed = await killer
    outcomes = [judge(plan, result, fault) for plan, result in results]
    gaps = [g for _, r in results if not isinstance(r, Exception) for g in r.stream_gaps_s]
    return summarise(fault, outcomes, killed, survivor.health(), emulator_log(survivor), gaps)


def summarise(fault: str, outcomes: list[Outcome], killed: str, health: dict, sessions: list[dict],
              stream_gaps_s: list[float] = ()) -> dict:
    echoes = [e for o in outcomes for e in o.echoes if e.found > 0]
    gaps = [e.gap_ms for e in echoes]
    delays = [e.delay_s for e in echoes]
    return {
        "fault": fault, "killed": killed, "calls": len(outcomes),
        "lost": sum(1 for o in outcomes if o.lost), "why_lost": sorted({o.lost for o in outcomes if o.lost}),
        "worst_gap_ms": round(max(gaps, default=0.0), 1),
        "frames_lost": int(round(sum(e.missing_ms for o in outcomes for e in o.echoes) / 20)),
        "utterances_with_gap": sum(1 for g in gaps if g > 0),
        "utterances_lost": sum(1 for o in outcomes for e in o.echoes if e.found < 0.5),
        "echo_delay_p50_s": round(float(np.median(delays)), 2) if delays else None,
        "echo_delay_max_s": round(max(delays), 2) if delays else None,
        "worst": [{"call_sid": o.call_sid, "utterance": i, "gap_ms": round(e.gap_ms, 1),
                   "missing_ms": round(e.missing_ms, 1), "shift_ms": round(e.shift_ms, 1)}
                  for o, i, e in sorted(((o, i, e) for o in outcomes for i, e in enumerate(o.echoes)),
                                        key=lambda x: -x[2].gap_ms)[:3] if e.gap_ms > 0],
        "no_stream_max_s": round(max(stream_gaps_s), 2) if stream_gaps_s else None,
        "gemini_sessions": len(sessions), "resumed_sessions": sum(1 for s in sessions if s["resumed_from"] is not None),
        "refused_handles": sum(1 for s in sessions if s["refused_handle"]),
        "gateway": {k: health["counters"].get(k, 0) for k in
                    ("repinned", "reassigned", "replayed_frames", "peer_disconnects", "lost_no_peer")},
    }


def table(rows: list[dict]) -> str:
    head = (f"{'fault':13} {'calls':>5} {'lost':>5} {'utt. lost':>9} {'worst gap ms':>13} {'frames lost':>12} "
            f"{'no stream s':>11} {'echo delay p50/max s':>21} {'sessions':>9} {'resumed':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        delay = f"{r['echo_delay_p50_s']} / {r['echo_delay_max_s']}"
        no_stream = "-" if r["no_stream_max_s"] is None else r["no_stream_max_s"]
        lines.append(f"{r['fault']:13} {r['calls']:>5} {r['lost']:>5} {r['utterances_lost']:>9} "
                     f"{r['worst_gap_ms']:>13} {r['frames_lost']:>12} {no_stream:>11} {delay:>21} "
                     f"{r['gemini_sessions']:>9} {r['resumed_sessions']:>8}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--faults", default="transcoder,model_client,goaway,drop,refused,gateway")
    parser.add_argument("--json", default="docs/chaos.json")
    parser.add_argument("--keep", default="", help="keep each stack's run directory (logs) under this")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="BRIDGE_HEARTBEAT_S (production default)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        tmp = args.keep or tmp
        for fault in args.faults.split(","):
            print(f"{fault}: {args.calls} calls ...", flush=True)
            rows.append(await run_fault(fault, args.calls, Path(tmp) / fault, heartbeat_s=args.heartbeat))
            print(json.dumps(rows[-1]), flush=True)
    print("\n" + table(rows))
    save_report(args.json, rows)


if __name__ == "__main__":
    asyncio.run(main())
