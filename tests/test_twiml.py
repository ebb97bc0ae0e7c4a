"""gateway.twiml: well-formed, escaped, validated, and the same trees as Twilio's own generator."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
# A test-only oracle (the `test` extra installs it); the gateway itself never imports twilio.
from twilio.twiml import voice_response as vr

from gateway import twiml

URL = "wss://bridge.example.com/twilio/media"
AFTER = "https://bridge.example.com/twiml/after"
PROLOG = '<?xml version="1.0" encoding="UTF-8"?>'


def tree(xml: str):
    """A comparable form of a document: (tag, attributes, text, children), tails ignored."""
    assert xml.startswith(PROLOG)

    def walk(el):
        return el.tag, dict(el.attrib), el.text or "", [walk(child) for child in el]
    return walk(ET.fromstring(xml.encode("utf-8")))


def test_connect_stream_exact_text():
    assert twiml.connect_stream_twiml(URL, {"token": "t0k", "caller": "+15551234567"}, AFTER) == (
        PROLOG + f'<Response><Connect><Stream url="{URL}"><Parameter name="token" value="t0k"/>'
        '<Parameter name="caller" value="+15551234567"/></Stream></Connect>'
        f'<Redirect method="POST">{AFTER}</Redirect></Response>')


def test_connect_stream_tree():
    root = ET.fromstring(twiml.connect_stream_twiml(URL, {"a": "1", "b": "2"}, AFTER).encode())
    assert [el.tag for el in root] == ["Connect", "Redirect"]
    stream = root.find("Connect/Stream")
    assert stream.attrib == {"url": URL}
    assert [p.attrib for p in stream] == [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]
    assert root.find("Redirect").attrib == {"method": "POST"} and root.find("Redirect").text == AFTER


def test_without_after_url_the_document_ends_at_connect():
    root = ET.fromstring(twiml.connect_stream_twiml(URL, {}, None).encode())
    assert [el.tag for el in root] == ["Connect"]  # Twilio hangs up when the WS closes; no <Pause>
    assert list(root.find("Connect/Stream")) == []


NASTY = [
    pytest.param("a&b<c>\"d'", id="reference-example"),
    pytest.param("'single' only", id="single-quotes"),
    pytest.param('"double" only', id="double-quotes"),
    pytest.param("line1\nline2\tend\r", id="whitespace-controls"),
    pytest.param("]]> <!-- --> &amp; &#x41;", id="markup-lookalikes"),
    pytest.param("Zo\u00eb \u4e2d\u6587 \U0001f600", id="non-ascii"),
    pytest.param("", id="empty-value"),
    pytest.param("x" * 493, id="longest-allowed"),  # len("caller") + 493 = 499, under the 500 limit
]


@pytest.mark.parametrize("value", NASTY)
def test_parameter_values_round_trip(value):
    xml = twiml.connect_stream_twiml(URL, {"caller": value, "a&b<\"'>": "k"}, AFTER + "?x=1&y=<2>")
    root = ET.fromstring(xml.encode())
    params = {p.get("name"): p.get("value") for p in root.iterfind("Connect/Stream/Parameter")}
    assert params == {"caller": value, "a&b<\"'>": "k"}
    assert root.find("Redirect").text == AFTER + "?x=1&y=<2>"


def test_status_callback_matches_the_reference_example():
    # The twilio package's generated document, minus the <Say> after </Connect>.
    reference = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream statusCallback='
        '"https://bridge.example.com/twilio/stream-status" statusCallbackMethod="POST" url='
        '"wss://bridge.example.com/twilio/media"><Parameter name="session" value="a&amp;b&lt;c&gt;&quot;d\'" />'
        '<Parameter name="caller" value="+15551234567" /></Stream></Connect></Response>')
    ours = twiml.connect_stream_twiml(URL, {"session": "a&b<c>\"d'", "caller": "+15551234567"}, None,
                                      status_callback_url="https://bridge.example.com/twilio/stream-status")
    assert tree(ours) == tree(reference)


INVALID_CONNECT = [
    pytest.param("https://bridge.example.com/media", {}, None, "absolute wss/ws URL", id="https-stream"),
    pytest.param("bridge.example.com/media", {}, None, "absolute wss/ws URL", id="no-scheme"),
    pytest.param("/twilio/media", {}, None, "absolute wss/ws URL", id="relative"),
    pytest.param("wss:///media", {}, None, "absolute wss/ws URL", id="no-host"),
    pytest.param("wss://h/media path", {}, None, "absolute wss/ws URL", id="space"),
    pytest.param("wss://h/media?token=1", {}, None, "no query string", id="query"),
    pytest.param("wss://h/media?", {}, None, "no query string", id="empty-query"),
    pytest.param("wss://h/media#frag", {}, None, "no query string or fragment", id="fragment"),
    pytest.param(URL, {"": "v"}, None, "name must not be empty", id="empty-name"),
    pytest.param(URL, {"n": 5}, None, "must be a string", id="value-int"),
    pytest.param(URL, {"n": "a\x00b"}, None, "XML cannot carry", id="value-nul"),
    pytest.param(URL, {"n": "\ud800"}, None, "XML cannot carry", id="value-lone-surrogate"),
    pytest.param(URL, {"name": "x" * 496}, None, "under 500 characters, got 500", id="exactly-500"),
    pytest.param(URL, {"n" * 500: ""}, None, "under 500 characters", id="long-name"),
    pytest.param(URL, {}, "wss://bridge.example.com/after", "after_url must be an absolute https/http", id="after-wss"),
    pytest.param(URL, {}, "/twiml/after", "after_url must be an absolute", id="after-relative"),
    pytest.param(URL, {}, "https://h/a\x01", "XML cannot carry", id="after-control-char"),
]


@pytest.mark.parametrize(("url", "params", "after", "message"), INVALID_CONNECT)
def test_connect_stream_rejects(url, params, after, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        twiml.connect_stream_twiml(url, params, after)


def test_plain_ws_is_allowed_for_local_peers():
    assert 'url="ws://127.0.0.1:8080/twilio/media/abc"' in twiml.connect_stream_twiml(
        "ws://127.0.0.1:8080/twilio/media/abc", {}, None)


def test_hangup():
    assert twiml.hangup_twiml() == PROLOG + "<Response><Hangup/></Response>"


def test_say_hangup_escapes_and_hangs_up():
    text = "We're busy <right now> & sorry"
    root = ET.fromstring(twiml.say_hangup_twiml(text).encode())
    assert [(el.tag, el.text) for el in root] == [("Say", text), ("Hangup", None)]


@pytest.mark.parametrize("text", ["", "   ", "a\x07b"])
def test_say_hangup_rejects(text):
    with pytest.raises(ValueError):
        twiml.say_hangup_twiml(text)


@pytest.mark.parametrize(("target", "expected"), [
    ("+15550001111", ("Dial", {}, "+15550001111", [])),
    ("(415) 555-0100", ("Dial", {}, "(415) 555-0100", [])),
    ("sip:agent@pbx.example.com;transport=tls", ("Dial", {}, "", [("Sip", {}, "sip:agent@pbx.example.com;transport=tls", [])])),
    ("sip:a@b.example?X-Tag=<x>&y=1", ("Dial", {}, "", [("Sip", {}, "sip:a@b.example?X-Tag=<x>&y=1", [])])),
])
def test_dial(target, expected):
    assert tree(twiml.dial_twiml(target)) == ("Response", {}, "", [expected])


@pytest.mark.parametrize("target", ["", "sip:", "call me", "+1555<Hangup/>", "tel:+15550001111", "+1\n555",
                                    "+", "(-)", "1" * 41])
def test_dial_rejects(target):
    with pytest.raises(ValueError):
        twiml.dial_twiml(target)


# --- against twilio.twiml.voice_response ------------------------------------------------------

def _twilio_connect(url, params, after, status_callback=None):
    response, connect = vr.VoiceResponse(), vr.Connect()
    extra = {} if status_callback is None else {"status_callback": status_callback, "status_callback_method": "POST"}
    stream = vr.Stream(url=url, **extra)
    for name, value in params.items():
        stream.parameter(name=name, value=value)
    connect.append(stream)
    response.append(connect)
    if after is not None:
        response.redirect(after, method="POST")
    return str(response)


def _twilio_dial(target):
    response = vr.VoiceResponse()
    if target.startswith("sip:"):
        dial = vr.Dial()
        dial.sip(target)
        response.append(dial)
    else:
        response.dial(target)
    return str(response)


def _twilio(build):
    response = vr.VoiceResponse()
    build(response)
    return str(response)


ORACLE = [
    pytest.param(lambda: twiml.connect_stream_twiml(URL, {"token": "t", "n": "a&b<c>\"d'\n"}, AFTER),
                 lambda: _twilio_connect(URL, {"token": "t", "n": "a&b<c>\"d'\n"}, AFTER), id="connect"),
    pytest.param(lambda: twiml.connect_stream_twiml(URL, {}, None),
                 lambda: _twilio_connect(URL, {}, None), id="connect-bare"),
    pytest.param(lambda: twiml.connect_stream_twiml(URL, {"s": "'"}, AFTER + "?a=1&b=2",
                                                    status_callback_url=AFTER),
                 lambda: _twilio_connect(URL, {"s": "'"}, AFTER + "?a=1&b=2", AFTER), id="connect-callback"),
    pytest.param(twiml.hangup_twiml, lambda: _twilio(lambda r: r.hangup()), id="hangup"),
    pytest.param(lambda: twiml.say_hangup_twiml("Sorry & <goodbye>"), lambda: _twilio(lambda r: (r.say("Sorry & <goodbye>"), r.hangup())),
                 id="say-hangup"),
    pytest.param(lambda: twiml.dial_twiml("+15550001111"), lambda: _twilio_dial("+15550001111"), id="dial"),
    pytest.param(lambda: twiml.dial_twiml("sip:a@b.example?x=<1>&y"), lambda: _twilio_dial("sip:a@b.example?x=<1>&y"),
                 id="dial-sip"),
]


@pytest.mark.parametrize(("ours", "theirs"), ORACLE)
def test_same_tree_as_twilio_generator(ours, theirs):
    assert tree(ours()) == tree(theirs())
