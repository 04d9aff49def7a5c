"""Hypothesis over the parser: whatever arrives, a receipt or a refusal comes out, never a crash.

And the liberal half of SPEC section 1 as a property: any namespace, any
prefix, any order, any surrounding whitespace, SOAP 1.1 or 1.2, UTF-8 or
ISO-8859-1, the same receipt comes out of it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from provider import SENDSMS2_NS, SENDSMS3_NS, SENDSMS5_NS, SOAP11_NS, SOAP12_NS, read_soap_answer
from wire import post

from dlrd.receipt import format_utc, validate_fields
from dlrd.soap import Envelope, EnvelopeRejected, build_fault, build_response, parse_envelope, parse_response

SEED = (Path(__file__).resolve().parent / "envelopes" / "seed.xml").read_bytes()
FIELD_NAMES = ("Username", "PIN", "Timestamp1", "SentTo", "MessageIdentifier", "Report")

# Characters an XML 1.0 document can hold (§2.2).
xml_characters = st.characters(
    codec="utf-8", exclude_categories=("Cs",), exclude_characters="\ufffe\uffff"
).filter(lambda char: char in "\t\n\r" or ord(char) >= 0x20)
# Written literally into a document, a carriage return is read as a line feed.
literal_characters = xml_characters.filter(lambda char: char != "\r")


@st.composite
def mutated_seeds(draw) -> bytes:
    """The seed with a few slices replaced by random bytes: deep enough to reach every branch."""
    body = bytearray(SEED)
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(body)))
        end = draw(st.integers(start, min(len(body), start + 40)))
        body[start:end] = draw(st.binary(max_size=40))
    return bytes(body)


any_body = st.one_of(st.binary(max_size=2000), mutated_seeds())
any_charset = st.sampled_from([None, "utf-8", "iso-8859-1", "latin-1", "utf-16", "bogus", ""])


@settings(max_examples=400, deadline=None)
@given(body=any_body, charset=any_charset, hint=st.sampled_from(["1.1", "1.2"]))
def test_any_bytes_give_an_envelope_or_a_refusal_and_the_refusal_makes_a_fault(body, charset, hint):
    try:
        envelope = parse_envelope(body, charset, hint)
    except EnvelopeRejected as rejected:
        assert rejected.reason
        fault = parse_response(build_fault(rejected.soap_version, True, rejected.reason))
        assert fault.fault_code is not None
        return
    assert isinstance(envelope, Envelope)
    # An understood envelope always gets an answer that reads back, whatever it held.
    response = parse_response(build_response(envelope, envelope.fields.get("MessageIdentifier", ""), -1, "x"))
    assert response.report == -1


# Generated valid envelopes.

name_start = "abcdefghijklmnopqrstuvwyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
prefixes = st.from_regex(rf"[{name_start}][{name_start}0-9.-]{{0,6}}", fullmatch=True).filter(
    lambda prefix: not prefix.lower().startswith("xml"))
operation_namespaces = st.one_of(
    st.sampled_from([SENDSMS2_NS, SENDSMS3_NS, SENDSMS5_NS, "http://www.itsarrived.net/dtd/sendsms"]),
    # libxml2 refuses a namespace name that is not a URI, so only URIs can ever be echoed.
    st.from_regex(r"urn:[a-z][a-z0-9-]{0,8}:[A-Za-z0-9()+,.:=@;$_!*'/-]{1,20}", fullmatch=True),
    st.from_regex(r"https?://[a-z0-9.-]{1,15}(:[0-9]{1,5})?(/[A-Za-z0-9._~&;=-]{0,10}){0,3}", fullmatch=True),
)
blanks = st.text(" \t\n", max_size=3)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda minutes: timedelta(minutes=minutes))
instants = st.datetimes(datetime(1970, 1, 2), datetime(9999, 12, 30)).map(lambda moment: moment.replace(tzinfo=UTC))


def timestamp_text(instant: datetime, offset: timedelta, fraction_digits: int, zulu: bool) -> str:
    """An instant written the way some sender might: any offset, 0 to 6 fraction digits."""
    local = instant.astimezone(timezone(offset))
    text = local.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")
    if fraction_digits:
        text += "." + f"{local.microsecond:06d}"[:fraction_digits]
    if zulu and not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    return text + f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@st.composite
def receipt_values(draw) -> tuple[dict[str, str], datetime]:
    instant = draw(instants).replace(microsecond=draw(st.sampled_from([0, 500000, 123456])))
    fraction_digits = draw(st.integers(0, 6))
    instant = instant.replace(microsecond=int(f"{instant.microsecond:06d}"[:fraction_digits].ljust(6, "0")))
    identifier = st.text(literal_characters.filter(str.isprintable), min_size=1, max_size=15).filter(
        lambda text: text.strip() == text)
    values = {
        "Username": draw(st.text(literal_characters, max_size=20).map(str.strip)),
        "PIN": draw(st.text(literal_characters, max_size=20).map(str.strip)),
        "Timestamp1": timestamp_text(instant, draw(offsets), fraction_digits, draw(st.booleans())),
        "SentTo": draw(st.sampled_from(["", "+"])) + draw(st.from_regex(r"[0-9]{1,15}", fullmatch=True)),
        "MessageIdentifier": draw(identifier),
        "Report": str(draw(st.integers(-999, 999))),
    }
    return values, instant


@st.composite
def envelopes(draw) -> tuple[bytes, str, str | None, dict[str, str], datetime]:
    """A SubmitDeliveryReceipt written any way the SPEC accepts, with the fields it must yield."""
    values, instant = draw(receipt_values())
    soap = draw(st.sampled_from(["1.1", "1.2"]))
    soap_ns = SOAP12_NS if soap == "1.2" else SOAP11_NS
    operation_ns = draw(st.one_of(st.none(), operation_namespaces))
    env_prefix = draw(st.one_of(st.none(), prefixes))
    op_prefix = draw(prefixes.filter(lambda prefix: prefix != env_prefix))
    encoding = draw(st.sampled_from(["utf-8", "iso-8859-1"]))
    with_declaration = encoding != "utf-8" or draw(st.booleans())
    with_xsi = draw(st.booleans())

    def tag(prefix: str | None, name: str) -> str:
        return f"{prefix}:{name}" if prefix else name

    env_decl = f" xmlns:{env_prefix}={quoteattr(soap_ns)}" if env_prefix else f" xmlns={quoteattr(soap_ns)}"
    xsi_decl = (' xmlns:xsi="http://www.w3.org/1999/XMLSchema-instance"'
                ' xmlns:xsd="http://www.w3.org/1999/XMLSchema"') if with_xsi else ""
    if operation_ns is None:
        operation, op_decl = "SubmitDeliveryReceipt", ' xmlns=""' if not env_prefix else ""
        child_style = "plain"
    elif draw(st.booleans()):
        operation, op_decl = tag(op_prefix, "SubmitDeliveryReceipt"), f" xmlns:{op_prefix}={quoteattr(operation_ns)}"
        child_style = draw(st.sampled_from(["plain", "prefixed"]))
        if child_style == "plain" and not env_prefix:
            op_decl += ' xmlns=""'
    else:
        operation, op_decl = "SubmitDeliveryReceipt", f" xmlns={quoteattr(operation_ns)}"
        child_style = "default"

    children = []
    for name in draw(st.permutations(FIELD_NAMES)):
        child = tag(op_prefix, name) if child_style == "prefixed" else name
        xsi = ' xsi:type="xsd:string"' if with_xsi else ""
        value = draw(blanks) + escape(values[name]) + draw(blanks)
        children.append(f"{draw(blanks)}<{child}{xsi}>{value}</{child}>")
    document = (
        (f'<?xml version="1.0" encoding="{encoding.upper()}"?>\n' if with_declaration else "")
        + f"<{tag(env_prefix, 'Envelope')}{env_decl}{xsi_decl}>{draw(blanks)}<{tag(env_prefix, 'Body')}>"
        + f"<{operation}{op_decl}>" + "".join(children) + f"{draw(blanks)}</{operation}>"
        + f"</{tag(env_prefix, 'Body')}></{tag(env_prefix, 'Envelope')}>"
    )
    body = document.encode(encoding, "xmlcharrefreplace")
    expected_ns = operation_ns
    return body, soap, expected_ns, values, instant


@settings(max_examples=200, deadline=None)
@given(generated=envelopes())
def test_any_accepted_spelling_of_a_receipt_yields_the_same_fields(generated):
    body, soap, operation_ns, values, instant = generated

    envelope = parse_envelope(body)

    assert envelope.soap_version == soap
    assert envelope.operation_ns == operation_ns
    assert envelope.fields == values
    assert envelope.duplicates == ()
    receipt = validate_fields(envelope.fields)
    assert receipt.timestamp == format_utc(instant)
    assert receipt.sent_to == values["SentTo"].removeprefix("+")
    assert receipt.report == int(values["Report"])


# Responses.


@settings(max_examples=200, deadline=None)
@given(message_id=st.text(xml_characters, max_size=40), text=st.text(xml_characters, max_size=300),
       report=st.integers(-999, 999), soap=st.sampled_from(["1.1", "1.2"]),
       operation_ns=st.one_of(st.none(), operation_namespaces))
def test_a_response_always_reads_back_with_the_echoed_message_identifier(message_id, text, report, soap,
                                                                         operation_ns):
    envelope = Envelope(soap, operation_ns, {"MessageIdentifier": message_id})

    response = build_response(envelope, message_id, report, text)

    parsed = parse_response(response)
    assert parsed.message_id == message_id.strip()
    assert parsed.report == report
    assert parsed.text == text[:255].strip()
    answer = read_soap_answer(response)
    assert (answer.soap, answer.operation_ns) == (soap, operation_ns)


@settings(max_examples=200, deadline=None)
@given(message_id=st.text(max_size=40), text=st.text(max_size=40), reason=st.text(max_size=40))
def test_any_python_text_still_makes_well_formed_answers(message_id, text, reason):
    """Even text no XML parser could have produced (NUL, lone surrogates) cannot break an answer."""
    assert parse_response(build_response(Envelope("1.1", SENDSMS3_NS), message_id, 0, text)).report == 0
    assert parse_response(build_fault("1.2", True, reason)).fault_code is not None


# The daemon itself.


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=any_body, content_type=st.sampled_from(["text/soap", "text/xml; charset=iso-8859-1",
                                                    "application/soap+xml", None]))
def test_a_live_daemon_answers_any_body_with_soap_and_stays_healthy(module_daemon, body, content_type):
    answer = post(module_daemon.address, body, content_type=content_type)

    assert answer.status in (200, 400, 500)
    assert b"Traceback" not in answer.body and b"internal error" not in answer.body
    soap_answer = read_soap_answer(answer.body)
    if answer.status == 200:
        assert soap_answer.fault is None and soap_answer.report in (0, -1)
    else:
        assert soap_answer.fault in ("Client", "Sender")


def test_the_live_daemon_logged_no_traceback(module_daemon):
    """Runs after the hypothesis test in this module's order: nothing above crashed a request."""
    assert module_daemon.healthy()
    assert not re.search(r"Traceback|internal error", module_daemon.log())
