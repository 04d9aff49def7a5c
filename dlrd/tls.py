"""TLS for the HTTPS listeners: the server context, its reload, and client identities.

Each accepted connection is wrapped with the context current at that
moment. A certificate renewal (certbot, every 60 to 90 days) is picked up
on SIGHUP by building a new context and swapping it in whole: loading a
chain into the live context would let a handshake running in another
thread meet the new certificate with the old key (load_cert_chain
releases the GIL between the two). A bad file never replaces a good
certificate, and open connections keep theirs.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from dlrd.config import Config
from dlrd.errors import StartupError

log = logging.getLogger("dlrd.tls")

# Forward-secret AEAD suites only for TLS 1.2; TLS 1.3 suites are OpenSSL's own.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"
EXPIRY_WARNING_DAYS = 14


@dataclass(frozen=True)
class CertificateFiles:
    cert: str
    key: str | None
    client_ca: str | None


def certificate_files(config: Config) -> CertificateFiles:
    return CertificateFiles(config["server", "tls_cert"], config["server", "tls_key"] or None,
                            config["server", "tls_client_ca"] or None)


def build_server_context(files: CertificateFiles) -> ssl.SSLContext:
    """A server context with TLS 1.2 as the floor; raise StartupError naming the file at fault."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    _load_chain(context, files)
    if files.client_ca:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except (OSError, ssl.SSLError) as error:
            raise StartupError(f"[server] tls_client_ca: cannot load {files.client_ca}: {_describe(error)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_chain(context: ssl.SSLContext, files: CertificateFiles) -> None:
    try:
        context.load_cert_chain(files.cert, files.key or None)
    except FileNotFoundError as error:
        raise StartupError(f"[server] tls_cert/tls_key: {error.filename}: no such file") from None
    except PermissionError as error:
        raise StartupError(f"[server] tls_cert/tls_key: {error.filename}: permission denied "
                           "(certbot keys are root-only; see README 'Exposing dlrd on the internet')") from None
    except (OSError, ssl.SSLError) as error:
        raise StartupError(f"[server] tls_cert/tls_key: cannot load {files.cert} with key {files.key or files.cert}: "
                           f"{_describe(error)} (is the key the certificate's, both PEM?)") from None


def _describe(error: Exception) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    return getattr(error, "strerror", None) or str(error)


def certificate_expiry(cert_path: str) -> float | None:
    """Unix time when the leaf certificate expires, None when it cannot be read."""
    try:
        # A private helper, but the only stdlib way to read a PEM's notAfter
        # without a handshake; it has been stable since Python 3.2.
        decoded = ssl._ssl._test_decode_cert(cert_path)  # type: ignore[attr-defined]
        return parsedate_to_datetime(decoded["notAfter"].replace("  ", " ")).timestamp()
    except Exception:
        return None


class ServerTls:
    """The live server context, reloaded in place on SIGHUP."""

    def __init__(self, files: CertificateFiles) -> None:
        self.files = files
        self.context = build_server_context(files)
        self.expires_at = certificate_expiry(files.cert)
        self._warn_expiry()

    def reload(self, files: CertificateFiles) -> bool:
        """Serve a renewed certificate (and client CA) to new connections; keep the old ones if the new are bad."""
        try:
            context = build_server_context(files)
        except StartupError as error:
            log.error("SIGHUP: refused the new certificate, still serving the old one: %s", error)
            return False
        self.context = context
        self.files = files
        self.expires_at = certificate_expiry(files.cert)
        log.info("SIGHUP: certificate reloaded from %s", files.cert)
        self._warn_expiry()
        return True

    def _warn_expiry(self) -> None:
        if self.expires_at is None:
            return
        days = (self.expires_at - time.time()) / 86400
        if days < 0:
            log.error("the TLS certificate %s expired %.0f day(s) ago; renew it and send SIGHUP",
                      self.files.cert, -days)
        elif days < EXPIRY_WARNING_DAYS:
            log.warning("the TLS certificate %s expires in %.1f day(s); renew it and send SIGHUP",
                        self.files.cert, days)


def client_identity(peercert: dict | None) -> str | None:
    """The client certificate's subject as `CN=...,O=...`, for the stored receipt."""
    if not peercert:
        return None
    parts = []
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
                     "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}.get(name, name)
            parts.append(f"{short}={value}")
    return ",".join(parts) or None
