"""Streaming resamplers, tested the way python-soxr tests its stream: chunked == one-shot."""

import numpy as np
import pytest

from transcoder import resample

FACTORIES = [resample.up_8k_to_16k, resample.down_24k_to_8k, resample.up_16k_to_24k]


def noise(n: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 6000).clip(-32768, 32767).astype(np.int16)


def one_shot(factory, x):
    r = factory()
    return np.concatenate([r.process(x), r.flush()])


def streamed(factory, x, sizes):
    r, out, i, k = factory(), [], 0, 0
    while i < len(x):
        out.append(r.process(x[i:i + sizes[k % len(sizes)]]))
        i += sizes[k % len(sizes)]
        k += 1
    out.append(r.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("sizes", [[1], [7], [160], [161], [480], [3, 500, 17, 1, 320]],
                         ids=lambda s: "+".join(map(str, s)))
def test_chunk_boundaries_are_invisible(factory, sizes):
    x = noise(4801)
    expected = one_shot(factory, x)
    got = streamed(factory, x, sizes)
    assert len(got) == len(expected)
    assert np.abs(got.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("n", [0, 1, 2, 159, 160, 4800])
def test_output_length_is_ratio_times_input(factory, n):
    r = factory()
    assert abs(len(one_shot(factory, noise(n))) - round(n * r.ratio)) <= 1


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_a_1khz_tone_keeps_frequency_and_level(factory):
    r = factory()
    n = r.rate_in  # one second
    x = (np.sin(2 * np.pi * 1000 * np.arange(n) / r.rate_in) * 10000).astype(np.int16)
    y = one_shot(factory, x).astype(float)[r.rate_out // 10: -r.rate_out // 10]  # skip the edges
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * r.rate_out / len(y)
    assert abs(peak_hz - 1000) < 2
    level_db = 20 * np.log10(np.sqrt(np.mean(y ** 2)) / (10000 / np.sqrt(2)))
    assert abs(level_db) < 0.5


def test_reset_leaves_no_tail_for_the_next_turn():
    r = resample.down_24k_to_8k()
    r.process(noise(2400))  # an interrupted turn
    r.reset()
    silence = np.concatenate([r.process(np.zeros(2400, np.int16)), r.flush()])
    assert not silence.any()


def test_flush_starts_the_next_turn_clean():
    x = noise(2400)
    r = resample.down_24k_to_8k()
    first = np.concatenate([r.process(x), r.flush()])
    second = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_full_scale_square_wave_clips_never_wraps(factory):
    r = factory()
    period = r.rate_in // 100
    x = np.where((np.arange(r.rate_in) // (period // 2)) % 2 == 0, 32767, -32768).astype(np.int16)
    y = one_shot(factory, x).astype(int)
    # The filter overshoots full scale (Gibbs); those samples must saturate. A wrapped one would flip
    # sign in the middle of a plateau, where every neighbour is at the rail.
    assert y.max() == 32767 and y.min() == -32768
    at_rail = (np.abs(y[1:-1]) >= 32000) & (np.abs(y[:-2]) >= 32000) & (np.abs(y[2:]) >= 32000)
    same_sign = np.sign(y[1:-1]) == np.sign(y[:-2])
    assert np.all(same_sign[at_rail & (np.sign(y[:-2]) == np.sign(y[2:]))])
