"""The local barge-in detector: a caller who keeps talking over the model triggers it; line noise,
short bursts ("uh-huh"), the model's own echo, and anything while no model audio plays do not."""

import numpy as np
import pytest

from common import settings
from model_client.barge import ECHO_AHEAD_S, BargeInDetector, any_sound
from model_client.config import server_vad
from softphone.speech import speech_like

RATE = 16000
CONFIRM_S = 0.40


def speech(seconds, db, seed=1):
    x = speech_like(seconds, seed=seed, rate=RATE).astype(np.float64)
    rms = np.sqrt(np.mean(x ** 2))
    return x * (32768 * 10 ** (db / 20) / rms)


def noise(seconds, db, seed=3):
    return np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 32768 * 10 ** (db / 20)


def pcm(x):
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def feed(detector, caller, model=None, chunk=320, model_from=0.0):
    """Caller audio in 20 ms steps while the model's 24 kHz audio (quiet unless given) arrives in step
    from ``model_from`` s on; the times (s) at which an onset fired."""
    if model is None:
        model = np.full(int(len(caller) * 1.5), 3.0)
    fired = []
    for i in range(0, len(caller), chunk):
        now = (i + chunk) / RATE
        j = int((i - model_from * RATE) * 1.5)
        if j >= 0:
            detector.model_audio(pcm(model[j:j + int(chunk * 1.5)]), now, new_turn=j == 0)
        if detector.caller_audio(pcm(caller[i:i + chunk]), now):
            fired.append(now)
    return fired


def with_lead(x, lead_s=1.0, db=-60):
    """``x`` after ``lead_s`` of faint line noise (the detector learns the line's level)."""
    return np.concatenate([noise(lead_s, db), x])


@pytest.mark.parametrize("db", [-26, -20, -14])
def test_a_caller_who_keeps_talking_triggers_once_within_500ms(db):
    caller = with_lead(speech(2.0, db))
    fired = feed(BargeInDetector(), caller)
    assert len(fired) == 1 and 1.0 + CONFIRM_S <= fired[0] <= 1.0 + 0.5


def test_a_call_that_begins_with_the_caller_talking_still_learns_the_quiet_line():
    caller = np.concatenate([speech(1.0, -20, seed=2), noise(2.0, -60), speech(2.0, -20)])
    fired = feed(BargeInDetector(), caller, model_from=1.5)
    assert len(fired) == 1 and 3.0 + CONFIRM_S <= fired[0] <= 3.0 + 0.5


@pytest.mark.parametrize("kind, snr_db", [("white", 20), ("white", 10), ("hum", 20), ("hum", 10),
                                          ("babble-like", 20)])  # babble at 10 dB: see docs/performance.md
def test_steady_line_noise_never_triggers(kind, snr_db):
    level = -20 - snr_db
    if kind == "white":
        line = noise(6.0, level)
    elif kind == "hum":
        t = np.arange(6 * RATE) / RATE
        hum = sum(np.sin(2 * np.pi * 60 * h * t) for h in range(5, 30, 2))
        line = hum / np.sqrt(np.mean(hum ** 2)) * 32768 * 10 ** (level / 20)
    else:  # six speech-like talkers at once
        line = sum(speech(6.0, level - 8, seed=s) for s in range(10, 16))
    assert feed(BargeInDetector(), line, model_from=1.5) == []  # the line was noisy before the turn


def test_a_burst_of_hiss_onto_a_quiet_line_is_no_voice():
    """Louder than the line's noise by far, so the level alone would take it; the VAD does not."""
    caller = noise(4.0, -60)
    caller[2 * RATE:3 * RATE] += noise(1.0, -35, seed=8)
    assert feed(BargeInDetector(), caller, model_from=1.0) == []
    assert feed(BargeInDetector(voice=any_sound), caller, model_from=1.0) != []


@pytest.mark.parametrize("burst_s", [0.1, 0.25, 0.3])
def test_short_bursts_never_trigger(burst_s):
    """Backchannels ("uh-huh", "mm-hm", "okay") and clicks: shorter than the confirmation."""
    caller = with_lead(np.zeros(4 * RATE))
    for k, start in enumerate((1.5, 2.5, 3.5)):
        i = int(start * RATE)
        caller[i:i + int(burst_s * RATE)] += speech(burst_s, -16, seed=20 + k)
    assert feed(BargeInDetector(), caller) == []


def test_echo_of_the_model_does_not_trigger():
    model = speech(4.0, -12, seed=5)  # the model talks at 24 kHz...
    model_24k = np.repeat(model, 3)[::2]
    echo = np.concatenate([np.zeros(int(0.2 * RATE)), model * 10 ** (-20 / 20)])[:len(model)]
    assert feed(BargeInDetector(), echo, model_24k) == []  # ...and comes back 20 dB down, 200 ms late


def test_caller_talking_over_the_model_and_its_echo_still_triggers():
    model = speech(4.0, -12, seed=5)
    model_24k = np.repeat(model, 3)[::2]
    echo = np.concatenate([np.zeros(int(0.2 * RATE)), model * 0.1])[:len(model)]
    caller = echo + np.concatenate([np.zeros(RATE), speech(3.0, -14, seed=9)])
    fired = feed(BargeInDetector(), caller, model_24k)
    assert len(fired) == 1 and 1.0 + CONFIRM_S <= fired[0] <= 1.5


def test_nothing_triggers_while_no_model_audio_plays():
    """Between turns the caller is simply talking: no barge-in, and no voice detector run."""
    calls = []
    detector = BargeInDetector(voice=lambda frame: calls.append(frame) or True)
    caller = with_lead(speech(2.0, -20))
    fired = []
    for i in range(0, len(caller), 320):
        if detector.caller_audio(pcm(caller[i:i + 320]), (i + 320) / RATE):
            fired.append(i)
    assert fired == [] and calls == []


def test_the_model_plays_for_as_long_as_its_audio_lasts():
    detector = BargeInDetector()
    detector.model_audio(pcm(np.zeros(24000)), 10.0, new_turn=True)  # 1 s of audio, arriving at once
    detector.model_audio(pcm(np.zeros(24000)), 10.1)  # and 1 s more: plays until 12.0
    assert detector.playing(11.9) and detector.playing(12.9) and not detector.playing(13.1)
    detector.stopped(11.0)  # interrupted: nothing more plays, and the rest of the turn is dropped
    detector.model_audio(pcm(np.zeros(24000)), 11.1)
    assert not detector.playing(12.1)


def test_echo_guard_at_the_start_of_a_turn():
    """Speech that starts with the model's turn is heard only after the guard."""
    caller = with_lead(speech(2.0, -20), lead_s=1.0)
    fired = feed(BargeInDetector(guard_ms=400), caller, model_from=1.0)
    assert len(fired) == 1 and fired[0] >= 1.0 + 0.4 + CONFIRM_S


def test_echo_level_is_the_loudest_model_audio_around_now():
    """The model's level the echo gate uses matches a brute-force maximum over the chunks that play from
    ``echo_back_s`` ago to ``ECHO_AHEAD_S`` from now (chunks arrive faster than they play)."""
    rng = np.random.default_rng(3)
    detector, sent = BargeInDetector(echo_back_s=0.5), []
    for step in range(400):
        now = step * 0.02
        if rng.random() < 0.7:
            chunk = pcm(rng.normal(0, 10 ** rng.uniform(1, 4), 480 * int(rng.integers(1, 4))))
            start = max(now, detector._plays_until)
            detector.model_audio(chunk, now)
            x = np.frombuffer(chunk, dtype="<i2").astype(np.float64)
            sent.append((start, detector._plays_until, float(np.dot(x, x)) / len(x) / 32768.0 ** 2 + 1e-12))
        around = [p for start, end, p in sent if end >= now - 0.5 and start <= now + ECHO_AHEAD_S]
        assert detector._echo_power(now) == pytest.approx(max(around, default=1e-12), rel=1e-12)


@pytest.mark.parametrize("env, expected", [
    ({}, (None, None, 20, 500)),
    ({"GEMINI_VAD_PRESET": "phone"}, ("START_SENSITIVITY_LOW", "END_SENSITIVITY_HIGH", 300, 600)),
    ({"GEMINI_VAD_PRESET": "phone", "GEMINI_SILENCE_MS": "900", "GEMINI_START_SENSITIVITY": "START_SENSITIVITY_HIGH"},
     ("START_SENSITIVITY_HIGH", "END_SENSITIVITY_HIGH", 300, 900)),  # a variable set wins over the preset
])
def test_the_phone_preset_sets_gemini_vad_where_the_variables_are_left_alone(env, expected):
    vad = server_vad(settings.load(env))
    got = (vad.start_of_speech_sensitivity, vad.end_of_speech_sensitivity, vad.prefix_padding_ms,
           vad.silence_duration_ms)
    assert tuple(v.value if hasattr(v, "value") else v for v in got) == expected


def louder_than(dbfs):
    """A stand-in for the voice detector: a voice in every frame over ``dbfs`` (the level gates decide)."""
    return lambda frame: np.mean(np.frombuffer(frame, dtype="<i2").astype(np.float64) ** 2) > \
        32768 ** 2 * 10 ** (dbfs / 10)


@pytest.mark.parametrize("swell_from", [2.3, 1.7])  # after the caller spoke; before
@pytest.mark.parametrize("caller_s, fires", [(0.3, False), (2.0, True)])
def test_a_run_begins_and_confirms_only_on_frames_over_the_line_before_it(caller_s, fires, swell_from):
    """A backchannel over a burst of noise, with a swell of the burst just after it (that would carry
    the run past the confirmation) or just before it (that would begin the run early), does not
    trigger: the swell is no louder than the burst was before; a caller who keeps talking does."""
    caller = noise(4.0, -60)
    caller[RATE:4 * RATE] += noise(3.0, -30, seed=6)
    swell = slice(int(swell_from * RATE), int((swell_from + 0.3) * RATE))
    caller[swell] *= 10 ** (4 / 20)
    caller[2 * RATE:int((2 + caller_s) * RATE)] += speech(caller_s, -16, seed=7)
    fired = feed(BargeInDetector(voice=louder_than(-27)), caller, model_from=1.5)
    assert bool(fired) == fires
    assert feed(BargeInDetector(voice=louder_than(-27), over_before_db=0), caller, model_from=1.5)
