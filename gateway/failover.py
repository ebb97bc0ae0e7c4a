"""The gateway's failover: moving calls off a transcoder or model_client that was lost.

A lost transcoder's calls are re-pinned to another, a lost model_client's re-assigned to another
that resumes their Gemini sessions; with none of that role live a call waits for one, its caller
audio kept, and ends if none comes in time. ``Failover`` is mixed into ``Pipeline``
(gateway/pipeline.py) and works on its peers, calls and counters (declared below); it is apart so
that the normal path of a call and what happens when a process dies can each be read whole.
"""

from __future__ import annotations

import asyncio
import logging
import time

from common import messages as m
from common.link import Peer, RouterLink
from common.logs import call_context
from common.settings import Settings
from gateway.calls import Call, age_ms

REPIN_REPLAY_MARGIN_S = 0.5  # a re-pin replays audio sent since this long before the transcoder was last heard

log = logging.getLogger(__name__)


class Failover:
    """Moves calls off a lost peer. Besides the attributes below it uses ``Pipeline``'s ``live``,
    ``_least_loaded``, ``_opening`` and ``end_call``."""

    settings: Settings
    router: RouterLink
    calls: dict[str, Call]
    peer_stats: dict[bytes, tuple[Peer, m.Stats]]
    moves: dict[str, int]

    def _on_peer_lost(self, peer: Peer) -> None:
        self.peer_stats.pop(peer.route, None)
        for call in list(self.calls.values()):
            with call_context(call.id):
                if peer.role == m.ROLE_TRANSCODER and call.transcoder == peer.route:
                    self._repin(call, peer.last_seen)
                elif peer.role == m.ROLE_MODEL_CLIENT and call.model == peer.endpoint:
                    self._reassign(call)

    def _repin(self, call: Call, last_seen: float = 0.0) -> None:
        """A transcoder died: its per-call state is rebuilt on another from the kept audio on. It was
        alive when last heard from, so only audio sent since shortly before then can be missing."""
        other = self._least_loaded(m.ROLE_TRANSCODER, exclude=call.transcoder)
        if other is None:
            self._wait_for_peer(call, "transcoder")
            call.transcoder = b""
            return
        log.warning("%s: call re-pinned to %s", "transcoder lost" if call.transcoder else
                    "a transcoder is live again", other.route.decode())
        call.transcoder = other.route
        self.moves["repinned"] += 1
        if call.model:  # else the CallStart goes out once a model_client takes the call
            self._move(call, since_ns=int((last_seen - REPIN_REPLAY_MARGIN_S) * 1e9))

    def _reassign(self, call: Call) -> None:
        """Its model_client died: another resumes the Gemini session from the call's latest handle."""
        call.turn_done(call.playout.latest)  # that turn will get no more audio: let it play out
        other = self._least_loaded(m.ROLE_MODEL_CLIENT)
        if other is None:
            self._wait_for_peer(call, "model_client")
            call.model = ""
            return
        log.warning("%s: call moves to %s (%s)",
                    f"model_client {call.model} lost" if call.model else "a model_client is live again",
                    other.endpoint, "resuming" if call.resume_handle else "no handle yet: fresh session")
        call.model = other.endpoint
        self.moves["reassigned"] += 1
        if call.transcoder:  # else the CallStart goes out once a transcoder takes the call
            self._move(call)

    def _wait_for_peer(self, call: Call, role: str) -> None:
        """None of ``role`` is live (one process, restarting; or all silent under load): the call
        waits for one, its caller audio kept in the ring."""
        if not call.orphaned:
            log.warning("%s lost, none live: waiting up to %g s for one", role, self.settings.reassign_wait_s)
            call.orphaned = time.monotonic()

    def _move(self, call: Call, since_ns: int = 0) -> None:
        """Tell the call's transcoder where the call now lives, then replay the kept caller audio (from
        ``since_ns`` on: the model_client drops what it already has, so more is only wasted work)."""
        turn = max(call.playout.latest, call.playout.cleared_turn)
        self.router.send(call.transcoder, self._opening(m.CallStart(
            call=call.id, call_sid=call.call_sid, stream_sid=call.stream_sid, params=call.params,
            model=call.model, resume_handle=call.resume_handle, resume=True, turn=turn, age_ms=age_ms(call.began))))
        frames = call.ring.frames(since_ns)
        for msg in frames:
            self.router.send(call.transcoder, msg)
        self.moves["replayed_frames"] += len(frames)
        if frames:
            log.info("replayed %d frames (%d ms) of caller audio", len(frames), 20 * len(frames))

    def _give_up(self, call: Call, reason: str) -> None:
        self.moves["lost_no_peer"] += 1
        self.end_call(call, reason)
        call.close()

    async def _orphan_loop(self) -> None:
        """Calls waiting for a transcoder or a model_client: take one as soon as one is live, or give up."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_s / 2)
            for call in [c for c in self.calls.values() if not c.model or not c.transcoder]:
                with call_context(call.id):
                    if time.monotonic() - call.orphaned > self.settings.reassign_wait_s:
                        log.error("no %s came back within %g s: call ended",
                                  "transcoder" if not call.transcoder else "model_client",
                                  self.settings.reassign_wait_s)
                        self._give_up(call, "transcoder lost" if not call.transcoder else "model_client lost")
                        continue
                    if not call.transcoder and self.live(m.ROLE_TRANSCODER):
                        self._repin(call)
                    if not call.model and self.live(m.ROLE_MODEL_CLIENT):
                        self._reassign(call)
                    if call.model and call.transcoder:
                        call.orphaned = 0.0
