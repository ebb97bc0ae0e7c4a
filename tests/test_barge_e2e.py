"""Barge-in through the real stack (supervisord, softphone, emulator, real SDK) with the phone-line
preset: line noise and short backchannels over the model's reply do not make the gateway send Twilio
`clear`; a caller who keeps talking does."""

import numpy as np
import pytest

from harness.stack import Stack
from softphone.caller import place_call
from softphone.speech import speech_like

pytestmark = pytest.mark.e2e
RATE = 8000


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("barge") / "run", GEMINI_VAD_PRESET="phone").start()
    yield s
    assert s.stop() == 0


def line_noise(seconds: float, db: float) -> np.ndarray:
    return np.random.default_rng(4).standard_normal(int(seconds * RATE)) * 32768 * 10 ** (db / 20)


def call_audio(after: np.ndarray) -> np.ndarray:
    """4 s said (the emulator echoes it back as the reply), 0.9 s for the turn to end and the reply to
    start, then ``after`` over the reply; faint line noise throughout."""
    said = speech_like(4.0, seed=11).astype(np.float64)
    x = np.concatenate([said, np.zeros(int(0.9 * RATE)), after])
    x += line_noise(len(x) / RATE, -50)
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


async def test_noise_and_backchannels_do_not_clear_the_reply(stack):
    after = np.zeros(4 * RATE)
    for k, at in enumerate((1.0, 2.2, 3.4)):  # three "uh-huh"s of 250 ms while the reply plays
        i = int(at * RATE)
        after[i:i + RATE // 4] += speech_like(0.25, seed=30 + k).astype(np.float64) * 0.5
    result = await place_call(stack.url, call_audio(after), listen_s=2.0, timeout_s=30)
    assert result.clears == []


async def test_a_caller_who_keeps_talking_clears_the_reply(stack):
    after = np.concatenate([np.zeros(int(1.5 * RATE)), speech_like(2.0, seed=12)])
    result = await place_call(stack.url, call_audio(after), listen_s=2.0, timeout_s=30)
    assert result.clears
