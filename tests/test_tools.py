"""Tool declarations come from signatures and docstrings; bad tool modules are clear errors."""

from typing import Literal

import pytest
from google.genai import types

from model_client.tools import ToolContext, Toolbox, ToolError, declare, load_module


def test_declaration_from_signature_and_docstring():
    d = declare(load_module("tests.sample_tools")["lookup_order"])  # as BRIDGE_TOOLS_MODULE loads it
    assert d.name == "lookup_order"
    assert d.description == "Look up an order by its id and say when it ships."
    assert d.parameters.required == ["order_id"]
    assert {k: v.type for k, v in d.parameters.properties.items()} == {
        "order_id": types.Type.STRING, "express": types.Type.BOOLEAN}


async def pick(colour: Literal["red", "blue"], sizes: list[int], weight: float) -> dict:
    """Pick a colour."""
    return {}


def test_literal_and_list_parameters():
    props = declare(pick).parameters.properties
    assert props["colour"].enum == ["red", "blue"]
    assert props["sizes"].type == types.Type.ARRAY and props["sizes"].items.type == types.Type.INTEGER
    assert props["weight"].type == types.Type.NUMBER


async def undocumented(x: int) -> dict:
    return {}


async def untyped(x) -> dict:
    """Has no annotation."""


async def odd(x: dict) -> dict:
    """Takes a dict."""


@pytest.mark.parametrize("fn, message", [
    (undocumented, "needs a docstring"), (untyped, "needs a type annotation"), (odd, "unsupported annotation"),
])
def test_bad_tools_are_refused(fn, message):
    with pytest.raises(ToolError, match=message):
        declare(fn)


@pytest.mark.parametrize("path, message", [
    ("no.such.module", "cannot be imported"), ("json", "no public async functions"),
])
def test_bad_tool_modules_are_refused(path, message):
    with pytest.raises(ToolError, match=message):
        load_module(path)


def test_only_public_async_functions_become_tools():
    assert set(load_module("tests.sample_tools")) == {"lookup_order", "wait_for_agent", "wait_in_line"}


async def test_toolbox_runs_tools_and_reports_failures_to_the_model():
    sent = []
    box = Toolbox(transfer=True, module="tests.sample_tools")
    ctx = ToolContext("c1", "CA1", {}, digits=["4", "2"], emit=sent.append,
                      transfer_allowed=lambda t: t == "+15550001111")
    assert await box.run("lookup_order", {"order_id": "B2"}, ctx) == {
        "order": "B2", "express": False, "digits": "42"}
    assert "error" in await box.run("lookup_order", {"wrong": 1}, ctx)
    assert "error" in await box.run("nope", {}, ctx)
    assert "not allowed" in (await box.run("transfer_call", {"target": "+1900"}, ctx))["error"]
    assert not sent
    await box.run("transfer_call", {"target": "+15550001111"}, ctx)
    await box.run("end_call", {}, ctx)
    assert [(a.kind, a.target) for a in sent] == [("transfer", "+15550001111"), ("hangup", "")]
    assert [d.name for d in box.declarations] == ["end_call", "transfer_call", "lookup_order",
                                                  "wait_for_agent", "wait_in_line"]
