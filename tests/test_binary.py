"""The one-file binary as an operator meets it: built once, run under `env -i` from elsewhere, and under
an emulated systemd that checks who sends each notification.

One build per test session (packaging/build-binary.sh, into the repository's dist/), shared by every
test here. The binary runs with an empty environment, from a directory that is not the repository, so
nothing of this checkout's Python can leak into it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree
from tls_certs import make_pki
from wire import exchange, seed_request, wait_for

from dlrd import __version__

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD = ROOT / "systemd"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"


def bare(*command: str | Path, **env: str) -> list[str]:
    """`command` under `env -i`: only the variables given here, as on a machine with no Python set up."""
    return ["env", "-i", *(f"{key}={value}" for key, value in env.items()), *map(str, command)]


def ini_for(directory: Path, server_extra: str = "") -> Path:
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    ini = directory / "dlrd.ini"
    ini.write_text(textwrap.dedent(f"""
        [server]
        listen = 127.0.0.1:0
        path = /, /cgi-bin/deliveryrecript.pl
        {{server_extra}}
        [storage]
        database = {data / "dlrd.db"}
        [journal]
        directory = {data}
    """).replace("{server_extra}", textwrap.dedent(server_extra).strip()))
    return ini


def test_version_runs_from_another_directory_with_an_empty_environment(binary, tmp_path):
    started = time.monotonic()
    result = subprocess.run(bare(binary, "version", TMPDIR=tmp_path), cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)
    elapsed = time.monotonic() - started
    print(f"\ntime to `dlrd version`: {elapsed * 1000:.0f} ms; binary {binary.stat().st_size / 2**20:.1f} MiB")
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, f"dlrd {__version__}", "")
    assert not list(tmp_path.glob("_MEI*")), "the bootloader left its unpacked files behind"


def test_check_config_example_is_the_packages(binary, tmp_path):
    frozen = subprocess.run(bare(binary, "check-config", "--example", TMPDIR=tmp_path), cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    package = subprocess.run([sys.executable, "-m", "dlrd", "check-config", "--example"], capture_output=True,
                             text=True, timeout=30)
    assert frozen.returncode == package.returncode == 0, frozen.stderr
    assert frozen.stdout == package.stdout
    assert "[server]" in frozen.stdout


def test_the_binary_serves_the_seed_sends_over_https_reads_its_database_and_stops_on_sigterm(binary, tmp_path):
    pki = make_pki(tmp_path / "pki")
    ini = ini_for(tmp_path, f"""
        tls_listen = 127.0.0.1:0
        tls_cert = {pki.server_cert}
        tls_key = {pki.server_key}
    """)
    log_path = tmp_path / "dlrd.log"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(bare(binary, "--config", ini, "serve", TMPDIR=tmp_path), cwd=elsewhere,
                                   stdout=log, stderr=log)
    try:
        def urls() -> list[str]:
            assert process.poll() is None, log_path.read_text()
            found = re.findall(r"listening on (\S+)", log_path.read_text())
            return found if len(found) == 2 else []

        http_url, https_url = sorted(wait_for(urls, 30, "the binary to listen on HTTP and HTTPS"))
        print(f"\ntime to ready under `serve`: {(time.monotonic() - started) * 1000:.0f} ms")
        host, port = http_url.removeprefix("http://").rsplit(":", 1)

        answer = exchange((host, int(port)), seed_request())
        assert answer.status == 200
        response = etree.fromstring(answer.body).find(
            f"{{{SOAP11}}}Body/{{http://www.itsarrived.net/dtd/sendsms3}}SubmitDeliveryReceiptResponse")
        assert (response.findtext("MessageIdentifier"), response.findtext("Report")) == ("3C7D98A4", "0")

        sent = subprocess.run(bare(binary, "send-test", https_url + "/", "--cafile", pki.ca_file,
                                   "--message-id", "FROZEN1", TMPDIR=tmp_path),
                              cwd=elsewhere, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "HTTP 200" in sent.stdout and "Report: 0" in sent.stdout

        query = subprocess.run(bare(binary, "--config", ini, "query", "--format", "json", TMPDIR=tmp_path),
                               cwd=elsewhere, capture_output=True, text=True, timeout=30)
        assert query.returncode == 0, query.stderr
        rows = [json.loads(line) for line in query.stdout.splitlines()]  # one receipt per line, as the journal
        assert sorted(row["message_id"] for row in rows) == ["3C7D98A4", "FROZEN1"]

        stats = subprocess.run(bare(binary, "--config", ini, "stats", "--format", "json", TMPDIR=tmp_path),
                               cwd=elsewhere, capture_output=True, text=True, timeout=30)
        assert stats.returncode == 0, stats.stderr
        summary = json.loads(stats.stdout)
        assert (summary["receipts"], summary["by_state"]["delivered"]) == (2, 2)

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert not list(tmp_path.glob("_MEI*")), "the bootloader left its unpacked files behind"


@dataclass
class Notification:
    pid: int
    fields: dict[str, str]


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket that learns each sender's PID from the kernel."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.received: list[Notification] = []

    def next(self, timeout: float) -> Notification:
        self.sock.settimeout(timeout)
        credentials = struct.calcsize("3i")
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(credentials))
        [pid] = [struct.unpack("3i", payload[:credentials])[0] for level, kind, payload in ancillary
                 if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.received.append(Notification(pid, fields))
        return self.received[-1]

    def wait(self, field: str, timeout: float = 30) -> Notification:
        """The next notification that sets `field`, e.g. READY."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {field}= within {timeout} s; got {self.received}")
            try:
                notification = self.next(remaining)
            except TimeoutError:
                continue
            if field in notification.fields:
                return notification

    def close(self) -> None:
        self.sock.close()


def notify_access(*unit_files: Path) -> str:
    """NotifyAccess= as systemd would read it from the unit and its drop-ins (last one wins)."""
    value = "main"  # systemd's default for Type=notify
    for path in unit_files:
        for line in path.read_text().splitlines():
            if line.startswith("NotifyAccess="):
                value = line.split("=", 1)[1].strip()
    return value


def in_cgroup_of(pid: int, main_pid: int) -> bool:
    """Whether `pid` is `main_pid` or descends from it: what lands in the service's cgroup."""
    while pid > 1:
        if pid == main_pid:
            return True
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def accepted(notification: Notification, access: str, main_pid: int) -> bool:
    """systemd's rule (service_notify_message_authorized in systemd 252's service.c); call it while the
    sender still runs, as systemd decides on receipt."""
    if access == "main":
        return notification.pid == main_pid
    if access == "all":
        return in_cgroup_of(notification.pid, main_pid)
    return False


def run_under_emulated_systemd(command: list[str], tmp_path: Path, access: str) -> Iterator[str]:
    """Start `command` as systemd would (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID = its main PID), reload it
    with SIGHUP to the main PID (ExecReload=/bin/kill -HUP $MAINPID), stop it with SIGTERM to the main PID
    (KillMode=mixed), and check every notification's sender. Yields the phases it went through."""
    notify = NotifySocket(tmp_path / "notify.sock")
    ini = ini_for(tmp_path)
    # sh learns its own PID and execs the daemon in place, so WATCHDOG_PID is the PID Popen returns,
    # as systemd sets it to the PID it forked.
    wrapped = bare("/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"', *command, "--config", ini, "serve",
                   NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000", TMPDIR=tmp_path)
    with open(tmp_path / "dlrd.log", "wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(wrapped, cwd=tmp_path, stdout=log, stderr=log)
    main_pid = process.pid
    heard: dict[int, bool] = {}  # sender PID -> accepted, decided while the sender runs

    def expect(field: str) -> None:
        notification = notify.wait(field)
        if notification.pid not in heard:
            heard[notification.pid] = accepted(notification, access, main_pid)
        assert heard[notification.pid], (
            f"{field}= came from PID {notification.pid}; systemd (NotifyAccess={access}) knows {main_pid}")

    try:
        expect("READY")
        yield f"ready in {(time.monotonic() - started) * 1000:.0f} ms"
        expect("WATCHDOG")
        process.send_signal(signal.SIGHUP)
        expect("RELOADING")
        expect("READY")
        expect("WATCHDOG")
        process.send_signal(signal.SIGTERM)
        expect("STOPPING")
        assert process.wait(30) == 0, (tmp_path / "dlrd.log").read_text()
        # The main PID stays the process systemd forked, so systemd keeps its exit status.
        assert not any("MAINPID" in notification.fields for notification in notify.received)
        yield f"senders {sorted({n.pid for n in notify.received})}, main {main_pid}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        notify.close()


def test_package_install_notifies_from_the_main_pid(tmp_path):
    """python -m dlrd is one process: the plain unit's NotifyAccess=main hears it, watchdog included."""
    phases = list(run_under_emulated_systemd([sys.executable, "-m", "dlrd"], tmp_path,
                                             notify_access(SYSTEMD / "dlrd.service")))
    print("\npackage under emulated systemd:", "; ".join(phases))


def test_binary_notifies_so_systemd_with_the_one_file_drop_in_hears_it(binary, tmp_path):
    """The bootloader is the main PID, dlrd its child: the drop-in's NotifyAccess=all lets systemd hear the
    child, and the child feeds the watchdog systemd set for its parent."""
    access = notify_access(SYSTEMD / "dlrd.service", SYSTEMD / "one-file-binary.conf")
    assert access == "all"
    phases = list(run_under_emulated_systemd([str(binary)], tmp_path, access))
    print("\nbinary under emulated systemd:", "; ".join(phases))
    assert not list(tmp_path.glob("_MEI*")), "the bootloader left its unpacked files behind"


def test_binary_unpacked_beside_itself_still_feeds_the_watchdog(binary, tmp_path):
    """TMPDIR is the binary's own directory (/opt/dlrd with TMPDIR=/opt/dlrd, or a binary in /tmp): its
    _MEI* directory then lies beside the executable, and must not pass for a one-directory tree's."""
    import shutil

    copy = tmp_path / "dlrd"
    shutil.copy2(binary, copy)
    access = notify_access(SYSTEMD / "dlrd.service", SYSTEMD / "one-file-binary.conf")
    phases = list(run_under_emulated_systemd([str(copy)], tmp_path, access))  # TMPDIR=tmp_path: beside it
    print("\nbinary unpacked beside itself:", "; ".join(phases))


def test_one_dir_tree_is_one_process_the_plain_unit_hears(binary, tmp_path):
    """dist/dlrd-dir (the .deb's /usr/lib/dlrd) needs no drop-in: it notifies from the PID systemd forked."""
    one_dir = binary.parent / "dlrd-dir" / "dlrd"
    phases = list(run_under_emulated_systemd([str(one_dir)], tmp_path, notify_access(SYSTEMD / "dlrd.service")))
    print("\none-dir tree under emulated systemd:", "; ".join(phases))


def test_binary_needs_the_drop_in(binary, tmp_path):
    """Without NotifyAccess=all systemd would drop READY=1 from the child and time the start out."""
    notify = NotifySocket(tmp_path / "notify.sock")
    ini = ini_for(tmp_path)
    with open(tmp_path / "dlrd.log", "wb") as log:
        process = subprocess.Popen(bare(binary, "--config", ini, "serve", NOTIFY_SOCKET=notify.path,
                                        TMPDIR=tmp_path), cwd=tmp_path, stdout=log, stderr=log)
    try:
        ready = notify.wait("READY")
        assert not accepted(ready, "main", process.pid)
        assert os.path.exists(f"/proc/{ready.pid}") and in_cgroup_of(ready.pid, process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        notify.close()
