"""Per-call DSP state: one object per call, created at CallStart, freed at CallEnd.

Up: µ-law 8 kHz → PCM16 16 kHz. Down: PCM16 24 kHz → µ-law 8 kHz, per model turn: a turn's tail is
flushed when the turn completes, and an interrupted turn's state is reset and its late chunks dropped.
Nothing here is hard to rebuild: a new CallAudio from the next frame on is a valid continuation.
"""

from __future__ import annotations

import numpy as np

from transcoder import g711, resample


class CallAudio:
    def __init__(self, call: str, model: str):
        self.call = call
        self.model = model  # the model_client endpoint this call's audio goes to
        self.up = resample.up_8k_to_16k()
        self.down = resample.down_24k_to_8k()
        self.seq_up = 0
        self.seq_down = 0
        self.turn = 0  # the model turn now playing
        self.dropped_turn = -1  # chunks of this turn or older arrived after an Interrupt

    def caller_audio(self, ulaw: bytes) -> bytes:
        """µ-law 8 kHz in, PCM16 LE 16 kHz out."""
        self.seq_up += 1
        return self.up.process(g711.decode_ulaw(ulaw)).astype("<i2").tobytes()

    def model_audio(self, pcm24: bytes, turn: int) -> bytes | None:
        """PCM16 LE 24 kHz in, µ-law 8 kHz out; None for a chunk of an interrupted turn."""
        if turn <= self.dropped_turn:
            return None
        self.turn = turn
        self.seq_down += 1
        return g711.encode_ulaw(self.down.process(np.frombuffer(pcm24, dtype="<i2")))

    def turn_done(self, turn: int) -> bytes:
        """The tail the down resampler still holds for ``turn``, as µ-law; state starts clean."""
        if turn <= self.dropped_turn:
            return b""
        return g711.encode_ulaw(self.down.flush())

    def interrupt(self, turn: int) -> None:
        """Barge-in: nothing of ``turn`` may reach the caller any more, and no tail leaks on."""
        self.dropped_turn = max(self.dropped_turn, turn)
        self.down.reset()
