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
    except OSError as error:
        if not isinstance(error, ssl.SSLError):
            # OpenSSL's errors carry no file name (error.filename is None), so find the file at fault here.
            _refuse_unreadable(files)
        if not files.key and not _holds_a_key(files.cert):
            raise StartupError(f"[server] tls_key: not set, and {files.cert} holds no private key: set tls_key to "
                               "the key's file (certbot: privkey.pem)") from None
        raise StartupError(f"[server] tls_cert/tls_key: cannot load {files.cert} with key {files.key or files.cert}: "
                           f"{_describe(error)} (is the key the certificate's, both PEM?)") from None


def _holds_a_key(path: str) -> bool:
    try:
        with open(path, "rb") as pem:
            return b"PRIVATE KEY-----" in pem.read(1024 * 1024)
    except OSError:
        return True  # unreadable: the error about the file itself says more


def _refuse_unreadable(files: CertificateFiles) -> None:
    for key, path in (("tls_cert", files.cert), ("tls_key", files.key)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise StartupError(f"[server] {key}: {path}: no such file") from None
        except PermissionError:
            raise StartupError(f"[server] {key}: {path}: permission denied (certbot keys are root-only; "
                               "see README 'Exposing dlrd on the internet')") from None
        except OSError as error:
            raise StartupError(f"[server] {key}: {path}: {_describe(error)}") from None


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
        return float(ssl.cert_time_to_seconds(decoded["notAfter"]))
    except Exception:
        return None


def check_certificate_dates(cert_path: str) -> str | None:
    """Refuse an expired certificate (StartupError); the warning to log for one within EXPIRY_WARNING_DAYS.

    OpenSSL loads an expired certificate without a word, and then every
    provider's handshake fails; start and SIGHUP both refuse it instead.
    """
    expires_at = certificate_expiry(cert_path)
    if expires_at is None:
        return None
    days = (expires_at - time.time()) / 86400
    if days < 0:
        ended = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires_at))
        raise StartupError(f"[server] tls_cert: {cert_path} expired {-days:.0f} day(s) ago ({ended}); "
                           "every handshake would fail: renew it (certbot renew)")
    if days < EXPIRY_WARNING_DAYS:
        return f"the TLS certificate {cert_path} expires in {days:.1f} day(s); renew it and send SIGHUP"
    return None


class ServerTls:
    """The live server context, reloaded in place on SIGHUP.

    At start its files were checked, and the expiry warning logged, by
    dlrd.preflight; a reload checks them again here.
    """

    def __init__(self, files: CertificateFiles) -> None:
        self.files = files
        self.context = build_server_context(files)
        self.expires_at = certificate_expiry(files.cert)

    def reload(self, files: CertificateFiles) -> bool:
        """Serve a renewed certificate (and client CA) to new connections; keep the old ones if the new are bad."""
        try:
            context = build_server_context(files)
            warning = check_certificate_dates(files.cert)
        except StartupError as error:
            log.error("SIGHUP: refused the new certificate, still serving the old one: %s", error)
            return False
        self.context = context
        self.files = files
        self.expires_at = certificate_expiry(files.cert)
        log.info("SIGHUP: certificate reloaded from %s", files.cert)
        if warning:
            log.warning("%s", warning)
        return True


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
