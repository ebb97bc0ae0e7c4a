"""The gateway's side of the pipeline: the directory ROUTER, call pinning, and messages to calls.

Transcoders and model_clients say Hello here. A new call is pinned to the least-loaded live
transcoder and model_client; the transcoder is told with CallStart and forwards it. What comes back
from the transcoders is turned into Twilio messages on the call's queue.

Faults: the ROUTER's socket monitor reports a killed peer at once (heartbeats catch the
rest). A lost transcoder's calls are re-pinned to another; a lost model_client's calls are
re-assigned to another with their latest resumption handle. With none of that role live, a call
waits up to ``reassign_wait_s`` for one (supervisord restarts it). Either way the call's kept caller
audio (gateway/replay.py) follows the CallStart.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import zmq.asyncio

from common import messages as m
from common.lifecycle import cancel_all, spawn
from common.curve import CurveKeys
from common.link import Peer, RouterLink, new_epoch
from common.logs import call_context
from common.settings import Settings
from common.stats import LATENCY_BUCKETS_MS, Histogram, watch_loop_lag
from gateway.calls import Call
from gateway.call_state import make_call_state, transcript_pointer
from gateway.hold import sound_from
from gateway.replay import CallerRing

PREWARM_TTL_S = 60.0  # a pre-warmed session whose stream never came is closed after this
REPIN_REPLAY_MARGIN_S = 0.5  # a re-pin replays audio sent since this long before the transcoder was last heard

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.epoch = new_epoch()
        self.calls: dict[str, Call] = {}
        self.prewarmed: dict[str, tuple[str, float]] = {}  # call id -> (model endpoint, deadline)
        self.state = make_call_state(settings.redis_url)  # dispositions, handles: gateway/call_state.py
        self.hold_sound = sound_from(settings.hold_audio)  # a bad BRIDGE_HOLD_AUDIO stops the gateway here
        self.unknown_call = 0
        self.barge_ins = 0
        self.moves = {"repinned": 0, "reassigned": 0, "replayed_frames": 0, "lost_no_peer": 0}
        self.outcomes: dict[str, int] = {}  # calls ended, by why (gateway/metrics.py)
        self.down_hop = Histogram(LATENCY_BUCKETS_MS)  # model_client received it → the gateway has it
        self.loop_lag = Histogram(LATENCY_BUCKETS_MS)  # how late this loop runs a timer (common/stats.py)
        self.peer_stats: dict[bytes, tuple[Peer, m.Stats]] = {}  # each live peer's latest Stats
        self.on_transcript = lambda call, msg: None  # set by gateway/phone.py when /phone is on
        self._tasks: set[asyncio.Task] = set()
        self._ctx = zmq.asyncio.Context()
        self.router = RouterLink(self._ctx, settings.gateway_endpoint, settings.heartbeat_s, self.hello,
                                 self._on_batch, self._on_peer_lost, curve=CurveKeys.from_settings(settings),
                                 monitor=True)

    def hello(self) -> m.Hello:
        return m.Hello(role=m.ROLE_GATEWAY, epoch=self.epoch, capacity=0,
                       endpoint=self.settings.gateway_endpoint)

    async def start(self) -> None:
        await self.state.start()
        await self.router.start()
        spawn(self._sweep_loop(), "prewarm-sweep", self._tasks)
        spawn(self._orphan_loop(), "orphan-sweep", self._tasks)
        spawn(watch_loop_lag(self.loop_lag), "loop-lag", self._tasks)

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        await self.router.stop()
        self._ctx.destroy(linger=0)
        await self.state.stop()

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

    def prewarm(self, call_id: str, call_sid: str) -> None:
        """Open the call's Gemini session now, while the phone rings, so no caller waits for it."""
        model = self._least_loaded(m.ROLE_MODEL_CLIENT)
        if model is None:
            return
        self.prewarmed[call_id] = (model.endpoint, time.monotonic() + PREWARM_TTL_S)
        known = self.state.get(call_sid)  # a call resuming on a fresh stream carries on its session
        self.router.send(model.route, m.CallStart(call=call_id, call_sid=call_sid, stream_sid="", params={},
                                                  model=model.endpoint, resume_handle=known.handle,
                                                  resume=False, turn=known.turn))

    def _model_for(self, call_id: str) -> str:
        endpoint, _ = self.prewarmed.pop(call_id, ("", 0.0))
        if endpoint and any(p.endpoint == endpoint for p in self.live(m.ROLE_MODEL_CLIENT)):
            return endpoint
        model = self._least_loaded(m.ROLE_MODEL_CLIENT)
        return model.endpoint if model else ""

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            now = time.monotonic()
            for call_id, (endpoint, deadline) in list(self.prewarmed.items()):
                if deadline < now:
                    with call_context(call_id):
                        log.info("pre-warmed session unused (no stream came): closed")
                    self.drop_prewarm(call_id, "stream never started")

    def drop_prewarm(self, call_id: str, reason: str) -> None:
        """End a pre-warmed session whose stream will not come."""
        endpoint, _ = self.prewarmed.pop(call_id, ("", 0.0))
        if endpoint:
            self._tell_model(endpoint, m.CallEnd(call=call_id, reason=reason))

    def _tell_model(self, endpoint: str, msg) -> None:
        for peer in self.live(m.ROLE_MODEL_CLIENT):
            if peer.endpoint == endpoint:
                self.router.send(peer.route, msg)

    def start_call(self, call: Call, params: dict) -> bool:
        transcoder = self._least_loaded(m.ROLE_TRANSCODER)
        model = self._model_for(call.id)
        if transcoder is None or not model:
            return False
        call.transcoder, call.model = transcoder.route, model
        call.params, call.ring = params, CallerRing(self.settings.replay_s)
        call.start_hold(self.hold_sound, self.settings.hold_after_ms / 1000)
        self.calls[call.id] = call
        self.state.stream_started(call.call_sid)
        known = self._carry_on(call)
        self.router.send(call.transcoder, m.CallStart(call=call.id, call_sid=call.call_sid,
                                                      stream_sid=call.stream_sid, params=params,
                                                      model=call.model, resume_handle=call.resume_handle,
                                                      resume=False, turn=known.turn))
        log.info("pinned to transcoder %s and model_client %s", transcoder.route.decode(), call.model)
        return True

    def _carry_on(self, call: Call):
        """A fresh stream of a call that was already going (its stream died): resume its Gemini
        session from the kept handle, and say where the call's transcript began."""
        known = self.state.get(call.call_sid)
        here = transcript_pointer(call.transcript.path)
        if known.handle:
            call.resume_handle = known.handle
            log.info("the call carries on: its Gemini session resumes from the kept handle (turn %d)",
                     known.turn)
        if not known.transcript:
            self.state.update(call.call_sid, transcript=here)
        elif known.transcript != here:
            log.info("transcript continues from %s", known.transcript)
        return known

    # --- calls → pipeline ---------------------------------------------------------------------

    def caller_audio(self, call: Call, ulaw: bytes, ts: int) -> None:
        call.seq_in += 1
        msg = m.AudioIn(call=call.id, seq=call.seq_in, t_in=time.monotonic_ns(), audio=ulaw, ts=ts)
        call.ring.add(msg)
        if call.model and call.transcoder:  # else kept in the ring until the call has both again
            self.router.send(call.transcoder, msg)

    def send(self, call: Call, msg) -> None:
        if call.transcoder:  # a mark or digit while the call waits for a transcoder is lost
            self.router.send(call.transcoder, msg)

    def end_call(self, call: Call, reason: str) -> None:
        if self.calls.pop(call.id, None) is None:
            return
        self._stream_gone(call)
        self._ended(reason)
        end = m.CallEnd(call=call.id, reason=reason)
        if call.transcoder in self.router.peers:
            self.router.send(call.transcoder, end)
        else:  # no transcoder to carry it: tell the model_client over the directory
            self._tell_model(call.model, end)

    def _stream_gone(self, call: Call) -> None:
        """Once no stream of the call is left here, its kept state may go (gateway/call_state.py)."""
        if all(other.call_sid != call.call_sid for other in self.calls.values()):
            self.state.stream_ended(call.call_sid)

    # --- pipeline → calls ---------------------------------------------------------------------

    def _ended(self, reason: str) -> None:
        outcome = outcome_of(reason)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _on_batch(self, peer: Peer, batch: list) -> None:
        for msg in batch:
            if isinstance(msg, m.Stats):
                self.peer_stats[peer.route] = (peer, msg)
                continue
            call = self.calls.get(msg.call)
            if call is None:
                if isinstance(msg, m.CallEnd) and self.prewarmed.pop(msg.call, None):
                    with call_context(msg.call):
                        log.warning("pre-warmed session failed (%s); the stream will open a new one",
                                    msg.reason)
                else:
                    self.unknown_call += 1
                continue
            with call_context(call.id):
                self._dispatch(call, msg)

    def _dispatch(self, call: Call, msg) -> None:
        if isinstance(msg, m.AudioOut):
            self.down_hop.observe((time.monotonic_ns() - msg.t_in) / 1e6)
            call.send_audio(msg.audio, msg.turn)
        elif isinstance(msg, m.TurnDone):
            call.turn_done(msg.turn)
        elif isinstance(msg, m.Interrupt):
            self._barge_in(call, "the model was interrupted")
        elif isinstance(msg, m.CallerSpeech):
            if call.hold is not None:
                call.hold.stop("the caller speaks")
            if call.playout.playing:  # the model finished generating; the caller still hears it
                self._barge_in(call, f"the caller spoke over playback ({msg.source})")
        elif isinstance(msg, m.Transcript):
            self.on_transcript(call, msg)
            if msg.role == "caller":
                call.transcript.caller(msg.text, msg.final)
            elif msg.role == "line":
                call.transcript.event(msg.text)
            else:
                call.transcript.model(msg.turn, msg.text)
        elif isinstance(msg, m.Resumption):
            call.resume_handle = msg.handle
            call.ring.covered(msg.upto)
            self.state.update(call.call_sid, handle=msg.handle,
                              turn=max(call.playout.latest, call.playout.cleared_turn))
        elif isinstance(msg, m.Action):
            self._action(call, msg)
        elif isinstance(msg, m.CallEnd):
            log.info("pipeline ended the call: %s", msg.reason)
            self._ended(msg.reason)
            self.calls.pop(call.id, None)
            self._stream_gone(call)
            call.close()
        else:
            log.error("unexpected %s from the pipeline dropped", type(msg).__name__)

    def _barge_in(self, call: Call, why: str) -> None:
        if not call.playout.playing and not call.playout.generating:
            return
        self.barge_ins += 1
        turn = call.barge_in()
        log.info("barge-in (%s): turn %d cleared", why, turn)

    def _action(self, call: Call, msg: m.Action) -> None:
        if msg.kind == "hold":
            if call.hold is not None:
                call.hold.waiting(on=msg.target == "on")
            return
        if msg.kind == "stalled":  # the model_client gave up on the model: /twiml/after apologises, resumes
            self.state.update(call.call_sid, disposition="stalled", target="")
            log.warning("the model stalled: ending the stream for /twiml/after")
            call.close()
            return
        if msg.kind == "hangup":
            self.state.update(call.call_sid, disposition="hangup", target="")
        elif msg.kind == "transfer" and self.settings.transfer_allowed(msg.target):
            self.state.update(call.call_sid, disposition="transfer", target=msg.target)
        else:
            log.error("action %s %r refused", msg.kind, msg.target)
            return
        log.info("%s requested%s: leaving once playback ends", msg.kind,
                 f" to {msg.target}" if msg.target else "")
        call.leave_after_playback()

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
        self.router.send(call.transcoder, m.CallStart(call=call.id, call_sid=call.call_sid,
                                                      stream_sid=call.stream_sid, params=call.params,
                                                      model=call.model, resume_handle=call.resume_handle,
                                                      resume=True, turn=turn))
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


def outcome_of(reason: str) -> str:
    """A call's end reason as a metric label: the words before any detail ("model closed the session
    (1008: …)" → "model closed the session"), so the label set stays small."""
    head = reason.split("(", 1)[0].split(":", 1)[0].strip().lower()
    return head[:40] or "unknown"
