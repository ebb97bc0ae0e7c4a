"""Session resumption handles the emulator has issued: opaque, unique, valid for a while.

A handle maps to what a resumed session needs to carry on (here: how many turns it had). The store
lives in the emulator process, so handles do not survive an emulator restart; a resume with such a
handle is refused (1007), as the real service refuses an expired one.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

HANDLE_TTL_S = 2 * 3600  # the Gemini API keeps handles for about 2 h (wire reference §8)
MAX_HANDLES = 10_000


class HandleStore:
    def __init__(self, ttl_s: float = HANDLE_TTL_S, capacity: int = MAX_HANDLES):
        self._ttl_s, self._capacity = ttl_s, capacity
        self._handles: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def issue(self, turns: int) -> str:
        handle = "emu-" + secrets.token_urlsafe(18)
        self._handles[handle] = (time.monotonic() + self._ttl_s, turns)
        while len(self._handles) > self._capacity:
            self._handles.popitem(last=False)
        return handle

    def get(self, handle: str) -> int | None:
        """The turn count saved with ``handle``, or None if it is unknown or expired."""
        entry = self._handles.get(handle)
        if entry is None or entry[0] < time.monotonic():
            self._handles.pop(handle, None)
            return None
        return entry[1]
