"""A user tools module, loaded by the model_client from BRIDGE_TOOLS_MODULE in the conversation tests."""

from model_client.tools import ToolContext, tool


async def lookup_order(order_id: str, express: bool = False, call: ToolContext | None = None) -> dict:
    """Look up an order by its id and say when it ships.

    The second paragraph is not part of the model's description."""
    return {"order": order_id, "express": express, "digits": "".join(call.digits) if call else ""}


def not_a_tool():
    """Synchronous: not offered to the model."""


async def wait_for_agent(seconds: int) -> dict:
    """Wait for a human agent to become free (slow: the caller may give up and talk over it)."""
    import asyncio

    await asyncio.sleep(seconds)
    return {"agent": "free"}


@tool(behavior="BLOCKING")
async def wait_in_line(seconds: int) -> dict:
    """Hold the caller's place in the queue (BLOCKING: the model waits, and new input cancels it)."""
    import asyncio

    await asyncio.sleep(seconds)
    return {"place": 1}
