"""Start the whole stack under supervisord in the foreground: ``python -m common.stack``.

supervisord.conf takes what varies from BRIDGE_* environment variables; this fills them in from the
settings (so the emulator runs only without Gemini credentials) and then becomes supervisord.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from common import settings as settings_module
from common.curve import private_dir

HOME = Path(__file__).resolve().parents[1]


def supervisord_env(config: settings_module.Settings, environ: dict[str, str]) -> dict[str, str]:
    return {
        **environ,
        "BRIDGE_HOME": str(HOME),
        "BRIDGE_PYTHON": sys.executable,
        "BRIDGE_RUN_DIR": config.run_dir,
        "BRIDGE_EMULATOR": "true" if config.backend == "emulator" else "false",
        "BRIDGE_TRANSCODERS": str(config.transcoders),
        "BRIDGE_MODEL_CLIENTS": str(config.model_clients),
        # The bench's echo model is the model_client stage with echo sessions (bench/echo_model.py).
        "BRIDGE_MODEL_CLIENT_MODULE": "bench.echo_model" if config.backend == "echo" else "model_client",
        # supervisord must wait out the gateway's drain before it kills it.
        "BRIDGE_GATEWAY_STOPWAIT": str(int(config.drain_s) + 7),
    }


def main() -> None:
    try:
        config = settings_module.load()
    except settings_module.SettingsError as e:
        sys.exit(f"configuration error: {e}")
    try:
        private_dir(config.run_dir)  # ipc sockets, keys and supervisord's socket: this user only
    except PermissionError as e:
        sys.exit(f"run directory: {e}")
    print(f"stack: backend {config.backend}, {config.transcoders} transcoder(s), "
          f"{config.model_clients} model_client(s), http://{config.host}:{config.port} "
          f"(public {config.public_url}), run dir {config.run_dir}", flush=True)
    argv = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(HOME / "supervisord.conf")]
    os.execve(sys.executable, argv, supervisord_env(config, dict(os.environ)))


if __name__ == "__main__":
    main()
