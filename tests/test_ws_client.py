"""The load generator's WebSocket client (bench/ws_client.py): its frame codec, and a real aiohttp
server on an ephemeral port on the other end."""

import asyncio
import contextlib
import json
import struct

import pytest
from aiohttp import WSMsgType, web

from bench.lean_caller import MEDIA
from bench.ws_client import CLOSE, TEXT, WsClient, WsError, client_frame, parse_frames
from harness.stack import free_port
from softphone import wire


@pytest.mark.parametrize("size, header", [
    (0, b"\x81\x80"), (125, b"\x81\xfd"), (126, b"\x81\xfe\x00\x7e"), (65535, b"\x81\xfe\xff\xff"),
    (65536, b"\x81\xff" + struct.pack("!Q", 65536)),
])
def test_a_client_frame_is_masked_with_the_zero_key(size, header):
    payload = b"x" * size
    assert client_frame(TEXT, payload) == header + b"\0\0\0\0" + payload


def server_frame(opcode, payload, final=True):
    n = len(payload)
    length = bytes([n]) if n < 126 else b"\x7e" + struct.pack("!H", n)
    return bytes([(0x80 if final else 0) | opcode]) + length + payload


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 4, 5, 130, 200])
def test_frames_split_anywhere_come_out_whole(cut):
    stream = server_frame(TEXT, b"a" * 3) + server_frame(TEXT, b"b" * 300) + server_frame(CLOSE, b"\x03\xe8")
    buf = bytearray(stream[:cut])
    frames = parse_frames(buf)
    buf += stream[cut:]
    frames += parse_frames(buf)
    assert frames == [(True, TEXT, b"aaa"), (True, TEXT, b"b" * 300), (True, CLOSE, b"\x03\xe8")]
    assert buf == b""


def test_a_masked_server_frame_is_refused():
    with pytest.raises(WsError, match="masked"):
        parse_frames(bytearray(b"\x81\x83\0\0\0\0abc"))


def test_the_media_template_is_the_softphones_media_message():
    ours = json.loads(MEDIA % (7, 3, 40, "AAAA", "MZ1"))
    assert ours == wire.media(7, "MZ1", 3, 40, b"\0\0\0")


async def test_text_both_ways_and_a_clean_close_with_aiohttp():
    heard = []

    async def echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            assert msg.type == WSMsgType.TEXT
            heard.append(msg.data)
            await ws.send_str(msg.data.upper())
            await ws.send_str("é" * 200)  # a 16-bit length, and UTF-8
        return ws

    got = []
    async with serving(echo) as port:
        client = await WsClient.connect(f"ws://127.0.0.1:{port}/ws?x=1", got.append)
        client.send_text("hello")
        client.send_text("b" * 300)
        while len(got) < 4:
            await asyncio.sleep(0.01)
        client.close()
        await client.closed
        assert not client.is_open
        client.send_text("after close")  # dropped, not an error
    assert heard == ["hello", "b" * 300]
    assert got == ["HELLO", "é" * 200, "B" * 300, "é" * 200]


async def test_a_refused_upgrade_says_so():
    async def refuse(request):
        return web.Response(status=403)

    async with serving(refuse) as port:
        with pytest.raises(WsError, match="403"):
            await WsClient.connect(f"ws://127.0.0.1:{port}/ws", print)


@contextlib.asynccontextmanager
async def serving(handler):
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()
