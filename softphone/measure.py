"""Where the caller's speech came back in what it heard (pure): the echo persona's replies, measured
the same way by the tests and the benches."""

from __future__ import annotations

import numpy as np

from common.g711 import decode_ulaw
from softphone.result import CallResult
from softphone.stream import FRAME


def best_lag_correlation(sent: np.ndarray, heard: np.ndarray) -> tuple[int, float]:
    """The lag at which ``sent`` appears in ``heard``, and the normalised correlation there; (0, 0.0)
    when ``heard`` is shorter than ``sent``."""
    n = len(sent)
    if len(heard) < n:
        return 0, 0.0
    size = len(heard) + n
    xcorr = np.fft.irfft(np.fft.rfft(heard, size) * np.conj(np.fft.rfft(sent, size)), size)
    lag = int(np.argmax(xcorr[: len(heard) - n + 1]))
    window = heard[lag:lag + n]
    return lag, float(np.dot(window, sent) / (np.linalg.norm(window) * np.linalg.norm(sent) + 1e-9))


def echo_loss(speech: np.ndarray, result: CallResult) -> tuple[float, list[int], int]:
    """(echo correlation, the speech frames lost, speech frames) for one echo-persona call: a frame
    is lost when its echo is near silence (below a tenth of its level) where the caller spoke."""
    sent = decode_ulaw(result.sent[:len(speech)]).astype(np.float64)
    heard = decode_ulaw(result.heard).astype(np.float64)
    lag, corr = best_lag_correlation(sent, heard)
    frames, lost = len(sent) // FRAME, []
    for k in range(frames):
        said = sent[FRAME * k:FRAME * (k + 1)]
        got = heard[lag + FRAME * k:lag + FRAME * (k + 1)]
        level = float(np.sqrt(np.mean(said ** 2)))
        if level > 300 and (len(got) < FRAME or float(np.sqrt(np.mean(got ** 2))) < 0.1 * level):
            lost.append(k)
    return corr, lost, frames
