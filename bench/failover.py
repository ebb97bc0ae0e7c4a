"""A load balancer in front of several stacks, as small as one can be: each new TCP connection goes to
the first backend that accepts it. Kill one stack's gateway and the next webhook, ``<Redirect>`` or
stream lands on the other, as behind a real load balancer with health checks."""

from __future__ import annotations

import asyncio
import contextlib

from harness.stack import free_port

CHUNK = 65536


class Failover:
    def __init__(self, backends: list[int] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backends = list(backends or [])  # ports, in order of preference
        self.routed: list[int] = []  # the backend each connection went to
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()  # one per connection

    async def __aenter__(self) -> "Failover":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0.05)  # closed transports let go of their sockets on the next loop passes

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        self._handlers.add(handler)
        writers = [client_w]
        try:
            for port in self.backends:
                try:
                    backend_r, backend_w = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    continue
                writers.append(backend_w)
                self.routed.append(port)
                await _splice((client_r, backend_w), (backend_r, client_w))
                break  # else no backend is up: the caller sees the connection closed
        finally:
            self._handlers.discard(handler)
            for writer in writers:  # even when cancelled: every socket is closed
                writer.close()


async def _splice(*directions: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copy both ways until either side closes."""
    pipes = [asyncio.create_task(_pipe(reader, writer)) for reader, writer in directions]
    try:
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
