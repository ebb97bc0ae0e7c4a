"""One Media Stream from Twilio's side: Twilio's messages out on the call clock, the server's in.

Clock: sample 0 is the start of the first frame's audio; frame k covers samples [160k, 160k+160) and
is sent once it has been "spoken", at sample 160(k+1). Real-time mode keeps that schedule against the
event loop's clock (absolute deadlines, so no drift); fast mode sends as fast as the loop allows and the
clock is simply the audio sent so far, which makes playback and mark timing deterministic.
"""

from __future__ import annotations

import asyncio
import time
import json
from collections.abc import Callable

import aiohttp

from common.g711 import ULAW_SILENCE
from softphone import wire
from softphone.playback import RATE, Echo, Playback
from softphone.result import CallResult, EchoedMark
from softphone.webhook import CallError, Twiml, new_sid, upgrade_headers

FRAME = 160  # 20 ms of µ-law: the common inbound frame
FRAME_S = FRAME / RATE
SILENT_FRAME = bytes([ULAW_SILENCE]) * FRAME
CLOSE_TIMEOUT_S = 5.0
MAX_MESSAGE = 64 * 2**20  # Twilio documents no per-message limit; bound it anyway


class MediaStream:
    """One Media Stream from Twilio's side: a sender paced by the call clock and a receiver feeding the
    playback model. Both send, so every message goes through ``_send`` (one lock, ordered seq numbers)."""

    def __init__(self, twiml: Twiml, call_sid: str, account_sid: str, frames: list[bytes],
                 speech_frames: int, dtmf: list[tuple[int, str]], *, realtime: bool, hangup: bool,
                 pauses: list[tuple[float, float]] = ()):
        self.twiml, self.call_sid, self.account_sid = twiml, call_sid, account_sid
        self.stream_sid = new_sid("MZ")
        self.frames, self.speech_frames, self.dtmf = frames, speech_frames, list(dtmf)
        self.realtime, self.hangup = realtime, hangup
        self.pauses = list(pauses)  # (start, seconds) with no media sent: silence in ``sent``
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.playback = Playback()
        self.sent = bytearray()
        self.received = bytearray()
        self.echoed: list[EchoedMark] = []
        self.clears: list[float] = []
        self.clears_ns: list[int] = []  # time.monotonic_ns() at each clear: for cross-process timing
        self.dtmf_sent: list[tuple[float, str]] = []
        self.errors: list[str] = [f"twiml: {w}" for w in twiml.warnings]
        self.first_audio: int | None = None
        self.start_to_audio_s: float | None = None  # wall time from sending `start` to the first audio
        self.closed_by: str | None = None
        self._seq = 0
        self._lock = asyncio.Lock()
        self.t0 = 0.0  # loop time the call clock started (the first frame's audio)
        self._warned_discard = False
        self._ended = False  # stop sent: Twilio says nothing more, and plays nothing more

    async def run(self, session: aiohttp.ClientSession, auth_token: str | None) -> None:
        async with await self._connect(session, auth_token) as ws:
            self.ws = ws
            await self._send(lambda _: wire.connected(), numbered=False)  # no sequenceNumber
            await self._send(lambda seq: wire.start(seq, self.account_sid, self.stream_sid,
                                                    self.call_sid, self.twiml.parameters))
            self.t0 = asyncio.get_running_loop().time()
            receiver = asyncio.create_task(self._receive(), name=f"softphone-receive-{self.call_sid}")
            try:
                await self._stream_audio()
                if self.closed_by is None:
                    self.closed_by = "caller"  # set first: our own close must not look like the server's
                    await self._send(lambda seq: wire.stop(seq, self.stream_sid, self.account_sid,
                                                           self.call_sid))
                    self._ended = True
            finally:
                self.closed_by = self.closed_by or "caller"
                try:
                    await ws.close()  # aiohttp also hands the receiver a CLOSING message: its loop ends
                except BaseException:
                    receiver.cancel()  # close was interrupted (timeout): nobody will read any more
                    raise
                await receiver

    def end_call(self) -> None:
        """The call ends on Twilio's side (say a REST hang-up): no more audio, then ``stop`` as usual."""
        del self.frames[len(self.sent) // FRAME + 1:]
        self.hangup = True

    async def _connect(self, session: aiohttp.ClientSession, auth_token: str | None):
        headers = upgrade_headers(auth_token, self.twiml.stream_url)  # Twilio signs the upgrade too
        timeout = aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S)
        try:
            return await session.ws_connect(self.twiml.stream_url, headers=headers, timeout=timeout,
                                            max_msg_size=MAX_MESSAGE)
        except aiohttp.WSServerHandshakeError as exc:
            raise CallError(f"31920 stream handshake failed: HTTP {exc.status} {exc.message}") from exc
        except aiohttp.ClientSSLError as exc:
            raise CallError(f"31910 stream TLS failed: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise CallError(f"31902 stream {self.twiml.stream_url} unreachable: {exc}") from exc

    async def _stream_audio(self) -> None:
        k = 0
        while self.closed_by is None and (k < len(self.frames) or not self.hangup):
            await self._frame_due(k)
            frame = self.frames[k] if k < len(self.frames) else SILENT_FRAME
            if self._paused(k):
                self.sent += SILENT_FRAME
                await self._play_until(self._now())
                k += 1
                continue
            if self.closed_by is not None or not await self._send(
                    lambda seq: wire.media(seq, self.stream_sid, k + 1, k * FRAME * 1000 // RATE, frame)):
                return
            self.sent += frame
            await self._send_due_dtmf()
            await self._play_until(self._now())
            k += 1

    def _paused(self, k: int) -> bool:
        return any(start <= k * FRAME_S < start + seconds for start, seconds in self.pauses)

    async def _frame_due(self, k: int) -> None:
        if not self.realtime:
            await asyncio.sleep(0)  # fast, but the receiver must still get its turn
            return
        due = self.t0 + (k + 1) * FRAME_S  # absolute schedule: a late wake-up does not shift the rest
        await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))

    async def _send_due_dtmf(self) -> None:
        while self.dtmf and self.dtmf[0][0] <= len(self.sent):
            sample, digit = self.dtmf.pop(0)
            if await self._send(lambda seq: wire.dtmf(seq, self.stream_sid, digit)):
                self.dtmf_sent.append((sample / RATE, digit))

    def _now(self) -> int:
        """The call clock in samples: audio sent so far (fast mode), or the wall clock (real time)."""
        if not self.realtime:
            return len(self.sent)
        elapsed = int((asyncio.get_running_loop().time() - self.t0) * RATE)
        return max(self.playback.clock, elapsed)

    async def _send(self, build: Callable[[int], dict], numbered: bool = True) -> bool:
        """Send one message, numbered in send order; False once the socket is gone (server hung up)."""
        async with self._lock:
            if self.ws is None or self._ended:
                return False
            if self.ws.closed:  # we close only after setting closed_by, so this was the server
                self.closed_by = self.closed_by or "server"
                return False
            if numbered:
                self._seq += 1
            try:
                await self.ws.send_str(json.dumps(build(self._seq)))
            except ConnectionResetError:
                self.closed_by = self.closed_by or "server"
                return False
        return True

    async def _receive(self) -> None:
        async for message in self.ws:  # ends on CLOSE/CLOSING/CLOSED
            if message.type == aiohttp.WSMsgType.TEXT:
                await self._on_text(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                self.errors.append("31950 binary frame: Twilio only decodes text frames")
            elif message.type == aiohttp.WSMsgType.ERROR:
                self.errors.append(f"stream error: {message.data!r}")
                break
        self.closed_by = self.closed_by or "server"

    async def _on_text(self, text: str) -> None:
        if self._ended:
            return
        try:
            event, value = wire.parse_server_text(text, self.stream_sid)
        except wire.Violation as violation:
            self.errors.append(str(violation))  # Twilio warns and ignores the message
            return
        await self._play_until(self._now())  # everything due before this message happens first
        if event == "media":
            self._on_media(value)
        elif event == "mark":
            await self._echo(self.playback.add_mark(value))
        else:
            self.clears.append(self.playback.clock / RATE)
            self.clears_ns.append(time.monotonic_ns())
            await self._echo(self.playback.clear())

    def _on_media(self, payload: bytes) -> None:
        self.received += payload
        if payload[:4] == b"RIFF":
            self.errors.append("media payload starts with a WAV header: Twilio plays it as noise")
        if payload and self.first_audio is None:
            self.first_audio = self.playback.clock
            self.start_to_audio_s = asyncio.get_running_loop().time() - self.t0
        if not self.playback.add_audio(payload) and not self._warned_discard:
            self._warned_discard = True  # Twilio raises it once per stream
            self.errors.append("31931 more than 10 minutes of audio queued: further audio discarded")

    async def _play_until(self, sample: int) -> None:
        await self._echo(self.playback.advance(sample))

    async def _echo(self, echoes: list[Echo]) -> None:
        for echo in echoes:
            if await self._send(lambda seq: wire.mark(seq, self.stream_sid, echo.name)):
                self.echoed.append(EchoedMark(echo.name, self._now() / RATE, echo.flushed))

    def result(self) -> CallResult:
        """What happened, with ``heard`` filled out to exactly the span of ``sent``."""
        total = len(self.sent)
        self.playback.advance(total)  # marks that would come due now are never echoed: the call is over
        speech_end = min(self.speech_frames * FRAME, total)
        starts = self.playback.reply_starts
        return CallResult(
            call_sid=self.call_sid, stream_sid=self.stream_sid, twiml=self.twiml.text,
            after_connect=list(self.twiml.after_connect), stream_url=self.twiml.stream_url,
            custom_parameters=dict(self.twiml.parameters), sent=bytes(self.sent),
            heard=bytes(self.playback.heard[:total]), received=bytes(self.received),
            marks_sent_back=list(self.echoed), clears=list(self.clears), clears_ns=list(self.clears_ns), dtmf_sent=list(self.dtmf_sent),
            protocol_errors=list(self.errors),
            start_to_audio_s=self.start_to_audio_s,
            first_audio_s=None if self.first_audio is None else (self.first_audio - FRAME) / RATE,
            speech_end_s=speech_end / RATE, reply_starts_s=[s / RATE for s in starts],
            turn_latencies_s=[(s - speech_end) / RATE for s in starts if s >= speech_end],
            underruns=self.playback.underruns, reply_heard_s=self.playback.played / RATE,
            closed_by=self.closed_by or "caller")
