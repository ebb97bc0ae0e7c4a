"""The emulator's self-signed TLS certificate: made once per run directory, then reused.

The google-genai SDK only speaks ``wss://``, so the emulator must serve TLS. Clients
trust this one certificate (``ssl.create_default_context(cafile=settings.emulator_cert)``); it names
``IP:127.0.0.1`` and ``DNS:localhost``. Files are written to a temporary name and renamed into place, key
first, so a client starting at the same moment sees either no certificate or a whole one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.settings import Settings

log = logging.getLogger(__name__)

VALID_DAYS = 3650


def server_context(settings: Settings) -> ssl.SSLContext:
    """An SSL context for the emulator's server socket, creating the certificate first if needed."""
    ensure(settings.emulator_cert, settings.emulator_key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.emulator_cert, settings.emulator_key)
    return ctx


def ensure(cert_path: str, key_path: str) -> None:
    """Create the key and certificate unless both exist and load together."""
    if _usable(cert_path, key_path):
        return
    os.makedirs(os.path.dirname(cert_path) or ".", mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_atomic(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
    _write_atomic(cert_path, _certificate(key).public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("created self-signed certificate %s", cert_path)


def _usable(cert_path: str, key_path: str) -> bool:
    if not (os.path.exists(cert_path) and os.path.exists(key_path)):
        return False
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as e:
        log.warning("existing certificate %s is unusable (%s): making a new one", cert_path, e)
        return False
    return True


def _certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """Shaped like ``openssl req -x509``'s: its own CA (so OpenSSL accepts it as a trust anchor) with
    key identifiers (which strict verification requires) and the loopback names."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".pem")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
