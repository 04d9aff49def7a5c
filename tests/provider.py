"""What the provider sends, built in the tests independently of dlrd's own send-test code.

The envelope follows the seed's shape; the namespace of the operation, the
SOAP version and every field value can be changed, so a test says only
what differs from the provider's example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from lxml import etree

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
SENDSMS2_NS = "http://www.itsarrived.net/dtd/sendsms2"
SENDSMS3_NS = "http://www.itsarrived.net/dtd/sendsms3"
SENDSMS5_NS = "http://www.csoft.co.uk/dtd/sendsms5"
SEED_PIN = "BLUE.music"
SEED_FIELDS = {
    "Username": "ANOther.61234",
    "PIN": SEED_PIN,
    "Timestamp1": "2002-08-27T13:38:00Z",
    "SentTo": "447009123456",
    "MessageIdentifier": "3C7D98A4",
    "Report": "0",
}


def receipt_envelope(soap: str = "1.1", operation_ns: str | None = SENDSMS3_NS, encoding: str = "utf-8",
                     **fields: str | None) -> bytes:
    """A SubmitDeliveryReceipt envelope; a field given as None is left out."""
    values = {**SEED_FIELDS, **fields}
    envelope_ns = SOAP12_NS if soap == "1.2" else SOAP11_NS
    namespace = f' xmlns:ns2="{operation_ns}"' if operation_ns else ""
    operation = "ns2:SubmitDeliveryReceipt" if operation_ns else "SubmitDeliveryReceipt"
    children = "".join(f"<{name}>{escape(value)}</{name}>\n" for name, value in values.items() if value is not None)
    return (
        f'<?xml version="1.0" encoding="{encoding.upper()}"?>\n'
        f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{envelope_ns}"{namespace}>\n<SOAP-ENV:Body>\n'
        f"<{operation}>\n{children}</{operation}>\n</SOAP-ENV:Body>\n</SOAP-ENV:Envelope>\n"
    ).encode(encoding)


@dataclass
class SoapAnswer:
    """What a receiver answered, read the way a SOAP toolkit would (prefixes resolved)."""

    soap: str
    operation_ns: str | None = None
    fields: dict[str, str | None] = field(default_factory=dict)
    fault: str | None = None

    @property
    def report(self) -> int:
        return int(self.fields["Report"] or "")


_SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def read_soap_answer(body: bytes) -> SoapAnswer:
    """Parse a SubmitDeliveryReceiptResponse or a Fault; fail the test if it is neither."""
    assert b"<!DOCTYPE" not in body
    root = etree.fromstring(body, _SAFE_PARSER)
    soap = {SOAP11_NS: "1.1", SOAP12_NS: "1.2"}.get(etree.QName(root).namespace or "")
    assert soap is not None and etree.QName(root).localname == "Envelope", body
    envelope_ns = etree.QName(root).namespace
    answer_body = root.find(f"{{{envelope_ns}}}Body")
    assert answer_body is not None and len(answer_body) == 1, body
    element = answer_body[0]
    name = etree.QName(element)
    if name.namespace == envelope_ns and name.localname == "Fault":
        code = element.find("faultcode")
        if code is None:
            code = element.find(f"{{{envelope_ns}}}Code/{{{envelope_ns}}}Value")
        assert code is not None and code.text, body
        prefix, _, local = code.text.strip().rpartition(":")
        assert code.nsmap.get(prefix or None) == envelope_ns, f"the fault code is not a SOAP one: {body!r}"
        return SoapAnswer(soap, fault=local)
    assert name.localname == "SubmitDeliveryReceiptResponse", body
    return SoapAnswer(soap, name.namespace, {etree.QName(child).localname: child.text for child in element})
