"""A call as the gateway holds it: the Twilio WebSocket, its pins, and the outbound queue to Twilio.

Everything the gateway sends to Twilio for a call goes through one ordered queue drained by one
writer task, so media, marks and clear keep their order and adjacent audio of a turn is coalesced
into one ``media`` message (Twilio plays any size; fewer, larger messages cost less on both ends).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import web

from common.lifecycle import spawn
from common.logs import call_context
from gateway import twilio_codec as tw

log = logging.getLogger(__name__)

MAX_COALESCE_BYTES = 8000  # 1 s of µ-law per media message at most


@dataclass
class Call:
    id: str
    call_sid: str
    stream_sid: str
    ws: web.WebSocketResponse
    transcoder: bytes = b""  # route of the transcoder the call is pinned to
    model: str = ""  # endpoint of the model_client holding its Gemini session
    resume_handle: str = ""
    seq_in: int = 0
    marks_sent: int = 0
    marks: dict[str, int] = field(default_factory=dict)  # pending mark name -> turn
    cleared_marks: set[str] = field(default_factory=set)  # flushed by a clear, echo still due
    _out: list = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _writer: asyncio.Task | None = None
    _closing: bool = False

    def start_writer(self) -> None:
        self._writer = spawn(self._write_loop(), f"twilio-writer:{self.id}")

    def send_audio(self, ulaw: bytes, turn: int) -> None:
        if not ulaw:
            return
        last = self._out[-1] if self._out else None
        if last is not None and last[0] == "media" and last[1] == turn and len(last[2]) < MAX_COALESCE_BYTES:
            last[2].extend(ulaw)
        else:
            self._out.append(["media", turn, bytearray(ulaw)])
        self._wake.set()

    def send_mark(self, turn: int) -> str:
        self.marks_sent += 1
        name = f"{turn}.{self.marks_sent}"
        self.marks[name] = turn
        self._out.append(["mark", turn, name])
        self._wake.set()
        return name

    def clear(self, turn: int) -> None:
        """Barge-in: audio not yet written is dropped here; Twilio drops what it has queued."""
        self._out = [item for item in self._out if item[0] != "media"]
        self.cleared_marks.update(self.marks)
        self._out.append(["clear", turn, None])
        self._wake.set()

    def close(self) -> None:
        """Close the socket once everything queued before has been written."""
        self._closing = True
        self._wake.set()

    async def _write_loop(self) -> None:
        with call_context(self.id):
            while True:
                await self._wake.wait()
                self._wake.clear()
                out, self._out = self._out, []
                try:
                    for kind, _turn, data in out:
                        await self.ws.send_str(self._encode(kind, data))
                except ConnectionResetError:
                    return  # the caller is gone; the handler's finally ends the call
                if self._closing and not self._out:
                    await self.ws.close()
                    return

    def _encode(self, kind: str, data) -> str:
        if kind == "media":
            return tw.media_message(self.stream_sid, bytes(data))
        if kind == "mark":
            return tw.mark_message(self.stream_sid, data)
        return tw.clear_message(self.stream_sid)

    async def stop_writer(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
