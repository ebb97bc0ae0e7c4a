"""Tools the model can call: built-in ``end_call`` and ``transfer_call``, plus the user's own.

User tools are plain async functions in a module named by ``BRIDGE_TOOLS_MODULE``: every public
``async def`` becomes a tool. Its declaration comes from the signature (str, int, float, bool,
list[str], Literal[...] and defaults) and the docstring (first paragraph: the description). A
parameter named ``call`` is not shown to the model: it receives the call's ``ToolContext``.

``@tool(behavior=..., scheduling=...)`` says how the model runs a tool's calls: ``BLOCKING`` (the
conversation waits for the result) or ``NON_BLOCKING`` (it goes on), and for a NON_BLOCKING call when
its result is spoken: ``SILENT``, ``WHEN_IDLE`` or ``INTERRUPT``. Undecorated, a tool gets the model's
default (NON_BLOCKING and WHEN_IDLE on gemini-3.8-live, BLOCKING elsewhere); a behaviour or scheduling
the model does not take stops the model_client at start (model_client/profiles.py).

What the model hears back is always informative (tool_results.py): a tool's non-empty result as it is;
an empty one, a failure, or no result within ``BRIDGE_TOOL_TIMEOUT_S`` as a ``status``, ``retryable``
and a sentence, since a model told nothing calls the tool again.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from google.genai import types

from common import messages as m
from common.model_profiles import BLOCKING, NON_BLOCKING, SCHEDULINGS, UNKNOWN, Profile
from model_client import profiles, tool_results

_SCALARS = {str: types.Type.STRING, int: types.Type.INTEGER, float: types.Type.NUMBER,
            bool: types.Type.BOOLEAN}


class ToolError(ValueError):
    """A user tool module that cannot be offered to the model; the message says why."""


@dataclass
class ToolContext:
    """What a tool may know about its call."""
    call: str
    call_sid: str
    params: dict[str, str]
    digits: list[str] = field(default_factory=list)  # DTMF digits pressed so far
    heard_ms: dict[int, int] = field(default_factory=dict)  # per model turn: how much was heard
    emit: Callable[[object], None] = lambda msg: None  # send an Action etc. to the gateway
    transfer_allowed: Callable[[str], bool] = lambda target: False
    # end_call, transfer_call: the model's goodbye is the last it says on the line (the session's ModelTurns)
    last_words: Callable[[], None] = lambda: None


def tool(*, behavior: str = "", scheduling: str = "") -> Callable:
    """Declare how the model runs a tool's calls and when it speaks their results (module docstring)."""
    if behavior not in ("", BLOCKING, NON_BLOCKING):
        raise ToolError(f"@tool: behavior must be {BLOCKING} or {NON_BLOCKING}, got {behavior!r}")
    if scheduling not in ("", *SCHEDULINGS):
        raise ToolError(f"@tool: scheduling must be one of {', '.join(SCHEDULINGS)}, got {scheduling!r}")

    def mark(fn: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
        fn.behavior, fn.scheduling = behavior, scheduling
        return fn
    return mark


def _schema(annotation: Any, name: str) -> types.Schema:
    if annotation in _SCALARS:
        return types.Schema(type=_SCALARS[annotation])
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal and args and all(isinstance(a, str) for a in args):
        return types.Schema(type=types.Type.STRING, enum=list(args))
    if origin is list and len(args) == 1:
        return types.Schema(type=types.Type.ARRAY, items=_schema(args[0], name))
    raise ToolError(f"parameter {name!r}: unsupported annotation {annotation!r} "
                    f"(use str, int, float, bool, list[...] or Literal[...])")


def declare(fn: Callable[..., Awaitable], profile: Profile = UNKNOWN) -> types.FunctionDeclaration:
    """A function declaration from ``fn``'s signature and docstring, its behaviour fitted to the model."""
    doc = inspect.getdoc(fn) or ""
    if not doc:
        raise ToolError(f"tool {fn.__name__!r} needs a docstring: it is the model's description")
    hints = typing.get_type_hints(fn)
    properties, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "call":
            continue
        if p.name not in hints:
            raise ToolError(f"tool {fn.__name__!r}: parameter {p.name!r} needs a type annotation")
        properties[p.name] = _schema(hints[p.name], p.name)
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    parameters = types.Schema(type=types.Type.OBJECT, properties=properties, required=required) \
        if properties else None
    return types.FunctionDeclaration(
        name=fn.__name__, description=doc.split("\n\n")[0], parameters=parameters,
        behavior=profiles.behavior(profile, getattr(fn, "behavior", ""), fn.__name__))


def load_module(path: str) -> dict[str, Callable[..., Awaitable]]:
    """The public async functions of the module at dotted ``path``."""
    try:
        module = importlib.import_module(path)
    except ImportError as e:
        raise ToolError(f"BRIDGE_TOOLS_MODULE {path!r} cannot be imported: {e}") from None
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    tools = {n: getattr(module, n) for n in names if inspect.iscoroutinefunction(getattr(module, n))}
    if not tools:
        raise ToolError(f"BRIDGE_TOOLS_MODULE {path!r} has no public async functions")
    return tools


# The built-ins take the model's default behaviour: where calls are NON_BLOCKING the model may go on
# talking after them, so the goodbye (the turn under way, else the next) is the last turn played
# (``last_words``) and the gateway leaves once it has played to its last mark.

async def end_call(call: ToolContext) -> dict:
    """End the phone call. Say goodbye first; the line is hung up once your goodbye has played."""
    call.last_words()
    call.emit(m.Action(call=call.call, kind="hangup"))
    return {"status": "ok", "result": "The call will end after your goodbye has played."}


async def transfer_call(target: str, call: ToolContext) -> dict:
    """Transfer the caller to a phone number (E.164, like +15550001111) or a SIP address. Tell the
    caller first; the transfer happens once you have finished speaking."""
    if not call.transfer_allowed(target):
        return tool_results.failed("transfer_call", f"transfers to {target!r} are not allowed", retryable=False)
    call.last_words()
    call.emit(m.Action(call=call.call, kind="transfer", target=target))
    return {"status": "ok", "result": f"The call will be transferred to {target} after you finish speaking."}


class Toolbox:
    """Every tool of a process: the declarations for the session config, and the runner."""

    def __init__(self, transfer: bool = False, module: str = "", profile: Profile = UNKNOWN,
                 timeout_s: float = 20.0):
        self.profile, self.timeout_s = profile, timeout_s
        self.tools: dict[str, Callable[..., Awaitable]] = {"end_call": end_call}
        if transfer:
            self.tools["transfer_call"] = transfer_call
        if module:
            user = load_module(module)
            clash = sorted(set(user) & set(self.tools))
            if clash:
                raise ToolError(f"BRIDGE_TOOLS_MODULE {module!r} redefines built-in tools {clash}")
            self.tools.update(user)
        self.declarations = [declare(fn, profile) for fn in self.tools.values()]
        self.schedulings = {name: profiles.scheduling(profile, getattr(fn, "scheduling", ""), name,
                                                      getattr(fn, "behavior", ""))
                            for name, fn in self.tools.items()}

    def config(self) -> list[types.Tool]:
        return [types.Tool(function_declarations=self.declarations)]

    async def run(self, name: str, args: dict, context: ToolContext) -> dict:
        """The tool's result for the model, always informative (tool_results.py); a failure or a
        timeout is reported to the model, never raised."""
        fn = self.tools.get(name)
        if fn is None:
            return tool_results.failed(name, f"there is no tool named {name!r}", retryable=False)
        kwargs = dict(args or {})
        if "call" in inspect.signature(fn).parameters:
            kwargs["call"] = context
        deadline = asyncio.timeout(self.timeout_s)
        try:
            async with deadline:
                value = await fn(**kwargs)
        except TypeError as e:
            return tool_results.failed(name, f"bad arguments: {e}", retryable=False)
        except TimeoutError:
            if not deadline.expired():
                raise  # the tool's own: a failure (tool_calls.py)
            return tool_results.timed_out(name, self.timeout_s)
        return tool_results.result(name, value)
