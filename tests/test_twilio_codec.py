"""gateway.twilio_codec against the example messages of Twilio's Media Streams documentation."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from gateway import twilio_codec as tw
from gateway.twilio_codec import Connected, Dtmf, Mark, Media, Start, Stop, TwilioProtocolError

SID = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
CALL = "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
ACCOUNT = "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
ULAW_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}

# Twilio's example, verbatim, except that the media payload "no+JhoaJjpzS..." is shortened in the docs; its
# first 12 characters are complete base64 (9 bytes), so that is what we send.
CONNECTED = '{"event": "connected", "protocol": "Call", "version": "1.0.0"}'
START = """{
  "event": "start",
  "sequenceNumber": "1",
  "start": {
    "accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "tracks": ["inbound"],
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    "customParameters": {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}
  },
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
}"""
MEDIA = """{"event": "media", "sequenceNumber": "4",
 "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "no+JhoaJjpzS"},
 "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"}"""
DTMF = """{"event": "dtmf", "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "sequenceNumber": "5",
 "dtmf": {"track": "inbound_track", "digit": "1"}}"""
MARK = """{"event": "mark", "sequenceNumber": "4", "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
 "mark": {"name": "my label"}}"""
STOP = """{"event": "stop", "sequenceNumber": "5",
 "stop": {"accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"},
 "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"}"""

NINE_BYTES = bytes([0x9E, 0x8F, 0x89, 0x86, 0x86, 0x89, 0x8E, 0x9C, 0xD2])

REFERENCE_EXAMPLES = [
    pytest.param(CONNECTED, Connected("Call", "1.0.0"), id="connected"),
    pytest.param(START, Start(SID, CALL, ACCOUNT, {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
                              ULAW_FORMAT, ("inbound",)), id="start"),
    pytest.param(MEDIA, Media(SID, 2, 5, NINE_BYTES, "inbound"), id="media"),
    pytest.param(DTMF, Dtmf(SID, "1"), id="dtmf"),
    pytest.param(MARK, Mark(SID, "my label"), id="mark"),
    pytest.param(STOP, Stop(SID, CALL), id="stop"),
]


@pytest.mark.parametrize(("text", "expected"), REFERENCE_EXAMPLES)
def test_reference_examples_parse(text, expected):
    assert tw.parse_event(text) == expected
    assert tw.parse_event(text.encode()) == expected  # aiohttp may hand us bytes too


def _edit(text: str, **changes) -> str:
    """The example with top-level keys replaced; a value of ... deletes the key."""
    msg = json.loads(text)
    for key, value in changes.items():
        if value is ...:
            del msg[key]
        else:
            msg[key] = value
    return json.dumps(msg)


def _media(**fields) -> str:
    media = {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "no+JhoaJjpzS"}
    media.update(fields)
    return _edit(MEDIA, media={k: v for k, v in media.items() if v is not ...})


def _start(**fields) -> str:
    start = json.loads(START)["start"]
    start.update(fields)
    return _edit(START, start={k: v for k, v in start.items() if v is not ...})


VALID_VARIANTS = [
    pytest.param(_media(chunk=2, timestamp=5), Media(SID, 2, 5, NINE_BYTES, "inbound"), id="int-numbers"),
    pytest.param(_media(payload=""), Media(SID, 2, 5, b"", "inbound"), id="empty-payload"),
    pytest.param(_media(payload="/w=="), Media(SID, 2, 5, b"\xff", "inbound"), id="one-byte"),
    pytest.param(_media(chunk="0", timestamp="86400000"), Media(SID, 0, 86400000, NINE_BYTES, "inbound"),
                 id="zero-and-a-day"),
    pytest.param(_edit(MEDIA, sequenceNumber=...), Media(SID, 2, 5, NINE_BYTES, "inbound"), id="no-seq"),
    pytest.param(_start(customParameters=...), Start(SID, CALL, ACCOUNT, {}, ULAW_FORMAT, ("inbound",)),
                 id="start-no-params"),
    pytest.param(_edit(START, streamSid=...),
                 Start(SID, CALL, ACCOUNT, {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
                       ULAW_FORMAT, ("inbound",)), id="start-sid-only-inside"),
    pytest.param(_edit(DTMF, dtmf={"track": "inbound_track", "digit": "#"}), Dtmf(SID, "#"), id="dtmf-hash"),
    pytest.param(_edit(DTMF, dtmf={"digit": "D"}), Dtmf(SID, "D"), id="dtmf-D"),
    pytest.param(_edit(MARK, mark={"name": "utt-17:3"}), Mark(SID, "utt-17:3"), id="mark-ours"),
]


@pytest.mark.parametrize(("text", "expected"), VALID_VARIANTS)
def test_valid_variants_parse(text, expected):
    assert tw.parse_event(text) == expected


HUGE = base64.b64encode(bytes(tw.DEFAULT_MAX_PAYLOAD_BYTES + 1)).decode()

MALFORMED = [
    pytest.param("not json", "not JSON", id="not-json"),
    pytest.param("", "not JSON", id="empty-frame"),
    pytest.param('{"event": "media"', "not JSON", id="truncated-json"),
    pytest.param("[" * 100_000, "not JSON", id="nested-past-the-stack"),
    pytest.param(b"\xff\xfe{}", "not UTF-8", id="bytes-not-utf8"),
    pytest.param("[]", "not a JSON object", id="array"),
    pytest.param('"media"', "not a JSON object", id="string"),
    pytest.param("{}", "missing event", id="missing-event"),
    pytest.param('{"event": "bogus"}', "unknown event: 'bogus'", id="unknown-event"),
    pytest.param('{"event": ["media"]}', "event must be a string, got list", id="event-not-string"),
    pytest.param('{"event": null}', "event must be a string, got NoneType", id="event-null"),
    pytest.param('{"event": "clear", "streamSid": "MZ1"}', "unknown event: 'clear'", id="clear-is-outbound-only"),
    pytest.param(_edit(MEDIA, media=...), "missing media", id="media-missing"),
    pytest.param(_edit(MEDIA, media=["x"]), "media must be an object, got list", id="media-not-object"),
    pytest.param(_media(payload=...), "missing media.payload", id="payload-missing"),
    pytest.param(_media(payload=7), "media.payload must be a string, got int", id="payload-int"),
    pytest.param(_media(payload="no+JhoaJjpzS..."), "media.payload not base64", id="payload-dots"),
    pytest.param(_media(payload="QQ="), "media.payload not base64", id="payload-wrong-padding"),
    pytest.param(_media(payload="QQ"), "media.payload not base64", id="payload-no-padding"),
    pytest.param(_media(payload="no-JhoaJjpz_"), "media.payload not base64", id="payload-urlsafe"),
    pytest.param(_media(payload="no+J hoaJjpz"), "media.payload not base64", id="payload-space"),
    pytest.param(_media(payload="QQ==QQ=="), "media.payload not base64", id="payload-after-padding"),
    pytest.param(_media(payload="nö+JhoaJjpzS"), "media.payload not base64", id="payload-non-ascii"),
    pytest.param(_media(payload=HUGE), "media.payload too large", id="payload-huge"),
    pytest.param(_media(chunk="abc"), "media.chunk not a non-negative integer: 'abc'", id="chunk-abc"),
    pytest.param(_media(chunk="-1"), "media.chunk not a non-negative integer", id="chunk-negative-str"),
    pytest.param(_media(chunk=-1), "media.chunk not a non-negative integer", id="chunk-negative-int"),
    pytest.param(_media(chunk=" 2"), "media.chunk not a non-negative integer", id="chunk-space"),
    pytest.param(_media(chunk="\u0663"), "media.chunk not a non-negative integer", id="chunk-arabic-digit"),
    pytest.param(_media(chunk="1" * 40), "media.chunk not a non-negative integer", id="chunk-40-digits"),
    pytest.param(_media(chunk=True), "media.chunk must be an integer string, got bool", id="chunk-bool"),
    pytest.param(_media(timestamp=1.5), "media.timestamp must be an integer string, got float", id="ts-float"),
    pytest.param(_media(timestamp=...), "missing media.timestamp", id="ts-missing"),
    pytest.param(_media(track=None), "media.track must be a string, got NoneType", id="track-null"),
    pytest.param(_edit(MEDIA, streamSid=...), "missing streamSid", id="media-no-streamsid"),
    pytest.param(_edit(MEDIA, streamSid=123), "streamSid must be a string, got int", id="streamsid-int"),
    pytest.param(_edit(CONNECTED, version=1), "version must be a string, got int", id="connected-version-int"),
    pytest.param(_edit(DTMF, dtmf={"digit": "x"}), "dtmf.digit not one of 0-9*#A-D: 'x'", id="dtmf-x"),
    pytest.param(_edit(DTMF, dtmf={"digit": "12"}), "dtmf.digit not one of", id="dtmf-two-digits"),
    pytest.param(_edit(DTMF, dtmf={"digit": ""}), "dtmf.digit not one of", id="dtmf-empty"),
    pytest.param(_edit(DTMF, dtmf={"digit": 1}), "dtmf.digit must be a string", id="dtmf-int"),
    pytest.param(_edit(DTMF, dtmf=...), "missing dtmf", id="dtmf-missing"),
    pytest.param(_edit(MARK, mark={}), "missing mark.name", id="mark-no-name"),
    pytest.param(_edit(MARK, mark={"name": 5}), "mark.name must be a string, got int", id="mark-name-int"),
    pytest.param(_edit(MARK, mark="my label"), "mark must be an object, got str", id="mark-bare-string"),
    pytest.param(_edit(STOP, stop=...), "missing stop", id="stop-missing"),
    pytest.param(_edit(STOP, stop={"callSid": None}), "stop.callSid must be a string", id="stop-callsid-null"),
    pytest.param(_start(mediaFormat={"encoding": "audio/l16", "sampleRate": 8000, "channels": 1}),
                 "start.mediaFormat not mu-law 8000 Hz mono: 'audio/l16', 8000, 1", id="start-l16"),
    pytest.param(_start(mediaFormat={"encoding": [[[]]] * 1000}), "not mu-law 8000 Hz mono: <list>, None, None",
                 id="start-fmt-nested"),
    pytest.param(_start(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1}),
                 "start.mediaFormat not mu-law", id="start-16k"),
    pytest.param(_start(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2}),
                 "start.mediaFormat not mu-law", id="start-stereo"),
    pytest.param(_start(mediaFormat="audio/x-mulaw"), "start.mediaFormat must be an object", id="start-fmt-str"),
    pytest.param(_start(customParameters={"token": 5}), "start.customParameters", id="start-param-int"),
    pytest.param(_start(customParameters=["token"]), "start.customParameters", id="start-params-list"),
    pytest.param(_start(tracks="inbound"), "start.tracks must be a list, got str", id="start-tracks-str"),
    pytest.param(_start(tracks=["inbound", 1]), "start.tracks must be a list of strings", id="start-track-int"),
    pytest.param(_start(callSid=...), "missing start.callSid", id="start-no-callsid"),
    pytest.param(_start(accountSid=[]), "start.accountSid must be a string", id="start-account-list"),
    pytest.param(_edit(START, streamSid="MZother"), "start.streamSid differs from streamSid", id="start-two-sids"),
    pytest.param(_edit(START, start=None), "start must be an object, got NoneType", id="start-null"),
]


@pytest.mark.parametrize(("text", "reason"), MALFORMED)
def test_malformed_is_rejected_with_a_short_reason(text, reason):
    with pytest.raises(TwilioProtocolError) as info:
        tw.parse_event(text)
    assert reason in info.value.reason
    assert str(info.value) == info.value.reason
    assert len(info.value.reason) <= 100  # loggable: never the whole frame


def test_is_a_value_error():
    assert issubclass(TwilioProtocolError, ValueError)


def test_reason_truncates_a_long_offending_value():
    with pytest.raises(TwilioProtocolError) as info:
        tw.parse_event("x" * 10_000)
    assert info.value.reason.startswith("not JSON: 'xxxx")
    assert info.value.reason.endswith("...")


@pytest.mark.parametrize(("size", "ok"), [(0, True), (10, True), (11, False), (12, False), (13, False)])
def test_max_payload_bytes_is_exact(size, ok):
    text = _media(payload=base64.b64encode(bytes(size)).decode())
    if ok:
        assert tw.parse_event(text, max_payload_bytes=10).payload == bytes(size)
    else:
        with pytest.raises(TwilioProtocolError, match="media.payload too large"):
            tw.parse_event(text, max_payload_bytes=10)


def test_default_limit_accepts_exactly_the_default():
    text = _media(payload=base64.b64encode(bytes(tw.DEFAULT_MAX_PAYLOAD_BYTES)).decode())
    assert len(tw.parse_event(text).payload) == tw.DEFAULT_MAX_PAYLOAD_BYTES


def test_events_are_frozen_and_slotted():
    event = tw.parse_event(MEDIA)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.chunk = 3
    assert not hasattr(event, "__dict__")


# --- builders: exactly the documented shapes -------------------------------------------------

BUILT = [
    pytest.param(tw.media_message(SID, NINE_BYTES),
                 {"event": "media", "streamSid": SID, "media": {"payload": "no+JhoaJjpzS"}}, id="media"),
    pytest.param(tw.mark_message(SID, "utt-17-chunk-3"),
                 {"event": "mark", "streamSid": SID, "mark": {"name": "utt-17-chunk-3"}}, id="mark"),
    pytest.param(tw.clear_message(SID), {"event": "clear", "streamSid": SID}, id="clear"),
]


@pytest.mark.parametrize(("text", "expected"), BUILT)
def test_builders_make_exactly_the_reference_shapes(text, expected):
    assert json.loads(text) == expected  # dict equality: no extra keys at any level (31951)
    assert text == json.dumps(expected, separators=(",", ":"))  # compact, in the documented order


def test_media_message_round_trips_every_byte():
    ulaw = bytes(range(256)) * 3
    payload = json.loads(tw.media_message(SID, ulaw))["media"]["payload"]
    assert base64.b64decode(payload, validate=True) == ulaw


@pytest.mark.parametrize("build", [
    pytest.param(lambda sid: tw.media_message(sid, b"\x01"), id="media"),
    pytest.param(lambda sid: tw.mark_message(sid, "m"), id="mark"),
    pytest.param(tw.clear_message, id="clear"),
])
def test_builders_escape_the_stream_sid(build):
    sid = 'MZ"\\</script>\u00e9'
    assert json.loads(build(sid))["streamSid"] == sid


def test_mark_message_escapes_the_name_and_parses_back():
    name = 'a"b\\c\n\u00e9'
    assert tw.parse_event(tw.mark_message(SID, name)) == Mark(SID, name)


@pytest.mark.parametrize("build", [
    pytest.param(lambda: tw.media_message("", b"\xff"), id="media-no-sid"),
    pytest.param(lambda: tw.media_message(SID, b""), id="media-empty"),
    pytest.param(lambda: tw.mark_message(SID, ""), id="mark-empty-name"),
    pytest.param(lambda: tw.mark_message(None, "x"), id="mark-no-sid"),
    pytest.param(lambda: tw.clear_message(""), id="clear-no-sid"),
])
def test_builders_refuse_what_twilio_would_reject(build):
    with pytest.raises(ValueError):
        build()
