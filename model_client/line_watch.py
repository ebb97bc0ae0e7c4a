"""One call's line watch: the timers that keep a line from going dead or deaf (docs/architecture.md#the-line).

Fed by the session (caller audio, keypad, the model's audio and turns, marks played, tools), it checks
every ``TICK_S`` and acts through ``LineActions``:

- **hold**: while a tool runs, or has answered and the model has not spoken since, the gateway is told
  the model is waiting (``Action(kind="hold")``); the gateway plays the hold sound (gateway/hold.py).
- **silent caller**: the caller quiet ``idle_prompt_s`` after the model's turn has played out: the
  model is asked to check in; quiet ``idle_hangup_s`` in all: it says goodbye and the call ends.
  Paused while a tool runs, the model's audio plays or the caller speaks; a keypad digit is presence.
- **stall**: the caller finished a turn and no model audio began within ``stall_s``, or a turn
  completed with no audio: nudge the model, then reconnect by handle and nudge again, then
  apologise (``Action(kind="stalled")``: the gateway ends the stream and ``/twiml/after`` resumes).
- **longest call**: a warning ``MAX_CALL_LEAD_S`` before ``max_call_s``, then a goodbye and the end.
- **paused input**: no caller audio for ``input_pause_ms``: ``audio_stream_end``, so the model answers
  what it heard.

Speech is told by its energy (common/voice_activity.py), its end by ``GEMINI_SILENCE_MS``, as the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, NamedTuple

import numpy as np

from common import messages as m
from common.settings import Settings
from common.voice_activity import HOLD_DBFS, START_DBFS

log = logging.getLogger(__name__)

TICK_S = 0.25
PRESENCE_MS = 100  # loud this long: the caller is speaking (a click is not)
MIN_TURN_MS = 200  # speech this long, then the server's silence: a caller turn the model owes a reply
MAX_CALL_LEAD_S = 60.0  # the longest call's warning comes this long before its end (a quarter, if less)
PLAYED_SLACK_S = 3.0  # a turn whose last mark never comes back counts as played this long after its audio
PCM_BYTES_PER_MS_IN, PCM_BYTES_PER_S_OUT = 32, 48000  # caller 16 kHz, model 24 kHz, PCM16
STALL_NUDGE = "(The caller is waiting for your answer. Please answer them now.)"
IDLE_GOODBYE = "(The caller has been silent for a long time. Say a short goodbye now; the call then ends.)"
MAX_CALL_WARNING = ("(The call reaches its time limit in about {seconds} seconds. Tell the caller briefly, "
                    "and help them finish.)")
MAX_CALL_GOODBYE = "(The call's time limit is reached. Say a short goodbye now; the call then ends.)"


def _power(dbfs: float) -> float:
    return (32768.0 * 10 ** (dbfs / 20)) ** 2


START_POWER, HOLD_POWER = _power(START_DBFS), _power(HOLD_DBFS)


class LineActions(NamedTuple):
    say: Callable[[str], None]  # text for the model (queued behind what is already queued)
    stream_end: Callable[[], None]  # audio_stream_end
    reconnect: Callable[[str], None]  # end the current connection; the session resumes by handle
    emit: Callable[[object], None]  # a message for the gateway


class LineWatch:
    def __init__(self, call: str, settings: Settings, actions: LineActions, stats: dict[str, int],
                 now: float | None = None, age_s: float = 0.0):
        self.call, self.settings, self.actions, self.stats = call, settings, actions, stats
        for name in ("idle_prompts", "idle_hangups", "stall_nudges", "stall_reconnects", "stall_apologies",
                     "stall_recovered", "input_pauses", "max_call_warnings", "max_call_ends"):
            stats.setdefault(name, 0)
        now = time.monotonic() if now is None else now
        self._last_tick = now
        self._started = now - age_s  # the call's start: it may have begun at another model_client
        # the caller
        self._last_audio = 0.0  # when caller audio last arrived (0: the stream has not begun)
        self._input_paused = False
        self._speaking = False
        self._loud_ms = self._quiet_ms = self._speech_ms = 0.0
        self._over_audio = False  # the caller's speech began while the model's audio played
        # the model
        self._in_turn = False  # its audio is arriving
        self._audio_since_complete = False
        self._interrupted = False
        self._latest_turn = self._finished_turn = 0
        self._turn_audio_s = 0.0
        self._turn_began = 0.0
        self._cleared_at = 0.0
        # tools and hold
        self._tools = 0
        self._tool_called = False  # since the last turn_complete
        self._tool_answered = False  # a tool's answer went to the model, which has not spoken since
        self._waiting = False
        # the timers
        self._quiet_s = 0.0  # the line quiet since the model's turn played out (or the last prompt)
        self._silent_s = 0.0  # the caller silent, not counting tools or the model's audio
        self._owed_since = 0.0  # the model owes a reply since then (0: it does not)
        self._stall_steps = 0
        self._warned = self._leaving = False
        self.greeting_held = False  # outbound, awaiting detection: no reply owed; speech told to the gateway

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tick(time.monotonic())

    # --- what happens on the line -----------------------------------------------------------------

    def caller_audio(self, pcm: bytes, now: float) -> None:
        if self._input_paused:
            self._input_paused = False
            log.info("caller audio resumed after %.1f s", now - self._last_audio)
        self._last_audio = now
        ms = len(pcm) / PCM_BYTES_PER_MS_IN
        x = np.frombuffer(pcm[:len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
        loud = len(x) and float(x @ x) >= (HOLD_POWER if self._speaking else START_POWER) * len(x)
        if loud:
            self._loud_ms, self._quiet_ms = self._loud_ms + ms, 0.0
            if self._speaking:
                self._speech_ms += ms
            elif self._loud_ms >= PRESENCE_MS:
                self._speaking, self._speech_ms = True, self._loud_ms
                self._over_audio = self.playing(now)
                self._cleared_at = 0.0
                if self._waiting or self.greeting_held:  # the barge-in detector listens only over the model
                    self.actions.emit(m.CallerSpeech(call=self.call, source="vad"))
        else:
            self._loud_ms = 0.0
            if self._speaking:
                self._quiet_ms += ms
                if self._quiet_ms >= self.settings.silence_ms:
                    self._speaking = False
                    self._caller_turn_ended(now)

    def dtmf(self) -> None:
        self._present()

    def model_audio(self, turn: int, nbytes: int, now: float) -> None:
        if turn != self._latest_turn:
            self._latest_turn, self._turn_audio_s, self._turn_began = turn, 0.0, now
        self._turn_audio_s += nbytes / PCM_BYTES_PER_S_OUT
        self._in_turn = self._audio_since_complete = True
        self._tool_answered = False
        self._quiet_s = 0.0
        if self._stall_steps:
            self.stats["stall_recovered"] += 1
            self._event(f"stall: the model answered after {self._stall_steps} step(s)")
        self._owed_since, self._stall_steps = 0.0, 0

    def content(self, content, audio_bytes: int, turn: int, now: float) -> None:
        """A ``LiveServerContent`` with ``audio_bytes`` of the model's audio for ``turn``."""
        if audio_bytes:
            self.model_audio(turn, audio_bytes, now)
        if content.interrupted:
            self.interrupted()
        if content.turn_complete:
            self.turn_complete(now)

    def interrupted(self) -> None:
        self._in_turn, self._interrupted = False, True

    def turn_complete(self, now: float) -> None:
        # A turn that only called a tool is the model at work, not a stall.
        empty = not (self._audio_since_complete or self._interrupted or self._tool_called)
        self._in_turn = self._interrupted = self._audio_since_complete = self._tool_called = False
        if not self._tools:
            self._tool_answered = False
        if empty and self.settings.stall_s and not self._leaving:
            self._stall_step("a model turn completed with no audio", now)

    def played(self, msg: m.Played, now: float) -> None:
        if msg.cleared:
            self._cleared_at = now
        if msg.finished:
            self._finished_turn = max(self._finished_turn, msg.turn)

    def tools_changed(self, running: int, cancelled: bool = False) -> None:
        self._tool_called |= running > self._tools
        self._tools = running
        if cancelled and not running:
            self._tool_answered = False
        if running:
            self._hold()  # the gateway's hold delay counts from now, not from the next tick

    def tool_answered(self, now: float) -> None:
        """A tool's result went to the model: it owes the caller a reply now (and the hold plays on)."""
        self._tool_answered = True
        if self.settings.stall_s and not self._leaving:
            self._owed_since = now

    # --- the timers ---------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        dt, self._last_tick = now - self._last_tick, now
        self._hold()
        self._paused_input(now)
        if self._tools and self._owed_since:
            self._owed_since = now  # a tool is the model's work: no stall while it runs
        if self._owed_since and now - self._owed_since >= self.settings.stall_s:
            self._stall_step(f"no model audio {self.settings.stall_s:g} s after the caller's turn", now)
        self._idle(dt, now)
        self._max_call(now)

    def playing(self, now: float) -> bool:
        """Is the model's audio arriving, or not yet heard out by the caller?"""
        if self._in_turn:
            return True
        unfinished = self._latest_turn > self._finished_turn
        return unfinished and now < self._turn_began + self._turn_audio_s + PLAYED_SLACK_S

    def _hold(self) -> None:
        waiting = bool(self._tools) or self._tool_answered
        if waiting != self._waiting:
            self._waiting = waiting
            self.actions.emit(m.Action(call=self.call, kind="hold", target="on" if waiting else "off"))

    def _paused_input(self, now: float) -> None:
        pause_s = self.settings.input_pause_ms / 1000
        if pause_s and self._last_audio and not self._input_paused and now - self._last_audio >= pause_s:
            self._input_paused = True
            self.stats["input_pauses"] += 1
            self._event(f"input paused: no caller audio for {now - self._last_audio:.1f} s, "
                        "audio_stream_end sent")
            self.actions.stream_end()
            if self._speaking:  # what the caller said is a turn now, as it is for the model
                self._speaking = False
                self._caller_turn_ended(now)

    def _idle(self, dt: float, now: float) -> None:
        if not self._last_audio or self._leaving or self._speaking or self._tools or self._waiting \
                or self.playing(now):
            return
        self._quiet_s += dt
        self._silent_s += dt
        hangup_s, prompt_s = self.settings.idle_hangup_s, self.settings.idle_prompt_s
        if hangup_s and self._silent_s >= hangup_s:
            self.stats["idle_hangups"] += 1
            self._event(f"idle: the caller silent {self._silent_s:.0f} s, goodbye")
            self._leave(IDLE_GOODBYE)
        elif prompt_s and self._quiet_s >= prompt_s:
            self.stats["idle_prompts"] += 1
            self._event(f"idle: the caller silent {self._silent_s:.0f} s, prompting the model")
            self._quiet_s = 0.0
            self.actions.say(self.settings.idle_text)

    def _max_call(self, now: float) -> None:
        limit = self.settings.max_call_s
        if not limit or self._leaving:
            return
        elapsed, lead = now - self._started, min(MAX_CALL_LEAD_S, limit / 4)
        if elapsed >= limit:
            self.stats["max_call_ends"] += 1
            self._event(f"longest call: {limit:g} s reached, goodbye")
            self._leave(MAX_CALL_GOODBYE)
        elif not self._warned and elapsed >= limit - lead:
            self._warned = True
            self.stats["max_call_warnings"] += 1
            self._event(f"longest call: {limit - elapsed:.0f} s left, warning the caller")
            self.actions.say(MAX_CALL_WARNING.format(seconds=round(limit - elapsed)))

    # --- helpers ----------------------------------------------------------------------------------

    def _present(self) -> None:
        self._quiet_s = self._silent_s = 0.0

    def _caller_turn_ended(self, now: float) -> None:
        self._present()
        if self._speech_ms < MIN_TURN_MS or not self.settings.stall_s or self._leaving or self.greeting_held:
            return
        # Speech begun over the model's audio is its echo, unless it cleared the playback (a barge-in).
        if (not self._over_audio or self._cleared_at) and not self.playing(now):
            self._owed_since = now

    def _stall_step(self, why: str, now: float) -> None:
        self._stall_steps += 1
        self._owed_since = now
        if self._stall_steps == 1:
            self.stats["stall_nudges"] += 1
            self._event(f"stall ({why}): nudging the model", logging.WARNING)
            self.actions.say(STALL_NUDGE)
        elif self._stall_steps == 2:
            self.stats["stall_reconnects"] += 1
            self._event(f"stall ({why}): reconnecting by handle", logging.WARNING)
            # The new connection is sent again what its handle lacks (the caller's turn, perhaps the
            # nudge); a resumed session still says nothing until something new comes: nudge it again.
            self.actions.reconnect(f"the model stalled ({why})")
            self.actions.say(STALL_NUDGE)
        else:
            self.stats["stall_apologies"] += 1
            self._event(f"stall ({why}): giving the call to /twiml/after with an apology", logging.WARNING)
            self._owed_since, self._leaving = 0.0, True
            self.actions.emit(m.Action(call=self.call, kind="stalled"))

    def _leave(self, goodbye: str) -> None:
        self._leaving = True
        self.actions.say(goodbye)
        self.actions.emit(m.Action(call=self.call, kind="hangup"))

    def _event(self, text: str, level: int = logging.INFO) -> None:
        """A log line, and a line in the call's transcript."""
        log.log(level, "%s", text)
        self.actions.emit(m.Transcript(call=self.call, role="line", text=text, final=True))
