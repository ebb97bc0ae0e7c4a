"""The socket half of a ZeroMQ link: one socket, its outbox batched per loop pass, its read pass.

``_Link`` is what ``RouterLink`` (common/link_router.py) and ``DealerLink`` (common/link_dealer.py) share:
how messages leave and arrive, not who the peers are. It is apart from them because it knows nothing
of Hello, heartbeats or epochs; common/link.py tells the whole story of the links. Its names keep
their leading underscore: only the link modules use them.

The sockets are plain (synchronous) pyzmq sockets read from the event loop's own reader callback on
their ``FD``, not ``zmq.asyncio`` sockets: pyzmq's Future per receive and send cost too much CPU
(docs/performance.md#code-choices). ZeroMQ's ``FD`` is edge-triggered, so after every pass (a receive
or a send can consume the edge) the socket's ``EVENTS`` are checked and a pass is scheduled while input
is waiting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

import zmq
import zmq.asyncio

from common import messages as m
from common.curve import CurveKeys, private_dir
from common.lifecycle import cancel_all

log = logging.getLogger(__name__)

MAX_PASS = 1000  # ZeroMQ messages taken in one read pass before other work gets a turn
FLUSH_AFTER_S = 0.001  # what is queued goes at the end of the loop pass, or once it has waited this long


def _prepare_endpoint(endpoint: str) -> None:
    """ipc:// sockets live in a directory only the service user can open."""
    if endpoint.startswith("ipc://"):
        private_dir(os.path.dirname(endpoint[6:]) or ".")


def _secure(sock: zmq.Socket, endpoint: str, curve: CurveKeys | None, *, server: bool) -> Callable[[], None]:
    """tcp:// gets CURVE: encrypted, and a ROUTER admits only our client key (common/curve.py). ipc://
    relies on its 0700 directory. Returns what to call when the socket closes."""
    if not endpoint.startswith("tcp://"):
        return lambda: None
    if curve is None:
        log.warning("%s is tcp:// without CURVE keys: plaintext, open to anyone who can connect", endpoint)
        return lambda: None
    if server:
        return curve.serve(sock)
    curve.connect(sock)
    return lambda: None


class _Link:
    """What both link kinds share: one socket, an outbox flushed at the end of a loop pass, a drain loop."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, heartbeat_s: float,
                 curve: CurveKeys | None = None):
        self.ctx, self.endpoint, self.heartbeat_s, self.curve = ctx, endpoint, heartbeat_s, curve
        self._release: Callable[[], None] = lambda: None
        self.sock: zmq.Socket | None = None
        self.dropped = 0  # batches shed because a peer's pipe was full
        self._dropped_unlogged, self._drop_logged = 0, 0.0
        self.rejected = 0  # frames that broke the wire schema
        self._outbox: dict[bytes | None, list] = {}
        self._flush_scheduled = False
        self._queued_at = 0.0  # when the outbox's oldest message was queued
        self._read_scheduled = False
        self._copy = True  # False: receive zmq.Frames, which know their connection (RouterLink's monitor)
        self.runs = False  # True: audio arrives as the AudioRuns it travelled in (common/messages.py)
        self._tasks: set[asyncio.Task] = set()

    def _queue(self, route: bytes | None, msg) -> None:
        self._outbox.setdefault(route, []).append(msg)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._queued_at = time.monotonic()
            asyncio.get_running_loop().call_soon(self.flush)
        elif self.sock is not None and (now := time.monotonic()) - self._queued_at > FLUSH_AFTER_S:
            # A long loop pass (a busy model_client runs a hundred sessions' callbacks in one): what
            # waits goes now, not milliseconds later; the scheduled flush takes what follows.
            self._send_outbox()
            self._queued_at = now

    def flush(self) -> None:
        self._flush_scheduled = False
        self._send_outbox()

    def _send_outbox(self) -> None:
        outbox, self._outbox = self._outbox, {}
        if self.sock is None:
            return
        for route, batch in outbox.items():
            frames = [m.pack(batch)] if route is None else [route, m.pack(batch)]
            try:  # copied: a zero-copy send of a big batch costs pyzmq's garbage-collector thread more
                self.sock.send_multipart(frames, flags=zmq.DONTWAIT)
            except zmq.Again:  # the peer is not keeping up, or not there
                self._drop(route, len(batch))
        self._check_input()

    def _drop(self, route: bytes | None, messages: int) -> None:
        """Counted always, logged at most once a second: a peer that is away fills its pipe quickly."""
        self.dropped += 1
        self._dropped_unlogged += 1
        now = time.monotonic()
        if now - self._drop_logged >= 1.0:
            log.warning("%d batches to %s dropped (its pipe is full), the last of %d messages",
                        self._dropped_unlogged, route or self.endpoint, messages)
            self._drop_logged, self._dropped_unlogged = now, 0

    def _open(self, sock: zmq.Socket) -> None:
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.FD, self._read)
        self._check_input()  # input that arrived before the reader was added raised no edge

    def _check_input(self) -> None:
        """Schedule a read pass if input is waiting (a send or a receive may have eaten the FD's edge)."""
        if self.sock is not None and not self._read_scheduled and self.sock.get(zmq.EVENTS) & zmq.POLLIN:
            self._read_scheduled = True
            asyncio.get_running_loop().call_soon(self._read)

    def _read(self) -> None:
        """Take everything already queued (up to MAX_PASS ZeroMQ messages, so no peer can hog the loop)
        and hand it on."""
        self._read_scheduled = False
        got = []
        while self.sock is not None and len(got) < MAX_PASS:
            try:
                got.append(self.sock.recv_multipart(flags=zmq.DONTWAIT, copy=self._copy))
            except zmq.Again:
                break
            if not self.sock.get(zmq.EVENTS) & zmq.POLLIN:
                break  # cheaper than the recv that would fail, which is slow just after an idle wake
        for frames in got:
            try:
                self._receive(frames)
            except Exception:  # a bug in a handler must not stop the link reading
                log.exception("handling a message from %s failed", self.endpoint)
        self._check_input()

    def _receive(self, frames: list) -> None:
        raise NotImplementedError

    def _unpack(self, frame: bytes, source) -> list:
        try:
            return m.unpack(frame, self.runs)
        except m.WireError as e:
            self.rejected += 1
            log.error("malformed internal message from %s dropped: %s", source, e)
            return []

    def _close_socket(self) -> None:
        self._release()
        self._release = lambda: None
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.FD)
            self.sock.close(linger=0)
            self.sock = None

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._close_socket()
