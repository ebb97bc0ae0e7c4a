"""The browser phone, for development: ``GET /phone`` serves ``softphone/web/``, a page that plays
Twilio's part from a browser, and ``GET /phone/events?call=<CallSid>`` streams that call's transcript
to it as Server-Sent Events.

Mounted only when ``settings.phone`` is on (``BRIDGE_PHONE``; on by default with the emulator). The
transcript needs a side channel because ``/ws/twilio`` must carry Twilio's protocol and nothing else
(a real Twilio would warn 31951). SSE rather than a second WebSocket: one way, plain HTTP, and
EventSource is built into every browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

from aiohttp import web

from common import messages as m
from common.settings import Settings
from gateway import security

WEB_DIR = Path(__file__).resolve().parents[1] / "softphone" / "web"
JS = "text/javascript"
# A closed set, so no request can name any other file on disk.
ASSETS = {"phone.js": JS, "incoming.js": JS, "twilio.js": JS, "dsp.js": JS, "worklet.js": JS, "phone.css": "text/css"}
CALL_SID = re.compile(r"CA[0-9a-f]{32}")
PING_S = 15.0  # an SSE comment this often, so a page that went away shows up as a failed write
QUEUE_MAX = 256  # transcript events held per listener; a page that falls further behind misses some
MAX_LISTENERS = 64


class TranscriptFeed:
    """Transcript events fanned out to the pages listening for their CallSid."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[asyncio.Queue]] = {}

    def __len__(self) -> int:
        return sum(len(queues) for queues in self._listeners.values())

    def publish(self, call, msg: m.Transcript) -> None:
        """The pipeline's transcript hook (``Pipeline.on_transcript``); ``call`` is a gateway Call."""
        for queue in self._listeners.get(call.call_sid, ()):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait({"role": msg.role, "text": msg.text, "final": msg.final})

    def listen(self, call_sid: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self._listeners.setdefault(call_sid, set()).add(queue)
        return queue

    def forget(self, call_sid: str, queue: asyncio.Queue) -> None:
        queues = self._listeners.get(call_sid, set())
        queues.discard(queue)
        if not queues:
            self._listeners.pop(call_sid, None)

    def close(self) -> None:
        """Shutting down: every open stream ends (None is its end-of-stream)."""
        for queues in self._listeners.values():
            for queue in queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)


FEED = web.AppKey("phone_feed", TranscriptFeed)
OPEN_TO_ALL = web.AppKey("phone_open_to_all", bool)


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    headers = {"Content-Type": ASSETS[name], "Cache-Control": "no-cache"}
    return web.FileResponse(WEB_DIR / name, headers=headers)


async def events(request: web.Request) -> web.StreamResponse:
    call_sid = request.query.get("call", "")
    if not CALL_SID.fullmatch(call_sid):
        raise web.HTTPBadRequest(text="call must be a CallSid: CA and 32 hex digits")
    # A CallSid is no secret (Twilio puts it in every webhook), so transcripts go only where the page
    # could have placed the call from: this host, or anywhere when BRIDGE_INSECURE_DEV says so.
    if not (request.app[OPEN_TO_ALL] or security.is_loopback_peer(request)):
        raise web.HTTPForbidden(text="transcripts are served to this host only (BRIDGE_INSECURE_DEV)\n")
    feed = request.app[FEED]
    if len(feed) >= MAX_LISTENERS:
        raise web.HTTPServiceUnavailable(text="too many transcript listeners")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    queue = feed.listen(call_sid)
    try:
        await response.write(b": listening\n\n")  # EventSource opens on the first bytes
        while (event := await _next(queue, response)) is not None:
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    except ConnectionResetError:
        pass  # the page went away
    finally:
        feed.forget(call_sid, queue)
    return response


async def _next(queue: asyncio.Queue, response: web.StreamResponse) -> dict | None:
    while True:
        try:
            return await asyncio.wait_for(queue.get(), PING_S)
        except TimeoutError:
            await response.write(b": ping\n\n")


def setup(app: web.Application, pipeline_key: web.AppKey, settings: Settings) -> None:
    """Mount the page and its transcript feed; call after the pipeline's cleanup context is added
    (contexts start in order, so the pipeline exists when the hook is set)."""
    feed = app[FEED] = TranscriptFeed()
    app[OPEN_TO_ALL] = settings.insecure_dev

    async def hook(app: web.Application):
        app[pipeline_key].on_transcript = feed.publish
        yield

    async def close(app: web.Application) -> None:
        feed.close()

    app.cleanup_ctx.append(hook)
    app.on_shutdown.append(close)
    app.router.add_get("/phone", page)
    app.router.add_get("/phone/events", events)  # before /phone/{name}, which would match it too
    app.router.add_get("/phone/{name}", asset)
