"""A user tools module for the line tests (BRIDGE_TOOLS_MODULE): a tool that keeps the model waiting.
BLOCKING, so the model says nothing until its result (on gemini-3.8-live a tool is NON_BLOCKING by
default, and the model talks on while it runs)."""

import asyncio

from model_client.tools import tool


@tool(behavior="BLOCKING")
async def slow_lookup() -> dict:
    """Look something up that takes a few seconds."""
    await asyncio.sleep(3.0)
    return {"found": "yes"}
