"""Logging with the process name, the call id, and the call's Twilio CallSid and StreamSid on every line.

The call id lives in a context variable: asyncio tasks inherit it, so a per-call task sets it once
(``call_context``) and every line it logs carries it. Loops that serve many calls at once set it
around the work for one call. Each stage registers a call's Twilio sids when the call starts
(``register_call``) and forgets them when it ends, so every line can name them without passing them.
Lines are text by default, or one JSON object each with ``LOG_FORMAT=json``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys

current_call: contextvars.ContextVar[str] = contextvars.ContextVar("current_call", default="-")
_sids: dict[str, tuple[str, str]] = {}  # call id -> (CallSid, StreamSid)


def register_call(call: str, call_sid: str, stream_sid: str) -> None:
    _sids[call] = (call_sid or "-", stream_sid or "-")


def forget_call(call: str) -> None:
    _sids.pop(call, None)


class _CallFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call = current_call.get()
        record.call_sid, record.stream_sid = _sids.get(record.call, ("-", "-"))
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


TEXT_FORMAT = "%(asctime)s %(levelname)s {process} call=%(call)s sid=%(call_sid)s %(name)s: %(message)s"


def setup(process: str, level: str = "INFO", secrets: tuple[str, ...] = (), json_lines: bool = False) -> None:
    """Configure the root logger once per process: one line per record on stderr, secrets masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CallFilter())
    inner = _JsonFormatter(process) if json_lines else logging.Formatter(TEXT_FORMAT.format(process=process))
    handler.setFormatter(_MaskingFormatter(inner, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@contextlib.contextmanager
def call_context(call: str):
    token = current_call.set(call)
    try:
        yield
    finally:
        current_call.reset(token)
