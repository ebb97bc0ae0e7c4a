"""Many Twilio-side calls from one process, cheaply, for the load bench (bench/load.py).

The softphone (softphone/) models Twilio's side in detail and checks everything the server sends; at
hundreds of calls that care costs more CPU than the bridge itself. This caller keeps only what the
load bench needs, on the same wire format (softphone/wire.py): the webhook, ``connected``/``start``,
one shared 20 ms tick that sends every call's next frame (one wake-up per tick, not per call), marks
echoed when their audio would have finished playing, ``clear`` honoured, ``stop`` at the end. What
the caller heard is kept on the call clock, so bench/chaos.py's echo alignment can judge it. Its
WebSocket is bench/ws_client.py: a frame is one ``transport.write``, with no task per message.

The caller's view of each turn: from the moment the last frame of an utterance goes out (the end of
the caller's speech) to the first audible media frame that arrives after it (the first sound of the
reply, as the caller's side of Twilio's socket gets it), on CLOCK_MONOTONIC like every process of
the stack. With ``--start-at`` (the load bench's ``--burst``) every call sends silence until that
moment and then the same script timing, so every call's turns end in the same 20 ms tick, across
worker processes too.

    python -m bench.lean_caller --url URL --calls N --seconds S   (prints one JSON result per call)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import subprocess
import math
import sys

import aiohttp
import numpy as np

from bench.chaos import Script, echo_of, script
from bench.ws_client import WsClient
from common.g711 import ULAW_SILENCE, decode_ulaw, encode_ulaw
from common.stats import LATENCY_BUCKETS_MS, Histogram, watch_loop_lag
from harness.stack import ROOT
from softphone import wire
from softphone.webhook import fetch_twiml, new_sid, voice_params

RATE, FRAME = 8000, 160
TICK_S = FRAME / RATE
REPLY_GAP = RATE // 4  # as softphone/playback.py: idle this long and new audio is a new reply
VOICES = 8  # scripts per worker, shared by its calls: making one per call took enough CPU to run on
# into the step's measured window (docs/performance.md#code-choices)
HANG_S = 30.0  # a call not over this long after its last frame is stuck: a result, not a hung bench
# softphone/wire.py's media message, formatted by hand: json.dumps per frame was a third of the caller
# (tests/test_ws_client.py checks the two agree).
MEDIA = ('{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d","timestamp":"%d",'
         '"payload":"%s"},"streamSid":"%s"}')
SILENT_FRAME = base64.b64encode(bytes([ULAW_SILENCE]) * FRAME).decode()
AUDIBLE = 328  # a reply frame whose peak reaches -40 dBFS (the emulator's VAD start level) is heard
_LEVEL = np.abs(decode_ulaw(bytes(range(256))).astype(np.int32))  # |sample| of each µ-law byte


def audible(ulaw: bytes) -> bool:
    return bool(_LEVEL[np.frombuffer(ulaw, np.uint8)].max(initial=0) >= AUDIBLE)


@functools.lru_cache(maxsize=None)
def prepared(voice: int, seconds: float, aligned: bool = False) -> tuple[Script, list[str]]:
    """A script of utterances and pauses filling ``seconds``, and its 20 ms frames base64-encoded.
    ``aligned``: every voice's utterances have the same lengths (a burst: every turn ends together)."""
    lengths, total = [], 0.3
    while total < seconds - 4.0:
        lengths.append(1.0 + 0.3 * (((0 if aligned else voice) + len(lengths)) % 3))
        total += lengths[-1] + 2.5
    plan = script(voice, lengths=tuple(lengths), pause_s=2.5)
    ulaw = encode_ulaw(np.concatenate([plan.audio, np.zeros(RATE, np.int16)]))
    frames = [base64.b64encode(ulaw[i:i + FRAME]).decode() for i in range(0, len(ulaw) - FRAME + 1, FRAME)]
    return plan, frames


class LeanCall:
    def __init__(self, seed: int, seconds: float, start_at: float | None = None):
        self.plan, self.frames = prepared(seed % VOICES, seconds, start_at is not None)
        self.start_at = start_at  # None: the script starts once connected
        # The frame that carries each utterance's last sample: once it is sent, the caller is silent.
        self.speech_ends = [math.ceil((start + len(u)) / FRAME) - 1
                            for start, u in zip(self.plan.starts, self.plan.utterances)]
        self.ended_at = 0.0  # when the last utterance's speech ended, while its reply is awaited
        self.speech_ended: list[float] = []  # when each utterance's speech ended (CLOCK_MONOTONIC s)
        self.turn_ms: list[float] = []  # end of speech → first audible reply frame, per utterance
        self.unanswered = 0  # utterances with no audible reply before the next one ended
        self.chunk = 0  # frames sent, silence before the script included
        self.heard = bytearray([ULAW_SILENCE]) * (len(self.frames) * FRAME)
        self.call_sid, self.stream_sid = new_sid("CA"), new_sid("MZ")
        self.ws: WsClient | None = None
        self.seq = 0
        self.k = 0  # next frame to send
        self.t0 = 0.0
        self.play_end = 0  # sample at which what was received so far finishes playing
        self.marks: dict[str, asyncio.TimerHandle] = {}
        self.underruns = 0
        self.received = 0  # bytes of audio the bridge sent
        self.failed = ""

    def now(self) -> int:
        return max(0, int((asyncio.get_running_loop().time() - self.t0) * RATE))

    def send(self, message: dict) -> None:
        if self.ws is not None:
            self.ws.send_text(json.dumps(message))

    def next_frame(self) -> bool:
        """Send frame k; False once the caller has said everything."""
        if self.k >= len(self.frames) or self.ws is None or not self.ws.is_open:
            return False
        self._send_media(self.frames[self.k])
        if self.k in self.speech_ends:
            self.unanswered += self.ended_at > 0  # the last reply never came
            self.ended_at = asyncio.get_running_loop().time()
            self.speech_ended.append(self.ended_at)
        self.k += 1
        return True

    def wait_frame(self) -> None:
        """Silence, sent before the script starts (``start_at``), as Twilio sends a quiet line."""
        if self.ws is not None and self.ws.is_open:
            self._send_media(SILENT_FRAME)

    def _send_media(self, payload: str) -> None:
        self.seq += 1
        self.chunk += 1
        self.ws.send_text(MEDIA % (self.seq, self.chunk, (self.chunk - 1) * 20, payload, self.stream_sid))

    def on_text(self, text: str) -> None:
        message = json.loads(text)
        event = message.get("event")
        if event == "media":
            audio = base64.b64decode(message["media"]["payload"])
            self.received += len(audio)
            if self.ended_at and audible(audio):
                self.turn_ms.append((asyncio.get_running_loop().time() - self.ended_at) * 1000)
                self.ended_at = 0.0
            now = self.now()
            if 0 < now - self.play_end < REPLY_GAP:
                self.underruns += 1  # the reply ran dry and went on: late audio
            at = max(now, self.play_end)
            self.heard[at:at + len(audio)] = audio[:max(0, len(self.heard) - at)]
            self.play_end = at + len(audio)
        elif event == "mark":
            name = message["mark"]["name"]
            delay = max(0.0, (self.play_end - self.now()) / RATE)
            self.marks[name] = asyncio.get_running_loop().call_later(delay, self.echo_mark, name)
        elif event == "clear":
            self.play_end = self.now()
            for name in list(self.marks):
                self.marks.pop(name).cancel()
                self.echo_mark(name)

    def echo_mark(self, name: str) -> None:
        self.marks.pop(name, None)
        self.seq += 1
        self.send(wire.mark(self.seq, self.stream_sid, name))

    def result(self, check_echoes: bool = True) -> dict:
        missing_ms = None
        if check_echoes:
            heard = decode_ulaw(bytes(self.heard)).astype(np.float64)
            echoes = [echo_of(u, s, heard) for u, s in zip(self.plan.utterances, self.plan.starts)]
            missing_ms = sum(e.missing_ms for e in echoes)
        return {"failed": self.failed, "missing_ms": missing_ms, "underruns": self.underruns,
                "frames_sent": self.k, "utterances": len(self.plan.utterances),
                "frames_heard": self.received // FRAME, "turn_ms": [round(t, 1) for t in self.turn_ms],
                "unanswered": self.unanswered + (self.ended_at > 0),
                "speech_ended": [round(t, 4) for t in self.speech_ended]}


async def run_call(session: aiohttp.ClientSession, url: str, call: LeanCall, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds + HANG_S):
            await talk(session, url, call)
    except TimeoutError:
        call.failed = f"not over {HANG_S:g} s after its end"
    except Exception as e:  # one failed call is a result, not the end of the run
        call.failed = f"{type(e).__name__}: {e}"[:200]


async def talk(session: aiohttp.ClientSession, url: str, call: LeanCall) -> None:
    account = new_sid("AC")
    twiml = await fetch_twiml(session, url + "/twiml", voice_params(call.call_sid, account), None)
    ws = await WsClient.connect(twiml.stream_url, call.on_text)
    try:
        ws.send_text(json.dumps(wire.connected()))
        call.seq += 1
        start = wire.start(call.seq, account, call.stream_sid, call.call_sid, twiml.parameters)
        ws.send_text(json.dumps(start))
        call.t0 = call.start_at or asyncio.get_running_loop().time()
        call.ws = ws  # the ticker starts sending its frames now
        await ws.closed
    finally:
        ws.transport.close()
    if call.k < len(call.frames):
        call.failed = "the bridge ended the call"


async def ticker(calls: list[LeanCall], start_at: float | None = None) -> None:
    """Every 20 ms, each live call's next frame; a call that has said everything says stop. With
    ``start_at`` the ticks fall on it, so every worker's scripts start in the same tick."""
    loop = asyncio.get_running_loop()
    due = loop.time() if start_at is None else start_at - math.ceil((start_at - loop.time()) / TICK_S) * TICK_S
    live = list(calls)
    while live:
        due += TICK_S
        await asyncio.sleep(max(0.0, due - loop.time()))
        for call in list(live):
            if call.ws is None:
                continue  # not connected yet: it starts at frame 0 when it is
            if start_at is not None and due < start_at - TICK_S / 2:
                call.wait_frame()
                continue
            if not call.next_frame():
                live.remove(call)
                if call.ws is not None and call.ws.is_open:
                    call.seq += 1
                    call.send(wire.stop(call.seq, call.stream_sid, "AC", call.call_sid))
                    call.ws.close()


async def run(url: str, calls: int, first_seed: int, seconds: float, spread_s: float,
              check_echoes: bool = True, start_at: float | None = None) -> list[dict]:
    lean = [LeanCall(first_seed + i, seconds, start_at) for i in range(calls)]
    waiting = max(0.0, start_at - asyncio.get_running_loop().time()) if start_at is not None else 0.0
    lag = Histogram(LATENCY_BUCKETS_MS)  # this worker's own loop lag: a late caller reads late replies
    watch = asyncio.ensure_future(watch_loop_lag(lag))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        tick = asyncio.ensure_future(ticker(lean, start_at))
        for call in lean:
            tasks.append(asyncio.ensure_future(run_call(session, url, call, seconds + waiting)))
            await asyncio.sleep(spread_s / max(calls, 1))
        await asyncio.gather(*tasks)
        for task in (tick, watch):
            task.cancel()
        await asyncio.gather(tick, watch, return_exceptions=True)
    return [{**call.result(check_echoes), "caller_lag_counts": lag.counts} for call in lean]


def start_workers(url: str, calls: int, per_worker: int, first_seed: int, seconds: float,
                  spread_s: float, *flags: str) -> list[subprocess.Popen]:
    """``calls`` calls in worker processes of ``per_worker`` each; their results come on stdout."""
    return [subprocess.Popen(
        [sys.executable, "-m", "bench.lean_caller", "--url", url, "--calls",
         str(min(per_worker, calls - first)), "--first-seed", str(first_seed + first),
         "--seconds", str(seconds), "--spread", str(spread_s), *flags],
        cwd=ROOT, stdout=subprocess.PIPE, text=True) for first in range(0, calls, per_worker)]


def worker_results(workers: list[subprocess.Popen], calls: int, per_worker: int,
                   timeout: float) -> list[dict]:
    """Every call's result. A worker still running after ``timeout`` is killed (each call gives up by
    itself, HANG_S after its end: this is a last resort); a worker that died fails all its calls."""
    results = []
    for worker, first in zip(workers, range(0, calls, per_worker)):
        try:
            out, _ = worker.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
        results += json.loads(out) if worker.returncode == 0 and out.strip() else [
            {"failed": f"load generator exited with {worker.returncode}"}] * min(per_worker, calls - first)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--spread", type=float, default=2.0)
    p.add_argument("--start-at", type=float, help="CLOCK_MONOTONIC seconds: every call's script starts "
                   "then (after silence), so every turn ends in the same tick")
    p.add_argument("--no-echo-check", action="store_true",
                   help="only count frames (bench/gateway.py: its loopback is no echo to align)")
    a = p.parse_args()
    print(json.dumps(asyncio.run(run(a.url.rstrip("/"), a.calls, a.first_seed, a.seconds, a.spread,
                                      not a.no_echo_check, a.start_at))))


if __name__ == "__main__":
    main()
