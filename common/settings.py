"""Settings: read once from the environment into one frozen object, passed down.

No other module reads ``os.environ``. A malformed value is a ``SettingsError`` naming the variable.
Every variable is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Mapping


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


DEFAULT_MODEL = "gemini-3.8-live"
MAX_RUN_DIR = 80  # ipc:// paths are Unix socket paths: 107 bytes at most, with the file name


@dataclass(frozen=True)
class Settings:
    # Process identity (supervisord passes process_num to each of numprocs copies).
    process_num: int = 0
    log_level: str = "INFO"
    # Where ipc:// sockets, the emulator's certificate and supervisord's files live.
    run_dir: str = ""
    # Gateway (HTTP + Twilio WebSocket).
    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str = ""
    # ZeroMQ endpoints. The model_client template takes {n}, its process number.
    gateway_endpoint: str = ""
    model_client_endpoint: str = ""
    heartbeat_s: float = 1.0
    transcoders: int = 2
    model_clients: int = 1
    # Model backend (DESIGN §5): "gemini", "vertex" or "emulator".
    backend: str = "emulator"
    api_key: str = field(default="", repr=False)
    gcp_project: str = ""
    gcp_location: str = ""
    model: str = DEFAULT_MODEL
    voice: str = "Puck"
    language: str = "en-US"
    system_instruction: str = "You are a friendly, concise phone agent."
    silence_ms: int = 500
    # Emulator (used when no Gemini credentials are set).
    emulator_host: str = "127.0.0.1"
    emulator_port: int = 8443
    emulator_persona: str = "echo"
    emulator_goaway_after_s: float = 0.0
    emulator_drop_after_s: float = 0.0

    @property
    def emulator_base_url(self) -> str:
        return f"https://{self.emulator_host}:{self.emulator_port}"

    @property
    def emulator_cert(self) -> str:
        return os.path.join(self.run_dir, "emulator-cert.pem")

    @property
    def emulator_key(self) -> str:
        return os.path.join(self.run_dir, "emulator-key.pem")

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


def _backend(env: Mapping[str, str]) -> tuple[str, str]:
    """Gemini API key → "gemini"; Vertex flag → "vertex"; neither → the local emulator."""
    key = env.get("GEMINI_API_KEY", "").strip() or env.get("GOOGLE_API_KEY", "").strip()
    if _bool(env, "GOOGLE_GENAI_USE_VERTEXAI"):
        if not env.get("GOOGLE_CLOUD_PROJECT", "").strip() and not key:
            raise SettingsError("GOOGLE_GENAI_USE_VERTEXAI needs GOOGLE_CLOUD_PROJECT (or an API key)")
        return "vertex", key
    if key:
        return "gemini", key
    return "emulator", ""


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting once. Pass ``env`` in tests; processes pass nothing (os.environ)."""
    env = os.environ if env is None else env
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
        emulator_host=env.get("EMULATOR_HOST", "127.0.0.1").strip(),
        emulator_port=_int(env, "EMULATOR_PORT", 8443, lo=1),
        emulator_persona=persona,
        emulator_goaway_after_s=_float(env, "EMULATOR_GOAWAY_AFTER_S", 0.0),
        emulator_drop_after_s=_float(env, "EMULATOR_DROP_AFTER_S", 0.0),
    )
