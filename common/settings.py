"""Settings: read once from the environment into one frozen object, passed down.

No other module reads ``os.environ``. A malformed value is a ``SettingsError`` naming the variable.
Every variable is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


DEFAULT_MODEL = "gemini-3.8-live"
MAX_RUN_DIR = 80  # ipc:// paths are Unix socket paths: 107 bytes at most, with the file name


@dataclass(frozen=True)
class Settings:
    # Process identity (supervisord passes process_num to each of numprocs copies).
    process_num: int = 0
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one object per line
    # Where ipc:// sockets, the emulator's certificate and supervisord's files live.
    run_dir: str = ""
    # Gateway (HTTP + Twilio WebSocket).
    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str = ""
    # Security and limits (gateway/security.py, admission.py, limits.py; common/curve.py).
    twilio_auth_token: str = field(default="", repr=False)
    bridge_secret: str = field(default="", repr=False)  # signs stream tokens ("" = random per process)
    insecure_dev: bool = False  # no auth token and non-loopback peers served anyway
    upgrade_signature: str = "log"  # off | log | enforce
    max_calls: int = 0  # 0 = what the live peers advertise
    max_ws_message: int = 64 * 1024
    max_media_payload: int = 16000
    max_msg_rate: float = 150.0  # messages/s per Twilio socket (Twilio sends 50 media/s + marks)
    max_msg_burst: int = 300
    flood_close_s: float = 5.0
    start_timeout_s: float = 10.0
    media_timeout_s: float = 60.0  # 0 = never
    curve_server_public: str = ""  # Z85; CURVE keys for tcp:// endpoints
    curve_server_secret: str = field(default="", repr=False)
    curve_client_public: str = ""
    curve_client_secret: str = field(default="", repr=False)
    # ZeroMQ endpoints. The model_client template takes {n}, its process number.
    gateway_endpoint: str = ""
    model_client_endpoint: str = ""
    heartbeat_s: float = 1.0
    transcoders: int = 2
    model_clients: int = 1
    # Model backend (DESIGN §5): "gemini", "vertex" or "emulator" ("echo": bench only, no model at all).
    backend: str = "emulator"
    api_key: str = field(default="", repr=False)
    gcp_project: str = ""
    gcp_location: str = ""
    model: str = DEFAULT_MODEL
    voice: str = "Puck"
    language: str = "en-US"
    system_instruction: str = "You are a friendly, concise phone agent."
    silence_ms: int = 500
    start_sensitivity: str = ""  # "" = the service's default; else START_SENSITIVITY_HIGH/_LOW
    end_sensitivity: str = ""
    prefix_padding_ms: int = 20
    temperature: float | None = None
    # Conversation.
    prewarm: bool = True  # open the Gemini session at the webhook, before the stream starts
    greeting: str = ""  # text prompt that makes the model speak first ("" = wait for the caller)
    playback_ahead_ms: int = 1000  # how far model audio may run ahead of the caller's playback
    # On SIGTERM, how long live calls may go on before the gateway ends them: the whole stop must fit
    # in the 10 s that Cloud Run and `docker stop` allow.
    drain_s: float = 5.0
    transcript_dir: str = ""
    dtmf_text: str = "The caller pressed {digit} on the phone keypad."
    transfer_targets: tuple[str, ...] = ()  # allow-list for transfer_call: numbers, sip: URIs, prefix*
    fallback_dial: str = ""  # a number or sip: URI /twiml dials while Gemini is down ("" = apologise)
    tools_module: str = ""  # dotted path of a module of async functions offered to the model as tools
    phone: bool = False  # the browser phone at /phone (development): on by default with the emulator
    # Faults (DESIGN §4): what a call keeps so that no single fault ends it or loses caller audio.
    replay_s: float = 15.0  # caller audio kept (gateway, model_client) until a resumption handle covers it
    reassign_wait_s: float = 10.0  # a call whose model_client died waits this long for another
    reconnect_max: int = 5  # Gemini reconnects in a row (without a stable connection) before giving up
    reconnect_stable_s: float = 10.0  # a connection up this long resets the reconnect count
    handover_margin_s: float = 1.0  # after goAway: switch at once when this little time is left
    send_ms: float = 40.0  # caller audio goes to Gemini at most once per this long (model_client/session.py)
    redis_url: str = field(default="", repr=False)  # call state shared by gateways ("" = in memory)
    metrics_token: str = field(default="", repr=False)  # /metrics for non-loopback scrapers (Bearer)
    # Emulator (used when no Gemini credentials are set).
    emulator_host: str = "127.0.0.1"
    emulator_port: int = 8443
    emulator_persona: str = "echo"
    emulator_goaway_after_s: float = 0.0
    emulator_drop_after_s: float = 0.0
    emulator_refuse_handles: bool = False  # refuse every resumption handle (close 1007), as if expired
    emulator_refuse_key: bool = False  # refuse every session's key at setup (close 1008), as a bad key
    emulator_tool_script: tuple[tuple[str, str, str], ...] = ()  # (text trigger, tool name, JSON args)
    # Transcoder: the resampling engine (transcoder/resample.py); "fir" meets the DSP targets.
    resampler: str = "fir"

    @property
    def emulator_base_url(self) -> str:
        return f"https://{self.emulator_host}:{self.emulator_port}"

    @property
    def emulator_cert(self) -> str:
        return os.path.join(self.run_dir, "emulator-cert.pem")

    @property
    def emulator_key(self) -> str:
        return os.path.join(self.run_dir, "emulator-key.pem")

    def transfer_allowed(self, target: str) -> bool:
        """Is ``target`` on the transfer allow-list (exact, or a prefix entry ending in ``*``)?"""
        return any(target == t or (t.endswith("*") and target.startswith(t[:-1]) and target[len(t) - 1:]
                                   .lstrip("+").isdigit()) for t in self.transfer_targets)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a log line (common/logs.py masks them)."""
        redis_password = urlsplit(self.redis_url).password or ""
        return tuple(v for v in (self.api_key, self.twilio_auth_token, self.bridge_secret,
                                 self.curve_server_secret, self.curve_client_secret, redis_password,
                                 self.metrics_token) if v)

    def model_client_endpoint_for(self, n: int) -> str:
        return self.model_client_endpoint.format(n=n)

    @property
    def stream_url(self) -> str:
        """The Twilio stream URL: wss:// behind https (as Twilio requires), ws:// for local http."""
        scheme, rest = self.public_url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest.rstrip("/") + "/ws/twilio"


def _int(env: Mapping[str, str], name: str, default: int, lo: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < lo:
        raise SettingsError(f"{name} must be >= {lo}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise SettingsError(f"{name} must be >= 0, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not value.startswith(("http://", "https://")):
        raise SettingsError(f"{name} must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


def _endpoint(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not value.startswith(("ipc://", "tcp://")):
        raise SettingsError(f"{name} must be an ipc:// or tcp:// endpoint, got {value!r}")
    return value


def _redis_url(env: Mapping[str, str]) -> str:
    url = env.get("REDIS_URL", "").strip()
    if url and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError("REDIS_URL must be redis://, rediss:// or unix:// (got another scheme)")
    return url


def _backend(env: Mapping[str, str]) -> tuple[str, str]:
    """Gemini API key → "gemini"; Vertex flag → "vertex"; neither → the local emulator. The bridge-only
    bench's lean echo (model_client/echo.py) → "echo"."""
    if _bool(env, "BRIDGE_ECHO_MODEL"):
        return "echo", ""
    key = env.get("GEMINI_API_KEY", "").strip() or env.get("GOOGLE_API_KEY", "").strip()
    if _bool(env, "GOOGLE_GENAI_USE_VERTEXAI"):
        if not env.get("GOOGLE_CLOUD_PROJECT", "").strip() and not key:
            raise SettingsError("GOOGLE_GENAI_USE_VERTEXAI needs GOOGLE_CLOUD_PROJECT (or an API key)")
        return "vertex", key
    if key:
        return "gemini", key
    return "emulator", ""


# A persona file (TOML) may set these; the environment still wins over it.
PERSONA_KEYS = {"system_instruction": "SYSTEM_INSTRUCTION", "voice": "GEMINI_VOICE",
                "language": "GEMINI_LANGUAGE", "silence_ms": "GEMINI_SILENCE_MS",
                "start_sensitivity": "GEMINI_START_SENSITIVITY", "end_sensitivity": "GEMINI_END_SENSITIVITY",
                "prefix_padding_ms": "GEMINI_PREFIX_PADDING_MS", "temperature": "GEMINI_TEMPERATURE",
                "greeting": "BRIDGE_GREETING"}
SENSITIVITIES = {"GEMINI_START_SENSITIVITY": ("START_SENSITIVITY_HIGH", "START_SENSITIVITY_LOW"),
                 "GEMINI_END_SENSITIVITY": ("END_SENSITIVITY_HIGH", "END_SENSITIVITY_LOW")}


def _with_persona_file(env: Mapping[str, str]) -> Mapping[str, str]:
    path = env.get("BRIDGE_PERSONA_FILE", "").strip()
    if not path:
        return env
    try:
        with open(path, "rb") as f:
            persona = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"BRIDGE_PERSONA_FILE {path!r} cannot be read: {e}") from None
    unknown = sorted(set(persona) - set(PERSONA_KEYS))
    if unknown:
        raise SettingsError(f"BRIDGE_PERSONA_FILE {path!r}: unknown keys {unknown}; "
                            f"known: {sorted(PERSONA_KEYS)}")
    from_file = {PERSONA_KEYS[k]: str(v) for k, v in persona.items()}
    return {**from_file, **{k: v for k, v in env.items() if v.strip()}}


def _choice(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip().upper()
    if value and value not in SENSITIVITIES[name]:
        raise SettingsError(f"{name} must be one of {', '.join(SENSITIVITIES[name])}, got {value!r}")
    return value


def _temperature(env: Mapping[str, str]) -> float | None:
    if not env.get("GEMINI_TEMPERATURE", "").strip():
        return None
    value = _float(env, "GEMINI_TEMPERATURE", 0.0)
    if value > 2:
        raise SettingsError(f"GEMINI_TEMPERATURE must be between 0 and 2, got {value}")
    return value


def _targets(env: Mapping[str, str]) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in env.get("BRIDGE_TRANSFER_TARGETS", "").split(",") if t.strip())
    for t in targets:
        if not (t.startswith(("+", "sip:", "sips:")) or t.rstrip("*").isdigit()):
            raise SettingsError(f"BRIDGE_TRANSFER_TARGETS: {t!r} is not a phone number (+1555...), "
                                f"a sip: URI or a prefix ending in *")
    return targets


def _fallback_dial(env: Mapping[str, str]) -> str:
    """A transfer target without the prefix form: what gateway/twiml.py's ``dial_twiml`` takes."""
    target = env.get("BRIDGE_FALLBACK_DIAL", "").strip()
    if target and not re.fullmatch(r"\+?[0-9]{3,15}|sips?:[^\s<>&\"']+", target):
        raise SettingsError(f"BRIDGE_FALLBACK_DIAL must be a phone number (+1555...) or a sip: URI, "
                            f"got {target[:80]!r}")
    return target


def _log_format(env: Mapping[str, str]) -> str:
    value = env.get("LOG_FORMAT", "").strip().lower() or "text"
    if value not in ("text", "json"):
        raise SettingsError(f"LOG_FORMAT must be text or json, got {value!r}")
    return value


def _dtmf_text(env: Mapping[str, str]) -> str:
    text = env.get("BRIDGE_DTMF_TEXT", "").strip() or Settings.dtmf_text
    if "{digit}" not in text:
        raise SettingsError(f"BRIDGE_DTMF_TEXT must contain {{digit}}, got {text!r}")
    return text


def _tool_script(env: Mapping[str, str]) -> tuple[tuple[str, str, str], ...]:
    raw = env.get("EMULATOR_TOOL_SCRIPT", "").strip()
    if not raw:
        return ()
    try:
        steps = json.loads(raw)
        return tuple((str(s["when"]), str(s["call"]), json.dumps(s.get("args", {}))) for s in steps)
    except (ValueError, TypeError, KeyError) as e:
        raise SettingsError('EMULATOR_TOOL_SCRIPT must be a JSON list of {"when": text, "call": tool, '
                            f'"args": {{...}}}}: {e}') from None


def _security(env: Mapping[str, str]) -> dict:
    mode = env.get("BRIDGE_UPGRADE_SIGNATURE", "").strip().lower() or "log"
    if mode not in ("off", "log", "enforce"):
        raise SettingsError(f"BRIDGE_UPGRADE_SIGNATURE must be off, log or enforce, got {mode!r}")
    rate = _float(env, "BRIDGE_MAX_MSG_RATE", Settings.max_msg_rate)
    if rate < 1:
        raise SettingsError(f"BRIDGE_MAX_MSG_RATE must be >= 1, got {rate}")
    return dict(
        twilio_auth_token=env.get("TWILIO_AUTH_TOKEN", "").strip(),
        bridge_secret=env.get("BRIDGE_SECRET", "").strip(),
        insecure_dev=_bool(env, "BRIDGE_INSECURE_DEV"),
        upgrade_signature=mode,
        max_calls=_int(env, "BRIDGE_MAX_CALLS", 0),
        max_ws_message=_int(env, "BRIDGE_MAX_WS_MESSAGE", Settings.max_ws_message, lo=1024),
        max_media_payload=_int(env, "BRIDGE_MAX_MEDIA_PAYLOAD", Settings.max_media_payload, lo=160),
        max_msg_rate=rate,
        max_msg_burst=_int(env, "BRIDGE_MAX_MSG_BURST", Settings.max_msg_burst, lo=1),
        flood_close_s=_float(env, "BRIDGE_FLOOD_CLOSE_S", Settings.flood_close_s),
        start_timeout_s=_float(env, "BRIDGE_START_TIMEOUT_S", Settings.start_timeout_s) or 0.1,
        media_timeout_s=_float(env, "BRIDGE_MEDIA_TIMEOUT_S", Settings.media_timeout_s),
    )


def _z85_secret(name: str, text: str) -> tuple[str, str]:
    """(public, secret) from a Z85 secret key, or a SettingsError naming where it came from."""
    import zmq  # only when CURVE keys are configured

    try:
        return zmq.curve_public(text.encode()).decode(), text
    except (ValueError, zmq.ZMQError):
        raise SettingsError(f"{name} must be a 40-character Z85 CURVE secret key") from None


def _curve_file(directory: str, name: str) -> tuple[str, str]:
    """(public, secret) from DIR/name.key_secret, else (public, "") from DIR/name.key, else ("", "")."""
    import zmq.auth

    for suffix in (".key_secret", ".key"):
        path = os.path.join(directory, name + suffix)
        if not os.path.exists(path):
            continue
        if suffix == ".key_secret" and os.stat(path).st_mode & 0o077:
            raise SettingsError(f"BRIDGE_CURVE_DIR: {path} is readable by others; chmod 600 it")
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise SettingsError(f"BRIDGE_CURVE_DIR: {path} is not a CURVE certificate: {e}") from None
        return public.decode(), (secret or b"").decode()
    return "", ""


def _curve(env: Mapping[str, str]) -> dict:
    directory = env.get("BRIDGE_CURVE_DIR", "").strip()
    if directory and not os.path.isdir(directory):
        raise SettingsError(f"BRIDGE_CURVE_DIR must be a directory, got {directory!r}")
    keys = {}
    for role in ("server", "client"):
        name = f"BRIDGE_CURVE_{role.upper()}_SECRET"
        text = env.get(name, "").strip()
        public, secret = _z85_secret(name, text) if text else \
            _curve_file(directory, role) if directory else ("", "")
        keys[f"curve_{role}_public"], keys[f"curve_{role}_secret"] = public, secret
    tcp = [e for e in (env.get(n, "").strip() for n in ("GATEWAY_ENDPOINT", "MODEL_CLIENT_ENDPOINT"))
           if e.startswith("tcp://")]
    configured = keys["curve_server_public"] and keys["curve_client_public"]
    if tcp and not configured and not _bool(env, "BRIDGE_INSECURE_DEV"):
        raise SettingsError(f"{tcp[0]} is tcp:// but no CURVE keys are set: set BRIDGE_CURVE_SERVER_SECRET "
                            "and BRIDGE_CURVE_CLIENT_SECRET, or BRIDGE_CURVE_DIR (python -m common.curve "
                            "DIR makes one), or BRIDGE_INSECURE_DEV=true for plaintext")
    return keys


RESAMPLERS = ("fir", "sinc_fastest", "sinc_medium", "sinc_best")  # transcoder.resample.ENGINES


def _resampler(env: Mapping[str, str]) -> str:
    value = env.get("BRIDGE_RESAMPLER", "").strip() or RESAMPLERS[0]
    if value not in RESAMPLERS:
        raise SettingsError(f"BRIDGE_RESAMPLER must be one of {', '.join(RESAMPLERS)}, got {value!r}")
    return value


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting once. Pass ``env`` in tests; processes pass nothing (os.environ)."""
    env = _with_persona_file(os.environ if env is None else env)
    run_dir = env.get("BRIDGE_RUN_DIR", "").strip() or os.path.join(
        tempfile.gettempdir(), f"gemini-bridge-{os.getuid()}")
    if len(run_dir) > MAX_RUN_DIR:
        raise SettingsError(f"BRIDGE_RUN_DIR is too long for ipc:// socket paths (max {MAX_RUN_DIR} "
                            f"characters): {run_dir!r}")
    port = _int(env, "PORT", 8080, lo=1)
    backend, key = _backend(env)
    level = env.get("LOG_LEVEL", "INFO").strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    persona = env.get("EMULATOR_PERSONA", "echo").strip()
    if persona not in ("echo", "tone", "silent"):
        raise SettingsError(f"EMULATOR_PERSONA must be echo, tone or silent, got {persona!r}")
    return Settings(
        process_num=_int(env, "PROCESS_NUM", 0),
        log_level=level,
        log_format=_log_format(env),
        run_dir=run_dir,
        host=env.get("HOST", "0.0.0.0").strip(),
        port=port,
        public_url=_url(env, "PUBLIC_URL", f"http://127.0.0.1:{port}"),
        gateway_endpoint=_endpoint(env, "GATEWAY_ENDPOINT", f"ipc://{run_dir}/gateway.ipc"),
        model_client_endpoint=_endpoint(
            env, "MODEL_CLIENT_ENDPOINT", f"ipc://{run_dir}/model_client-{{n}}.ipc"),
        heartbeat_s=_float(env, "BRIDGE_HEARTBEAT_S", 1.0) or 1.0,
        transcoders=_int(env, "BRIDGE_TRANSCODERS", 2, lo=1),
        model_clients=_int(env, "BRIDGE_MODEL_CLIENTS", 1, lo=1),
        backend=backend,
        api_key=key,
        gcp_project=env.get("GOOGLE_CLOUD_PROJECT", "").strip(),
        gcp_location=env.get("GOOGLE_CLOUD_LOCATION", "").strip() or "us-central1",
        model=env.get("GEMINI_MODEL", "").strip() or DEFAULT_MODEL,
        voice=env.get("GEMINI_VOICE", "").strip() or "Puck",
        language=env.get("GEMINI_LANGUAGE", "").strip() or "en-US",
        system_instruction=env.get("SYSTEM_INSTRUCTION", "").strip() or Settings.system_instruction,
        silence_ms=_int(env, "GEMINI_SILENCE_MS", 500, lo=50),
        start_sensitivity=_choice(env, "GEMINI_START_SENSITIVITY"),
        end_sensitivity=_choice(env, "GEMINI_END_SENSITIVITY"),
        prefix_padding_ms=_int(env, "GEMINI_PREFIX_PADDING_MS", 20),
        temperature=_temperature(env),
        prewarm=env.get("BRIDGE_PREWARM", "true").strip().lower() not in ("0", "false", "no", "off"),
        greeting=env.get("BRIDGE_GREETING", "").strip(),
        playback_ahead_ms=_int(env, "BRIDGE_PLAYBACK_AHEAD_MS", 1000, lo=200),
        drain_s=_float(env, "BRIDGE_DRAIN_S", 5.0),
        transcript_dir=env.get("BRIDGE_TRANSCRIPT_DIR", "").strip() or os.path.join(run_dir, "transcripts"),
        dtmf_text=_dtmf_text(env),
        transfer_targets=_targets(env),
        fallback_dial=_fallback_dial(env),
        tools_module=env.get("BRIDGE_TOOLS_MODULE", "").strip(),
        phone=_bool(env, "BRIDGE_PHONE") if env.get("BRIDGE_PHONE", "").strip() else backend == "emulator",
        emulator_host=env.get("EMULATOR_HOST", "127.0.0.1").strip(),
        emulator_port=_int(env, "EMULATOR_PORT", 8443, lo=1),
        emulator_persona=persona,
        emulator_goaway_after_s=_float(env, "EMULATOR_GOAWAY_AFTER_S", 0.0),
        emulator_drop_after_s=_float(env, "EMULATOR_DROP_AFTER_S", 0.0),
        emulator_refuse_handles=_bool(env, "EMULATOR_REFUSE_HANDLES"),
        emulator_refuse_key=_bool(env, "EMULATOR_REFUSE_KEY"),
        replay_s=_float(env, "BRIDGE_REPLAY_S", Settings.replay_s) or Settings.replay_s,
        reassign_wait_s=_float(env, "BRIDGE_REASSIGN_WAIT_S", Settings.reassign_wait_s),
        reconnect_max=_int(env, "GEMINI_RECONNECT_MAX", Settings.reconnect_max),
        reconnect_stable_s=_float(env, "GEMINI_RECONNECT_STABLE_S", Settings.reconnect_stable_s),
        handover_margin_s=_float(env, "GEMINI_HANDOVER_MARGIN_S", Settings.handover_margin_s),
        send_ms=_float(env, "GEMINI_SEND_MS", Settings.send_ms),
        redis_url=_redis_url(env),
        metrics_token=env.get("BRIDGE_METRICS_TOKEN", "").strip(),
        emulator_tool_script=_tool_script(env),
        resampler=_resampler(env),
        **_security(env),
        **_curve(env),
    )
