"""`dlrd send-test`: play the provider, so an operator can check a deployment.

The envelope is the provider's own example from its documentation, byte for
byte, with the field values swapped in; the request goes out the way the
provider sends it (HTTP/1.0, Content-Type text/soap, one connection).
"""

from __future__ import annotations

import argparse
import socket
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from dlrd.soap import EnvelopeRejected, ParsedResponse, parse_response

# The provider's example POST body; only the six field values are placeholders.
SEED_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"          \n'
    ' xmlns:SOAP-ENC="http://schemas.xmlsoap.org/soap/encoding/" \n'
    ' xmlns:xsi="http://www.w3.org/1999/XMLSchema-instance" \n'
    ' xmlns:xsd="http://www.w3.org/1999/XMLSchema" \n'
    ' xmlns:ns1="http://www.itsarrived.net/dtd/sendsms2"\n'
    ' xmlns:ns2="http://www.itsarrived.net/dtd/sendsms3">\n'
    '<SOAP-ENV:Body SOAP-ENV:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">\n'
    "<ns2:SubmitDeliveryReceipt>\n"
    "{credentials}"
    '<Timestamp1 xsi:type="xsd:dateTime">{timestamp}</Timestamp1>\n'
    '<SentTo xsi:type="xsd:string">{sent_to}</SentTo>\n'
    '<MessageIdentifier xsi:type="xsd:string">{message_id}</MessageIdentifier>\n'
    '<Report xsi:type="xsd:int">{report}</Report>\n'
    "</ns2:SubmitDeliveryReceipt>\n"
    "</SOAP-ENV:Body>\n"
    "</SOAP-ENV:Envelope>\n"
)
SEED_USERNAME = "ANOther.61234"
SEED_PIN = "BLUE.music"
SEED_SENT_TO = "447009123456"
MAX_RESPONSE_BYTES = 1024 * 1024


class SendFailed(Exception):
    """The receiver could not be reached, or did not answer in HTTP."""


def new_message_id() -> str:
    """A fresh identifier in the provider's style (upper-case hex, under 15 characters)."""
    return uuid.uuid4().hex[:12].upper()


def now_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_envelope(message_id: str, sent_to: str = SEED_SENT_TO, report: str = "0", timestamp: str | None = None,
                   username: str | None = SEED_USERNAME, pin: str | None = SEED_PIN) -> bytes:
    """The seed's envelope with these values; Username and PIN lines only when given."""
    credentials = ""
    if username is not None:
        credentials += f'<Username xsi:type="xsd:string">{escape(username)}</Username>\n'
    if pin is not None:
        credentials += f'<PIN xsi:type="xsd:string">{escape(pin)}</PIN>\n'
    return SEED_ENVELOPE.format(
        credentials=credentials,
        timestamp=escape(timestamp or now_timestamp()),
        sent_to=escape(sent_to),
        message_id=escape(message_id),
        report=escape(report),
    ).encode("utf-8")


@dataclass(frozen=True)
class TlsOptions:
    cafile: str | None = None
    insecure: bool = False
    certfile: str | None = None
    keyfile: str | None = None


@dataclass(frozen=True)
class SendResult:
    status: int
    reason: str
    content_type: str
    body: bytes
    parsed: ParsedResponse | None
    problem: str | None

    @property
    def accepted(self) -> bool:
        return self.status == 200 and self.parsed is not None and self.parsed.report == 0


def client_tls_context(options: TlsOptions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.cafile)
    if options.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.certfile:
        context.load_cert_chain(options.certfile, options.keyfile)
    return context


def url_argument(url: str) -> str:
    """argparse type for send-test's URL: one without http:// or https:// is a usage error (exit 2)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{url!r} is not an http:// or https:// URL, like http://127.0.0.1:8080/")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number or past 65535
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{url!r}: {error}") from None
    return url


def post_envelope(url: str, body: bytes, content_type: str = "text/soap", timeout: float = 10.0,
                  tls: TlsOptions = TlsOptions()) -> SendResult:
    """POST one envelope over HTTP/1.0 and read the whole answer."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SendFailed(f"{url!r} is not an http:// or https:// URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    request = (
        f"POST {path} HTTP/1.0\r\nHost: {host_header}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1") + body
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if parts.scheme == "https":
                sock = client_tls_context(tls).wrap_socket(raw, server_hostname=parts.hostname)
            sock.sendall(request)
            answer = _read_all(sock)
    except ssl.SSLError as error:
        raise SendFailed(f"TLS with {parts.hostname}:{port} failed: {error.reason or error}") from None
    except OSError as error:
        raise SendFailed(f"cannot reach {parts.hostname}:{port}: {error.strerror or error}") from None
    return _parse_answer(answer)


def _read_all(sock: socket.socket) -> bytes:
    chunks, size = [], 0
    while size < MAX_RESPONSE_BYTES:
        try:
            chunk = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _parse_answer(answer: bytes) -> SendResult:
    head, separator, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_parts = lines[0].split(" ", 2)
    if not separator or len(status_parts) < 2 or not status_parts[0].startswith("HTTP/"):
        raise SendFailed("the receiver did not answer in HTTP")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers and headers["content-length"].isdigit():
        body = body[: int(headers["content-length"])]
    parsed, problem = None, None
    content_type = headers.get("content-type", "")
    charset = next((value.strip().strip('"') for name, _, value in
                    (parameter.partition("=") for parameter in content_type.split(";")[1:])
                    if name.strip().lower() == "charset"), None)
    try:
        parsed = parse_response(body, charset)
    except EnvelopeRejected as error:
        problem = str(error)
    return SendResult(int(status_parts[1]), status_parts[2] if len(status_parts) > 2 else "",
                      content_type, body, parsed, problem)


def describe(result: SendResult) -> str:
    """The answer as an operator reads it on a terminal."""
    lines = [f"HTTP {result.status} {result.reason}".rstrip(), f"Content-Type: {result.content_type}"]
    parsed = result.parsed
    if parsed is None:
        lines.append(f"body: {result.body[:200].decode('utf-8', 'replace')!r} ({result.problem})")
    elif parsed.fault_code is not None:
        lines += [f"Fault: {parsed.fault_code}", f"Reason: {parsed.fault_reason}"]
    else:
        lines += [f"MessageIdentifier: {parsed.message_id}", f"Report: {parsed.report}", f"Text: {parsed.text}"]
    return "\n".join(lines)
