"""The transcoder process: per-call codec and resampler state between the gateway and model_clients.

It binds nothing. It connects a DEALER to the gateway (the directory) and, per model_client endpoint
named in a CallStart, one cached DEALER to that model_client. Audio and control pass straight through;
everything that arrives in one wake-up is processed, then leaves as one batch per peer.
"""

from __future__ import annotations

import asyncio
import logging
import time

import zmq.asyncio

from common import messages as m
from common.curve import CurveKeys
from common.link import DealerLink, new_epoch
from common.logs import call_context, forget_call, register_call
from common.settings import Settings
from common.stats import FRAME_BUCKETS_US, LATENCY_BUCKETS_MS, STATS_INTERVAL_S, StageStats, watch_loop_lag
from transcoder.call_audio import CallAudio, caller_audio_many, model_audio_many

log = logging.getLogger(__name__)

CAPACITY = 1000  # calls; the gateway spreads calls by load, this is only an upper bound


class TranscoderStage:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.epoch = new_epoch()
        self.calls: dict[str, CallAudio] = {}
        self.models: dict[str, DealerLink] = {}
        self.unknown_call = 0  # messages for calls we don't hold (normal right after a call ends)
        self.unexpected = 0  # messages of a kind that peer never sends us (a bug on one side)
        self.stats = StageStats({"up_frame_us": FRAME_BUCKETS_US, "down_frame_us": FRAME_BUCKETS_US,
                                 "loop_lag_ms": LATENCY_BUCKETS_MS})
        self._reporter: asyncio.Task | None = None
        self._lag: asyncio.Task | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._gateway: DealerLink | None = None
        self._stopped = asyncio.Event()

    def hello(self) -> m.Hello:
        return m.Hello(role=m.ROLE_TRANSCODER, epoch=self.epoch, capacity=CAPACITY, endpoint="")

    async def start(self) -> None:
        self._ctx = zmq.asyncio.Context()
        self._gateway = DealerLink(self._ctx, self.settings.gateway_endpoint, self.settings.heartbeat_s,
                                   self.hello, lambda: len(self.calls), self._from_gateway,
                                   self._gateway_restarted, curve=CurveKeys.from_settings(self.settings),
                                   runs=True)
        await self._gateway.start()
        self._reporter = asyncio.create_task(self._report_loop(), name="stats-report")
        self._lag = asyncio.create_task(watch_loop_lag(self.stats.histograms["loop_lag_ms"]), name="loop-lag")

    async def _report_loop(self) -> None:
        """The gateway's /metrics: per-frame DSP time, frames, calls held (common/stats.py)."""
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            self.stats.gauges["calls"] = len(self.calls)
            self.stats.counters["unknown_call"] = self.unknown_call
            self.stats.counters["unexpected"] = self.unexpected
            self.stats.count_links([self._gateway, *self.models.values()])
            self._gateway.send(self.stats.message())

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        if self._ctx is None:
            return
        self._stopped.set()
        for task in (self._reporter, self._lag):
            if task is not None:
                task.cancel()
        log.info("stopping with %d calls held", len(self.calls))
        for link in [self._gateway, *self.models.values()]:
            await link.stop()
        self._ctx.destroy(linger=0)
        self._ctx = None

    def _model_link(self, endpoint: str) -> DealerLink:
        link = self.models.get(endpoint)
        if link is None:
            link = DealerLink(self._ctx, endpoint, self.settings.heartbeat_s, self.hello,
                              lambda: len(self.calls), self._from_model,
                              curve=CurveKeys.from_settings(self.settings), runs=True)
            self.models[endpoint] = link
            asyncio.ensure_future(link.start())
        return link

    # --- gateway → model_client ---------------------------------------------------------------

    def _from_gateway(self, batch: list) -> None:
        self._dispatch(batch, m.AudioIn, self._caller_audio, self._control_from_gateway, "gateway")

    def _dispatch(self, batch: list, audio_type: type, on_audio, on_control, source: str) -> None:
        """Audio comes in runs (common/messages.py), each filtered as one block; a lone audio message
        is a run of one. Order within a call is kept: a run never holds a call twice."""
        for msg in batch:
            if type(msg) is audio_type:
                on_audio(m.AudioRun.of([msg]))
            elif type(msg) is m.AudioRun and msg.kind == audio_type.TAG:
                on_audio(msg)
            elif type(msg) is m.AudioRun:
                self._unexpected(msg, source)
            else:
                on_control(msg)

    def _caller_audio(self, run: m.AudioRun) -> None:
        run, audios = self._held(run)
        if not audios:
            return
        started = time.perf_counter()
        pcm, sizes = caller_audio_many(audios, run.audio, run.sizes)
        self._timed("up", started, len(audios))
        up = m.AudioRun(kind=m.AudioUp.TAG, calls=run.calls, seqs=[a.seq_up for a in audios], t_ins=run.t_ins,
                        sizes=sizes, audio=pcm, extra=[])
        models = {a.model for a in audios}
        if len(models) == 1:
            self.models[audios[0].model].send(up)
            return
        for model in models:  # several model_clients: each gets its calls' share
            self.models[model].send(up.take([i for i, a in enumerate(audios) if a.model == model]))

    def _unexpected(self, msg, source: str) -> None:
        self.unexpected += 1
        kind = f"run of {m.TYPES[msg.kind].__name__}" if type(msg) is m.AudioRun else type(msg).__name__
        log.error("unexpected %s from the %s dropped", kind, source)

    def _held(self, run: m.AudioRun) -> tuple[m.AudioRun, list[CallAudio]]:
        """The run less its messages for calls not held here (counted), and the held calls' state."""
        audios = [self.calls.get(call) for call in run.calls]
        if None in audios:
            held = [i for i, audio in enumerate(audios) if audio is not None]
            self.unknown_call += len(audios) - len(held)
            run, audios = run.take(held), [audios[i] for i in held]
        return run, audios

    def _timed(self, direction: str, started: float, frames: int) -> None:
        if frames:
            self.stats.histograms[f"{direction}_frame_us"].observe(
                (time.perf_counter() - started) * 1e6 / frames)
            self.stats.count(f"frames_{direction}", frames)

    def _control_from_gateway(self, msg) -> None:
        if isinstance(msg, m.CallStart):
            self._handle_call_start(msg)
            return
        audio = self.calls.get(msg.call)
        if audio is None:
            self.unknown_call += 1
            return
        if isinstance(msg, (m.Played, m.Dtmf)):
            self.models[audio.model].send(msg)
        elif isinstance(msg, m.CallEnd):
            self.models[audio.model].send(msg)
            self._free(msg.call, msg.reason)
        else:
            self._unexpected(msg, "gateway")

    def _handle_call_start(self, msg: m.CallStart) -> None:
        register_call(msg.call, msg.call_sid, msg.stream_sid)
        with call_context(msg.call):
            held = self.calls.get(msg.call)
            if held is not None and msg.resume:
                self._switch_model(held, msg)
                return
            if held is not None:
                log.warning("CallStart for a call already held: state rebuilt")
            self.calls[msg.call] = CallAudio(msg.call, msg.model, self.settings.resampler)
            self._model_link(msg.model).send(msg)
            log.info("call pinned here (model_client %s); %d calls held", msg.model, len(self.calls))

    def _switch_model(self, audio: CallAudio, msg: m.CallStart) -> None:
        """The call's model_client died and the gateway moved the call to another: the down direction
        keeps its state, the caller's audio goes to the new endpoint from now on. If the old one was
        only slow, not dead, it must let the call go, or the caller would hear two sessions."""
        if audio.model != msg.model:
            self.models[audio.model].send(m.CallEnd(call=msg.call, reason="moved to another model_client"))
            log.warning("call moved from model_client %s to %s", audio.model, msg.model)
        audio.model = msg.model
        audio.up.reset()  # the gateway replays earlier audio next: no filter state may bridge the jump
        link = self.models.get(msg.model)
        if link is not None and link.sock is None:
            # Backing off after that endpoint fell silent (its process restarting): what is sent now
            # would be dropped. A fresh link queues it until the new process binds the endpoint.
            asyncio.ensure_future(link.stop())
            self.stats.link_closed(link)
            del self.models[msg.model]
        self._model_link(msg.model).send(msg)

    def _free(self, call: str, reason: str) -> None:
        with call_context(call):
            del self.calls[call]
            log.info("call ended (%s); %d calls held", reason, len(self.calls))
        forget_call(call)

    def _gateway_restarted(self, old_epoch: str) -> None:
        # Every call we hold belonged to the old gateway's WebSockets, which are gone.
        for call, audio in list(self.calls.items()):
            self.models[audio.model].send(m.CallEnd(call=call, reason="gateway restarted"))
            self._free(call, "gateway restarted")

    # --- model_client → gateway ---------------------------------------------------------------

    def _from_model(self, batch: list) -> None:
        self._dispatch(batch, m.AudioDown, self._model_audio, self._control_from_model, "model_client")

    def _model_audio(self, run: m.AudioRun) -> None:
        run, audios = self._held(run)
        if not audios:
            return
        started = time.perf_counter()
        ulaw, sizes = model_audio_many(audios, run.audio, run.sizes, run.extra)
        self._timed("down", started, len(audios))
        out = m.AudioRun(kind=m.AudioOut.TAG, calls=run.calls, seqs=[a.seq_down for a in audios],
                         t_ins=run.t_ins, sizes=sizes, audio=ulaw, extra=run.extra)
        if 0 in sizes:  # an interrupted turn's chunk, or one too short to give a sample yet
            out = out.take([i for i, size in enumerate(sizes) if size])
        if out.calls:
            self._gateway.send(out)

    def _control_from_model(self, msg) -> None:
        gateway = self._gateway
        audio = self.calls.get(msg.call)
        if audio is None:
            self.unknown_call += 1
            return
        if isinstance(msg, m.TurnDone):
            tail = audio.turn_done(msg.turn)
            if tail:
                gateway.send(m.AudioOut(call=msg.call, seq=audio.seq_down, t_in=time.monotonic_ns(),
                                        audio=tail, turn=msg.turn))
            gateway.send(msg)
        elif isinstance(msg, m.Interrupt):
            audio.interrupt(msg.turn)
            gateway.send(msg)
        elif isinstance(msg, m.CallEnd):
            gateway.send(msg)
            self._free(msg.call, msg.reason)
        else:  # Transcript, Resumption, Action: the gateway's business
            gateway.send(msg)
