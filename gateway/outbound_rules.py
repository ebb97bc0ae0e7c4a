"""Outbound calls, the pure part: what a ``POST /calls`` body may hold, and what each answering-machine
verdict makes the call do. No I/O; tables of cases in tests/test_outbound.py.

Twilio's asynchronous AMD (https://www.twilio.com/docs/voice/answering-machine-detection) posts one
``AnsweredBy`` per call. With ``MachineDetection=DetectMessageEnd`` a machine's verdict comes once its
greeting has ended: ``machine_end_beep``, ``machine_end_silence`` or ``machine_end_other``; the others
are ``human``, ``fax`` and ``unknown`` (``machine_start`` comes only with ``MachineDetection=Enable``).
"""

from __future__ import annotations

import json
from typing import NamedTuple

from common.settings import Settings

MAX_BODY = 16 * 1024
MAX_TEXT = 8000  # characters of a system instruction, greeting or voicemail message
MAX_PARAMS = 32
MAX_PARAM_CHARS = 500
POLICIES = ("hangup", "message")
FIELDS = {"to", "from", "system_instruction", "greeting", "params", "voicemail"}
# A machine whose greeting has ended: the voicemail policy applies. machine_end_other is a greeting
# that ended without a beep or silence Twilio could name; a message left then is still heard.
MACHINE_ENDS = ("machine_end_beep", "machine_end_silence", "machine_end_other")
VERDICTS = ("human", "machine_start", *MACHINE_ENDS, "fax", "unknown")
# A final CallStatus of an outbound call (Twilio's StatusCallback), and the ones before it.
FINAL_STATUSES = ("completed", "busy", "no-answer", "failed", "canceled")


class DialError(ValueError):
    """A request we refuse: ``status`` is the HTTP status, the message says why, in plain words."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class DialRequest(NamedTuple):
    to: str
    from_: str
    system_instruction: str
    greeting: str
    params: dict[str, str]
    voicemail_policy: str
    voicemail_text: str


class Next(NamedTuple):
    """What the call does on a verdict: ``greet`` (a human: the held greeting goes), ``message`` (speak
    the voicemail message, then hang up once it has played) or ``hangup``; ``reason`` is how the call's
    end is told in the logs and in ``bridge_calls_ended_total{outcome}`` (the words before the bracket)."""
    kind: str
    reason: str


def parse_request(raw: bytes, settings: Settings) -> DialRequest:
    """The JSON body of ``POST /calls``, checked; DialError (400 malformed, 403 not allowed) if not."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise DialError(400, f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise DialError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise DialError(400, f"unknown field(s): {', '.join(unknown)[:200]} (known: {', '.join(sorted(FIELDS))})")
    to = _text(body, "to", required=True)
    from_ = _text(body, "from") or settings.dial_from
    if not from_:
        raise DialError(400, "no `from`, and BRIDGE_DIAL_FROM is not set")
    if not settings.dial_allowed(to):
        raise DialError(403, f"{to[:40]!r} is not on BRIDGE_DIAL_ALLOW")
    voicemail = body.get("voicemail", {})
    if not isinstance(voicemail, dict) or set(voicemail) - {"policy", "text"}:
        raise DialError(400, "`voicemail` must be an object {policy: hangup|message, text}")
    policy = _text(voicemail, "policy") or "hangup"
    text = _text(voicemail, "text")
    if policy not in POLICIES:
        raise DialError(400, f"voicemail policy must be one of {', '.join(POLICIES)}, got {policy[:40]!r}")
    if policy == "message" and not text:
        raise DialError(400, "voicemail policy `message` needs `text`: the message to leave")
    return DialRequest(to=to, from_=from_, system_instruction=_text(body, "system_instruction"),
                       greeting=_text(body, "greeting"), params=_params(body.get("params", {})),
                       voicemail_policy=policy, voicemail_text=text)


def _text(body: dict, name: str, *, required: bool = False) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise DialError(400, f"`{name}` must be a string")
    if required and not value.strip():
        raise DialError(400, f"`{name}` is required")
    if len(value) > MAX_TEXT:
        raise DialError(400, f"`{name}` is longer than {MAX_TEXT} characters")
    return value.strip()


def _params(params) -> dict[str, str]:
    """Values for the call's tools (``ToolContext.params``): a flat object of strings."""
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in params.items()):
        raise DialError(400, "`params` must be an object of string values")
    if len(params) > MAX_PARAMS or any(len(k) + len(v) > MAX_PARAM_CHARS for k, v in params.items()):
        raise DialError(400, f"`params`: at most {MAX_PARAMS} entries of under {MAX_PARAM_CHARS} characters")
    return dict(params)


def next_step(answered_by: str, policy: str) -> Next:
    """What an AMD verdict makes the call do."""
    if answered_by == "human":
        return Next("greet", "")
    if answered_by in MACHINE_ENDS:
        if policy == "message":
            return Next("message", f"outbound voicemail message left ({answered_by})")
        return Next("hangup", f"outbound voicemail hung up ({answered_by})")
    verdict = answered_by if answered_by in VERDICTS else "unknown"
    return Next("hangup", f"outbound machine hung up ({verdict})")
