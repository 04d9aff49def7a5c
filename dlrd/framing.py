"""HTTP/1.x framing rules the stdlib's parser does not enforce, and chunked request bodies.

`http.server.BaseHTTPRequestHandler.parse_request` reads the request line
and headers, and dlrd uses it for that. But it is lenient where a receiver
of receipts must not be (checked on CPython 3.11, 3.12 and 3.13): a header
line without a colon silently ends the header block (only
`headers.defects` says so), two different Content-Lengths are taken and
`get()` returns the first, `Expect: 100-continue` is answered before
anything is checked, a malformed request line is answered as HTTP/0.9
(without a status line), a request line may be 64 KiB and the headers
100 times 64 KiB, and it has no chunked bodies at all. So the head is first
found and checked here, byte for byte, then parsed by the stdlib, then its
parsed headers are checked for the framing rules of RFC 9112 §6.

Pure functions and a small decoder, no sockets: the rules are unit- and
property-tested directly. Anything malformed raises HttpError with the
status to answer; the connection is then closed, because the framing of
whatever follows cannot be trusted.
"""

from __future__ import annotations

import io
import re
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import NoReturn

from dlrd.messages import RequestHead

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
_REQUEST_LINE = re.compile(rb"([A-Z]{1,20}) ([\x21-\x7e]{1,8192}) HTTP/(\d)\.(\d)")
_ABSOLUTE_FORM = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+([/?][\x21-\x7e]*)?")
# RFC 9112 §2.2: empty lines before the request line are skipped (some
# clients send CRLF after a POST body).
_EMPTY_LINES = re.compile(rb"(?:\r?\n)*")
# What the start of a request line may look like before its end arrives:
# the start of "METHOD target HTTP/x.y". Anything else (a TLS ClientHello,
# a scanner's binary probe) is refused at once, not at request_timeout.
_REQUEST_LINE_SO_FAR = re.compile(
    rb"[A-Z]{0,20}(?: [\x21-\x7e]{0,8192}(?: (?:H(?:T(?:T(?:P(?:/(?:\d(?:\.(?:\d\r?)?)?)?)?)?)?)?)?)?)?")
# A header line as it may be: a token, a colon, and a value without
# control bytes other than HTAB (no DEL either). Anything else is refused
# by _refuse_header_line, which says why.
_HEADER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*")
_HEADER_SECTION = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r?\n)*\r?\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
# RFC 9112 §3.2 and RFC 3986 §3.2.2: uri-host [ ":" port ], the host an
# IP literal in brackets or a reg-name (empty allowed).
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
# Headers of which a request may carry one: two of them make its framing,
# its routing or its reading ambiguous.
_SINGLE_HEADERS = ("host", "transfer-encoding", "content-type")


class HttpError(Exception):
    """The request cannot be served; `status` says how to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def head_start(buffer: bytes | bytearray) -> int:
    """Where the request line starts: after the empty lines a client may send before it."""
    return _EMPTY_LINES.match(buffer).end()  # type: ignore[union-attr]


def head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """Index just past the empty line that ends the head begun at `start`, or -1 while there is none.

    The head ends at its first empty line, whatever the line endings: a
    line ended by LF alone and an empty CRLF line ("\\n\\r\\n") end it as
    surely as CRLF CRLF does. Searching for CRLF CRLF and LF LF only, as
    dlrd once did, let a pipelined POST be swallowed as a GET's headers.
    """
    crlf = buffer.find(b"\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    if crlf < 0:
        return lf + 2 if lf >= 0 else -1
    return crlf + 3 if lf < 0 or crlf < lf else lf + 2


def check_incomplete_head(buffer: bytes | bytearray, start: int, checked: int = 0) -> int:
    """Refuse early a head that can no longer be valid, before waiting for more bytes.

    `checked` is what this returned for the same head before: bytes up to
    it are not looked at again, so a head dribbled a byte at a time costs
    a byte's work per byte. Returns the new such offset.
    """
    line_end = buffer.find(b"\n", start)
    if line_end < 0:
        if len(buffer) - start > MAX_REQUEST_LINE:
            raise HttpError(414, "request line too long")
        if not _REQUEST_LINE_SO_FAR.fullmatch(buffer, start, len(buffer)):
            raise HttpError(400, "malformed request line")
    else:
        if line_end >= checked - 1:
            # The request line is complete, and was not before: judge it now. An HTTP/0.9
            # request ("GET /") has nothing after it, so waiting would only time out.
            request_line(bytes(buffer[start:line_end]))
        if len(buffer) - line_end - 1 > MAX_HEADER_BYTES:
            raise HttpError(431, "request headers too large")
    _refuse_bare_cr(buffer, max(start, checked - 1), len(buffer) - 1)  # a final CR may yet be followed by its LF
    if len(buffer) > MAX_HEAD_BYTES:
        # Also bounds a flood of empty lines before the request line.
        raise HttpError(431, "request headers too large")
    return len(buffer)


def _refuse_bare_cr(buffer: bytes | bytearray, start: int, end: int) -> None:
    """RFC 9112 §2.2: a CR not followed by LF is refused, not taken for a line end or part of a value."""
    if buffer.count(b"\r", start, end) != buffer.count(b"\r\n", start, end + 1):
        raise HttpError(400, "a bare CR in the request head")


def request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    """The method, target and version of a request line (its line end stripped or not), or HttpError."""
    line = line.rstrip(b"\r\n")
    if len(line) > MAX_REQUEST_LINE:
        raise HttpError(414, "request line too long")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        # HTTP/0.9 ("GET /") and anything else that is not "METHOD target HTTP/x.y".
        raise HttpError(400, "malformed request line")
    method, target, major, minor = match.groups()
    version = (int(major), int(minor))
    if version not in ((1, 0), (1, 1)):
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    return method.decode("ascii"), target.decode("ascii"), version


def check_head_block(block: bytes) -> tuple[bytes, bytes]:
    """Split a complete head (as head_end found it, from its request line on) after checking it byte for byte.

    Returns the request line and the header section with its empty line,
    ready for the stdlib's parse_request. Only what the stdlib lets
    through is checked here: sizes, bare CRs, and header lines that are
    not `name: value` with a token name and no control bytes (obsolete
    line folding among them, RFC 9112 §5.2).
    """
    line_end = block.index(b"\n") + 1
    first = block[:line_end]
    request_line(first)
    _refuse_bare_cr(block, 0, len(block))
    fields = block[line_end:]
    if len(block) > MAX_HEAD_BYTES or len(fields) > MAX_HEADER_BYTES:
        raise HttpError(431, "request headers too large")
    if fields.count(b"\n") - 1 > MAX_HEADERS:
        raise HttpError(431, "too many request headers")
    if _HEADER_SECTION.fullmatch(fields) is None:  # the usual case in one call; else say which line and why
        for raw_line in fields.split(b"\n")[:-2]:  # the empty line ends it: [..., b"\r", b""]
            line = raw_line[:-1] if raw_line.endswith(b"\r") else raw_line
            if _HEADER_LINE.fullmatch(line) is None:
                _refuse_header_line(line)
    return first, fields


def _refuse_header_line(line: bytes) -> NoReturn:
    """Say what is wrong with a header line _HEADER_LINE did not match."""
    name, colon, _value = line.partition(b":")
    # RFC 9112 §5.2: obsolete line folding is refused; so are bytes a
    # header value may not hold (a header-injection attempt).
    if not colon or not _TOKEN.fullmatch(name):
        raise HttpError(400, "malformed header line")
    raise HttpError(400, "control characters in a header value")


def header_fields(headers: Message) -> dict[str, list[str]]:
    """The parsed headers by lower-case name, each with its values in order: one pass over them.

    `Message.get` walks every header and lower-cases each name again on
    each call; a request needs a dozen such lookups.
    """
    fields: dict[str, list[str]] = {}
    for name, value in headers.items():
        fields.setdefault(name.lower(), []).append(value)
    return fields


def check_framing(headers: Message, fields: dict[str, list[str]], version: tuple[int, int]) -> None:
    """RFC 9112 §3.2 and §6, on the headers the stdlib parsed: one Host, one unambiguous body length."""
    if headers.defects:
        raise HttpError(400, "malformed header line")
    lengths = fields.get("content-length", ())
    if len({value.strip() for value in lengths}) > 1:
        raise HttpError(400, "content-length header given twice")
    for name in _SINGLE_HEADERS:
        if len(fields.get(name, ())) > 1:
            raise HttpError(400, f"{name} header given twice")
    host = fields.get("host")
    if host is None:
        if version >= (1, 1):
            # RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host,
            raise HttpError(400, "an HTTP/1.1 request needs a Host header")
    elif not _HOST.fullmatch(host[0].strip()):
        raise HttpError(400, "the Host header is not a host[:port]")  # ... or with an invalid one
    encoding = fields.get("transfer-encoding")
    if encoding is not None:
        if version < (1, 1):
            raise HttpError(400, "Transfer-Encoding needs HTTP/1.1")
        if lengths:
            raise HttpError(400, "both Content-Length and Transfer-Encoding given")
        if encoding[0].strip().lower() != "chunked":
            raise HttpError(501, "only the chunked transfer coding is supported")
    if lengths:
        length = lengths[0].strip()
        if not (length.isascii() and length.isdigit() and len(length) <= 18):
            raise HttpError(400, "Content-Length is not a number")


def origin_form(target: str) -> str:
    """The path and query of a request target; RFC 9112 §3.2.2: the absolute form is accepted too.

    The authority of an absolute-form target is not ours to route on.
    """
    absolute = _ABSOLUTE_FORM.fullmatch(target)
    if absolute is not None:
        target = absolute.group(1) or "/"
    if not target.startswith("/"):
        raise HttpError(400, "the request target must be a path")
    return target


class StrictParsing(BaseHTTPRequestHandler):
    """The stdlib's parse_request, made strict: what every dlrd request handler parses its head with.

    `parse_head_block` feeds parse_request the checked head through
    `rfile`, as the stdlib reads it; its refusals become HttpError instead
    of an answer written at once, and `Expect: 100-continue` is only noted,
    to be answered once path, method, source and length have passed.
    """

    protocol_version = "HTTP/1.1"
    expects_continue = False

    def parse_head_block(self, block: bytes) -> None:
        first, fields = check_head_block(block)
        self.raw_requestline = first
        self.rfile = io.BytesIO(fields)
        self.expects_continue = False
        if not self.parse_request():
            raise HttpError(400, "malformed request")
        self.version = (int(self.request_version[5]), int(self.request_version[7]))
        self.fields = header_fields(self.headers)
        check_framing(self.headers, self.fields, self.version)
        self.path = origin_form(self.path)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> NoReturn:
        # parse_request's refusals: dlrd answers them itself, in its own words, then closes.
        raise HttpError(code, message or "malformed request")

    def handle_expect_100(self) -> bool:
        self.expects_continue = True
        return True


class _Offline(StrictParsing):
    """StrictParsing without a connection, for parse_head."""

    def __init__(self) -> None:  # no socket: BaseRequestHandler.__init__ would serve one
        pass


def parse_head(block: bytes) -> RequestHead:
    """A head (from its request line through its empty line) parsed as dlrd's handler parses it.

    For the tests and the fuzzer: the server's handler calls the same
    `parse_head_block`.
    """
    handler = _Offline()
    handler.parse_head_block(block)
    return RequestHead(handler.command, handler.path, handler.version, handler.headers, handler.fields,
                       handler.expects_continue)


class ChunkedDecoder:
    """Decodes a chunked body incrementally, refusing it past `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.body = bytearray()
        self._remaining = 0
        self._trailer_bytes = 0
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
                self._trailer_bytes += len(line)
                if self._trailer_bytes > MAX_HEADER_BYTES:
                    raise HttpError(400, "chunked trailer too long")
                if _HEADER_LINE.fullmatch(line) is None:
                    _refuse_header_line(line)  # trailers are header lines: the same rules


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
