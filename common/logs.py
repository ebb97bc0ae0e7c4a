"""Logging with the process name and the call id on every line.

The call id lives in a context variable: asyncio tasks inherit it, so a per-call task sets it once
(``call_context``) and every line it logs carries it. Loops that serve many calls at once set it
around the work for one call.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys

current_call: contextvars.ContextVar[str] = contextvars.ContextVar("current_call", default="-")


class _CallFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call = current_call.get()
        return True


class _MaskingFormatter(logging.Formatter):
    """A safety net under "never log a secret": any configured secret that reaches a line anyway (an
    exception text, a library's debug output of request headers) is replaced by ***."""

    def __init__(self, fmt: str, secrets: tuple[str, ...]):
        super().__init__(fmt)
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


def setup(process: str, level: str = "INFO", secrets: tuple[str, ...] = ()) -> None:
    """Configure the root logger once per process: one line per record on stderr, secrets masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CallFilter())
    handler.setFormatter(_MaskingFormatter(
        f"%(asctime)s %(levelname)s {process} call=%(call)s %(name)s: %(message)s", secrets))
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
