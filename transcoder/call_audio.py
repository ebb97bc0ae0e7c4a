"""Per-call DSP state: one object per call, created at CallStart, freed at CallEnd.

Up: µ-law 8 kHz → PCM16 16 kHz. Down: PCM16 24 kHz → µ-law 8 kHz, per model turn: a turn's tail is
flushed when the turn completes, and an interrupted turn's state is reset and its late chunks dropped.
Nothing here is hard to rebuild: a new CallAudio from the next frame on is a valid continuation.

``caller_audio_many``/``model_audio_many`` do the same for many calls at once, on the columns of an
AudioRun (the calls' audio back to back, and its cut): frames of calls whose resamplers are at the same
point (same frame length and phase, the usual case) are decoded, filtered and encoded in one vectorised
step; the bytes are exactly those the one-call methods would give.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from common import fir, g711, resample
from common.messages import cut

MAX_GROUP = 128  # calls filtered in one step


class CallAudio:
    def __init__(self, call: str, model: str, engine: str = resample.DEFAULT_ENGINE):
        self.call = call
        self.model = model  # the model_client endpoint this call's audio goes to
        self.up = resample.up_8k_to_16k(engine)
        self.down = resample.down_24k_to_8k(engine)
        self.seq_up = 0
        self.seq_down = 0
        self.turn = 0  # the model turn now playing
        self.dropped_turn = -1  # chunks of this turn or older arrived after an Interrupt

    def caller_audio(self, ulaw: bytes) -> bytes:
        """µ-law 8 kHz in, PCM16 LE 16 kHz out."""
        self.seq_up += 1
        return g711.float_to_pcm16(self.up.filter(g711.DECODE_FLOAT.take(np.frombuffer(ulaw, np.uint8))))

    def model_audio(self, pcm24: bytes, turn: int) -> bytes | None:
        """PCM16 LE 24 kHz in, µ-law 8 kHz out; None for a chunk of an interrupted turn."""
        if not self.plays(turn):
            return None
        self.seq_down += 1
        pcm = np.frombuffer(pcm24, dtype="<i2", count=len(pcm24) // 2)  # a stray odd byte is dropped
        return g711.float_to_ulaw(self.down.filter(pcm))

    def plays(self, turn: int) -> bool:
        """Whether a chunk of ``turn`` goes on to the caller (then it is the turn now playing)."""
        if turn <= self.dropped_turn:
            return False
        self.turn = turn
        return True

    def turn_done(self, turn: int) -> bytes:
        """The tail the down resampler still holds for ``turn``, as µ-law; state starts clean."""
        if turn <= self.dropped_turn:
            return b""
        return g711.float_to_ulaw(self.down.flush_float())

    def interrupt(self, turn: int) -> None:
        """Barge-in: nothing of ``turn`` may reach the caller any more, and no tail leaks on."""
        self.dropped_turn = max(self.dropped_turn, turn)
        self.down.reset()


def caller_audio_many(calls: list[CallAudio], ulaw: bytes, sizes: list[int]) -> tuple[bytes, list[int]]:
    """``caller_audio`` for many calls (each at most once): their µ-law frames back to back (``sizes``
    cuts them) in, their PCM16 16 kHz back to back out, with its cut."""
    resamplers = [c.up for c in calls]
    if _one_batch(resamplers, sizes, 1):
        codes = np.frombuffer(ulaw, np.uint8).reshape(len(calls), -1)
        out = _filter_rows(resamplers, g711.DECODE_FLOAT.take(codes), g711.float_to_pcm16, 2)
        for c in calls:
            c.seq_up += 1
        return out
    frames = cut(ulaw, sizes)
    out = [b""] * len(calls)
    for group in _groups(resamplers, frames, 1):
        if len(group) == 1 or not calls[group[0]].up.batched:
            for i in group:
                out[i] = calls[i].caller_audio(frames[i])
            continue
        codes = np.frombuffer(b"".join([frames[i] for i in group]), np.uint8).reshape(len(group), -1)
        pcm, lengths = _filter_rows([calls[i].up for i in group], g711.DECODE_FLOAT.take(codes),
                                    g711.float_to_pcm16, 2)
        for i, piece in zip(group, cut(pcm, lengths)):
            out[i] = piece
            calls[i].seq_up += 1
    return b"".join(out), [len(b) for b in out]


def model_audio_many(calls: list[CallAudio], pcm24: bytes, sizes: list[int],
                     turns: list[int]) -> tuple[bytes, list[int]]:
    """``model_audio`` for many calls (each at most once): PCM16 24 kHz chunks back to back in, µ-law
    8 kHz back to back out, with its cut; a chunk of an interrupted turn gives nothing (size 0)."""
    playing = [i for i in range(len(calls)) if calls[i].plays(turns[i])]
    resamplers = [c.down for c in calls]
    if len(playing) == len(calls) and _one_batch(resamplers, sizes, 2):
        pcm = np.frombuffer(pcm24, "<i2").reshape(len(calls), -1)
        out = _filter_rows(resamplers, pcm.astype(np.float64), g711.float_to_ulaw, 1)
        for c in calls:
            c.seq_down += 1
        return out
    chunks = cut(pcm24, sizes)
    out = [b""] * len(calls)
    for group in _groups([resamplers[i] for i in playing], [chunks[i] for i in playing], 2):
        group = [playing[g] for g in group]
        if len(group) == 1 or not calls[group[0]].down.batched:
            for i in group:
                out[i] = calls[i].model_audio(chunks[i], turns[i])
            continue
        pcm = np.frombuffer(b"".join([chunks[i] for i in group]), "<i2").reshape(len(group), -1)
        ulaw, lengths = _filter_rows([calls[i].down for i in group], pcm.astype(np.float64),
                                     g711.float_to_ulaw, 1)
        for i, piece in zip(group, cut(ulaw, lengths)):
            out[i] = piece
            calls[i].seq_down += 1
    return b"".join(out), [len(b) for b in out]


def _one_batch(resamplers: list, sizes: list[int], width: int) -> bool:
    """Whether every chunk can be filtered in the same ``filter_many`` steps: the usual case, where all
    calls send 20 ms frames and so stay at the same point of their resamplers."""
    if len(resamplers) < 2 or not resamplers[0].batched or not sizes[0] or sizes[0] % width:
        return False
    return sizes.count(sizes[0]) == len(sizes) and fir.in_step(resamplers)


def _filter_rows(resamplers: list, x: np.ndarray, encode, size: int) -> tuple[bytes, list[int]]:
    """``filter_many`` over the rows of ``x``, encoded: (bytes back to back, cut). MAX_GROUP rows at a
    time: beyond that the working arrays outgrow the CPU's caches and it gets slower."""
    blobs, sizes = [], []
    for k in range(0, len(resamplers), MAX_GROUP):
        y, skips = fir.filter_many(resamplers[k:k + MAX_GROUP], x[k:k + MAX_GROUP])
        blob, row = encode(y), y.shape[1] * size
        if any(skips):  # a stream's first frame withholds the group delay
            blob = b"".join([blob[j * row + skip * size:(j + 1) * row] for j, skip in enumerate(skips)])
            sizes += [row - skip * size for skip in skips]
        else:
            sizes += [row] * len(skips)
        blobs.append(blob)
    return b"".join(blobs), sizes


def _groups(resamplers: list, chunks: list[bytes], width: int) -> list[list[int]]:
    """Indices of the chunks that can be filtered together (same engine state, same length)."""
    groups: dict = defaultdict(list)
    for i, (r, chunk) in enumerate(zip(resamplers, chunks)):
        n = len(chunk)
        groups[r.batch_key(n // width) if r.batched and n % width == 0 else i].append(i)
    return list(groups.values())
