"""Streaming resamplers, tested the way python-soxr tests its stream (chunked == one-shot), plus the
telephone-band targets the default engine must meet: flatness, rejection, delay, flushing."""

import numpy as np
import pytest

from common import fir, g711, resample
from common.settings import RESAMPLERS

NAMES = ["up_8k_to_16k", "down_24k_to_8k", "up_16k_to_24k"]
ENGINES = resample.ENGINES
FRAME_MS = 20


def noise(n: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 6000).clip(-32768, 32767).astype(np.int16)


def tone(hz: float, rate: int, n: int, amplitude: float = 10000.0) -> np.ndarray:
    return np.rint(amplitude * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.int16)


def one_shot(name, engine, x):
    r = resample.make(name, engine)
    return np.concatenate([r.process(x), r.flush()])


def streamed(name, engine, x, sizes):
    r, out, i, k = resample.make(name, engine), [], 0, 0
    while i < len(x):
        out.append(r.process(x[i:i + sizes[k % len(sizes)]]))
        i += sizes[k % len(sizes)]
        k += 1
    out.append(r.flush())
    return np.concatenate(out)


def level_db(y: np.ndarray, hz: float, rate: int) -> float:
    """Amplitude of the ``hz`` component of ``y`` in dB re 10000, from a Kaiser-windowed projection
    (side lobes far below -120 dB, so a strong tone elsewhere does not leak into the measurement)."""
    w = np.kaiser(len(y), 20.0)
    phasor = np.exp(-2j * np.pi * hz * np.arange(len(y)) / rate)
    amplitude = 2 * abs(np.sum(y * w * phasor)) / np.sum(w)
    return 20 * np.log10(amplitude / 10000.0 + 1e-12)


def steady(name: str, hz: float, seconds: float = 0.5) -> np.ndarray:
    """A -10 dBFS tone through the default engine's float core (what the transcoder encodes) in 20 ms
    frames, its first and last 50 ms cut. Float, not int16: a -90 dB alias is a third of an int16 step,
    and rounding would hide it."""
    r = resample.make(name)
    x = 10000.0 * np.sin(2 * np.pi * hz * np.arange(int(r.rate_in * seconds)) / r.rate_in)
    frame = r.rate_in * FRAME_MS // 1000
    y = np.concatenate([r.filter(x[i:i + frame]) for i in range(0, len(x), frame)])
    return y[r.rate_out // 20:-r.rate_out // 20]


# --- every engine: the interface's promises ----------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sizes", [[1], [7], [160], [161], [479], [480], [3, 500, 17, 1, 320],
                                   [160, 3000, 160]],  # 3000: past what a FIR keeps between chunks
                         ids=lambda s: "+".join(map(str, s)))
def test_chunk_boundaries_are_invisible(engine, name, sizes):
    x = noise(4801)
    expected = one_shot(name, engine, x)
    got = streamed(name, engine, x, sizes)
    assert len(got) == len(expected)
    if engine == "fir":  # exact sums (taps on a 2^-24 grid): not one bit may differ
        np.testing.assert_array_equal(got, expected)
    else:
        assert np.abs(got.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [0, 1, 2, 159, 160, 4800])
def test_output_length_is_ratio_times_input(engine, name, n):
    r = resample.make(name, engine)
    got = len(one_shot(name, engine, noise(n)))
    if engine == "fir":
        assert got == -(-n * r.rate_out // r.rate_in)  # one output per output instant inside the input
    else:
        assert abs(got - round(n * r.ratio)) <= 1


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", NAMES)
def test_a_1khz_tone_keeps_frequency_and_level(engine, name):
    r = resample.make(name, engine)
    x = tone(1000, r.rate_in, r.rate_in)  # one second
    y = one_shot(name, engine, x).astype(float)[r.rate_out // 10: -r.rate_out // 10]  # skip the edges
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * r.rate_out / len(y)
    assert abs(peak_hz - 1000) < 2
    level = 20 * np.log10(np.sqrt(np.mean(y ** 2)) / (10000 / np.sqrt(2)))
    assert abs(level) < 0.5


@pytest.mark.parametrize("engine", ENGINES)
def test_reset_leaves_no_tail_for_the_next_turn(engine):
    r = resample.down_24k_to_8k(engine)
    r.process(noise(2400))  # an interrupted turn
    r.reset()
    silence = np.concatenate([r.process(np.zeros(2400, np.int16)), r.flush()])
    assert not silence.any()


@pytest.mark.parametrize("engine", ENGINES)
def test_flush_starts_the_next_turn_clean(engine):
    x = noise(2400)
    r = resample.down_24k_to_8k(engine)
    first = np.concatenate([r.process(x), r.flush()])
    second = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", NAMES)
def test_silence_in_silence_out(engine, name):
    r = resample.make(name, engine)
    frame = r.rate_in * FRAME_MS // 1000
    out = [r.process(np.zeros(frame, np.int16)) for _ in range(10)] + [r.flush()]
    assert not np.concatenate(out).any()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", NAMES)
def test_full_scale_square_wave_clips_never_wraps(engine, name):
    r = resample.make(name, engine)
    period = r.rate_in // 100
    x = np.where((np.arange(r.rate_in) // (period // 2)) % 2 == 0, 32767, -32768).astype(np.int16)
    y = one_shot(name, engine, x).astype(int)
    # The filter overshoots full scale (Gibbs); those samples must saturate. A wrapped one would flip
    # sign in the middle of a plateau, where every neighbour is at the rail.
    assert y.max() == 32767 and y.min() == -32768
    at_rail = (np.abs(y[1:-1]) >= 32000) & (np.abs(y[:-2]) >= 32000) & (np.abs(y[2:]) >= 32000)
    same_sign = np.sign(y[1:-1]) == np.sign(y[:-2])
    assert np.all(same_sign[at_rail & (np.sign(y[:-2]) == np.sign(y[2:]))])


def test_the_setting_offers_every_engine():
    assert RESAMPLERS == ENGINES and RESAMPLERS[0] == resample.DEFAULT_ENGINE


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="unknown resampler engine 'soxr'"):
        resample.up_8k_to_16k("soxr")


# --- the default engine: the telephone-band targets ---------------------------------------------

PASSBAND = [300, 500, 1000, 2000, 3000, 3300, 3400]


@pytest.mark.parametrize("name", ["up_8k_to_16k", "down_24k_to_8k"])
@pytest.mark.parametrize("hz", PASSBAND)
def test_passband_is_flat_within_half_a_db(name, hz):
    y = steady(name, hz)
    assert abs(level_db(y, hz, resample.make(name).rate_out)) <= 0.5


@pytest.mark.parametrize("hz", [4600, 4645, 5000, 6000, 7000, 8800, 10000, 11000, 11900])
def test_down_rejects_what_would_alias_into_the_band_by_80_db(hz):
    y = steady("down_24k_to_8k", hz)
    alias = abs(hz - 8000 * round(hz / 8000))  # where it lands at 8 kHz
    assert level_db(y, alias, 8000) <= -80


@pytest.mark.parametrize("hz", PASSBAND)
def test_up_rejects_the_images_of_the_band_by_80_db(hz):
    y = steady("up_8k_to_16k", hz)
    assert level_db(y, 8000 - hz, 16000) <= -80


@pytest.mark.parametrize("name", NAMES)
def test_committed_taps_meet_the_band_targets_everywhere(name):
    d = resample.make(name).design
    rate = d.rate_in * d.up
    response = np.abs(np.fft.rfft(d.taps, 1 << 16)) / d.up
    hz = np.fft.rfftfreq(1 << 16, 1 / rate)
    edge_pass, edge_stop = (7000, 9000) if name == "up_16k_to_24k" else (3400, 4600)
    db = 20 * np.log10(response + 1e-300)
    assert np.abs(db[(hz >= 300) & (hz <= edge_pass)]).max() <= 0.1
    assert db[hz >= edge_stop].max() <= -88


@pytest.mark.parametrize("name", ["up_8k_to_16k", "down_24k_to_8k"])
def test_delay_is_under_3_ms_and_every_frame_gives_output(name):
    r = resample.make(name)
    frame = r.rate_in * FRAME_MS // 1000
    x = np.zeros(frame * 10, np.int16)
    x[frame * 5] = 16384  # an impulse in the middle of the sixth frame's first sample
    outs, withheld = [], []
    for i in range(0, len(x), frame):
        outs.append(r.process(x[i:i + frame]))
        consumed = i + frame
        withheld.append(consumed * r.rate_out // r.rate_in - sum(map(len, outs)))
    sizes = {len(o) for o in outs[1:]}
    assert sizes == {frame * r.rate_out // r.rate_in} and len(outs[0]) > 0  # steady, never empty
    y = np.concatenate(outs + [r.flush()]).astype(float)
    peak_at = np.argmax(np.abs(y)) / r.rate_out  # aligned output: the impulse stays where it was
    group_delay_ms = abs(peak_at - frame * 5 / r.rate_in) * 1000
    withheld_ms = max(withheld) / r.rate_out * 1000
    assert group_delay_ms + withheld_ms <= 3.0
    assert withheld_ms == r.design.delay / r.rate_out * 1000  # exactly the filter's group delay


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 479, 480, 4801])
def test_flush_returns_what_is_withheld(name, n):
    r = resample.make(name)
    given = len(r.process(noise(n)))
    tail = r.flush()
    total = -(-n * r.rate_out // r.rate_in)
    assert given + len(tail) == total
    if given:  # past the start, exactly the group delay is held back
        assert len(tail) == r.design.delay


@pytest.mark.parametrize("name", NAMES)
def test_float_outputs_fit_the_saturating_tables(name):
    d = resample.make(name).design
    assert 32768 * d.gain_bound() < g711.WIDE


@pytest.mark.parametrize("name", NAMES)
def test_many_calls_at_once_equal_each_call_alone(name):
    calls = [resample.make(name) for _ in range(5)]
    alone = [resample.make(name) for _ in range(5)]
    for k, (a, b) in enumerate(zip(calls, alone)):  # different histories, same phase
        warmup = noise(3 * (k + 1) * 160, seed=k)
        a.filter(warmup)
        b.filter(warmup)
    frames = np.stack([noise(480, seed=10 + k) for k in range(5)]).astype(float)
    y, skips = fir.filter_many(calls, frames)
    for k, b in enumerate(alone):
        np.testing.assert_array_equal(y[k, skips[k]:], b.filter(frames[k]))
