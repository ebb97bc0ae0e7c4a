"""ZeroMQ links between stages: batching, Hello/Heartbeat, liveness (the ZeroMQ Guide's Paranoid Pirate).

- ``RouterLink`` binds a ROUTER (the gateway's directory; each model_client's own endpoint). It keeps a
  table of peers from their Hello/Heartbeat, heartbeats them back, and reports a peer silent for
  ``LIVENESS`` intervals as lost. What a peer it does not know sends is held (bounded) until that
  peer says Hello, and dropped with a log line if it has not within ``LIVENESS`` intervals.
- ``DealerLink`` connects a DEALER to one ROUTER, says Hello on every (re)connect, heartbeats, and when
  the other side falls silent it closes the socket and reconnects with doubling backoff. A socket no
  one has answered yet is kept (ZeroMQ retries the connection; what waits in it is for the endpoint's
  next process). A changed epoch on the other side is reported: "everything that peer held is gone".

Both batch: messages queued during one event-loop pass leave as one ZeroMQ message per peer (or
sooner, once the oldest has waited ``FLUSH_AFTER_S``: a busy pass can last many milliseconds), and a
receive drains everything already queued before handing it on. Nothing waits for a timer to batch.
Sends never block: a full pipe drops the batch and counts it (``dropped``).

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
import secrets
import struct
import time
from dataclasses import dataclass
from typing import Callable

import zmq
import zmq.asyncio

from common import messages as m
from common.curve import CurveKeys, private_dir
from common.lifecycle import cancel_all, spawn

log = logging.getLogger(__name__)

BACKOFF_CAP = 32  # heartbeat intervals
MAX_PASS = 1000  # ZeroMQ messages taken in one read pass before other work gets a turn
FLUSH_AFTER_S = 0.001  # what is queued goes at the end of the loop pass, or once it has waited this long
MAX_HELD = 256  # messages a ROUTER keeps by default from one peer it does not know yet, until it says Hello
MAX_HELD_PEERS = 64  # unknown peers whose messages it keeps at once


def new_epoch() -> str:
    return secrets.token_hex(6)


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


@dataclass
class Peer:
    route: bytes
    role: str
    epoch: str
    capacity: int
    endpoint: str
    load: int = 0
    last_seen: float = 0.0


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


class RouterLink(_Link):
    """A bound ROUTER that tracks its peers. ``on_batch(peer, messages)`` gets everything but link
    control; ``on_peer_lost(peer)`` fires when a peer goes silent or says Hello with a new epoch.

    With ``monitor=True`` a peer is also lost the moment its connection closes (a killed process:
    the kernel closes its socket at once), not 3 heartbeats later. ZeroMQ's socket monitor reports
    ``EVENT_DISCONNECTED`` with the connection's file descriptor only; each received message's
    ``SRCFD`` says which descriptor it came in on, so we remember fd → route as messages arrive."""

    def __init__(self, ctx, endpoint: str, heartbeat_s: float, hello: Callable[[], m.Hello],
                 on_batch: Callable[[Peer, list], None],
                 on_peer_lost: Callable[[Peer], None] = lambda peer: None, *,
                 curve: CurveKeys | None = None, monitor: bool = False, max_held: int = MAX_HELD):
        super().__init__(ctx, endpoint, heartbeat_s, curve)
        self.hello, self.on_batch, self.on_peer_lost = hello, on_batch, on_peer_lost
        self.max_held = max_held
        self.peers: dict[bytes, Peer] = {}
        self.monitor = monitor
        self.disconnects = 0  # peers found lost by the monitor (the rest by silence or a new epoch)
        self._monitor: zmq.asyncio.Socket | None = None
        self._fd_route: dict[int, bytes] = {}  # connection fd → the route heard on it
        self._route_fd: dict[bytes, int] = {}  # route → the fd it was last heard on
        self._held: dict[bytes, tuple[float, list]] = {}  # unknown route → (first heard, its messages)

    async def start(self) -> None:
        _prepare_endpoint(self.endpoint)
        sock = zmq.Socket(self.ctx, zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting peer keeps its route
        self._release = _secure(sock, self.endpoint, self.curve, server=True)
        sock.bind(self.endpoint)
        if self.monitor:
            self._copy = False
            self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)  # a zmq.asyncio socket
            spawn(self._monitor_loop(), f"router-monitor:{self.endpoint}", self._tasks)
        self._open(sock)
        spawn(self._heartbeat_loop(), f"router-heartbeat:{self.endpoint}", self._tasks)

    def send(self, route: bytes, msg) -> None:
        self._queue(route, msg)

    def _receive(self, frames: list) -> None:
        if len(frames) != 2:
            self.rejected += 1
            log.error("malformed internal message: %d frames", len(frames))
            return
        if self.monitor:
            frames = self._note_connection(frames)
        self._handle(frames[0], frames[1])

    def _note_connection(self, frames: list[zmq.Frame]) -> list[bytes]:
        route, fd = frames[0].bytes, frames[1].get(zmq.SRCFD)
        if self._route_fd.get(route) != fd:
            self._route_fd[route] = fd
            self._fd_route[fd] = route
        return [route, frames[1].bytes]

    async def _monitor_loop(self) -> None:
        while True:
            event, fd = struct.unpack("=hi", (await self._monitor.recv_multipart())[0])
            route = self._fd_route.pop(fd, None) if event == zmq.EVENT_DISCONNECTED else None
            # Only the peer's latest connection counts: a DEALER that reconnected with the same
            # identity (ROUTER_HANDOVER) is already heard on a new fd. A descriptor is reused only
            # after its DISCONNECTED event, and a restarted process takes far longer to say Hello
            # than this loop takes to read the event, so an fd is never mistaken for its successor.
            if route is not None and self._route_fd.get(route) == fd:
                del self._route_fd[route]
                peer = self.peers.get(route)
                if peer is not None:
                    self.disconnects += 1
                    self._lose(peer, "its connection closed")

    def _close_socket(self) -> None:
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        super()._close_socket()

    def _handle(self, route: bytes, frame: bytes) -> None:
        batch = self._unpack(frame, route)
        now = time.monotonic()
        rest = []
        for msg in batch:
            if isinstance(msg, m.Hello):
                self._handle_hello(route, msg, now)
            elif isinstance(msg, m.Heartbeat):
                self._handle_heartbeat(route, msg, now)
            else:
                rest.append(msg)
        peer = self.peers.get(route)
        if peer is not None:
            peer.last_seen = now
            if self._held and route in self._held:
                rest = self._held.pop(route)[1] + rest
            if rest:
                self.on_batch(peer, rest)
        elif rest:
            self._hold(route, rest, now)

    def _hold(self, route: bytes, messages: list, now: float) -> None:
        """A peer we don't know (we restarted, or it was declared dead) is asked to say Hello, and what
        it sent waits for that: ZeroMQ reconnects a DEALER to a restarted process before either side
        notices, and the first thing it sends may be the CallStart of a call moved here."""
        self.send(route, self.hello())
        if route not in self._held:
            if len(self._held) >= MAX_HELD_PEERS:
                self.dropped += 1
                log.warning("%d messages from an unknown peer %r dropped: too many strangers", len(messages),
                            route)
                return
            log.warning("%d messages from an unknown peer %r held; asking it to say hello", len(messages),
                        route)
            self._held[route] = (now, [])
        held = self._held[route][1]
        room = self.max_held - len(held)
        if len(messages) > room:
            self.dropped += 1
            if room:  # logged as it fills up; a stranger stays full until it says Hello or is forgotten
                log.warning("messages from an unknown peer %r dropped: %d already held", route,
                            self.max_held)
        held.extend(messages[:room])

    def _handle_hello(self, route: bytes, hello: m.Hello, now: float) -> None:
        if hello.version != m.PROTOCOL_VERSION:
            log.error("peer %r speaks protocol %d, we speak %d: ignored", route, hello.version,
                      m.PROTOCOL_VERSION)
            return
        old = self.peers.get(route)
        if old is not None and old.epoch != hello.epoch:
            self._lose(old, "restarted with a new epoch")
        if old is None or old.epoch != hello.epoch:
            log.info("%s %s joined (epoch %s, capacity %d)", hello.role, hello.endpoint or route.decode(
                errors="replace"), hello.epoch, hello.capacity)
        self.peers[route] = Peer(route, hello.role, hello.epoch, hello.capacity, hello.endpoint,
                                 last_seen=now)
        self.send(route, self.hello())

    def _handle_heartbeat(self, route: bytes, beat: m.Heartbeat, now: float) -> None:
        peer = self.peers.get(route)
        if peer is None or peer.epoch != beat.epoch:
            self.send(route, self.hello())  # we don't know it (any more): it must say Hello again
            return
        peer.load = beat.load

    def _lose(self, peer: Peer, why: str) -> None:
        log.warning("%s %s lost: %s", peer.role, peer.endpoint or peer.route.decode(errors="replace"), why)
        self.peers.pop(peer.route, None)
        self._route_fd.pop(peer.route, None)
        self.on_peer_lost(peer)

    async def _heartbeat_loop(self) -> None:
        hello = self.hello()
        while True:
            await asyncio.sleep(self.heartbeat_s)
            deadline = time.monotonic() - m.LIVENESS * self.heartbeat_s
            for peer in list(self.peers.values()):
                if peer.last_seen < deadline:
                    self._lose(peer, f"silent for {m.LIVENESS} heartbeats")
                else:
                    self.send(peer.route, m.Heartbeat(epoch=hello.epoch, load=0))
            for route, (since, held) in list(self._held.items()):
                if since < deadline:
                    del self._held[route]
                    self.dropped += 1
                    log.warning("%d messages from an unknown peer %r dropped: it never said hello", len(held),
                                route)


class DealerLink(_Link):
    """A DEALER connected to one ROUTER. ``on_batch(messages)`` gets everything but link control;
    ``on_remote_restart(old_epoch)`` fires when the other side comes back with a new epoch."""

    def __init__(self, ctx, endpoint: str, heartbeat_s: float, hello: Callable[[], m.Hello],
                 load: Callable[[], int], on_batch: Callable[[list], None],
                 on_remote_restart: Callable[[str], None] = lambda old: None, *,
                 curve: CurveKeys | None = None, runs: bool = False):
        super().__init__(ctx, endpoint, heartbeat_s, curve)
        self.hello, self.load, self.on_batch = hello, load, on_batch
        self.runs = runs
        self.on_remote_restart = on_remote_restart
        self.remote_epoch = ""
        self.last_heard = 0.0
        self.heard_since_connect = self._waiting_logged = False

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.last_heard < m.LIVENESS * self.heartbeat_s

    async def start(self) -> None:
        self._connect()
        spawn(self._heartbeat_loop(), f"dealer-heartbeat:{self.endpoint}", self._tasks)

    def send(self, msg) -> None:
        self._queue(None, msg)

    def _connect(self) -> None:
        _prepare_endpoint(self.endpoint)
        hello = self.hello()
        sock = zmq.Socket(self.ctx, zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, f"{hello.role}-{hello.epoch}".encode())
        _secure(sock, self.endpoint, self.curve, server=False)
        sock.connect(self.endpoint)
        self.last_heard = time.monotonic()  # grace: a fresh connection gets a full liveness window
        self.heard_since_connect = self._waiting_logged = False
        self._open(sock)
        self.send(hello)

    def _receive(self, frames: list) -> None:
        self._handle(frames[-1])

    def _handle(self, frame: bytes) -> None:
        batch = self._unpack(frame, self.endpoint)
        if self._waiting_logged and not self.heard_since_connect:
            log.info("%s answers", self.endpoint)
        self.last_heard = time.monotonic()
        self.heard_since_connect = True
        rest = []
        for msg in batch:
            if isinstance(msg, (m.Hello, m.Heartbeat)):
                self._check_epoch(msg)
            else:
                rest.append(msg)
        if rest:
            self.on_batch(rest)

    def _check_epoch(self, msg) -> None:
        if isinstance(msg, m.Hello) and msg.version != m.PROTOCOL_VERSION:
            log.error("%s speaks protocol %d, we speak %d", self.endpoint, msg.version, m.PROTOCOL_VERSION)
            return
        old, self.remote_epoch = self.remote_epoch, msg.epoch
        if old and old != msg.epoch:
            log.warning("%s restarted (epoch %s → %s)", self.endpoint, old, msg.epoch)
            self.on_remote_restart(old)
            self.send(self.hello())  # the new instance knows nothing of us (its Hello only asks for ours)
        if isinstance(msg, m.Heartbeat) and not old:
            self.send(self.hello())  # it heard from us before we heard from it: make sure it knows us

    async def _heartbeat_loop(self) -> None:
        backoff = 1
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self.alive:
                if self.heard_since_connect:  # the grace window alone does not reset the backoff
                    backoff = 1
                self.send(m.Heartbeat(epoch=self.hello().epoch, load=self.load()))
                continue
            if not self.heard_since_connect:
                # No one has answered on this socket: there is no dead peer's queue to purge, and ZeroMQ
                # retries the connection itself. What waits in it is for the endpoint's next process:
                # closing it could throw away a CallStart for a call just moved there, leaving it deaf.
                if not self._waiting_logged:
                    self._waiting_logged = True
                    log.warning("%s not answering since we connected; waiting for it", self.endpoint)
                continue
            # Paranoid Pirate: a silent peer may have died with our messages queued to it; a fresh
            # socket purges them. Back off so a long outage is not a reconnect storm.
            log.warning("%s silent for %d heartbeats; reconnecting in %.1fs", self.endpoint,
                        m.LIVENESS, backoff * self.heartbeat_s)
            self._close_socket()
            await asyncio.sleep(backoff * self.heartbeat_s)
            backoff = min(backoff * 2, BACKOFF_CAP)
            self._connect()
