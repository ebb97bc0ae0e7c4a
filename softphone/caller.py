"""A phone call placed the way Twilio places it: webhook, then a bidirectional Media Stream.

The softphone is the fake at the edge we cannot reach, so it follows the reference literally: frames and
field shapes as documented, sequence numbers on everything Twilio sends, a playback queue that echoes
marks when their audio has played (or been cleared), and Twilio's complaints about bad server messages.
The stream itself (clock, sender, receiver) is ``softphone.stream``; the playback queue is
``softphone.playback``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
import numpy as np

from softphone.playback import RATE
from softphone.result import CallResult, EchoedMark
from softphone.stream import FRAME, FRAME_S, SILENT_FRAME, MediaStream
from softphone.webhook import CallError, fetch_twiml, new_sid, voice_params
from transcoder.g711 import ULAW_SILENCE, encode_ulaw

__all__ = ["CallError", "CallResult", "EchoedMark", "place_call"]

DTMF_DIGITS = set("0123456789*#")  # what a dtmf event can carry (§2)


async def place_call(base_url: str, audio: np.ndarray, *, realtime: bool = True, listen_s: float = 3.0,
                     auth_token: str | None = None, call_sid: str | None = None,
                     dtmf: Sequence[tuple[float, str]] = (), hangup: bool = True,
                     timeout_s: float = 60) -> CallResult:
    """Ring ``{base_url}/twiml``, stream ``audio`` (int16, 8 kHz) then ``listen_s`` of silence, and
    record what the caller heard. Raises ``CallError`` (with ``.result`` when the stream started)."""
    frames, speech_frames = _frames(audio, listen_s)
    schedule = _dtmf_schedule(dtmf, len(frames) if hangup else None)
    call_sid, account_sid = call_sid or new_sid("CA"), new_sid("AC")
    stream: MediaStream | None = None
    async with aiohttp.ClientSession() as session:
        try:
            async with asyncio.timeout(timeout_s):
                twiml = await fetch_twiml(session, base_url.rstrip("/") + "/twiml",
                                          voice_params(call_sid, account_sid), auth_token)
                stream = MediaStream(twiml, call_sid, account_sid, frames, speech_frames, schedule,
                                     realtime=realtime, hangup=hangup)
                await stream.run(session, auth_token)
        except TimeoutError:
            raise CallError(f"call did not finish within timeout_s={timeout_s}",
                            stream.result() if stream else None) from None
    return stream.result()


def _frames(audio: np.ndarray, listen_s: float) -> tuple[list[bytes], int]:
    """The caller's audio as 20 ms µ-law frames (last one padded with silence), then ``listen_s`` of
    silence frames, because Twilio keeps streaming while nobody speaks."""
    audio = np.asarray(audio)
    if audio.ndim != 1 or audio.dtype != np.int16:
        raise ValueError(f"audio must be 1-D int16 at 8 kHz, got {audio.dtype} shape {audio.shape}")
    ulaw = encode_ulaw(audio)
    ulaw += bytes([ULAW_SILENCE]) * (-len(ulaw) % FRAME)
    speech = [ulaw[i:i + FRAME] for i in range(0, len(ulaw), FRAME)]
    return speech + [SILENT_FRAME] * round(listen_s / FRAME_S), len(speech)


def _dtmf_schedule(dtmf: Sequence[tuple[float, str]], frames: int | None) -> list[tuple[int, str]]:
    """DTMF events as (sample, digit), checked up front: a digit Twilio cannot report, or one due after
    the caller hangs up, is a mistake in the test, not something to drop silently."""
    schedule = []
    for t, digit in dtmf:
        if digit not in DTMF_DIGITS:
            raise ValueError(f"dtmf digit must be one of 0-9 * #, got {digit!r}")
        sample = round(t * RATE)
        if sample < 0 or (frames is not None and sample > frames * FRAME):
            raise ValueError(f"dtmf at {t} s is outside the call (0–{(frames or 0) * FRAME_S:.2f} s)")
        schedule.append((sample, digit))
    return sorted(schedule)
