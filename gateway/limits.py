"""Limits that keep bad or excessive input from hurting any call (docs/architecture.md#failure-model).

- ``StreamGuard``, one per Twilio socket: a token bucket on its message rate (a flood is dropped,
  counted, logged once per interval, and the socket closed if it persists), a deadline for ``start``
  after the upgrade, and a deadline for media during the call. The WebSocket's own size limit shows
  up here as an ERROR message, also logged and counted.
- ``capacity``: how many calls the gateway may hold: ``BRIDGE_MAX_CALLS``, never more than the live
  transcoders and model_clients advertise. The webhook refuses a call politely when the calls held
  plus the streams promised at ``/twiml`` but not started yet reach it: never accepted, then starved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from common import messages as m
from common.lifecycle import spawn
from common.logs import call_context
from common.settings import Settings

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 5.0  # a flood is logged at most this often per socket
FLOOD_GAP_S = 1.0  # drops less than this apart belong to one flood


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take`` spends one if there is one."""

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def capacity(live_peers: Callable[[str], list], max_calls: int) -> int:
    """Calls the live peers can hold (the smaller of the two stages' advertised capacities), capped by
    ``max_calls`` when it is set."""
    derived = min(sum(p.capacity for p in live_peers(role))
                  for role in (m.ROLE_TRANSCODER, m.ROLE_MODEL_CLIENT))
    return min(derived, max_calls) if max_calls else derived


class StreamGuard:
    """Rate limit and deadlines for one Twilio socket. ``call()`` is the admitted call (None before
    ``start``); ``progress()`` changes whenever media arrives."""

    def __init__(self, ws: web.WebSocketResponse, settings: Settings, counters: dict[str, int],
                 call: Callable[[], object | None], progress: Callable[[], int]):
        self.ws, self.settings, self.counters = ws, settings, counters
        self.call, self.progress = call, progress
        now = time.monotonic()
        self.bucket = TokenBucket(settings.max_msg_rate, settings.max_msg_burst, now)
        self.dropped = 0  # since the last flood log line
        self._flood_since = self._last_drop = 0.0
        self._logged = -LOG_INTERVAL_S
        self._closing = False
        self._watchdog: asyncio.Task | None = None

    def start(self) -> None:
        self._watchdog = spawn(self._watch(), "twilio-stream-watchdog")

    async def stop(self) -> None:
        if self._watchdog is not None and not self._watchdog.done():
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        self._watchdog = None  # see common.lifecycle.cancel_all

    def allow(self, msg) -> bool:
        """False: drop this message (already logged and counted)."""
        if msg.type == WSMsgType.ERROR:
            self._count("ws_error")
            self._log(logging.WARNING, "WebSocket error, stream closing: %s", msg.data)
            return False
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return True
        now = time.monotonic()
        if self.bucket.take(now):
            return True
        self._flooded(now)
        return False

    def _flooded(self, now: float) -> None:
        self._count("twilio_flood_dropped")
        self.dropped += 1
        if now - self._last_drop > FLOOD_GAP_S:
            self._flood_since = now
        self._last_drop = now
        if now - self._logged >= LOG_INTERVAL_S:
            self._log(logging.WARNING, "flood: %d messages dropped (limit %g/s, burst %d)", self.dropped,
                      self.settings.max_msg_rate, self.settings.max_msg_burst)
            self._logged, self.dropped = now, 0
        if now - self._flood_since >= self.settings.flood_close_s:
            self._close("flood", f"flooding for {now - self._flood_since:.1f} s")

    async def _watch(self) -> None:
        await asyncio.sleep(self.settings.start_timeout_s)
        if self.call() is None:
            self._close("start_timeout", f"no start within {self.settings.start_timeout_s:g} s")
            return
        timeout = self.settings.media_timeout_s
        if not timeout:
            return
        seen, since = self.progress(), time.monotonic()
        while not self.ws.closed:
            await asyncio.sleep(min(timeout / 4, 1.0))
            now, progress = time.monotonic(), self.progress()
            if progress != seen:
                seen, since = progress, now
            elif now - since >= timeout:
                self._close("media_timeout", f"no media for {timeout:g} s")
                return

    def _close(self, why: str, detail: str) -> None:
        if self._closing or self.ws.closed:
            return
        self._closing = True
        self._count(f"ws_closed_{why}")
        self._log(logging.WARNING, "closing the stream: %s", detail)
        spawn(self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=why.encode()), "twilio-ws-close")

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _log(self, level: int, text: str, *args) -> None:
        call = self.call()
        with call_context(getattr(call, "id", "-")):
            log.log(level, text, *args)
