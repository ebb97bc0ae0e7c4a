"""The model_client process: one Gemini Live session per call, for the transcoders that call on it.

It binds its own ROUTER (``MODEL_CLIENT_ENDPOINT`` with its process number) where transcoders connect,
and says Hello to the gateway's directory so the gateway can assign calls to it. It answers each call
on the route it last heard that call from. At start it checks the Gemini backend, and its Stats tell
the gateway whether that works (model_client/backend_check.py); while it does not, a call is ended at
once ("model unavailable") rather than left in silence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import zmq.asyncio
from google import genai

from common import messages as m
from common import model_profiles
from common.lifecycle import cancel_all, spawn
from common.curve import CurveKeys
from common.link import MAX_HELD, DealerLink, Peer, RouterLink, new_epoch
from common.logs import call_context, forget_call, register_call
from common.settings import Settings
from common.stats import LATENCY_BUCKETS_MS, STATS_INTERVAL_S, StageStats, watch_loop_lag
from model_client.backend_check import BackendHealth, open_and_close
from model_client.config import live_config, make_client
from model_client.session import GeminiSession
from model_client.tools import ToolContext, Toolbox

log = logging.getLogger(__name__)

# Sessions per process, with headroom under what one core carries (docs/performance.md#code-choices):
# past ~90% CPU the loop falls off a cliff, so the gateway must not assign more than this.
CAPACITY = 200
CLIENT_WAIT_S = 20  # the emulator, started alongside, may take this long to write its certificate and listen
BACKLOG_LIMIT = 500  # messages kept for a pre-warmed call until its transcoder says CallStart


class ModelClientStage:
    capacity = CAPACITY  # sessions the gateway may give this process (Hello)

    def __init__(self, settings: Settings):
        self.settings = settings
        self.epoch = new_epoch()
        self.endpoint = settings.model_client_endpoint_for(settings.process_num)
        self.sessions: dict[str, GeminiSession] = {}
        self.routes: dict[str, bytes] = {}
        self.backlog: dict[str, list] = {}  # output of pre-warmed sessions with no transcoder yet
        self.toolbox: Toolbox | None = None
        self._client: genai.Client | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._router: RouterLink | None = None
        self._gateway: DealerLink | None = None
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.stats = StageStats({"up_hop_ms": LATENCY_BUCKETS_MS, "loop_lag_ms": LATENCY_BUCKETS_MS})
        self._ended_sessions: dict[str, int] = {}  # session stats of ended sessions, summed
        self.backend = BackendHealth(settings.model, on_change=self._report)

    def hello(self) -> m.Hello:
        return m.Hello(role=m.ROLE_MODEL_CLIENT, epoch=self.epoch, capacity=self.capacity,
                       endpoint=self.endpoint)

    async def start(self) -> None:
        # A setting or a tool the model refuses stops the process here (lifecycle: exit 2), naming both.
        profile, warnings = model_profiles.check(self.settings)
        for warning in warnings:
            log.warning("%s", warning)
        self.toolbox = Toolbox(transfer=bool(self.settings.transfer_targets),
                               module=self.settings.tools_module, profile=profile,
                               timeout_s=self.settings.tool_timeout_s)
        log.info("tools: %s", ", ".join(self.toolbox.tools))
        self._ctx = zmq.asyncio.Context()
        hb = self.settings.heartbeat_s
        curve = CurveKeys.from_settings(self.settings)
        # A restarted model_client hears a moved call's replayed caller audio (gateway/replay.py: up to
        # replay_s of frames) before the transcoder, which reconnected unawares, has said Hello again.
        held = int(self.settings.replay_s * m.FRAMES_PER_S) + MAX_HELD
        self._router = RouterLink(self._ctx, self.endpoint, hb, self.hello, self._from_transcoder,
                                  curve=curve, max_held=held)
        self._gateway = DealerLink(self._ctx, self.settings.gateway_endpoint, hb, self.hello,
                                   lambda: len(self.sessions), self._from_gateway, self._gateway_restarted,
                                   curve=curve)
        await self._router.start()
        await self._gateway.start()
        if self.settings.backend == "echo":
            self.backend.up("echo: no model")
        else:
            starting_s = CLIENT_WAIT_S if self.settings.backend == "emulator" else 0.0
            spawn(self.backend.watch(self._check_backend, starting_s), "backend-check", self._tasks)
        spawn(self._report_loop(), "stats-report", self._tasks)
        spawn(watch_loop_lag(self.stats.histograms["loop_lag_ms"]), "loop-lag", self._tasks)
        log.info("serving at %s, backend %s, model %s", self.endpoint, self.settings.backend,
                 self.settings.model)

    async def _check_backend(self) -> None:
        """One session set up and closed, as a call would (model_client/backend_check.py). The client
        is built off the loop: loading certificates and the SDK's lazy imports would otherwise stall
        the loop and its heartbeats (an emulator certificate not written yet raises FileNotFoundError)."""
        if self._client is None:
            self._client = await asyncio.to_thread(make_client, self.settings)
        await open_and_close(self._client, self.settings.model,
                             live_config(self.settings, tools=self.toolbox.config()))

    def _connect_result(self, call: str, error: BaseException | None, *, resuming: bool) -> str:
        """A session's connect: a success marks the backend up, a failure that says it is down marks it
        down. A session that never had a connection then ends at once ("model unavailable"): its call
        gets the apology now, not after a round of retries per stream."""
        if error is None:
            self.backend.up("a call connected")
            return ""
        session = self.sessions.get(call)
        kind = self.backend.failed(error, resuming=resuming)
        if kind and session is not None and not session.stats["connections"]:
            return f"model unavailable ({self.backend.summary})"
        return ""

    async def _report_loop(self) -> None:
        """The gateway's /metrics: sessions, reconnects, hop latency up (common/stats.py)."""
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            totals = dict(self._ended_sessions)
            for session in self.sessions.values():
                for name, n in session.stats.items():
                    totals[name] = totals.get(name, 0) + n
            self.stats.counters.update({f"session_{name}": n for name, n in totals.items()})
            self.stats.gauges.update(sessions=len(self.sessions), pending_audio_bytes=sum(
                s.pending_audio_bytes for s in self.sessions.values()))
            self.stats.count_links([self._router, self._gateway])
            self._report()

    def _report(self) -> None:
        """Stats to the gateway: every STATS_INTERVAL_S, and at once when the backend's state changes
        (the gateway's /readyz and /twiml follow it)."""
        if self._gateway is None:
            return
        self.stats.gauges["backend_up"] = int(self.backend.state == m.BACKEND_UP)
        msg = self.stats.message()
        msg.backend, msg.backend_why = self.backend.state, self.backend.why
        self._gateway.send(msg)

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        if self._ctx is None:
            return
        self._stopped.set()
        log.info("stopping with %d sessions", len(self.sessions))
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())))
        await cancel_all(self._tasks)
        await self._gateway.stop()
        await self._router.stop()
        if self._client is not None:
            await self._client.aio.aclose()
        self._ctx.destroy(linger=0)
        self._ctx = None

    # --- messages in --------------------------------------------------------------------------

    def _from_transcoder(self, peer: Peer, batch: list) -> None:
        for msg in batch:
            if isinstance(msg, m.CallStart):
                self._handle_call_start(peer.route, msg)
                continue
            session = self.sessions.get(msg.call)
            if session is None:  # normal for frames in flight when a call ends; a call whose
                self.stats.count("unknown_call")  # CallStart never came would show here too
                continue
            self.routes[msg.call] = peer.route
            if isinstance(msg, m.AudioUp):
                self.stats.histograms["up_hop_ms"].observe((time.monotonic_ns() - msg.t_in) / 1e6)
                session.send_audio(msg.audio, msg.t_in)
            elif isinstance(msg, m.Dtmf):
                session.dtmf(msg.digit)
            elif isinstance(msg, m.Played):
                session.played(msg)
            elif isinstance(msg, m.CallEnd):
                self._end(msg.call, msg.reason)
            else:
                log.error("unexpected %s from a transcoder dropped", type(msg).__name__)

    def _from_gateway(self, batch: list) -> None:
        """The directory link: pre-warm at the webhook (CallStart with no transcoder yet), and a
        CallEnd when the call's transcoder is gone."""
        for msg in batch:
            if isinstance(msg, m.CallStart):
                self._handle_call_start(None, msg)
            elif isinstance(msg, m.Greet):
                session = self.sessions.get(msg.call)
                if session is None:
                    log.warning("greeting for unknown call %.20r dropped", msg.call)
                else:
                    session.greet(msg.text)
            elif isinstance(msg, m.CallEnd) and msg.call in self.sessions:
                self._end(msg.call, msg.reason)

    def _handle_call_start(self, route: bytes | None, msg: m.CallStart) -> None:
        register_call(msg.call, msg.call_sid, msg.stream_sid)
        with call_context(msg.call):
            if route is not None:
                self.routes[msg.call] = route
                for held in self.backlog.pop(msg.call, []):
                    self._router.send(route, held)
            if msg.call in self.sessions:
                log.info("%s joined its %s session", "transcoder" if msg.resume else "stream",
                         "existing" if msg.resume else "pre-warmed" if route else "existing")
                return
            if self.backend.down:  # the gateway stops sending calls; these were on their way
                log.warning("call refused at once: %s", self.backend.summary)
                self._emit(m.CallEnd(call=msg.call, reason=f"model unavailable ({self.backend.summary})"))
                self._forget(msg.call)
                return
            session = self.new_session(msg)
            if session is not None:
                self._start_session(route, msg, session)

    def new_session(self, msg: m.CallStart) -> GeminiSession | None:
        """The call's Gemini session; None, and the call ended, when there is no client."""
        try:
            client = self._client or make_client(self.settings)
        except Exception as e:
            log.error("cannot create the Gemini client: %s", e)
            self._emit(m.CallEnd(call=msg.call, reason="model unavailable"))
            return None
        self._client = client
        context = ToolContext(call=msg.call, call_sid=msg.call_sid, params=dict(msg.params),
                              emit=self._emit, transfer_allowed=self.settings.transfer_allowed)
        return GeminiSession(
            call=msg.call, client=client, settings=call_settings(self.settings, msg), toolbox=self.toolbox,
            context=context, emit=self._emit, on_end=self._session_ended, handle=msg.resume_handle,
            turn=msg.turn, resumed=msg.resume, hold_greeting=msg.hold_greeting, age_s=msg.age_ms / 1000,
            on_connect=lambda error, resuming: self._connect_result(msg.call, error, resuming=resuming))

    def _start_session(self, route: bytes | None, msg: m.CallStart, session) -> None:
        self.sessions[msg.call] = session
        if route is None:
            self.backlog[msg.call] = []
        session.start()
        how = ""
        if route is None:
            how = " (pre-warm)"
        elif msg.resume:
            how = " (taking over a live call%s)" % (", resuming its handle" if msg.resume_handle else "")
        if msg.age_ms >= 1000:  # a call under way (a first stream's age is a few ms)
            how += f" (the call began {msg.age_ms / 1000:.1f} s ago)"
        log.info("session starting%s; %d sessions", how, len(self.sessions))

    def _end(self, call: str, reason: str) -> None:
        session = self.sessions.pop(call, None)
        self._keep_stats(session)
        if session is not None:
            with call_context(call):
                log.info("call ended (%s); %d sessions", reason, len(self.sessions))
            spawn(session.close(), f"session-close:{call}", self._tasks)
        self._forget(call)

    def _session_ended(self, call: str) -> None:
        self._keep_stats(self.sessions.pop(call, None))
        self._forget(call)

    def _keep_stats(self, session: GeminiSession | None) -> None:
        for name, n in (session.stats.items() if session is not None else ()):
            self._ended_sessions[name] = self._ended_sessions.get(name, 0) + n

    def _forget(self, call: str) -> None:
        self.routes.pop(call, None)
        self.backlog.pop(call, None)
        forget_call(call)

    def _gateway_restarted(self, old_epoch: str) -> None:
        for call in list(self.sessions):
            self._end(call, "gateway restarted")
        self._report()  # the new gateway learns the backend's state now, not at the next report

    # --- messages out -------------------------------------------------------------------------

    def _emit(self, msg) -> None:
        route = self.routes.get(msg.call)
        if route is not None:
            self._router.send(route, msg)
            return
        if isinstance(msg, m.CallEnd):
            self._gateway.send(msg)  # no transcoder to carry it (a pre-warmed session): tell the gateway
            return
        held = self.backlog.get(msg.call)
        if held is not None and len(held) < BACKLOG_LIMIT:
            held.append(msg)  # pre-warmed: the greeting waits for the stream


def call_settings(settings: Settings, msg: m.CallStart) -> Settings:
    """The settings one call's session runs with: an outbound call may bring its own system instruction
    and greeting (POST /calls)."""
    overrides = {name: value for name, value in (("system_instruction", msg.instruction),
                                                 ("greeting", msg.greeting)) if value}
    return replace(settings, **overrides) if overrides else settings
