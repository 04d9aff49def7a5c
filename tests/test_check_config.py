"""check-config tells the truth about serve: what serve refuses at start, check-config refuses, with the same line.

Every refusal runs the real `dlrd check-config` and the real `dlrd serve`
on one ini file and compares their exit codes and stderr lines. Write
permissions mean nothing to root, so those cases run dlrd as `nobody`
(uid 65534) when the tests run as root, in a directory under /tmp that
user can reach.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from wire import post, receipt_body, wait_for

from dlrd.config import load_config

DLRD_VARIABLES = ("DLRD_CONFIG", "STATE_DIRECTORY", "LOGS_DIRECTORY", "CREDENTIALS_DIRECTORY", "DLRD_DEBUG")
NOBODY = 65534
RUNNING_AS_ROOT = os.geteuid() == 0


def dlrd(command: str, ini: Path, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    """`dlrd --config INI COMMAND` as an operator runs it; as nobody when asked and the tests run as root."""
    clean = {key: value for key, value in os.environ.items() if key not in DLRD_VARIABLES}
    return subprocess.run([*(as_nobody() if unprivileged and RUNNING_AS_ROOT else []), sys.executable, "-m", "dlrd",
                           "--config", str(ini), command], cwd=ini.parent, env=clean, capture_output=True, text=True,
                          timeout=30)


def as_nobody() -> list[str]:
    """setpriv, not subprocess's user=: it changes user at exec, so an interpreter under /root (pyenv) still runs."""
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, and setpriv (util-linux) is not installed to drop to nobody")
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if not _runs_as_nobody(tuple(command)):
        pytest.skip(f"{sys.executable} cannot run as nobody (a shared libpython under a directory only root may "
                    "enter, like pyenv's in /root)")
    return command


@functools.cache
def _runs_as_nobody(command: tuple[str, ...]) -> bool:
    probe = subprocess.run([*command, sys.executable, "-c", "import dlrd"], capture_output=True, timeout=30)
    return probe.returncode == 0


def refusal_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("dlrd: ")]
    assert len(lines) == 1, f"expected one refusal line, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return lines[0]


def assert_both_refuse(ini: Path, *parts: str, unprivileged: bool = False) -> str:
    """check-config and serve both exit 3 with the same one line naming `parts`; serve starts nothing."""
    checked = dlrd("check-config", ini, unprivileged)
    served = dlrd("serve", ini, unprivileged)

    assert checked.returncode == served.returncode == 3, (checked.stderr, served.stderr)
    assert checked.stdout == ""
    line = refusal_line(checked)
    assert refusal_line(served) == line
    for part in parts:
        assert part in line, f"{part!r} missing from {line!r}"
    assert "None" not in line
    assert "listening" not in served.stderr
    return line


def write_ini(directory: Path, data: Path, journal: Path | None = None, extra: str = "",
              listen: str = "127.0.0.1:0") -> Path:
    ini = directory / "dlrd.ini"
    ini.write_text(f"[server]\nlisten = {listen}\n{extra}\n"
                   f"[storage]\ndatabase = {data / 'dlrd.db'}\n"
                   f"[journal]\ndirectory = {journal or data}\n")
    ini.chmod(0o644)
    return ini


def directory_of(parent: Path, name: str, writable: bool) -> Path:
    """A directory the unprivileged dlrd may or may not write (root-owned 0755 when run as root, else 0555)."""
    path = parent / name
    path.mkdir()
    path.chmod(0o777 if writable else 0o755 if RUNNING_AS_ROOT else 0o555)
    return path


def test_an_unwritable_database_directory_is_refused_by_both(shared_dir):
    data = directory_of(shared_dir, "state", writable=False)
    journal = directory_of(shared_dir, "logs", writable=True)
    ini = write_ini(shared_dir, data, journal)

    assert_both_refuse(ini, "[storage] database", f"cannot create files in {data}", "Permission denied",
                       "StateDirectory=", unprivileged=True)
    assert list(data.iterdir()) == list(journal.iterdir()) == []


def test_a_database_directory_that_cannot_be_created_is_refused_by_both(shared_dir):
    parent = directory_of(shared_dir, "state", writable=False)
    ini = write_ini(shared_dir, parent / "dlrd", directory_of(shared_dir, "logs", writable=True))

    assert_both_refuse(ini, "[storage] database", f"{parent / 'dlrd'} does not exist and cannot be created in "
                       f"{parent}", unprivileged=True)


def test_an_unwritable_journal_directory_is_refused_by_both_and_no_database_is_created(shared_dir):
    data = directory_of(shared_dir, "state", writable=True)
    journal = directory_of(shared_dir, "logs", writable=False)
    ini = write_ini(shared_dir, data, journal)

    assert_both_refuse(ini, "[journal] directory", f"cannot create files in {journal}", "LogsDirectory=",
                       unprivileged=True)
    assert list(data.iterdir()) == []


def test_a_database_path_that_is_a_directory_is_refused_by_both(tmp_path):
    (tmp_path / "data" / "dlrd.db").mkdir(parents=True)
    ini = write_ini(tmp_path, tmp_path / "data")

    assert_both_refuse(ini, "[storage] database", f"{tmp_path / 'data' / 'dlrd.db'} is a directory",
                       f"like {tmp_path / 'data' / 'dlrd.db' / 'dlrd.db'}")


def test_a_database_that_is_not_sqlite_is_refused_by_both_and_left_alone(tmp_path):
    database = tmp_path / "data" / "dlrd.db"
    database.parent.mkdir()
    database.write_text("receipts,kept,as,csv\n")
    ini = write_ini(tmp_path, tmp_path / "data")

    assert_both_refuse(ini, "[storage] database", f"{database} is not an SQLite database")
    assert database.read_text() == "receipts,kept,as,csv\n"
    assert sorted(path.name for path in database.parent.iterdir()) == ["dlrd.db"]


def test_a_database_file_dlrd_cannot_write_is_refused_by_both_and_left_alone(shared_dir):
    data = directory_of(shared_dir, "state", writable=True)
    database = data / "dlrd.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE kept (x)")
    database.chmod(0o644 if RUNNING_AS_ROOT else 0o444)
    before = database.read_bytes()
    ini = write_ini(shared_dir, data)

    assert_both_refuse(ini, "[storage] database", f"cannot write {database}", "Permission denied",
                       "StateDirectory=", unprivileged=True)
    assert database.read_bytes() == before
    assert sorted(path.name for path in data.iterdir()) == ["dlrd.db"]


def test_a_database_from_a_newer_dlrd_is_refused_by_both(tmp_path):
    from dlrd.store import SCHEMA_VERSION

    database = tmp_path / "data" / "dlrd.db"
    database.parent.mkdir()
    with sqlite3.connect(database) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    ini = write_ini(tmp_path, tmp_path / "data")

    assert_both_refuse(ini, "[storage] database", f"{database} has schema version {SCHEMA_VERSION + 1}, "
                       f"newer than this dlrd ({SCHEMA_VERSION})", "restore a backup")


def test_a_journal_directory_that_is_a_file_is_refused_by_both(tmp_path):
    journal = tmp_path / "logs"
    journal.write_text("not a directory\n")
    ini = write_ini(tmp_path, tmp_path / "data", journal)

    assert_both_refuse(ini, "[journal] directory", f"{journal} is not a directory")


def test_a_listen_address_this_machine_does_not_have_is_refused_by_both(tmp_path):
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to a real machine.
    ini = write_ini(tmp_path, tmp_path / "data", listen="192.0.2.1:8080")

    assert_both_refuse(ini, "[server] listen", "cannot listen on 192.0.2.1:8080",
                       "not an address of this machine")
    assert not (tmp_path / "data").exists()


def unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def holds_cap_net_bind_service() -> bool:
    status = Path("/proc/self/status").read_text()
    return bool(int(re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.M).group(1), 16) >> 10 & 1)


def test_port_80_without_the_capability_is_refused_by_both(shared_dir):
    if unprivileged_port_start() <= 80:
        pytest.skip(f"net.ipv4.ip_unprivileged_port_start is {unprivileged_port_start()}: anyone may bind 80 here")
    if not RUNNING_AS_ROOT and holds_cap_net_bind_service():
        pytest.skip("this user holds CAP_NET_BIND_SERVICE and is not root, so it cannot drop it for the test")
    data = directory_of(shared_dir, "data", writable=True)
    ini = write_ini(shared_dir, data, listen="127.0.0.1:80")

    assert_both_refuse(ini, "[server] listen", "127.0.0.1:80", "CAP_NET_BIND_SERVICE",
                       "AmbientCapabilities=CAP_NET_BIND_SERVICE", "ip_unprivileged_port_start",
                       f"{unprivileged_port_start()} or above",
                       unprivileged=True)
    assert list(data.iterdir()) == []


@pytest.mark.skipif(not RUNNING_AS_ROOT, reason="only root holds CAP_NET_BIND_SERVICE here")
def test_port_80_with_the_capability_passes_the_check(tmp_path):
    ini = write_ini(tmp_path, tmp_path / "data", listen="127.0.0.1:80")

    result = dlrd("check-config", ini)

    assert result.returncode == 0, result.stderr


def self_signed(directory: Path, not_after: datetime) -> tuple[Path, Path]:
    """A certificate and key valid until `not_after`: trustme cannot back-date one, cryptography (its base) can."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(days=90)).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def tls_extra(cert: Path, key: Path) -> str:
    return f"tls_listen = 127.0.0.1:0\ntls_cert = {cert}\ntls_key = {key}"


def test_an_expired_certificate_is_refused_by_both(tmp_path):
    cert, key = self_signed(tmp_path / "tls", datetime.now(UTC) - timedelta(days=2, hours=1))
    ini = write_ini(tmp_path, tmp_path / "data", extra=tls_extra(cert, key))

    assert_both_refuse(ini, "[server] tls_cert", str(cert), "expired 2 day(s) ago", "renew")
    assert not (tmp_path / "data").exists()


def test_a_certificate_expiring_in_10_days_draws_the_same_warning_from_both(tmp_path, daemon_factory):
    cert, key = self_signed(tmp_path / "tls", datetime.now(UTC) + timedelta(days=10, hours=1))
    ini = write_ini(tmp_path, tmp_path / "data", extra=tls_extra(cert, key))

    checked = dlrd("check-config", ini)
    daemon = daemon_factory(f"[server]\n{tls_extra(cert, key)}", wait=False)
    daemon.wait_listening(count=2)

    assert checked.returncode == 0, checked.stderr
    [warning] = re.findall(r"^dlrd: warning: (.*)$", checked.stderr, re.M)
    assert warning == f"the TLS certificate {cert} expires in 10.0 day(s); renew it and send SIGHUP"
    assert daemon.log().count(warning) == 1, daemon.log()


@pytest.mark.parametrize("missing", ["tls_cert", "tls_key"])
def test_a_missing_certificate_file_is_named_by_both(tmp_path, missing):
    cert, key = self_signed(tmp_path / "tls", datetime.now(UTC) + timedelta(days=60))
    absent = tmp_path / "tls" / "absent.pem"
    ini = write_ini(tmp_path, tmp_path / "data",
                    extra=tls_extra(absent, key) if missing == "tls_cert" else tls_extra(cert, absent))

    assert_both_refuse(ini, f"[server] {missing}: {absent}: no such file")


def test_a_key_that_is_not_the_certificates_is_refused_by_both_naming_both_files(tmp_path):
    cert, _ = self_signed(tmp_path / "tls", datetime.now(UTC) + timedelta(days=60))
    _, other_key = self_signed(tmp_path / "other", datetime.now(UTC) + timedelta(days=60))
    ini = write_ini(tmp_path, tmp_path / "data", extra=tls_extra(cert, other_key))

    assert_both_refuse(ini, "[server] tls_cert/tls_key", f"cannot load {cert} with key {other_key}",
                       "is the key the certificate's")
    assert not (tmp_path / "data").exists()


def test_a_key_dlrd_may_not_read_is_named_by_both(shared_dir):
    cert, key = self_signed(shared_dir / "tls", datetime.now(UTC) + timedelta(days=60))
    (shared_dir / "tls").chmod(0o755)
    cert.chmod(0o644)
    key.chmod(0o600 if RUNNING_AS_ROOT else 0o000)
    data = directory_of(shared_dir, "data", writable=True)
    ini = write_ini(shared_dir, data, extra=tls_extra(cert, key))

    assert_both_refuse(ini, f"[server] tls_key: {key}: permission denied", "certbot keys are root-only",
                       unprivileged=True)


def test_a_good_config_passes_and_prints_the_settings_serve_runs_with(tmp_path):
    cert, key = self_signed(tmp_path / "tls", datetime.now(UTC) + timedelta(days=60))
    ini = write_ini(tmp_path, tmp_path / "data", extra=tls_extra(cert, key))

    result = dlrd("check-config", ini)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"database = {tmp_path / 'data' / 'dlrd.db'}" in result.stdout
    assert f"tls_cert = {cert}" in result.stdout
    assert "# report codes in effect" in result.stdout
    assert not (tmp_path / "data").exists()


def test_check_config_creates_and_changes_nothing_in_a_used_data_directory(daemon_factory):
    daemon = daemon_factory()
    post(daemon.address, receipt_body("CHECKED1"))
    assert daemon.stop() == 0
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in daemon.data.iterdir()}

    result = dlrd("check-config", daemon.ini)

    assert result.returncode == 0, result.stderr
    assert {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in daemon.data.iterdir()} == before


def test_check_config_prints_the_report_code_table_with_the_ini_overrides_marked(tmp_path):
    ini = write_ini(tmp_path, tmp_path / "data")
    ini.write_text(ini.read_text() + "[report_codes]\n27 = Expired, really, failed, yes\n"
                                     "99 = Held for review, pending, no\n")

    result = dlrd("check-config", ini)

    assert result.returncode == 0, result.stderr
    table = result.stdout.split("# report codes in effect\n", 1)[1].splitlines()
    assert re.fullmatch(r"# code  label +state +final +from", table[0])
    rows = {int(line.split()[1]): line for line in table[1:]}
    assert re.fullmatch(r"# +0  Accepted by phone +delivered +yes +built-in", rows[0])
    assert re.fullmatch(r"# +27  Expired, really +failed +yes +\[report_codes\], replaces built-in", rows[27])
    assert re.fullmatch(r"# +99  Held for review +pending +no +\[report_codes\]", rows[99])
    assert list(rows) == sorted(rows) and {-4, -3, 0, 2, 28} <= set(rows)
    header = table[0]
    for column in ("label", "state", "final", "from"):
        at = header.index(column)
        assert all(line[at - 2:at] == "  " and line[at] != " " for line in table[1:]), f"{column} is not aligned"
    # The table is ini comments: the whole output still loads as the same configuration.
    effective = tmp_path / "effective.ini"
    effective.write_text(result.stdout)
    assert load_config(str(effective), environ={}).report_codes == load_config(str(ini), environ={}).report_codes


def test_sighup_refuses_an_expired_certificate_and_keeps_serving_the_old_one(tmp_path, daemon_factory):
    cert, key = self_signed(tmp_path / "tls", datetime.now(UTC) + timedelta(days=60))
    daemon = daemon_factory(f"[server]\n{tls_extra(cert, key)}", wait=False)
    daemon.wait_listening(count=2)
    served = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    expired_cert, expired_key = self_signed(tmp_path / "expired", datetime.now(UTC) - timedelta(days=1, hours=1))
    cert.write_bytes(expired_cert.read_bytes())
    key.write_bytes(expired_key.read_bytes())

    daemon.process.send_signal(signal.SIGHUP)

    wait_for(lambda: "refused the new certificate" in daemon.log(since_start=True), 10, "the refusal")
    assert f"{cert} expired 1 day(s) ago" in daemon.log(since_start=True)
    assert served_certificate(daemon) == served


def served_certificate(daemon) -> bytes:
    host, port = next(url for url in daemon.urls if url.startswith("https://")).removeprefix("https://").split(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
        return tls.getpeercert(binary_form=True)
