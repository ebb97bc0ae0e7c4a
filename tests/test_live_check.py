"""``make live-check`` without credentials: the scripted call against the emulator, once per model
generation, every step passing (session, reply, barge-in, tool, resumption by handle, end_call)."""

import pytest

from bench import live_check
from bench.live_check import PROFILES, Plan, Step, advice, table
from common import messages as m

pytestmark = pytest.mark.e2e


async def test_every_profile_passes_against_the_emulator(tmp_path):
    ok, text = await live_check.run(list(PROFILES), real=False, out_dir=tmp_path)
    assert ok, text
    for model in PROFILES:
        assert f"live check: {model} on the emulator" in text
    assert text.count("pass") == 6 * len(PROFILES)


async def test_a_refused_key_fails_the_first_step_with_what_to_do(tmp_path):
    steps = await live_check.check("gemini-3.8-live", tmp_path / "run", real=False,
                                   extra_env={"EMULATOR_REFUSE_KEY": "true"})
    assert [(s.name, s.ok) for s in steps] == [("session opens", False)]
    assert "check GEMINI_API_KEY" in steps[0].detail and "API key not valid" in steps[0].detail


def test_failures_say_what_to_do():
    assert "GEMINI_API_KEY" in advice(m.BACKEND_KEY_REFUSED, "1008 API key not valid", "gemini-3.8-live")
    for state in (m.BACKEND_SETUP_REFUSED, m.BACKEND_KEY_REFUSED):
        assert "set GEMINI_MODEL" in advice(state, "1008 models/x is not found for API version v1beta", "x")
    assert "GOOGLE_CLOUD_LOCATION" in advice(m.BACKEND_UNREACHABLE, "ConnectionRefusedError", "gemini-3.8-live")
    text = table("m", "the real service", [Step("session opens", False, None, "refused")])
    assert "FAIL" in text and "—" in text


def test_the_script_fits_together():
    plan = Plan()
    assert plan.said[1] < plan.long[0] < plan.over[0] < plan.long[1] + 1 < plan.kill_s < plan.after[0]
    assert plan.after[1] < plan.dtmf_s < plan.after[1] + plan.listen_s
    assert len(plan.audio()) == round(plan.after[1] * 8000)
