"""One session's send queue: everything for Gemini, in order, taken one item at a time by one sender.

Caller audio, text (a DTMF digit, the greeting prompt) and tool responses share one queue so they
reach Gemini in the order they happened. Audio arriving while a send is in flight joins the last
queued chunk, so a busy loop sends fewer, larger chunks; unsent audio is bounded (the oldest is shed).
Items are only taken while there is a connection to send them on.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import NamedTuple

AUDIO, TEXT, TOOL = "audio", "text", "tool"
STREAM_END = "stream_end"  # the caller's audio paused: Gemini answers what it heard (line_watch.py)

PCM_BYTES_PER_S = 32000  # PCM16 16 kHz
MAX_PENDING_AUDIO = int(10.0 * PCM_BYTES_PER_S)
MAX_CHUNK = PCM_BYTES_PER_S  # queued audio is joined into chunks of at most 1 s


class Outgoing(NamedTuple):
    """One item for Gemini."""
    kind: str  # AUDIO, TEXT, TOOL or STREAM_END
    payload: object  # PCM16 16 kHz bytes, a str, or a tool_results.ToolAnswer
    t_in: int = 0  # audio: the gateway's t_in of the newest caller frame in it
    resend: bool = False  # sent before: the current connection's handle lacks it


class SendQueue:
    def __init__(self, send_gap_s: float):
        self._items: deque[Outgoing] = deque()
        self.audio_bytes = 0  # fresh caller audio queued, not sent yet
        self.shed_bytes = 0
        # Caller audio leaves at most once per ``send_gap_s``: each send costs a WebSocket frame, a
        # TLS record and a syscall whatever its size, so fewer, larger chunks cost less, for a little
        # more time on the way to Gemini (the first frame after a pause goes at once).
        self._gap_s = send_gap_s
        self._last_audio_send = 0.0
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()  # set while there is a connection to send on

    def add_audio(self, pcm: bytes, t_in: int) -> None:
        last = self._items[-1] if self._items else None
        if last and last.kind == AUDIO and not last.resend and len(last.payload) < MAX_CHUNK:
            self._items[-1] = last._replace(payload=last.payload + pcm, t_in=t_in or last.t_in)
        else:
            self._items.append(Outgoing(kind=AUDIO, payload=pcm, t_in=t_in))
        self.audio_bytes += len(pcm)
        if self.audio_bytes > MAX_PENDING_AUDIO:
            self._shed_oldest_audio()
        self._wake.set()

    def add(self, kind: str, payload: object) -> None:
        self._items.append(Outgoing(kind=kind, payload=payload))
        self._wake.set()

    def connected(self, resend: list[Outgoing]) -> None:
        """A new connection to send on, starting with ``resend`` (what its handle lacks). Re-sends
        still queued for an earlier connection go: ``resend`` was recomputed from the journal."""
        pending = [item for item in self._items if not item.resend]
        self._items = deque(resend + pending)
        self._connected.set()
        self._wake.set()

    def disconnected(self) -> None:
        self._connected.clear()

    async def next(self) -> Outgoing:
        """The next item to send, once there is one and a connection to send it on."""
        while True:
            if not self._items:
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._connected.is_set():
                await self._connected.wait()
                continue
            wait = self._audio_wait()
            if wait > 0:  # meanwhile the next frames join this chunk (add_audio)
                await asyncio.sleep(wait)
                continue
            return self._pop()

    def _audio_wait(self) -> float:
        head = self._items[0]
        if head.kind == AUDIO and not head.resend and self._gap_s:
            return self._last_audio_send + self._gap_s - time.monotonic()
        return 0.0

    def _pop(self) -> Outgoing:
        item = self._items.popleft()
        if item.kind == AUDIO and not item.resend:
            self.audio_bytes -= len(item.payload)
            self._last_audio_send = time.monotonic()
        return item

    def _shed_oldest_audio(self) -> None:
        for i, item in enumerate(self._items):
            if item.kind == AUDIO and not item.resend:
                del self._items[i]
                self.audio_bytes -= len(item.payload)
                self.shed_bytes += len(item.payload)
                return
