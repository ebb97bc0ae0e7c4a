"""How a setting is declared and read (``common/settings.py`` holds the declarations).

A ``Spec`` is one environment variable: its name, type, default, bounds or choices, description, group
and whether it is a secret. ``setting(...)`` puts a Spec on a ``Settings`` dataclass field;
``declare(...)`` makes one for a variable that is no attribute of its own. Every value, whichever
setting it belongs to, goes through the parsers here, so "80000" for a port or "maybe" for a boolean
fails the same way: a ``SettingsError`` naming the variable.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any, Callable, Mapping, NamedTuple

SPEC = "setting"  # the key of a field's metadata that holds its Spec

TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Spec(NamedTuple):
    env: str  # the variable; "" for an attribute derived from other variables (not documented)
    default: Any
    kind: type  # bool, int, float or str; what the generic reader parses the text into
    group: str
    doc: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False  # never in repr() nor in a log line
    also: tuple[str, ...] = ()  # other names for the same variable, read when ``env`` is unset
    shown: str = ""  # the default as the docs show it, where it is derived (markdown)
    read: Callable | None = None  # a special reader: (env, spec, values read so far) -> value
    persona: str = ""  # the key that sets it in a persona file (BRIDGE_PERSONA_FILE)


def declare(env: str, default: Any, *, group: str, doc: str, kind: type | None = None,
            lo: float | None = None, hi: float | None = None, choices: tuple[str, ...] = (),
            secret: bool = False, also: tuple[str, ...] = (), shown: str = "",
            read: Callable | None = None, persona: str = "") -> Spec:
    kind = kind or type(default)
    if kind in (int, float) and not read and (lo is None or hi is None):
        raise TypeError(f"{env}: a number needs both bounds (lo and hi)")
    return Spec(env=env, default=default, kind=kind, group=group, doc=doc, lo=lo, hi=hi, choices=tuple(choices),
                secret=secret, also=tuple(also), shown=shown, read=read, persona=persona)


def setting(env: str, default: Any, **spec: Any) -> Any:
    """A ``Settings`` field read from ``env`` (see ``declare`` for the keywords)."""
    declared = declare(env, default, **spec)
    return field(default=default, repr=not declared.secret, metadata={SPEC: declared})


def derived(default: Any, read: Callable | None = None, secret: bool = False) -> Any:
    """A ``Settings`` field with no variable of its own: ``read`` or ``load()`` derives it from others."""
    declared = Spec(env="", default=default, kind=type(default), group="", doc="", secret=secret, read=read)
    return field(default=default, repr=not secret, metadata={SPEC: declared})


# --- reading ----------------------------------------------------------------------------------------

def text(env: Mapping[str, str], spec: Spec) -> str:
    """The variable's value, stripped; "" when unset or blank (which means: the default)."""
    for name in (spec.env, *spec.also):
        value = env.get(name, "").strip()
        if value:
            return value
    return ""


def read(env: Mapping[str, str], spec: Spec) -> Any:
    """The value of a plain setting: the default when unset, else parsed and checked."""
    raw = text(env, spec)
    if not raw:
        return spec.default
    return check(spec, PARSERS[spec.kind](spec.env, raw))


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise SettingsError(f"{name} must be true or false (or 1/0, yes/no), got {raw!r}")


def parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def parse_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a number, got {raw!r}")
    return value


PARSERS: dict[type, Callable[[str, str], Any]] = {
    bool: parse_bool, int: parse_int, float: parse_float, str: lambda name, raw: raw}


def check(spec: Spec, value: Any) -> Any:
    """``value`` within the declared bounds or choices (a choice in its declared spelling)."""
    if spec.choices:
        spelled = {c.lower(): c for c in spec.choices}.get(str(value).lower())
        if spelled is None:
            raise SettingsError(f"{spec.env} must be {one_of(spec.choices)}, got {value!r}")
        return spelled
    if spec.lo is not None and spec.hi is not None and not spec.lo <= value <= spec.hi:
        raise SettingsError(f"{spec.env} must be >= {number(spec.lo)} and <= {number(spec.hi)}, "
                            f"got {number(value)}")
    return value


def one_of(choices: tuple[str, ...]) -> str:
    return " or ".join(filter(None, (", ".join(choices[:-1]), choices[-1])))


def number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
