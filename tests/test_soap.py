"""dlrd.soap without a server: envelopes in, fields out; responses and faults out, and the PIN kept out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree
from provider import SENDSMS2_NS, SENDSMS3_NS, SOAP11_NS, SOAP12_NS, read_soap_answer, receipt_envelope
from wire import SEED_PATH

from dlrd.soap import (
    REDACTED_PIN,
    Envelope,
    EnvelopeRejected,
    build_fault,
    build_response,
    parse_envelope,
    parse_response,
    redact_pin,
    version_from_content_type,
)

ENVELOPES = Path(__file__).resolve().parent / "envelopes"
SEED = (ENVELOPES / "seed.xml").read_bytes()
XSI_1999 = "{http://www.w3.org/1999/XMLSchema-instance}type"
SEED_FIELDS = {"Username": "ANOther.61234", "PIN": "BLUE.music", "Timestamp1": "2002-08-27T13:38:00Z",
               "SentTo": "447009123456", "MessageIdentifier": "3C7D98A4", "Report": "0"}


def charset_of(content_type: str | None) -> str | None:
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().lower()
    return None


# parse_envelope


def test_seed_parses_to_its_six_fields_in_the_sendsms3_namespace():
    envelope = parse_envelope(SEED)

    assert envelope == Envelope("1.1", SENDSMS3_NS, SEED_FIELDS, ())


@pytest.mark.parametrize("name", sorted(path.stem for path in ENVELOPES.glob("*.expect")))
def test_wire_fixture_is_understood_or_rejected_by_the_parser_alone(name):
    """The same fixtures as test_envelopes, one layer down: faults come from parse_envelope, nothing else."""
    expect = json.loads((ENVELOPES / f"{name}.expect").read_text("utf-8"))
    body = (ENVELOPES / f"{name}.xml").read_bytes()
    content_type = expect.get("content_type", "text/soap")
    hint = version_from_content_type((content_type or "").split(";")[0].strip())

    if "fault" in expect:
        with pytest.raises(EnvelopeRejected) as rejected:
            parse_envelope(body, charset_of(content_type), hint)
        assert rejected.value.soap_version == expect.get("soap", "1.1")
        for secret in expect.get("never_echoed", []):
            assert secret not in rejected.value.reason
    else:
        envelope = parse_envelope(body, charset_of(content_type), hint)
        assert envelope.soap_version == expect.get("soap", "1.1")
        assert envelope.operation_ns == expect["response_ns"]
        assert envelope.fields.get("MessageIdentifier") == expect["message_id"]


def test_soap12_envelope_is_version_1_2_even_when_posted_as_text_xml():
    envelope = parse_envelope(receipt_envelope(soap="1.2"), None, "1.1")

    assert envelope.soap_version == "1.2"
    assert envelope.fields == SEED_FIELDS


def test_a_rejected_soap12_envelope_says_so_for_the_fault():
    body = receipt_envelope(soap="1.2").replace(b"SubmitDeliveryReceipt", b"SubmitMessage")

    with pytest.raises(EnvelopeRejected) as rejected:
        parse_envelope(body)

    assert rejected.value.soap_version == "1.2"


@pytest.mark.parametrize("doctype", [
    b'<!DOCTYPE SOAP-ENV:Envelope>',
    b'<!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd">',
    b'<!DOCTYPE x PUBLIC "-//x//EN" "file:///etc/passwd">',
    b'<!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>',
    b'<!DOCTYPE x [<!ENTITY e "ok">]>',
])
def test_any_dtd_is_rejected(doctype):
    body = b'<?xml version="1.0"?>\n' + doctype + b"\n" + SEED.split(b"\n", 1)[1]

    with pytest.raises(EnvelopeRejected, match="DTD"):
        parse_envelope(body)


def test_undeclared_entity_reference_is_not_well_formed():
    with pytest.raises(EnvelopeRejected, match="not well-formed"):
        parse_envelope(SEED.replace(b"3C7D98A4", b"&xxe;"))


@pytest.mark.parametrize("charset", ["iso-8859-1", "ISO-8859-1", "latin1", "latin-1", "iso8859-1"])
def test_iso_8859_1_named_by_the_header_charset(charset):
    """Without a declaration the HTTP charset decides; 'latin-1' is Python's name, unknown to libxml2."""
    body = receipt_envelope(encoding="iso-8859-1", MessageIdentifier="CAFÉ").split(b"\n", 1)[1]

    assert parse_envelope(body, charset).fields["MessageIdentifier"] == "CAFÉ"


@pytest.mark.parametrize("declared", ["ISO-8859-1", "iso-8859-1", "latin1", "latin-1"])
def test_iso_8859_1_named_by_the_declaration_wins_over_the_header(declared):
    body = receipt_envelope(encoding="iso-8859-1", MessageIdentifier="CAFÉ").replace(
        b'encoding="ISO-8859-1"', f'encoding="{declared}"'.encode())

    assert parse_envelope(body, "utf-8").fields["MessageIdentifier"] == "CAFÉ"


def test_utf8_byte_order_mark_means_utf8_whatever_the_header_says():
    body = b"\xef\xbb\xbf" + receipt_envelope(MessageIdentifier="CAFÉ").split(b"\n", 1)[1]

    assert parse_envelope(body, "iso-8859-1").fields["MessageIdentifier"] == "CAFÉ"


@pytest.mark.parametrize(("body", "charset"), [
    (receipt_envelope(encoding="utf-16"), None),
    (receipt_envelope().split(b"\n", 1)[1].decode().encode("utf-16-le"), "utf-16le"),
    (receipt_envelope().split(b"\n", 1)[1], "bogus-8"),
    (receipt_envelope().replace(b'encoding="UTF-8"', b'encoding="EBCDIC-US"'), None),
])
def test_other_encodings_are_refused(body, charset):
    with pytest.raises(EnvelopeRejected, match="UTF-8 or ISO-8859-1"):
        parse_envelope(body, charset)


def test_values_are_whole_despite_comments_and_cdata_inside_them():
    """libxml2 splits such text into nodes; reading only the first would store a truncated number."""
    body = SEED.replace(b"447009123456", b"4470<!-- x -->0912<![CDATA[3456]]>")

    assert parse_envelope(body).fields["SentTo"] == "447009123456"


def test_field_holding_elements_is_rejected():
    with pytest.raises(EnvelopeRejected, match="SentTo"):
        parse_envelope(SEED.replace(b"447009123456", b"<number>447009123456</number>"))


def test_unknown_children_are_ignored_and_duplicates_are_reported():
    body = SEED.replace(b"<Report", b"<Network>Vodafone</Network><Report xsi:type=\"xsd:int\">27</Report><Report")

    envelope = parse_envelope(body)

    assert "Network" not in envelope.fields
    assert envelope.fields["Report"] == "27"
    assert envelope.duplicates == ("Report",)


def test_empty_and_self_closed_fields_are_empty_text():
    body = SEED.replace(b'<Username xsi:type="xsd:string">ANOther.61234</Username>', b"<Username/>")
    body = body.replace(b"BLUE.music", b"   ")

    envelope = parse_envelope(body)

    assert (envelope.fields["Username"], envelope.fields["PIN"]) == ("", "")


def test_soap_header_is_allowed_beside_the_body():
    body = SEED.replace(b"<SOAP-ENV:Body", b"<SOAP-ENV:Header><x:Trace xmlns:x=\"urn:x\">1</x:Trace>"
                                           b"</SOAP-ENV:Header>\n<SOAP-ENV:Body", 1)

    assert parse_envelope(body).fields == SEED_FIELDS


@pytest.mark.parametrize(("body", "reason"), [
    (SEED.replace(b"SOAP-ENV:Body", b"SOAP-ENV:Corpse"), "Body"),
    (SEED.replace(b"</SOAP-ENV:Body>", b"</SOAP-ENV:Body><SOAP-ENV:Body/>"), "Body"),
    (SEED.replace(b"</ns2:SubmitDeliveryReceipt>", b"</ns2:SubmitDeliveryReceipt><x/>"), "exactly one"),
    (SEED.replace(b"http://schemas.xmlsoap.org/soap/envelope/", b"urn:not-soap"), "not a SOAP envelope"),
    (b"<Envelope/>", "not a SOAP envelope"),
    (b"", "not well-formed"),
])
def test_not_one_receipt_in_one_soap_body_is_rejected(body, reason):
    with pytest.raises(EnvelopeRejected, match=reason):
        parse_envelope(body)


@pytest.mark.parametrize(("media_type", "version"), [
    ("application/soap+xml", "1.2"), ("text/soap", "1.1"), ("text/xml", "1.1"), ("", "1.1")])
def test_version_from_content_type(media_type, version):
    assert version_from_content_type(media_type) == version


# build_response


def test_response_to_the_seed_is_shaped_like_the_providers_example():
    response = build_response(parse_envelope(SEED), "3C7D98A4", 0, "stored")

    root = etree.fromstring(response)
    assert response.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    assert root.tag == f"{{{SOAP11_NS}}}Envelope"
    [operation] = root.find(f"{{{SOAP11_NS}}}Body")
    assert operation.tag == f"{{{SENDSMS3_NS}}}SubmitDeliveryReceiptResponse"
    assert [(child.tag, child.get(XSI_1999), child.text) for child in operation] == [
        ("MessageIdentifier", "xsd:string", "3C7D98A4"),
        ("Report", "xsd:int", "0"),
        ("Text", "xsd:string", "stored"),
    ]


@pytest.mark.skipif(not SEED_PATH.exists(), reason="the provider's page is not beside this checkout")
def test_response_has_the_element_structure_of_the_pages_example_response():
    page = SEED_PATH.read_bytes()
    example = page[page.index(b"<?xml", page.index(b"Example HTTP Response")):]
    example = example[:example.index(b"</SOAP-ENV:Envelope>") + len(b"</SOAP-ENV:Envelope>")]

    def shape(document: bytes) -> list[tuple[str, dict[str, str]]]:
        return [(element.tag, dict(element.attrib)) for element in etree.fromstring(document).iter()]

    assert shape(build_response(parse_envelope(SEED), "3C7D98A4", 0, "")) == shape(example)


@pytest.mark.parametrize(("soap", "operation_ns"), [("1.1", SENDSMS2_NS), ("1.1", None), ("1.2", SENDSMS3_NS),
                                                    ("1.2", None)])
def test_response_is_in_the_request_version_and_namespace(soap, operation_ns):
    envelope = parse_envelope(receipt_envelope(soap=soap, operation_ns=operation_ns))

    answer = read_soap_answer(build_response(envelope, "3C7D98A4", -1, "why"))

    assert (answer.soap, answer.operation_ns, answer.fields["Report"], answer.fields["Text"]) == (
        soap, operation_ns, "-1", "why")
    root = etree.fromstring(build_response(envelope, "x", 0, ""))
    assert root.tag == f"{{{SOAP12_NS if soap == '1.2' else SOAP11_NS}}}Envelope"


@pytest.mark.parametrize("message_id", ["<&>\"'", "a\rb", "tab\there", "ÉÀ€😀", "]]>"])
def test_echoed_message_identifier_survives_the_round_trip(message_id):
    response = build_response(parse_envelope(SEED), message_id, -1, message_id)

    parsed = parse_response(response)
    assert (parsed.message_id, parsed.text) == (message_id, message_id)


def test_characters_xml_cannot_carry_do_not_break_the_response():
    response = build_response(parse_envelope(SEED), "a\x00b\x1bc\ufffed", -1, "\x07")

    parsed = parse_response(response)
    assert parsed.message_id == "a\ufffdb\ufffdc\ufffdd"
    assert parsed.report == -1


def test_text_is_cut_at_255_characters():
    parsed = parse_response(build_response(parse_envelope(SEED), "x", -1, "é" * 300))

    assert parsed.text == "é" * 255


# build_fault


@pytest.mark.parametrize(("version", "sender_at_fault", "code"), [
    ("1.1", True, "Client"), ("1.1", False, "Server"), ("1.2", True, "Sender"), ("1.2", False, "Receiver")])
def test_fault_codes_are_the_soap_ones(version, sender_at_fault, code):
    fault = build_fault(version, sender_at_fault, "a <reason> & more")

    assert read_soap_answer(fault).fault == code
    parsed = parse_response(fault)
    assert parsed.fault_code.endswith(code)
    assert parsed.fault_reason == "a <reason> & more"


def test_fault_reason_with_any_character_is_still_xml():
    assert parse_response(build_fault("1.1", True, "bad byte \x00 and \udc80")).fault_reason is not None


# redact_pin


def test_redact_pin_removes_the_seed_pin_and_changes_nothing_else():
    redacted = redact_pin(SEED, "BLUE.music")

    assert b"BLUE.music" not in redacted
    assert redacted == SEED.replace(b">BLUE.music<", b">" + REDACTED_PIN.encode() + b"<")


@pytest.mark.parametrize("element", [
    b"<PIN>BLUE.music</PIN>",
    b'<ns2:PIN xsi:type="xsd:string">BLUE.music</ns2:PIN>',
    "<ñs:PIN xmlns:ñs='urn:x'>BLUE.music</ñs:PIN>".encode(),
    b"<PIN>\n  BLUE.music\n</PIN >",
    b"<PIN><![CDATA[BLUE.music]]></PIN>",
])
def test_redact_pin_finds_the_pin_element_however_it_is_written(element):
    """No parsed PIN is passed here: the element alone must be found (as for a refused duplicate PIN)."""
    body = b"<a>" + element + b"<Username>u</Username></a>"

    redacted = redact_pin(body)

    assert b"BLUE.music" not in redacted
    assert b"<Username>u</Username>" in redacted


def test_redact_pin_removes_the_pin_written_as_character_references():
    body = "<ñs:PIN xmlns:ñs='urn:x'>&#66;LUE.music</ñs:PIN>".encode()

    assert b"LUE.music" not in redact_pin(body, "BLUE.music")


def test_redact_pin_removes_every_pin_element_and_the_pin_elsewhere():
    body = b"<a><PIN>one</PIN><PIN>two</PIN><SentTo>two</SentTo></a>"

    assert redact_pin(body, "two") == b"<a><PIN>[redacted]</PIN><PIN>[redacted]</PIN><SentTo>[redacted]</SentTo></a>"


def test_redact_pin_removes_a_latin1_pin_in_a_latin1_body():
    body = "<a><PIN>BLÜE</PIN><Username>BLÜE</Username></a>".encode("iso-8859-1")

    assert redact_pin(body, "BLÜE", "iso-8859-1") == b"<a><PIN>[redacted]</PIN><Username>[redacted]</Username></a>"


def test_redact_pin_leaves_similar_elements_alone():
    body = b"<a><PINCODE>1234</PINCODE><PIN/></a>"

    assert redact_pin(body) == body


# parse_response (send-test's reading of an answer)


@pytest.mark.skipif(not SEED_PATH.exists(), reason="the provider's page is not beside this checkout")
def test_parse_response_reads_the_pages_example_response():
    page = SEED_PATH.read_bytes()
    example = page[page.index(b"<?xml", page.index(b"Example HTTP Response")):]

    parsed = parse_response(example[:example.index(b"</SOAP-ENV:Envelope>") + len(b"</SOAP-ENV:Envelope>")])

    assert (parsed.message_id, parsed.report, parsed.text, parsed.fault_code) == ("3C7D98A4", 0, "", None)


@pytest.mark.parametrize("body", [b"", b"not xml", b'<?xml version="1.0" encoding="bogus"?><a/>',
                                  b'<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>'])
def test_parse_response_refuses_what_is_not_an_answer(body):
    with pytest.raises(EnvelopeRejected):
        parse_response(body)


@pytest.mark.parametrize("body", [b"<a>" * 300, b"<a>" + b"x" * 11_000_000 + b"</a>"])
def test_refusal_reason_is_one_line_without_library_advice(body):
    """libxml2 suggests 'use XML_PARSE_HUGE option': a library switch the sender has no use for."""
    with pytest.raises(EnvelopeRejected) as rejected:
        parse_envelope(body)

    assert "XML_PARSE" not in rejected.value.reason
    assert "\n" not in rejected.value.reason
    assert len(rejected.value.reason) < 160
