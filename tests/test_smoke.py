"""The seed example, end to end, as the provider sends it."""

from __future__ import annotations

from lxml import etree
from wire import exchange, seed_request

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"


def test_seed_example_is_stored_and_answered_like_the_provider_expects(daemon):
    answer = exchange(daemon.address, seed_request())

    assert answer.status == 200
    assert answer.header("content-type") == "text/soap; charset=utf-8"
    root = etree.fromstring(answer.body)
    assert root.tag == f"{{{SOAP11}}}Envelope"
    response = root.find(f"{{{SOAP11}}}Body/{{http://www.itsarrived.net/dtd/sendsms3}}SubmitDeliveryReceiptResponse")
    assert response is not None
    assert response.findtext("MessageIdentifier") == "3C7D98A4"
    assert response.findtext("Report") == "0"
    assert response.find("Text") is not None

    rows = daemon.rows("SELECT * FROM receipts")
    assert [(r["message_id"], r["sent_to"], r["report"], r["timestamp"], r["state"]) for r in rows] == [
        ("3C7D98A4", "447009123456", 0, "2002-08-27T13:38:00Z", "delivered")
    ]
    assert [line["message_id"] for line in daemon.journal()] == ["3C7D98A4"]
