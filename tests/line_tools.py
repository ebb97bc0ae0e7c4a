"""A user tools module for the line tests (BRIDGE_TOOLS_MODULE): a tool that keeps the model waiting."""

import asyncio


async def slow_lookup() -> dict:
    """Look something up that takes a few seconds."""
    await asyncio.sleep(3.0)
    return {"found": "yes"}
