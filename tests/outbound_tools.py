"""A user tools module for the outbound tests: what a call was placed with reaches its tools."""

from model_client.tools import ToolContext


async def read_call_params(call: ToolContext | None = None) -> dict:
    """Read the values this call was placed with."""
    return {"params": dict(call.params) if call else {}}
