"""The tool the live check asks the model to call (``BRIDGE_TOOLS_MODULE=bench.live_check_tools``): its
result carries a code the model must then say, which shows the result was used."""

CODE = "4217"


async def live_check_probe() -> dict:
    """Run the connection check and return its code. Call this when asked to run the live check, then
    tell the caller the code."""
    return {"status": "ok", "code": CODE, "say": f"The check code is {CODE}."}
