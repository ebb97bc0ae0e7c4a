"""A lean echo in place of Gemini, for measuring the bridge alone: ``python -m bench.load --bridge-only``.

With ``BRIDGE_ECHO_MODEL=true`` supervisord runs ``python -m bench.echo_model`` in place of
``python -m model_client`` (common/stack.py picks the module): the model_client stage itself, whose
sessions are ``EchoSession``s. Each caller utterance, once its silence is committed, comes back as the
model's turn: the emulator's energy VAD (common/voice_activity.py) and echo persona (16 → 24 kHz), run
inside the model_client. No SDK, no TLS, no JSON, no emulator process: what is left on the box is the
gateway, the transcoders and the model_client's ZeroMQ side, so the bench measures the bridge. The
messages are those a Gemini session emits (AudioDown, TurnDone, Interrupt), paced as the emulator paces
them. Never for real calls: it is not a voice agent, and the production packages never import it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from common import messages as m
from common.lifecycle import cancel_all, main, spawn
from common.settings import Settings
from common.voice_activity import EnergyVad, SpeechEnded, SpeechStarted, VadConfig
from emulator.persona import echo
from emulator.turns import CHUNK_BYTES, CHUNK_MS, PACE
from model_client.stage import ModelClientStage

ECHO_CAPACITY = 1000  # an echo session costs next to nothing: the bridge, not the model, is measured


class EchoSession:
    """The part of GeminiSession's interface the model_client stage uses."""

    pending_audio_bytes = 0  # nothing is queued: every frame is handled as it arrives

    def __init__(self, call: str, settings: Settings, emit: Callable[[object], None]):
        self.call, self.emit = call, emit
        self.vad = EnergyVad(VadConfig(silence_ms=settings.silence_ms, prefix_ms=settings.prefix_padding_ms))
        self.turn = 0
        self.seq = 0
        self.stats = {"replies": 0, "interrupted": 0}
        self._reply: asyncio.Task | None = None

    def start(self) -> None:
        pass

    def send_audio(self, pcm: bytes, t_in: int = 0) -> None:
        for event in self.vad.feed(pcm):
            if isinstance(event, SpeechStarted) and self._reply is not None and not self._reply.done():
                self._reply.cancel()  # barge-in
                self.stats["interrupted"] += 1
                self.emit(m.Interrupt(self.call, self.turn))
            elif isinstance(event, SpeechEnded):
                self.turn += 1
                self.stats["replies"] += 1
                self._reply = spawn(self._stream(self.turn, echo(event.utterance)), f"echo:{self.call}")

    async def _stream(self, turn: int, audio: bytes) -> None:
        for i in range(0, len(audio), CHUNK_BYTES):
            self.seq += 1
            self.emit(m.AudioDown(self.call, self.seq, time.monotonic_ns(), audio[i:i + CHUNK_BYTES], turn))
            await asyncio.sleep(CHUNK_MS / 1000 / PACE)
        self.emit(m.TurnDone(self.call, turn))

    def dtmf(self, digit: str) -> None:
        pass

    def played(self, msg: m.Played) -> None:
        pass

    async def close(self) -> None:
        if self._reply is not None:
            await cancel_all([self._reply])
            self._reply = None  # see common.lifecycle.cancel_all


class EchoModelClientStage(ModelClientStage):
    """The model_client stage with an EchoSession for every call and no Gemini client."""

    capacity = ECHO_CAPACITY

    def new_session(self, msg: m.CallStart) -> EchoSession:
        return EchoSession(msg.call, self.settings, self._emit)


if __name__ == "__main__":
    main("model_client", EchoModelClientStage)
