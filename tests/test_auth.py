"""Username/PIN and source allow-lists: only the provider gets in, and nothing leaks."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

from wire import exchange, post, seed_request, wait_for

ENVELOPE = seed_request().split(b"\r\n\r\n", 1)[1]
SEED_USERNAME, SEED_PIN = "ANOther.61234", "BLUE.music"
AUTH_INI = f"""
    [auth]
    username = {SEED_USERNAME}
    pin = {SEED_PIN}
"""


def with_credentials(username: str | None, pin: str | None, message_id: str = "3C7D98A4") -> bytes:
    body = ENVELOPE.replace(b"3C7D98A4", message_id.encode())
    for name, value, seed in (("Username", username, SEED_USERNAME), ("PIN", pin, SEED_PIN)):
        line = f'<{name} xsi:type="xsd:string">{seed}</{name}>\n'.encode()
        replacement = b"" if value is None else f'<{name} xsi:type="xsd:string">{value}</{name}>\n'.encode()
        body = body.replace(line, replacement)
    return body


def metric(daemon, name: str) -> float:
    with urllib.request.urlopen(daemon.urls[0] + "/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_right_credentials_are_accepted(daemon_factory):
    daemon = daemon_factory(AUTH_INI)
    answer = post(daemon.address, ENVELOPE)
    assert answer.status == 200 and b">0</Report>" in answer.body
    assert len(daemon.rows("SELECT id FROM receipts")) == 1


def test_every_credential_failure_gets_the_same_fault_and_is_quarantined(daemon_factory):
    daemon = daemon_factory(AUTH_INI)
    cases = {
        "wrong PIN": with_credentials(SEED_USERNAME, "RED.music", "A1"),
        "wrong username": with_credentials("Someone.Else", SEED_PIN, "A2"),
        "no PIN": with_credentials(SEED_USERNAME, None, "A3"),
        "no credentials": with_credentials(None, None, "A4"),
    }

    answers = {case: post(daemon.address, body) for case, body in cases.items()}

    assert {answer.status for answer in answers.values()} == {500}
    assert len({answer.body for answer in answers.values()}) == 1, "the fault must not say which one was wrong"
    body = next(iter(answers.values())).body
    assert b"<faultcode>SOAP-ENV:Client</faultcode>" in body and b"authentication failed" in body
    assert daemon.rows("SELECT count(*) AS n FROM receipts")[0]["n"] == 0
    quarantined = daemon.rows("SELECT reason, body FROM quarantine ORDER BY id")
    assert [row["reason"] for row in quarantined] == ["authentication failed"] * 4
    assert all(b"RED.music" not in row["body"] and SEED_PIN.encode() not in row["body"] for row in quarantined)
    assert b"<PIN xsi:type=\"xsd:string\">[redacted]</PIN>" in quarantined[0]["body"]
    assert metric(daemon, "dlrd_auth_failures_total") == 4
    wait_for(lambda: daemon.log().count("authentication failed") == 4, 5, "four log lines")
    assert "'Someone.Else'" in daemon.log()


def test_pin_never_reaches_logs_database_or_journal(daemon_factory):
    daemon = daemon_factory(AUTH_INI + "\n[log]\nlevel = debug\naccess_log = yes\n")
    post(daemon.address, ENVELOPE)
    post(daemon.address, with_credentials(SEED_USERNAME, "RED.music", "B1"))
    post(daemon.address, with_credentials(SEED_USERNAME, SEED_PIN, "B2").replace(b"447009123456", b"bad"))
    assert daemon.stop() == 0

    for path in [daemon.log_path, *daemon.data.iterdir()]:
        content = path.read_bytes()
        assert SEED_PIN.encode() not in content, path
        assert b"RED.music" not in content, path


def test_pin_from_file_and_from_systemd_credential(daemon_factory, tmp_path):
    pin_file = tmp_path / "pin"
    pin_file.write_text("FILE.pin\n")
    pin_file.chmod(0o600)
    from_file = daemon_factory(f"[auth]\nusername = {SEED_USERNAME}\npin_file = {pin_file}\n", name="file")
    assert post(from_file.address, with_credentials(SEED_USERNAME, "FILE.pin")).status == 200
    assert post(from_file.address, with_credentials(SEED_USERNAME, SEED_PIN, "C1")).status == 500
    assert "readable by every user" not in from_file.log()

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "dlrd-pin").write_text("CRED.pin")
    from_credential = daemon_factory("[auth]\npin_credential = dlrd-pin\n", name="credential",
                                     env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert post(from_credential.address, with_credentials(None, "CRED.pin")).status == 200
    assert post(from_credential.address, with_credentials(None, "FILE.pin", "C2")).status == 500


def test_world_readable_pin_draws_a_warning(daemon_factory):
    daemon = daemon_factory(AUTH_INI)
    os.chmod(daemon.ini, 0o644)
    daemon.stop()
    daemon.start(AUTH_INI)
    assert "readable by every user and holds the PIN" in daemon.log(since_start=True)

    daemon.stop()
    os.chmod(daemon.ini, 0o600)
    daemon.start(AUTH_INI)
    assert "readable by every user" not in daemon.log(since_start=True)


def raw_post_head(length: int, forwarded_for: str | None = None) -> bytes:
    """A POST head announcing a body that is never sent: a 403 must not wait for it."""
    head = f"POST / HTTP/1.1\r\nHost: receiver\r\nContent-Type: text/soap\r\nContent-Length: {length}\r\n"
    if forwarded_for:
        head += f"X-Forwarded-For: {forwarded_for}\r\n"
    return head.encode() + b"\r\n"


def test_source_outside_allow_from_gets_403_before_its_body_is_read(daemon_factory):
    daemon = daemon_factory("[auth]\nallow_from = 192.0.2.0/24, 2001:db8::/32\n")

    answer = exchange(daemon.address, raw_post_head(len(ENVELOPE)), timeout=5)

    assert answer.status == 403
    assert daemon.rows("SELECT count(*) AS n FROM receipts")[0]["n"] == 0
    assert "not in [auth] allow_from" in daemon.log()
    # Monitors are not receipt senders: /healthz stays reachable.
    assert daemon.healthy()


def test_source_inside_allow_from_is_served(daemon_factory):
    daemon = daemon_factory("[auth]\nallow_from = 192.0.2.0/24, 127.0.0.0/8\n")
    assert post(daemon.address, ENVELOPE).status == 200


def test_x_forwarded_for_is_believed_only_from_trusted_proxies(daemon_factory):
    trusting = daemon_factory("[auth]\nallow_from = 203.0.113.0/24\ntrusted_proxies = 127.0.0.1\n", name="proxy")
    allowed = post(trusting.address, ENVELOPE, extra_headers="X-Forwarded-For: 198.51.100.9, 203.0.113.5\r\n")
    refused = exchange(trusting.address, raw_post_head(100, "203.0.113.5, 198.51.100.9"), timeout=5)
    assert allowed.status == 200
    assert refused.status == 403
    assert trusting.rows("SELECT remote_addr FROM receipts")[0]["remote_addr"] == "203.0.113.5"

    untrusting = daemon_factory("[auth]\nallow_from = 203.0.113.0/24\n", name="direct")
    spoofed = exchange(untrusting.address, raw_post_head(100, "203.0.113.5"), timeout=5)
    assert spoofed.status == 403


def test_sighup_applies_new_credentials(daemon_factory):
    daemon = daemon_factory(AUTH_INI)
    assert post(daemon.address, with_credentials(SEED_USERNAME, "NEW.pin", "D1")).status == 500

    daemon.ini.write_text(daemon.config(f"[auth]\nusername = {SEED_USERNAME}\npin = NEW.pin\n"))
    daemon.process.send_signal(1)  # SIGHUP
    wait_for(lambda: post(daemon.address, with_credentials(SEED_USERNAME, "NEW.pin", "D2")).status == 200, 10,
             "the new PIN to be accepted")


def test_send_test_with_credentials(daemon_factory):
    daemon = daemon_factory("[auth]\nusername = op\npin = s3cret\n")

    def send(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dlrd", "send-test", daemon.url, *options],
                              capture_output=True, text=True, timeout=30)

    accepted = send("--username", "op", "--pin", "s3cret")
    refused = send("--username", "op", "--pin", "wrong")

    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert refused.returncode == 4 and "authentication failed" in refused.stdout


def test_the_stored_address_from_x_forwarded_for_is_the_address_normalised(daemon_factory):
    """The header's text was stored raw ("[::ffff:192.0.2.5]"): now the address, as the allow-list reads it."""
    daemon = daemon_factory("[auth]\nallow_from = 192.0.2.0/24, 2001:db8::/32, 127.0.0.1\n"
                            "trusted_proxies = 127.0.0.1\n")
    hops = {"[::ffff:192.0.2.5]": "192.0.2.5", "::ffff:192.0.2.6": "192.0.2.6", "192.0.2.7:4711": "192.0.2.7",
            "[2001:db8::1]:443": "2001:db8::1", "2001:DB8:0::2": "2001:db8::2"}
    for number, hop in enumerate(hops):
        body = ENVELOPE.replace(b"3C7D98A4", f"XFF{number}".encode())
        assert post(daemon.address, body, extra_headers=f"X-Forwarded-For: {hop}\r\n").status == 200, hop

    stored = [row["remote_addr"] for row in daemon.rows("SELECT remote_addr FROM receipts ORDER BY id")]
    assert stored == list(hops.values())
    # A hop that holds no address is neither stored as sent nor allowed.
    refused = exchange(daemon.address, raw_post_head(100, "<script>"), timeout=5)
    assert refused.status == 403
    assert "<script>" not in daemon.log()
