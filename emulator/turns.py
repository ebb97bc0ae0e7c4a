"""The model's turns within one session: sequencing, pacing, barge-in, the closing frames.

Turns run one after another (a turn first waits for the one before it), and each turn's frames come
from its own task only, so an interrupted turn can never interleave with the next. A barge-in sets
the running turn's ``barge`` event; the turn notices it between two chunks and ends itself with
``interrupted`` + ``turnComplete`` (no ``generationComplete``), as the real service does.

A turn: ``inputTranscription`` (finished) for what the caller said, then the reply's audio in
``CHUNK_MS`` chunks sent ``PACE`` times faster than real time with ``outputTranscription`` pieces
spread over them (in the audio's own events on a generation that sends several parts per event),
``generationComplete``, ``turnComplete`` (with ``usageMetadata``) and, when setup asked for resumption,
a fresh ``sessionResumptionUpdate`` handle.

Usage: one report per turn, counting that turn: its prompt is the session's context so far (every
earlier turn, both ways) plus what the caller said, its response what the model said, each by modality.
Vertex documents that a turn's processed tokens include the session's memory
(https://cloud.google.com/vertex-ai/generative-ai/docs/provisioned-throughput/live-api); neither API
documents whether the reports are per turn or running totals. Per turn is what the service has been
seen to send; model_client/usage.py reads either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from common.lifecycle import spawn
from common.voice_activity import DEFAULT_PREFIX_MS, DEFAULT_SILENCE_MS, VadConfig
from emulator import persona, wire
from emulator.resumption import HandleStore

log = logging.getLogger(__name__)

CHUNK_MS = 80  # 3,840 bytes of 24 kHz PCM16 per frame (~5 kB of JSON)
CHUNK_BYTES = persona.OUTPUT_RATE * CHUNK_MS // 1000 * 2
PACE = 4.0  # audio goes out 4x faster than real time: streamed, yet well ahead of playback
TOKENS_PER_S = 25  # Gemini counts audio at 25 tokens a second


class Gone(Exception):
    """The client went away while we were sending."""


@dataclass(frozen=True)
class Options:
    """What the client's setup asked for."""
    vad: VadConfig
    resumable: bool
    interrupts: bool
    input_transcripts: bool
    output_transcripts: bool
    parts_per_event: int = 1  # 2: a transcript piece rides in the event of the audio it goes with

    @classmethod
    def from_setup(cls, setup: dict, parts_per_event: int = 1) -> "Options":
        """From a setup whose keys are normalised to snake_case."""
        handling = (setup.get("realtime_input_config") or {}).get("activity_handling")
        return cls(vad=vad_config(setup), resumable="session_resumption" in setup,
                   interrupts=handling != "NO_INTERRUPTION",
                   input_transcripts="input_audio_transcription" in setup,
                   output_transcripts="output_audio_transcription" in setup,
                   parts_per_event=parts_per_event)


def vad_config(setup: dict) -> VadConfig:
    """The setup's ``automatic_activity_detection``, keys normalised to snake_case."""
    aad = (setup.get("realtime_input_config") or {}).get("automatic_activity_detection") or {}
    return VadConfig(silence_ms=int(aad.get("silence_duration_ms") or DEFAULT_SILENCE_MS),
                     prefix_ms=int(aad.get("prefix_padding_ms") or DEFAULT_PREFIX_MS),
                     disabled=bool(aad.get("disabled", False)))


@dataclass
class _Turn:
    number: int
    heard_ns: int = 0  # when the caller's end of turn was detected (monotonic ns)
    barge: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    pause: asyncio.Future | None = None  # the stream's wait before its next chunk, ended early by stop()

    def stop(self) -> None:
        self.barge.set()
        if self.pause is not None and not self.pause.done():
            self.pause.set_result(None)

    async def paused(self, seconds: float) -> bool:
        """Wait up to ``seconds``, unless stopped; True if stopped. A timer and a future rather than
        asyncio.wait_for, which makes a task per wait: one per audio chunk of every reply."""
        if seconds > 0 and not self.barge.is_set():
            loop = asyncio.get_running_loop()
            self.pause = loop.create_future()
            timer = loop.call_later(seconds, _wake, self.pause)
            try:
                await self.pause
            finally:
                timer.cancel()
                self.pause = None
        return self.barge.is_set()


def _wake(pause: asyncio.Future) -> None:
    if not pause.done():
        pause.set_result(None)


class TurnPlayer:
    def __init__(self, send: Callable[[str], Awaitable[None]], opts: Options, handles: HandleStore,
                 label: str, tasks: set[asyncio.Task], turns: int = 0,
                 interrupted_ns: deque[int] | None = None, turns_ns: deque[tuple[int, int]] | None = None,
                 memory: dict[str, int] | None = None):
        self._send, self._opts, self._handles, self._label, self._tasks = send, opts, handles, label, tasks
        self.turns = turns
        self.memory = dict(memory or {})  # the session's context in tokens, by modality (usage reports)
        # When each `interrupted` went out (monotonic ns, shared by the emulator's sessions), so a
        # benchmark can time barge-in from the service's signal to Twilio's clear.
        self.interrupted_ns = interrupted_ns if interrupted_ns is not None else deque(maxlen=1)
        # (end of turn detected, first reply audio sent) per turn, so the load bench can report the
        # emulator's own share of the caller's turn latency apart from the bridge's.
        self.turns_ns = turns_ns if turns_ns is not None else deque(maxlen=1)
        self._turn: _Turn | None = None

    def barge_in(self) -> None:
        """The caller started speaking: cut the running turn short (unless setup said NO_INTERRUPTION)."""
        if self._turn is not None and not self._turn.finished.is_set() and self._opts.interrupts:
            self._turn.stop()

    def cut(self) -> None:
        """The model cuts its own running turn short (a tool result scheduled INTERRUPT)."""
        if self._turn is not None and not self._turn.finished.is_set():
            self._turn.stop()

    def start(self, heard: str, heard_tokens: dict[str, int],
              make_reply: Callable[[], persona.Reply | None], *, in_thread: bool = False) -> None:
        """Queue a turn: ``heard`` is the input transcription ("" for none), ``heard_tokens`` what the
        input counts, by modality. ``make_reply`` runs on the loop, or ``in_thread`` when it takes a
        while (resampling a long utterance): a short one costs less than the hop to a thread and back,
        which waits for the GIL behind every other thread when many turns start at once."""
        previous, self.turns = self._turn, self.turns + 1
        self._turn = turn = _Turn(self.turns, time.monotonic_ns())
        spawn(self._play(turn, previous, heard, heard_tokens, make_reply, in_thread),
              f"{self._label}.turn{turn.number}", self._tasks)

    async def _play(self, turn: _Turn, previous: _Turn | None, heard: str, heard_tokens: dict[str, int],
                    make_reply: Callable[[], persona.Reply | None], in_thread: bool) -> None:
        try:
            if previous is not None:
                await previous.finished.wait()
            if heard and self._opts.input_transcripts:
                await self._send(wire.input_transcription(heard))
            reply = await asyncio.to_thread(make_reply) if in_thread else make_reply()
            if reply is not None:
                await self._reply(turn, reply, heard_tokens)
        except Gone:
            pass
        finally:
            turn.finished.set()

    async def _reply(self, turn: _Turn, reply: persona.Reply, heard_tokens: dict[str, int]) -> None:
        started = time.monotonic()
        complete = await self._stream(turn, reply)
        if not complete:
            self.interrupted_ns.append(time.monotonic_ns())  # benchmarks time barge-in from here
        await self._send(wire.generation_complete() if complete else wire.interrupted())
        prompt = {k: self.memory.get(k, 0) + heard_tokens.get(k, 0) for k in {*self.memory, *heard_tokens}}
        said = {"AUDIO": round(reply.seconds * TOKENS_PER_S)}
        await self._send(wire.turn_complete(prompt, said))
        for k, n in [*heard_tokens.items(), *said.items()]:
            self.memory[k] = self.memory.get(k, 0) + n
        log.debug("%s turn %d: %s %.2f s of audio in %.2f s", self._label, turn.number,
                  "sent" if complete else "interrupted:", reply.seconds, time.monotonic() - started)
        if self._opts.resumable:
            await self._send(wire.resumption_update(self._handles.issue(self.turns, self.memory)))

    async def _stream(self, turn: _Turn, reply: persona.Reply) -> bool:
        """Send the reply's audio, paced, with its transcript spread over it; False if barged in."""
        chunks = [reply.audio[i:i + CHUNK_BYTES] for i in range(0, len(reply.audio), CHUNK_BYTES)]
        pieces = _pieces(reply.text) if self._opts.output_transcripts else []
        if not chunks and pieces:
            chunks = [b""]  # no audio: the transcript still goes out
        slots = _spread(pieces, len(chunks))
        loop = asyncio.get_running_loop()
        start = loop.time()
        together = self._opts.parts_per_event > 1
        for i, chunk in enumerate(chunks):
            if not (together and chunk):
                for piece in slots[i]:
                    await self._send(wire.output_transcription(piece))
            if turn.barge.is_set():
                return False
            if chunk:
                await self._send(wire.audio(chunk, "".join(slots[i]) if together else ""))
                if i == 0:
                    self.turns_ns.append((turn.heard_ns, time.monotonic_ns()))
            if await turn.paused(start + (i + 1) * CHUNK_MS / 1000 / PACE - loop.time()):
                return False
        return True


def _pieces(text: str) -> list[str]:
    """A transcript as the incremental pieces the service streams: words, each but the first with
    its leading space, so the pieces concatenate back to the text."""
    words = text.split()
    return words[:1] + [" " + w for w in words[1:]]


def _spread(pieces: list[str], chunks: int) -> list[list[str]]:
    """The transcript pieces to send before each of ``chunks`` audio chunks, spread evenly."""
    slots: list[list[str]] = [[] for _ in range(chunks)]
    for j, piece in enumerate(pieces):
        slots[j * chunks // len(pieces)].append(piece)
    return slots

