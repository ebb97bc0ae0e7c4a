"""The load generator's WebSocket client: one asyncio Protocol per call, every frame one
``transport.write``.

aiohttp's client costs a task per message received and, sent from a shared tick, a task per message
sent: at hundreds of calls the load generator then took more CPU than the bridge it measured. This
client does only what a Twilio stream needs (RFC 6455): the upgrade, text frames out, text/close/ping
frames in. The frame codec is pure and tested with tables (tests/test_ws_client.py).

Client frames must be masked; ours use the all-zero masking key, so the masked payload is the payload
and sending costs no per-byte work. A server cannot tell (it XORs with whatever key it is given); the
key's unpredictability protects browsers against cache poisoning by hostile scripts, which a load
generator talking to our own gateway is not.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Callable
from urllib.parse import urlsplit

TEXT, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x8, 0x9, 0xA, 0x0
NO_MASK = b"\x00\x00\x00\x00"
MAX_FRAME = 1 << 20  # a server frame larger than this is a broken server, not audio


class WsError(Exception):
    pass


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked with the zero key."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + NO_MASK + payload


def parse_frames(buf: bytearray) -> list[tuple[bool, int, bytes]]:
    """Take every complete server frame off the front of ``buf``: (final, opcode, payload)."""
    frames, pos = [], 0
    while len(buf) - pos >= 2:
        first, second = buf[pos], buf[pos + 1]
        if second & 0x80:
            raise WsError("the server masked a frame")
        n, head = second & 0x7F, 2
        if n == 126:
            if len(buf) - pos < 4:
                break
            n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
        elif n == 127:
            if len(buf) - pos < 10:
                break
            n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
        if n > MAX_FRAME:
            raise WsError(f"a {n}-byte frame")
        if len(buf) - pos < head + n:
            break
        frames.append((bool(first & 0x80), first & 0x0F, bytes(buf[pos + head:pos + head + n])))
        pos += head + n
    del buf[:pos]
    return frames


class WsClient(asyncio.Protocol):
    """``on_text(str)`` for each text message; ``closed`` is done when the connection is gone."""

    def __init__(self, on_text: Callable[[str], None]):
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._parts: list[bytes] = []  # a fragmented message so far
        self._said_close = False  # after our close frame, nothing more may be sent

    @classmethod
    async def connect(cls, url: str, on_text: Callable[[str], None]) -> "WsClient":
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise WsError(f"only ws:// URLs, not {parts.scheme}://")
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: cls(on_text), parts.hostname, parts.port or 80)
        key = base64.b64encode(os.urandom(16)).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        client.transport.write((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        await client.upgraded
        return client

    @property
    def is_open(self) -> bool:
        return (self.upgraded.done() and not self.upgraded.exception() and not self.closed.done()
                and not self._said_close)

    def send_text(self, text: str) -> None:
        if self.is_open:
            self.transport.write(client_frame(TEXT, text.encode()))

    def close(self, payload: bytes = struct.pack("!H", 1000)) -> None:
        if self.is_open:
            self.transport.write(client_frame(CLOSE, payload))
            self._said_close = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self.upgraded.done() and not self._upgrade():
            return
        try:
            frames = parse_frames(self._buf)
        except WsError as e:
            self._fail(e)
            return
        for final, opcode, payload in frames:
            self._frame(final, opcode, payload)

    def _upgrade(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        status = bytes(self._buf[:self._buf.find(b"\r\n")])
        del self._buf[:end + 4]
        if status.split(b" ")[1:2] != [b"101"]:
            self._fail(WsError(f"upgrade refused: {status[:80]!r}"))
            return False
        self.upgraded.set_result(None)
        return True

    def _frame(self, final: bool, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            self.transport.write(client_frame(PONG, payload))
        elif opcode == CLOSE:
            self.close(payload[:2])  # the closing handshake's answer, unless we began it
            self.transport.close()
        elif opcode in (TEXT, CONTINUATION):
            self._parts.append(payload)
            if final:
                text, self._parts = b"".join(self._parts).decode(), []
                self.on_text(text)

    def _fail(self, error: Exception) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(error)
        self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(WsError("connection lost before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)
