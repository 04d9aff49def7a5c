"""`dlrd send-test`: the operator's way to check a deployment, and proof it speaks the seed's format."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from wire import SEED_PATH

from dlrd.sendtest import build_envelope

ENVELOPES = Path(__file__).resolve().parent / "envelopes"
SEED_VALUES = {"message_id": "3C7D98A4", "sent_to": "447009123456", "report": "0",
               "timestamp": "2002-08-27T13:38:00Z", "username": "ANOther.61234", "pin": "BLUE.music"}


def send_test(url: str, *options: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "DLRD_CONFIG"}
    return subprocess.run([sys.executable, "-m", "dlrd", "send-test", url, *options], env=env,
                          capture_output=True, text=True, timeout=30)


def test_send_test_posts_a_receipt_that_is_stored_and_exits_0(daemon):
    result = send_test(daemon.url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP 200" in result.stdout
    assert "Report: 0" in result.stdout
    [row] = daemon.rows("SELECT * FROM receipts")
    assert (row["sent_to"], row["report"], row["state"]) == ("447009123456", 0, "delivered")
    assert f"MessageIdentifier: {row['message_id']}" in result.stdout


def test_send_test_uses_a_new_message_identifier_each_time(daemon):
    first, second = send_test(daemon.url), send_test(daemon.url)

    assert first.returncode == second.returncode == 0
    ids = [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")]
    assert len(set(ids)) == 2
    assert all(0 < len(message_id) <= 15 for message_id in ids)


def test_send_test_options_set_every_field(daemon):
    """A stored receipt of any code is answered Report 0, so a pending -4 still exits 0."""
    result = send_test(daemon.urls[0] + "/cgi-bin/deliveryrecript.pl", "--message-id", "OPT01",
                       "--sent-to", "447700900123", "--report", "-4", "--timestamp", "2024-05-01T12:00:00+02:00")

    assert result.returncode == 0, result.stdout + result.stderr
    [row] = daemon.rows("SELECT * FROM receipts")
    assert (row["message_id"], row["sent_to"], row["report"], row["state"]) == ("OPT01", "447700900123", -4, "pending")
    assert (row["timestamp"], row["timestamp_raw"]) == ("2024-05-01T10:00:00Z", "2024-05-01T12:00:00+02:00")


def test_send_test_exits_4_when_the_answer_is_report_minus_1(daemon):
    result = send_test(daemon.url, "--sent-to", "abc")

    assert result.returncode == 4
    assert "Report: -1" in result.stdout
    assert "SentTo" in result.stdout
    assert daemon.rows("SELECT count(*) FROM quarantine")[0][0] == 1


def test_send_test_exits_4_when_the_answer_is_not_a_receipt_response(daemon):
    """A URL pointing at the wrong path answers HTTP, but not 200 with Report 0."""
    result = send_test(daemon.urls[0] + "/healthz")

    assert result.returncode == 4
    assert "HTTP 405" in result.stdout


def test_send_test_exits_5_when_nothing_listens():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port was free a moment ago and nothing listens on it now.

    result = send_test(f"http://127.0.0.1:{port}/")

    assert result.returncode == 5
    assert result.stderr.startswith("dlrd: ") and len(result.stderr.strip().splitlines()) == 1


def test_send_test_exits_5_when_the_answer_is_not_http():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer_garbage() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        result = send_test(f"http://127.0.0.1:{listener.getsockname()[1]}/")
        thread.join(10)

    assert result.returncode == 5


def test_build_envelope_with_the_seed_values_is_the_seed_byte_for_byte():
    assert build_envelope(**SEED_VALUES) == (ENVELOPES / "seed.xml").read_bytes()


def test_build_envelope_escapes_values_so_the_envelope_stays_xml():
    from dlrd.soap import parse_envelope

    envelope = parse_envelope(build_envelope(**{**SEED_VALUES, "message_id": "<&>", "pin": "a]]>b"}))

    assert envelope.fields["MessageIdentifier"] == "<&>"
    assert envelope.fields["PIN"] == "a]]>b"


@pytest.mark.skipif(not SEED_PATH.exists(), reason="the provider's page is not beside this checkout")
def test_seed_xml_is_the_body_of_the_example_post_on_the_providers_page():
    page = SEED_PATH.read_bytes()
    post_example = page[page.index(b"Example HTTP POST"):page.index(b"Example HTTP Response")]
    start = post_example.index(b"<?xml")
    end = post_example.index(b"</SOAP-ENV:Envelope>\n") + len(b"</SOAP-ENV:Envelope>\n")

    assert (ENVELOPES / "seed.xml").read_bytes() == post_example[start:end]
    # The page's Content-Length (909) is wrong for this 905-byte body: an artefact of the web page.
    assert len(post_example[start:end]) == 905
    assert b"Content-Length: 909" in post_example
