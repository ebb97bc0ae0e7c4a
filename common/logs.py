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


def setup(process: str, level: str = "INFO") -> None:
    """Configure the root logger once per process: one line per record on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CallFilter())
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s {process} call=%(call)s %(name)s: %(message)s"))
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
