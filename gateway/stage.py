"""The gateway process: the aiohttp app on PORT, run as a stage (start/run/stop, SIGTERM-clean)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from aiohttp import web

from common.settings import Settings
from gateway.app import DRAINING, PIPELINE, close_sockets, make_app

log = logging.getLogger(__name__)


class GatewayStage:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        if self.settings.transcript_dir:
            os.makedirs(self.settings.transcript_dir, mode=0o700, exist_ok=True)
        logging.getLogger("aiohttp.access").addFilter(lambda r: "/healthz" not in r.getMessage())
        self._runner = web.AppRunner(make_app(self.settings), shutdown_timeout=3.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.settings.host, self.settings.port).start()
        log.info("listening on %s:%d, public URL %s", self.settings.host, self.settings.port,
                 self.settings.public_url)

    async def _drain(self, app: web.Application) -> None:
        """Refuse new calls and give live ones up to BRIDGE_DRAIN_S to finish on their own."""
        app[DRAINING].set()
        calls = app[PIPELINE].calls
        deadline = time.monotonic() + self.settings.drain_s
        if calls:
            log.info("draining: %d live calls, up to %.0f s", len(calls), self.settings.drain_s)
        while calls and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if calls:
            log.warning("drain time over: ending %d calls", len(calls))

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self._drain(runner.app)
        for site in list(runner.sites):
            await site.stop()  # no new calls
        # Close the Twilio sockets before cleanup(): once aiohttp is shutting down it ignores what
        # clients send, so a close handshake begun in on_shutdown would wait out its timeout.
        await close_sockets(runner.app)
        await runner.cleanup()
