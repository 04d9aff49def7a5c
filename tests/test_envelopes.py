"""Every request body in tests/envelopes/, POSTed to a running daemon, against the outcome beside it.

Each `name.xml` (the body, byte for byte) has a `name.expect` (JSON) saying
what the provider must get back and what must end up stored. Adding a wire
case is adding two files; this one test reads them all. The `.expect` keys:

- about: why the case exists (shown when it fails)
- path, content_type: how to send it (defaults `/` and `text/soap`; null sends no Content-Type)
- status: the HTTP status
- soap: the SOAP version of the answer ("1.1" unless said)
- response_content_type: the start of the answer's Content-Type
- report, message_id, response_ns, text_contains: the SubmitDeliveryReceiptResponse
- fault: the fault code's local name (Client, or Sender for SOAP 1.2)
- stored: the receipts row this body must create (and its journal line)
- quarantined: whether a quarantine row is created
- never_echoed: text that must appear nowhere: not in the answer, the database, the journal or the log
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from provider import read_soap_answer
from wire import post

ENVELOPES = Path(__file__).resolve().parent / "envelopes"
# SPEC 1: the answer's Content-Type follows the request's media type.
DEFAULT_RESPONSE_TYPES = {"text/soap": "text/soap; charset=utf-8", "application/soap+xml": "application/soap+xml"}
PIN_CONTENT = re.compile(rb"(<PIN\b[^>]*>)(.*?)(</PIN>)", re.DOTALL)


def envelope_names() -> list[str]:
    return sorted(path.stem for path in ENVELOPES.glob("*.expect"))


def test_every_envelope_has_an_expectation_and_the_other_way_round():
    """A body without an .expect (or the reverse) would silently not be tested."""
    bodies = {path.stem for path in ENVELOPES.iterdir() if path.suffix != ".expect"}
    assert bodies == set(envelope_names())
    assert len(bodies) >= 30


def everything_stored(daemon) -> str:
    """All the daemon keeps: every table's text, the journal and the log, for 'never stored' checks."""
    parts = [daemon.log()]
    for table in ("receipts", "quarantine"):
        for row in daemon.rows(f"SELECT * FROM {table}"):
            parts += [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                      for value in tuple(row)]
    journal = daemon.data / "receipts.jsonl"
    if journal.exists():
        parts.append(journal.read_text("utf-8", "replace"))
    return "\n".join(parts)


@pytest.mark.parametrize("name", envelope_names())
def test_envelope(module_daemon, name):
    daemon = module_daemon
    body = (ENVELOPES / f"{name}.xml").read_bytes()
    expect = json.loads((ENVELOPES / f"{name}.expect").read_text("utf-8"))
    content_type = expect.get("content_type", "text/soap")
    receipts_before = daemon.rows("SELECT count(*) FROM receipts")[0][0]
    journal_before = len(daemon.journal())
    last_quarantine = daemon.rows("SELECT coalesce(max(id), 0) FROM quarantine")[0][0]

    answer = post(daemon.address, body, path=expect.get("path", "/"), content_type=content_type)

    why = f"{name}: {expect['about']}"
    assert answer.status == expect["status"], f"{why}\n{answer.body!r}"
    assert b"Traceback" not in answer.body
    media_type = (content_type or "").split(";")[0].strip()
    wanted_type = expect.get("response_content_type") or DEFAULT_RESPONSE_TYPES.get(
        media_type, "text/xml; charset=utf-8")
    assert (answer.header("content-type") or "").startswith(wanted_type), why
    soap_answer = read_soap_answer(answer.body)
    assert soap_answer.soap == expect.get("soap", "1.1"), why
    if "fault" in expect:
        assert soap_answer.fault == expect["fault"], why
    else:
        assert soap_answer.fault is None, why
        assert soap_answer.operation_ns == expect["response_ns"], why
        assert soap_answer.fields["MessageIdentifier"] == expect["message_id"], why
        assert soap_answer.report == expect["report"], why
        text = soap_answer.fields["Text"]
        assert text is not None, why
        assert expect.get("text_contains", "") in text, why

    receipts_added = daemon.rows("SELECT count(*) FROM receipts")[0][0] - receipts_before
    journal_added = daemon.journal()[journal_before:]
    stored = expect.get("stored")
    if stored is None:
        assert receipts_added == 0, why
        assert journal_added == [], why
    else:
        assert receipts_added == 1, why
        rows = daemon.rows("SELECT * FROM receipts WHERE message_id = ?", stored["message_id"])
        assert len(rows) == 1, why
        assert {key: rows[0][key] for key in stored} == stored, why
        assert [line["message_id"] for line in journal_added] == [stored["message_id"]], why
        assert journal_added[0]["id"] == rows[0]["id"]

    quarantined = daemon.rows("SELECT * FROM quarantine WHERE id > ?", last_quarantine)
    if expect.get("quarantined"):
        assert len(quarantined) == 1, why
        row = quarantined[0]
        assert row["reason"] == text, "the quarantine reason is the Text the provider was told"
        assert row["remote_addr"] == "127.0.0.1"
        assert b"BLUE.music" not in row["body"], "the PIN must not be kept in the quarantine"
        for pin in PIN_CONTENT.findall(body):
            if pin[1].strip():
                assert pin[1].strip() not in row["body"], why
        # Apart from the PIN, the body is kept exactly, so it can be replayed.
        assert PIN_CONTENT.sub(rb"\1\3", row["body"]) == PIN_CONTENT.sub(rb"\1\3", body), why
    elif stored is not None:
        assert quarantined == [], why

    for secret in expect.get("never_echoed", []):
        assert secret.encode() not in answer.body, why
        assert secret not in everything_stored(daemon), why
