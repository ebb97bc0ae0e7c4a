"""G.711 µ-law against the ITU-T G.191 reference (the `g711` package), every input, both directions."""

import g711 as reference
import numpy as np
import pytest

from common.g711 import ULAW_SILENCE, decode_ulaw, encode_ulaw, float_to_int16

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def test_decode_matches_the_reference_for_all_256_codes():
    expected = np.rint(np.asarray(reference.decode_ulaw(ALL_CODES)) * 32768).astype(np.int16)
    np.testing.assert_array_equal(decode_ulaw(ALL_CODES), expected)


def test_encode_matches_the_reference_for_all_65536_samples():
    expected = reference.encode_ulaw(ALL_SAMPLES.astype(np.float32) / 32768)
    ours = encode_ulaw(ALL_SAMPLES)
    mismatches = np.count_nonzero(np.frombuffer(ours, np.uint8) != np.frombuffer(expected, np.uint8))
    assert mismatches == 0


@pytest.mark.parametrize("sample, code", [
    (0, 0xFF), (-1, 0x7F), (1, 0xFF), (32767, 0x80), (-32768, 0x00), (32124, 0x80), (-32124, 0x00),
    # Worked by hand from G.191: 100 → (100 >> 2) + 33 = 58, segment 1, low nibble 15 - 13 → 0xF2.
    # Negatives use one's complement ((~x) >> 2), so -100 lands one step away: 0x73 (audioop says 0x72).
    (100, 0xF2), (-100, 0x73), (8000, 0xA0), (-8000, 0x20),
])
def test_encode_table_rows(sample, code):
    assert encode_ulaw(np.array([sample], np.int16)) == bytes([code])


@pytest.mark.parametrize("code, sample", [
    (0x00, -32124), (0x80, 32124), (0xFF, 0), (0x7F, 0), (0xF2, 104), (0x72, -104), (0x9E, 8828),
])
def test_decode_table_rows(code, sample):
    assert decode_ulaw(bytes([code]))[0] == sample


def test_every_code_survives_decode_then_encode():
    # 0x7F (-0) decodes to 0, which encodes as +0 (0xFF); every other code maps to itself.
    again = np.frombuffer(encode_ulaw(decode_ulaw(ALL_CODES)), np.uint8)
    expected = np.arange(256)
    expected[0x7F] = 0xFF
    np.testing.assert_array_equal(again, expected)


def test_silence_code_decodes_to_zero():
    assert decode_ulaw(bytes([ULAW_SILENCE]))[0] == 0


def test_empty_input():
    assert encode_ulaw(np.zeros(0, np.int16)) == b"" and len(decode_ulaw(b"")) == 0


@pytest.mark.parametrize("value, expected", [
    (1e9, 32767), (-1e9, -32768), (32767.4, 32767), (32767.6, 32767), (-32768.6, -32768),
    (0.4, 0), (-0.6, -1), (40000.0, 32767), (-40000.0, -32768),
])
def test_float_to_int16_clips_never_wraps(value, expected):
    assert float_to_int16(np.array([value]))[0] == expected
