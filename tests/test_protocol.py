"""SPEC section 1 over real sockets: each row of the response table, and the HTTP the provider speaks.

Then what a run leaves behind (SPEC section 3): the receipts rows, the
latest_state view and the JSONL lines, read from the daemon's own files.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from provider import (
    SEED_PIN,
    SENDSMS2_NS,
    SENDSMS3_NS,
    SENDSMS5_NS,
    read_soap_answer,
    receipt_envelope,
)
from wire import Answer, connect, exchange, parse_answer, post, read_one, read_until_closed, seed_request

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every test here runs on both backends: the receipt contract does not depend on the engine."""
    return request.param


@pytest.fixture(scope="module", params=BACKENDS)
def module_backend(request) -> str:
    return request.param


RECEIVED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
JOURNAL_FIELDS = {"id", "received_at", "message_id", "sent_to", "report", "label", "state", "final", "timestamp",
                  "remote_addr", "node"}


def post_request(body: bytes, path: str = "/", content_type: str = "text/soap", version: str = "1.1",
                 headers: str = "") -> bytes:
    """A POST as raw bytes, for connections a test keeps open."""
    return (f"POST {path} HTTP/{version}\r\nHost: receiver\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n").encode("latin-1") + body


def receipt_count(daemon) -> int:
    return daemon.rows("SELECT count(*) FROM receipts")[0][0]


def stored_count(daemon, message_id: str) -> int:
    """Rows for one MessageIdentifier: how tests sharing a daemon see only their own receipts."""
    return daemon.rows("SELECT count(*) FROM receipts WHERE message_id = ?", message_id)[0][0]


def quarantine_count(daemon) -> int:
    return daemon.rows("SELECT count(*) FROM quarantine")[0][0]


def assert_report(answer: Answer, message_id: str, report: int = 0) -> str:
    """A 200 SubmitDeliveryReceiptResponse echoing `message_id` with `report`; returns its Text."""
    assert answer.status == 200, answer.body
    soap_answer = read_soap_answer(answer.body)
    assert soap_answer.fault is None, answer.body
    assert soap_answer.fields["MessageIdentifier"] == message_id
    assert soap_answer.report == report
    assert soap_answer.fields["Text"] is not None
    return soap_answer.fields["Text"]


# The response table, row by row.


def test_stored_receipt_is_answered_200_report_0_and_is_committed_by_then(daemon):
    answer = exchange(daemon.address, seed_request())

    assert_report(answer, "3C7D98A4")
    # The answer was sent, so the row must already be committed (SPEC 1: a 200 means durable).
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")] == ["3C7D98A4"]


def test_provider_retry_is_answered_report_0_and_stored_once(daemon):
    answers = [exchange(daemon.address, seed_request()) for _ in range(3)]

    for answer in answers:
        assert_report(answer, "3C7D98A4")
    assert receipt_count(daemon) == 1
    assert [line["message_id"] for line in daemon.journal()] == ["3C7D98A4"]
    assert quarantine_count(daemon) == 0


def test_the_same_receipt_written_differently_is_still_one_receipt(daemon):
    """The key uses the normalised Timestamp1 and SentTo, so '+44…' and '+01:00' spellings are retries too."""
    post(daemon.address, receipt_envelope())
    answer = post(daemon.address, receipt_envelope(SentTo="+447009123456", Timestamp1="2002-08-27T14:38:00+01:00"))

    assert_report(answer, "3C7D98A4")
    rows = daemon.rows("SELECT timestamp_raw FROM receipts")
    assert [row["timestamp_raw"] for row in rows] == ["2002-08-27T13:38:00Z"]
    assert len(daemon.journal()) == 1


def test_a_different_report_for_the_same_message_is_a_new_receipt(daemon):
    post(daemon.address, receipt_envelope(Report="-4"))
    post(daemon.address, receipt_envelope(Report="0"))

    assert [row["report"] for row in daemon.rows("SELECT report FROM receipts ORDER BY id")] == [-4, 0]


def test_invalid_field_is_answered_report_minus_1_with_the_reason_and_quarantined(daemon):
    body = receipt_envelope(MessageIdentifier="BADNUM01", SentTo="abc")
    before = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")

    answer = post(daemon.address, body)

    text = assert_report(answer, "BADNUM01", -1)
    assert "SentTo" in text
    assert receipt_count(daemon) == 0
    assert daemon.journal() == []
    [row] = daemon.rows("SELECT * FROM quarantine")
    assert row["reason"] == text
    assert row["remote_addr"] == "127.0.0.1"
    assert row["content_type"] == "text/soap"
    assert RECEIVED_AT.fullmatch(row["received_at"]) and row["received_at"] >= before
    assert SEED_PIN.encode() not in row["body"]
    assert b"<SentTo>abc</SentTo>" in row["body"] and b"<MessageIdentifier>BADNUM01<" in row["body"]


def test_quarantine_keeps_no_copy_of_the_pin_even_outside_the_pin_element(daemon):
    """The PIN smuggled into another field is still redacted: the quarantine is readable by operators."""
    body = receipt_envelope(MessageIdentifier="LEAK01", SentTo=f"x{SEED_PIN}")

    answer = post(daemon.address, body)

    assert_report(answer, "LEAK01", -1)
    [row] = daemon.rows("SELECT body FROM quarantine")
    assert SEED_PIN.encode() not in row["body"]


@pytest.mark.parametrize(("body", "why"), [
    (b"<html><body>hello</body></html>", "well-formed, not SOAP"),
    (b"hello", "not XML"),
    (receipt_envelope(MessageIdentifier="FAULT01")[:300], "truncated"),
    (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "FAULT01">]>'
     + receipt_envelope(MessageIdentifier="FAULT01").split(b"\n", 1)[1], "an entity declaration"),
])
def test_not_a_receipt_is_a_client_fault_with_http_500(module_daemon, body, why):
    answer = post(module_daemon.address, body)

    assert answer.status == 500, why
    assert answer.header("content-type") == "text/soap; charset=utf-8"
    assert read_soap_answer(answer.body).fault == "Client", why
    assert stored_count(module_daemon, "FAULT01") == 0


def test_soap12_sender_fault_is_http_400_and_soap12(module_daemon):
    answer = post(module_daemon.address, b"<not-soap/>", content_type="application/soap+xml")

    assert answer.status == 400
    assert answer.header("content-type").startswith("application/soap+xml")
    soap_answer = read_soap_answer(answer.body)
    assert (soap_answer.soap, soap_answer.fault) == ("1.2", "Sender")


@pytest.mark.parametrize("request_line", ["POST /nowhere HTTP/1.1", "GET /nowhere HTTP/1.1", "POST /cgi-bin HTTP/1.0"])
def test_unknown_path_is_404(module_daemon, request_line):
    body = receipt_envelope(MessageIdentifier="LOST01")
    request = f"{request_line}\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"

    answer = exchange(module_daemon.address, request.encode() + body)

    assert answer.status == 404
    assert stored_count(module_daemon, "LOST01") == 0


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/", "POST"),
    ("PUT", "/", "POST"),
    ("DELETE", "/cgi-bin/deliveryrecript.pl", "POST"),
    ("POST", "/healthz", "GET"),
])
def test_wrong_method_is_405_with_allow(module_daemon, method, path, allowed):
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    answer = exchange(module_daemon.address, request.encode())

    assert answer.status == 405
    assert allowed in [item.strip() for item in (answer.header("allow") or "").split(",")]


def test_post_without_a_length_is_411(module_daemon):
    head = b"POST / HTTP/1.0\r\nHost: x\r\nContent-Type: text/soap\r\n\r\n"

    answer = exchange(module_daemon.address, head + receipt_envelope(MessageIdentifier="NOLEN01"))

    assert answer.status == 411
    assert stored_count(module_daemon, "NOLEN01") == 0


def test_body_over_the_limit_is_413_before_it_is_sent(daemon_factory):
    """The refusal comes from the head alone: the client is told before it sends a byte of body."""
    daemon = daemon_factory("[server]\nmax_body_bytes = 2k\n")
    with connect(daemon.address) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/soap\r\nContent-Length: 2049\r\n\r\n")
        answer, _ = parse_answer(read_until_closed(sock))

    assert answer.status == 413
    # At the limit exactly, the body is read (and found not to be SOAP).
    assert post(daemon.address, b" " * 2048).status == 500
    assert_report(post(daemon.address, receipt_envelope()), "3C7D98A4")


def test_chunked_body_over_the_limit_is_413(daemon_factory):
    daemon = daemon_factory("[server]\nmax_body_bytes = 2k\n")
    chunk = b"<a>" + b" " * 997
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"

    answer = exchange(daemon.address, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)

    assert answer.status == 413


# HTTP as the provider and its retries speak it.


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_http_1_0_and_1_1_are_answered(module_daemon, version):
    answer = post(module_daemon.address, receipt_envelope(MessageIdentifier=f"V{version}"), version=version)

    assert_report(answer, f"V{version}")
    assert answer.raw.startswith(b"HTTP/1.1 200 ")
    assert answer.header("connection") == "close"


def test_keep_alive_serves_several_requests_on_one_connection(module_daemon):
    with connect(module_daemon.address) as sock:
        answers = []
        for number in range(3):
            sock.sendall(post_request(receipt_envelope(MessageIdentifier=f"KEEP{number}")))
            answers.append(read_one(sock))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        health = read_one(sock)

    for number, answer in enumerate(answers):
        assert_report(answer, f"KEEP{number}")
        assert answer.header("connection") == "keep-alive"
    assert health.status == 200
    assert sum(stored_count(module_daemon, f"KEEP{number}") for number in range(3)) == 3


def test_http_1_0_keep_alive_is_honoured_when_asked_for(module_daemon):
    with connect(module_daemon.address) as sock:
        sock.sendall(post_request(receipt_envelope(MessageIdentifier="OLD1"), version="1.0",
                                  headers="Connection: keep-alive\r\n"))
        first = read_one(sock)
        sock.sendall(post_request(receipt_envelope(MessageIdentifier="OLD2"), version="1.0"))
        second = read_one(sock)
        closed = sock.recv(1) == b""

    assert_report(first, "OLD1")
    assert first.header("connection") == "keep-alive"
    assert_report(second, "OLD2")
    assert closed, "an HTTP/1.0 request without keep-alive ends the connection"


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_close_wins_over_keep_alive_in_one_connection_header(module_daemon, version):
    """RFC 9112 §9.6: 'Connection: keep-alive, close' closes (HTTP/1.0 was kept alive)."""
    answer = exchange(module_daemon.address, post_request(receipt_envelope(MessageIdentifier=f"KC{version[2]}"),
                                                          version=version, headers="Connection: keep-alive, close\r\n"))
    assert answer.header("connection") == "close"


def test_a_crlf_after_a_kept_alive_request_is_no_request(daemon_factory):
    """Some clients send CRLF after a POST body (RFC 9112 §2.2): it held a thread and got a 408."""
    daemon = daemon_factory("[server]\nrequest_timeout = 1\nkeepalive_timeout = 2\n")
    with connect(daemon.address) as sock:
        sock.sendall(post_request(receipt_envelope(MessageIdentifier="CRLF1"), version="1.1") + b"\r\n")
        assert_report(read_one(sock), "CRLF1")
        sock.settimeout(5)
        assert sock.recv(65536) == b"", "closed at keepalive_timeout without a 408"
    assert "timed out a slow client" not in daemon.log()


def test_pipelined_requests_are_answered_in_order(module_daemon):
    requests = b"".join(post_request(receipt_envelope(MessageIdentifier=f"PIPE{number}")) for number in range(3))
    with connect(module_daemon.address) as sock:
        sock.sendall(requests)
        answers = [read_one(sock) for _ in range(3)]

    for number, answer in enumerate(answers):
        assert_report(answer, f"PIPE{number}")


def test_chunked_request_body_is_decoded(module_daemon):
    body = receipt_envelope(MessageIdentifier="CHUNK01")
    pieces = [body[start:start + 97] for start in range(0, len(body), 97)]
    chunked = b"".join(b"%X;note=x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\nX-Trailer: 1\r\n\r\n"
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/soap\r\nTransfer-Encoding: chunked\r\n\r\n"

    with connect(module_daemon.address) as sock:
        # Several writes, so the decoder must cope with a body that arrives in pieces.
        sock.sendall(head + chunked[:50])
        sock.sendall(chunked[50:401])
        sock.sendall(chunked[401:])
        answer = read_one(sock)

    assert_report(answer, "CHUNK01")
    [row] = module_daemon.rows("SELECT sent_to, report FROM receipts WHERE message_id = 'CHUNK01'")
    assert tuple(row) == ("447009123456", 0)


@pytest.mark.parametrize(("content_type", "answered_as"), [
    ("text/soap", "text/soap; charset=utf-8"),
    ("text/soap; charset=utf-8", "text/soap; charset=utf-8"),
    ("TEXT/SOAP; Charset=UTF-8", "text/soap; charset=utf-8"),
    ("text/xml", "text/xml; charset=utf-8"),
    ('text/xml; charset="utf-8"', "text/xml; charset=utf-8"),
    (None, "text/xml; charset=utf-8"),
])
def test_content_type_of_the_answer_follows_the_request(module_daemon, content_type, answered_as):
    answer = post(module_daemon.address, receipt_envelope(MessageIdentifier="CTYPE"), content_type=content_type)

    assert_report(answer, "CTYPE")
    assert answer.header("content-type") == answered_as


@pytest.mark.parametrize("content_type", ["application/soap+xml", "application/soap+xml; charset=utf-8"])
def test_soap12_is_answered_in_soap12(module_daemon, content_type):
    body = receipt_envelope(soap="1.2", MessageIdentifier="S12")

    answer = post(module_daemon.address, body, content_type=content_type)

    assert answer.status == 200
    assert answer.header("content-type").startswith("application/soap+xml")
    soap_answer = read_soap_answer(answer.body)
    assert (soap_answer.soap, soap_answer.fields["MessageIdentifier"], soap_answer.report) == ("1.2", "S12", 0)


@pytest.mark.parametrize("operation_ns", [SENDSMS2_NS, SENDSMS3_NS, SENDSMS5_NS, "urn:example:receipts", None])
def test_answer_is_in_the_namespace_of_the_request_operation(module_daemon, operation_ns):
    answer = post(module_daemon.address, receipt_envelope(operation_ns=operation_ns, MessageIdentifier="NSX"))

    assert_report(answer, "NSX")
    assert read_soap_answer(answer.body).operation_ns == operation_ns


def test_iso_8859_1_body_is_read_as_declared(module_daemon):
    body = receipt_envelope(encoding="iso-8859-1", MessageIdentifier="ÉTÉ01", Username="Jürgen")
    assert "É".encode("iso-8859-1") in body

    answer = post(module_daemon.address, body, content_type="text/xml; charset=iso-8859-1")

    assert_report(answer, "ÉTÉ01")
    assert stored_count(module_daemon, "ÉTÉ01") == 1


def test_soapaction_header_is_optional_and_ignored(module_daemon):
    answer = post(module_daemon.address, receipt_envelope(MessageIdentifier="ACTION1"),
                  extra_headers='SOAPAction: "http://www.csoft.co.uk/dtd/sendsms5#SubmitDeliveryReceipt"\r\n')

    assert_report(answer, "ACTION1")


def test_expect_100_continue_gets_an_interim_answer_before_the_body(module_daemon):
    body = receipt_envelope(MessageIdentifier="CONT01")
    with connect(module_daemon.address) as sock:
        sock.sendall(post_request(body, headers="Expect: 100-continue\r\n").split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            chunk = sock.recv(1)
            assert chunk, "closed before 100 Continue"
            interim += chunk
        sock.sendall(body)
        answer = read_one(sock)

    assert interim.startswith(b"HTTP/1.1 100 ")
    assert_report(answer, "CONT01")


def test_expect_100_continue_over_the_limit_gets_413_without_continue(module_daemon):
    with connect(module_daemon.address) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n")
        data = read_until_closed(sock)

    assert data.startswith(b"HTTP/1.1 413 ")


def test_healthz_answers_200(module_daemon):
    answer = exchange(module_daemon.address, b"GET /healthz HTTP/1.0\r\n\r\n")

    assert answer.status == 200
    assert answer.body.strip() == b"ok"


# What a run leaves in the database and the journal (SPEC section 3).


def test_receipt_row_holds_every_field_of_the_spec(daemon):
    before = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    post(daemon.address, receipt_envelope(MessageIdentifier="ROW01", SentTo="+447700900123", Report="27",
                                          Timestamp1="2024-02-29T00:30:15.123+01:00"))
    after = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    [row] = daemon.rows("SELECT * FROM receipts")
    assert isinstance(row["id"], int)
    assert RECEIVED_AT.fullmatch(row["received_at"]), row["received_at"]
    assert before <= row["received_at"] <= after
    assert (row["message_id"], row["sent_to"], row["report"]) == ("ROW01", "447700900123", 27)
    assert row["timestamp"] == "2024-02-28T23:30:15.123000Z"
    assert row["timestamp_raw"] == "2024-02-29T00:30:15.123+01:00"
    assert (row["label"], row["state"], row["final"]) == ("Expired by SMSC", "failed", 1)
    assert row["remote_addr"] == "127.0.0.1"
    assert row["tls_client"] is None


def test_latest_state_never_replaces_a_final_state_and_otherwise_takes_the_newest_timestamp(daemon):
    def send(message_id: str, report: str, timestamp: str) -> None:
        assert_report(post(daemon.address, receipt_envelope(MessageIdentifier=message_id, Report=report,
                                                            Timestamp1=timestamp)), message_id)

    # Delivered, then a late "delayed" with a newer Timestamp1: delivered stays.
    send("FINAL", "-4", "2024-01-01T10:00:00Z")
    send("FINAL", "0", "2024-01-01T10:05:00Z")
    send("FINAL", "-3", "2024-01-01T10:09:00Z")
    # Two pending states arriving newest first: the newer Timestamp1 wins, not the later arrival.
    send("PENDING", "-4", "2024-01-01T11:00:00+00:00")
    send("PENDING", "-3", "2024-01-01T10:30:00Z")
    # Two final states: the newer instant wins, not the later arrival nor the larger text
    # (12:00+02:00 is 10:00Z, before 11:30Z).
    send("TWOFINAL", "0", "2024-01-01T11:30:00Z")
    send("TWOFINAL", "27", "2024-01-01T12:00:00+02:00")
    # One receipt only.
    send("ALONE", "-4", "2024-01-01T09:00:00Z")

    latest = {row["message_id"]: (row["report"], row["state"], bool(row["final"]))
              for row in daemon.rows("SELECT * FROM latest_state")}
    assert latest == {
        "FINAL": (0, "delivered", True),
        "PENDING": (-4, "pending", False),
        "TWOFINAL": (0, "delivered", True),
        "ALONE": (-4, "pending", False),
    }


def test_journal_has_one_line_per_stored_receipt_with_exactly_the_spec_fields(daemon):
    for number in range(3):
        post(daemon.address, receipt_envelope(MessageIdentifier=f"J{number}", Report=str(-4 + number)))
    post(daemon.address, receipt_envelope(MessageIdentifier="J0", Report="-4"))  # a retry: no new line
    post(daemon.address, receipt_envelope(MessageIdentifier="JBAD", SentTo="none"))  # quarantined: no line

    lines = daemon.journal()
    rows = daemon.rows("SELECT * FROM receipts ORDER BY id")
    assert len(lines) == len(rows) == 3
    for line, row in zip(lines, rows, strict=True):
        assert set(line) == JOURNAL_FIELDS
        assert isinstance(line["final"], bool)
        assert line == {name: (bool(row[name]) if name == "final" else row[name])
                        for name in JOURNAL_FIELDS - {"node"}} | {"node": "test-node"}
    raw = (daemon.data / "receipts.jsonl").read_bytes()
    assert raw.count(b"\n") == 3 and raw.endswith(b"\n")


def test_answers_carry_no_traceback_and_the_daemon_logs_none(module_daemon):
    """A sweep of hostile bodies: each gets a SOAP answer, and nothing crashes the request path."""
    bodies = [b"", b"\x00" * 100, b"<", b"\xff\xfe<\x00a\x00/\x00>\x00", receipt_envelope()[:-30],
              receipt_envelope(Report="9999"), receipt_envelope(Timestamp1="9999-12-31T23:59:59-23:59")]
    for body in bodies:
        answer = post(module_daemon.address, body)
        assert answer.status in (200, 500), body
        assert read_soap_answer(answer.body) is not None
        assert b"Traceback" not in answer.body
    assert "Traceback" not in module_daemon.log()
    assert module_daemon.healthy()


def test_absolute_form_request_target_is_routed_by_its_path(module_daemon):
    """RFC 9112 §3.2.2: servers must accept `POST http://host/path`; only the path routes."""
    body = receipt_envelope(MessageIdentifier="ABSFORM01")
    answer = exchange(module_daemon.address,
                      post_request(body, path="http://receipts.example.com/cgi-bin/deliveryrecript.pl",
                                   version="1.0"))

    assert_report(answer, "ABSFORM01")
    assert stored_count(module_daemon, "ABSFORM01") == 1


def test_refused_upload_gets_its_answer_and_the_connection_ends_cleanly(daemon_factory):
    """A 413 sent while the client is still sending is read whole, then the server closes (lingering close)."""
    daemon = daemon_factory("[server]\nmax_body_bytes = 1k\n")
    with connect(daemon.address) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: receiver\r\nContent-Type: text/soap\r\n"
                     b"Content-Length: 200000\r\n\r\n" + b"x" * 100_000)
        answer = read_one(sock)
        assert answer.status == 413
        # The rest of the upload is drained: the client sees a clean end, not a reset.
        sock.sendall(b"y" * 100_000)
        assert sock.recv(65536) == b""
