"""Twilio Media Streams JSON <-> our values. Pure: no sockets, no I/O, no logging.

``parse_event`` turns one text frame from Twilio into one of six frozen event types, or raises
``TwilioProtocolError`` whose ``reason`` is short and safe to log (it never holds the whole frame).
The builders make the only three messages we may send (docs/architecture.md#twilio) with exactly
the documented fields: an extra field such as ``track`` or ``chunk`` draws warning 31951.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Callable

DEFAULT_MAX_PAYLOAD_BYTES = 16000  # 2 s of µ-law; real frames are ~160 bytes, but no size is documented
DTMF_DIGITS = frozenset("0123456789*#ABCD")
_CLIP = 40  # characters of an offending value kept in a reason
_MAX_DIGITS = 18  # sequence numbers, chunks and ms timestamps stay far below this
_COMPACT = (",", ":")


class TwilioProtocolError(ValueError):
    """A frame from Twilio that does not follow the protocol. ``reason`` is short and loggable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str]
    media_format: dict[str, Any]
    tracks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: str
    chunk: int
    timestamp_ms: int
    payload: bytes  # raw µ-law, 8 kHz mono
    track: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str
    call_sid: str


TwilioEvent = Connected | Start | Media | Dtmf | Mark | Stop


def _clip(value: object) -> str:
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__}>"  # never repr a whole (possibly huge or deep) structure
    text = repr(value[:_CLIP + 1] if isinstance(value, str) else value)
    return text if len(text) <= _CLIP else text[:_CLIP] + "..."


def _get(obj: dict, key: str, where: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise TwilioProtocolError(f"missing {where}{key}") from None


def _typed(obj: dict, key: str, where: str, kind: type) -> Any:
    value = _get(obj, key, where)
    if type(value) is not kind:  # `is`, so that true/false never pass for a number
        noun = "an object" if kind is dict else f"a {'string' if kind is str else kind.__name__}"
        raise TwilioProtocolError(f"{where}{key} must be {noun}, got {type(value).__name__}")
    return value


def _uint(obj: dict, key: str, where: str) -> int:
    # Twilio sends sequenceNumber, chunk and timestamp as JSON strings; accept ints as well.
    value = _get(obj, key, where)
    if type(value) is int:
        if value >= 0:
            return value
    elif type(value) is str:
        # isascii() rules out int()'s leniency: "٣", " 3", "+3" and "1_000" are not Twilio's digits.
        if value.isascii() and value.isdigit() and len(value) <= _MAX_DIGITS:
            return int(value)
    else:
        raise TwilioProtocolError(f"{where}{key} must be an integer string, got {type(value).__name__}")
    raise TwilioProtocolError(f"{where}{key} not a non-negative integer: {_clip(value)}")


def _payload(media: dict, limit: int) -> bytes:
    text = _typed(media, "payload", "media.", str)
    if len(text) > 4 * -(-limit // 3):  # rejected before decoding, so a huge frame costs no more work
        raise TwilioProtocolError(f"media.payload too large: {len(text)} base64 chars")
    try:
        data = base64.b64decode(text, validate=True)  # standard alphabet with padding, as Twilio sends
    except ValueError:  # binascii.Error, or a str that is not ASCII
        raise TwilioProtocolError(f"media.payload not base64: {_clip(text)}") from None
    if len(data) > limit:
        raise TwilioProtocolError(f"media.payload too large: {len(data)} bytes")
    return data


def _media(msg: dict, limit: int) -> Media:
    media = _typed(msg, "media", "", dict)
    return Media(_typed(msg, "streamSid", "", str), _uint(media, "chunk", "media."),
                 _uint(media, "timestamp", "media."), _payload(media, limit),
                 _typed(media, "track", "media.", str))


def _start(msg: dict, _limit: int) -> Start:
    start = _typed(msg, "start", "", dict)
    sid = _typed(start, "streamSid", "start.", str)
    if msg.get("streamSid", sid) != sid:
        raise TwilioProtocolError("start.streamSid differs from streamSid")
    fmt = _typed(start, "mediaFormat", "start.", dict)
    shape = (fmt.get("encoding"), fmt.get("sampleRate"), fmt.get("channels"))
    if shape != ("audio/x-mulaw", 8000, 1):
        got = ", ".join(map(_clip, shape))
        raise TwilioProtocolError(f"start.mediaFormat not mu-law 8000 Hz mono: {got}")
    params = start.get("customParameters", {})  # absent means no <Parameter>s
    if type(params) is not dict or not all(type(v) is str for v in params.values()):
        raise TwilioProtocolError("start.customParameters must map names to strings")
    tracks = _typed(start, "tracks", "start.", list)
    if not all(type(t) is str for t in tracks):
        raise TwilioProtocolError("start.tracks must be a list of strings")
    return Start(sid, _typed(start, "callSid", "start.", str), _typed(start, "accountSid", "start.", str),
                 dict(params), dict(fmt), tuple(tracks))


def _dtmf(msg: dict, _limit: int) -> Dtmf:
    digit = _typed(_typed(msg, "dtmf", "", dict), "digit", "dtmf.", str)
    if digit not in DTMF_DIGITS:
        raise TwilioProtocolError(f"dtmf.digit not one of 0-9*#A-D: {_clip(digit)}")
    return Dtmf(_typed(msg, "streamSid", "", str), digit)


def _connected(msg: dict, _limit: int) -> Connected:
    return Connected(_typed(msg, "protocol", "", str), _typed(msg, "version", "", str))


def _mark(msg: dict, _limit: int) -> Mark:
    name = _typed(_typed(msg, "mark", "", dict), "name", "mark.", str)
    return Mark(_typed(msg, "streamSid", "", str), name)


def _stop(msg: dict, _limit: int) -> Stop:
    call_sid = _typed(_typed(msg, "stop", "", dict), "callSid", "stop.", str)
    return Stop(_typed(msg, "streamSid", "", str), call_sid)


# Closed set: only what Twilio sends. `clear` is ours to send, never to receive.
_PARSERS: dict[str, Callable[[dict, int], TwilioEvent]] = {
    "media": _media, "mark": _mark, "dtmf": _dtmf, "start": _start, "stop": _stop, "connected": _connected,
}


def parse_event(text: str | bytes, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> TwilioEvent:
    """Parse one frame from Twilio, or raise TwilioProtocolError."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = text.decode("utf-8")  # strict: json.loads alone would also guess UTF-16/32
        except UnicodeDecodeError:
            raise TwilioProtocolError("frame is not UTF-8") from None
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
        raise TwilioProtocolError(f"not JSON: {_clip(text)}") from None
    if type(msg) is not dict:
        raise TwilioProtocolError(f"not a JSON object: got {type(msg).__name__}")
    parser = _PARSERS.get(_typed(msg, "event", "", str))
    if parser is None:
        raise TwilioProtocolError(f"unknown event: {_clip(msg['event'])}")
    return parser(msg, max_payload_bytes)


def _sid(stream_sid: str) -> str:
    if not isinstance(stream_sid, str) or not stream_sid:
        raise ValueError("a message to Twilio needs the streamSid from start")
    return stream_sid


def media_message(stream_sid: str, ulaw: bytes) -> str:
    """Outbound audio: headerless µ-law 8 kHz. Only event, streamSid and media.payload."""
    if not ulaw:
        raise ValueError("media_message needs at least one byte of audio")
    # Formatted by hand: base64 never needs JSON escaping, and json.dumps would scan the whole payload.
    sid, payload = json.dumps(_sid(stream_sid)), base64.b64encode(ulaw).decode("ascii")
    return '{"event":"media","streamSid":' + sid + ',"media":{"payload":"' + payload + '"}}'


def mark_message(stream_sid: str, name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("a mark needs a non-empty name")
    return json.dumps({"event": "mark", "streamSid": _sid(stream_sid), "mark": {"name": name}},
                      separators=_COMPACT)


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": _sid(stream_sid)}, separators=_COMPACT)
