"""``make live-check`` (``python -m bench.live_check``): does this key, model and region work, end to end?

With ``GEMINI_API_KEY`` (or the Vertex variables) set, it starts the real stack against the real
service, places one short scripted call with synthetic speech and prints a table, each step pass or
fail with its timing. Without credentials it runs the same call against the emulator once per model
generation (one stack each, side by side), which is what ``make test`` runs (tests/test_live_check.py).

The call: the greeting asks the model to call the ``live_check_probe`` tool (bench/live_check_tools.py)
and say its code; the caller speaks; speaks again over a long reply (barge-in); the model_client holding
the call is killed, so another resumes the Gemini session by its handle; the caller speaks once more;
then presses 9, which the model is told means "say goodbye and call end_call".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.chaos import Supervisor, holder, log_records
from bench.live_check_tools import CODE
from common import messages as m
from common.settings import load
from harness.stack import Stack
from softphone.caller import place_call
from softphone.speech import silence, speech_like
from softphone.webhook import new_sid

PROFILES = ("gemini-3.8-live", "gemini-3.1-flash-live-preview", "gemini-2.5-flash-native-audio-preview-12-2025",
            "gemini-live-2.5-flash-native-audio")
CREDENTIALS = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT",
               "GOOGLE_CLOUD_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS")
INSTRUCTION = ("You are the voice of a connection test. Keep every answer to one short sentence. When the "
               "caller presses 9, say goodbye and call end_call.")
GREETING = "Run the live check: call live_check_probe, then tell the caller the code it returns."
EMULATOR_SCRIPT = [{"when": "live_check_probe", "call": "live_check_probe"},
                   {"when": "pressed 9", "call": "end_call"}]
RATE = 8000


class Plan(NamedTuple):
    """The caller's side, on the call clock (seconds): when each utterance starts and ends."""
    lead_s: float = 2.5  # the greeting and the tool's turns
    said: tuple[float, float] = (2.5, 3.3)
    long: tuple[float, float] = (4.8, 6.8)  # its reply is long: the caller talks over it
    over: tuple[float, float] = (7.6, 8.2)
    kill_s: float = 9.8  # the model_client holding the call is killed here
    after: tuple[float, float] = (11.0, 11.8)
    dtmf_s: float = 13.5
    listen_s: float = 6.0

    def audio(self) -> np.ndarray:
        parts, at = [], 0.0
        for seed, (start, end) in enumerate((self.said, self.long, self.over, self.after), 1):
            parts += [silence(start - at), speech_like(end - start, seed=seed)]
            at = end
        return np.concatenate(parts).astype(np.int16)


class Step(NamedTuple):
    name: str
    ok: bool
    seconds: float | None
    detail: str


def real_service() -> bool:
    return load().backend in ("gemini", "vertex")


def stack_env(model: str, real: bool) -> dict[str, str]:
    env = {"GEMINI_MODEL": model, "BRIDGE_TRANSCODERS": "1", "BRIDGE_MODEL_CLIENTS": "2",
           "BRIDGE_TOOLS_MODULE": "bench.live_check_tools", "BRIDGE_GREETING": GREETING,
           "SYSTEM_INSTRUCTION": INSTRUCTION, "LOG_FORMAT": "json"}
    if not real:
        env.update(GEMINI_SILENCE_MS="300", EMULATOR_TOOL_SCRIPT=json.dumps(EMULATOR_SCRIPT))
    return env


def advice(state: str, why: str, model: str) -> str:
    """What a user can do about a backend that is down."""
    location = load().gcp_location
    if state != m.BACKEND_UNREACHABLE and re.search(r"not found|not supported|model", why, re.I):
        # Whichever close code it came with (a 1008 reads as a refused key to the backend check).
        return (f"model {model!r} was refused: set GEMINI_MODEL to a Live model your API serves (on "
                f"Vertex, one served in GOOGLE_CLOUD_LOCATION={location}). It said: {why}")
    if state == m.BACKEND_KEY_REFUSED:
        return ("the service refused the credentials: check GEMINI_API_KEY (or, for Vertex, "
                f"GOOGLE_CLOUD_PROJECT and `gcloud auth application-default login`). It said: {why}")
    if state == m.BACKEND_SETUP_REFUSED:
        return f"the session setup was refused (a setting this model does not take?). It said: {why}"
    return (f"could not reach the service (network, proxy, firewall; on Vertex, is "
            f"GOOGLE_CLOUD_LOCATION={location} a region with the Live API?). It said: {why}")


async def check(model: str, run_dir: Path, real: bool, plan: Plan = Plan(),
                extra_env: dict[str, str] | None = None) -> list[Step]:
    stack = Stack(run_dir, **stack_env(model, real), **(extra_env or {}))
    if real:  # the stack harness strips credentials (tests never reach Google); this run needs them
        stack.env.update({k: v for k, v in os.environ.items() if k in CREDENTIALS})
    began = time.monotonic()
    await asyncio.to_thread(stack.start, 60.0)
    try:
        peers = [p for p in stack.health()["peers"] if p.get("role") == m.ROLE_MODEL_CLIENT]
        down = [p for p in peers if p.get("backend") != m.BACKEND_UP]
        if down:
            return [Step("session opens", False, None,
                         advice(down[0]["backend"], down[0].get("backend_why", ""), model))]
        checked = [re.search(r"Gemini backend ok \(.*, (\d+) ms\)", r["message"]) for r in log_records(stack)]
        setup_ms = [int(found.group(1)) for found in checked if found]
        opened = Step("session opens", True, min(setup_ms) / 1000 if setup_ms else None,
                      f"a Live session set up and closed (the stack started in {time.monotonic() - began:.0f} s)")
        return [opened, *await _call(stack, plan)]
    finally:
        await asyncio.to_thread(stack.stop)


async def _call(stack: Stack, plan: Plan) -> list[Step]:
    sid, wall = new_sid("CA"), time.time()
    call = asyncio.create_task(place_call(stack.url, plan.audio(), listen_s=plan.listen_s, call_sid=sid,
                                          dtmf=[(plan.dtmf_s, "9")], timeout_s=60))
    await asyncio.sleep(plan.kill_s)
    victim = holder(stack, sid, "model_client")
    if victim:
        await asyncio.to_thread(Supervisor(stack).kill9, victim)
    result = await call
    await asyncio.sleep(0.5)  # the gateway writes the transcript's last lines as the call ends
    records = [r for r in log_records(stack) if r.get("call_sid") == sid]
    said = _model_said(stack, sid)
    return [_reply_step("speech in → audio back", result, plan.said[1], plan.long[0]),
            _barge_step(result, plan),
            _tool_step(records, said, wall),
            _resume_step(records, result, plan, victim),
            _end_step(result, records, plan)]


def _model_said(stack: Stack, sid: str) -> list[dict]:
    path = stack.run_dir / "transcripts" / f"{sid}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [line for line in lines if line.get("role") == "model"]


def _first_reply(result, after_s: float, before_s: float) -> float | None:
    return next((t for t in result.reply_starts_s if after_s <= t < before_s), None)


def _reply_step(name: str, result, spoke_until: float, next_s: float) -> Step:
    start = _first_reply(result, spoke_until, next_s)
    if start is None:
        return Step(name, False, None, "no audio came back after the caller spoke")
    return Step(name, True, start - spoke_until, "from the end of the caller's speech to the first audio")


def _barge_step(result, plan: Plan) -> Step:
    clear = next((t for t in result.clears if plan.over[0] <= t <= plan.over[1] + 1.5), None)
    if clear is None:
        return Step("barge-in honoured", False, None,
                    "no Twilio clear while the caller talked over the model's reply")
    return Step("barge-in honoured", True, clear - plan.over[0], "from the caller talking over it to the clear")


def _tool_step(records: list[dict], said: list[dict], wall: float) -> Step:
    called = any(r["message"].startswith("tool call live_check_probe") for r in records)
    spoken = next((line for line in said if CODE in re.sub(r"\D", "", line.get("text", ""))
                   or "four two one seven" in line.get("text", "").lower()), None)
    if not called:
        return Step("tool called, result used", False, None, "the model did not call live_check_probe")
    if spoken is None:
        return Step("tool called, result used", False, None, f"the tool ran, but the model never said {CODE}")
    return Step("tool called, result used", True, spoken["t"] - wall, "from the call's start to its code spoken")


def _resume_step(records: list[dict], result, plan: Plan, victim: str | None) -> Step:
    name = "forced reconnect resumes by handle"
    took = any("taking over a live call, resuming its handle" in r["message"] for r in records)
    if not victim or not took:
        return Step(name, False, None, "no model_client took the call over with its resumption handle"
                    if victim else "could not tell which model_client held the call")
    step = _reply_step(name, result, plan.after[1], plan.dtmf_s)
    return step._replace(detail=step.detail + ", after the reconnect") if step.ok else step


def _end_step(result, records: list[dict], plan: Plan) -> Step:
    name = "end_call ends the line"
    asked = any(r["message"].startswith("hangup requested") for r in records)
    if result.closed_by != "server" or not asked:
        return Step(name, False, None, "the model did not end the call after the caller pressed 9")
    return Step(name, True, len(result.sent) / RATE - plan.dtmf_s, "from the key press to the line closing")


def table(model: str, where: str, steps: list[Step]) -> str:
    lines = [f"live check: {model} on {where}", f"  {'step':<36}{'result':<8}{'time':>9}  detail"]
    for step in steps:
        took = f"{step.seconds:.2f} s" if step.seconds is not None else "—"
        lines.append(f"  {step.name:<36}{'pass' if step.ok else 'FAIL':<8}{took:>9}  {step.detail}")
    return "\n".join(lines)


async def run(models: list[str], real: bool, out_dir: Path) -> tuple[bool, str]:
    """Every model's check, side by side; (all passed, the tables)."""
    results = await asyncio.gather(*(check(model, out_dir / f"p{i}", real) for i, model in enumerate(models)))
    where = "the real service" if real else "the emulator"
    tables = [table(model, where, steps) for model, steps in zip(models, results)]
    return all(step.ok for steps in results for step in steps), "\n\n".join(tables)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="model id to check (repeatable); default: "
                        "GEMINI_MODEL against the real service, every profile against the emulator")
    args = parser.parse_args(argv)
    real = real_service()
    models = args.model or ([load().model] if real else list(PROFILES))
    with tempfile.TemporaryDirectory(prefix="live-check-") as tmp:
        ok, text = asyncio.run(run(models, real, Path(tmp)))
    print(text)
    print("\nall steps passed" if ok else "\nsome steps FAILED: see the detail column")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
