"""Faults during a live call, through the real stack under supervisord: a transcoder or
a model_client killed with SIGKILL, Gemini's goAway, a dropped Gemini socket, a refused resumption
handle. The caller says three utterances; the echo persona says each back. After every fault the call
must go on (the echo of what was said after the fault comes back), the conversation state must
survive (the emulator's log shows the session resumed by handle, its turn count carrying on), and
the caller audio lost to the fault must be bounded (bench/chaos.py measures it: ``Echo.gap_ms``)."""

import asyncio
import json
import logging
import re
import time

import pytest

from bench.chaos import BASE_ENV, Supervisor, echo_of, emulator_log, heard_of, holder, script
from bench.failover import Failover
from harness.stack import Stack, wait_for
from softphone.caller import place_call
from softphone.speech import silence
from softphone.webhook import new_sid

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

RATE = 8000
MAX_GAP_MS = 100  # caller audio lost (or doubled) inside an utterance by one fault
SHORT = dict(lengths=(0.8, 1.0, 0.8), pause_s=1.7, lead_s=0.2)  # ~7.9 s of script, then 1 s to listen


def start(path, **env) -> Stack:
    return Stack(path / "run", **BASE_ENV, **env).start()


def stop(stack: Stack) -> str:
    assert stack.stop() == 0
    text = stack.log.read_text()
    assert "Traceback" not in text, text[-8000:]
    return text


@pytest.fixture(scope="module")
def kill_stack(tmp_path_factory):
    """Two transcoders and two model_clients, for the process-kill tests."""
    stack = start(tmp_path_factory.mktemp("kill"), BRIDGE_TRANSCODERS="2", BRIDGE_MODEL_CLIENTS="2")
    yield stack
    stop(stack)


async def call_with_fault(stack: Stack, seed: int, fault=None, at_utterance: int = 1, into_s: float = 0.4,
                          url: str = "", **shape):
    """Place the scripted call; ``fault(call_sid)`` runs ``into_s`` into utterance ``at_utterance``.
    With ``url`` (a load balancer in front of stacks) the caller follows ``<Redirect>`` as Twilio does."""
    plan, sid = script(seed, **{**SHORT, **shape}), new_sid("CA")
    began = time.monotonic()
    call = asyncio.create_task(place_call(url or stack.url, plan.audio, listen_s=1.0, call_sid=sid,
                                          follow_redirect=bool(url), timeout_s=60))
    injected = None
    if fault is not None:
        await asyncio.sleep(plan.starts[at_utterance] / RATE + into_s - (time.monotonic() - began))
        injected = await asyncio.to_thread(fault, sid)
    result = await asyncio.wait_for(call, 60)
    echoes = [echo_of(u, s, heard_of(result)) for u, s in zip(plan.utterances, plan.starts)]
    for i, echo in enumerate(echoes):
        log.warning("utterance %d: found %.2f, gap %.0f ms, echo after %.2f s", i, echo.found, echo.gap_ms,
                    echo.delay_s)
    if result.closed_by != "caller" or min(echo.found for echo in echoes) < 0.95:
        log.warning("the stack's warnings:\n%s", "\n".join(  # what a failure on CI leaves to go on
            line for line in stack.log.read_text().splitlines() if "WARN" in line or "ERROR" in line))
    assert result.closed_by == "caller", "the bridge ended the call"
    for i, echo in enumerate(echoes):
        assert echo.found >= 0.95, f"utterance {i}: only {echo.found:.0%} of it came back"
        assert echo.gap_ms <= MAX_GAP_MS, f"utterance {i}: {echo.gap_ms:.0f} ms of caller audio lost"
    return result, injected


def sessions_of(stack: Stack, after: int = 0) -> list[dict]:
    """The emulator's sessions numbered above ``after``, in order."""
    return sorted((s for s in emulator_log(stack) if s["number"] > after), key=lambda s: s["number"])


def last_session(stack: Stack) -> int:
    return max((s["number"] for s in emulator_log(stack)), default=0)


async def test_transcoder_killed_mid_call(kill_stack):
    stack, sup = kill_stack, Supervisor(kill_stack)
    before, counters = last_session(stack), stack.health()["counters"]

    def kill(sid):
        name = holder(stack, sid, "transcoder")
        return name, sup.kill9(name)
    _, (name, pid) = await call_with_fault(stack, 1, kill)
    after = stack.health()["counters"]
    assert after["repinned"] - counters.get("repinned", 0) == 1
    assert after["peer_disconnects"] > counters.get("peer_disconnects", 0), "the socket monitor saw it die"
    # Gemini never noticed: one session, all three turns.
    sessions = sessions_of(stack, before)
    assert [(s["resumed_from"], s["turns"]) for s in sessions] == [(None, 3)], sessions
    await asyncio.to_thread(sup.wait_restarted, name, pid)
    wait_for(lambda: stack.health()["transcoders"] == 2, 10, "the new transcoder to rejoin", stack.log)
    assert "call re-pinned" in stack.log.read_text()


async def test_model_client_killed_mid_call(kill_stack):
    stack, sup = kill_stack, Supervisor(kill_stack)
    wait_for(lambda: stack.health()["status"] == "ok", 10, "the stack to be whole", stack.log)
    before, counters = last_session(stack), stack.health()["counters"]
    await call_with_fault(stack, 2, lambda sid: sup.kill9(holder(stack, sid, "model_client")))
    assert stack.health()["counters"]["reassigned"] - counters.get("reassigned", 0) == 1
    # The other model_client resumed the Gemini session by handle: the turn count carried on.
    resumed = [s for s in sessions_of(stack, before) if s["resumed_from"] is not None]
    assert len(resumed) == 1 and resumed[0]["resumed_from"] >= 1, resumed
    assert resumed[0]["turns"] == 3, resumed
    text = stack.log.read_text()
    assert "call moves to" in text and "resuming its handle" in text


async def test_only_model_client_killed_the_call_waits_for_its_restart(tmp_path):
    stack = start(tmp_path, BRIDGE_MODEL_CLIENTS="1")
    sup = Supervisor(stack)
    try:
        # Killed 0.2 s into the second utterance: the rest of it is said while no model_client lives.
        # A restart takes ~2 s (supervisord, then Python and the SDK loading), more on a busy machine:
        # a pause well past that lets the late echo play before the caller speaks again (else the
        # caller barges in on it, rightly, and the echo's tail is missing).
        await call_with_fault(stack, 6, lambda sid: sup.kill9("model_client:model_client-0"), into_s=0.2,
                              pause_s=5.0)
        health = stack.health()
        assert health["counters"]["reassigned"] == 1 and health["counters"]["lost_no_peer"] == 0
        resumed = [s for s in sessions_of(stack) if s["resumed_from"] is not None]
        assert len(resumed) == 1 and resumed[0]["resumed_from"] >= 1 and resumed[0]["turns"] == 3
    finally:
        text = stop(stack)
    assert "none live: waiting up to" in text


async def test_a_call_moved_to_another_model_client_keeps_its_longest_call_clock(tmp_path):
    """The longest call counts from the call's start, not from the session that took it over: the
    goodbye comes ``BRIDGE_MAX_CALL_S`` after the call began, though its model_client died 3 s in."""
    limit = 8.0
    stack = start(tmp_path, BRIDGE_MODEL_CLIENTS="2", BRIDGE_MAX_CALL_S=str(limit), BRIDGE_IDLE_PROMPT_S="0",
                  BRIDGE_IDLE_HANGUP_S="0")
    sup, sid = Supervisor(stack), new_sid("CA")
    try:
        began = time.time()
        call = asyncio.create_task(place_call(stack.url, silence(0.5), listen_s=25.0, call_sid=sid, timeout_s=60))
        await asyncio.sleep(3.0)
        await asyncio.to_thread(lambda: sup.kill9(holder(stack, sid, "model_client")))
        result = await asyncio.wait_for(call, 60)
        assert result.closed_by == "server"
        assert stack.health()["counters"]["reassigned"] == 1
        wait_for(lambda: stack.health()["calls"] == 0, 10, "the gateway to end the call", stack.log)
        written = (stack.run_dir / "transcripts" / f"{sid}.jsonl").read_text()
    finally:
        stop(stack)
    lines = [json.loads(line) for line in written.splitlines()]
    goodbye = [line["t"] for line in lines if line["role"] == "line" and "reached, goodbye" in line["text"]]
    assert len(goodbye) == 1, lines
    log.warning("goodbye %.2f s after the call began (limit %g s)", goodbye[0] - began, limit)
    # From its start, the new model_client alone would say goodbye at 3 s + the move + the limit.
    assert limit <= goodbye[0] - began < limit + 2.0, goodbye[0] - began


async def test_go_away_every_few_seconds(tmp_path):
    stack = start(tmp_path, EMULATOR_GOAWAY_AFTER_S="2")
    try:
        before = last_session(stack)  # the model_client's backend check at start
        await call_with_fault(stack, 3)
        sessions = sessions_of(stack, before)
        assert len(sessions) >= 3, sessions
        assert all(s["resumed_from"] is not None for s in sessions[1:]), sessions
        assert max(s["turns"] for s in sessions) == 3, sessions  # each turn once, counted on
        assert not any(s["refused_handle"] for s in sessions)
    finally:
        text = stop(stack)
    assert "handing over to connection" in text


async def test_gemini_drops_the_socket(tmp_path):
    stack = start(tmp_path, EMULATOR_DROP_AFTER_S="2.5", GEMINI_RECONNECT_STABLE_S="1")
    try:
        before = last_session(stack)  # the model_client's backend check at start
        await call_with_fault(stack, 4)
        sessions = sessions_of(stack, before)
        assert len(sessions) >= 3 and any(s["ended_by"] == "dropped" for s in sessions), sessions
        assert all(s["resumed_from"] is not None for s in sessions[1:]), sessions
        assert max(s["turns"] for s in sessions) == 3, sessions
    finally:
        text = stop(stack)
    assert "reconnecting in" in text


async def test_refused_handle_starts_fresh_with_the_conversation(tmp_path):
    stack = start(tmp_path, EMULATOR_DROP_AFTER_S="3.5", EMULATOR_REFUSE_HANDLES="true",
                  GEMINI_RECONNECT_STABLE_S="1")
    try:
        before = last_session(stack)  # the model_client's backend check at start
        await call_with_fault(stack, 5)
        sessions = sessions_of(stack, before)
        assert any(s["refused_handle"] for s in sessions), sessions
        fresh = [s for s in sessions[1:] if not s["refused_handle"]]
        assert fresh and all("conversation so far" in s["instruction"] for s in fresh), sessions
        assert "Caller: (0.9 s of speech)\nYou: (echo of 0.9 s)" in fresh[0]["instruction"], \
            fresh[0]["instruction"]
    finally:
        text = stop(stack)
    assert "starting a fresh session" in text


async def test_gateway_killed_the_call_carries_on_at_the_other_stack(tmp_path, redis_server):
    """Two stacks share a Redis behind a load balancer. The gateway holding the call is killed (and
    stays down): Twilio's stream dies, Twilio follows the ``<Redirect>`` to ``/twiml/after``, which
    lands on the other stack; that one finds the call's handle in Redis and its Gemini session resumes
    the conversation. What the caller says while no stream is up is lost (a real line does the same):
    the fault is injected in a pause, so every utterance must come back whole."""
    async with Failover() as lb:
        shared = dict(REDIS_URL=redis_server.url, PUBLIC_URL=lb.url, BRIDGE_SECRET="shared-secret-3f9a1c")
        one = start(tmp_path / "one", **shared)
        two = start(tmp_path / "two", **shared)
        lb.backends = [int(one.env["PORT"]), int(two.env["PORT"])]
        try:
            kill = lambda sid: Supervisor(one).kill9_and_keep_down("gateway:gateway")  # noqa: E731
            result, _ = await call_with_fault(one, 7, kill, into_s=-1.3, pause_s=3.0, url=lb.url)
            assert result.streams == 2 and result.stream_gaps_s[0] < 2.0, result.stream_gaps_s
            log.warning("no stream for %.2f s while the call moved", result.stream_gaps_s[0])
            resumed = [s for s in emulator_log(two) if s["resumed_from"] is not None]
            assert len(resumed) == 1 and resumed[0]["resumed_from"] >= 1 and resumed[0]["turns"] == 3, resumed
            # The call's start came through Redis too: its longest-call clock carries on.
            age = re.search(r"the call began ([0-9.]+) s ago", two.log.read_text())
            assert age and float(age[1]) >= 2.0, "the other stack did not learn when the call began"
        finally:
            stop(one)
            text = stop(two)
    assert "the call carries on: its Gemini session resumes from the kept handle" in text
    assert "transcript continues from" in text
