"""The machinery under the wire schema (common/messages.py), which knows no message type: a batch as
a msgpack array of ``[tag, field, ...]`` in declaration order, each field's type checked on the way
in, runs formed and undone, and the columns of a run checked and cut. messages.py passes its
``Schema`` in; everything that names a message type stays there."""

from __future__ import annotations

import operator
import reprlib
from dataclasses import fields
from itertools import chain
from typing import NamedTuple

import msgpack

PY_TYPES = {"str": str, "int": int, "bytes": bytes, "bool": bool, "dict": dict, "list": list}


class Schema(NamedTuple):
    types: dict[int, type]  # tag -> message type: the closed set
    layouts: dict  # tag -> ``layout`` of its type
    run_types: tuple[type, ...]  # the types whose consecutive messages travel as one run
    run_type: type  # the run (AudioRun): ``of(messages)`` makes one, ``messages()`` gives them back


class WireError(ValueError):
    """A batch that does not follow the schema. Between our own processes that is a bug."""


def layout(cls: type) -> tuple[operator.attrgetter, tuple[type, ...], int]:
    """(getter of all fields in order, each field's type, how many fields are required)."""
    fs = fields(cls)
    names = [f.name for f in fs]
    required = sum(1 for f in fs if f.default is f.default_factory)  # both MISSING
    return operator.attrgetter(*names), tuple(PY_TYPES[f.type] for f in fs), required


def pack(batch: list, schema: Schema) -> bytes:
    items = runs_of(batch, schema.run_types, schema.run_type.of)
    return msgpack.packb([(m.TAG, *fields_of(m, schema.layouts)) for m in items], use_bin_type=True)


def unpack(frame: bytes, schema: Schema, runs: bool = False) -> list:
    try:
        items = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise WireError(f"not msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(items, list):
        raise WireError(f"batch must be an array, got {type(items).__name__}")
    batch = [decode(item, schema.types, schema.layouts) for item in items]
    if runs or not any(type(msg) is schema.run_type for msg in batch):
        return batch
    return [one for msg in batch for one in (msg.messages() if type(msg) is schema.run_type else (msg,))]


def fields_of(msg, layouts: dict) -> tuple:
    got = layouts[msg.TAG][0](msg)
    return got if isinstance(got, tuple) else (got,)


def decode(item, types: dict[int, type], layouts: dict):
    """The message ``item`` (``[tag, field, ...]``) stands for; WireError if it is not one."""
    if not isinstance(item, list) or not item or type(item[0]) is not int:
        raise WireError(f"message must be [tag, ...], got {short(item)}")
    tag, values = item[0], item[1:]
    found = layouts.get(tag)
    if found is None:
        raise WireError(f"unknown message tag {tag}")
    cls = types[tag]
    _, expected_types, required = found
    if not required <= len(values) <= len(expected_types):
        raise WireError(f"{cls.__name__} takes {required}..{len(expected_types)} fields, got {len(values)}")
    for value, expected in zip(values, expected_types):
        if type(value) is not expected:
            raise WireError(f"{cls.__name__}: {short(value)} is not {expected.__name__}")
    msg = cls(*values)
    if hasattr(msg, "check"):
        msg.check()
    return msg


def check_columns(calls: list, ints: dict[str, list], extra: list, *, extra_expected: bool,
                  audio: bytes) -> None:
    """An AudioRun's columns: one row per call (each call once), ``ints`` and ``extra`` (empty unless
    ``extra_expected``) of ints, and ``sizes`` cutting ``audio`` exactly."""
    n, sizes = len(calls), ints["sizes"]
    # Every run between our stages passes: one pass over all its ints, then the checks below only to
    # name what is wrong.
    if n and all(len(column) == n for column in ints.values()) and len(extra) == (n if extra_expected else 0) \
            and set(map(type, calls)) == {str} and set(map(type, chain(*ints.values(), extra))) == {int} \
            and len(set(calls)) == n and min(sizes) >= 0 and sum(sizes) == len(audio):
        return
    if not n or any(len(column) != n for column in ints.values()) or len(extra) != (n if extra_expected else 0):
        raise WireError(f"AudioRun columns of unequal lengths ({n} calls)")
    for name, column, kind in (("calls", calls, str), *((k, v, int) for k, v in ints.items()),
                               ("extra", extra, int)):
        if column and set(map(type, column)) != {kind}:
            raise WireError(f"AudioRun {name} must all be {kind.__name__}")
    if len(set(calls)) != n:
        raise WireError("AudioRun holds a call twice")
    if min(sizes) < 0 or sum(sizes) != len(audio):
        raise WireError(f"AudioRun sizes do not cut its {len(audio)} bytes of audio")


def runs_of(batch: list, run_types: tuple[type, ...], make_run) -> list:
    """``batch`` with each stretch of two or more messages of one of ``run_types``, for different calls,
    as one ``make_run(stretch)`` (a call met again starts a new run: its frames must stay in order)."""
    out, run, calls = [], [], set()
    for msg in batch:
        if run and (type(msg) is not type(run[0]) or msg.call in calls):
            out.append(run[0] if len(run) == 1 else make_run(run))
            run, calls = [], set()
        if type(msg) in run_types:
            run.append(msg)
            calls.add(msg.call)
        else:
            out.append(msg)
    if run:
        out.append(run[0] if len(run) == 1 else make_run(run))
    return out


def cut(blob: bytes, sizes: list[int]) -> list[bytes]:
    """``blob`` cut into pieces of ``sizes`` bytes (an AudioRun's audio into each message's)."""
    out, start = [], 0
    for size in sizes:
        out.append(blob[start:start + size])
        start += size
    return out


def short(value) -> str:
    text = reprlib.repr(value)  # bounded depth: repr() of a frame nested ~1000 deep raises RecursionError
    return text if len(text) <= 60 else text[:57] + "..."
