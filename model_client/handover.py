"""goAway: hand the session over to a second connection before the first one is closed.

At goAway a second connection is opened at once with the latest handle while the old one still works.
The switch waits for a turn boundary (no model turn streaming, no tool running, and a handle newer than
the model's last activity), so no answer is cut, unless only ``margin_s`` is left. A handle arriving
meanwhile makes the standby stale: at the next boundary it is reopened with the newer one. A refused
handle (1007) gives a fresh standby, told the conversation so far.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from common.lifecycle import spawn
from model_client.gemini_wire import Connection, Dialer
from model_client.reconnect import Ended, Opening, next_step, time_left_s

log = logging.getLogger(__name__)

STANDBY_RETRY_S = 0.2


class Host(Protocol):
    """What the hand-over needs of its session (passed to each hand-over, never kept, so that a
    session and its hand-over never hold each other)."""
    handle: str  # the latest resumption handle
    connection: Connection | None  # the one the session sends on
    stats: dict[str, int]

    def quiet(self) -> bool: ...  # at a turn boundary, with a handle newer than the model's activity
    def switch(self, new: Connection, forced: bool) -> None: ...


class Handover:
    def __init__(self, call: str, dialer: Dialer, margin_s: float):
        self.call, self.dialer, self.margin_s = call, dialer, margin_s
        self.standby: Connection | None = None
        self.opening = ""  # the handle a standby is being opened with
        self.task: asyncio.Task | None = None
        self._deadline = 0.0  # loop time the connection that sent goAway ends
        self._poke = asyncio.Event()  # a turn boundary or a new handle: look again

    def go_away(self, time_left: str | None, host: Host) -> None:
        left = time_left_s(time_left)
        log.warning("Gemini goAway, %s left: opening the next connection now", time_left)
        self._deadline = asyncio.get_running_loop().time() + left
        if self.task is None or self.task.done():
            self.task = spawn(self._hand_over(host.connection, host), f"session-handover:{self.call}")

    def poke(self) -> None:
        self._poke.set()

    def keep(self) -> tuple[str, ...]:
        """The handles a standby needs the journal to keep: the one it is opened (or opening) with."""
        return tuple(h for h in (self.opening, self.standby.replay_from if self.standby else "") if h)

    def take_standby(self) -> Connection | None:
        standby, self.standby = self.standby, None
        return standby

    def stopped(self) -> None:
        """The connection that sent goAway has ended and ``task`` is cancelled: drop it (see
        common.lifecycle.cancel_all); a standby already open stays for the reconnect to take."""
        self.task = None
        self.opening = ""

    async def _hand_over(self, old: Connection, host: Host) -> None:
        loop = asyncio.get_running_loop()
        while host.connection is old:
            standby = self.standby
            if standby is None or (standby.replay_from != host.handle and host.quiet()):
                await self._open_standby(host)
                continue
            forced = loop.time() >= self._deadline - self.margin_s
            if forced or (host.quiet() and standby.replay_from == host.handle):
                self.standby = self.task = None  # this task ends here: see stopped()
                host.switch(standby, forced=forced)
                return
            self._poke.clear()
            try:
                await asyncio.wait_for(self._poke.wait(), self._deadline - self.margin_s - loop.time())
            except TimeoutError:
                pass

    async def _open_standby(self, host: Host) -> None:
        stale, self.standby = self.standby, None
        if stale is not None:
            await stale.close()  # the model has said more since its handle
        self.opening = host.handle
        conn = await self.dialer.open(Opening(handle=host.handle, replay_from=host.handle))
        if isinstance(conn, Ended) and next_step(conn, resuming=bool(host.handle)) == "fresh":
            log.warning("resumption handle refused (%s): the next connection starts fresh, told "
                        "the conversation so far", conn)
            host.stats["fresh"] += 1
            conn = await self.dialer.open(Opening(handle="", replay_from=self.opening, fresh=True))
        self.opening = ""
        if isinstance(conn, Ended):
            log.warning("standby connection failed (%s)", conn)
            await asyncio.sleep(STANDBY_RETRY_S)
            return
        self.standby = conn  # if the old one ended meanwhile, the reconnect takes this one
