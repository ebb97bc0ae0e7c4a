"""The DEALER side of a link: ``DealerLink``, connected to one ROUTER, reconnecting when it falls silent.

It says Hello on every (re)connect, heartbeats, reports the other side's new epoch, and closes and
reopens its socket with doubling backoff once a peer that answered falls silent. Apart from
``RouterLink`` (common/link_router.py), which keeps a table of many peers, and from the socket pass
both share (common/link_socket.py); common/link.py tells the whole story of the links.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import zmq

from common import messages as m
from common.curve import CurveKeys
from common.lifecycle import spawn
from common.link_socket import _Link, _prepare_endpoint, _secure

log = logging.getLogger(__name__)

BACKOFF_CAP = 32  # heartbeat intervals


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
