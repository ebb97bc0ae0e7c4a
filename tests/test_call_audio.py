"""Transcoding many calls in one vectorised step gives exactly the bytes of one call at a time."""

import numpy as np
import pytest

from common import g711
from transcoder.call_audio import CallAudio, caller_audio_many, model_audio_many


def ulaw(n: int, seed: int) -> bytes:
    pcm = (np.random.default_rng(seed).standard_normal(n) * 4000).astype(np.int16)
    return g711.encode_ulaw(pcm)


def pcm24(n: int, seed: int) -> bytes:
    return (np.random.default_rng(seed).standard_normal(n) * 4000).astype("<i2").tobytes()


def pairs(n: int, engine: str = "fir") -> tuple[list[CallAudio], list[CallAudio]]:
    return ([CallAudio(f"c{i}", "m", engine) for i in range(n)],
            [CallAudio(f"c{i}", "m", engine) for i in range(n)])


@pytest.mark.parametrize("engine", ["fir", "sinc_fastest"])
def test_caller_audio_many_equals_one_by_one(engine):
    many, alone = pairs(6, engine)
    for tick in range(8):
        # Mostly 20 ms frames, now and then an odd one, so calls drift apart in phase and length.
        frames = [ulaw(160 if (tick + i) % 5 else 161 + i, seed=tick * 10 + i) for i in range(6)]
        want = [a.caller_audio(f) for a, f in zip(alone, frames)]
        assert caller_audio_many(many, b"".join(frames), [len(f) for f in frames]) == cut(want)
    assert [c.seq_up for c in many] == [a.seq_up for a in alone] == [8] * 6


@pytest.mark.parametrize("engine", ["fir", "sinc_fastest"])
def test_model_audio_many_equals_one_by_one_with_turns(engine):
    many, alone = pairs(5, engine)
    for tick in range(10):
        if tick == 4:  # barge-in on call 2, a turn ends on call 3
            for group in (many, alone):
                group[2].interrupt(1)
                group[3].turn_done(1)
        turns = [1 if tick < 6 else 2] * 5
        chunks = [pcm24(480 if i % 2 else 960 + 3 * tick, seed=tick * 10 + i) for i in range(5)]
        want = [a.model_audio(c, t) or b"" for a, c, t in zip(alone, chunks, turns)]
        assert model_audio_many(many, b"".join(chunks), [len(c) for c in chunks], turns) == cut(want)
    assert [c.seq_down for c in many] == [a.seq_down for a in alone]
    assert [c.turn_done(2) for c in many] == [a.turn_done(2) for a in alone]


def cut(chunks: list[bytes]) -> tuple[bytes, list[int]]:
    return b"".join(chunks), [len(c) for c in chunks]


@pytest.mark.parametrize("calls", [2, 3, 200])  # 200: more than one filter_many step (MAX_GROUP)
def test_every_call_at_the_same_point_is_one_batch_and_equals_one_by_one(calls):
    many, alone = pairs(calls)
    for tick in range(3):
        frames = [ulaw(160, seed=tick * 1000 + i) for i in range(calls)]
        want = cut([a.caller_audio(f) for a, f in zip(alone, frames)])
        assert caller_audio_many(many, b"".join(frames), [160] * calls) == want
        chunks = [pcm24(480, seed=tick * 1000 + i) for i in range(calls)]
        want = cut([a.model_audio(c, 1) for a, c in zip(alone, chunks)])
        assert model_audio_many(many, b"".join(chunks), [960] * calls, [1] * calls) == want


def test_first_frame_withholds_the_delay_then_frames_are_whole():
    many, _ = pairs(3)
    frames = b"".join(ulaw(160, seed=i) for i in range(3))
    _, first = caller_audio_many(many, frames, [160] * 3)
    _, later = caller_audio_many(many, frames, [160] * 3)
    delay = many[0].up.design.delay
    assert first == [2 * (320 - delay)] * 3 and later == [640] * 3
