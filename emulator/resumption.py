"""Session resumption handles the emulator issues: opaque to clients, valid for a while, and good at
any emulator instance.

The real service is one service: a handle it issued on one connection resumes on any other, whichever
server takes it. So a handle carries what a resumed session needs (here: how many turns it had) and
when it expires, and any emulator process accepts it, including one started after it was issued. That
lets a call move between two stacks (tests/test_chaos.py: its gateway dies, the other stack's
model_client resumes it). A handle that does not parse, or has expired, is refused (1007), as the real
service refuses an expired one.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time

HANDLE_TTL_S = 2 * 3600  # the Gemini API keeps handles for about 2 h (docs/architecture.md#gemini)
PREFIX = "emu-"


class HandleStore:
    def __init__(self, ttl_s: float = HANDLE_TTL_S):
        self._ttl_s = ttl_s

    def issue(self, turns: int, memory: dict[str, int] | None = None) -> str:
        """A handle for a session ``turns`` turns in, whose context counts ``memory`` tokens by modality."""
        state = {"turns": turns, "memory": memory or {}, "expires": time.time() + self._ttl_s,
                 "nonce": secrets.token_hex(6)}
        return PREFIX + base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")

    def get(self, handle: str) -> int | None:
        """The turn count saved in ``handle``, or None if it is not one of ours or has expired."""
        state = self._state(handle)
        return state["turns"] if state else None

    def memory(self, handle: str) -> dict[str, int]:
        """The context size saved in ``handle`` ({} if there is none)."""
        state = self._state(handle) or {}
        memory = state.get("memory")
        return {k: v for k, v in memory.items() if type(v) is int} if isinstance(memory, dict) else {}

    def _state(self, handle: str) -> dict | None:
        if not handle.startswith(PREFIX) or len(handle) > 512:
            return None
        body = handle[len(PREFIX):]
        try:
            state = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            turns, expires = state["turns"], state["expires"]
        except (binascii.Error, ValueError, TypeError, KeyError):
            return None
        if not isinstance(turns, int) or not isinstance(expires, (int, float)) or expires < time.time():
            return None
        return state
