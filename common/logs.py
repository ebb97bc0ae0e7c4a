"""Logging with the process name, the call id, and the call's Twilio CallSid and StreamSid on every line.

A call's ids live in a context variable: asyncio tasks inherit it, so a per-call task sets it once
(``call_context`` around its body, or ``name_call`` for the rest of it) and every line it logs carries
them. Loops that serve many calls at once set it around the work for one call. Each process registers
a call's Twilio sids when it learns them (``register_call``) and forgets them when the call ends
(``forget_call``), so a line logged under ``call_context(call)`` names them without passing them; a
line about a call this process does not hold (yet, or any more) passes them to ``call_context``.
Lines are text by default, or one JSON object each with ``LOG_FORMAT=json``; either way the fields are
``call``, ``call_sid``, ``stream_sid`` (``-`` when not known, such as the StreamSid before ``start``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
from typing import NamedTuple

# A call registered before its stream started (the webhook, a pre-warm) that nothing forgets (its
# stream never came) is dropped after this: longer than a stream token or a pre-warmed session lives.
PENDING_S = 300.0
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a call id or a Twilio sid (theirs: 2 letters, 32 hex digits)


class CallIds(NamedTuple):
    call: str = "-"
    call_sid: str = "-"
    stream_sid: str = "-"


def _id(value) -> str:
    """An id fit for a log field: ``-`` when absent, ``?`` when it is not shaped like one (ids can come
    from outside, and a field must not be able to forge the rest of a line)."""
    if not value or value == "-":
        return "-"
    return value if isinstance(value, str) and ID.fullmatch(value) else "?"


current_call: contextvars.ContextVar[CallIds] = contextvars.ContextVar("current_call", default=CallIds())
_known: dict[str, CallIds] = {}  # call id -> its ids, while this process holds the call
_pending: dict[str, float] = {}  # call id -> when to drop it: registered with no StreamSid yet


def register_call(call: str, call_sid: str, stream_sid: str = "") -> None:
    """Every line logged for ``call`` here names these sids until ``forget_call``. A sid given empty
    keeps the one registered before."""
    _drop_stale(time.monotonic())
    before = _known.get(call, CallIds(_id(call)))
    call_sid, stream_sid = _id(call_sid), _id(stream_sid)
    ids = CallIds(before.call, call_sid if call_sid != "-" else before.call_sid,
                  stream_sid if stream_sid != "-" else before.stream_sid)
    _known[call] = ids
    _pending.pop(call, None)
    if ids.stream_sid == "-":
        _pending[call] = time.monotonic() + PENDING_S


def forget_call(call: str) -> None:
    _known.pop(call, None)
    _pending.pop(call, None)


def _drop_stale(now: float) -> None:
    while _pending:
        call, deadline = next(iter(_pending.items()))  # oldest first: deadlines are in order
        if deadline > now:
            return
        del _pending[call]
        _known.pop(call, None)


def call_ids() -> CallIds:
    """The ids of the call being served here: given to ``call_context``, else registered."""
    here = current_call.get()
    known = _known.get(here.call)
    if known is None:
        return here
    return CallIds(here.call, here.call_sid if here.call_sid != "-" else known.call_sid,
                   here.stream_sid if here.stream_sid != "-" else known.stream_sid)


class _CallFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call, record.call_sid, record.stream_sid = call_ids()
        return True


class _JsonFormatter(logging.Formatter):
    def __init__(self, process: str):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname, "process": self.process,
                "call": record.call, "call_sid": record.call_sid, "stream_sid": record.stream_sid,
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class _MaskingFormatter(logging.Formatter):
    """A safety net under "never log a secret": any configured secret that reaches a line anyway (an
    exception text, a library's debug output of request headers) is replaced by ***."""

    def __init__(self, inner: logging.Formatter, secrets: tuple[str, ...]):
        super().__init__()
        self.inner = inner
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


TEXT_FORMAT = ("%(asctime)s %(levelname)s {process} call=%(call)s call_sid=%(call_sid)s "
               "stream_sid=%(stream_sid)s %(name)s: %(message)s")


def setup(process: str, level: str = "INFO", secrets: tuple[str, ...] = (), json_lines: bool = False) -> None:
    """Configure the root logger once per process: one line per record on stderr, secrets masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CallFilter())
    inner = _JsonFormatter(process) if json_lines else logging.Formatter(TEXT_FORMAT.format(process=process))
    handler.setFormatter(_MaskingFormatter(inner, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def name_call(call: str, call_sid: str = "", stream_sid: str = "") -> None:
    """Every line logged from here to the end of the current task names this call. For a request
    handler: aiohttp runs each request in a task of its own and logs its access line there, after the
    handler has returned, so that line names the call too."""
    current_call.set(CallIds(_id(call), _id(call_sid), _id(stream_sid)))


@contextlib.contextmanager
def call_context(call: str, call_sid: str = "", stream_sid: str = ""):
    """Every line logged inside names ``call``, and the sids given here or else registered for it."""
    token = current_call.set(CallIds(_id(call), _id(call_sid), _id(stream_sid)))
    try:
        yield
    finally:
        current_call.reset(token)
