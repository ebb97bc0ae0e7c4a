"""The gateway process: the aiohttp app on PORT, run as a stage (start/run/stop, SIGTERM-clean)."""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import web

from common.settings import Settings
from gateway.app import close_sockets, make_app

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

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()  # no new calls
        # Close the Twilio sockets before cleanup(): once aiohttp is shutting down it ignores what
        # clients send, so a close handshake begun in on_shutdown would wait out its timeout.
        await close_sockets(runner.app)
        await runner.cleanup()
