"""Readers of the settings whose default is derived or whose value has a format of its own.

A reader is ``(env, spec, values) -> value``: ``spec`` is the setting's declaration (its name for the
error message, its default, the default's text in the docs), ``values`` the settings read before it.
Plain settings need none: ``common.setting_types.read`` parses and bounds-checks them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from typing import Mapping
from urllib.parse import urlsplit

from common.setting_types import SettingsError, Spec, one_of, parse_bool, read, text

MAX_RUN_DIR = 80  # ipc:// paths are Unix socket paths: 107 bytes at most, with the file name

Env = Mapping[str, str]


def run_dir(env: Env, spec: Spec, values: dict) -> str:
    path = text(env, spec) or os.path.join(tempfile.gettempdir(), f"gemini-bridge-{os.getuid()}")
    if len(path) > MAX_RUN_DIR:
        raise SettingsError(f"{spec.env} is too long for ipc:// socket paths (max {MAX_RUN_DIR} "
                            f"characters): {path!r}")
    return path


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota = f.read()
    except OSError:
        quota = ""
    return cores_allowed(len(os.sched_getaffinity(0)), quota)


def cores_allowed(affinity: int, cpu_max: str) -> int:
    """``affinity`` cores, capped by a cgroup v2 ``cpu.max`` ("150000 100000": 1.5 CPUs, so 2; "max
    100000": no cap). A container limited to 2 CPUs on a 64-core host has 2."""
    try:
        quota, period = cpu_max.split()
        return affinity if quota == "max" else min(affinity, max(1, -(-int(quota) // int(period))))
    except ValueError:
        return affinity


def process_count(env: Env, spec: Spec, values: dict, *, cores_each: int, least: int) -> int:
    """The value; unset or ``0``: one process per ``cores_each`` usable cores, at least ``least``."""
    return read(env, spec) or max(least, usable_cores() // cores_each)


def from_template(env: Env, spec: Spec, values: dict) -> str:
    """The value, else the default the docs show with ``$PORT`` and ``$BRIDGE_RUN_DIR`` filled in."""
    value = text(env, spec) or spec.shown.strip("`")
    for name, attribute in (("$PORT", "port"), ("$BRIDGE_RUN_DIR", "run_dir")):
        value = value.replace(name, str(values[attribute])) if name in value else value
    return value


def _url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    prefixes = tuple(s + "://" for s in schemes)
    if not value.startswith(prefixes):
        raise SettingsError(f"{name} must start with {one_of(prefixes)}, got {value!r}")
    return value


def http_url(env: Env, spec: Spec, values: dict) -> str:
    return _url(spec.env, from_template(env, spec, values), ("http", "https")).rstrip("/")


def endpoint(env: Env, spec: Spec, values: dict) -> str:
    return _url(spec.env, from_template(env, spec, values), ("ipc", "tcp"))


def backend(env: Env, spec: Spec, values: dict, *, echo: Spec, vertex: Spec) -> str:
    """An API key → "gemini"; the ``vertex`` flag → "vertex"; neither → the local emulator. The ``echo``
    flag, for the bridge-only bench (bench/echo_model.py) → "echo", whatever else is set."""
    if read(env, echo):
        return "echo"
    if read(env, vertex):
        if not values["gcp_project"] and not values["api_key"]:
            raise SettingsError(f"{vertex.env} needs GOOGLE_CLOUD_PROJECT (or an API key)")
        return "vertex"
    return "gemini" if values["api_key"] else "emulator"


def phone(env: Env, spec: Spec, values: dict) -> bool:
    raw = text(env, spec)
    return parse_bool(spec.env, raw) if raw else values["backend"] == "emulator"


def dtmf_text(env: Env, spec: Spec, values: dict) -> str:
    value = text(env, spec) or spec.default
    if "{digit}" not in value:
        raise SettingsError(f"{spec.env} must contain {{digit}}, got {value!r}")
    return value


def redis_url(env: Env, spec: Spec, values: dict) -> str:
    value = text(env, spec)
    if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):  # the URL may hold a password
        raise SettingsError(f"{spec.env} must be redis://, rediss:// or unix:// (got another scheme)")
    return value


def transfer_targets(env: Env, spec: Spec, values: dict) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text(env, spec).split(",") if t.strip())
    for t in targets:
        if not (t.startswith(("+", "sip:", "sips:")) or t.rstrip("*").isdigit()):
            raise SettingsError(f"{spec.env}: {t!r} is not a phone number (+1555...), a sip: URI or a "
                                "prefix ending in *")
    return targets


def fallback_dial(env: Env, spec: Spec, values: dict) -> str:
    """A transfer target without the prefix form: what gateway/twiml.py's ``dial_twiml`` takes."""
    target = text(env, spec)
    if target and not re.fullmatch(r"\+?[0-9]{3,15}|sips?:[^\s<>&\"']+", target):
        raise SettingsError(f"{spec.env} must be a phone number (+1555...) or a sip: URI, got {target[:80]!r}")
    return target


def tool_script(env: Env, spec: Spec, values: dict) -> tuple[tuple[str, str, str], ...]:
    """(text trigger, tool name, JSON args) steps from a JSON list of {"when", "call", "args"}."""
    raw = text(env, spec)
    try:
        steps = json.loads(raw) if raw else []
        return tuple((str(s["when"]), str(s["call"]), json.dumps(s.get("args", {}))) for s in steps)
    except (ValueError, TypeError, KeyError) as e:
        raise SettingsError(f'{spec.env} must be a JSON list of {{"when": text, "call": tool, '
                            f'"args": {{...}}}}: {e}') from None


PRICE_KEY = re.compile(r"^(input|output)_[a-z]{1,20}$")


def prices(env: Env, spec: Spec, values: dict) -> tuple[tuple[str, float], ...]:
    """("<direction>_<modality>", price per million tokens) pairs from a JSON object of them."""
    raw = text(env, spec)
    try:
        table = json.loads(raw) if raw else {}
        if not isinstance(table, dict):
            raise ValueError("not an object")
        for key, price in table.items():
            if not PRICE_KEY.match(key) or isinstance(price, bool) or not isinstance(price, (int, float)) \
                    or not 0 <= price < 1e6:
                raise ValueError(f"{key!r}: {price!r}")
    except ValueError as e:
        raise SettingsError(f'{spec.env} must be a JSON object of "<input|output>_<modality>": price per '
                            f'million tokens (e.g. {{"input_audio": 3, "output_audio": 12}}): {e}') from None
    return tuple((key, float(price)) for key, price in sorted(table.items()))


def with_persona_file(env: Env, spec: Spec, names: dict[str, str]) -> Env:
    """The environment over the values of the persona file ``spec`` names; ``names`` maps the file's
    keys to their variables."""
    path = text(env, spec)
    if not path:
        return env
    try:
        with open(path, "rb") as f:
            persona = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"{spec.env} {path!r} cannot be read: {e}") from None
    unknown = sorted(set(persona) - set(names))
    if unknown:
        raise SettingsError(f"{spec.env} {path!r}: unknown keys {unknown}; known: {sorted(names)}")
    from_file = {names[k]: str(v) for k, v in persona.items()}
    return {**from_file, **{k: v for k, v in env.items() if v.strip()}}


def curve_keys(env: Env, secrets: dict[str, Spec], directory: Spec, values: dict) -> dict[str, str]:
    """curve_<role>_public and curve_<role>_secret for each role of ``secrets`` (role → the variable
    of its secret key), from that variable, else from the role's certificate in ``directory``. A
    tcp:// endpoint needs them (or BRIDGE_INSECURE_DEV)."""
    path = text(env, directory)
    if path and not os.path.isdir(path):
        raise SettingsError(f"{directory.env} must be a directory, got {path!r}")
    keys = {}
    for role, spec in secrets.items():
        raw = text(env, spec)
        public, secret = _z85_secret(spec.env, raw) if raw else \
            _curve_file(directory.env, os.path.join(path, role)) if path else ("", "")
        keys[f"curve_{role}_public"], keys[f"curve_{role}_secret"] = public, secret
    tcp = [e for e in (values["gateway_endpoint"], values["model_client_endpoint"]) if e.startswith("tcp://")]
    if tcp and not all(keys[f"curve_{role}_public"] for role in secrets) and not values["insecure_dev"]:
        raise SettingsError(f"{tcp[0]} is tcp:// but no CURVE keys are set: set "
                            f"{' and '.join(s.env for s in secrets.values())}, or {directory.env} "
                            "(python -m common.curve DIR makes one), or BRIDGE_INSECURE_DEV=true for plaintext")
    return keys


def _z85_secret(name: str, raw: str) -> tuple[str, str]:
    import zmq  # only when CURVE keys are configured

    try:
        return zmq.curve_public(raw.encode()).decode(), raw
    except (ValueError, zmq.ZMQError):
        raise SettingsError(f"{name} must be a 40-character Z85 CURVE secret key") from None


def _curve_file(name: str, stem: str) -> tuple[str, str]:
    """(public, secret) from stem.key_secret, else (public, "") from stem.key, else ("", "")."""
    import zmq.auth

    for path in (stem + ".key_secret", stem + ".key"):
        if not os.path.exists(path):
            continue
        if path.endswith("_secret") and os.stat(path).st_mode & 0o077:
            raise SettingsError(f"{name}: {path} is readable by others; chmod 600 it")
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise SettingsError(f"{name}: {path} is not a CURVE certificate: {e}") from None
        return public.decode(), (secret or b"").decode()
    return "", ""
