"""The bad-input battery: hostile and broken requests against a real daemon.

Every case must be answered with a clean refusal (a 4xx/5xx, a SOAP Fault,
or for an understood receipt with a bad field the SPEC's 200 + Report -1
and a quarantine row), the daemon must go on serving (healthz and a good
receipt) and nothing wrong may reach the receipts table or the journal.
No answer may carry a traceback, a file path or a library version, and
the Server header is always exactly `dlrd`.
"""

from __future__ import annotations

import itertools
import platform
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import lxml
import pytest
from conftest import Daemon
from lxml import etree
from wire import Answer, connect, parse_answer, read_one

import dlrd

SEED = (Path(__file__).resolve().parent / "envelopes" / "seed.xml").read_bytes()
SEED_ID = b"3C7D98A4"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
REQUEST_TIMEOUT = 1.0
TEN_MB = 10 * 1024 * 1024

# Things no answer may reveal.
LEAKS = [
    "Traceback", 'File "', ".py", "/work/", "/usr/", "/home/", "/tmp/", "site-packages", "root:x:0:0",
    "lxml", "libxml", "Python", "XML_PARSE_HUGE",
    dlrd.__version__, lxml.__version__, platform.python_version(),
    ".".join(map(str, etree.LIBXML_VERSION)),
]

_ids = itertools.count(1)


def envelope(message_id: bytes = SEED_ID, *, replace: tuple[bytes, bytes] | None = None) -> bytes:
    body = SEED.replace(SEED_ID, message_id)
    if replace is not None:
        assert replace[0] in body, replace[0]
        body = body.replace(*replace)
    return body


def post_bytes(body: bytes, *, path: str = "/", content_type: str = "text/soap", version: str = "1.0",
               extra: bytes = b"", length: int | None = None) -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: receiver\r\nContent-Type: {content_type}\r\n".encode()
    head += b"Content-Length: %d\r\n" % (len(body) if length is None else length)
    return head + extra + b"\r\n" + body


def talk(address: tuple[str, int], raw: bytes, *, half_close: bool = True, timeout: float = 10.0) -> list[Answer]:
    """Send `raw` on a new connection, read until the server closes, and parse every answer in order."""
    with connect(address, timeout) as sock:
        try:
            sock.sendall(raw)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server refused before reading everything: its answer is still there to read
        data = read_all(sock)
    answers = []
    while data:
        answer, data = parse_answer(data)
        answers.append(answer)
    return answers


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            # A refusal closes with unread request bytes still queued, so the
            # kernel resets; the answer sent before it has already been read.
            return data
        if not chunk:
            return data
        data += chunk


def assert_clean(answer: Answer) -> None:
    assert answer.header("server") == "dlrd"
    # /metrics names the version on purpose (dlrd_build_info); a pipelined answer's raw holds it too.
    text = re.sub(r'dlrd_build_info\{version="[^"]*"\}', "", answer.raw.decode("latin-1"))
    for leak in LEAKS:
        assert leak not in text, f"the answer reveals {leak!r}:\n{text}"


def assert_refused(answer: Answer, *statuses: int) -> None:
    """A clean 4xx/5xx (or a SOAP Fault, which travels as 500 in SOAP 1.1)."""
    assert_clean(answer)
    assert 400 <= answer.status <= 599, answer
    if statuses:
        assert answer.status in statuses, answer


def assert_fault(answer: Answer) -> str:
    """A SOAP 1.1 Client fault (SOAP 1.1 §6.2: HTTP 500); returns the faultstring."""
    assert_refused(answer, 500)
    root = etree.fromstring(answer.body)
    fault = root.find(f"{{{SOAP11}}}Body/{{{SOAP11}}}Fault")
    assert fault is not None, answer.body
    assert fault.findtext("faultcode") == "SOAP-ENV:Client"
    return fault.findtext("faultstring")


def receipt_answer(answer: Answer) -> tuple[str, str, str]:
    assert answer.status == 200, answer
    assert_clean(answer)
    root = etree.fromstring(answer.body)
    response = next(element for element in root.iter() if etree.QName(element).localname.endswith("Response"))
    return response.findtext("MessageIdentifier"), response.findtext("Report"), response.findtext("Text")


def send_good_receipt(daemon: Daemon) -> None:
    message_id = f"GOOD{next(_ids):04d}"
    [answer] = talk(daemon.address, post_bytes(envelope(message_id.encode())))
    assert receipt_answer(answer) == (message_id, "0", "stored")
    daemon.good_ids.add(message_id)


def assert_still_serving(daemon: Daemon) -> None:
    """healthz answers 200 and a good receipt is stored; only good receipts were ever stored."""
    [health] = talk(daemon.address, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert health.status == 200
    assert_clean(health)
    send_good_receipt(daemon)
    assert daemon.process.poll() is None
    assert {row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")} == daemon.good_ids
    assert {line["message_id"] for line in daemon.journal()} == daemon.good_ids


def quarantined(daemon: Daemon) -> list[str]:
    return [row["reason"] for row in daemon.rows("SELECT reason FROM quarantine ORDER BY rowid")]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    daemon = Daemon(tmp_path_factory.mktemp("bad-input")).start(f"[server]\nrequest_timeout = {REQUEST_TIMEOUT:g}\n")
    daemon.good_ids = set()
    yield daemon
    log = daemon.log()
    assert daemon.stop() == 0, log
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def roomy_daemon(tmp_path_factory):
    """max_body_bytes raised to 12m, so the XML parser itself meets the giant documents."""
    daemon = Daemon(tmp_path_factory.mktemp("bad-input-roomy")).start("[server]\nmax_body_bytes = 12m\n")
    daemon.good_ids = set()
    yield daemon
    log = daemon.log()
    assert daemon.stop() == 0, log
    assert "Traceback" not in log, log


@pytest.fixture
def listener():
    """A loopback TCP listener that records whether anyone connected (an XXE fetch would)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    connected: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, peer = server.accept()
            except TimeoutError:
                continue
            connected.append(peer)
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connected
    stop.set()
    thread.join(5)
    server.close()


# Forbidden XML: DTDs and entities of every kind.

def xxe(system_id: str, *, parameter: bool = False) -> bytes:
    if parameter:
        doctype = f'<!DOCTYPE x [<!ENTITY % p SYSTEM "{system_id}"> %p;]>'.encode()
        return b'<?xml version="1.0"?>\n' + doctype + envelope().split(b"?>", 1)[1]
    doctype = f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "{system_id}">]>'.encode()
    return b'<?xml version="1.0"?>\n' + doctype + envelope(b"&xxe;").split(b"?>", 1)[1]


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(b'<!ENTITY lol%d "%s">\n' % (n, b"&lol%d;" % (n - 1) * 10 if n > 1 else b"&lol;" * 10)
               for n in range(1, 10))
    + b"]>\n" + envelope(b"&lol9;").split(b"?>", 1)[1]
)

FORBIDDEN_XML = {
    "xxe-file": xxe("file:///etc/passwd"),
    "xxe-network-discard-port": xxe("http://127.0.0.1:9/x"),
    "xxe-parameter-entity": xxe("http://127.0.0.1:9/p.dtd", parameter=True),
    "billion-laughs": BILLION_LAUGHS,
    "doctype-without-entities": b"<!DOCTYPE Envelope>\n" + envelope().split(b"?>", 1)[1],
    "doctype-with-external-dtd": b'<!DOCTYPE Envelope SYSTEM "file:///etc/passwd">\n' + envelope().split(b"?>", 1)[1],
    "internal-subset-only": b"<!DOCTYPE Envelope [<!ELEMENT Envelope ANY>]>\n" + envelope().split(b"?>", 1)[1],
    # UTF-16 without a BOM and UTF-32 hide "<!DOCTYPE" from a byte search;
    # libxml2 detects them from the first bytes.
    "xxe-utf16le-no-bom": xxe("file:///etc/passwd").split(b"?>", 1)[1].decode().encode("utf-16-le"),
    "xxe-utf16be-no-bom": xxe("file:///etc/passwd").split(b"?>", 1)[1].decode().encode("utf-16-be"),
    "xxe-utf16-declared": xxe("file:///etc/passwd").replace(b'version="1.0"', b'version="1.0" encoding="UTF-16"')
    .decode().encode("utf-16-le"),
    "xxe-utf32": xxe("file:///etc/passwd").decode().encode("utf-32-le"),
}


@pytest.mark.parametrize("body", FORBIDDEN_XML.values(), ids=FORBIDDEN_XML.keys())
def test_dtds_and_entities_get_a_client_fault(daemon, body):
    [answer] = talk(daemon.address, post_bytes(body))
    assert_fault(answer)
    assert_still_serving(daemon)


@pytest.mark.parametrize("parameter", [False, True], ids=["general-entity", "parameter-entity"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le"])
def test_an_xxe_to_a_listening_loopback_port_is_never_fetched(daemon, listener, parameter, encoding):
    port, connected = listener
    body = xxe(f"http://127.0.0.1:{port}/x", parameter=parameter)
    if encoding != "utf-8":
        body = body.split(b"?>", 1)[1].decode().encode(encoding)
    [answer] = talk(daemon.address, post_bytes(body))
    assert_fault(answer)
    assert_still_serving(daemon)  # a round trip later: any fetch would have connected by now
    assert connected == []


# Bytes that are not the text they claim to be.

NOT_TEXT = {
    "latin-1-bytes-declared-utf8": envelope(b"caf\xe9"),
    "truncated-multibyte": envelope(b"AB\xc3"),
    "overlong-slash": envelope(b"\xc0\xaf"),
    "utf16-surrogate-in-utf8": envelope(b"\xed\xa0\x80"),
    "bytes-above-f4": envelope(b"\xf8\x88\x80\x80\x80"),
    "nul-byte-in-a-field": envelope(b"3C7D\x0098A4"),
    "nul-character-reference": envelope(b"3C7D&#0;98A4"),
    "nul-bytes-everywhere": envelope().replace(b"\n", b"\x00\n"),
    "control-character": envelope(b"3C7D\x0198A4"),
    "binary-garbage": bytes(range(256)) * 4,
    "utf16-bom": b"\xff\xfe" + envelope().decode().encode("utf-16-le"),
    "declared-shift-jis": envelope().replace(b'encoding="UTF-8"', b'encoding="Shift_JIS"'),
    "declared-utf7": envelope().replace(b'encoding="UTF-8"', b'encoding="UTF-7"'),
    "declared-ebcdic": envelope().replace(b'encoding="UTF-8"', b'encoding="cp037"').decode().encode("cp037"),
    "empty-body": b"",
    "not-xml": b"hello",
}


@pytest.mark.parametrize("body", NOT_TEXT.values(), ids=NOT_TEXT.keys())
def test_bytes_that_are_not_valid_text_get_a_client_fault(daemon, body):
    [answer] = talk(daemon.address, post_bytes(body, content_type="text/xml; charset=utf-8"))
    assert_fault(answer)
    assert_still_serving(daemon)


@pytest.mark.parametrize("charset", ["utf-16", "x-unknown", "utf-32"])
def test_a_charset_other_than_utf8_or_latin1_in_the_header_gets_a_client_fault(daemon, charset):
    body = envelope().split(b"?>", 1)[1]
    [answer] = talk(daemon.address, post_bytes(body, content_type=f"text/xml; charset={charset}"))
    assert_fault(answer)
    assert_still_serving(daemon)


# Documents built to exhaust the parser.

def nested(depth: int, closed: bool) -> bytes:
    inner = b"<a>" * depth + (b"</a>" * depth if closed else b"")
    return envelope(replace=(b"<Report", inner + b"<Report"))


def with_attributes(count: int, message_id: bytes, duplicate: bool = False) -> bytes:
    attributes = b" ".join(b'a%d="%d"' % (n, n) for n in range(count))
    if duplicate:
        attributes += b' a0="again"'
    return envelope(message_id, replace=(b"<ns2:SubmitDeliveryReceipt>",
                                         b"<ns2:SubmitDeliveryReceipt " + attributes + b">"))


def test_ten_thousand_nested_elements_get_a_client_fault(daemon):
    body = nested(10_000, closed=False)  # 30 kB: under max_body_bytes, so the parser meets it
    assert len(body) < 64 * 1024
    [answer] = talk(daemon.address, post_bytes(body))
    assert "depth" in assert_fault(answer).lower()
    assert_still_serving(daemon)


def test_ten_thousand_nested_and_closed_elements_get_a_client_fault_with_a_raised_limit(roomy_daemon):
    [answer] = talk(roomy_daemon.address, post_bytes(nested(10_000, closed=True)))
    assert "depth" in assert_fault(answer).lower()
    assert_still_serving(roomy_daemon)


def test_a_hundred_thousand_attributes_exceed_max_body_bytes_and_get_413(daemon):
    body = with_attributes(100_000, b"ATTRS413")
    assert len(body) > 64 * 1024
    [answer] = talk(daemon.address, post_bytes(body))
    assert_refused(answer, 413)
    assert_still_serving(daemon)


def test_a_hundred_thousand_attributes_are_parsed_quickly_with_a_raised_limit(roomy_daemon):
    """The parser copes: the attributes are ignored and the receipt they decorate is stored."""
    started = time.monotonic()
    [answer] = talk(roomy_daemon.address, post_bytes(with_attributes(100_000, b"ATTRS100K")))
    assert receipt_answer(answer) == ("ATTRS100K", "0", "stored")
    roomy_daemon.good_ids.add("ATTRS100K")
    assert time.monotonic() - started < 5
    [answer] = talk(roomy_daemon.address, post_bytes(with_attributes(100_000, b"ATTRSDUP", duplicate=True)))
    assert "redefined" in assert_fault(answer)
    assert_still_serving(roomy_daemon)


def test_a_huge_text_node_is_quarantined_not_stored(daemon):
    """60 kB of MessageIdentifier fits max_body_bytes: an understood envelope with a bad field."""
    before = len(quarantined(daemon))
    [answer] = talk(daemon.address, post_bytes(envelope(b"H" * 60_000)))
    _, report, text = receipt_answer(answer)
    assert report == "-1" and "MessageIdentifier" in text
    assert len(quarantined(daemon)) == before + 1
    assert_still_serving(daemon)


def test_an_oversize_message_identifier_is_echoed_and_logged_only_in_part(daemon):
    """A 65 000-character MessageIdentifier came back whole in the Report -1 answer and the log line."""
    [answer] = talk(daemon.address, post_bytes(envelope(b"E" * 63_000)))
    message_id, report, _text = receipt_answer(answer)
    assert report == "-1"
    assert message_id == "E" * 64
    assert len(answer.body) < 2000
    lines = [line for line in daemon.log().splitlines() if "EEEEEEEE" in line]
    assert lines and max(len(line) for line in lines) < 500
    assert_still_serving(daemon)


def test_a_text_node_past_libxml2s_limit_gets_a_client_fault_with_a_raised_limit(roomy_daemon):
    started = time.monotonic()
    [answer] = talk(roomy_daemon.address, post_bytes(envelope(b"H" * 11_000_000)))
    assert "too long" in assert_fault(answer)
    assert time.monotonic() - started < 5
    assert_still_serving(roomy_daemon)


# Envelopes that are well-formed but ambiguous.

def test_duplicate_fields_are_quarantined_not_stored(daemon):
    body = envelope(b"DUPFIELD", replace=(b"<Report", b'<Report xsi:type="xsd:int">2</Report>\n<Report'))
    before = len(quarantined(daemon))
    [answer] = talk(daemon.address, post_bytes(body))
    message_id, report, text = receipt_answer(answer)
    assert (message_id, report) == ("DUPFIELD", "-1")
    assert "Report appears more than once" in text
    assert len(quarantined(daemon)) == before + 1
    assert_still_serving(daemon)


def test_two_submit_delivery_receipt_elements_get_a_client_fault(daemon):
    operation = envelope(b"TWOOPS").split(b"<ns2:SubmitDeliveryReceipt>")[1].split(b"</ns2:SubmitDeliveryReceipt>")[0]
    second = b"<ns2:SubmitDeliveryReceipt>" + operation.replace(b"TWOOPS", b"TWOOPS2") + b"</ns2:SubmitDeliveryReceipt>"
    body = envelope(b"TWOOPS", replace=(b"</SOAP-ENV:Body>", second + b"\n</SOAP-ENV:Body>"))
    [answer] = talk(daemon.address, post_bytes(body))
    assert "exactly one SubmitDeliveryReceipt" in assert_fault(answer)
    assert_still_serving(daemon)


def test_two_soap_bodies_get_a_client_fault(daemon):
    body = envelope(replace=(b"</SOAP-ENV:Envelope>", b"<SOAP-ENV:Body/></SOAP-ENV:Envelope>"))
    [answer] = talk(daemon.address, post_bytes(body))
    assert_fault(answer)
    assert_still_serving(daemon)


# Bodies that do not match their framing.

def test_a_ten_megabyte_content_length_gets_413_before_any_body_byte_is_sent(daemon):
    with connect(daemon.address) as sock:
        sock.sendall(post_bytes(b"", length=TEN_MB, version="1.1"))
        answer = read_one(sock)  # no body byte was sent: the answer cannot have waited for one
        assert read_all(sock) == b""
    assert_refused(answer, 413)
    assert answer.header("connection") == "close"
    assert_still_serving(daemon)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_streaming_ten_megabytes_gets_413_and_the_stream_is_cut(daemon, framing):
    if framing == "chunked":
        head = b"POST / HTTP/1.1\r\nHost: receiver\r\nContent-Type: text/soap\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        body = chunk * (TEN_MB // 0x10000) + b"0\r\n\r\n"
    else:
        head = post_bytes(b"", length=TEN_MB, version="1.1")
        body = b"x" * TEN_MB
    sent = []

    with connect(daemon.address) as sock:
        sock.sendall(head)

        def stream() -> None:
            try:
                sock.sendall(body)
                sent.append("all")
            except OSError as error:
                sent.append(error)

        sender = threading.Thread(target=stream)
        sender.start()
        data = read_all(sock)
        sender.join(20)
    answer, _ = parse_answer(data)
    assert_refused(answer, 413)
    assert not sender.is_alive()
    assert_still_serving(daemon)


def test_a_body_longer_than_content_length_leaves_bytes_refused_as_the_next_request(daemon):
    body = envelope(b"LONGBODY")
    raw = post_bytes(body, version="1.1", length=len(body) - 22)  # the body ends inside the closing tag
    first, second = talk(daemon.address, raw, half_close=False)
    assert_fault(first)  # the truncated envelope is not well-formed
    assert_refused(second, 400)
    assert second.header("connection") == "close"
    assert_still_serving(daemon)


def test_a_body_shorter_than_content_length_gets_408_after_request_timeout(daemon):
    body = envelope(b"SHORTBODY")
    started = time.monotonic()
    [answer] = talk(daemon.address, post_bytes(body, version="1.1", length=len(body) + 100), half_close=False)
    assert_refused(answer, 408)
    assert time.monotonic() - started < REQUEST_TIMEOUT + 2
    assert_still_serving(daemon)


def test_a_body_shorter_than_content_length_then_eof_is_closed_without_storing(daemon):
    body = envelope(b"SHORTEOF")
    assert talk(daemon.address, post_bytes(body, length=len(body) + 100)) == []
    assert_still_serving(daemon)


def test_a_post_without_content_length_gets_411(daemon):
    raw = b"POST / HTTP/1.0\r\nHost: receiver\r\nContent-Type: text/soap\r\n\r\n" + envelope(b"NOLENGTH")
    [answer] = talk(daemon.address, raw)
    assert_refused(answer, 411)
    assert_still_serving(daemon)


def chunked_request(chunks: bytes, extra: bytes = b"") -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: receiver\r\nContent-Type: text/soap\r\nTransfer-Encoding: chunked\r\n"
            + extra + b"\r\n" + chunks)


BAD_CHUNKS = {
    "not-hex": (b"zz\r\nabc\r\n0\r\n\r\n", 400),
    "negative": (b"-1\r\nabc\r\n0\r\n\r\n", 400),
    "0x-prefix": (b"0x3\r\nabc\r\n0\r\n\r\n", 400),
    "empty-size": (b"\r\nabc\r\n0\r\n\r\n", 400),
    "seventeen-digits": (b"1" * 17 + b"\r\nabc\r\n0\r\n\r\n", 400),
    "size-overflowing-64-bits": (b"ffffffffffffffff\r\nabc\r\n", 413),
    "data-longer-than-size": (b"3\r\nabcdef\r\n0\r\n\r\n", 400),
    "size-line-too-long": (b"3;" + b"e" * 2000 + b"\r\nabc\r\n0\r\n\r\n", 400),
    "space-inside-size": (b"1 0\r\nabc\r\n0\r\n\r\n", 400),
    "nul-in-size": (b"3\x00\r\nabc\r\n0\r\n\r\n", 400),
    "nul-in-a-trailer": (b"3\r\nabc\r\n0\r\nX-T: a\x00b\r\n\r\n", 400),
    "trailer-without-colon": (b"3\r\nabc\r\n0\r\nnot a header\r\n\r\n", 400),
}


@pytest.mark.parametrize("chunks,status", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
def test_bad_chunk_sizes_are_refused(daemon, chunks, status):
    answers = talk(daemon.address, chunked_request(chunks), half_close=False)
    assert len(answers) == 1
    assert_refused(answers[0], status)
    assert answers[0].header("connection") == "close"
    assert_still_serving(daemon)


def test_a_good_chunked_receipt_is_stored(daemon):
    body = envelope(b"CHUNKED1")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 100]), body[i:i + 100]) for i in range(0, len(body), 100))
    [answer] = talk(daemon.address, chunked_request(chunks + b"0\r\n\r\n", b"Connection: close\r\n"))
    assert receipt_answer(answer) == ("CHUNKED1", "0", "stored")
    daemon.good_ids.add("CHUNKED1")
    assert_still_serving(daemon)


# Heads that try to smuggle, inject or overflow.

HEAD_ATTACKS = {
    "cr-in-header-value": (b"POST / HTTP/1.1\r\nHost: r\r\nX-A: a\rInjected: yes\r\nContent-Length: 0\r\n\r\n", 400),
    "lf-in-header-value": (b"POST / HTTP/1.1\r\nHost: r\r\nX-A: a\nInjected yes\r\nContent-Length: 0\r\n\r\n", 400),
    "nul-in-header-value": (b"POST / HTTP/1.1\r\nHost: r\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", 400),
    "nul-in-header-name": (b"POST / HTTP/1.1\r\nHost: r\r\nX\x00A: b\r\nContent-Length: 0\r\n\r\n", 400),
    "obs-fold": (b"POST / HTTP/1.1\r\nHost: r\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", 400),
    "space-before-colon": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length : 5\r\n\r\nhello", 400),
    "content-length-and-chunked": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "two-different-content-lengths": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n"
                                      b"Content-Length: 6\r\n\r\nhello!", 400),
    "content-length-list": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    "signed-content-length": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: +5\r\n\r\nhello", 400),
    "unknown-transfer-coding": (b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    "chunked-in-http-1.0": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "crlf-in-target": (b"GET /healthz\r\nX-Injected: yes HTTP/1.1\r\nHost: r\r\n\r\n", 400),
    "nul-in-target": (b"GET /healthz\x00.xml HTTP/1.1\r\nHost: r\r\n\r\n", 400),
    "space-in-target": (b"GET /a b HTTP/1.1\r\nHost: r\r\n\r\n", 400),
    "tab-in-target": (b"GET /a\tb HTTP/1.1\r\nHost: r\r\n\r\n", 400),
    "non-ascii-target": (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: r\r\n\r\n", 400),
    "oversized-request-line": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: r\r\n\r\n", 414),
    "oversized-request-line-no-end": (b"GET /" + b"a" * 20000, 414),
    "too-many-headers": (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
    "headers-too-large": (b"GET /healthz HTTP/1.1\r\nX-A: " + b"b" * 17000 + b"\r\n\r\n", 431),
    "http-1.1-without-host": (b"POST / HTTP/1.1\r\nContent-Type: text/soap\r\nContent-Length: 0\r\n\r\n", 400),
    "two-host-headers": (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "host-not-a-host": (b"GET /healthz HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400),
    "http-0.9": (b"GET /healthz\r\n", 400),
    "control-bytes-in-a-target-so-far": (b"GET \x00\x01\x02", 400),
    "junk-after-the-version-so-far": (b"GET / HTTP/1.1X", 400),
    "http-2-version": (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
    "http-2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    "http-1.2": (b"GET /healthz HTTP/1.2\r\n\r\n", 505),
}


@pytest.mark.parametrize("raw,status", HEAD_ATTACKS.values(), ids=HEAD_ATTACKS.keys())
def test_heads_that_inject_smuggle_or_overflow_are_refused_and_closed(daemon, raw, status):
    # No half-close: the refusal must come from the bytes themselves, not from EOF or a timeout.
    started = time.monotonic()
    answers = talk(daemon.address, raw, half_close=False)
    assert time.monotonic() - started < REQUEST_TIMEOUT, "refused only when the request timed out"
    assert len(answers) == 1, answers
    assert_refused(answers[0], status)
    assert answers[0].header("connection") == "close"
    assert "Injected" not in answers[0].raw.decode("latin-1")
    assert_still_serving(daemon)


def test_pipelined_requests_in_one_write_are_all_answered_in_order(daemon):
    requests = (
        b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n"
        + post_bytes(envelope(b"PIPE1"), version="1.1")
        + b"GET /nowhere HTTP/1.1\r\nHost: r\r\n\r\n"
        + post_bytes(envelope(b"PIPE2"), version="1.1")
        + b"GET /metrics HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n"
    )
    answers = talk(daemon.address, requests, half_close=False)
    assert [answer.status for answer in answers[:3]] == [200, 200, 404]
    # The 404 closes the connection: what follows it is not read.
    assert len(answers) == 3
    assert receipt_answer(answers[1]) == ("PIPE1", "0", "stored")
    daemon.good_ids.add("PIPE1")
    for answer in answers:
        assert_clean(answer)
    answers = talk(daemon.address, requests.replace(b"GET /nowhere", b"GET /healthz"), half_close=False)
    assert [answer.status for answer in answers] == [200, 200, 200, 200, 200]
    assert receipt_answer(answers[3]) == ("PIPE2", "0", "stored")
    assert receipt_answer(answers[1]) == ("PIPE1", "0", "duplicate of a stored receipt")
    assert answers[4].body.startswith(b"# HELP")
    daemon.good_ids.add("PIPE2")
    assert_still_serving(daemon)


def test_a_long_pipeline_of_refused_envelopes_is_answered_in_full_and_in_order(daemon):
    """Each fault is answered in turn and the next pipelined request read after it, so a long
    pipeline neither nests calls nor gets cut short."""
    count = 400
    bad = post_bytes(b"<not-a-receipt/>", version="1.1")
    answers = talk(daemon.address, bad * count + post_bytes(envelope(b"PIPEEND"), version="1.1"),
                   half_close=True, timeout=30)
    assert [answer.status for answer in answers] == [500] * count + [200]
    assert all(b"faultstring" in answer.body for answer in answers[:count])
    assert receipt_answer(answers[-1]) == ("PIPEEND", "0", "stored")
    daemon.good_ids.add("PIPEEND")
    assert "Traceback" not in daemon.log()
    assert_still_serving(daemon)


def test_pipelined_requests_followed_by_a_half_close_are_all_answered(daemon):
    requests = b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n" * 3 + post_bytes(envelope(b"PIPE3"), version="1.1")
    answers = talk(daemon.address, requests, half_close=True)
    assert [answer.status for answer in answers] == [200, 200, 200, 200]
    daemon.good_ids.add("PIPE3")
    assert_still_serving(daemon)


def client_hello() -> bytes:
    """The first flight of a real TLS handshake, as a browser or a provider's HTTPS client sends it."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="receiver.example")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_tls_client_hello_on_the_plain_port_gets_400_and_close(daemon):
    hello = client_hello()
    assert hello[0] == 0x16  # a TLS handshake record
    started = time.monotonic()
    answers = talk(daemon.address, hello, half_close=False)
    assert time.monotonic() - started < REQUEST_TIMEOUT
    assert len(answers) == 1
    assert_refused(answers[0], 400)
    assert answers[0].header("connection") == "close"
    assert "Traceback" not in daemon.log()
    assert_still_serving(daemon)


def test_a_real_tls_client_on_the_plain_port_fails_cleanly(daemon):
    context = ssl.create_default_context()
    with socket.create_connection(daemon.address, timeout=5) as raw, \
            pytest.raises((ssl.SSLError, ConnectionResetError)):
        context.wrap_socket(raw, server_hostname="receiver.example")
    assert_still_serving(daemon)


def test_every_refusal_was_counted_and_nothing_leaked_into_the_log(daemon):
    [answer] = talk(daemon.address, b"GET /metrics HTTP/1.0\r\n\r\n")
    refused = sum(int(value) for value in re.findall(rb'^dlrd_requests_refused_total\{[^}]*\} (\d+)$',
                                                        answer.body, re.MULTILINE))
    assert refused > 0
    assert "Traceback" not in daemon.log()


def test_a_fault_names_neither_libxml2_options_nor_spans_lines(daemon):
    """libxml2 advises "use XML_PARSE_HUGE option" and ends some messages with a newline;
    neither belongs in an answer to a stranger."""
    for body in (nested(300, closed=False), envelope(b"3C7D\x0098A4")):
        [answer] = talk(daemon.address, post_bytes(body))
        reason = assert_fault(answer)
        assert "XML_PARSE_HUGE" not in reason and "\n" not in reason, reason


def test_a_flood_of_refused_requests_writes_a_bounded_log_and_counts_every_one(daemon_factory):
    """4000 malformed requests in two seconds wrote 4000 log lines; each kind is now logged 30 times a minute
    at most, the rest counted and summed up."""
    flooded = daemon_factory(name="flooded")
    for number in range(150):
        [answer] = talk(flooded.address, post_bytes(b"not xml %d" % number))
        assert answer.status == 500
        [answer] = talk(flooded.address, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert answer.status == 400
    log = flooded.log()
    assert log.count("refused a request from") <= 2 * 30
    [metrics] = talk(flooded.address, b"GET /metrics HTTP/1.0\r\n\r\n")
    counted = {labels: int(value) for labels, value in
               re.findall(rb'^dlrd_requests_refused_total\{([^}]*)\} (\d+)$', metrics.body, re.MULTILINE)}
    assert counted[b'reason="not-a-receipt",status="fault"'] == 150
    assert counted[b'reason="http",status="400"'] == 150
