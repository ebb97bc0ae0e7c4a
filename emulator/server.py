"""The emulator stage: a local Gemini Live server (BidiGenerateContent over WSS) for the real SDK.

Serves TLS with its own self-signed certificate (``emulator.certs``) on
``settings.emulator_host:emulator_port``:

- the Live WebSocket on every path the SDK may open (Gemini API ``v1``/``v1beta``/``v1alpha``, the
  ephemeral-token ``...Constrained`` method, the Vertex path; any number of leading slashes, since a
  base URL with a trailing ``/`` gives ``//ws/...``). One connection is one session
  (``emulator.session``); the persona (``emulator.persona``) decides what the model says.
- ``GET /healthz``: ``{"sessions": <open sessions>, "log": [...]}``; the log has one entry per
  recent session (open ones last): its number, the turn count a resumption handle restored it to
  (``resumed_from``, null for a new session), its turns, whether its handle was refused, how it
  ended, and the end of its system instruction. Fault tests read resumption off it. Benchmarks read
  ``interrupted_ns`` (when each ``interrupted`` went out) and ``turns_ns`` (per recent turn: its end
  of turn detected, its first reply audio sent), CLOCK_MONOTONIC nanoseconds.

Fault knobs, per connection, counted from its setup:

- ``EMULATOR_GOAWAY_AFTER_S`` > 0: after that long, ``goAway`` with ``timeLeft`` = min(5 s, the knob),
  then a close with 1000 once that time has passed (so a 0.3 s knob gives a 0.3 s grace, not 5 s).
- ``EMULATOR_DROP_AFTER_S`` > 0: after that long, the TCP connection is aborted with no close frame
  (the SDK reports 1006).
- ``EMULATOR_REFUSE_HANDLES``: every resumption handle is refused (1007), as an expired one would be.
- ``EMULATOR_REFUSE_KEY``: every setup is refused (1008), as a bad API key would be
  (``emulator.session``).
- ``EMULATOR_STALL`` (tests only): ``no_reply``, a connection opened without a resumption handle answers
  nothing; ``empty_turn``, each connection's first caller turn completes with no audio.
"""

from __future__ import annotations

import asyncio
from collections import deque
import logging
import re
import time

from aiohttp import web

from common.settings import Settings
from emulator import certs
from emulator.resumption import HandleStore
from emulator.session import LiveSession

log = logging.getLogger(__name__)

LIVE_PATH = re.compile(
    r"^/+ws/(google\.ai\.generativelanguage\.v1(alpha|beta)?\.GenerativeService\.BidiGenerateContent"
    r"(Constrained)?|google\.cloud\.aiplatform\.v1beta1\.LlmBidiService/BidiGenerateContent)$")
MAX_CLIENT_FRAME = 4 << 20  # a client frame above this closes the session with 1009
SHUTDOWN_S = 3.0
LOG_SESSIONS = 500
INSTRUCTION_TAIL = 400  # characters of each session's system instruction shown in /healthz
CLOSE_TIMEOUT_S = 2.0  # how long a close waits for the client's reply; shutdown stays inside SIGTERM's window


class EmulatorStage:
    """``start()`` binds, ``run()`` returns once stopped, ``stop()`` closes every session with 1001
    and is safe to call twice. The constructor does no I/O."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._handles = HandleStore()
        self.interrupted_ns: deque[int] = deque(maxlen=10_000)  # see TurnPlayer; shown in /healthz
        self.turns_ns: deque[tuple[int, int]] = deque(maxlen=10_000)  # likewise
        self.log: deque[dict] = deque(maxlen=LOG_SESSIONS)  # ended sessions, for /healthz
        self._sessions: dict[LiveSession, asyncio.Event] = {}
        self._opened = 0
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None
        self._stopping = False

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/{path:.*}", self._live)
        app.on_shutdown.append(self._close_sessions)
        return app

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        ctx = await asyncio.to_thread(certs.server_context, self.settings)  # may make a key: off the loop
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=SHUTDOWN_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.emulator_host, self.settings.emulator_port,
                           ssl_context=ctx)
        await site.start()
        log.info("emulator listening on %s (persona %s, goAway after %g s, drop after %g s)",
                 self.settings.emulator_base_url, self.settings.emulator_persona,
                 self.settings.emulator_goaway_after_s, self.settings.emulator_drop_after_s)

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._stopped is not None:
            self._stopped.set()
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()  # no new sessions
            # Close sessions before cleanup(): once aiohttp starts shutting down it ignores incoming
            # bytes, so a close handshake begun in on_shutdown waits out its timeout for the reply.
            await self._close_sessions(self._runner.app)
            await self._runner.cleanup()
        log.info("emulator stopped after %d sessions", self._opened)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": self.sessions, "interrupted_ns": list(self.interrupted_ns),
                                  "turns_ns": list(self.turns_ns),
                                  "log": [*self.log, *(_entry(s, "open") for s in self._sessions)]})

    async def _live(self, request: web.Request) -> web.StreamResponse:
        if not LIVE_PATH.match(request.path):
            raise web.HTTPNotFound(text=f"no Live endpoint at {request.path}\n")
        ws = web.WebSocketResponse(max_msg_size=MAX_CLIENT_FRAME, timeout=CLOSE_TIMEOUT_S)
        if not ws.can_prepare(request).ok:
            raise web.HTTPBadRequest(text="expected a WebSocket upgrade\n")
        await ws.prepare(request)
        self._opened += 1
        session = LiveSession(ws, request, self.settings, self._handles, self._opened, self.interrupted_ns,
                              self.turns_ns)
        self._sessions[session] = done = asyncio.Event()
        started = time.monotonic()
        log.info("session %d started on %s, key %s (%d open)", session.number, request.path,
                 "present" if request.headers.get("x-goog-api-key") else "absent", self.sessions)
        try:
            await session.run()
        finally:
            del self._sessions[session]
            done.set()
            self.log.append(_entry(session, session.ended_by))
            log.info("session %d ended (%s) after %.1f s, %d turns (%d open)", session.number,
                     session.ended_by, time.monotonic() - started, session.turns, self.sessions)
        return ws

    async def _close_sessions(self, app: web.Application) -> None:
        for session in list(self._sessions):
            session.shutdown()
        waits = [asyncio.create_task(done.wait()) for done in self._sessions.values()]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=SHUTDOWN_S)
            for task in pending:
                task.cancel()


def _entry(session: LiveSession, ended_by: str) -> dict:
    return {"number": session.number, "resumed_from": session.resumed_from, "turns": session.turns,
            "refused_handle": session.refused_handle, "ended_by": ended_by,
            "instruction": session.instruction[-INSTRUCTION_TAIL:]}
