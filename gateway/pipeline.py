"""The gateway's side of the pipeline: the directory ROUTER, call pinning, and messages to calls.

Transcoders and model_clients say Hello here. A new call is pinned to the least-loaded live
transcoder and model_client; the transcoder is told with CallStart and forwards it. What comes back
from the transcoders is turned into Twilio messages on the call's queue.
"""

from __future__ import annotations

import logging
import random
import time

import zmq.asyncio

from common import messages as m
from common.link import Peer, RouterLink, new_epoch
from common.logs import call_context
from common.settings import Settings
from gateway.calls import Call

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.epoch = new_epoch()
        self.calls: dict[str, Call] = {}
        self.unknown_call = 0
        self._ctx = zmq.asyncio.Context()
        self.router = RouterLink(self._ctx, settings.gateway_endpoint, settings.heartbeat_s, self.hello,
                                 self._on_batch, self._on_peer_lost)

    def hello(self) -> m.Hello:
        return m.Hello(m.ROLE_GATEWAY, self.epoch, 0, self.settings.gateway_endpoint)

    async def start(self) -> None:
        await self.router.start()

    async def stop(self) -> None:
        await self.router.stop()
        self._ctx.destroy(linger=0)

    # --- pinning ------------------------------------------------------------------------------

    def live(self, role: str) -> list[Peer]:
        return [p for p in self.router.peers.values() if p.role == role]

    def _least_loaded(self, role: str, exclude: bytes = b"") -> Peer | None:
        peers = [p for p in self.live(role) if p.route != exclude]
        if not peers:
            return None
        held: dict[bytes, int] = {}
        for call in self.calls.values():
            key = call.transcoder if role == m.ROLE_TRANSCODER else call.model.encode()
            held[key] = held.get(key, 0) + 1
        key = (lambda p: p.route) if role == m.ROLE_TRANSCODER else (lambda p: p.endpoint.encode())
        random.shuffle(peers)  # ties go anywhere, not always to the first
        return min(peers, key=lambda p: held.get(key(p), 0) / max(p.capacity, 1))

    def can_take_call(self) -> bool:
        return bool(self.live(m.ROLE_TRANSCODER)) and bool(self.live(m.ROLE_MODEL_CLIENT))

    def start_call(self, call: Call, params: dict) -> bool:
        transcoder = self._least_loaded(m.ROLE_TRANSCODER)
        model = self._least_loaded(m.ROLE_MODEL_CLIENT)
        if transcoder is None or model is None:
            return False
        call.transcoder, call.model = transcoder.route, model.endpoint
        self.calls[call.id] = call
        self.router.send(call.transcoder, m.CallStart(call.id, call.call_sid, call.stream_sid, params,
                                                      call.model, call.resume_handle, False))
        log.info("pinned to transcoder %s and model_client %s", transcoder.route.decode(), call.model)
        return True

    # --- calls → pipeline ---------------------------------------------------------------------

    def caller_audio(self, call: Call, ulaw: bytes, ts: int) -> None:
        call.seq_in += 1
        self.router.send(call.transcoder, m.AudioIn(call.id, call.seq_in, time.monotonic_ns(), ulaw, ts))

    def send(self, call: Call, msg) -> None:
        self.router.send(call.transcoder, msg)

    def end_call(self, call: Call, reason: str) -> None:
        if self.calls.pop(call.id, None) is None:
            return
        end = m.CallEnd(call.id, reason)
        if call.transcoder in self.router.peers:
            self.router.send(call.transcoder, end)
        else:  # no transcoder to carry it: tell the model_client over the directory
            for peer in self.live(m.ROLE_MODEL_CLIENT):
                if peer.endpoint == call.model:
                    self.router.send(peer.route, end)

    # --- pipeline → calls ---------------------------------------------------------------------

    def _on_batch(self, peer: Peer, batch: list) -> None:
        for msg in batch:
            call = self.calls.get(msg.call)
            if call is None:
                self.unknown_call += 1
                continue
            with call_context(call.id):
                self._dispatch(call, msg)

    def _dispatch(self, call: Call, msg) -> None:
        if isinstance(msg, m.AudioOut):
            call.send_audio(msg.audio, msg.turn)
        elif isinstance(msg, m.TurnDone):
            call.send_mark(msg.turn)
        elif isinstance(msg, m.Interrupt):
            log.info("barge-in: turn %d cleared", msg.turn)
            call.clear(msg.turn)
        elif isinstance(msg, m.Transcript):
            log.log(logging.INFO if msg.final else logging.DEBUG, "%s: %s", msg.role, msg.text)
        elif isinstance(msg, m.Resumption):
            call.resume_handle = msg.handle
        elif isinstance(msg, m.CallEnd):
            log.info("pipeline ended the call: %s", msg.reason)
            self.calls.pop(call.id, None)
            call.close()
        else:
            log.error("unexpected %s from the pipeline dropped", type(msg).__name__)

    def _on_peer_lost(self, peer: Peer) -> None:
        for call in list(self.calls.values()):
            with call_context(call.id):
                if peer.role == m.ROLE_TRANSCODER and call.transcoder == peer.route:
                    self._repin(call)
                elif peer.role == m.ROLE_MODEL_CLIENT and call.model == peer.endpoint:
                    log.error("model_client %s lost: call ended", peer.endpoint)
                    self.end_call(call, "model_client lost")
                    call.close()

    def _repin(self, call: Call) -> None:
        """A transcoder died: its per-call state is rebuilt on another from the next frame on."""
        other = self._least_loaded(m.ROLE_TRANSCODER, exclude=call.transcoder)
        if other is None:
            log.error("transcoder lost and no other is live: call ended")
            self.end_call(call, "no transcoder")
            call.close()
            return
        call.transcoder = other.route
        self.router.send(other.route, m.CallStart(call.id, call.call_sid, call.stream_sid, {}, call.model,
                                                  call.resume_handle, True))
        log.warning("transcoder lost: call re-pinned to %s", other.route.decode())
