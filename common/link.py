"""ZeroMQ links between stages: batching, Hello/Heartbeat, liveness (the ZeroMQ Guide's Paranoid Pirate).

- ``RouterLink`` binds a ROUTER (the gateway's directory; each model_client's own endpoint). It keeps a
  table of peers from their Hello/Heartbeat, heartbeats them back, and reports a peer silent for
  ``LIVENESS`` intervals as lost. What a peer it does not know sends is held (bounded) until that
  peer says Hello, and dropped with a log line if it has not within ``LIVENESS`` intervals.
- ``DealerLink`` connects a DEALER to one ROUTER, says Hello on every (re)connect, heartbeats, and when
  the other side falls silent it closes the socket and reconnects with doubling backoff. A socket no
  one has answered yet is kept (ZeroMQ retries the connection; what waits in it is for the endpoint's
  next process). A changed epoch on the other side is reported: "everything that peer held is gone".

Both batch: messages queued during one event-loop pass leave as one ZeroMQ message per peer (or
sooner, once the oldest has waited ``FLUSH_AFTER_S``: a busy pass can last many milliseconds), and a
receive drains everything already queued before handing it on. Nothing waits for a timer to batch.
Sends never block: a full pipe drops the batch and counts it (``dropped``).

The pieces: the socket pass and batching both kinds share (common/link_socket.py), ``RouterLink``
with its table of peers (common/link_router.py), ``DealerLink`` with its reconnects
(common/link_dealer.py). Import them from here.
"""

from __future__ import annotations

import secrets

from common.link_dealer import DealerLink
from common.link_router import MAX_HELD, Peer, RouterLink
from common.link_socket import FLUSH_AFTER_S

__all__ = ["FLUSH_AFTER_S", "MAX_HELD", "DealerLink", "Peer", "RouterLink", "new_epoch"]


def new_epoch() -> str:
    return secrets.token_hex(6)
