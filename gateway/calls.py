"""A call as the gateway holds it: the Twilio WebSocket, its pins, playback and the queue to Twilio.

Everything the gateway sends to Twilio for a call goes through one ordered queue drained by one
writer task, so media, marks and clear keep their order. How far audio runs ahead of the caller's
playback is decided by the call's ``Playout`` (gateway/playout.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiohttp import web

from common.lifecycle import spawn
from common.logs import call_context
from gateway import twilio_codec as tw
from gateway.hold import Hold
from gateway.playout import Echo, Playout
from gateway.replay import CallerRing
from gateway.transcripts import TranscriptLog
from gateway.usage import CallUsage

log = logging.getLogger(__name__)

HANGUP_GRACE_S = 3.0  # after end_call/transfer: wait this long for the goodbye to start
HANGUP_MAX_S = 30.0  # ... and never longer than this for it to finish playing
MAX_UNWRITTEN = 200  # messages waiting for the socket (~20 s of audio and marks); then the oldest goes


def age_ms(began: float) -> int:
    """How long ago a call began (``began``: wall clock, 0 if not known), for the model_client that
    takes it: its longest-call clock counts from there."""
    return max(0, round((time.time() - began) * 1000)) if began else 0


@dataclass
class Call:
    id: str
    call_sid: str
    stream_sid: str
    ws: web.WebSocketResponse
    playout: Playout
    transcript: TranscriptLog
    transcoder: bytes = b""  # route of the transcoder the call is pinned to
    model: str = ""  # endpoint of the model_client holding its Gemini session
    resume_handle: str = ""
    params: dict = field(default_factory=dict)  # Twilio customParameters, for a new model_client
    ring: CallerRing = field(default_factory=lambda: CallerRing(0))  # set by the pipeline
    orphaned: float = 0.0  # monotonic time the call lost its model_client with none to take it over
    seq_in: int = 0
    caller_spoke: bool = False  # the caller's voice was detected (an outbound greeting may wait for it)
    end_reason: str = ""  # set when we know better than the stream why the call ends (outbound: voicemail)
    started: float = field(default_factory=time.monotonic)
    began: float = 0.0  # wall clock: when the call's first stream started, here or at another gateway
    first_audio_s: float | None = None  # stream start → first model audio sent to Twilio
    counters: dict = field(default_factory=dict)  # the gateway's /healthz counters
    usage: CallUsage = field(default_factory=CallUsage)  # model tokens, as the model_clients report them
    hold: Hold | None = None  # the hold sound while the model waits on a tool (set by the pipeline)
    _out: list = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _writer: asyncio.Task | None = None
    _closing: bool = False
    _leaving: asyncio.Task | None = None

    @property
    def unwritten(self) -> int:
        return len(self._out)

    def start_writer(self) -> None:
        self._writer = spawn(self._write_loop(), f"twilio-writer:{self.id}")

    # --- model → caller -----------------------------------------------------------------------

    def start_hold(self, sound: bytes, after_s: float) -> None:
        self.hold = Hold(sound, after_s, send=self._queue, event=self.transcript.line, counters=self.counters,
                         busy=lambda: self.playout.playing or self.playout.generating)

    def send_audio(self, ulaw: bytes, turn: int) -> None:
        if self.hold is not None and turn > self.playout.cleared_turn:
            self.hold.stop("the model speaks")  # its clear goes out before the model's audio
        if ulaw and self.playout.add(ulaw, turn):
            self._pump()

    def turn_done(self, turn: int) -> None:
        self.playout.turn_done(turn)
        self._pump()
        self._finish_turns()

    def mark_echoed(self, name: str) -> Echo | None:
        if self.hold is not None and self.hold.owns(name):
            self.hold.echoed(name)
            return None
        echo = self.playout.echoed(name)
        if echo is not None:
            self._pump()
            self._finish_turns()
        return echo

    def barge_in(self, source: str) -> int:
        """Drop everything not yet heard and send Twilio ``clear``; returns the interrupted turn.
        ``source``: who cut the model off (gateway/pipeline.py BARGE_SOURCES), for the transcript."""
        turn = self.playout.clear(interrupted_by=source)
        # Queued media goes; queued marks stay (Twilio echoes them at once, closing the books).
        self._out = [item for item in self._out if item[0] != "media"]
        self._queue("clear", None)
        self._finish_turns()
        return turn

    def _pump(self) -> None:
        for kind, data in self.playout.pump():
            if kind == "media" and self.first_audio_s is None:
                self.first_audio_s = time.monotonic() - self.started
                log.info("first model audio %.0f ms after the stream started", self.first_audio_s * 1000)
            self._queue(kind, data)

    def _finish_turns(self) -> None:
        for turn, state in list(self.playout.turns.items()):
            if state.finished:
                self.transcript.turn_finished(turn, state)
                self.playout.forget(turn)

    # --- ending -------------------------------------------------------------------------------

    def leave_after_playback(self) -> None:
        """End the stream once the model's goodbye has played (end_call, transfer)."""
        if self._leaving is None:
            self._leaving = spawn(self._leave_when_played(), f"call-leave:{self.id}")

    async def _leave_when_played(self) -> None:
        with call_context(self.id):
            asked = time.monotonic()
            turn_at_ask = self.playout.latest
            while time.monotonic() - asked < HANGUP_MAX_S:
                idle = not self.playout.playing and not self.playout.generating
                said_more = self.playout.latest > turn_at_ask  # the goodbye came after the tool call
                if idle and (said_more or time.monotonic() - asked > HANGUP_GRACE_S):
                    break
                await asyncio.sleep(0.05)
            log.info("leaving the stream after %.1f s (playback %s)", time.monotonic() - asked,
                     "finished" if not self.playout.playing else "cut short")
            self.close()

    def close(self) -> None:
        """Close the socket once everything queued before has been written."""
        self._closing = True
        self._wake.set()
        if self.hold is not None:
            self.hold.close()

    def ended(self, closing: dict | None = None) -> None:
        """The call is over: write what is left of the transcript, then ``closing`` (why it ended, its
        usage)."""
        self.transcript.close(self.playout.turns, closing)

    # --- writing to Twilio ----------------------------------------------------------------------

    def _queue(self, kind: str, data) -> None:
        self._out.append((kind, data))
        if len(self._out) > MAX_UNWRITTEN:
            self._shed_oldest()
        self._wake.set()

    def _shed_oldest(self) -> None:
        """The socket is not draining (a stuck or hostile peer; the playout window should keep this
        from happening): drop the oldest queued audio, keep marks and clears, count it, say so once."""
        i = next((i for i, (kind, _) in enumerate(self._out) if kind == "media"), 0)
        del self._out[i]
        shed = self.counters.get("out_audio_shed", 0)
        self.counters["out_audio_shed"] = shed + 1
        if not shed:
            log.warning("Twilio socket not draining: oldest queued audio shed (%d messages waiting)",
                        len(self._out))

    async def _write_loop(self) -> None:
        with call_context(self.id):
            while True:
                await self._wake.wait()
                self._wake.clear()
                out, self._out = self._out, []
                try:
                    for kind, data in out:
                        await self.ws.send_str(self._encode(kind, data))
                except ConnectionResetError:
                    return  # the caller is gone; the handler's finally ends the call
                if self._closing and not self._out:
                    await self.ws.close()
                    return

    def _encode(self, kind: str, data) -> str:
        if kind == "media":
            return tw.media_message(self.stream_sid, data)
        if kind == "mark":
            return tw.mark_message(self.stream_sid, data)
        return tw.clear_message(self.stream_sid)

    async def stop_writer(self) -> None:
        if self.hold is not None:
            self.hold.close()
            self.hold = None  # it holds this call's bound methods: no cycle outlives the call
        for task in (self._writer, self._leaving):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._writer = self._leaving = None  # see common.lifecycle.cancel_all
