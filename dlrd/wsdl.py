"""The WSDL 1.1 document served at `<path>?wsdl`: dlrd's SubmitDeliveryReceipt operation at that URL.

The provider publishes no WSDL for the receiving side (its sendsms5.wsdl
has no SubmitDeliveryReceipt), so this document is dlrd's own. It is
written so that what a SOAP toolkit generates from it sends the seed's
wire shape: a SOAP 1.1 Body holding one `SubmitDeliveryReceipt` element in
the seed's namespace (`http://www.itsarrived.net/dtd/sendsms3`) whose
children are unqualified and named as in the seed, in the seed's order.

The style is document/literal, wrapped, not the seed's rpc/encoded: WS-I
Basic Profile forbids encoded use, JAX-WS refuses it and zeep supports
it only in part, while every toolkit handles document/literal.
The wire differs from the seed only in what dlrd ignores: no `xsi:type`
attributes and no SOAP-ENC `encodingStyle`. The output message describes
the response dlrd actually sends (`soap.build_response`), so a toolkit
reads MessageIdentifier, Report and Text from it. It is served to the
sources in allow_from, like the receipt path it describes (app.check_head).

The location is built from the request, so the document is made per
request from two constant halves around the escaped location: a copy and
an escape, no XML tree, nothing cached that a client's Host header could
fill.
"""

from __future__ import annotations

import re
from email.message import Message
from xml.sax.saxutils import escape

WSDL_MEDIA_TYPE = "text/xml; charset=utf-8"
TARGET_NAMESPACE = "http://www.itsarrived.net/dtd/sendsms3"
# What may stand for the host in the location: a DNS name or IPv4 address,
# or an IPv6 literal in brackets, then an optional port. Stricter than the
# reg-name RFC 3986 §3.2.2 allows: nothing a toolkit will copy into
# generated code needs escaping.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?")
_SCHEMES = ("http", "https")
_LOCATION_MARK = "@LOCATION@"

_DOCUMENT = f"""<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions name="DeliveryReceipts"
    targetNamespace="{TARGET_NAMESPACE}"
    xmlns:tns="{TARGET_NAMESPACE}"
    xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <wsdl:documentation>Connection Software real-time delivery receipts, as received by dlrd.
Report 0 in the answer means the receipt is stored durably; -1 means it was quarantined (Text says why).
A SOAP Fault with faultcode Client means the request was refused; faultcode Server means retry later.
</wsdl:documentation>
  <wsdl:types>
    <xsd:schema targetNamespace="{TARGET_NAMESPACE}" elementFormDefault="unqualified">
      <xsd:simpleType name="Credential">
        <xsd:restriction base="xsd:string"><xsd:maxLength value="20"/></xsd:restriction>
      </xsd:simpleType>
      <xsd:simpleType name="PhoneNumber">
        <xsd:annotation><xsd:documentation>E.164 without '+', e.g. 447700912345</xsd:documentation></xsd:annotation>
        <xsd:restriction base="xsd:string"><xsd:pattern value="\\+?[0-9]{{1,15}}"/></xsd:restriction>
      </xsd:simpleType>
      <xsd:simpleType name="MessageIdentifier">
        <xsd:restriction base="xsd:string"><xsd:maxLength value="15"/></xsd:restriction>
      </xsd:simpleType>
      <xsd:simpleType name="ReportCode">
        <xsd:annotation><xsd:documentation>A Connection Software report code</xsd:documentation></xsd:annotation>
        <xsd:restriction base="xsd:int">
          <xsd:minInclusive value="-999"/><xsd:maxInclusive value="999"/>
        </xsd:restriction>
      </xsd:simpleType>
      <xsd:element name="SubmitDeliveryReceipt">
        <xsd:complexType>
          <xsd:sequence>
            <xsd:element name="Username" type="tns:Credential" minOccurs="0"/>
            <xsd:element name="PIN" type="tns:Credential" minOccurs="0"/>
            <xsd:element name="Timestamp1" type="xsd:dateTime"/>
            <xsd:element name="SentTo" type="tns:PhoneNumber"/>
            <xsd:element name="MessageIdentifier" type="tns:MessageIdentifier"/>
            <xsd:element name="Report" type="tns:ReportCode"/>
          </xsd:sequence>
        </xsd:complexType>
      </xsd:element>
      <xsd:element name="SubmitDeliveryReceiptResponse">
        <xsd:complexType>
          <xsd:sequence>
            <xsd:element name="MessageIdentifier" type="xsd:string"/>
            <xsd:element name="Report" type="xsd:int"/>
            <xsd:element name="Text" type="xsd:string" minOccurs="0"/>
          </xsd:sequence>
        </xsd:complexType>
      </xsd:element>
    </xsd:schema>
  </wsdl:types>
  <wsdl:message name="SubmitDeliveryReceiptRequest">
    <wsdl:part name="parameters" element="tns:SubmitDeliveryReceipt"/>
  </wsdl:message>
  <wsdl:message name="SubmitDeliveryReceiptResponse">
    <wsdl:part name="parameters" element="tns:SubmitDeliveryReceiptResponse"/>
  </wsdl:message>
  <wsdl:portType name="DeliveryReceiptPortType">
    <wsdl:operation name="SubmitDeliveryReceipt">
      <wsdl:input message="tns:SubmitDeliveryReceiptRequest"/>
      <wsdl:output message="tns:SubmitDeliveryReceiptResponse"/>
    </wsdl:operation>
  </wsdl:portType>
  <wsdl:binding name="DeliveryReceiptBinding" type="tns:DeliveryReceiptPortType">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="SubmitDeliveryReceipt">
      <soap:operation soapAction="" style="document"/>
      <wsdl:input><soap:body use="literal"/></wsdl:input>
      <wsdl:output><soap:body use="literal"/></wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="DeliveryReceiptService">
    <wsdl:port name="DeliveryReceiptPort" binding="tns:DeliveryReceiptBinding">
      <soap:address location="{_LOCATION_MARK}"/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"""
_BEFORE_LOCATION, _AFTER_LOCATION = (part.encode("utf-8") for part in _DOCUMENT.split(_LOCATION_MARK))


class LocationRefused(ValueError):
    """The request does not say a usable URL for the WSDL's location (answered 400 with the reason)."""


def is_wsdl_query(query: str) -> bool:
    """`?wsdl` in any case, and nothing else: the query every SOAP toolkit appends to find a WSDL."""
    return len(query) == 4 and query.lower() == "wsdl"


def wsdl_location(scheme: str, path: str, headers: Message, trust_forwarded: bool) -> str:
    """The URL the client reached this path by, as the WSDL's soap:address.

    The scheme is the connection's, the host the Host header as sent.
    Behind a trusted proxy (`trust_forwarded`: the peer is in
    trusted_proxies) X-Forwarded-Proto and X-Forwarded-Host replace them;
    from anyone else they are ignored, as X-Forwarded-For is. When a proxy
    chain appended several values, the last is the one the nearest proxy,
    the trusted one, wrote.
    """
    host = headers.get("Host")
    if trust_forwarded:
        scheme = _last(headers.get_all("X-Forwarded-Proto")) or scheme
        host = _last(headers.get_all("X-Forwarded-Host")) or host
        if scheme.lower() not in _SCHEMES:
            raise LocationRefused("X-Forwarded-Proto must be http or https")
    if host is None:
        raise LocationRefused("the WSDL's address is taken from the Host header: send one")
    host = host.strip()
    if not _HOST.fullmatch(host):
        raise LocationRefused("the host is not a host[:port]; the WSDL's address is taken from it")
    return f"{scheme.lower()}://{host}{path}"


def _last(values: list[str] | None) -> str | None:
    """The last comma-separated item of a header that may be repeated, None when absent or empty."""
    if not values:
        return None
    return values[-1].rpartition(",")[2].strip() or None


def wsdl_document(location: str) -> bytes:
    """The WSDL with `location` as the service's address, escaped: the Host header is the client's text."""
    return _BEFORE_LOCATION + escape(location, {'"': "&quot;"}).encode("utf-8") + _AFTER_LOCATION
