"""The emulator's fault knobs, per connection, counted from its setup: ``EMULATOR_GOAWAY_AFTER_S``
sends ``goAway`` then closes with 1000, ``EMULATOR_DROP_AFTER_S`` aborts the TCP connection with no
close frame (the SDK reports 1006). ``FaultKnobs`` is mixed into ``LiveSession``
(emulator/session.py), whose connection it works on (declared below)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from common.lifecycle import spawn
from common.settings import Settings
from emulator import wire
from emulator.turns import Gone

GOAWAY_GRACE_S = 5.0  # goAway's timeLeft; never more than the goAway delay itself (fast tests)

log = logging.getLogger("emulator.session")


class FaultKnobs:
    """Besides the attributes below it uses ``LiveSession``'s ``_send`` and ``_end``."""

    number: int
    _settings: Settings
    _request: web.Request
    _label: str
    _tasks: set[asyncio.Task]
    _dropped: bool

    def _start_timers(self) -> None:
        if self._settings.emulator_goaway_after_s > 0:
            spawn(self._go_away_later(self._settings.emulator_goaway_after_s),
                  f"emulator.s{self.number}.goaway", self._tasks)
        if self._settings.emulator_drop_after_s > 0:
            spawn(self._drop_later(self._settings.emulator_drop_after_s),
                  f"emulator.s{self.number}.drop", self._tasks)

    async def _go_away_later(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        grace = min(GOAWAY_GRACE_S, after_s)
        try:
            await self._send(wire.go_away(grace))
        except Gone:
            return
        log.info("%s: goAway sent, closing in %g s", self._label, grace)
        await asyncio.sleep(grace)
        self._end(1000, "connection lifetime reached", "goAway")

    async def _drop_later(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        log.info("%s: dropping the connection (no close frame)", self._label)
        self._dropped = True
        if self._request.transport is not None:
            self._request.transport.abort()
        self._end(1006, "", "dropped")
