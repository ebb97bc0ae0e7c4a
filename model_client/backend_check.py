"""Whether Gemini can be used at all: checked once at start, kept up to date after.

At start the model_client opens one Live session the way a call does (the real SDK, the calls' own
config), closes it, and says in one line what it found:

    Gemini backend ok (gemini-3.8-live, 212 ms)
    Gemini unreachable: ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 443)
    Gemini refused the key: 1008 None. API key not valid. Please pass a valid API key.
    Gemini refused the session setup: 1007 None. Request contains an invalid argument.

While the backend is down it checks again, with backoff. Every call's connection attempt counts too:
a failure that says the backend is down marks it down at once, a success marks it up. The state
travels to the gateway in the model_client's ``Stats`` (``common.messages.BACKEND_*``), where
``/readyz`` and ``/twiml`` use it (gateway/backends.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

import websockets
from google import genai
from google.genai import errors, types
from websockets.exceptions import InvalidStatus

from common import messages as m

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 10.0  # one connect and setup
RECHECK_S = 1.0  # while down: the first re-check after this, doubling ...
RECHECK_CAP_S = 10.0  # ... to this, so a backend that comes back is seen within it
STARTING_RETRY_S = 0.2  # the emulator starts alongside us: unreachable at first is not news
MAX_WHY = 200

HEADLINES = {m.BACKEND_UNREACHABLE: "Gemini unreachable", m.BACKEND_KEY_REFUSED: "Gemini refused the key",
             m.BACKEND_SETUP_REFUSED: "Gemini refused the session setup"}


def down_kind(error: BaseException, *, resuming: bool = False) -> str:
    """What a failed connect says about the backend: one of ``m.BACKEND_DOWN``, or "" when it says
    nothing about it (a refused resumption handle: the call goes on with a fresh session).

    1008 is the close code the service plausibly uses for auth and permission failures (the wire
    reference leaves it open); a model name it does not serve may come the same way, and the line
    logged carries the service's own words. An HTTP 401/403 on the upgrade, or a close whose reason
    names the API key (whatever its code), is read the same way."""
    if isinstance(error, errors.APIError):
        if error.code in (1008, 401, 403) or "api key" in str(error).lower():
            return m.BACKEND_KEY_REFUSED
        if error.code == 1007:
            return "" if resuming else m.BACKEND_SETUP_REFUSED
        return m.BACKEND_UNREACHABLE  # closed (1006, 1011, ...) before the session was set up
    if isinstance(error, InvalidStatus) and error.response.status_code in (401, 403):
        return m.BACKEND_KEY_REFUSED
    if isinstance(error, (OSError, TimeoutError, websockets.WebSocketException)):
        return m.BACKEND_UNREACHABLE  # DNS, refused, TLS, timeout, an HTTP error on the upgrade
    return ""


def describe(error: BaseException) -> str:
    """One line, bounded. The key never appears: it travels only in a header (and the log masks it)."""
    text = str(error) if isinstance(error, errors.APIError) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= MAX_WHY else text[:MAX_WHY - 1] + "…"


async def open_and_close(client: genai.Client, model: str, config: types.LiveConnectConfig) -> None:
    """One Live session set up and closed again (leaving the SDK's context closes it with 1000)."""
    async with asyncio.timeout(CHECK_TIMEOUT_S):
        async with client.aio.live.connect(model=model, config=config):
            pass


class BackendHealth:
    """The backend's state as this model_client last saw it: ``state`` (``m.BACKEND_CHECKING``,
    ``m.BACKEND_UP`` or one of ``m.BACKEND_DOWN``) and ``why``. ``on_change()`` runs on every change."""

    def __init__(self, model: str, on_change: Callable[[], None]):
        self.model, self.on_change = model, on_change
        self.state, self.why = m.BACKEND_CHECKING, ""
        self._down_since = 0.0
        self._wanted = asyncio.Event()  # a re-check: set when a call finds the backend down

    @property
    def down(self) -> bool:
        return self.state in m.BACKEND_DOWN

    @property
    def summary(self) -> str:
        return f"{HEADLINES[self.state]}: {self.why}" if self.down else self.state

    def up(self, why: str) -> None:
        if self.state == m.BACKEND_UP:
            return
        after = f" after {time.monotonic() - self._down_since:.0f} s down" if self.down else ""
        log.info("Gemini backend ok (%s)%s", why, after)
        self._set(m.BACKEND_UP, why)

    def failed(self, error: BaseException, *, resuming: bool = False) -> str:
        """A connect failed: mark the backend down if that is what it says. Returns ``down_kind``."""
        kind = down_kind(error, resuming=resuming)
        if kind:
            self._mark_down(kind, describe(error))
        return kind

    def _mark_down(self, kind: str, why: str) -> None:
        if self.state == kind:
            self.why = why  # the latest words, but no new line: a long outage is not a log flood
            return
        log.error("%s: %s", HEADLINES[kind], why)
        if not self.down:
            self._down_since = time.monotonic()
        self._set(kind, why)
        self._wanted.set()

    def _set(self, state: str, why: str) -> None:
        self.state, self.why = state, why
        self.on_change()

    async def watch(self, check: Callable[[], Awaitable[None]], starting_s: float = 0.0) -> None:
        """Check now, then again with backoff whenever the backend is down. ``check`` sets up one
        session and closes it. For ``starting_s`` at first, "unreachable" is retried quietly (the
        emulator, started alongside this process, may not be listening yet)."""
        started, delay = time.monotonic(), RECHECK_S
        while True:
            if self.state == m.BACKEND_UP:
                self._wanted.clear()
                await self._wanted.wait()  # a call found it down: give it a moment before checking
                delay = RECHECK_S
                await asyncio.sleep(delay)
                continue
            t0 = time.monotonic()
            try:
                await check()
            except Exception as e:  # noqa: BLE001 - whatever it is, the backend cannot be used
                kind = down_kind(e) or m.BACKEND_UNREACHABLE
                if (kind == m.BACKEND_UNREACHABLE and self.state == m.BACKEND_CHECKING
                        and time.monotonic() - started < starting_s):
                    await asyncio.sleep(STARTING_RETRY_S)
                    continue
                self._mark_down(kind, describe(e))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECHECK_CAP_S)
                continue
            self.up(f"{self.model}, {(time.monotonic() - t0) * 1000:.0f} ms")
            delay = RECHECK_S
