"""A phone call placed the way Twilio places it: webhook, then a bidirectional Media Stream.

The softphone is the fake at the edge we cannot reach, so it follows Twilio's docs literally: frames and
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

from common.g711 import ULAW_SILENCE, encode_ulaw
from softphone.playback import RATE
from softphone.result import CallResult, EchoedMark
from softphone.stream import FRAME, FRAME_S, SILENT_FRAME, MediaStream
from softphone.webhook import CallError, fetch_twiml, new_sid, voice_params

__all__ = ["CallError", "CallResult", "EchoedMark", "place_call"]

DTMF_DIGITS = set("0123456789*#")  # what a dtmf event can carry


async def place_call(base_url: str, audio: np.ndarray, *, realtime: bool = True, listen_s: float = 3.0,
                     auth_token: str | None = None, call_sid: str | None = None,
                     dtmf: Sequence[tuple[float, str]] = (), hangup: bool = True,
                     follow_redirect: bool = False, timeout_s: float = 60,
                     pauses: Sequence[tuple[float, float]] = ()) -> CallResult:
    """Ring ``{base_url}/twiml``, stream ``audio`` (int16, 8 kHz) then ``listen_s`` of silence, and
    record what the caller heard. Raises ``CallError`` (with ``.result`` when the stream started).

    ``follow_redirect``: when the server ends the stream, do what Twilio does with a ``<Redirect>``
    after ``</Connect>``: POST it and, if the answer is another stream, go on talking on it. The caller
    keeps talking meanwhile; what they say while no stream is up is lost, as on a real line.

    ``pauses``: (start, seconds) on the call clock when Twilio sends no media at all (network
    trouble), though the stream stays up; the caller's audio of those spans is lost."""
    frames, speech_frames = _frames(audio, listen_s)
    schedule = _dtmf_schedule(dtmf, len(frames) if hangup else None)
    call_sid, account_sid = call_sid or new_sid("CA"), new_sid("AC")
    legs: list[tuple[int, MediaStream]] = []  # (first frame on the call clock, its stream)
    async with aiohttp.ClientSession() as session:
        try:
            async with asyncio.timeout(timeout_s):
                twiml = await fetch_twiml(session, base_url.rstrip("/") + "/twiml",
                                          voice_params(call_sid, account_sid), auth_token)
                loop, began, offset = asyncio.get_running_loop(), 0.0, 0
                while True:
                    stream = MediaStream(twiml, call_sid, account_sid, frames[offset:],
                                         max(0, speech_frames - offset), _shifted(schedule, offset),
                                         realtime=realtime, hangup=hangup,
                                         pauses=[(t - offset * FRAME_S, d) for t, d in pauses])
                    legs.append((offset, stream))
                    await stream.run(session, auth_token)
                    began = began or stream.t0
                    if not (follow_redirect and stream.closed_by == "server" and twiml.redirect):
                        break
                    twiml = await _redirect(session, twiml.redirect, call_sid, account_sid, auth_token)
                    offset = (round((loop.time() - began) / FRAME_S) if realtime
                              else offset + len(stream.sent) // FRAME)
                    if twiml is None or offset >= len(frames):
                        break  # the call ended there (<Hangup>, <Dial>…), or the caller is done
        except TimeoutError:
            raise CallError(f"call did not finish within timeout_s={timeout_s}",
                            _merge(legs) if legs else None) from None
    return _merge(legs)


async def _redirect(session: aiohttp.ClientSession, url: str, call_sid: str, account_sid: str,
                    auth_token: str | None):
    """Twilio's POST to the <Redirect> URL; the next stream's TwiML, or None if it has no stream."""
    params = {**voice_params(call_sid, account_sid), "CallStatus": "in-progress"}
    try:
        return await fetch_twiml(session, url, params, auth_token)
    except CallError as e:
        if "has no <Response><Connect><Stream" in str(e):
            return None
        raise


def _shifted(schedule: list[tuple[int, str]], offset: int) -> list[tuple[int, str]]:
    return [(sample - offset * FRAME, digit) for sample, digit in schedule if sample >= offset * FRAME]


def _merge(legs: list[tuple[int, MediaStream]]) -> CallResult:
    """One result on one call clock: each stream's audio at its place, silence where none was up."""
    if len(legs) == 1:
        return legs[0][1].result()
    merged = None
    for offset, stream in legs:
        leg, at = stream.result(), offset * FRAME
        if merged is None:
            merged = leg
            merged.streams = 1
            continue
        merged.stream_gaps_s.append(max(0, at - len(merged.sent)) / RATE)
        gap = bytes([ULAW_SILENCE]) * max(0, at - len(merged.sent))
        merged.sent = merged.sent[:at] + gap + leg.sent
        merged.heard = merged.heard[:at] + gap + leg.heard
        merged.received += leg.received
        shift = at / RATE
        merged.marks_sent_back += [EchoedMark(e.name, e.t_s + shift, e.flushed) for e in leg.marks_sent_back]
        merged.clears += [t + shift for t in leg.clears]
        merged.clears_ns += leg.clears_ns
        merged.dtmf_sent += [(t + shift, d) for t, d in leg.dtmf_sent]
        merged.protocol_errors += leg.protocol_errors
        merged.reply_starts_s += [t + shift for t in leg.reply_starts_s]
        merged.turn_latencies_s += leg.turn_latencies_s
        merged.underruns += leg.underruns
        merged.reply_heard_s += leg.reply_heard_s
        merged.closed_by, merged.streams = leg.closed_by, merged.streams + 1
        merged.stream_sid, merged.twiml = leg.stream_sid, leg.twiml
    return merged


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
