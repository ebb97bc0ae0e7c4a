"""Media Streams messages as Twilio writes them, and Twilio's checks on what a server sends back.

Pure: no sockets. Field order, string-typed numbers and the standard base64 alphabet follow
Twilio's examples exactly, because a bridge must cope with precisely that shape:
https://www.twilio.com/docs/voice/media-streams/websocket-messages
"""

from __future__ import annotations

import base64
import binascii
import json

# What a server may send, with exactly these members; anything else is Twilio warning 31951.
SERVER_EVENTS = {"media": {"event", "streamSid", "media"}, "mark": {"event", "streamSid", "mark"},
                 "clear": {"event", "streamSid"}}


class Violation(Exception):
    """A message Twilio would refuse: ``code`` is the Twilio warning (31950 binary, 31951 invalid)."""

    def __init__(self, code: int, detail: str):
        super().__init__(f"{code} {detail}")
        self.code = code


def connected() -> dict:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start(seq: int, account_sid: str, stream_sid: str, call_sid: str, parameters: dict[str, str]) -> dict:
    return {"event": "start", "sequenceNumber": str(seq),
            "start": {"accountSid": account_sid, "streamSid": stream_sid, "callSid": call_sid,
                      "tracks": ["inbound"],
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                      "customParameters": dict(parameters)},
            "streamSid": stream_sid}


def media(seq: int, stream_sid: str, chunk: int, timestamp_ms: int, payload: bytes) -> dict:
    return {"event": "media", "sequenceNumber": str(seq),
            "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(timestamp_ms),
                      "payload": base64.b64encode(payload).decode("ascii")},
            "streamSid": stream_sid}


def dtmf(seq: int, stream_sid: str, digit: str) -> dict:
    return {"event": "dtmf", "streamSid": stream_sid, "sequenceNumber": str(seq),
            "dtmf": {"track": "inbound_track", "digit": digit}}


def mark(seq: int, stream_sid: str, name: str) -> dict:
    return {"event": "mark", "sequenceNumber": str(seq), "streamSid": stream_sid, "mark": {"name": name}}


def stop(seq: int, stream_sid: str, account_sid: str, call_sid: str) -> dict:
    return {"event": "stop", "sequenceNumber": str(seq),
            "stop": {"accountSid": account_sid, "callSid": call_sid}, "streamSid": stream_sid}


def parse_server_text(text: str, stream_sid: str) -> tuple[str, bytes | str | None]:
    """One text frame from the server → ``("media", µ-law bytes)``, ``("mark", name)`` or
    ``("clear", None)``; raises ``Violation`` for anything Twilio would warn about and ignore."""
    try:
        message = json.loads(text)
    except ValueError:
        raise Violation(31951, f"not JSON: {text[:80]!r}") from None
    if not isinstance(message, dict) or message.get("event") not in SERVER_EVENTS:
        event = message.get("event") if isinstance(message, dict) else type(message).__name__
        raise Violation(31951, f"unknown event {event!r}")
    event = message["event"]
    _exact_members(message, SERVER_EVENTS[event], event)
    if message["streamSid"] != stream_sid:
        raise Violation(31951, f"{event} has streamSid {message['streamSid']!r}, not {stream_sid!r}")
    if event == "media":
        return event, _payload(message["media"])
    if event == "mark":
        return event, _mark_name(message["mark"])
    return event, None


def _exact_members(obj: dict, expected: set[str], where: str) -> None:
    extra, missing = set(obj) - expected, expected - set(obj)
    if extra or missing:
        raise Violation(31951, f"{where}: extra fields {sorted(extra)}, missing {sorted(missing)}")


def _payload(media: object) -> bytes:
    if not isinstance(media, dict):
        raise Violation(31951, "media.media is not an object")
    _exact_members(media, {"payload"}, "media.media")  # no track/chunk/timestamp outbound
    if not isinstance(media["payload"], str):
        raise Violation(31951, "media.payload is not a string")
    try:
        return base64.b64decode(media["payload"], validate=True)  # standard alphabet, padded
    except (binascii.Error, ValueError):
        raise Violation(31951, f"media.payload is not standard base64: {media['payload'][:40]!r}") from None


def _mark_name(body: object) -> str:
    # A mark needs a ``mark`` object with a string ``name`` and nothing else.
    if not isinstance(body, dict):
        raise Violation(31951, "mark.mark is not an object")
    _exact_members(body, {"name"}, "mark.mark")
    if not isinstance(body["name"], str):
        raise Violation(31951, "mark.name is not a string")
    return body["name"]
