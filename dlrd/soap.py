"""SOAP envelopes in and out: bytes to fields, and fields to response bytes.

No I/O happens here. The parser is locked down from the first byte: no DTD
of any kind, no entity resolution, no network, libxml2's default depth
limit. Anything that is not one well-formed SubmitDeliveryReceipt envelope
becomes an EnvelopeRejected, which the server turns into a Client fault.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

SoapVersion = Literal["1.1", "1.2"]
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
SOAP_ENCODING_NS = "http://schemas.xmlsoap.org/soap/encoding/"
_VERSION_BY_NS: dict[str, SoapVersion] = {SOAP11_NS: "1.1", SOAP12_NS: "1.2"}
OPERATION = "SubmitDeliveryReceipt"
KNOWN_FIELDS = frozenset(("Username", "PIN", "SentTo", "Timestamp1", "MessageIdentifier", "Report"))
# Each accepted spelling, and the name libxml2 is given: it does not know
# Python's "latin-1", which a Content-Type charset may well say.
_CANONICAL_ENCODINGS = {
    "utf-8": "utf-8", "utf8": "utf-8",
    "iso-8859-1": "iso-8859-1", "latin-1": "iso-8859-1", "latin1": "iso-8859-1", "iso8859-1": "iso-8859-1",
    "us-ascii": "us-ascii", "ascii": "us-ascii",
}
ACCEPTED_ENCODINGS = frozenset(_CANONICAL_ENCODINGS)
# The Python codec of each canonical name, for redaction on the decoded text.
_CODECS = {"utf-8": "utf-8", "iso-8859-1": "latin-1", "us-ascii": "ascii"}
_UTF8_BOM = b"\xef\xbb\xbf"
# XML 1.0 appendix F.1: the first bytes that tell the encoding family before
# any declaration is read (byte order marks, then the bytes of "<?" or
# "<?xm"). libxml2 autodetects each of these and then parses a DTD that no
# byte pattern of an ASCII-compatible encoding could see.
_FOREIGN_FIRST_BYTES = (
    (b"\x00\x00\xfe\xff", "UCS-4 (UTF-32) big-endian"),
    (b"\xff\xfe\x00\x00", "UCS-4 (UTF-32) little-endian"),
    (b"\x00\x00\xff\xfe", "UCS-4 in 2143 byte order"),
    (b"\xfe\xff\x00\x00", "UCS-4 in 3412 byte order"),
    (b"\xfe\xff", "UTF-16 big-endian"),
    (b"\xff\xfe", "UTF-16 little-endian"),
    (b"\x00\x00\x00\x3c", "UCS-4 (UTF-32) big-endian"),
    (b"\x3c\x00\x00\x00", "UCS-4 (UTF-32) little-endian"),
    (b"\x00\x00\x3c\x00", "UCS-4 in 2143 byte order"),
    (b"\x00\x3c\x00\x00", "UCS-4 in 3412 byte order"),
    (b"\x00\x3c\x00\x3f", "UTF-16 big-endian"),
    (b"\x3c\x00\x3f\x00", "UTF-16 little-endian"),
    (b"\x4c\x6f\xa7\x94", "EBCDIC"),
)
_FOREIGN_PREFIXES = tuple(first_bytes for first_bytes, _family in _FOREIGN_FIRST_BYTES)
REDACTED_PIN = "[redacted]"

# The XML declaration's encoding. Read from the raw bytes, which is sound
# only once the body is known to be in an ASCII-compatible encoding.
_DECLARED_ENCODING = re.compile(rb"""<\?xml[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
# PIN start and end tags. A prefix is any XML name, non-ASCII letters
# included: matching only ASCII word characters let <ñs:PIN> through
# unredacted. Start and end tags are found apart and paired by position,
# in linear time: one pattern spanning from a start tag to its end tag
# took seconds on a body of thirteen thousand unclosed <PIN> tags.
_PIN_START = re.compile(r"<(?:[^\s<>/:!?=\"']+:)?PIN(?=[\s>/])[^>]*>")
_PIN_END = re.compile(r"</(?:[^\s<>/:!?=\"']+:)?PIN\s*>")
# libxml2 appends "use XML_PARSE_HUGE option" to its limit errors: a switch
# of the library, of no use to the sender and none of its business.
_LIBRARY_ADVICE = re.compile(r",?\s*(?:use|try)\s+XML_PARSE_\w+(?:\s+option)?", re.IGNORECASE)
# Text that xml_text would return unchanged: printable ASCII but & < >.
_PLAIN_TEXT = re.compile(r"[\x20-\x25\x27-\x3b\x3d\x3f-\x7e]*")
# XML 1.0 §2.2: characters no document may hold, even as a character reference.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class EnvelopeRejected(ValueError):
    """The body is not a usable SubmitDeliveryReceipt envelope (a Client fault)."""

    def __init__(self, reason: str, soap_version: SoapVersion = "1.1") -> None:
        super().__init__(reason)
        self.reason = reason
        self.soap_version = soap_version


@dataclass(frozen=True)
class Envelope:
    """What the provider said, before any field rule is applied."""

    soap_version: SoapVersion
    operation_ns: str | None
    fields: dict[str, str] = field(default_factory=dict)
    duplicates: tuple[str, ...] = ()
    # The encoding the body was read in (canonical name), so its PIN can be redacted in the text.
    encoding: str = field(default="utf-8", compare=False)


class _RefuseEveryResource(etree.Resolver):
    """libxml2 asks lxml's resolvers before it opens any DTD, entity or URL: refuse them all.

    The parser's options already tell libxml2 to load nothing; this makes
    "nothing" hold even if an option is dropped or libxml2 changes its
    mind, as it did for external parameter entities when `collect_ids=False`
    was set (it opened /etc/passwd, a FIFO, /dev/zero).
    """

    def resolve(self, url: str | None, pubid: str | None, context: object) -> None:
        raise ForbiddenResource(url or pubid or "an external resource")


class ForbiddenResource(Exception):
    """The document named an external resource; the resolver refused it before anything was opened."""


_parsers = threading.local()


def _parser(encoding: str) -> etree.XMLParser:
    """One hardened parser per thread and encoding (lxml parsers are not thread-safe).

    No `collect_ids=False`: it sets libxml2's XML_SKIP_IDS flag, which
    libxml2 also reads as "load the DTD's subsets", so external parameter
    entities were opened with every other loading option off.
    """
    cache = _parsers.__dict__.setdefault("by_encoding", {})
    parser = cache.get(encoding)
    if parser is None:
        parser = etree.XMLParser(
            encoding=encoding,
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            attribute_defaults=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
        )
        parser.resolvers.add(_RefuseEveryResource())
        cache[encoding] = parser
    return parser


def body_encoding(body: bytes, charset: str | None = None) -> str:
    """The encoding a body must be read in, decided before libxml2 sees a byte; refuse all but SPEC's.

    XML 1.0 appendix F: a byte order mark, or the first bytes of "<?xml" in
    a multi-byte or EBCDIC encoding, decide the family; then the
    declaration names the encoding; without one the HTTP charset does
    (the declaration wins over it, as before); else UTF-8. A NUL byte is
    never XML in an ASCII-compatible encoding, so any body holding one is
    UTF-16 or UTF-32 without a byte order mark, or not XML at all. The
    result is imposed on the parser: libxml2 never guesses.
    """
    if body.startswith(_FOREIGN_PREFIXES):
        family = next(family for first_bytes, family in _FOREIGN_FIRST_BYTES if body.startswith(first_bytes))
        raise EncodingRefused(f"the body is {family}; it must be UTF-8 or ISO-8859-1")
    if b"\x00" in body:
        raise EncodingRefused("the body holds NUL bytes (UTF-16 or UTF-32?); it must be UTF-8 or ISO-8859-1")
    bom = body.startswith(_UTF8_BOM)
    declared = _DECLARED_ENCODING.match(body, 3 if bom else 0)
    name = declared.group(1).decode("ascii").lower() if declared else None
    if name is not None and name not in ACCEPTED_ENCODINGS:
        raise EncodingRefused("the body must be UTF-8 or ISO-8859-1")
    if bom:
        if name is not None and _CANONICAL_ENCODINGS[name] == "iso-8859-1":
            raise EncodingRefused("the body starts with a UTF-8 byte order mark but declares ISO-8859-1")
        return "utf-8"
    if name is None and charset:
        name = charset.lower()
        if name not in ACCEPTED_ENCODINGS:
            raise EncodingRefused("the body must be UTF-8 or ISO-8859-1")
    return _CANONICAL_ENCODINGS[name] if name else "utf-8"


class EncodingRefused(ValueError):
    """The body is not in an encoding SPEC accepts; the reason says which it seems to be."""


def _local(tag: str) -> str:
    """`{ns}name` -> `name`."""
    return tag.rpartition("}")[2]


def _namespace(tag: str) -> str | None:
    """`{ns}name` -> `ns`, None without one (string work: etree.QName costs more per call)."""
    return tag[1:tag.index("}")] if tag.startswith("{") else None


def parse_envelope(body: bytes, charset: str | None = None, version_hint: SoapVersion = "1.1") -> Envelope:
    """Read a SubmitDeliveryReceipt envelope, or raise EnvelopeRejected saying why.

    `charset` is the one from the Content-Type header; the XML declaration,
    when it names an encoding, wins, as XML 1.0 appendix F says.
    """
    try:
        encoding = body_encoding(body, charset)
    except EncodingRefused as refused:
        raise EnvelopeRejected(str(refused), version_hint) from None
    # Sound now that the body is known to be UTF-8 or ISO-8859-1: in either,
    # "<!DOCTYPE" is these very bytes.
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise EnvelopeRejected("DTDs and entity declarations are not allowed", version_hint)
    root = _parse(body, encoding, version_hint, "not well-formed XML")
    if root is None:
        raise EnvelopeRejected("the body is empty", version_hint)
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise EnvelopeRejected("DTDs and entity declarations are not allowed", version_hint)

    root_tag = root.tag
    envelope_ns = _namespace(root_tag)
    version = _VERSION_BY_NS.get(envelope_ns or "")
    if version is None or _local(root_tag) != "Envelope":
        raise EnvelopeRejected("not a SOAP envelope", version_hint)
    bodies = list(root.iterchildren(f"{{{envelope_ns}}}Body"))
    if len(bodies) != 1:
        raise EnvelopeRejected("a SOAP envelope needs exactly one Body", version)
    operations = list(bodies[0].iterchildren(etree.Element))
    if len(operations) != 1 or _local(operations[0].tag) != OPERATION:
        raise EnvelopeRejected("the Body must hold exactly one SubmitDeliveryReceipt", version)
    operation = operations[0]

    fields: dict[str, str] = {}
    duplicates: list[str] = []
    for child in operation.iterchildren(etree.Element):
        name = _local(child.tag)
        if name not in KNOWN_FIELDS:
            continue
        if name in fields:
            duplicates.append(name)
            continue
        if len(child):
            raise EnvelopeRejected(f"{name} must hold text, not elements", version)
        fields[name] = (child.text or "").strip()
    return Envelope(version, _namespace(operation.tag), fields, tuple(duplicates), encoding)


def _parse(body: bytes, encoding: str, version_hint: SoapVersion, not_xml: str) -> etree._Element | None:
    """libxml2's tree of a body whose encoding is decided; every failure is an EnvelopeRejected."""
    try:
        return etree.fromstring(body, _parser(encoding))
    except ForbiddenResource:
        raise EnvelopeRejected("DTDs and entity declarations are not allowed", version_hint) from None
    except etree.XMLSyntaxError as error:
        raise EnvelopeRejected(f"{not_xml} ({_short_syntax_error(error)})", version_hint) from None
    except (ValueError, LookupError):
        raise EnvelopeRejected(not_xml, version_hint) from None


def _short_syntax_error(error: etree.XMLSyntaxError) -> str:
    """libxml2's message without file names or library advice, on one line, trimmed for a faultstring."""
    message = str(error.msg or "syntax error").split(", file ")[0]
    message = _LIBRARY_ADVICE.sub("", message)
    return " ".join(message.split()).replace(" ,", ",")[:120]


def version_from_content_type(media_type: str) -> SoapVersion:
    """SOAP 1.2 travels as application/soap+xml; everything else is treated as 1.1."""
    return "1.2" if media_type == "application/soap+xml" else "1.1"


def _envelope_open(version: SoapVersion, extra_ns: str) -> str:
    if version == "1.2":
        return f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP12_NS}"{extra_ns}>\n<SOAP-ENV:Body>\n'
    return (
        f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP11_NS}"\n'
        f'xmlns:SOAP-ENC="{SOAP_ENCODING_NS}"\n'
        'xmlns:xsi="http://www.w3.org/1999/XMLSchema-instance"\n'
        f'xmlns:xsd="http://www.w3.org/1999/XMLSchema"{extra_ns}>\n'
        f'<SOAP-ENV:Body SOAP-ENV:encodingStyle="{SOAP_ENCODING_NS}">\n'
    )


def xml_text(text: str) -> str:
    """Text safe inside an element of an XML 1.0 response, read back exactly as given.

    A carriage return is sent as a reference, since a parser turns a literal
    one into a line feed; characters XML cannot carry at all become U+FFFD,
    so the answer stays well-formed whatever it echoes.
    """
    if _PLAIN_TEXT.fullmatch(text):
        return text  # the usual MessageIdentifier or Text: nothing to escape or replace
    return _NOT_XML_CHAR.sub("\ufffd", escape(text, {"\r": "&#13;"}))


def build_response(envelope: Envelope, message_id: str, report: int, text: str) -> bytes:
    """The SubmitDeliveryReceiptResponse, shaped like the provider's own example.

    The response element lives in the request operation's namespace, so a
    sendsms2 sender gets sendsms2 back.
    """
    opening, element = _response_frame(envelope.soap_version, envelope.operation_ns)
    return (
        f"{opening}"
        f'<MessageIdentifier xsi:type="xsd:string">{xml_text(message_id)}</MessageIdentifier>\n'
        f'<Report xsi:type="xsd:int">{report}</Report>\n'
        f'<Text xsi:type="xsd:string">{xml_text(text[:255])}</Text>\n'
        f"</{element}>\n"
        "</SOAP-ENV:Body>\n"
        "</SOAP-ENV:Envelope>\n"
    ).encode()


@lru_cache(maxsize=32)
def _response_frame(version: SoapVersion, operation_ns: str | None) -> tuple[str, str]:
    """The response up to the operation's open tag, and the operation's name: the same for every receipt."""
    if operation_ns:
        extra_ns = f"\nxmlns:ns1={quoteattr(operation_ns)}"
        element = "ns1:SubmitDeliveryReceiptResponse"
    else:
        extra_ns = ""
        element = "SubmitDeliveryReceiptResponse"
    if version == "1.2":
        extra_ns += ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        extra_ns += ' xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{_envelope_open(version, extra_ns)}<{element}>\n', element


def build_fault(version: SoapVersion, sender_at_fault: bool, reason: str) -> bytes:
    """A SOAP Fault: Client/Sender when the request was wrong, Server/Receiver when we were."""
    if version == "1.2":
        code = "SOAP-ENV:Sender" if sender_at_fault else "SOAP-ENV:Receiver"
        fault = (
            "<SOAP-ENV:Fault>\n"
            f"<SOAP-ENV:Code><SOAP-ENV:Value>{code}</SOAP-ENV:Value></SOAP-ENV:Code>\n"
            f'<SOAP-ENV:Reason><SOAP-ENV:Text xml:lang="en">{xml_text(reason)}</SOAP-ENV:Text></SOAP-ENV:Reason>\n'
            "</SOAP-ENV:Fault>\n"
        )
        head = f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP12_NS}">\n<SOAP-ENV:Body>\n'
    else:
        code = "SOAP-ENV:Client" if sender_at_fault else "SOAP-ENV:Server"
        fault = (
            "<SOAP-ENV:Fault>\n"
            f"<faultcode>{code}</faultcode>\n"
            f"<faultstring>{xml_text(reason)}</faultstring>\n"
            "</SOAP-ENV:Fault>\n"
        )
        head = f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP11_NS}">\n<SOAP-ENV:Body>\n'
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n' + head + fault + "</SOAP-ENV:Body>\n</SOAP-ENV:Envelope>\n"
    ).encode("utf-8")


def redact_pin(body: bytes, pin: str | None = None, encoding: str = "utf-8") -> bytes:
    """The body with every PIN element's content replaced, for the quarantine; as sent, but for the PIN.

    The work is done on the text decoded in the body's own encoding (the
    one parse_envelope read it in); bytes that do not decode are carried
    through unchanged. When the parsed PIN is known it is also removed
    anywhere else it occurs, so a PIN smuggled into another field is not
    kept either. The result is then parsed and checked: if any PIN could
    still be read from it (markup that fooled the tag search, a PIN in a
    character reference or an attribute), the body is kept as the parser
    read it instead, re-serialised with every PIN replaced.
    """
    codec = _CODECS[encoding]
    text = _redact_pin_elements(body.decode(codec, "surrogateescape"))
    if pin:
        text = text.replace(pin, REDACTED_PIN)
    redacted = text.encode(codec, "surrogateescape")
    if _holds_no_pin(redacted, encoding, pin):
        return redacted
    try:
        return _reserialised_without_pin(body, encoding, pin)
    except (etree.XMLSyntaxError, ForbiddenResource, ValueError, LookupError):
        return redacted  # not XML at all (never so for a body parse_envelope read): the tag search is all there is


def _redact_pin_elements(text: str) -> str:
    """Each PIN start tag's content up to the first PIN end tag after it, replaced."""
    ends = [match.span() for match in _PIN_END.finditer(text)]
    end_starts = [start for start, _end in ends]
    parts, position = [], 0
    for start_tag in _PIN_START.finditer(text):
        if start_tag.start() < position or start_tag.group().endswith("/>"):
            continue  # inside content already replaced, or an empty <PIN/>
        index = bisect_left(end_starts, start_tag.end())
        if index == len(ends):
            break
        parts += [text[position:start_tag.end()], REDACTED_PIN]
        position = ends[index][0]
    parts.append(text[position:])
    return "".join(parts)


def _holds_no_pin(body: bytes, encoding: str, pin: str | None) -> bool:
    """True when the parser reads no PIN from `body`: every PIN element empty or redacted, the PIN nowhere."""
    try:
        root = etree.fromstring(body, _parser(encoding))
    except (etree.XMLSyntaxError, ForbiddenResource, ValueError, LookupError):
        return False
    if root is None:
        return False
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        if _local(element.tag) == "PIN" and (len(element) or (element.text or REDACTED_PIN) != REDACTED_PIN):
            return False
        if pin and any(pin in value for value in (element.text or "", element.tail or "", *element.attrib.values())):
            return False
    return not pin or pin not in body.decode(_CODECS[encoding], "surrogateescape")


def _reserialised_without_pin(body: bytes, encoding: str, pin: str | None) -> bytes:
    """The body as the parser read it (comments and processing instructions dropped), every PIN replaced."""
    root = etree.fromstring(body, _parser(encoding))
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        if _local(element.tag) == "PIN":
            for child in list(element):
                element.remove(child)
            element.text = REDACTED_PIN
        elif pin and element.text and pin in element.text:
            element.text = element.text.replace(pin, REDACTED_PIN)
        if pin and element.tail and pin in element.tail:
            element.tail = element.tail.replace(pin, REDACTED_PIN)
        for name, value in element.attrib.items():
            if pin and pin in value:
                element.set(name, value.replace(pin, REDACTED_PIN))
    return etree.tostring(root, encoding="UTF-8" if encoding != "iso-8859-1" else "ISO-8859-1", xml_declaration=True)


@dataclass(frozen=True)
class ParsedResponse:
    """What a receiver answered, as `send-test` reports it."""

    message_id: str | None = None
    report: int | None = None
    text: str | None = None
    fault_code: str | None = None
    fault_reason: str | None = None


def parse_response(body: bytes, charset: str | None = None) -> ParsedResponse:
    """Read a SubmitDeliveryReceiptResponse or a Fault with the same hardened parser and encoding rule.

    The receiver may be hostile: it gets exactly the defences a provider's
    request gets, so `send-test` cannot be made to open a file or hang.
    """
    try:
        encoding = body_encoding(body, charset)
    except EncodingRefused as refused:
        raise EnvelopeRejected(f"the response: {refused}") from None
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise EnvelopeRejected("the response holds a DTD")
    root = _parse(body, encoding, "1.1", "the response is not XML")
    if root is None or root.getroottree().docinfo.internalDTD is not None:
        raise EnvelopeRejected("the response is not XML")
    texts: dict[str, str] = {}
    for element in root.iter(etree.Element):
        name = _local(element.tag)
        if name and name not in texts and len(element) == 0:
            texts[name] = (element.text or "").strip()
    if "faultcode" in texts or "Value" in texts:
        return ParsedResponse(
            fault_code=texts.get("faultcode") or texts.get("Value"),
            fault_reason=texts.get("faultstring") or texts.get("Text"),
        )
    report_text = texts.get("Report")
    try:
        report = int(report_text) if report_text is not None else None
    except ValueError:
        report = None
    return ParsedResponse(texts.get("MessageIdentifier"), report, texts.get("Text"))
