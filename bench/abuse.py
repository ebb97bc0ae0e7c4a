"""Abuse the live stack with a few thousand bad inputs while healthy calls run, and count the damage.

    python -m bench.abuse [--bad 3000] [--lanes 2] [--seed 1] [--json out.json]

The stack runs under supervisord as the tests start it (harness/stack.py), with TWILIO_AUTH_TOKEN set.
Healthy calls from the softphone (real time, signed, the emulator echoing) run back to back in
``--lanes`` parallel lanes for the whole run. Meanwhile: unsigned and forged webhooks, streams with
forged tokens, garbage frames before and after a valid ``start`` (bad JSON, wrong types, bad base64,
unknown events, deep nesting, huge payloads, binary frames, the wrong streamSid), oversized frames,
floods, silent sockets, and garbage at the gateway's and the model_client's ZeroMQ sockets. Rejections
are read from the gateway's counters (and 403s / server closes seen by the client); crashes are
process exits supervisord saw; a healthy call's lost frame is a 20 ms frame of its speech missing from
the echo it heard.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import secrets
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import zmq
import zmq.asyncio

from gateway.security import signature
from harness.stack import Stack, get_json
from softphone import wire
from softphone.caller import place_call
from softphone.measure import echo_loss
from softphone.speech import speech_like
from softphone.webhook import new_sid, upgrade_headers, voice_params

FRAME = 160  # 20 ms of µ-law
REJECTIONS = ("twilio_rejected", "stream_refused", "ws_error")


# --- healthy calls and what "lost" means -------------------------------------------------------

@dataclass
class Healthy:
    calls: int = 0
    failed: list[str] = field(default_factory=list)
    frames: int = 0
    lost: int = 0
    protocol_errors: int = 0
    worst_corr: float = 1.0


class HealthyLanes:
    """``lanes`` threads, each placing real-time echo calls back to back until stopped."""

    def __init__(self, url: str, auth: str, lanes: int):
        self.url, self.auth = url, auth
        self.stats = Healthy()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._lane, args=(i,), daemon=True) for i in range(lanes)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def finish(self) -> Healthy:
        self._done.set()
        for thread in self._threads:
            thread.join(60)
        return self.stats

    def _lane(self, lane: int) -> None:
        n = 0
        while not self._done.is_set() or n == 0:
            n += 1
            speech = speech_like(1.5, seed=1000 * lane + n)
            try:
                result = asyncio.run(place_call(self.url, speech, realtime=True, listen_s=2.5,
                                                auth_token=self.auth, timeout_s=40))
            except Exception as e:  # noqa: BLE001 - a failed healthy call is the result being measured
                with self._lock:
                    self.stats.failed.append(f"lane {lane} call {n}: {type(e).__name__}: {e}")
                continue
            corr, lost, frames = echo_loss(speech, result)
            with self._lock:
                s = self.stats
                s.calls += 1
                s.frames += frames
                s.lost += len(lost)
                s.protocol_errors += len(result.protocol_errors)
                s.worst_corr = min(s.worst_corr, corr)


# --- bad inputs ----------------------------------------------------------------------------------

def garbage(rng: random.Random, stream_sid: str) -> str | bytes:
    """One frame Twilio would never send; each must be rejected (and counted) on its own."""
    media = wire.media(2, stream_sid, 1, 0, rng.randbytes(FRAME))
    kind = rng.randrange(11)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 400))  # a binary frame
    if kind == 1:
        return "".join(rng.choice("{}[]\":,abc 0\\\n\x00é") for _ in range(rng.randrange(1, 200)))
    if kind == 2:
        text = json.dumps(media)
        return text[: rng.randrange(1, len(text) - 1)]  # truncated
    if kind == 3:
        media["media"]["payload"] = "%%" + base64.b64encode(rng.randbytes(30)).decode()[2:]
    elif kind == 4:
        media["media"][rng.choice(["chunk", "timestamp", "payload", "track"])] = rng.choice(
            [[1], {"a": 1}, None, True, -5, 1.5])
    elif kind == 5:
        media["event"] = rng.choice(["clear", "Media", "", "start ", "meda"])
    elif kind == 6:
        del media["media"][rng.choice(["chunk", "timestamp", "payload", "track"])]
    elif kind == 7:
        depth = rng.randrange(50, 5000)
        return "[" * depth + "]" * depth
    elif kind == 8:
        media["media"]["payload"] = base64.b64encode(rng.randbytes(rng.randrange(16001, 40000))).decode()
    elif kind == 9:
        media["streamSid"] = new_sid("MZ")  # another stream's
    else:
        media = rng.choice([{"event": "dtmf", "streamSid": stream_sid, "dtmf": {"digit": "X"}},
                            {"event": "mark", "streamSid": stream_sid, "mark": "name"},
                            {"event": "stop", "streamSid": stream_sid}, [media], "media"])
    return json.dumps(media)


@dataclass
class Row:
    kind: str
    tried: int = 0
    rejected: int = 0
    note: str = ""


class Abuser:
    def __init__(self, stack: Stack, auth: str, seed: int):
        self.stack, self.auth, self.rng = stack, auth, random.Random(seed)
        self.ws_url = stack.url.replace("http", "ws") + "/ws/twilio"

    def counters(self) -> dict:
        return get_json(self.stack.url + "/healthz")["counters"]

    def counted(self, before: dict, *names: str, prefixes: tuple[str, ...] = ()) -> int:
        after = self.counters()
        keys = set(names) | {k for k in after if k.startswith(prefixes)} if prefixes else set(names)
        return sum(after.get(k, 0) - before.get(k, 0) for k in keys)

    def token(self, call_sid: str) -> str:
        params = voice_params(call_sid, new_sid("AC"))
        url = self.stack.url + "/twiml"
        request = urllib.request.Request(url, urllib.parse.urlencode(params).encode(),
                                         {"X-Twilio-Signature": signature(self.auth, url, params)})
        with urllib.request.urlopen(request, timeout=5) as r:
            body = r.read().decode()
        return body.split('name="token" value="', 1)[1].split('"', 1)[0]

    async def webhooks(self, n: int, forged: bool) -> Row:
        row = Row("webhook, forged signature" if forged else "webhook, unsigned", note="HTTP 403")
        async with aiohttp.ClientSession() as session:
            for _ in range(n):
                params = voice_params(new_sid("CA"), new_sid("AC"))
                headers = {"X-Twilio-Signature": signature(self.auth + "x", self.stack.url + "/twiml",
                                                           params)} if forged else {}
                async with session.post(self.stack.url + "/twiml", data=params, headers=headers) as r:
                    row.tried += 1
                    row.rejected += r.status == 403
        return row

    async def _stream(self, session, frames: list, token: str | None, call_sid: str,
                      wait_close: float) -> bool:
        """Send frames on one stream (started with ``token`` unless None); True if the server closed."""
        async with session.ws_connect(self.ws_url, headers=upgrade_headers(self.auth, self.ws_url),
                                      max_msg_size=0) as ws:
            stream_sid = new_sid("MZ")
            try:
                if token is not None:
                    await ws.send_json(wire.connected())
                    await ws.send_json(wire.start(1, new_sid("AC"), stream_sid, call_sid, {"token": token}))
                for frame in frames:
                    data = frame(stream_sid) if callable(frame) else frame
                    await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_str(data))
            except (ConnectionResetError, aiohttp.ClientConnectionError):
                return True
            try:
                async with asyncio.timeout(wait_close):
                    await self._until_closed(ws)
                return True
            except TimeoutError:
                return False

    async def garbage_frames(self, sockets: int, per_socket: int, admitted: bool) -> Row:
        row = Row("stream frames, after a valid start" if admitted else "stream frames, before start",
                  note="counted, socket kept")
        before = self.counters()
        async with aiohttp.ClientSession() as session:
            for _ in range(sockets):
                call_sid = new_sid("CA")
                token = await asyncio.to_thread(self.token, call_sid) if admitted else None
                frames = [lambda sid: garbage(self.rng, sid) for _ in range(per_socket)]
                await self._stream(session, frames, token, call_sid, 0.2)
                row.tried += per_socket
        await asyncio.sleep(0.5)
        row.rejected = self.counted(before, *REJECTIONS)
        return row

    async def bad_tokens(self, n: int) -> Row:
        row = Row("stream, forged/garbage/reused token", note="socket closed, counted")
        before = self.counters()
        reused_sid = new_sid("CA")
        reused = await asyncio.to_thread(self.token, reused_sid)
        async with aiohttp.ClientSession() as session:
            await self._stream(session, [json.dumps(wire.stop(2, "MZ", "AC", reused_sid))], reused,
                               reused_sid, 2)
            for i in range(n):
                call_sid = new_sid("CA")
                token = [reused, "", secrets.token_urlsafe(30), "v1.9999999999.0123456789ab." + "A" * 27,
                         reused[:-2]][i % 5]
                row.tried += 1
                sid = reused_sid if i % 5 == 0 else call_sid
                row.rejected += await self._stream(session, [], token, sid, 3)
        row.note += f" ({self.counted(before, 'stream_refused')} counted)"
        return row

    async def oversized(self, n: int) -> Row:
        row = Row("stream frame over 64 KiB", note="socket closed (1009)")
        async with aiohttp.ClientSession() as session:
            for i in range(n):
                frame = b"\x00" * 100_000 if i % 2 else "x" * 100_000
                row.tried += 1
                row.rejected += await self._stream(session, [frame], None, "", 3)
        return row

    async def silent(self, n: int) -> Row:
        row = Row("silent socket (no start)", note="closed at the start deadline")
        async with aiohttp.ClientSession() as session:
            closed = await asyncio.gather(*(self._stream(session, [], None, "", 10) for _ in range(n)))
        row.tried, row.rejected = n, sum(closed)
        return row

    async def floods(self, n: int) -> Row:
        row = Row("flood on an admitted stream", note="")
        before = self.counters()
        async with aiohttp.ClientSession() as session:
            for _ in range(n):
                call_sid = new_sid("CA")
                token = await asyncio.to_thread(self.token, call_sid)
                row.tried += 1
                row.rejected += await self._flood(session, token, call_sid)
        row.note = f"closed; {self.counted(before, 'twilio_flood_dropped')} messages dropped"
        return row

    async def _flood(self, session, token: str, call_sid: str) -> bool:
        async with session.ws_connect(self.ws_url, headers=upgrade_headers(self.auth, self.ws_url)) as ws:
            stream_sid = new_sid("MZ")
            await ws.send_json(wire.start(1, new_sid("AC"), stream_sid, call_sid, {"token": token}))
            media = json.dumps(wire.media(2, stream_sid, 1, 0, b"\xff" * FRAME))
            closing = asyncio.ensure_future(self._until_closed(ws))
            deadline = time.monotonic() + 6
            try:
                while not closing.done() and time.monotonic() < deadline:
                    for _ in range(20):
                        await ws.send_str(media)
                    await asyncio.sleep(0.002)
            except (ConnectionResetError, aiohttp.ClientConnectionError):
                pass
            try:
                return await asyncio.wait_for(closing, 3)
            except TimeoutError:
                return False

    @staticmethod
    async def _until_closed(ws) -> bool:
        while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                                 aiohttp.WSMsgType.CLOSED):
            pass
        return True

    async def zmq_garbage(self, n: int, socket_name: str) -> Row:
        row = Row(f"ZeroMQ frames at {socket_name}", note="dropped, logged")
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 1000
        sock.connect(f"ipc://{self.stack.run_dir}/{socket_name}")
        before_counter = self.counters().get("pipeline_rejected", 0)
        before_lines = self._log_lines("malformed internal message")
        for _ in range(n):
            kind = self.rng.randrange(4)
            if kind == 0:
                frames = [self.rng.randbytes(self.rng.randrange(1, 64))]
            elif kind == 1:
                frames = [b"\x91" * self.rng.randrange(900, 1100) + b"\x90"]  # nested deep
            elif kind == 2:
                frames = [b"\x91\x93\x04\xa1c", b"extra"]  # wrong frame count
            else:
                frames = [bytes([0x91, 0x92, self.rng.randrange(16, 120), 0xc0])]  # unknown tag
            await sock.send_multipart(frames)
            row.tried += 1
        sock.close()
        ctx.term()
        await asyncio.sleep(1.0)
        if socket_name == "gateway.ipc":
            row.rejected = self.counters().get("pipeline_rejected", 0) - before_counter
        else:
            row.rejected = self._log_lines("malformed internal message") - before_lines
        return row

    def _log_lines(self, needle: str) -> int:
        return sum(needle in line and "model_client" in line
                   for line in self.stack.log.read_text(errors="replace").splitlines())


async def abuse(stack: Stack, auth: str, bad: int, seed: int) -> list[Row]:
    a = Abuser(stack, auth, seed)
    share = max(bad // 12, 5)
    per_socket = 50
    rows = [
        await a.webhooks(share, forged=False),
        await a.webhooks(share, forged=True),
        await a.garbage_frames(max(2 * share // per_socket, 1), per_socket, admitted=False),
        await a.garbage_frames(max(4 * share // per_socket, 1), per_socket, admitted=True),
        await a.bad_tokens(max(share // 5, 5)),
        await a.oversized(max(share // 20, 4)),
        await a.floods(3),
        await a.silent(10),
        await a.zmq_garbage(3 * share, "gateway.ipc"),
        await a.zmq_garbage(share, "model_client-0.ipc"),
    ]
    return rows


def crashes(stack: Stack, expected_spawns: int) -> int:
    text = stack.log.read_text(errors="replace")
    return text.count("exited: ") + max(0, text.count("spawned: ") - expected_spawns)


def table(rows: list[Row], healthy: Healthy, crashed: int, seconds: float) -> str:
    lines = [f"{'bad input':<40} {'tried':>7} {'rejected':>9}  how", "-" * 96]
    for r in rows:
        lines.append(f"{r.kind:<40} {r.tried:>7} {r.rejected:>9}  {r.note}")
    tried, rejected = sum(r.tried for r in rows), sum(r.rejected for r in rows)
    lines += ["-" * 96, f"{'total':<40} {tried:>7} {rejected:>9}", "",
              f"crashes (process exits or restarts):        {crashed}",
              f"healthy calls completed / failed:           {healthy.calls} / {len(healthy.failed)}",
              f"healthy-call speech frames lost:            {healthy.lost} of {healthy.frames}",
              f"healthy-call protocol errors:               {healthy.protocol_errors}",
              f"worst healthy echo correlation:             {healthy.worst_corr:.3f}",
              f"wall time:                                  {seconds:.1f} s"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bad", type=int, default=3000, help="about how many bad inputs (default 3000)")
    parser.add_argument("--lanes", type=int, default=2, help="healthy calls running at once (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    auth = secrets.token_hex(16)
    run_dir = Path(tempfile.mkdtemp(prefix="abuse")) / "run"
    # Production heartbeats (harness/stack.py's default is the tests' fast 0.25 s, whose 0.75 s liveness
    # window a busy 2-core box can miss); short start and flood deadlines keep the run quick.
    stack = Stack(run_dir, TWILIO_AUTH_TOKEN=auth, GEMINI_SILENCE_MS="300", BRIDGE_HEARTBEAT_S="1.0",
                  BRIDGE_START_TIMEOUT_S="2", BRIDGE_FLOOD_CLOSE_S="1")
    started = time.monotonic()
    stack.start()
    lanes = HealthyLanes(stack.url, auth, args.lanes)
    try:
        spawns = stack.log.read_text().count("spawned: ")
        lanes.start()
        rows = asyncio.run(abuse(stack, auth, args.bad, args.seed))
        healthy = lanes.finish()
        alive = stack.health()["status"] == "ok"
    finally:
        lanes.finish()
        code = stack.stop()
    crashed = crashes(stack, spawns) + (not alive) + (code != 0)
    print(table(rows, healthy, crashed, time.monotonic() - started))
    for failure in healthy.failed:
        print("healthy call failed:", failure)
    print(f"stack log: {stack.log}")
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "healthy": asdict(healthy),
                                         "crashes": crashed}, indent=2) + "\n")


if __name__ == "__main__":
    main()
