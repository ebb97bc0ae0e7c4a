"""What the live model_clients say about their Gemini backend, read from their latest ``Stats``
(model_client/backend_check.py keeps it; a change is reported at once).

Two questions, asked differently on purpose:

- ``not_ready``: is a call sure to find a working backend? Only if some model_client says "up".
  ``/readyz`` answers 503 otherwise, so a load balancer sends callers elsewhere while we start or
  while Gemini is away.
- ``down``: is a call sure to find none? Only if every live model_client says "down". ``/twiml`` then
  answers at once (the fallback number, or the apology) instead of a stream that would fail. A
  model_client still checking, or not heard from yet (a gateway just restarted), gets the call.

``/healthz`` stays about our own processes (a liveness probe must not restart a gateway because Google
is away) and shows each model_client's backend beside it.
"""

from __future__ import annotations

from typing import NamedTuple

from common import messages as m

UNKNOWN = "unknown"  # no Stats from this model_client yet
KNOWN = (m.BACKEND_CHECKING, m.BACKEND_UP, *m.BACKEND_DOWN)
MAX_WHY = 200


class Backend(NamedTuple):
    model_client: str  # its endpoint
    state: str  # one of KNOWN, or UNKNOWN
    why: str


def backends(pipeline) -> list[Backend]:
    """Each live model_client's backend. A state outside the schema's words reads as UNKNOWN."""
    out = []
    for peer in pipeline.live(m.ROLE_MODEL_CLIENT):
        stats = pipeline.peer_stats.get(peer.route)
        state = stats[1].backend if stats is not None else UNKNOWN
        why = stats[1].backend_why[:MAX_WHY] if stats is not None else ""
        out.append(Backend(peer.endpoint, state if state in KNOWN else UNKNOWN, why))
    return out


def not_ready(found: list[Backend]) -> str:
    """Why a call may not find a working backend, or "" if one model_client has one."""
    if any(b.state == m.BACKEND_UP for b in found):
        return ""
    return "no model_client has a working Gemini backend" + describe(found)


def down(found: list[Backend]) -> str:
    """Why Gemini is down for every live model_client, or "" unless it is."""
    if not found or not all(b.state in m.BACKEND_DOWN for b in found):
        return ""
    return "Gemini is down" + describe(found)


def summary(found: list[Backend]) -> str:
    """One word for /healthz: "up" (some model_client has it), "down" (all say so) or "checking"."""
    return "up" if not not_ready(found) else "down" if down(found) else "checking"


def describe(found: list[Backend]) -> str:
    states = sorted({f"{b.state}: {b.why}" if b.why else b.state for b in found})
    return f" ({'; '.join(states)})" if states else ""
