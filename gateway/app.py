"""The gateway's aiohttp application: Twilio webhooks, the media WebSocket, health.

App factory + typed AppKeys + a cleanup context for the ZeroMQ pipeline, and ``on_shutdown`` closing
every Twilio socket with GOING_AWAY (aiohttp's graceful-shutdown pattern).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSCloseCode, web

from common import messages as m
from common.lifecycle import cancel_all, spawn
from common.logs import call_context, name_call, register_call
from common.settings import Settings
from gateway import backends, limits, media_ws, metrics, outbound, phone, phone_dial, security, twiml
from gateway.admission import Admissions
from gateway.lag_gate import LagGate
from gateway.pipeline import Pipeline

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
PIPELINE = web.AppKey("pipeline", Pipeline)
ADMISSIONS = web.AppKey("admissions", Admissions)
LAG_GATE = web.AppKey("lag_gate", LagGate)  # closed while a process's event loop runs late
COUNTERS = web.AppKey("counters", dict)
METRICS = web.AppKey("metrics", object)  # the /metrics handler, made once the pipeline exists
DRAINING = web.AppKey("draining", asyncio.Event)  # set on SIGTERM: refuse new calls, let live ones end

BUSY_MESSAGE = "Sorry, all of our agents are busy right now. Please call again later."
SORRY_MESSAGE = "Sorry, we are having technical difficulties. Please call again later."
STALLED_MESSAGE = "Sorry, that took me a moment. Let's carry on."
XML = "text/xml"


async def twiml_webhook(request: web.Request) -> web.Response:
    """Twilio's voice webhook: admit the call and answer with <Connect><Stream>, or refuse politely."""
    form = await request.post()
    call_sid = form.get("CallSid", "")
    if not isinstance(call_sid, str) or not security.CALL_SID.fullmatch(call_sid):
        # It names files (transcripts) and log lines: letters and digits only, as Twilio's are.
        log.warning("voice webhook without a valid CallSid refused")
        raise web.HTTPBadRequest(text="CallSid missing or malformed")
    app = request.app
    if app[DRAINING].is_set():
        _count(app, "calls_refused_draining")
        log.warning("call %s refused: this gateway is draining (shutting down)", call_sid)
        return web.Response(text=twiml.say_hangup_twiml(BUSY_MESSAGE), content_type=XML)
    if not app[PIPELINE].can_take_call():
        _count(app, "calls_refused")
        log.error("call %s refused: no live transcoder or model_client", call_sid)
        return web.Response(text=twiml.say_hangup_twiml(BUSY_MESSAGE), content_type=XML)
    down = backends.down(backends.backends(app[PIPELINE]))
    if down:  # a stream now would be silence until its session gave up
        _count(app, "calls_refused_backend_down")
        return _unavailable(app, call_sid, f"refused: {down}")
    settings = app[SETTINGS]
    held, room = len(app[PIPELINE].calls) + app[ADMISSIONS].pending, _capacity(app)
    if held >= room:  # refused now, politely, rather than accepted and then starved
        _count(app, "calls_refused_capacity")
        log.warning("call %s refused: at capacity (%d calls held or starting, capacity %d)", call_sid,
                    held, room)
        return web.Response(text=twiml.say_hangup_twiml(BUSY_MESSAGE), content_type=XML)
    full = app[LAG_GATE].why_full()
    if full:  # one more call would be late for every call already here
        _count(app, "calls_refused_loop_lag")
        log.warning("call %s refused: %s", call_sid, full)
        return web.Response(text=twiml.say_hangup_twiml(BUSY_MESSAGE), content_type=XML)
    call, token = app[ADMISSIONS].issue(call_sid)
    register_call(call, call_sid)
    with call_context(call):
        log.info("call %s (%s) admitted", call, call_sid)
    if settings.prewarm:
        app[PIPELINE].prewarm(call, call_sid)
    # The call id rides along to the webhooks about this stream, so their log lines can name it.
    body = twiml.connect_stream_twiml(
        settings.stream_url, {"token": token}, after_url=f"{settings.public_url}/twiml/after?call={call}",
        status_callback_url=f"{settings.public_url}/twiml/stream-status?call={call}")
    return web.Response(text=body, content_type=XML)


async def twiml_after(request: web.Request) -> web.Response:
    """What Twilio does once the stream has ended: the call's disposition (gateway/call_state.py)."""
    form = await request.post()
    call_sid = form.get("CallSid", "")
    if not isinstance(call_sid, str) or not call_sid:
        raise web.HTTPBadRequest(text="CallSid missing")
    name_call(request.query.get("call", ""), call_sid)  # the call id our TwiML put in the URL
    done = await request.app[PIPELINE].state.after(call_sid)
    _count(request.app, f"twiml_after_{done.disposition}")
    log.info("stream of %s ended: %s%s", call_sid, done.disposition, f" to {done.target}" if done.target else "")
    if done.disposition == "transfer":
        body = twiml.dial_twiml(done.target)
    elif done.disposition == "resume":
        return await twiml_webhook(request)  # a fresh stream for the same call
    elif done.disposition == "stalled":  # the model stopped answering: a word of apology, then carry on
        resumed = await twiml_webhook(request)
        return web.Response(text=twiml.say_first(STALLED_MESSAGE, resumed.text), content_type=XML)
    elif done.disposition == "apologise":
        return _unavailable(request.app, call_sid, "gave up after its streams failed")
    else:
        body = twiml.hangup_twiml()
    _give_up(request.app, call_sid)
    return web.Response(text=body, content_type=XML)


def _unavailable(app: web.Application, call_sid: str, why: str) -> web.Response:
    """Never dead air: a <Dial> to BRIDGE_FALLBACK_DIAL (a human) if it is set, else the apology."""
    _give_up(app, call_sid)
    target = app[SETTINGS].fallback_dial
    if target:
        _count(app, "fallback_dials")
        log.warning("call %s %s: dialling the fallback %s", call_sid, why, target)
        return web.Response(text=twiml.dial_twiml(target), content_type=XML)
    log.warning("call %s %s: the apology, then hang up", call_sid, why)
    return web.Response(text=twiml.say_hangup_twiml(SORRY_MESSAGE), content_type=XML)


def _give_up(app: web.Application, call_sid: str) -> None:
    """Our answer ends the call's streams: tokens issued for it and not used are void, and the
    pre-warmed sessions waiting for them end (no session outlives its call)."""
    for call in app[ADMISSIONS].revoke(call_sid):
        app[PIPELINE].drop_prewarm(call, "call over")


async def stream_status(request: web.Request) -> web.Response:
    """Twilio's stream statusCallback: the only place a failed WebSocket handshake shows."""
    form = await request.post()
    event, sid = form.get("StreamEvent", ""), form.get("CallSid", "")
    name_call(request.query.get("call", ""), sid, form.get("StreamSid", ""))  # the call id from our TwiML
    if event == "stream-error":
        _count(request.app, "stream_errors")
        log.warning("Twilio reports stream error for %.40r: %.200r", sid, form.get("StreamError", ""))
    else:
        log.info("Twilio reports %.40r for %.40r", event, sid)
    return web.Response(status=204)


def _capacity(app: web.Application) -> int:
    return limits.capacity(app[PIPELINE].live, app[SETTINGS].max_calls)


def refusal(app: web.Application) -> str:
    """Why no new call can be taken now, "" if one can: not draining, a transcoder and a model_client
    live, a model_client with a working Gemini backend (gateway/backends.py), capacity left, no event
    loop running late (gateway/lag_gate.py). What /readyz says, and what POST /calls checks before it
    dials."""
    pipeline = app[PIPELINE]
    held, room = len(pipeline.calls) + app[ADMISSIONS].pending, _capacity(app)
    return ("draining" if app[DRAINING].is_set() else
            "no live transcoder or model_client" if not pipeline.can_take_call() else
            backends.not_ready(backends.backends(pipeline)) or
            ("at capacity" if held >= room else "") or app[LAG_GATE].why_full())


async def readyz(request: web.Request) -> web.Response:
    """Ready for a new call (``refusal``)."""
    app = request.app
    why = refusal(app)
    held, room = len(app[PIPELINE].calls) + app[ADMISSIONS].pending, _capacity(app)
    return web.json_response({"ready": not why, "why": why, "calls": held, "capacity": room},
                             status=503 if why else 200)


async def healthz(request: web.Request) -> web.Response:
    """Our processes ("status"), and what each model_client says of Gemini ("backend", per peer too)."""
    pipeline = request.app[PIPELINE]
    found = backends.backends(pipeline)
    backend_of = {b.model_client: b for b in found}
    peers = []
    for p in pipeline.router.peers.values():
        peer = {"role": p.role, "epoch": p.epoch, "endpoint": p.endpoint or p.route.decode(errors="replace"),
                "load": p.load}
        if p.role == m.ROLE_MODEL_CLIENT and p.endpoint in backend_of:
            peer.update(backend=backend_of[p.endpoint].state, backend_why=backend_of[p.endpoint].why)
        peers.append(peer)
    ready = pipeline.can_take_call()
    return web.json_response({
        "status": "ok" if ready else "degraded",
        "backend": backends.summary(found),
        "calls": len(pipeline.calls),
        "transcoders": len(pipeline.live(m.ROLE_TRANSCODER)),
        "model_clients": len(pipeline.live(m.ROLE_MODEL_CLIENT)),
        "peers": peers,
        "capacity": _capacity(request.app),
        "pending_streams": request.app[ADMISSIONS].pending,
        # What admission by loop lag sees: each process's latest interval (gateway/lag_gate.py).
        "loop_lag_ms": {name: round(lag, 1) for name, lag in sorted(request.app[LAG_GATE].lag_ms.items())},
        "counters": {**request.app[COUNTERS], "pipeline_rejected": pipeline.router.rejected,
                     "pipeline_dropped": pipeline.router.dropped, "unknown_call": pipeline.unknown_call,
                     "peer_disconnects": pipeline.router.disconnects, **pipeline.moves,
                     "call_state_errors": pipeline.state.errors},
    })


def _count(app: web.Application, name: str) -> None:
    app[COUNTERS][name] = app[COUNTERS].get(name, 0) + 1


async def _pipeline_ctx(app: web.Application):
    pipeline = Pipeline(app[SETTINGS])
    await pipeline.start()
    app[PIPELINE] = pipeline
    app[METRICS] = metrics.make_handler(pipeline, app[COUNTERS], app[ADMISSIONS], app[SETTINGS].metrics_token)
    tasks: set[asyncio.Task] = set()
    if app[SETTINGS].admit_lag_ms:
        spawn(app[LAG_GATE].run(pipeline), "lag-gate", tasks)
    yield
    await cancel_all(tasks)
    await pipeline.stop()


async def close_sockets(app: web.Application) -> None:
    sockets = list(app[media_ws.OPEN_SOCKETS])
    if sockets:
        log.info("closing %d Twilio streams (going away)", len(sockets))
    await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")
                           for ws in sockets))


def make_app(settings: Settings) -> web.Application:
    counters: dict[str, int] = {}
    guard = security.Guard(settings, counters, open_sockets=lambda: len(app[media_ws.OPEN_SOCKETS]),
                           capacity=lambda: _capacity(app))
    app = web.Application(middlewares=[guard.middleware])
    app[SETTINGS] = settings
    app[COUNTERS] = counters
    app[DRAINING] = asyncio.Event()
    app[ADMISSIONS] = Admissions(settings.bridge_secret, counters=counters)
    app[LAG_GATE] = LagGate(settings.admit_lag_ms, counters)
    security.announce(settings)
    app[media_ws.OPEN_SOCKETS] = set()
    app.cleanup_ctx.append(_pipeline_ctx)
    app.on_shutdown.append(close_sockets)

    async def media(request: web.Request) -> web.WebSocketResponse:
        return await media_ws.handle(request, app[PIPELINE], app[ADMISSIONS], app[COUNTERS])

    app.router.add_post("/twiml", twiml_webhook)
    app.router.add_post("/twiml/after", twiml_after)
    app.router.add_post("/twiml/stream-status", stream_status)
    app.router.add_get("/ws/twilio", media)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)

    async def metrics_endpoint(request: web.Request) -> web.Response:
        handler = request.app.get(METRICS)
        if handler is None:  # the pipeline is not up yet
            raise web.HTTPServiceUnavailable(text="starting")
        return await handler(request)
    app.router.add_get("/metrics", metrics_endpoint)
    dialler = outbound.setup(app, settings, outbound.Keys(PIPELINE, ADMISSIONS, COUNTERS), refusal)  # POST /calls
    if settings.phone:
        phone_dial.setup(app, settings, dialler, counters)  # the browser phone's "Call me"
        phone.setup(app, PIPELINE, settings)  # the browser phone (development): /phone and its transcripts
    return app
