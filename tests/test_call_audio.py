"""Transcoding many calls in one vectorised step gives exactly the bytes of one call at a time."""

import numpy as np
import pytest

from transcoder import g711
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
        got = caller_audio_many(many, frames)
        assert got == [a.caller_audio(f) for a, f in zip(alone, frames)]
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
        got = model_audio_many(many, chunks, turns)
        assert got == [a.model_audio(c, t) for a, c, t in zip(alone, chunks, turns)]
    assert [c.seq_down for c in many] == [a.seq_down for a in alone]
    assert [c.turn_done(2) for c in many] == [a.turn_done(2) for a in alone]


def test_first_frame_withholds_the_delay_then_frames_are_whole():
    many, _ = pairs(3)
    first = caller_audio_many(many, [ulaw(160, seed=i) for i in range(3)])
    later = caller_audio_many(many, [ulaw(160, seed=9 + i) for i in range(3)])
    delay = many[0].up.design.delay
    assert {len(b) for b in first} == {2 * (320 - delay)} and {len(b) for b in later} == {640}
