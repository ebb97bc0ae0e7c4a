"""What the settings imply rather than say: URLs and paths built from them, the transfer allow-list's
matching, the values logs must never show. A base of ``Settings`` (common/settings.py), kept apart so
that the declarations read as one list."""

from __future__ import annotations

import os
from dataclasses import fields
from urllib.parse import urlsplit

from common.setting_types import SPEC


class DerivedValues:
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
        return allowed(target, self.transfer_targets)

    def dial_allowed(self, number: str) -> bool:
        """May ``POST /calls`` dial ``number`` (BRIDGE_DIAL_ALLOW, matched like transfer targets)?"""
        return allowed(number, self.dial_allow)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a log line (common/logs.py masks them): the secret settings,
        and the Redis URL's password on its own."""
        values = [getattr(self, f.name) for f in fields(self) if f.metadata[SPEC].secret]
        return tuple(v for v in (*values, urlsplit(self.redis_url).password) if v)

    def model_client_endpoint_for(self, n: int) -> str:
        return self.model_client_endpoint.format(n=n)

    @property
    def stream_url(self) -> str:
        """The Twilio stream URL: wss:// behind https (as Twilio requires), ws:// for local http."""
        scheme, rest = self.public_url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest.rstrip("/") + "/ws/twilio"


def allowed(target: str, patterns: tuple[str, ...]) -> bool:
    """``target`` equals a pattern, or a pattern ending in ``*`` is its prefix and digits follow."""
    return any(target == t or (t.endswith("*") and target.startswith(t[:-1]) and target[len(t) - 1:]
                               .lstrip("+").isdigit()) for t in patterns)
