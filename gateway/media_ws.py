"""One Twilio Media Streams WebSocket: connected → start (token checked) → media/dtmf/mark → stop.

Malformed input from Twilio's side is logged, counted and dropped; it never ends other calls. Nothing
is sent to Twilio before ``start`` has given us the streamSid.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from common import messages as m
from common.lifecycle import spawn
from common.logs import call_context, forget_call, name_call, register_call
from gateway import twilio_codec as tw
from gateway import usage
from gateway.admission import Admissions
from gateway.calls import Call
from gateway.limits import StreamGuard
from gateway.playout import Playout
from gateway.transcripts import TranscriptLog
from gateway.pipeline import Pipeline

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0  # how long our close waits for the peer's; well inside supervisord's stop window


class MediaStream:
    """The state machine of one Twilio stream socket."""

    def __init__(self, ws: web.WebSocketResponse, pipeline: Pipeline, admissions: Admissions,
                 counters: dict[str, int]):
        self.ws, self.pipeline, self.admissions, self.counters = ws, pipeline, admissions, counters
        self.call: Call | None = None
        self.ended = False

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def on_text(self, text: str) -> None:
        try:
            event = tw.parse_event(text, max_payload_bytes=self.pipeline.settings.max_media_payload)
        except tw.TwilioProtocolError as e:
            self._count("twilio_rejected")
            log.warning("malformed Twilio message dropped: %s", e.reason)
            return
        if isinstance(event, tw.Start):
            self._start(event)
        elif isinstance(event, tw.Connected):
            pass
        elif self.ended:
            self._count("twilio_rejected")
            log.warning("Twilio %s after stop dropped", type(event).__name__.lower())
        elif self.call is None:
            self._count("twilio_rejected")
            log.warning("Twilio %s before start dropped", type(event).__name__.lower())
        elif event.stream_sid != self.call.stream_sid:
            self._count("twilio_rejected")
            log.warning("message for stream %.40r on stream %s dropped", event.stream_sid,
                        self.call.stream_sid)
        else:
            self._handle(event)

    def _handle(self, event) -> None:
        call = self.call
        if isinstance(event, tw.Media):
            self.pipeline.caller_audio(call, event.payload, event.timestamp_ms)
        elif isinstance(event, tw.Mark):
            self._mark(event.name)
        elif isinstance(event, tw.Dtmf):
            log.info("dtmf %s", event.digit)
            self.pipeline.send(call, m.Dtmf(call=call.id, digit=event.digit))
        elif isinstance(event, tw.Stop):
            self.end("caller hung up")
            call.close()

    def _start(self, event: tw.Start) -> None:
        if self.call is not None:
            self._count("twilio_rejected")
            log.warning("second start on one stream dropped")
            return
        with call_context("-", event.call_sid, event.stream_sid):  # no call id until the token is good
            admitted = self.admissions.admit(event.custom_parameters.get("token", ""), event.call_sid)
            if admitted is None:
                self._count("stream_refused")
                log.warning("stream for %.40r refused: unknown, expired or reused token", event.call_sid)
                self._close()
                return
        settings = self.pipeline.settings
        register_call(admitted, event.call_sid, event.stream_sid)
        # This runs in the stream's own task (its request's): every line from here on, the access
        # line at the end included, names the call.
        name_call(admitted, event.call_sid, event.stream_sid)
        call = Call(admitted, event.call_sid, event.stream_sid, self.ws,
                    Playout(ahead_ms=settings.playback_ahead_ms),
                    TranscriptLog(settings.transcript_dir, event.call_sid), counters=self.counters)
        params = {k: v for k, v in event.custom_parameters.items() if k != "token"}
        if not self.pipeline.start_call(call, params):
            self._count("stream_refused")
            log.error("stream refused: no live transcoder or model_client")
            forget_call(call.id)
            self._close()
            return
        self.call = call
        call.start_writer()
        log.info("stream %s started for %s", event.stream_sid, event.call_sid)

    def _mark(self, name: str) -> None:
        call = self.call
        echo = call.mark_echoed(name)
        if echo is None:
            log.debug("unknown mark %r ignored", name)  # Twilio echoes only our own marks
            return
        self.pipeline.send(call, m.Played(call=call.id, turn=echo.turn, mark=name, cleared=echo.flushed,
                                          heard_ms=echo.heard_ms, finished=echo.finished))

    def _close(self) -> None:
        spawn(self.ws.close(), "twilio-ws-close")

    def end(self, reason: str) -> None:
        """End the call everywhere, once (a ``stop`` is usually followed by a close)."""
        if self.call is not None and not self.ended:
            self.ended = True
            with call_context(self.call.id):
                self.pipeline.end_call(self.call, reason)
                tokens, prices = self.call.usage.tokens(), self.pipeline.settings.price_per_mtok
                usage.add_to(self.pipeline.tokens, tokens)
                reason = self.call.end_reason or reason
                self.call.ended({"reason": reason, **usage.closing_record(tokens, prices)})
                log.info("call ended: %s (%s)", reason, usage.summary(tokens, prices))
            forget_call(self.call.id)


async def handle(request: web.Request, pipeline: Pipeline, admissions: Admissions,
                 counters: dict[str, int]) -> web.WebSocketResponse:
    # No permessage-deflate: it costs CPU on every frame for little gain on 160-byte audio.
    ws = web.WebSocketResponse(max_msg_size=pipeline.settings.max_ws_message, timeout=CLOSE_TIMEOUT_S,
                               compress=False)
    await ws.prepare(request)
    stream = MediaStream(ws, pipeline, admissions, counters)
    # Rate limit, start and media deadlines (gateway/limits.py); media progress is the call's seq_in.
    guard = StreamGuard(ws, pipeline.settings, counters, lambda: stream.call,
                        lambda: stream.call.seq_in if stream.call else 0)
    guard.start()
    request.app[OPEN_SOCKETS].add(ws)
    try:
        async for msg in ws:
            if not guard.allow(msg):
                continue
            if msg.type == WSMsgType.TEXT:
                stream.on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                counters["twilio_rejected"] = counters.get("twilio_rejected", 0) + 1
                log.warning("binary WebSocket frame dropped (Twilio sends text only)")
    finally:
        # The call ends before anything here waits: a handler cancelled while it waits (the caller's
        # connection lost under aiohttp's handler_cancellation, or a shutdown) skips what follows.
        request.app[OPEN_SOCKETS].discard(ws)
        stream.end("stream closed")
        await asyncio.shield(_stop_tasks(guard, stream.call))
    return ws


async def _stop_tasks(guard: StreamGuard, call: Call | None) -> None:
    await guard.stop()
    if call is not None:
        await call.stop_writer()


OPEN_SOCKETS = web.AppKey("open_sockets", set)
