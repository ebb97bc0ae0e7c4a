"""The gateway's side of the pipeline: the directory ROUTER, call pinning, and messages to calls.

Transcoders and model_clients say Hello here. A new call is pinned to the least-loaded live
transcoder and model_client; the transcoder is told with CallStart and forwards it. What comes back
from the transcoders is turned into Twilio messages on the call's queue.

Faults: the ROUTER's socket monitor reports a killed peer at once (heartbeats catch the
rest). A lost transcoder's calls are re-pinned to another; a lost model_client's calls are
re-assigned to another with their latest resumption handle. With none of that role live, a call
waits up to ``reassign_wait_s`` for one (supervisord restarts it). Either way the call's kept caller
audio (gateway/replay.py) follows the CallStart. Those moves are in gateway/failover.py; the sessions
opened before their stream (pre-warm, outbound calls) in gateway/prewarm.py.
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
from gateway.calls import Call, age_ms
from gateway.call_state import make_call_state, transcript_pointer
from gateway.failover import Failover
from gateway.hold import sound_from
from gateway.prewarm import Prewarm
from gateway.replay import CallerRing

# Who cut the model off (the ``source`` label of bridge_barge_ins_total, and the transcript's
# ``interrupted_by``): Gemini's own ``interrupted``; the bridge's detector on the caller's audio
# (model_client/barge.py, CallerSpeech "vad"); Gemini's voice-activity start while the caller still
# hears a turn Gemini has finished generating (CallerSpeech "gemini").
BARGE_SOURCES = {"interrupted": "gemini_interrupted", "vad": "bridge_detector", "gemini": "gemini_activity"}

log = logging.getLogger(__name__)


class Pipeline(Failover, Prewarm):
    def __init__(self, settings: Settings):
        self.settings = settings
        self.epoch = new_epoch()
        self.calls: dict[str, Call] = {}
        self.prewarmed: dict[str, tuple[str, float]] = {}  # call id -> (model endpoint, deadline)
        # call id -> what an outbound call's CallStarts carry (gateway/outbound.py), until it ends
        self.openings: dict[str, m.CallStart] = {}
        self.state = make_call_state(settings.redis_url)  # dispositions, handles: gateway/call_state.py
        self.hold_sound = sound_from(settings.hold_audio)  # a bad BRIDGE_HOLD_AUDIO stops the gateway here
        self.unknown_call = 0
        self.barge_ins = dict.fromkeys(BARGE_SOURCES.values(), 0)  # by who cut the model off
        self.moves = {"repinned": 0, "reassigned": 0, "replayed_frames": 0, "lost_no_peer": 0}
        self.outcomes: dict[str, int] = {}  # calls ended, by why (gateway/metrics.py)
        self.tokens: dict[str, int] = {}  # model tokens of ended calls, "<direction>_<modality>" (gateway/usage.py)
        self.down_hop = Histogram(LATENCY_BUCKETS_MS)  # model_client received it → the gateway has it
        self.loop_lag = Histogram(LATENCY_BUCKETS_MS)  # how late this loop runs a timer (common/stats.py)
        self.peer_stats: dict[bytes, tuple[Peer, m.Stats]] = {}  # each live peer's latest Stats
        self.on_transcript = lambda call, msg: None  # set by gateway/phone.py when /phone is on
        self.on_call_start = lambda call: None  # set by gateway/outbound.py: its calls' streams
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
        self.router.send(call.transcoder, self._opening(m.CallStart(
            call=call.id, call_sid=call.call_sid, stream_sid=call.stream_sid, params=params, model=call.model,
            resume_handle=call.resume_handle, resume=False, turn=known.turn, age_ms=age_ms(call.began))))
        log.info("pinned to transcoder %s and model_client %s", transcoder.route.decode(), call.model)
        self.on_call_start(call)
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
        if known.transcript and known.transcript != here:
            log.info("transcript continues from %s", known.transcript)
        first = {"transcript": here} if not known.transcript else {}
        if not known.began:
            first["began"] = time.time()
        if first:
            known = self.state.update(call.call_sid, **first)
        call.began = known.began
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
        self.openings.pop(call.id, None)
        self._stream_gone(call)
        self._ended(call.end_reason or reason)
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

    def count_ended(self, reason: str) -> None:
        """A call that ended before any stream of it started (an outbound call nobody answered)."""
        self._ended(reason)

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
            self._barge_in(call, "interrupted")
        elif isinstance(msg, m.CallerSpeech):
            call.caller_spoke = True
            if call.hold is not None:
                call.hold.stop("the caller speaks")
            if call.playout.playing:  # the model finished generating; the caller still hears it
                self._barge_in(call, msg.source)
        elif isinstance(msg, m.Transcript):
            self.on_transcript(call, msg)
            if msg.role == "caller":
                call.transcript.caller(msg.text, msg.final)
            elif msg.role == "line":
                call.transcript.line(msg.text)
            else:
                call.transcript.model(msg.turn, msg.text)
        elif isinstance(msg, m.Resumption):
            call.resume_handle = msg.handle
            call.ring.covered(msg.upto)
            self.state.update(call.call_sid, handle=msg.handle,
                              turn=max(call.playout.latest, call.playout.cleared_turn))
        elif isinstance(msg, m.Action):
            self._action(call, msg)
        elif isinstance(msg, m.Usage):
            if not call.usage.update(msg):
                log.error("malformed token usage dropped: %.200r", msg.tokens)
        elif isinstance(msg, m.CallEnd):
            log.info("pipeline ended the call: %s", msg.reason)
            self._ended(call.end_reason or msg.reason)
            self.calls.pop(call.id, None)
            self.openings.pop(call.id, None)
            self._stream_gone(call)
            call.close()
        else:
            log.error("unexpected %s from the pipeline dropped", type(msg).__name__)

    def _barge_in(self, call: Call, why: str) -> None:
        """``why``: "interrupted" (Gemini's) or a CallerSpeech source."""
        if not call.playout.playing and not call.playout.generating:
            return
        source = BARGE_SOURCES.get(why, "other")  # a newer model_client's source: counted, not lost
        self.barge_ins[source] = self.barge_ins.get(source, 0) + 1
        turn = call.barge_in(source)
        log.info("barge-in (%s): turn %d cleared", source, turn)

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


def outcome_of(reason: str) -> str:
    """A call's end reason as a metric label: the words before any detail ("model closed the session
    (1008: …)" → "model closed the session"), so the label set stays small."""
    head = reason.split("(", 1)[0].split(":", 1)[0].strip().lower()
    return head[:40] or "unknown"
