"""The whole call path under supervisord: softphone → gateway → transcoder → model_client → emulator
(the real google-genai SDK over TLS) → back, with the echo persona."""

import numpy as np
import pytest

from softphone.caller import place_call
from softphone.speech import speech_like
from tests.conftest import wait_for
from transcoder.g711 import decode_ulaw

pytestmark = pytest.mark.e2e


def best_lag_correlation(sent: np.ndarray, heard: np.ndarray) -> tuple[int, float]:
    """The lag at which ``sent`` appears in ``heard``, and the normalised correlation there."""
    n = len(sent)
    spectrum = np.fft.rfft(heard, len(heard) + n) * np.conj(np.fft.rfft(sent, len(heard) + n))
    xcorr = np.fft.irfft(spectrum)[: len(heard) - n + 1]
    lag = int(np.argmax(xcorr))
    window = heard[lag:lag + n]
    corr = float(np.dot(window, sent) / (np.linalg.norm(window) * np.linalg.norm(sent) + 1e-9))
    return lag, corr


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


async def test_sigterm_mid_call_closes_the_stream_and_stops_cleanly(stack):
    import asyncio
    import signal

    call = asyncio.create_task(place_call(stack.url, speech_like(1.0, seed=3), listen_s=20, timeout_s=30))
    await asyncio.to_thread(wait_for, lambda: stack.health()["calls"] == 1, 10, "the call to start", stack.log)
    started = asyncio.get_running_loop().time()
    stack.proc.send_signal(signal.SIGTERM)
    result = await asyncio.wait_for(call, 15)
    assert result.closed_by == "server"
    assert asyncio.get_running_loop().time() - started < 5
    # The fixture then checks supervisord exits 0 and every stage logged a clean stop.
