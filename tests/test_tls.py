"""HTTPS as the provider and strangers meet it: real handshakes against a real daemon."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys

import pytest
from tls_certs import make_pki
from wire import connect, exchange, post, read_one, receipt_body, seed_request, soap_report, wait_for


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def tls_ini(pki, extra: str = "") -> str:
    return f"""
        [server]
        listen = 127.0.0.1:0
        tls_listen = 127.0.0.1:0
        tls_cert = {pki.server_cert}
        tls_key = {pki.server_key}
        {extra}
    """


def https_address(daemon) -> tuple[str, int]:
    url = next(url for url in daemon.urls if url.startswith("https://"))
    host, port = url.removeprefix("https://").rsplit(":", 1)
    return host.strip("[]"), int(port)


def start_tls_daemon(daemon_factory, pki, extra: str = ""):
    daemon = daemon_factory(tls_ini(pki, extra), wait=False)
    daemon.wait_listening(count=2)
    return daemon


def test_seed_example_over_https_is_stored(daemon_factory, pki):
    daemon = start_tls_daemon(daemon_factory, pki)

    answer = exchange(https_address(daemon), seed_request(), tls=pki.client_context())

    assert answer.status == 200
    assert b"<Report xsi:type=\"xsd:int\">0</Report>" in answer.body
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")] == ["3C7D98A4"]


def test_http_and_https_listen_at_once(daemon_factory, pki):
    daemon = start_tls_daemon(daemon_factory, pki)

    assert {url.split("://")[0] for url in daemon.urls} == {"http", "https"}
    assert exchange(daemon.address, seed_request()).status == 200
    assert exchange(https_address(daemon), seed_request(), tls=pki.client_context()).status == 200


def test_ipv6_https_listener(daemon_factory, pki):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    daemon = daemon_factory(f"""
        [server]
        listen = [::1]:0
        tls_listen = [::1]:0
        tls_cert = {pki.server_cert}
        tls_key = {pki.server_key}
    """, wait=False)
    daemon.wait_listening(count=2)

    answer = exchange(https_address(daemon), seed_request(), tls=pki.client_context())

    assert answer.status == 200
    assert daemon.rows("SELECT remote_addr FROM receipts")[0]["remote_addr"] == "::1"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_1_client_gets_protocol_version_alert(daemon_factory, pki):
    """OpenSSL 3 refuses TLS 1.1 client-side unless told otherwise; this client really offers it."""
    daemon = start_tls_daemon(daemon_factory, pki)
    old_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old_client.check_hostname = False
    old_client.verify_mode = ssl.CERT_NONE
    old_client.minimum_version = ssl.TLSVersion.TLSv1
    old_client.maximum_version = ssl.TLSVersion.TLSv1_1
    old_client.set_ciphers("ALL:@SECLEVEL=0")

    with pytest.raises(ssl.SSLError) as refused:
        connect(https_address(daemon), tls=old_client).close()

    assert "PROTOCOL_VERSION" in str(refused.value).upper()
    wait_for(lambda: "TLS handshake with 127.0.0.1 failed" in daemon.log(), 5, "the handshake failure log line")


def test_client_that_does_not_trust_our_ca_refuses_us(daemon_factory, pki, tmp_path):
    daemon = start_tls_daemon(daemon_factory, pki)
    other = make_pki(tmp_path / "other", name="other")

    with pytest.raises(ssl.SSLCertVerificationError):
        connect(https_address(daemon), tls=other.client_context()).close()


def test_plain_http_on_tls_port_costs_one_log_line(daemon_factory, pki):
    daemon = start_tls_daemon(daemon_factory, pki)
    with socket.create_connection(https_address(daemon), timeout=5) as sock:
        sock.sendall(seed_request())
        sock.recv(1024)

    wait_for(lambda: daemon.log().count("TLS handshake with 127.0.0.1 failed") == 1, 5, "one log line")
    assert "Traceback" not in daemon.log()
    assert exchange(https_address(daemon), seed_request(), tls=pki.client_context()).status == 200


def test_silent_client_does_not_block_other_handshakes(daemon_factory, pki):
    daemon = start_tls_daemon(daemon_factory, pki, "request_timeout = 2")
    silent = [socket.create_connection(https_address(daemon)) for _ in range(5)]
    try:
        answer = exchange(https_address(daemon), seed_request(), tls=pki.client_context(), timeout=1.5)
        assert answer.status == 200
        # The silent ones are dropped after request_timeout, each with one log line.
        wait_for(lambda: daemon.log().count("no handshake within request_timeout") == 5, 10, "handshake timeouts")
    finally:
        for sock in silent:
            sock.close()


def test_mtls_refuses_a_client_without_certificate(daemon_factory, pki):
    daemon = start_tls_daemon(daemon_factory, pki, f"tls_client_ca = {pki.ca_file}")

    # TLS 1.3 reports the missing certificate on the first read, not in the handshake.
    no_certificate = pki.client_context()
    with pytest.raises((ssl.SSLError, ConnectionError)), connect(https_address(daemon), tls=no_certificate) as sock:
        sock.sendall(seed_request())
        sock.recv(1024)
    assert daemon.rows("SELECT count(*) AS n FROM receipts")[0]["n"] == 0


def test_mtls_refuses_a_certificate_from_another_ca(daemon_factory, pki, tmp_path):
    daemon = start_tls_daemon(daemon_factory, pki, f"tls_client_ca = {pki.ca_file}")
    other = make_pki(tmp_path / "other", name="other")
    context = pki.client_context()
    context.load_cert_chain(str(other.client_cert), str(other.client_key))

    with pytest.raises((ssl.SSLError, ConnectionError)), connect(https_address(daemon), tls=context) as sock:
        sock.sendall(seed_request())
        sock.recv(1024)
    assert daemon.rows("SELECT count(*) AS n FROM receipts")[0]["n"] == 0


def test_mtls_stores_the_client_subject(daemon_factory, pki):
    daemon = start_tls_daemon(daemon_factory, pki, f"tls_client_ca = {pki.ca_file}")

    answer = exchange(https_address(daemon), seed_request(), tls=pki.client_context(with_cert=True))

    assert answer.status == 200
    subject = daemon.rows("SELECT tls_client FROM receipts")[0]["tls_client"]
    assert "CN=provider.example" in subject and "O=Connection Software test" in subject
    assert daemon.journal()[0]["tls_client"] == subject


def test_without_mtls_no_client_identity_is_stored(daemon_factory, pki):
    daemon = start_tls_daemon(daemon_factory, pki)

    assert exchange(https_address(daemon), seed_request(), tls=pki.client_context(with_cert=True)).status == 200
    assert daemon.rows("SELECT tls_client FROM receipts")[0]["tls_client"] is None
    assert "tls_client" not in daemon.journal()[0]


def peer_certificate(daemon, pki) -> bytes:
    with connect(https_address(daemon), tls=pki.client_context()) as sock:
        return sock.getpeercert(binary_form=True)


def test_sighup_swaps_the_certificate_for_new_connections_only(daemon_factory, pki, tmp_path):
    daemon = start_tls_daemon(daemon_factory, pki)
    before = peer_certificate(daemon, pki)
    kept = connect(https_address(daemon), tls=pki.client_context())
    kept.sendall(seed_request().replace(b"HTTP/1.0\r\n", b"HTTP/1.1\r\n"))
    assert read_one(kept).status == 200

    renewed = pki.ca.issue_cert("127.0.0.1", "localhost", common_name="renewed")
    renewed.private_key_pem.write_to_path(str(pki.server_key))
    pki.server_cert.write_bytes(b"".join(blob.bytes() for blob in renewed.cert_chain_pems))
    daemon.process.send_signal(signal.SIGHUP)

    after = wait_for(lambda: (cert := peer_certificate(daemon, pki)) != before and cert, 10, "the new certificate")
    assert ssl.DER_cert_to_PEM_cert(after).encode() in pki.server_cert.read_bytes()
    # The connection opened before the reload is still served.
    kept.sendall(seed_request().replace(b"HTTP/1.0\r\n", b"HTTP/1.1\r\n").replace(b"3C7D98A4", b"3C7D98A5"))
    assert read_one(kept).status == 200
    kept.close()


def test_sighup_with_a_bad_certificate_keeps_the_old_one(daemon_factory, pki):
    daemon = start_tls_daemon(daemon_factory, pki)
    before = peer_certificate(daemon, pki)

    pki.server_cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    daemon.process.send_signal(signal.SIGHUP)

    wait_for(lambda: "refused the new certificate" in daemon.log(), 10, "the refusal log line")
    assert peer_certificate(daemon, pki) == before
    assert exchange(https_address(daemon), seed_request(), tls=pki.client_context()).status == 200


def send_test(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlrd", "send-test", url, *options],
                          capture_output=True, text=True, timeout=30)


def test_send_test_over_https(daemon_factory, pki):
    daemon = start_tls_daemon(daemon_factory, pki, f"tls_client_ca = {pki.ca_file}")
    url = next(url for url in daemon.urls if url.startswith("https://")) + "/"

    verified = send_test(url, "--cafile", str(pki.ca_file), "--cert", str(pki.client_cert),
                         "--key", str(pki.client_key))
    unverified = send_test(url, "--cert", str(pki.client_cert), "--key", str(pki.client_key))
    insecure = send_test(url, "--insecure", "--cert", str(pki.client_cert), "--key", str(pki.client_key))

    assert verified.returncode == 0, verified.stderr
    assert "Report: 0" in verified.stdout
    assert unverified.returncode == 5 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
    assert insecure.returncode == 0, insecure.stderr


def test_check_config_refuses_a_key_that_is_not_the_certificates(tmp_path, pki):
    other = make_pki(tmp_path / "other", name="other")
    ini = tmp_path / "bad.ini"
    ini.write_text(f"[server]\ntls_listen = 127.0.0.1:8443\n"
                   f"tls_cert = {pki.server_cert}\ntls_key = {other.server_key}\n")

    result = subprocess.run([sys.executable, "-m", "dlrd", "--config", str(ini), "check-config"],
                            capture_output=True, text=True, timeout=30)

    assert result.returncode == 3  # serve's exit code for the same refusal (dlrd.preflight)
    assert result.stderr.count("\n") == 1 and "tls_cert/tls_key" in result.stderr


def test_post_helper_still_works_over_plain_http(daemon_factory, pki):
    """HTTP beside HTTPS: the plain listener answers a normal POST unchanged."""
    daemon = start_tls_daemon(daemon_factory, pki)
    assert post(daemon.address, seed_request().split(b"\r\n\r\n", 1)[1]).status == 200


def test_a_body_larger_than_one_read_arrives_whole_over_https_and_http(daemon_factory, pki):
    # 300 KiB of trailing whitespace (allowed after the root element) takes many reads of the
    # daemon's 64 KiB buffer, and TLS records of 16 KiB each fill it completely.
    daemon = start_tls_daemon(daemon_factory, pki, "max_body_bytes = 1m")
    padding = b"\n" * (300 * 1024)
    https = post(https_address(daemon), receipt_body("BIGTLS") + padding, tls=pki.client_context())
    plain = post(daemon.address, receipt_body("BIGHTTP") + padding)
    assert soap_report(https) == 0 and soap_report(plain) == 0
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts ORDER BY id")] == [
        "BIGTLS", "BIGHTTP"]


def test_a_certificate_file_without_its_key_says_to_set_tls_key(pki, tmp_path):
    """certbot's fullchain.pem holds no key; OpenSSL alone says only 'PEM lib'."""
    cert = pki.server_cert
    ini = tmp_path / "dlrd.ini"
    ini.write_text(f"[server]\nlisten = 127.0.0.1:0\ntls_listen = 127.0.0.1:0\ntls_cert = {cert}\n"
                   f"[storage]\ndatabase = {tmp_path / 'dlrd.db'}\n[journal]\ndirectory = {tmp_path}\n")
    result = subprocess.run([sys.executable, "-m", "dlrd", "check-config", "--config", str(ini)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert f"{cert} holds no private key: set tls_key" in result.stderr, result.stderr
