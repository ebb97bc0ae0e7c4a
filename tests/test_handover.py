"""goAway hand-over timing, on one GeminiSession against an in-process emulator (real SDK, TLS): the
switch waits for a turn boundary and for the handle that follows it, and when time runs out it
switches anyway, losing no caller audio (the new connection gets it again and answers it)."""

import asyncio
import functools
import gc
import weakref

import numpy as np
import pytest

from common import messages as m
from common.settings import load
from emulator.server import EmulatorStage
from model_client.config import make_client
from model_client.session import GeminiSession
from model_client.tools import ToolContext, Toolbox
from softphone.speech import speech_like

FRAME = 640  # 20 ms of PCM16 16 kHz


@pytest.fixture
def emulator(start_emulator):
    """conftest's emulator, its VAD set as the session's (300 ms of silence ends a turn)."""
    return functools.partial(start_emulator, GEMINI_SILENCE_MS="300")


async def talk(session: GeminiSession, seconds: float, seed: int, t_in: int) -> int:
    """Speak ``seconds`` (faster than real time: the emulator's VAD counts samples), then 0.4 s of
    silence; returns the next t_in."""
    pcm = np.concatenate([speech_like(seconds, seed=seed, rate=16000), np.zeros(6400, np.int16)]).tobytes()
    for i in range(0, len(pcm), FRAME):
        t_in += 1
        session.send_audio(pcm[i:i + FRAME], t_in)
        await asyncio.sleep(0.002)
    return t_in


async def run_session(stage: EmulatorStage, script, **settings):
    config = load({"BRIDGE_RUN_DIR": stage.settings.run_dir, "EMULATOR_PORT": str(stage.settings.emulator_port),
                   "GEMINI_SILENCE_MS": "300", **settings})
    out: list = []
    client = make_client(config)
    session = GeminiSession("c1", client, config, Toolbox(), ToolContext("c1", "CA1", {}), out.append,
                            lambda call: None)
    session.start()
    try:
        await script(session)
    finally:
        await session.close()
        await client.aio.aclose()
    return session, out


def turns_done(out) -> list[int]:
    return [msg.turn for msg in out if isinstance(msg, m.TurnDone)]


async def test_go_away_mid_turn_waits_for_the_boundary_and_its_handle(emulator):
    stage = await emulator(EMULATOR_GOAWAY_AFTER_S="1.0")  # goAway at 1.0 s, closing at 2.0 s

    async def script(session):
        await asyncio.sleep(0.1)
        await talk(session, 3.0, 1, 0)  # its echo streams from ~0.6 s to ~1.4 s: goAway lands inside
        await asyncio.sleep(1.5)

    session, out = await run_session(stage, script, GEMINI_HANDOVER_MARGIN_S="0.2")
    assert turns_done(out) == [1] and not any(isinstance(msg, m.Interrupt) for msg in out)
    assert session.stats["handovers"] >= 1
    log = sorted(stage.log, key=lambda s: s["number"])
    # The standby opened at goAway (no handle yet) went stale when the turn's handle came; the one
    # switched to resumed after that turn, and nothing was answered twice.
    assert log[2]["resumed_from"] == 1 and max(s["turns"] for s in log) == 1, log
    assert log[1]["resumed_from"] is None and log[1]["turns"] == 0, log


async def test_go_away_with_no_time_to_wait_switches_at_once_and_loses_nothing(emulator):
    stage = await emulator(EMULATOR_GOAWAY_AFTER_S="1.0")

    async def script(session):
        await asyncio.sleep(0.1)
        await talk(session, 3.0, 2, 0)
        await asyncio.sleep(2.5)

    session, out = await run_session(stage, script, GEMINI_HANDOVER_MARGIN_S="0.95")
    assert session.stats["handovers"] >= 1
    done = turns_done(out)
    # The turn was cut by the switch; the new connection got the caller's words again and answered.
    assert len(done) == 2 and done[1] > done[0], out
    audio = [msg for msg in out if isinstance(msg, m.AudioDown) and msg.turn == done[1]]
    assert sum(len(msg.audio) for msg in audio) / 48000 > 2.9  # the whole echo


async def test_go_away_with_a_refused_handle_hands_over_to_a_fresh_session(emulator):
    stage = await emulator(EMULATOR_GOAWAY_AFTER_S="1.2", EMULATOR_REFUSE_HANDLES="true")

    async def script(session):
        await asyncio.sleep(0.1)
        await talk(session, 1.0, 3, 0)  # answered by ~0.9 s, before the goAway
        await asyncio.sleep(1.3)

    session, out = await run_session(stage, script, GEMINI_HANDOVER_MARGIN_S="0.2")
    assert turns_done(out) == [1] and session.stats["handovers"] >= 1 and session.stats["fresh"] >= 1
    log = sorted(stage.log, key=lambda s: s["number"])
    assert log[1]["refused_handle"], log
    assert log[2]["resumed_from"] is None and "Caller: (1.0 s of speech)" in log[2]["instruction"], log


async def test_a_closed_session_is_freed_without_the_garbage_collector(emulator):
    """A cancelled task keeps its CancelledError, whose traceback holds the session's frames: a session
    that kept its tasks would sit in a reference cycle, with its TLS buffers and queued audio, until
    the collector's next full pass (under churn, dozens of dead sessions at a time)."""
    stage = await emulator()
    gc.collect()
    gc.disable()
    try:
        session, out = await run_session(stage, lambda session: talk(session, 0.5, 3, 0))
        freed = weakref.ref(session)
        del session
        assert freed() is None, [type(r).__name__ for r in gc.get_referrers(freed())]
    finally:
        gc.enable()


@pytest.mark.parametrize("direct", [True, False], ids=["audio_text on the socket", "the SDK's method"])
async def test_caller_audio_is_answered_either_way_it_is_sent(emulator, monkeypatch, direct):
    """model_client/gemini_wire.py: an SDK that fails the per-connection check gets audio through its own
    send_realtime_input; the emulator hears the same either way."""
    async def check(session) -> bool:
        return direct
    monkeypatch.setattr("model_client.gemini_wire.sends_audio_text", check)
    stage = await emulator()

    async def script(session):
        await asyncio.sleep(0.1)
        await talk(session, 1.0, 4, 0)
        await asyncio.sleep(1.5)

    session, out = await run_session(stage, script)
    audio = sum(len(msg.audio) for msg in out if isinstance(msg, m.AudioDown))
    assert turns_done(out) == [1] and audio / 48000 > 0.9  # the whole echo of 1 s
