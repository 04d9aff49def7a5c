"""Test-side HTTP over real sockets: raw requests in, parsed answers out.

Deliberately independent of dlrd's own HTTP code, so a bug there cannot
hide itself in the tests.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SEED_PATH = Path(__file__).resolve().parents[2] / "shared" / "seed" / "soap_delivery_receipts.txt"


def seed_request() -> bytes:
    """The provider's example POST, fixed only where the web page broke it.

    The page says Content-Length 909 for a 905-byte body and has no blank
    line after the headers; everything else is byte for byte.
    """
    page = (Path(__file__).resolve().parent / "envelopes" / "seed.xml").read_bytes()
    head = (b"POST /cgi-bin/deliveryrecript.pl HTTP/1.0\r\nHost: www.another.com:80\r\n"
            b"Content-Type: text/soap\r\nContent-Length: %d\r\n\r\n" % len(page))
    return head + page


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes = field(repr=False, default=b"")

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def parse_answer(raw: bytes) -> tuple[Answer, bytes]:
    """One response from the front of `raw`, and what follows it."""
    head, separator, rest = raw.partition(b"\r\n\r\n")
    if not separator:
        raise ValueError(f"no complete response head in {raw[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Answer(status, headers, rest[:length], raw), rest[length:]


def connect(address: tuple[str, int], timeout: float = 10.0,
            tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=server_hostname or address[0])
    return sock


def read_until_closed(sock: socket.socket, limit: int = 4 * 1024 * 1024) -> bytes:
    chunks = []
    size = 0
    while size < limit:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_one(sock: socket.socket) -> Answer:
    """Read exactly one response (by Content-Length) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    answer, _ = parse_answer(head + b"\r\n\r\n" + rest)
    return answer


def exchange(address: tuple[str, int], raw_request: bytes, timeout: float = 10.0,
             tls: ssl.SSLContext | None = None) -> Answer:
    """Send raw bytes on a new connection and read the answer until the server closes."""
    with connect(address, timeout, tls) as sock:
        sock.sendall(raw_request)
        try:
            sock.shutdown(socket.SHUT_WR) if tls is None else None
        except OSError:
            pass
        data = read_until_closed(sock)
    answer, _ = parse_answer(data)
    return answer


def post(address: tuple[str, int], body: bytes, path: str = "/", content_type: str | None = "text/soap",
         version: str = "1.0", extra_headers: str = "", tls: ssl.SSLContext | None = None,
         timeout: float = 10.0) -> Answer:
    """A one-shot POST the way the provider sends it."""
    head = f"POST {path} HTTP/{version}\r\nHost: receiver\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body)}\r\n{extra_headers}"
    if version == "1.1":
        head += "Connection: close\r\n"
    return exchange(address, head.encode("latin-1") + b"\r\n" + body, timeout, tls)


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll until `condition()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def receipt_body(message_id: str, report: int = 0) -> bytes:
    """The seed envelope with another MessageIdentifier (and Report): one new receipt per id."""
    page = (Path(__file__).resolve().parent / "envelopes" / "seed.xml").read_bytes()
    return (page.replace(b">3C7D98A4<", b">" + message_id.encode("ascii") + b"<")
            .replace(b'"xsd:int">0<', b'"xsd:int">%d<' % report))


def soap_report(answer: Answer) -> int | None:
    """The Report of a SubmitDeliveryReceiptResponse, None when the answer holds none."""
    match = re.search(rb"<(?:\w+:)?Report[^>]*>\s*(-?\d+)\s*<", answer.body)
    return int(match.group(1)) if match else None


class KeepAliveClient:
    """POSTs receipts one after another on one HTTP/1.1 connection, reconnecting when it breaks."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def post(self, body: bytes, path: str = "/") -> Answer:
        if self.sock is None:
            self.sock = connect(self.address, self.timeout)
        head = (f"POST {path} HTTP/1.1\r\nHost: receiver\r\nContent-Type: text/soap\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        try:
            self.sock.sendall(head + body)
            answer = read_one(self.sock)
        except OSError:
            self.close()
            raise
        if (answer.header("connection") or "").lower() == "close":
            self.close()
        return answer

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of a GET, an error status's body included (/healthz says why it is 503)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
