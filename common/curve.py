"""CURVE for ZeroMQ over tcp://: encryption, and only holders of our client key get in.

One server keypair is shared by every bound ROUTER (the gateway's directory, each model_client's
endpoint) and one client keypair by every DEALER (transcoders, model_clients). A DEALER must know the
server's public key (else the handshake fails); a ROUTER lets in only the client public key, checked
by a ZAP handler on its context. ipc:// needs none of this: its run directory is 0700 (``private_dir``).

Keys come from the settings (``BRIDGE_CURVE_SERVER_SECRET`` / ``BRIDGE_CURVE_CLIENT_SECRET``, or the
certificate files in ``BRIDGE_CURVE_DIR``); make a pair of certificates with
``python -m common.curve DIR``.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from dataclasses import dataclass, field
from typing import Callable

import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

log = logging.getLogger(__name__)

ZAP_DOMAIN = "gemini-bridge"


class CurveError(RuntimeError):
    """A socket needs a key that was not configured."""


@dataclass(frozen=True)
class CurveKeys:
    """Z85 text keys; a secret is empty where this host was given only the public half."""
    server_public: str
    client_public: str
    server_secret: str = field(default="", repr=False)
    client_secret: str = field(default="", repr=False)

    @classmethod
    def from_settings(cls, settings) -> CurveKeys | None:
        if not (settings.curve_server_public or settings.curve_client_public):
            return None
        return cls(settings.curve_server_public, settings.curve_client_public,
                   settings.curve_server_secret, settings.curve_client_secret)

    def serve(self, sock: zmq.Socket) -> Callable[[], None]:
        """Make ``sock`` (before bind) a CURVE server that admits only our client key. Returns the
        release function, to call when the socket closes."""
        if not (self.server_secret and self.server_public and self.client_public):
            raise CurveError("a bound tcp:// socket needs the server secret key and the client public key "
                             "(BRIDGE_CURVE_SERVER_SECRET, or server.key_secret and client.key in "
                             "BRIDGE_CURVE_DIR)")
        release = _authenticate(sock.context, self.client_public)
        sock.curve_server = True
        sock.curve_secretkey = self.server_secret.encode()
        sock.curve_publickey = self.server_public.encode()
        sock.zap_domain = ZAP_DOMAIN.encode()
        return release

    def connect(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (before connect) a CURVE client that talks only to our server key."""
        if not (self.client_secret and self.client_public and self.server_public):
            raise CurveError("a connecting tcp:// socket needs the client secret key and the server public "
                             "key (BRIDGE_CURVE_CLIENT_SECRET, or client.key_secret and server.key in "
                             "BRIDGE_CURVE_DIR)")
        sock.curve_secretkey = self.client_secret.encode()
        sock.curve_publickey = self.client_public.encode()
        sock.curve_serverkey = self.server_public.encode()


class _ClientKeyCheck:
    """The ZAP callback: our client key in, anything else out (logged and counted)."""

    def __init__(self, allowed: str):
        self.allowed = allowed.encode()
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key == self.allowed:
            return True
        self.denied += 1
        log.warning("ZeroMQ peer refused: CURVE client key %r… is not ours",
                    key[:8].decode(errors="replace"))
        return False


_AUTH: dict[int, list] = {}  # id(context) -> [authenticator, check, users]


def _authenticate(ctx: zmq.Context, client_public: str) -> Callable[[], None]:
    """One ZAP handler per context (it binds a fixed inproc address), shared by its CURVE servers."""
    entry = _AUTH.get(id(ctx))
    if entry is None:
        auth = AsyncioAuthenticator(ctx)
        check = _ClientKeyCheck(client_public)
        auth.start()
        auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=check)
        entry = _AUTH[id(ctx)] = [auth, check, 0]
    entry[2] += 1

    def release() -> None:
        entry[2] -= 1
        if entry[2] == 0 and _AUTH.get(id(ctx)) is entry:
            del _AUTH[id(ctx)]
            entry[0].stop()
    return release


def denied(ctx: zmq.Context) -> int:
    """How many peers this context's CURVE servers have refused."""
    entry = _AUTH.get(id(ctx))
    return entry[1].denied if entry else 0


def private_dir(path: str) -> None:
    """Make sure ``path`` is a directory only this user can enter: created 0700, or an existing one of
    ours tightened to 0700. One that belongs to someone else (say a pre-created /tmp path) is refused."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{path} is not a directory (a symlink?): refusing to put sockets there")
    if info.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to uid {info.st_uid}, not us: refusing to put sockets there")
    if info.st_mode & 0o077:
        log.warning("%s was open to others (mode %o): tightened to 0700", path, stat.S_IMODE(info.st_mode))
        os.chmod(path, 0o700)


def make_certificates(directory: str) -> None:
    """server.key/server.key_secret and client.key/client.key_secret, secrets readable by us only."""
    old = os.umask(0o077)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for name in ("server", "client"):
            zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m common.curve DIR   (writes server and client CURVE certificates)")
    make_certificates(sys.argv[1])
    print(f"CURVE certificates written to {sys.argv[1]}: give every host BRIDGE_CURVE_DIR with "
          "server.key_secret + client.key (gateway), client.key_secret + server.key (transcoder), "
          "or all four (model_client)")
