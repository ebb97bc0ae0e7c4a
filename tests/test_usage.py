"""Token usage per call: the service's reports read as per-turn counts or running totals (tables), the
gateway's sums and cost, and a real call's usage in its transcript, its end line and /metrics."""

from __future__ import annotations

import json
import urllib.request

import pytest
from google.genai import types
from prometheus_client.parser import text_string_to_metric_families

from common import messages as m
from common.settings import SettingsError, load
from gateway.usage import CallUsage, closing_record, cost, summary
from harness.stack import Stack, wait_for
from model_client.usage import PCM24_BYTES_PER_S, AUDIO_TOKENS_PER_S, UsageMeter, counts
from softphone.caller import place_call
from softphone.speech import speech_like

AUDIO, TEXT = types.MediaModality.AUDIO, types.MediaModality.TEXT


def report(prompt: int, response: int, prompt_text: int = 0) -> types.UsageMetadata:
    details = [types.ModalityTokenCount(modality=AUDIO, token_count=prompt - prompt_text)]
    if prompt_text:
        details.append(types.ModalityTokenCount(modality=TEXT, token_count=prompt_text))
    return types.UsageMetadata(
        prompt_token_count=prompt, response_token_count=response, total_token_count=prompt + response,
        prompt_tokens_details=details,
        response_tokens_details=[types.ModalityTokenCount(modality=AUDIO, token_count=response)])


def seconds_of_audio(tokens: int) -> int:
    return round(tokens / AUDIO_TOKENS_PER_S * PCM24_BYTES_PER_S)


def test_one_report_by_direction_and_modality():
    assert counts(report(130, 40, prompt_text=10)) == {"input_audio": 120, "input_text": 10, "output_audio": 40}
    bare = types.UsageMetadata(prompt_token_count=50, response_token_count=20, total_token_count=70)
    assert counts(bare) == {"input_other": 50, "output_other": 20}
    vertex = types.UsageMetadata(prompt_token_count=50, total_token_count=70)  # no responseTokenCount
    assert counts(vertex) == {"input_other": 50, "output_other": 20}


# Each turn: (what the model said, in tokens of audio received; the report). Per turn, the prompt holds
# the whole conversation so far, so prompt and total grow either way: only the response count tells.
PER_TURN = [(40, report(100, 40)), (30, report(170, 30)), (50, report(250, 50))]
RUNNING = [(40, report(100, 40)), (30, report(270, 70)), (50, report(520, 120))]


@pytest.mark.parametrize("turns, expected, running", [
    (PER_TURN, {"input_audio": 520, "output_audio": 120}, False),
    (RUNNING, {"input_audio": 520, "output_audio": 120}, True),
    (PER_TURN[:1], {"input_audio": 100, "output_audio": 40}, False),
])
def test_per_turn_counts_and_running_totals_give_the_same_call(turns, expected, running):
    meter = UsageMeter()
    meter.connected()
    for said, usage in turns:
        meter.model_audio(seconds_of_audio(said))
        meter.report(usage, turn_complete=True)
    assert meter.totals() == expected and meter.running_totals == running


def test_reports_within_one_turn_count_once_and_connections_restart():
    meter = UsageMeter()
    meter.connected()
    meter.model_audio(seconds_of_audio(40))
    meter.report(report(100, 20), turn_complete=False)  # a report before the turn ends...
    meter.report(report(100, 40), turn_complete=True)  # ...replaced by the turn's own
    meter.connected()  # resumed: a new connection's reports start again
    meter.model_audio(seconds_of_audio(30))
    meter.report(report(180, 30), turn_complete=True)
    assert meter.totals() == {"input_audio": 280, "output_audio": 70}


def test_gateway_sums_sessions_and_prices_the_call():
    usage = CallUsage()
    assert usage.update(m.Usage("c1", "s1", {"input_audio": 100, "output_audio": 40}))
    assert usage.update(m.Usage("c1", "s1", {"input_audio": 300, "output_audio": 90}))  # replaces
    assert usage.update(m.Usage("c1", "s2", {"input_audio": 50, "input_text": 5}))  # another model_client
    for bad in ({"input_audio": -1}, {"sideways_audio": 1}, {"input_audio": 1.5}, {"input_audio": True}):
        assert not usage.update(m.Usage("c1", "s3", bad))
    tokens = usage.tokens()
    assert tokens == {"input_audio": 350, "input_text": 5, "output_audio": 90}
    prices = (("input_audio", 3.0), ("output_audio", 12.0))
    assert cost(tokens, prices) == pytest.approx((350 * 3 + 90 * 12) / 1e6) and cost(tokens, ()) is None
    assert closing_record(tokens, ()) == {"tokens": tokens}
    assert summary(tokens, prices) == "tokens in 350 audio + 5 text, out 90 audio, cost ~0.0021"
    assert summary({}, prices) == "no token usage reported"


@pytest.mark.parametrize("value", ['{"in_audio": 1}', '[1]', '{"input_audio": -1}', '{"input_audio": "1"}', "x"])
def test_a_bad_price_setting_names_the_variable(value):
    with pytest.raises(SettingsError, match="BRIDGE_PRICE_PER_MTOK"):
        load({"BRIDGE_PRICE_PER_MTOK": value})


@pytest.mark.e2e
async def test_a_calls_usage_in_its_transcript_end_line_and_metrics(tmp_path):
    stack = Stack(tmp_path / "run", GEMINI_SILENCE_MS="300",
                  BRIDGE_PRICE_PER_MTOK='{"input_audio": 3, "output_audio": 12}').start()
    try:
        result = await place_call(stack.url, speech_like(1.0, seed=2), listen_s=2.5, timeout_s=30)
        wait_for(lambda: stack.health()["calls"] == 0, 10, "the call to end", stack.log)
        path = stack.run_dir / "transcripts" / f"{result.call_sid}.jsonl"
        closing = json.loads(path.read_text().splitlines()[-1])
        with urllib.request.urlopen(stack.url + "/metrics", timeout=5) as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        log = stack.log.read_text()
    finally:
        assert stack.stop() == 0
    tokens = closing["tokens"]
    assert closing["role"] == "end" and tokens["input_audio"] > 0 and tokens["output_audio"] > 0
    assert closing["cost"] == pytest.approx((tokens["input_audio"] * 3 + tokens["output_audio"] * 12) / 1e6)
    assert f"out {tokens['output_audio']} audio" in log and "cost ~" in log
    samples = {(s.labels["direction"], s.labels["modality"]): s.value
               for s in families["bridge_model_tokens"].samples if s.name.endswith("_total")}
    assert samples[("output", "audio")] == tokens["output_audio"]
