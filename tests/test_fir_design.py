"""The committed FIR taps are exactly what the design script makes (scipy is a test extra only)."""

from common import fir_design


def test_committed_taps_are_reproduced_by_the_design():
    assert fir_design.TAPS_MODULE.read_text() == fir_design.render()


def test_each_delay_is_a_whole_number_of_output_samples():
    for spec in fir_design.SPECS:
        assert spec.taps % 2 == 1 and (spec.taps - 1) // 2 % spec.down == 0
