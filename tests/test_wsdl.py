"""`GET <path>?wsdl` as SOAP toolkits meet it: a real daemon, raw requests, and zeep generating a client from it."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import requests
import zeep
import zeep.exceptions
from lxml import etree
from test_tls import https_address, start_tls_daemon
from tls_certs import make_pki
from wire import exchange

RECEIPT_PATHS = ("/", "/cgi-bin/deliveryrecript.pl")
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
SOAP_BINDING_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
SOAP_ENVELOPE_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
SEED_ENVELOPE = Path(__file__).resolve().parent / "envelopes" / "seed.xml"
SEED_CREDENTIALS = """
    [auth]
    username = ANOther.61234
    pin = BLUE.music
"""


def get(address: tuple[str, int], target: str, host: str | None = "receiver", method: str = "GET",
        extra_headers: str = "", version: str = "1.1", tls=None):
    head = f"{method} {target} HTTP/{version}\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    head += f"{extra_headers}Connection: close\r\n\r\n"
    return exchange(address, head.encode("latin-1"), tls=tls)


def location(answer) -> str:
    assert answer.status == 200, answer.body
    document = etree.fromstring(answer.body)
    return document.find(f".//{{{SOAP_BINDING_NS}}}address").get("location")


def seed_operation() -> etree._Element:
    """The SubmitDeliveryReceipt element of the provider's example POST."""
    return etree.parse(str(SEED_ENVELOPE)).find(f"{{{SOAP_ENVELOPE_NS}}}Body")[0]


@pytest.mark.parametrize("path", RECEIPT_PATHS)
@pytest.mark.parametrize("query", ["wsdl", "WSDL"])
def test_each_receipt_path_serves_its_wsdl(module_daemon, path, query):
    answer = get(module_daemon.address, f"{path}?{query}", host="dlr.example.com")

    assert answer.header("content-type") == "text/xml; charset=utf-8"
    assert location(answer) == f"http://dlr.example.com{path}"
    document = etree.fromstring(answer.body)
    assert document.tag == f"{{{WSDL_NS}}}definitions"
    assert document.find(f".//{{{SOAP_BINDING_NS}}}binding").get("transport") == "http://schemas.xmlsoap.org/soap/http"


def test_the_schema_names_the_seeds_element_its_namespace_and_children(module_daemon):
    document = etree.fromstring(get(module_daemon.address, "/?wsdl").body)
    operation = seed_operation()
    schema = document.find(f".//{{{XSD_NS}}}schema")
    element = schema.find(f"{{{XSD_NS}}}element[@name='SubmitDeliveryReceipt']")

    assert f"{{{schema.get('targetNamespace')}}}SubmitDeliveryReceipt" == operation.tag
    assert [child.get("name") for child in element.iterfind(f".//{{{XSD_NS}}}element")] == [
        child.tag for child in operation]


def test_head_answers_the_wsdls_headers_without_it(module_daemon):
    whole = get(module_daemon.address, "/?wsdl")
    head = get(module_daemon.address, "/?wsdl", method="HEAD")

    assert head.status == 200
    assert head.header("content-type") == "text/xml; charset=utf-8"
    assert head.header("content-length") == str(len(whole.body))
    assert head.body == b""


@pytest.mark.parametrize("host", ["receipts.example.com:8443", "192.0.2.7", "[2001:db8::7]:8080", "Dlr.Example.COM."])
def test_the_location_is_the_host_header_as_sent(module_daemon, host):
    assert location(get(module_daemon.address, "/cgi-bin/deliveryrecript.pl?wsdl", host=host)) == (
        f"http://{host}/cgi-bin/deliveryrecript.pl")


@pytest.mark.parametrize("host", ["x&y", "it's", "a(b)", "a!b", "a,b", "a;b=c", "*"])
def test_a_host_that_is_no_host_port_is_refused(module_daemon, host):
    answer = get(module_daemon.address, "/?wsdl", host=host)

    assert answer.status == 400
    assert host.encode() not in answer.body


def test_a_host_the_framing_refuses_never_reaches_the_wsdl(module_daemon):
    answer = get(module_daemon.address, "/?wsdl", host='x"/><evil')

    assert answer.status == 400
    assert b"evil" not in answer.body


def test_without_a_host_there_is_no_address_to_give(module_daemon):
    answer = get(module_daemon.address, "/?wsdl", host=None, version="1.0")

    assert answer.status == 400
    assert b"Host" in answer.body


@pytest.mark.parametrize(("method", "target", "allowed"), [
    ("GET", "/", "POST"),
    ("GET", "/?wsdl=1", "POST"),
    ("GET", "/?wsdlx", "POST"),
    ("GET", "/?xsd", "POST"),
    ("GET", "/cgi-bin/deliveryrecript.pl?foo", "POST"),
    ("PUT", "/?wsdl", "GET, HEAD"),
    ("OPTIONS", "/?wsdl", "GET, HEAD"),
    ("DELETE", "/cgi-bin/deliveryrecript.pl?WSDL", "GET, HEAD"),
])
def test_other_requests_on_a_receipt_path_stay_405_naming_what_is_allowed(module_daemon, method, target, allowed):
    answer = get(module_daemon.address, target, method=method)

    assert answer.status == 405
    assert answer.header("allow") == allowed


def test_unknown_paths_stay_404(module_daemon):
    assert get(module_daemon.address, "/elsewhere?wsdl").status == 404


def test_allow_from_guards_the_wsdl_as_it_guards_receipts(daemon_factory):
    daemon = daemon_factory("""
        [auth]
        allow_from = 192.0.2.0/24
    """)

    assert get(daemon.address, "/?wsdl").status == 403


def test_https_location_over_the_tls_listener(daemon_factory, tmp_path):
    pki = make_pki(tmp_path / "pki")
    daemon = start_tls_daemon(daemon_factory, pki)
    host, port = https_address(daemon)

    answer = get((host, port), "/cgi-bin/deliveryrecript.pl?wsdl", host=f"dlr.example.com:{port}",
                 tls=pki.client_context())

    assert location(answer) == f"https://dlr.example.com:{port}/cgi-bin/deliveryrecript.pl"
    assert location(get(daemon.address, "/?wsdl", host="dlr.example.com")) == "http://dlr.example.com/"


FORWARDED = "X-Forwarded-Proto: https\r\nX-Forwarded-Host: dlr.example.com\r\n"


def test_forwarded_proto_and_host_are_believed_from_trusted_proxies(daemon_factory):
    daemon = daemon_factory("""
        [auth]
        trusted_proxies = 127.0.0.1
    """)

    assert location(get(daemon.address, "/?wsdl", host="127.0.0.1:8080", extra_headers=FORWARDED)) == (
        "https://dlr.example.com/")
    only_proto = "X-Forwarded-Proto: HTTPS\r\n"
    assert location(get(daemon.address, "/?wsdl", host="dlr.example.com", extra_headers=only_proto)) == (
        "https://dlr.example.com/")
    appended = "X-Forwarded-Host: attacker.example, dlr.example.com:443\r\n"
    assert location(get(daemon.address, "/?wsdl", extra_headers=appended)) == "http://dlr.example.com:443/"


@pytest.mark.parametrize("headers", [
    "X-Forwarded-Proto: gopher\r\n",
    'X-Forwarded-Host: x"/><evil\r\n',
    "X-Forwarded-Host: a b\r\n",
])
def test_a_trusted_proxys_unusable_forwarded_header_is_refused(daemon_factory, headers):
    daemon = daemon_factory("""
        [auth]
        trusted_proxies = 127.0.0.1
    """)

    answer = get(daemon.address, "/?wsdl", extra_headers=headers)

    assert answer.status == 400
    assert b"evil" not in answer.body


def test_forwarded_headers_are_ignored_from_anyone_else(module_daemon):
    answer = get(module_daemon.address, "/?wsdl", host="dlr.example.com", extra_headers=FORWARDED)

    assert location(answer) == "http://dlr.example.com/"
    bad = get(module_daemon.address, "/?wsdl", host="dlr.example.com", extra_headers="X-Forwarded-Proto: gopher\r\n")
    assert location(bad) == "http://dlr.example.com/"


def seed_call(client: zeep.Client, pin: str = "BLUE.music"):
    return client.service.SubmitDeliveryReceipt(
        Username="ANOther.61234", PIN=pin,
        Timestamp1=datetime.datetime(2002, 8, 27, 13, 38, tzinfo=datetime.UTC),
        SentTo="447009123456", MessageIdentifier="3C7D98A4", Report=0)


def test_zeep_client_from_the_served_wsdl_delivers_the_seeds_receipt(daemon_factory):
    daemon = daemon_factory(SEED_CREDENTIALS)
    history = zeep.plugins.HistoryPlugin()
    client = zeep.Client(f"{daemon.urls[0]}/cgi-bin/deliveryrecript.pl?wsdl", plugins=[history])

    answer = seed_call(client)

    assert (answer.MessageIdentifier, answer.Report) == ("3C7D98A4", 0)
    rows = daemon.rows("SELECT message_id, sent_to, report, timestamp, timestamp_raw, state FROM receipts")
    assert [tuple(row) for row in rows] == [
        ("3C7D98A4", "447009123456", 0, "2002-08-27T13:38:00Z", "2002-08-27T13:38:00Z", "delivered")]
    sent = history.last_sent["envelope"].find(f"{{{SOAP_ENVELOPE_NS}}}Body")[0]
    seed = seed_operation()
    assert sent.tag == seed.tag
    assert [(child.tag, child.text) for child in sent] == [(child.tag, child.text) for child in seed]


def test_zeep_reads_a_refusal_as_a_client_fault(daemon_factory):
    daemon = daemon_factory(SEED_CREDENTIALS)
    client = zeep.Client(f"{daemon.urls[0]}/?wsdl")

    with pytest.raises(zeep.exceptions.Fault) as fault:
        seed_call(client, pin="wrong")

    assert fault.value.code.endswith("Client")
    assert daemon.rows("SELECT count(*) FROM receipts")[0][0] == 0


def test_zeep_over_https_posts_to_the_https_location(daemon_factory, tmp_path):
    pki = make_pki(tmp_path / "pki")
    daemon = start_tls_daemon(daemon_factory, pki, SEED_CREDENTIALS)
    host, port = https_address(daemon)
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, where set, wins over the test's CA
    session.verify = str(pki.ca_file)

    client = zeep.Client(f"https://{host}:{port}/?wsdl", transport=zeep.Transport(session=session))
    answer = seed_call(client)

    assert answer.Report == 0
    assert daemon.rows("SELECT message_id FROM receipts")[0]["message_id"] == "3C7D98A4"
