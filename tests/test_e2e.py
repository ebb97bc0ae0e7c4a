"""The whole call path under supervisord: softphone → gateway → transcoder → model_client → emulator
(the real google-genai SDK over TLS) → back, with the echo persona."""

import json

import numpy as np
import pytest

from common.g711 import decode_ulaw
from harness.stack import Stack, wait_for
from softphone.caller import place_call
from softphone.measure import best_lag_correlation
from softphone.speech import speech_like

pytestmark = pytest.mark.e2e


async def test_echo_call_round_trip(stack):
    speech = speech_like(1.5, seed=7)
    result = await place_call(stack.url, speech, realtime=True, listen_s=3.0, timeout_s=30)

    assert not result.protocol_errors, result.protocol_errors
    assert result.after_connect, "TwiML must say what happens after the stream (never leave the line open)"
    heard = decode_ulaw(result.heard).astype(np.float64)
    sent = decode_ulaw(result.sent[: len(speech)]).astype(np.float64)  # what µ-law carried
    lag, corr = best_lag_correlation(sent, heard)
    assert corr > 0.9, f"echo correlation {corr:.3f} at lag {lag / 8:.1f} ms"
    # The echo starts after the caller's speech ends and the emulator's VAD hears 300 ms of silence.
    assert len(speech) + 0.3 * 8000 <= lag < len(speech) + 2.0 * 8000
    assert result.marks_sent_back, "the turn's mark must come back"
    assert result.turn_latencies_s and result.turn_latencies_s[0] < 2.0

    # After hang-up no process holds anything for the call.
    def no_call_state():
        health = stack.health()
        return health["calls"] == 0 and all(p["load"] == 0 for p in health["peers"])
    wait_for(no_call_state, 10, "every stage to free the call", stack.log)


async def test_sigterm_drains_then_closes_the_stream_and_stops_cleanly(tmp_path):
    import asyncio
    import signal
    import urllib.error
    import urllib.request

    stack = Stack(tmp_path / "run", BRIDGE_DRAIN_S="2").start()
    try:
        call = asyncio.create_task(place_call(stack.url, speech_like(1.0, seed=3), listen_s=20, timeout_s=30))
        await asyncio.to_thread(wait_for, lambda: stack.health()["calls"] == 1, 10, "the call to start", stack.log)
        started = asyncio.get_running_loop().time()
        stack.proc.send_signal(signal.SIGTERM)

        def draining() -> bool:  # supervisord forwards the signal when it gets to it: poll, never sleep
            try:
                urllib.request.urlopen(stack.url + "/readyz", timeout=5)
                return False
            except urllib.error.HTTPError as e:
                return e.code == 503 and json.loads(e.read())["why"] == "draining"
        await asyncio.to_thread(wait_for, draining, 1.5, "/readyz to say draining", stack.log)
        # Draining: the live call goes on, new calls are refused politely.
        with urllib.request.urlopen(stack.url + "/twiml", data=b"CallSid=CA2", timeout=5) as r:
            assert "<Hangup" in r.read().decode()
        assert not call.done()
        result = await asyncio.wait_for(call, 15)
        assert result.closed_by == "server"
        assert 1.5 < asyncio.get_running_loop().time() - started < 6
    finally:
        assert stack.stop() == 0
    text = stack.log.read_text()
    assert "drain time over: ending 1 calls" in text and "Traceback" not in text
