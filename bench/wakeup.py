"""What a hop between two idle processes costs on this machine, before and with our own link code.

    python -m bench.wakeup [--rounds 500] [--json docs/wakeup.json]

Two round trips, each started 20 ms after the last (so the other side has gone idle, as it has
between the 20 ms frames of a lightly loaded call): a byte over a pipe (the kernel's wake-up alone),
and a 200-byte message over a ZeroMQ DEALER → ROUTER pair on ipc:// (what each hop of the pipeline
adds: every message passes through the sender's and the receiver's ZeroMQ I/O threads). Half a round
trip is one hop; the pipeline's up direction is two hops (gateway → transcoder → model_client).
A third round trip has our own code on the far side: a ``RouterLink`` on an event loop, as in every
stage, echoing an AudioUp (msgpack, the read pass, the flush), so the difference is what the link
layer adds to a hop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

import zmq

from bench.report import save_report
from common import messages as m
from common.link import RouterLink, new_epoch

IDLE_S = 0.02


def timed(round_trip, rounds: int) -> list[float]:
    """µs of each of ``rounds`` calls of ``round_trip``, each after IDLE_S of nothing."""
    times = []
    for _ in range(rounds):
        time.sleep(IDLE_S)
        start = time.perf_counter_ns()
        round_trip()
        times.append((time.perf_counter_ns() - start) / 1000)
    return times


def pipe_round_trips(rounds: int) -> list[float]:
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    if os.fork() == 0:
        while os.read(to_child, 1) == b"x":
            os.write(from_child, b"x")
        os._exit(0)
    times = timed(lambda: (os.write(from_parent, b"x"), os.read(to_parent, 1)), rounds)
    os.write(from_parent, b"q")
    os.wait()
    return times


def zmq_round_trips(rounds: int) -> list[float]:
    endpoint = f"ipc://{tempfile.mkdtemp()}/hop.ipc"
    if os.fork() == 0:
        router = zmq.Context().socket(zmq.ROUTER)
        router.bind(endpoint)
        while True:
            route, body = router.recv_multipart()
            if body == b"q":
                os._exit(0)
            router.send_multipart([route, body])
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    dealer.send(b"warm up")
    dealer.recv()
    times = timed(lambda: (dealer.send(b"x" * 200), dealer.recv()), rounds)
    dealer.send(b"q")
    os.wait()
    ctx.destroy(linger=0)
    return times


def link_round_trips(rounds: int) -> list[float]:
    endpoint = f"ipc://{tempfile.mkdtemp()}/hop.ipc"
    if os.fork() == 0:
        asyncio.run(_link_echo(endpoint))
        os._exit(0)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    dealer.send(m.pack([m.Hello(role=m.ROLE_TRANSCODER, epoch=new_epoch(), capacity=1, endpoint="")]))
    audio = m.pack([m.AudioUp(call="call", seq=1, t_in=0, audio=bytes(640))])

    def round_trip() -> None:
        dealer.send(audio)
        while not any(isinstance(msg, m.AudioUp) for msg in m.unpack(dealer.recv())):
            pass  # the link's own Hello and heartbeats

    round_trip()
    times = timed(round_trip, rounds)
    dealer.send(m.pack([m.CallEnd(call="call", reason="q")]))
    os.wait()
    ctx.destroy(linger=0)
    return times


async def _link_echo(endpoint: str) -> None:
    done = asyncio.Event()

    def echo(peer, batch: list) -> None:
        for msg in batch:
            if isinstance(msg, m.CallEnd):
                done.set()
            router.send(peer.route, msg)
    hello = m.Hello(role=m.ROLE_MODEL_CLIENT, epoch=new_epoch(), capacity=1, endpoint=endpoint)
    router = RouterLink(zmq.Context(), endpoint, 1.0, lambda: hello, echo)
    await router.start()
    await done.wait()
    await router.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=500)
    p.add_argument("--json", default="docs/wakeup.json")
    args = p.parse_args()
    rows = []
    print(f"{'round trip after 20 ms idle':<32} {'p50 µs':>8} {'p90 µs':>8}")
    for name, measure in (("pipe", pipe_round_trips), ("zeromq_ipc", zmq_round_trips),
                          ("zeromq_ipc_our_links", link_round_trips)):
        times = sorted(measure(args.rounds))
        rows.append({"path": name, "p50_us": round(statistics.median(times)),
                     "p90_us": round(times[len(times) * 9 // 10])})
        print(f"{name:<32} {rows[-1]['p50_us']:>8} {rows[-1]['p90_us']:>8}")
    save_report(args.json, {"command": f"python -m bench.wakeup --rounds {args.rounds}", "rounds": rows})


if __name__ == "__main__":
    main()
