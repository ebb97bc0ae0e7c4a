"""TwiML documents for the voice webhook. Pure string building: no sockets, no I/O.

Hand-written with ``xml.sax.saxutils``: four templates need no import of the ``twilio`` package on
the webhook path (docs/performance.md#code-choices; the package serves outbound calls' REST client);
the tests check that our trees equal what ``twilio.twiml.voice_response`` generates for the same input.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

PROLOG = '<?xml version="1.0" encoding="UTF-8"?>'
MAX_PARAMETER_CHARS = 500  # a <Parameter>'s name and value together must stay under this (Twilio's docs)
# Characters XML 1.0 cannot carry at all, escaped or not (NUL, most C0 controls, lone surrogates).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PHONE = re.compile(r"\+?[0-9 ().-]{1,40}")  # E.164 or a formatted local number
_SIP = re.compile(r"sips?:\S+")


def _text(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if _NOT_XML.search(value):
        raise ValueError(f"{what} holds a character XML cannot carry")
    return value


def _url(url: str, what: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(_text(url, what))
    if parts.scheme not in schemes or not parts.netloc or any(c.isspace() for c in url):
        raise ValueError(f"{what} must be an absolute {'/'.join(schemes)} URL: {url[:80]!r}")
    return url


def _stream_url(url: str) -> str:
    # Twilio itself accepts only wss (31922); ws is allowed so local test peers can run without TLS.
    _url(url, "stream_url", ("wss", "ws"))
    if "?" in url or "#" in url:
        # Twilio: query strings are unsupported (reportedly stripped); per-call values go in <Parameter>
        # or the path.
        raise ValueError(f"stream_url must have no query string or fragment: {url[:80]!r}")
    return url


def _parameter(name: str, value: str) -> str:
    if not _text(name, "parameter name"):
        raise ValueError("parameter name must not be empty")
    _text(value, f"parameter {name[:40]!r}")
    if len(name) + len(value) >= MAX_PARAMETER_CHARS:
        raise ValueError(f"parameter {name[:40]!r}: name and value must stay under "
                         f"{MAX_PARAMETER_CHARS} characters, got {len(name) + len(value)}")
    return f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>"


def connect_stream_twiml(stream_url: str, parameters: dict[str, str], after_url: str | None = None,
                         *, status_callback_url: str | None = None) -> str:
    """<Connect><Stream> with <Parameter>s, then optionally <Redirect> to ``after_url``.

    Verbs after </Connect> run only once our server closes the WebSocket. With no ``after_url``
    the document ends there and Twilio hangs up; never a <Pause>, which would hold a silent open line.
    ``status_callback_url`` is where Twilio reports stream start/stop/error, the only place a failed
    WebSocket handshake shows up.
    """
    attrs = f"url={quoteattr(_stream_url(stream_url))}"
    if status_callback_url is not None:
        callback = _url(status_callback_url, "status_callback_url", ("https", "http"))
        attrs += f' statusCallback={quoteattr(callback)} statusCallbackMethod="POST"'
    params = "".join(_parameter(name, value) for name, value in parameters.items())
    after = ""
    if after_url is not None:
        after_url = _url(after_url, "after_url", ("https", "http"))
        after = f'<Redirect method="POST">{escape(after_url)}</Redirect>'
    return f"{PROLOG}<Response><Connect><Stream {attrs}>{params}</Stream></Connect>{after}</Response>"


def hangup_twiml() -> str:
    return f"{PROLOG}<Response><Hangup/></Response>"


def say_hangup_twiml(text: str) -> str:
    """Speak ``text`` and hang up, e.g. to refuse a call politely when we are over capacity."""
    if not _text(text, "say text").strip():
        raise ValueError("say text must not be blank")
    return f"{PROLOG}<Response><Say>{escape(text)}</Say><Hangup/></Response>"


def dial_twiml(target: str) -> str:
    """Transfer to a phone number, or to a SIP URI (which Twilio needs wrapped in a <Sip> noun)."""
    _text(target, "dial target")
    if _SIP.fullmatch(target):
        return f"{PROLOG}<Response><Dial><Sip>{escape(target)}</Sip></Dial></Response>"
    if not (_PHONE.fullmatch(target) and any(c.isdigit() for c in target)):
        raise ValueError(f"dial target must be a phone number or a sip: URI: {target[:80]!r}")
    return f"{PROLOG}<Response><Dial>{escape(target)}</Dial></Response>"


def say_first(text: str, document: str) -> str:
    """``document`` (one of the above) with ``<Say>text</Say>`` before its first verb."""
    if not _text(text, "say text").strip():
        raise ValueError("say text must not be blank")
    head = f"{PROLOG}<Response>"
    if not document.startswith(head):
        raise ValueError("not a TwiML document made here")
    return f"{head}<Say>{escape(text)}</Say>{document[len(head):]}"
