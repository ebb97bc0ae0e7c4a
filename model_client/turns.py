"""What the model says, as our messages: its audio numbered into turns, its transcripts and its
interruptions.

The model's audio that arrives in one pass of the event loop leaves as one ``AudioDown`` per call: a
loop that has fallen behind finds several chunks of a call waiting, and one message costs every stage
less than several. Everything else for the call (``emit``) leaves after the audio held before it.

Turn ids are ours: a model turn starts with its first audio and ends at ``turn_complete`` or
``interrupted``, or when its connection is lost (``cut``). They continue across connections, and a
session that takes a call over from another model_client starts after the gateway's newest turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from google.genai import types

from common import messages as m
from model_client.barge import BargeInDetector
from model_client.reconnect import Conversation

log = logging.getLogger(__name__)


class ModelTurns:
    def __init__(self, call: str, emit: Callable[[object], None], barge: BargeInDetector,
                 conversation: Conversation, turn: int = 0):
        self.call, self._out = call, emit
        self.barge = barge  # hears the model's level, to tell its echo from the caller
        self.conversation = conversation  # for a fresh session, should a handle be refused
        self.turn = turn  # the latest model turn
        self.in_turn = False
        self.seq = 0  # of the model's audio messages, for the whole call
        self.last_turn: int | None = None  # set by end_call/transfer_call: no later turn is played
        self.unplayed = 0  # model messages after the goodbye, not passed on
        self._held: list[bytes] = []  # the model's audio of this loop pass, for the current turn

    def emit(self, msg: object) -> None:
        """A message for the call, after the model's audio held before it."""
        self.flush()
        self._out(msg)

    def flush(self) -> None:
        if self._held:
            audio = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self._held = []
            self.seq += 1
            self._out(m.AudioDown(call=self.call, seq=self.seq, t_in=time.monotonic_ns(), audio=audio,
                                  turn=self.turn))

    def last_words(self) -> None:
        """The line is leaving (end_call, transfer_call): the goodbye, the turn under way or else the
        next, is the last the caller hears, even if the model goes on talking (a NON_BLOCKING call)."""
        if self.last_turn is None:
            self.last_turn = self.turn if self.in_turn else self.turn + 1
            log.info("leaving the line: model turn %d is the last the caller hears", self.last_turn)

    def content(self, content: types.LiveServerContent, audio: bytes | None) -> None:
        # After the goodbye the model's output goes no further: the gateway leaves once it has played.
        silenced = self.last_turn is not None and (self.turn if self.in_turn else self.turn + 1) > self.last_turn
        if audio and not silenced:
            self._audio(audio)
        heard, said = content.input_transcription, content.output_transcription
        if heard and heard.text:
            self.conversation.add("caller", heard.text)
            self.emit(m.Transcript(call=self.call, role="caller", text=heard.text,
                                   final=bool(heard.finished)))
        if silenced:
            self.unplayed += 1
            return
        if said and said.text:
            self.conversation.add("model", said.text)
            turn = self.turn if self.in_turn else self.turn + 1  # text may come before the audio
            self.emit(m.Transcript(call=self.call, role="model", text=said.text,
                                   final=bool(said.finished), turn=turn))
        if content.interrupted:
            self.barge.stopped(time.monotonic())
            self.emit(m.Interrupt(call=self.call, turn=self.turn))
            self.in_turn = False
        elif content.turn_complete:
            self.cut()

    def cut(self) -> None:
        """The turn ends here (complete, or its connection lost): what arrived of it plays out."""
        if self.in_turn:
            self.emit(m.TurnDone(call=self.call, turn=self.turn))
            self.in_turn = False

    def _audio(self, audio: bytes) -> None:
        new_turn = not self.in_turn
        if new_turn:
            self.turn += 1
            self.in_turn = True
        self.barge.model_audio(audio, time.monotonic(), new_turn=new_turn)
        if not self._held:
            asyncio.get_running_loop().call_soon(self.flush)
        self._held.append(audio)
