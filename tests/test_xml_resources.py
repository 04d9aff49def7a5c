"""No request and no answer can make dlrd open a file: every encoding libxml2 detects, an entity naming a FIFO.

A FIFO proves a negative: opening it for reading blocks until a writer
comes, and a non-blocking open for writing fails with ENXIO while nobody
has it open for reading. So if the parser had tried to read the entity,
the answer would never come, and the writer-side open would succeed.
Before the fix a body in UTF-32, or in UTF-16 starting `<?xml` without a
byte order mark, slipped past the byte-pattern DTD check, and libxml2
opened what its external parameter entity named (/etc/shadow, a FIFO,
/dev/zero, which spun the event loop for ever).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from provider import read_soap_answer, receipt_envelope
from wire import post, receipt_body

from dlrd.soap import EnvelopeRejected, body_encoding, parse_envelope, parse_response

# Long enough for a daemon that is fine, short enough that a blocked one fails the test quickly.
ANSWER_TIMEOUT = 5.0


def hostile_document(fifo: Path, declared: str | None) -> str:
    """A receipt envelope whose internal DTD subset pulls in the FIFO as an external parameter entity."""
    envelope = receipt_envelope(MessageIdentifier="FIFO01").decode().split("\n", 1)[1]
    declaration = f'<?xml version="1.0" encoding="{declared}"?>' if declared else '<?xml version="1.0"?>'
    return (f'{declaration}\n<!DOCTYPE SOAP-ENV:Envelope [<!ENTITY % pe SYSTEM "file://{fifo}"> %pe;]>\n'
            + envelope)


def ucs4(text: str, order: str) -> bytes:
    """UCS-4 in the unusual byte orders XML 1.0 appendix F lists (no Python codec writes them)."""
    big = text.encode("utf-32-be")
    groups = [big[index:index + 4] for index in range(0, len(big), 4)]
    positions = [int(digit) - 1 for digit in order]
    return b"".join(bytes(group[position] for position in positions) for group in groups)


# Each way libxml2 (or XML 1.0 appendix F) tells an encoding from the first bytes, plus the
# declarations and headers that name one: (name, body from the FIFO's path, Content-Type charset).
Encoder = Callable[[Path], bytes]
HOSTILE_BODIES: list[tuple[str, Encoder, str | None]] = [
    ("utf-16le-bom", lambda fifo: b"\xff\xfe" + hostile_document(fifo, "UTF-16").encode("utf-16-le"), None),
    ("utf-16be-bom", lambda fifo: b"\xfe\xff" + hostile_document(fifo, "UTF-16").encode("utf-16-be"), None),
    ("utf-16le-no-bom", lambda fifo: hostile_document(fifo, "UTF-16").encode("utf-16-le"), None),
    ("utf-16be-no-bom", lambda fifo: hostile_document(fifo, "UTF-16").encode("utf-16-be"), None),
    ("utf-16le-no-declaration", lambda fifo: hostile_document(fifo, None).encode("utf-16-le"), None),
    ("utf-32le-bom", lambda fifo: b"\xff\xfe\x00\x00" + hostile_document(fifo, "UTF-32").encode("utf-32-le"), None),
    ("utf-32be-bom", lambda fifo: b"\x00\x00\xfe\xff" + hostile_document(fifo, "UTF-32").encode("utf-32-be"), None),
    ("utf-32le-no-bom", lambda fifo: hostile_document(fifo, "UTF-32").encode("utf-32-le"), None),
    ("utf-32be-no-bom", lambda fifo: hostile_document(fifo, "UTF-32").encode("utf-32-be"), None),
    ("ucs4-2143-bom", lambda fifo: ucs4("\ufeff" + hostile_document(fifo, "ISO-10646-UCS-4"), "2143"), None),
    ("ucs4-3412-bom", lambda fifo: ucs4("\ufeff" + hostile_document(fifo, "ISO-10646-UCS-4"), "3412"), None),
    ("ucs4-2143-no-bom", lambda fifo: ucs4(hostile_document(fifo, "ISO-10646-UCS-4"), "2143"), None),
    ("ucs4-3412-no-bom", lambda fifo: ucs4(hostile_document(fifo, "ISO-10646-UCS-4"), "3412"), None),
    ("ebcdic-cp037", lambda fifo: hostile_document(fifo, "IBM037").encode("cp037"), None),
    ("ebcdic-cp500", lambda fifo: hostile_document(fifo, "IBM500").encode("cp500"), None),
    ("utf-7-declared", lambda fifo: (b'<?xml version="1.0" encoding="UTF-7"?>\n'
                                     + hostile_document(fifo, None).split("\n", 1)[1].encode("utf-7")), None),
    ("utf-16-declared-in-ascii", lambda fifo: hostile_document(fifo, "UTF-16").encode("ascii"), None),
    ("utf-16-charset-header", lambda fifo: hostile_document(fifo, None).encode("utf-16-le"), "utf-16"),
    ("utf-8-bom", lambda fifo: b"\xef\xbb\xbf" + hostile_document(fifo, "UTF-8").encode(), None),
    ("utf-8", lambda fifo: hostile_document(fifo, "UTF-8").encode(), None),
    ("utf-8-no-declaration", lambda fifo: hostile_document(fifo, None).encode(), None),
    ("iso-8859-1", lambda fifo: hostile_document(fifo, "ISO-8859-1").encode("latin-1"), None),
    ("iso-8859-1-charset-header", lambda fifo: hostile_document(fifo, None).encode("latin-1"), "iso-8859-1"),
]
NAMES = [name for name, _encode, _charset in HOSTILE_BODIES]


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "entity.fifo"
    os.mkfifo(path)
    yield path
    release_reader(path)


def release_reader(path: Path) -> bool:
    """True if something had the FIFO open for reading; that reader then gets EOF and carries on."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as error:
        assert error.errno == errno.ENXIO, error
        return False
    os.close(descriptor)
    return True


def assert_never_opened(path: Path) -> None:
    assert not release_reader(path), f"{path} was opened for reading"


@pytest.mark.parametrize(("name", "encode", "charset"), HOSTILE_BODIES, ids=NAMES)
def test_the_parser_refuses_the_body_without_opening_the_entity(fifo, name, encode, charset):
    body = encode(fifo)
    guard = _Guard(fifo)

    with guard, pytest.raises(EnvelopeRejected) as rejected:
        parse_envelope(body, charset)

    assert not guard.had_to_release, f"{name}: the parser opened {fifo} and waited on it"
    assert_never_opened(fifo)
    assert "FIFO01" not in rejected.value.reason


@pytest.mark.parametrize(("name", "encode", "charset"), HOSTILE_BODIES, ids=NAMES)
def test_send_test_reads_a_hostile_answer_without_opening_the_entity(fifo, name, encode, charset):
    """parse_response is send-test's reader: a hostile receiver must not make it open a file either."""
    body = encode(fifo)
    guard = _Guard(fifo)

    with guard, pytest.raises(EnvelopeRejected):
        parse_response(body, charset)

    assert not guard.had_to_release, f"{name}: the response parser opened {fifo}"
    assert_never_opened(fifo)


@pytest.mark.parametrize(("name", "encode", "charset"), HOSTILE_BODIES, ids=NAMES)
def test_the_daemon_answers_a_client_fault_opens_nothing_stores_nothing_and_serves_on(module_daemon, fifo, name,
                                                                                       encode, charset):
    daemon = module_daemon
    receipts = daemon.rows("SELECT count(*) FROM receipts")[0][0]
    quarantined = daemon.rows("SELECT count(*) FROM quarantine")[0][0]
    content_type = "text/xml" + (f"; charset={charset}" if charset else "")

    try:
        answer = post(daemon.address, encode(fifo), content_type=content_type, timeout=ANSWER_TIMEOUT)
    except OSError:
        pytest.fail(f"{name}: no answer within {ANSWER_TIMEOUT} s; opened the FIFO: {release_reader(fifo)}")

    assert_never_opened(fifo)
    assert answer.status == 500, answer.body
    assert read_soap_answer(answer.body).fault == "Client"
    assert daemon.rows("SELECT count(*) FROM receipts")[0][0] == receipts
    assert daemon.rows("SELECT count(*) FROM quarantine")[0][0] == quarantined
    assert b"FIFO01" not in answer.body
    following = post(daemon.address, receipt_body(f"NEXT{NAMES.index(name):02d}"), timeout=ANSWER_TIMEOUT)
    assert following.status == 200


def test_a_dtd_naming_dev_zero_is_refused_at_once(module_daemon):
    """/dev/zero as an entity spun the event loop at 100 % CPU for ever; SIGTERM was ignored."""
    body = hostile_document(Path("/dev/zero"), "UTF-32").encode("utf-32-le")

    answer = post(module_daemon.address, body, timeout=ANSWER_TIMEOUT)

    assert answer.status == 500
    assert post(module_daemon.address, receipt_body("ZERO01"), timeout=ANSWER_TIMEOUT).status == 200


def test_send_test_exits_4_on_a_hostile_receiver_instead_of_hanging(fifo):
    body = hostile_document(fifo, "UTF-16").encode("utf-16-le")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer_hostile() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n"
                                   % len(body) + body)

        thread = threading.Thread(target=answer_hostile, daemon=True)
        thread.start()
        try:
            result = subprocess.run([sys.executable, "-m", "dlrd", "send-test",
                                     f"http://127.0.0.1:{listener.getsockname()[1]}/"],
                                    capture_output=True, text=True, timeout=20)
        finally:
            opened = release_reader(fifo)
        thread.join(10)

    assert not opened, "send-test opened the FIFO the answer named"
    assert result.returncode == 4, result.stdout + result.stderr
    assert "UTF-8 or ISO-8859-1" in result.stdout


@pytest.mark.parametrize(("body", "charset", "encoding"), [
    (b'<?xml version="1.0"?><a/>', None, "utf-8"),
    (b"<a/>", None, "utf-8"),
    (b"<a/>", "ISO-8859-1", "iso-8859-1"),
    (b"<a/>", "latin1", "iso-8859-1"),
    (b'<?xml version="1.0" encoding="latin-1"?><a/>', "utf-8", "iso-8859-1"),
    (b'<?xml version="1.0" encoding="us-ascii"?><a/>', None, "us-ascii"),
    (b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?><a/>', "iso-8859-1", "utf-8"),
    (b"\xef\xbb\xbf<a/>", None, "utf-8"),
])
def test_the_encoding_is_decided_before_parsing(body, charset, encoding):
    assert body_encoding(body, charset) == encoding


def test_a_utf8_byte_order_mark_before_an_iso_8859_1_declaration_is_refused():
    with pytest.raises(ValueError, match="byte order mark"):
        body_encoding(b'\xef\xbb\xbf<?xml version="1.0" encoding="ISO-8859-1"?><a/>')


class _Guard:
    """Releases a reader the parser may have left blocked on the FIFO, so a failing test fails instead of hanging."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = fifo
        self.had_to_release = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Guard:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(ANSWER_TIMEOUT):
            if release_reader(self.fifo):
                self.had_to_release = True
