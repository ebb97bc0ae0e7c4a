"""The ROUTER side of a link: ``RouterLink`` and its table of peers (``Peer``).

It keeps the peers that said Hello, heartbeats them back, loses one that falls silent, says Hello
with a new epoch, or (with its socket monitor) whose connection closes, and holds what a stranger
sends until it says Hello. Apart from ``DealerLink`` (common/link_dealer.py), which has one peer and
reconnects, and from the socket pass both share (common/link_socket.py); common/link.py tells the
whole story of the links.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass
from typing import Callable

import zmq
import zmq.asyncio

from common import messages as m
from common.curve import CurveKeys
from common.lifecycle import spawn
from common.link_socket import _Link, _prepare_endpoint, _secure

log = logging.getLogger(__name__)

MAX_HELD = 256  # messages a ROUTER keeps by default from one peer it does not know yet, until it says Hello
MAX_HELD_PEERS = 64  # unknown peers whose messages it keeps at once


@dataclass
class Peer:
    route: bytes
    role: str
    epoch: str
    capacity: int
    endpoint: str
    load: int = 0
    last_seen: float = 0.0


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
