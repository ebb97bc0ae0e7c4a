"""The line watch (model_client/line_watch.py) on a made-up clock: hold signals, a silent caller, a
stalled model, the longest call, paused input."""

from types import SimpleNamespace

import numpy as np
import pytest

from common import messages as m
from common.settings import load
from model_client.line_watch import (IDLE_GOODBYE, MAX_CALL_GOODBYE, STALL_NUDGE, TICK_S, LineActions,
                                     LineWatch)

LOUD = (np.sin(np.arange(320) / 3) * 6000).astype("<i2").tobytes()  # 20 ms, well above the VAD's floor
QUIET = bytes(640)


class Line:
    """A LineWatch and everything it did, on a clock the test moves."""

    def __init__(self, **env):
        self.said, self.ends, self.reconnects, self.sent = [], 0, [], []
        self.stats: dict[str, int] = {}
        settings = load({"GEMINI_SILENCE_MS": "300", **env})
        actions = LineActions(say=self.said.append, stream_end=self._end, reconnect=self.reconnects.append,
                              emit=self.sent.append)
        self.now = 0.0
        self.watch = LineWatch("c1", settings, actions, self.stats, now=0.0)

    def _end(self):
        self.ends += 1

    def audio(self, frame: bytes, seconds: float) -> None:
        """The caller's frames for ``seconds``, ticking as time goes."""
        for _ in range(round(seconds / 0.02)):
            self.now += 0.02
            self.watch.caller_audio(frame, self.now)
            if round(self.now / 0.02) % round(TICK_S / 0.02) == 0:
                self.watch.tick(self.now)

    def wait(self, seconds: float) -> None:
        """Time passes with no caller audio arriving at all."""
        for _ in range(round(seconds / TICK_S)):
            self.now += TICK_S
            self.watch.tick(self.now)

    def actions(self, kind: str) -> list[m.Action]:
        return [msg for msg in self.sent if isinstance(msg, m.Action) and msg.kind == kind]

    def events(self) -> list[str]:
        return [msg.text for msg in self.sent if isinstance(msg, m.Transcript) and msg.role == "line"]

    def model_turn(self, turn: int, seconds: float, finished: bool = True) -> None:
        self.watch.model_audio(turn, int(seconds * 48000), self.now)
        self.watch.content(SimpleNamespace(interrupted=False, turn_complete=True), 0, turn, self.now)
        if finished:
            self.watch.played(m.Played(call="c1", turn=turn, mark="x", finished=True), self.now)


def test_hold_is_asked_for_while_a_tool_runs_and_until_the_model_speaks():
    line = Line()
    line.watch.tools_changed(1)
    line.wait(0.5)
    line.watch.tool_answered(line.now)
    line.watch.tools_changed(0)
    line.wait(0.5)
    assert [a.target for a in line.actions("hold")] == ["on"]
    line.model_turn(1, 0.5)
    line.wait(0.5)
    assert [a.target for a in line.actions("hold")] == ["on", "off"]


def test_a_cancelled_tool_ends_the_wait():
    line = Line()
    line.watch.tools_changed(1)
    line.wait(0.5)
    line.watch.tools_changed(0, cancelled=True)
    line.wait(0.5)
    assert [a.target for a in line.actions("hold")] == ["on", "off"]


def test_a_silent_caller_is_prompted_then_the_call_ends():
    line = Line(BRIDGE_IDLE_PROMPT_S="8", BRIDGE_IDLE_HANGUP_S="30")
    line.audio(QUIET, 7.0)
    assert line.said == []
    line.audio(QUIET, 1.5)
    assert line.said == [line.watch.settings.idle_text]
    line.audio(QUIET, 30.0)
    assert line.said[-1] == IDLE_GOODBYE and len(line.actions("hangup")) == 1
    assert line.stats["idle_prompts"] == 3 and line.stats["idle_hangups"] == 1
    assert any("prompting the model" in text for text in line.events())
    line.audio(QUIET, 30.0)
    assert len(line.actions("hangup")) == 1, "once"


def test_idle_waits_for_the_model_turn_to_play_out_and_speech_or_a_digit_resets_it():
    line = Line(BRIDGE_IDLE_PROMPT_S="8", BRIDGE_IDLE_HANGUP_S="0", BRIDGE_STALL_S="0")
    line.audio(QUIET, 0.1)
    line.model_turn(1, 10.0, finished=False)  # ten seconds of the model's audio, still playing
    line.audio(QUIET, 9.0)
    assert line.said == []
    line.watch.played(m.Played(call="c1", turn=1, mark="x", finished=True), line.now)
    line.audio(QUIET, 6.0)
    line.audio(LOUD, 0.5)  # the caller speaks
    line.audio(QUIET, 6.0)
    line.watch.dtmf()
    line.audio(QUIET, 6.0)
    assert line.said == []
    line.audio(QUIET, 2.5)
    assert line.said == [line.watch.settings.idle_text]


def test_idle_is_paused_while_a_tool_runs():
    line = Line(BRIDGE_IDLE_PROMPT_S="2", BRIDGE_IDLE_HANGUP_S="0")
    line.audio(QUIET, 0.1)
    line.watch.tools_changed(1)
    line.audio(QUIET, 5.0)
    assert line.said == []


def test_a_stalled_model_is_nudged_then_reconnected_then_the_call_handed_on():
    line = Line(BRIDGE_STALL_S="4", BRIDGE_IDLE_PROMPT_S="0", BRIDGE_IDLE_HANGUP_S="0")
    line.audio(LOUD, 1.0)
    line.audio(QUIET, 3.5)
    assert line.said == []
    line.audio(QUIET, 1.5)
    assert line.said == [STALL_NUDGE]
    line.audio(QUIET, 4.0)
    assert len(line.reconnects) == 1 and line.said == [STALL_NUDGE] * 2
    line.audio(QUIET, 4.0)
    assert len(line.actions("stalled")) == 1
    assert (line.stats["stall_nudges"], line.stats["stall_reconnects"], line.stats["stall_apologies"]) == (1, 1, 1)
    line.audio(QUIET, 10.0)
    assert len(line.actions("stalled")) == 1


def test_a_model_that_answers_the_nudge_has_recovered():
    line = Line(BRIDGE_STALL_S="4", BRIDGE_IDLE_PROMPT_S="0")
    line.audio(LOUD, 1.0)
    line.audio(QUIET, 5.0)
    line.model_turn(1, 1.0)
    line.audio(QUIET, 10.0)
    assert line.said == [STALL_NUDGE] and line.reconnects == []
    assert line.stats["stall_recovered"] == 1


def test_a_turn_with_no_audio_is_nudged_at_once():
    line = Line(BRIDGE_STALL_S="4")
    line.watch.content(SimpleNamespace(interrupted=False, turn_complete=True), 0, 0, line.now)
    assert line.said == [STALL_NUDGE]


def test_speech_over_the_model_audio_is_not_a_turn_unless_it_cleared_the_playback():
    echo = Line(BRIDGE_STALL_S="4", BRIDGE_IDLE_PROMPT_S="0")
    echo.model_turn(1, 3.0, finished=False)
    echo.audio(LOUD, 1.0)  # the model's own voice, back from the line
    echo.watch.played(m.Played(call="c1", turn=1, mark="x", finished=True), echo.now)
    echo.audio(QUIET, 10.0)
    assert echo.said == []
    barge = Line(BRIDGE_STALL_S="4", BRIDGE_IDLE_PROMPT_S="0")
    barge.model_turn(1, 3.0, finished=False)
    barge.audio(LOUD, 0.3)
    barge.watch.played(m.Played(call="c1", turn=1, mark="x", cleared=True, finished=True), barge.now)
    barge.audio(LOUD, 0.7)
    barge.audio(QUIET, 5.0)
    assert barge.said == [STALL_NUDGE]


def test_paused_input_ends_the_audio_stream_once_and_counts_the_turn():
    line = Line(BRIDGE_INPUT_PAUSE_MS="1000", BRIDGE_STALL_S="4", BRIDGE_IDLE_PROMPT_S="0")
    line.audio(LOUD, 1.0)
    line.wait(1.5)
    assert line.ends == 1 and line.stats["input_pauses"] == 1
    line.wait(2.0)
    assert line.ends == 1
    line.audio(QUIET, 0.5)
    line.wait(1.5)
    assert line.ends == 2
    assert line.said == [STALL_NUDGE], "the paused turn was owed a reply"


def test_no_stream_end_before_the_stream_has_begun():
    line = Line(BRIDGE_INPUT_PAUSE_MS="1000")
    line.wait(5.0)
    assert line.ends == 0


@pytest.mark.parametrize("limit, warn_at", [(600, 540), (120, 90)])
def test_the_longest_call_is_warned_then_ended(limit, warn_at):
    line = Line(BRIDGE_MAX_CALL_S=str(limit), BRIDGE_IDLE_PROMPT_S="0", BRIDGE_IDLE_HANGUP_S="0",
                BRIDGE_INPUT_PAUSE_MS="0")
    line.wait(warn_at - 1)
    assert line.said == []
    line.wait(1.5)
    assert len(line.said) == 1 and "time limit" in line.said[0]
    line.wait(limit - warn_at)
    assert line.said[-1] == MAX_CALL_GOODBYE and len(line.actions("hangup")) == 1
    assert (line.stats["max_call_warnings"], line.stats["max_call_ends"]) == (1, 1)


def test_a_call_taken_over_keeps_its_longest_call_clock():
    """A call that began 500 s ago at another model_client (``age_s``) is warned 40 s from here."""
    line = Line(BRIDGE_MAX_CALL_S="600", BRIDGE_IDLE_PROMPT_S="0", BRIDGE_IDLE_HANGUP_S="0",
                BRIDGE_INPUT_PAUSE_MS="0")
    line.watch = LineWatch("c1", line.watch.settings, line.watch.actions, line.stats, now=0.0, age_s=500.0)
    line.wait(39)
    assert line.said == []
    line.wait(1.5)
    assert len(line.said) == 1 and "about 60 seconds" in line.said[0]
    line.wait(60)
    assert line.said[-1] == MAX_CALL_GOODBYE and len(line.actions("hangup")) == 1


def test_a_turn_that_only_called_a_tool_is_not_a_stall():
    line = Line(BRIDGE_STALL_S="4")
    line.watch.tools_changed(1)
    line.watch.tool_answered(line.now)
    line.watch.tools_changed(0)
    line.watch.content(SimpleNamespace(interrupted=False, turn_complete=True), 0, 0, line.now)
    assert line.said == []


def test_a_model_silent_after_its_tool_answered_is_a_stall():
    line = Line(BRIDGE_STALL_S="4", BRIDGE_IDLE_PROMPT_S="0")
    line.watch.tools_changed(1)
    line.wait(10.0)
    assert line.said == [], "the tool's time is its own"
    line.watch.tool_answered(line.now)
    line.watch.tools_changed(0)
    line.wait(4.5)
    assert line.said == [STALL_NUDGE]
