"""The local barge-in detector: real speech over the model triggers; noise and echo do not."""

import numpy as np
import pytest

from model_client.barge import BargeInDetector
from softphone.speech import speech_like

RATE = 16000


def speech(seconds, db, seed=1):
    x = speech_like(seconds, seed=seed, rate=RATE).astype(np.float64)
    rms = np.sqrt(np.mean(x ** 2))
    return x * (32768 * 10 ** (db / 20) / rms)


def pcm(x):
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def feed(detector, caller, model=None, chunk=320):
    """Caller (and model) audio in 20 ms steps; the times (s) at which an onset fired."""
    fired = []
    for i in range(0, len(caller), chunk):
        now = i / RATE
        if model is not None:
            detector.model_audio(pcm(model[int(i * 1.5):int((i + chunk) * 1.5)]), now)
        if detector.caller_audio(pcm(caller[i:i + chunk]), now):
            fired.append(now)
    return fired


def test_speech_triggers_once_within_200ms():
    caller = np.concatenate([np.zeros(RATE // 2), speech(1.5, -20)])
    fired = feed(BargeInDetector(), caller)
    assert len(fired) == 1 and 0.5 <= fired[0] <= 0.5 + 0.2


@pytest.mark.parametrize("db", [-50, -45])
def test_line_noise_never_triggers(db):
    noise = np.random.default_rng(3).standard_normal(RATE * 3) * 32768 * 10 ** (db / 20)
    assert feed(BargeInDetector(), noise) == []


def test_echo_of_the_model_does_not_trigger():
    model = speech(3.0, -12, seed=5)  # the model talks at 24 kHz...
    model_24k = np.repeat(model, 3)[::2]
    echo = np.concatenate([np.zeros(int(0.2 * RATE)), model * 10 ** (-20 / 20)])[:len(model)]
    assert feed(BargeInDetector(), echo, model_24k) == []  # ...and comes back 20 dB down, 200 ms late


def test_caller_talking_over_the_model_still_triggers():
    model = speech(3.0, -12, seed=5)
    model_24k = np.repeat(model, 3)[::2]
    echo = np.concatenate([np.zeros(int(0.2 * RATE)), model * 0.1])[:len(model)]
    caller = echo + np.concatenate([np.zeros(RATE), speech(2.0, -14, seed=9)])
    fired = feed(BargeInDetector(), caller, model_24k)
    assert len(fired) == 1 and 1.0 <= fired[0] <= 1.25


def test_short_clicks_do_not_trigger():
    caller = np.zeros(RATE * 2)
    for start in (0.3, 0.9, 1.5):
        caller[int(start * RATE):int(start * RATE) + 1600] = 20000  # 100 ms bursts
    assert feed(BargeInDetector(), caller) == []


def test_echo_level_is_the_loudest_of_the_remembered_model_audio():
    """The sliding-window maximum matches a brute-force maximum over the last ``echo_memory_s``."""
    rng = np.random.default_rng(3)
    detector, sent = BargeInDetector(echo_memory_s=0.5), []
    for step in range(400):
        now = step * 0.02
        if rng.random() < 0.7:
            chunk = pcm(rng.normal(0, 10 ** rng.uniform(1, 4), 480))
            detector.model_audio(chunk, now)
            x = np.frombuffer(chunk, dtype="<i2").astype(np.float64)
            sent.append((now, float(np.dot(x, x)) / len(x) / 32768.0 ** 2 + 1e-12))
        recent = [p for t, p in sent if t >= now - 0.5]
        assert detector._echo_power(now) == pytest.approx(max(recent, default=1e-12), rel=1e-12)
