"""What a tool call answers the model, in words it can act on (pure).

A model told nothing (``None``, ``[]``) calls the tool again, several times in one turn on the 3.8
generation (https://ai.google.dev/gemini-api/docs/models/gemini-3.8-live): every answer that is not a
tool's own non-empty result says what happened, whether trying again may help, and a sentence.
A response whose connection is gone (a reconnect, a goAway hand-over) is told to the model on the
next connection as text: the new connection never made that call, so a bare response to it could
be dropped.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from google.genai import types


class ToolAnswer(NamedTuple):
    """A tool's response, and the connection whose call it answers (gemini_wire.Connection.number)."""
    response: types.FunctionResponse
    connection: int


def result(name: str, value: object) -> dict:
    """A tool's return value as the response body: a non-empty dict as it is, another value as
    ``{"result": value}``, nothing as an informative ``status``."""
    if isinstance(value, dict) and value:
        return value
    if value is None or (isinstance(value, (dict, list, tuple, set, str)) and not value):
        return {"status": "no_result", "retryable": False,
                "message": f"{name} finished and had nothing to report; calling it again will not change that."}
    return {"result": value}


def failed(name: str, error: str, retryable: bool) -> dict:
    again = "it may work if tried again" if retryable else "trying again will not help"
    return {"status": "error", "retryable": retryable, "error": f"{name}: {error}; {again}."}


def timed_out(name: str, seconds: float) -> dict:
    return {"status": "timeout", "retryable": True,
            "error": f"{name} did not finish within {seconds:g} s and was stopped; tell the caller, and try "
                     "again only if they want to wait."}


def outcome_text(answer: ToolAnswer) -> str:
    """The text that tells a new connection what a call made on an earlier one returned."""
    r = answer.response
    body = json.dumps(r.response, sort_keys=True, default=str)
    return (f"(The {r.name} tool you called before the connection was renewed has finished: {body}. "
            f"Use this result; do not call {r.name} again for it.)")
