"""HTTP/1.x request framing: the request head and chunked bodies, from bytes.

Pure functions and a small decoder, no sockets, so the rules are unit- and
property-tested directly. Anything malformed raises HttpError with the
status to answer; the connection is closed after such an answer because
the framing of whatever follows cannot be trusted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from typing import NoReturn

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_CHUNK_LINE = 1024
# The most a head may hold in all: request line, header section, the line
# ends and a few empty lines before the request line.
MAX_HEAD_BYTES = MAX_REQUEST_LINE + MAX_HEADER_BYTES + 64

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9112 §3: method SP request-target SP HTTP-version. The target is held
# to visible ASCII, so no control byte reaches a log line or a route.
_ABSOLUTE_FORM = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+([/?][\x21-\x7e]*)?")
_REQUEST_LINE = re.compile(rb"([A-Z]{1,20}) ([\x21-\x7e]{1,8192}) HTTP/(\d)\.(\d)")
# What the start of a request line may look like before its end arrives:
# a method, then a space. Anything else (a TLS ClientHello, a scanner's
# binary probe) is refused at once instead of waiting for request_timeout.
_EMPTY_LINES = re.compile(rb"[\r\n]*")
_METHOD_SO_FAR = re.compile(rb"[A-Z]{0,20}(?: |$)")
# A header line as it may be: a token, a colon, and a value without
# control bytes other than HTAB (no DEL either). Anything else is refused
# by _refuse_header_line, which says why.
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([^\x00-\x08\x0a-\x1f\x7f]*)")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")


class HttpError(Exception):
    """The request cannot be served; `status` says how to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestHead:
    """A parsed request line and header block.

    What every request needs from its headers (path, keep-alive, media
    type, charset) is worked out once here: properties recomputed on each
    use, or cached_property with its lock, cost the receipt path more.
    """

    __slots__ = ("charset", "headers", "keep_alive", "media_type", "method", "path", "target", "version")

    def __init__(self, method: str, target: str, version: tuple[int, int], headers: dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.path = target.partition("?")[0]
        connection = headers.get("connection")
        if connection is None:
            self.keep_alive = version >= (1, 1)
        else:
            tokens = {token.strip().lower() for token in connection.split(",")}
            self.keep_alive = "close" not in tokens if version >= (1, 1) else "keep-alive" in tokens
        content_type = headers.get("content-type", "")
        media_type, _, parameters = content_type.partition(";")
        self.media_type = media_type.strip().lower()
        self.charset = _charset(parameters) if parameters else None

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def chunked(self) -> bool:
        return "transfer-encoding" in self.headers

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return None if value is None else int(value)

    @property
    def expects_continue(self) -> bool:
        return self.headers.get("expect", "").lower() == "100-continue" and self.version >= (1, 1)


def _charset(parameters: str) -> str | None:
    """The charset parameter of a Content-Type, from the text after its first ';'."""
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower() or None
    return None


def _leading_empty_lines(buffer: bytes | bytearray) -> int:
    """How many bytes of CR and LF precede the request line.

    RFC 9112 §2.2: a server SHOULD ignore at least one empty line received
    before the request line (some clients send CRLF after a POST body).
    """
    return _EMPTY_LINES.match(buffer).end()  # type: ignore[union-attr]


def find_head_end(buffer: bytes | bytearray) -> int:
    """Index just past the blank line ending the head, or -1; bare LF line ends are tolerated."""
    start = _leading_empty_lines(buffer)
    crlf = buffer.find(b"\r\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    ends = [index + width for index, width in ((crlf, 4), (lf, 2)) if index >= 0]
    return min(ends) if ends else -1


def check_incomplete_head(buffer: bytes | bytearray) -> None:
    """Refuse early a head that can no longer be valid, before waiting for more bytes."""
    start = _leading_empty_lines(buffer)
    line_end = buffer.find(b"\n", start)
    if line_end < 0:
        if len(buffer) - start > MAX_REQUEST_LINE:
            raise HttpError(414, "request line too long")
        if not _METHOD_SO_FAR.match(buffer, start):
            raise HttpError(400, "malformed request line")
    else:
        # The request line is complete: judge it now. An HTTP/0.9 request
        # ("GET /") has nothing after it, so waiting would only time out.
        _parse_request_line(bytes(buffer[start:line_end]).rstrip(b"\r"))
        if len(buffer) - line_end - 1 > MAX_HEADER_BYTES:
            raise HttpError(431, "request headers too large")
    if len(buffer) > MAX_HEAD_BYTES:
        # Also bounds a flood of empty lines before the request line.
        raise HttpError(431, "request headers too large")


def _parse_request_line(request_line: bytes) -> tuple[str, str, tuple[int, int]]:
    if len(request_line) > MAX_REQUEST_LINE:
        raise HttpError(414, "request line too long")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        # HTTP/0.9 ("GET /") and anything else that is not "METHOD target HTTP/x.y".
        raise HttpError(400, "malformed request line")
    method, target, major, minor = match.groups()
    version = (int(major), int(minor))
    if version not in ((1, 0), (1, 1)):
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    absolute = _ABSOLUTE_FORM.fullmatch(target)
    if absolute is not None:
        # RFC 9112 §3.2.2: a server must accept the absolute form; the
        # authority is not ours to route on, only the path is.
        target = absolute.group(1) or b"/"
    if not target.startswith(b"/"):
        raise HttpError(400, "the request target must be a path")
    return method.decode("ascii"), target.decode("ascii"), version


def parse_head(block: bytes) -> RequestHead:
    """Parse everything up to and including the blank line after the headers."""
    block = block[_leading_empty_lines(block):]
    lines = block.split(b"\n")
    method, target, version = _parse_request_line(lines[0].rstrip(b"\r"))
    if len(block) > MAX_HEAD_BYTES or len(block) - len(lines[0]) - 1 > MAX_HEADER_BYTES:
        raise HttpError(431, "request headers too large")

    headers: dict[str, str] = {}
    count = 0
    for raw_line in lines[1:]:
        line = raw_line.rstrip(b"\r")
        if not line:
            continue
        count += 1
        if count > MAX_HEADERS:
            raise HttpError(431, "too many request headers")
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            _refuse_header_line(line)
        name, value = match.groups()  # type: ignore[union-attr]
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key in ("content-length", "host", "transfer-encoding", "content-type"):
                if key == "content-length" and headers[key] == text:
                    continue
                raise HttpError(400, f"{key} header given twice")
            text = f"{headers[key]}, {text}"
        headers[key] = text

    if version >= (1, 1) and "host" not in headers:
        # RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
        raise HttpError(400, "an HTTP/1.1 request needs a Host header")
    head = RequestHead(method, target, version, headers)
    _check_framing(head)
    return head


def _refuse_header_line(line: bytes) -> NoReturn:
    """Say what is wrong with a header line _HEADER_LINE did not match."""
    name, colon, _value = line.partition(b":")
    # RFC 9112 §5.2: obsolete line folding is refused; so are bytes a
    # header value may not hold (a header-injection attempt).
    if not colon or not _TOKEN.fullmatch(name):
        raise HttpError(400, "malformed header line")
    raise HttpError(400, "control characters in a header value")


def _check_framing(head: RequestHead) -> None:
    """RFC 9112 §6: one unambiguous way to find where the body ends."""
    length = head.headers.get("content-length")
    encoding = head.headers.get("transfer-encoding")
    if encoding is not None:
        if head.version < (1, 1):
            raise HttpError(400, "Transfer-Encoding needs HTTP/1.1")
        if length is not None:
            raise HttpError(400, "both Content-Length and Transfer-Encoding given")
        if encoding.strip().lower() != "chunked":
            raise HttpError(501, "only the chunked transfer coding is supported")
    if length is not None and not (length.isascii() and length.isdigit() and len(length) <= 18):
        raise HttpError(400, "Content-Length is not a number")


class ChunkedDecoder:
    """Decodes a chunked body incrementally, refusing it past `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.body = bytearray()
        self._remaining = 0
        self._state = "size"

    def feed(self, buffer: bytearray) -> bool:
        """Consume what it can from `buffer`; True once the whole body (and trailers) arrived."""
        while True:
            if self._state == "size":
                line = _take_line(buffer, MAX_CHUNK_LINE, "chunk size line too long")
                if line is None:
                    return False
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise HttpError(400, "bad chunk size")
                self._remaining = int(match.group(1), 16)
                if len(self.body) + self._remaining > self.limit:
                    raise HttpError(413, "request body too large")
                self._state = "data" if self._remaining else "trailer"
            elif self._state == "data":
                take = min(self._remaining, len(buffer))
                if take == 0:
                    return False
                self.body += buffer[:take]
                del buffer[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "data-end"
            elif self._state == "data-end":
                # Each chunk's data is followed by CRLF (a bare LF is tolerated).
                if buffer[:1] == b"\r" and len(buffer) < 2:
                    return False
                if not buffer:
                    return False
                ending = 2 if buffer[:2] == b"\r\n" else 1 if buffer[:1] == b"\n" else 0
                if not ending:
                    raise HttpError(400, "chunk data longer than its size")
                del buffer[:ending]
                self._state = "size"
            else:  # trailer section: header lines until an empty one
                line = _take_line(buffer, MAX_HEADER_BYTES, "chunked trailer too long")
                if line is None:
                    return False
                if not line:
                    return True


def _take_line(buffer: bytearray, limit: int, too_long: str) -> bytes | None:
    end = buffer.find(b"\n")
    if end < 0:
        if len(buffer) > limit:
            raise HttpError(400, too_long)
        return None
    if end > limit:
        raise HttpError(400, too_long)
    line = bytes(buffer[:end]).rstrip(b"\r")
    del buffer[: end + 1]
    return line


_date_cache: tuple[int, str] = (0, "")


def http_date(now: float) -> str:
    """The Date header value, formatted once per second."""
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, usegmt=True))
    return _date_cache[1]


@lru_cache(maxsize=64)
def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def render_response(status: int, headers: list[tuple[str, str]], body: bytes, now: float,
                    keep_alive: bool) -> bytes:
    """The whole response as one buffer: one write, so Nagle never splits it."""
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (
        f"HTTP/1.1 {status} {reason_phrase(status)}\r\nServer: dlrd\r\nDate: {http_date(now)}\r\n{fields}"
        f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode("latin-1") + body


@dataclass
class Request:
    """A complete request as the application sees it."""

    head: RequestHead
    body: bytes
    remote_addr: str
    tls_client: str | None = None
    # For an answer given before the commit completed (commit_timeout):
    # the SOAP version the endpoint read, and that it was given.
    soap_version: str | None = None
    overdue: bool = False


@dataclass
class Response:
    """What to send back; `close` ends the connection after it."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False

    def all_headers(self) -> list[tuple[str, str]]:
        return [("Content-Type", self.content_type), *self.headers]


def plain_response(status: int, text: str, close: bool = False, headers: list[tuple[str, str]] | None = None
                   ) -> Response:
    """A short text answer for refusals that are not about SOAP (404, 405, 413 ...)."""
    return Response(status, (text + "\n").encode("utf-8"), headers=headers or [], close=close)
