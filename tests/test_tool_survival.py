"""A tool's answer outlives the connection that asked for it: when a reconnect or a goAway hand-over
comes while the tool runs, the model on the next connection is told the outcome (one GeminiSession
against an in-process emulator: real SDK, TLS, EMULATOR_TOOL_SCRIPT)."""

import asyncio
import contextlib
import json

from common import messages as m
from common.lifecycle import spawn
from common.settings import load
from model_client.config import make_client
from model_client.session import GeminiSession
from model_client.tools import ToolContext, Toolbox

SCRIPT = json.dumps([{"when": "pressed 4", "call": "wait_for_agent", "args": {"seconds": 1}}])
TOLD = "The wait_for_agent tool you called before the connection was renewed has finished"


async def until(predicate, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"waited {timeout} s for {what}") from None


def said(out) -> str:
    return "".join(msg.text for msg in out if isinstance(msg, m.Transcript) and msg.role == "model")


@contextlib.asynccontextmanager
async def opened(stage, **env):
    """A GeminiSession on ``stage`` (the emulator) with the sample tools, started; what it emits."""
    config = load({"BRIDGE_RUN_DIR": stage.settings.run_dir, "EMULATOR_PORT": str(stage.settings.emulator_port),
                   **env})
    out: list = []
    client = make_client(config)
    session = GeminiSession("c1", client, config, Toolbox(module="tests.sample_tools"),
                            ToolContext("c1", "CA1", {}), out.append, lambda call: None)
    session.start()
    try:
        await until(lambda: session.connection is not None, 5, "the first connection")
        yield session, out
    finally:
        await session.close()
        await client.aio.aclose()


async def run_call(stage, fault) -> tuple[GeminiSession, list]:
    """Press 4 (the emulator calls wait_for_agent, which takes 1 s), ``fault(emulator session)`` while
    it runs, and wait for the model to speak the tool's outcome."""
    async with opened(stage, GEMINI_HANDOVER_MARGIN_S="1.0") as (session, out):
        session.dtmf("4")
        await until(lambda: bool(session._tools), 5, "the tool call")
        first = next(iter(stage._sessions))
        await fault(first)
        await until(lambda: TOLD in said(out) and '"free"}' in said(out), 10,
                    "the outcome told on the next connection")
    return session, out


async def test_a_tool_answer_survives_a_dropped_connection(start_emulator):
    stage = await start_emulator(EMULATOR_TOOL_SCRIPT=SCRIPT)
    session, out = await run_call(stage, lambda emulated: emulated._drop_later(0))
    assert session.stats["reconnects"] >= 1
    assert '{"agent": "free"}' in said(out)


async def test_a_tool_answer_survives_a_go_away_hand_over(start_emulator):
    stage = await start_emulator(EMULATOR_TOOL_SCRIPT=SCRIPT)

    async def go_away(emulated):
        # goAway in 0.3 s with 0.3 s left: less than the margin, so the switch does not wait for the
        # tool (still running: it takes 1 s)
        spawn(emulated._go_away_later(0.3), "test-go-away", emulated._tasks)

    session, out = await run_call(stage, go_away)
    assert session.stats["handovers"] >= 1 and session.stats["reconnects"] == 0
    assert '{"agent": "free"}' in said(out)


async def test_a_tool_answer_sent_just_before_a_drop_is_told_again(start_emulator):
    """Sent, but the connection dropped before a resumption handle covered it: the next connection,
    opened with an older handle, lacks it like the caller audio sent meanwhile."""
    stage = await start_emulator(EMULATOR_TOOL_SCRIPT=SCRIPT)
    sent = asyncio.Event()

    async def drop_once_answered(emulated):
        original = emulated._handle_tool_response

        def answered(body):
            original(body)
            sent.set()
        emulated._handle_tool_response = answered
        await sent.wait()
        await emulated._drop_later(0)

    session, out = await run_call(stage, drop_once_answered)
    assert session.stats["reconnects"] >= 1 and session.stats["resent_items"] >= 1


async def test_without_a_connection_change_the_answer_is_a_function_response(start_emulator):
    stage = await start_emulator(EMULATOR_TOOL_SCRIPT=SCRIPT)
    async with opened(stage) as (session, out):
        session.dtmf("4")
        await until(lambda: '"free"}' in said(out), 10, "the tool's result spoken")
    assert TOLD not in said(out) and 'returned {"agent": "free"}' in said(out)
