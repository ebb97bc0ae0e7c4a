"""Tools the model can call: built-in ``end_call`` and ``transfer_call``, plus the user's own.

User tools are plain async functions in a module named by ``BRIDGE_TOOLS_MODULE``: every public
``async def`` becomes a tool. Its declaration comes from the signature (str, int, float, bool,
list[str], Literal[...] and defaults) and the docstring (first paragraph: the description). A
parameter named ``call`` is not shown to the model: it receives the call's ``ToolContext``.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from google.genai import types

from common import messages as m

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


def declare(fn: Callable[..., Awaitable]) -> types.FunctionDeclaration:
    """A function declaration from ``fn``'s signature and docstring."""
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
    return types.FunctionDeclaration(name=fn.__name__, description=doc.split("\n\n")[0],
                                     parameters=parameters)


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


async def end_call(call: ToolContext) -> dict:
    """End the phone call. Say goodbye first; the line is hung up once your goodbye has played."""
    call.emit(m.Action(call=call.call, kind="hangup"))
    return {"result": "The call will end after your goodbye has played."}


async def transfer_call(target: str, call: ToolContext) -> dict:
    """Transfer the caller to a phone number (E.164, like +15550001111) or a SIP address. Tell the
    caller first; the transfer happens once you have finished speaking."""
    if not call.transfer_allowed(target):
        return {"error": f"transfers to {target!r} are not allowed"}
    call.emit(m.Action(call=call.call, kind="transfer", target=target))
    return {"result": f"The call will be transferred to {target} after you finish speaking."}


class Toolbox:
    """Every tool of a process: the declarations for the session config, and the runner."""

    def __init__(self, transfer: bool = False, module: str = ""):
        self.tools: dict[str, Callable[..., Awaitable]] = {"end_call": end_call}
        if transfer:
            self.tools["transfer_call"] = transfer_call
        if module:
            user = load_module(module)
            clash = sorted(set(user) & set(self.tools))
            if clash:
                raise ToolError(f"BRIDGE_TOOLS_MODULE {module!r} redefines built-in tools {clash}")
            self.tools.update(user)
        self.declarations = [declare(fn) for fn in self.tools.values()]

    def config(self) -> list[types.Tool]:
        return [types.Tool(function_declarations=self.declarations)]

    async def run(self, name: str, args: dict, context: ToolContext) -> dict:
        """The tool's result for the model; a failure is reported to the model, never raised."""
        fn = self.tools.get(name)
        if fn is None:
            return {"error": f"no tool named {name!r}"}
        kwargs = dict(args or {})
        if "call" in inspect.signature(fn).parameters:
            kwargs["call"] = context
        try:
            result = await fn(**kwargs)
        except TypeError as e:
            return {"error": f"bad arguments for {name}: {e}"}
        return result if isinstance(result, dict) else {"result": result}
