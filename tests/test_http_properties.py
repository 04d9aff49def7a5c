"""Property tests of the HTTP request reader (dlrd/framing.py on the stdlib's parse_request) with hypothesis.

Whatever bytes a client sends, the reader either understands them or
raises HttpError carrying a 4xx/5xx status: nothing else may escape into
the connection code. The chunked decoder must give the same answer however
the network splits its input, and undo any chunking of any body.
"""

from __future__ import annotations

import itertools
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlrd.framing import (
    MAX_HEADER_BYTES,
    MAX_REQUEST_LINE,
    ChunkedDecoder,
    HttpError,
    check_incomplete_head,
    head_end,
    head_start,
    parse_head,
)


def find_head_end(data: bytes) -> int:
    """Where the head that `data` starts ends, as the server finds it; -1 while incomplete."""
    return head_end(data, head_start(data))


def parse_whole_head(data: bytes):
    """The head `data` holds up to `end`, empty lines before the request line skipped as the server does."""
    return parse_head(data[head_start(data):find_head_end(data)])

EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "-_.!#$%&'*+^`|~", min_size=1, max_size=20)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                max_size=40).map(str.strip)
TARGET = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60).map(lambda t: "/" + t)
METHOD = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"])
PIECES = [
    b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b";", b"\x00", b"\x7f", b"\xff", b"HTTP/1.1", b"HTTP/1.0",
    b"HTTP/0.9", b"HTTP/2.0", b"POST", b"GET", b"/", b"Content-Length: ", b"Transfer-Encoding: chunked",
    b"Connection: close", b"Expect: 100-continue", b"Content-Type: text/xml; charset=", b"0", b"ff",
    b"-1", b"18446744073709551616",
]


def request_like_bytes() -> st.SearchStrategy[bytes]:
    """Byte strings built from HTTP's own pieces, so the parser is exercised past its first line."""
    return st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=8)), max_size=40).map(b"".join)


def assert_refusal(error: HttpError) -> None:
    assert 400 <= error.status <= 599, error.status
    assert error.reason and "\n" not in error.reason


def outcome_of_head(data: bytes) -> object:
    """What the server would do with `data` as the start of a request."""
    end = find_head_end(data)
    try:
        if end < 0:
            check_incomplete_head(data, head_start(data))
            return "incomplete"
        head = parse_whole_head(data)
    except HttpError as error:
        assert_refusal(error)
        return error.status
    # Every property the server and application read must work on an accepted head.
    assert head.target.startswith("/") and head.version in ((1, 0), (1, 1))
    _ = (head.path, head.query, head.keep_alive, head.chunked, head.media_type, head.charset,
         head.expects_continue)
    length = head.content_length
    assert length is None or length >= 0
    assert not (length is not None and head.chunked)
    return head


@EXAMPLES
@given(st.binary(max_size=2048))
def test_the_head_parser_only_raises_http_errors_on_arbitrary_bytes(data):
    outcome_of_head(data)


@EXAMPLES
@given(request_like_bytes())
def test_the_head_parser_only_raises_http_errors_on_request_like_bytes(data):
    outcome_of_head(data)


@EXAMPLES
@given(request_like_bytes(), st.integers(min_value=0, max_value=200))
def test_a_head_refused_while_incomplete_is_refused_complete(data, cut):
    """An early refusal (before the blank line) is never a request the full head would accept."""
    prefix = data[:cut]
    if find_head_end(prefix) >= 0:
        return
    try:
        check_incomplete_head(prefix, head_start(prefix))
    except HttpError as early:
        assert_refusal(early)
        whole = prefix + b"\r\n\r\n"
        outcome = outcome_of_head(whole)
        assert isinstance(outcome, int), f"{prefix!r} refused early ({early.status}) but accepted whole"


@EXAMPLES
@given(METHOD, TARGET, st.sampled_from([(1, 0), (1, 1)]),
       st.lists(st.tuples(TOKEN, VALUE), max_size=20, unique_by=lambda pair: pair[0].lower()),
       st.sampled_from([b"\r\n", b"\n"]), st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
def test_a_well_formed_head_parses_to_what_was_sent(method, target, version, headers, eol, leading):
    framing = {"content-length", "transfer-encoding", "host"}
    headers = [(name, value) for name, value in headers if name.lower() not in framing]
    if version == (1, 1):
        headers.insert(0, ("Host", "receiver"))  # RFC 9112 §3.2: required in 1.1
    raw = leading + f"{method} {target} HTTP/{version[0]}.{version[1]}".encode() + eol
    raw += b"".join(f"{name}: {value}".encode("latin-1") + eol for name, value in headers) + eol
    end = find_head_end(raw)
    assert end == len(raw)
    check_incomplete_head(raw[:-len(eol)], head_start(raw))  # everything but the blank line is plausible
    head = parse_whole_head(raw)
    # The stdlib turns a leading "//" into "/" (gh-87389): the target as dlrd routes it.
    sent = "/" + target.lstrip("/") if target.startswith("//") else target
    assert (head.method, head.target, head.version) == (method, sent, version)
    assert {name.lower(): value for name, value in head.headers.items()} == {
        name.lower(): value for name, value in headers}


@EXAMPLES
@given(st.sampled_from([b"\r", b"\n", b"\x00", b"\x01", b"\x7f", b"\r\n "]), st.booleans())
def test_control_bytes_in_a_header_value_or_the_target_are_refused(byte, in_target):
    if in_target:
        raw = b"GET /a" + byte + b"b HTTP/1.1\r\nHost: x\r\n\r\n"
    else:
        raw = b"GET / HTTP/1.1\r\nX-Test: a" + byte + b"b\r\nHost: x\r\n\r\n"
    try:
        parse_whole_head(raw)
    except HttpError as error:
        assert error.status == 400
    else:
        raise AssertionError(f"accepted {raw!r}")


@EXAMPLES
@given(st.integers(min_value=0, max_value=3 * MAX_HEADER_BYTES), st.integers(min_value=1, max_value=3000))
def test_heads_past_the_limits_are_refused_with_414_or_431(size, step):
    """Fed a byte range at a time as the server is, an oversized head is refused before it is complete."""
    line = b"GET /" + b"a" * size + b" HTTP/1.1\r\n"
    buffer = bytearray()
    status = None
    for start in range(0, len(line), step):
        buffer += line[start:start + step]
        try:
            check_incomplete_head(buffer, head_start(buffer))
        except HttpError as error:
            status = error.status
            break
    assert (status == 414) == (len(line) - 2 > MAX_REQUEST_LINE)


def decode(data: bytes, cuts: list[int], limit: int = 1 << 20) -> tuple[object, bytes]:
    """Feed `data` to a fresh decoder in pieces cut at `cuts`; return (body or status, bytes left over)."""
    decoder = ChunkedDecoder(limit)
    buffer = bytearray()
    bounds = sorted({0, len(data), *(cut for cut in cuts if 0 < cut < len(data))})
    for start, end in itertools.pairwise(bounds):
        buffer += data[start:end]
        try:
            done = decoder.feed(buffer)
        except HttpError as error:
            assert error.status in (400, 413), error.status
            return error.status, b""
        if done:
            return bytes(decoder.body), bytes(buffer) + data[end:]
    return "incomplete", b""


@EXAMPLES
@given(st.binary(max_size=512), st.lists(st.integers(min_value=0, max_value=512), max_size=10))
def test_the_chunked_decoder_only_raises_http_errors_whatever_the_split(data, cuts):
    assert decode(data, cuts) == decode(data, [])


@EXAMPLES
@given(request_like_bytes(), st.lists(st.integers(min_value=0, max_value=300), max_size=10))
def test_the_chunked_decoder_gives_one_answer_whatever_the_split_on_request_like_bytes(data, cuts):
    assert decode(data, cuts) == decode(data, [])


def chunked(body: bytes, sizes: list[int], upper: bool, extensions: bool, trailers: list[bytes]) -> bytes:
    out = bytearray()
    position = 0
    for size in sizes:
        part = body[position:position + size]
        if not part:
            break
        position += len(part)
        size_text = (b"%X" if upper else b"%x") % len(part)
        out += size_text + (b";name=value" if extensions else b"") + b"\r\n" + part + b"\r\n"
    if position < len(body):
        out += b"%x\r\n" % (len(body) - position) + body[position:] + b"\r\n"
    out += b"0\r\n" + b"".join(trailer + b"\r\n" for trailer in trailers) + b"\r\n"
    return bytes(out)


@EXAMPLES
@given(st.binary(max_size=4096), st.lists(st.integers(min_value=1, max_value=700), max_size=12),
       st.booleans(), st.booleans(), st.lists(st.sampled_from([b"X-Trailer: 1", b"Checksum: abc"]), max_size=2),
       st.lists(st.integers(min_value=0, max_value=6000), max_size=12), st.binary(max_size=40))
def test_chunked_encoding_round_trips_with_any_chunking_and_any_split(body, sizes, upper, extensions, trailers,
                                                                      cuts, pipelined):
    """Whatever chunk sizes the client picks and however TCP splits them, the body comes back intact,
    and the bytes of a pipelined next request are left for it."""
    encoded = chunked(body, sizes, upper, extensions, trailers)
    assert decode(encoded + pipelined, cuts) == (body, pipelined)


@EXAMPLES
@given(st.integers(min_value=0, max_value=3000), st.integers(min_value=1, max_value=2048))
def test_the_chunked_decoder_refuses_a_body_past_its_limit_with_413(size, limit):
    encoded = chunked(b"x" * size, [max(1, size // 3)] * 3, False, False, [])
    result, _ = decode(encoded, [], limit=limit)
    assert result == (413 if size > limit else b"x" * size)


@EXAMPLES
@given(st.sampled_from([b"-1", b"", b"0x10", b"g", b"1 1", b"+5", b"1" * 17, b"\x00", b"1\x00"]))
def test_bad_chunk_sizes_are_refused_with_400(size_line):
    result, _ = decode(size_line + b"\r\nabc\r\n0\r\n\r\n", [])
    assert result in (400, 413)
