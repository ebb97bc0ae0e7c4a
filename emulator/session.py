"""One emulated Gemini Live session: one WebSocket, from setup to close.

The reader task feeds the caller's audio to the VAD; a start of speech barges in on the running
turn, an end of speech queues a new one (``emulator.turns``). Fault knobs run as timers.

The model id in ``setup`` picks the generation played (``emulator.generations``): what its setup may
hold (a refused setting closes with 1007 before ``setupComplete``), whether it takes ``media_chunks``,
how it runs tools (``emulator.tools``), how many parts an event carries, and ``voiceActivity`` events.

Closing happens in one place (``run``'s ``finally``): the reader, turns and timers are cancelled
first, then the close frame goes out with the code the reason for closing asked for: 1000 after a
goAway, 1007 for a malformed frame or a refused setting, 1001 when the emulator stops. A drop aborts
the TCP connection instead, with no close frame at all. ``EMULATOR_STALL`` (tests only) scripts a
model that stops answering: no reply at all, or a turn that completes with no audio.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque

from aiohttp import WSMsgType, web

from common.lifecycle import cancel_all, spawn
from common.settings import Settings
from common.voice_activity import EnergyVad, SpeechEnded, SpeechStarted
from emulator import generations, persona, wire
from emulator.faults import FaultKnobs
from emulator.resumption import HandleStore
from emulator.tools import ToolRunner
from emulator.turns import TOKENS_PER_S, Gone, Options, TurnPlayer

log = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 30.0
MAX_CLOSE_REASON = 123  # bytes, by RFC 6455
TEXT_CHARS_PER_TOKEN = 4
ECHO_ON_LOOP_S = 5.0  # an utterance up to this long is echoed on the loop (cheap); a longer one in a thread


# Method names, not bound methods: a session holding its own bound methods is a reference cycle.
HANDLERS = {"realtime_input": "_handle_realtime_input", "client_content": "_handle_client_content",
            "tool_response": "_handle_tool_response", "context_update": "_handle_ignored"}


class LiveSession(FaultKnobs):
    def __init__(self, ws: web.WebSocketResponse, request: web.Request, settings: Settings,
                 handles: HandleStore, number: int, interrupted_ns: deque[int] | None = None,
                 turns_ns: deque[tuple[int, int]] | None = None):
        self.number, self.ended_by = number, "client closed"
        self._interrupted_ns, self._turns_ns = interrupted_ns, turns_ns
        self._ws, self._request, self._settings, self._handles = ws, request, settings, handles
        self._label = f"session {number}"
        self._tasks: set[asyncio.Task] = set()
        self._close = asyncio.Event()
        self._close_code, self._close_reason = 1000, "bye"
        self._dropped = False
        self._vad: EnergyVad | None = None
        self._player: TurnPlayer | None = None
        self._tools: ToolRunner | None = None
        self._pending_text: list[str] = []  # client_content turns not completed yet
        self._turns_at_end = 0
        self.generation = generations.PLAIN
        self._stalled = False  # EMULATOR_STALL=empty_turn: this connection's one empty turn is done
        self._resumable = False
        self.resumed_from: int | None = None  # the turn count a resumption handle restored
        self.refused_handle = False
        self.instruction = ""  # the setup's system instruction (a fresh session may carry the story so far)

    @property
    def turns(self) -> int:
        return self._player.turns if self._player else self._turns_at_end

    async def run(self) -> None:
        try:
            if await self._setup():
                spawn(self._read_loop(), f"emulator.s{self.number}.read", self._tasks)
                self._start_timers()
                await self._close.wait()
        except wire.Malformed as e:
            self._reject(str(e))
        finally:
            await cancel_all(self._tasks)
            await self._finish()
            # The player holds our bound _send: dropped, so an ended session is freed at once rather
            # than at the collector's next full pass (the soak measures every process's RSS).
            self._turns_at_end, self._player = self.turns, None

    def shutdown(self) -> None:
        """The emulator is stopping: close with 1001 (going away)."""
        self._end(1001, "emulator shutting down", "emulator stopped")

    def _end(self, code: int, reason: str, ended_by: str) -> None:
        if not self._close.is_set():
            self._close_code, self._close_reason, self.ended_by = code, reason, ended_by
            self._close.set()

    def _reject(self, reason: str) -> None:
        log.warning("%s: malformed client frame, closing with 1007: %s", self._label, reason)
        self._end(1007, reason, f"malformed frame: {reason}")

    async def _finish(self) -> None:
        if self._dropped or self._ws.closed:
            return
        try:
            await self._ws.close(code=self._close_code,
                                 message=self._close_reason.encode()[:MAX_CLOSE_REASON])
        except ConnectionError:
            pass

    async def _send(self, text: str) -> None:
        if self._ws.closed or self._dropped:
            raise Gone()
        try:
            await self._ws.send_str(text)
        except ConnectionError:
            raise Gone() from None

    # Setup

    async def _setup(self) -> bool:
        try:
            msg = await self._ws.receive(timeout=SETUP_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise wire.Malformed(f"no setup within {SETUP_TIMEOUT_S:g} s") from None
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return False
        kind, setup = wire.parse(msg.data)
        if kind != "setup":
            raise wire.Malformed(f"the first frame must be setup, got {kind}")
        if not isinstance(setup.get("model"), str) or not setup["model"]:
            raise wire.Malformed("setup.model is missing")
        if self._settings.emulator_refuse_key:
            self._refuse_key()
            return False
        self.generation = gen = generations.of_model(setup["model"])
        refused = generations.refusal(gen, setup)
        if refused:
            log.warning("%s: setup refused with 1007: %s", self._label, refused)
            self._end(generations.INVALID_ARGUMENT, refused, f"setup refused: {refused}")
            return False
        opts = Options.from_setup(setup, gen.parts_per_event)
        self._resumable = opts.resumable
        self.instruction = wire.text_of({"turns": [setup.get("system_instruction") or {}]})
        handle = (setup.get("session_resumption") or {}).get("handle")
        turns = self._resumed_turns(handle)
        self._vad = EnergyVad(opts.vad)
        self._player = TurnPlayer(self._send, opts, self._handles, self._label, self._tasks, turns,
                                  self._interrupted_ns, self._turns_ns,
                                  self._handles.memory(handle) if turns else None)
        self._tools = ToolRunner(self._send, self._player, gen, generations.tool_behaviours(gen, setup),
                                 lambda: self._vad.speaking, self._label, self._tasks)
        log.debug("%s: setup for %s (%s), %s", self._label, setup["model"], gen.name, opts)
        try:
            await self._send(wire.setup_complete())
        except Gone:
            return False
        return True

    def _refuse_key(self) -> None:
        """EMULATOR_REFUSE_KEY: answer the setup as the service answers a bad key. Google's Live API
        documentation does not give that answer (whether the upgrade is refused with an HTTP status or
        the setup with a close code, and with which text); the closest documented behaviour is a close
        with 1008, policy violation, the plausible code for auth and permission failures. The reason's
        wording is ours."""
        key = "present" if self._request.headers.get("x-goog-api-key") else "absent"
        log.warning("%s: refusing the key (%s) at setup with 1008 (EMULATOR_REFUSE_KEY)", self._label, key)
        self._end(1008, "API key not valid. Please pass a valid API key.", "key refused")

    def _resumed_turns(self, handle: object) -> int:
        if not handle:
            return 0
        turns = self._handles.get(handle) if isinstance(handle, str) else None
        if turns is None or self._settings.emulator_refuse_handles:
            # Which code the real service uses for this is not documented (1007 is what has been seen).
            self.refused_handle = True
            raise wire.Malformed("unknown or expired session resumption handle")
        log.info("%s: resumed after %d turns", self._label, turns)
        self.resumed_from = turns
        return turns

    # Client frames

    async def _read_loop(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                kind, body = wire.parse(msg.data)
                if kind == "setup":
                    raise wire.Malformed("setup sent twice")
                getattr(self, HANDLERS[kind])(body)
        except wire.Malformed as e:
            self._reject(str(e))
        finally:
            self._end(1000, "bye", self.ended_by)

    def _handle_realtime_input(self, body: dict) -> None:
        if "media_chunks" in body and self.generation.refuses_media_chunks:
            raise wire.Malformed(f"media_chunks is not supported on {self.generation.name}: send audio")
        events = []
        for pcm in wire.audio_of(body):
            events += self._vad.feed(pcm)
        if "activity_start" in body:
            events += self._vad.activity_start()
        if "activity_end" in body:
            events += self._vad.activity_end()
        if body.get("audio_stream_end"):
            events += self._vad.stream_end()
        for event in events:
            if self.generation.voice_activity:
                self._send_soon(wire.voice_activity(start=isinstance(event, SpeechStarted)))
            if isinstance(event, SpeechStarted):
                self._player.barge_in()
                self._tools.new_input()
            elif isinstance(event, SpeechEnded):
                self._speech_turn(event)
        if isinstance(body.get("text"), str):
            self._text_turn(body["text"])

    def _handle_client_content(self, body: dict) -> None:
        """Turns accumulate until one says ``turn_complete`` (https://ai.google.dev/api/live); on 3.8
        that one interrupts the running generation, whatever ``activity_handling`` says."""
        self._pending_text.append(wire.text_of(body))
        if body.get("turn_complete", False):
            text, self._pending_text = " ".join(t for t in self._pending_text if t), []
            if self.generation.client_turn_interrupts:
                self._player.cut()
            self._text_turn(text)

    def _handle_ignored(self, body: dict) -> None:
        log.debug("%s: ignoring %s", self._label, sorted(body))

    def _speech_turn(self, speech: SpeechEnded) -> None:
        if self._no_reply():
            return
        if self._settings.emulator_stall == "empty_turn" and not self._stalled:
            self._stalled = True  # the turn completes, with not a sample of audio
            self._player.start(persona.heard(speech.utterance), {"AUDIO": round(speech.seconds * TOKENS_PER_S)},
                               lambda: persona.Reply(b"", ""))
            return
        who = self._settings.emulator_persona
        self._player.start(persona.heard(speech.utterance), {"AUDIO": round(speech.seconds * TOKENS_PER_S)},
                           lambda: persona.reply(who, speech.utterance), in_thread=speech.seconds > ECHO_ON_LOOP_S)

    def _text_turn(self, text: str) -> None:
        if self._no_reply():
            return
        self._tools.new_input()
        for when, name, args in self._settings.emulator_tool_script:
            if when in text:
                self._tools.call(name, json.loads(args), self.number)
                return
        who = self._settings.emulator_persona
        self._player.barge_in()
        self._player.start("", {"TEXT": max(1, len(text) // TEXT_CHARS_PER_TOKEN)},
                           lambda: persona.reply_to_text(who, text))

    def _no_reply(self) -> bool:
        """EMULATOR_STALL=no_reply: a connection opened without a handle answers nothing; it still
        gives a resumption handle, as the service does now and then."""
        if self._settings.emulator_stall != "no_reply" or self.resumed_from is not None:
            return False
        log.info("%s: not answering (EMULATOR_STALL=no_reply)", self._label)
        if self._resumable:
            spawn(self._send_quietly(wire.resumption_update(self._handles.issue(self.turns))),
                  f"emulator.s{self.number}.handle", self._tasks)
        return True

    def _handle_tool_response(self, body: dict) -> None:
        for call_id, response, scheduling in wire.tool_responses(body):
            self._tools.response(call_id, response, generations.scheduling_of({"scheduling": scheduling}))

    def _send_soon(self, text: str) -> None:
        spawn(self._send_quietly(text), f"emulator.s{self.number}.send", self._tasks)

    async def _send_quietly(self, text: str) -> None:
        try:
            await self._send(text)
        except Gone:
            pass
