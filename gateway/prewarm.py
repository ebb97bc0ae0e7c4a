"""Gemini sessions opened before their stream: pre-warmed at the webhook while the phone rings, and
what an outbound call's CallStarts carry (its instruction, greeting, and a greeting held until
answering-machine detection says who answered). ``Prewarm`` is mixed into ``Pipeline``
(gateway/pipeline.py) and works on its peers and calls (declared below); it is apart so that a call's
normal path reads whole there."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from common import messages as m
from common.link import RouterLink
from common.logs import call_context
from gateway.calls import Call, age_ms

PREWARM_TTL_S = 60.0  # a pre-warmed session whose stream never came is closed after this

log = logging.getLogger(__name__)


class Prewarm:
    """Sessions before streams. Besides the attributes below it uses ``Pipeline``'s ``live``,
    ``_least_loaded`` and ``state``."""

    router: RouterLink
    calls: dict[str, Call]
    prewarmed: dict[str, tuple[str, float]]  # call id -> (model endpoint, deadline)
    openings: dict[str, m.CallStart]  # call id -> what an outbound call's CallStarts carry, until it ends

    def prewarm(self, call_id: str, call_sid: str, opening: m.CallStart | None = None) -> None:
        """Open the call's Gemini session now, while the phone rings, so no caller waits for it.
        ``opening``: an outbound call's params, instruction, greeting and held greeting, which every
        CallStart of the call carries from now on."""
        if opening is not None:
            self.openings[call_id] = opening
        model = self._least_loaded(m.ROLE_MODEL_CLIENT)
        if model is None:
            return
        self.prewarmed[call_id] = (model.endpoint, time.monotonic() + PREWARM_TTL_S)
        known = self.state.get(call_sid)  # a call resuming on a fresh stream carries on its session
        self.router.send(model.route, self._opening(m.CallStart(
            call=call_id, call_sid=call_sid, stream_sid="", params={}, model=model.endpoint,
            resume_handle=known.handle, resume=False, turn=known.turn, age_ms=age_ms(known.began))))

    def _opening(self, start: m.CallStart) -> m.CallStart:
        """``start`` with what an outbound call brought (POST /calls), if it is one."""
        opening = self.openings.get(start.call)
        if opening is None:
            return start
        return replace(start, params={**opening.params, **start.params}, instruction=opening.instruction,
                       greeting=opening.greeting, hold_greeting=opening.hold_greeting)

    def greet(self, call_id: str, text: str = "") -> bool:
        """An outbound call's held greeting goes now (``text``: the voicemail message instead). False
        when no model_client holds the call's session."""
        opening = self.openings.get(call_id)
        if opening is not None:
            self.openings[call_id] = replace(opening, hold_greeting=False)  # a later CallStart: no hold
        call = self.calls.get(call_id)
        endpoint = call.model if call is not None else self.prewarmed.get(call_id, ("", 0.0))[0]
        if not endpoint:
            return False
        self._tell_model(endpoint, m.Greet(call=call_id, text=text))
        return True

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
        self.openings.pop(call_id, None)
        endpoint, _ = self.prewarmed.pop(call_id, ("", 0.0))
        if endpoint:
            self._tell_model(endpoint, m.CallEnd(call=call_id, reason=reason))

    def _tell_model(self, endpoint: str, msg) -> None:
        for peer in self.live(m.ROLE_MODEL_CLIENT):
            if peer.endpoint == endpoint:
                self.router.send(peer.route, msg)
