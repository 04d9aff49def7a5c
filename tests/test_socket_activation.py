"""Socket activation as systemd does it: a parent binds, forks and hands the sockets to `dlrd serve`.

tests/activation_parent.py plays systemd: fds 3 onward, LISTEN_FDS,
LISTEN_FDNAMES, and LISTEN_PID set to the child's pid. The ini's own
`listen` names a port the test holds, so a dlrd that bound anything
itself would fail to start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from tls_certs import make_pki
from wire import post, receipt_body, soap_report, wait_for

from dlrd.store import connect, migrate

PARENT = Path(__file__).with_name("activation_parent.py")


class Parent:
    """The stand-in for systemd and the dlrd it started, with what each said."""

    def __init__(self, daemon, specs: list[str]) -> None:
        self.daemon = daemon
        daemon.log_path.touch()
        self.log = open(daemon.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, str(PARENT), *specs, "--", sys.executable, "-m", "dlrd", "--config",
             str(daemon.ini), "serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=daemon.directory, text=True)
        self.addresses = {name: tuple(address) for name, address in self.message("addresses").items()}
        self.pid = self.message("started")

    def message(self, key: str):
        line = self.process.stdout.readline()
        assert line, f"the parent ended early:\n{self.daemon.log()}"
        message = json.loads(line)
        assert key in message, message
        return message[key]

    def wait_listening(self, count: int) -> None:
        wait_for(lambda: self.daemon.log(since_start=True).count("listening on") >= count, 20, "dlrd to listen")

    def restart(self) -> None:
        self.process.stdin.write("start\n")
        self.process.stdin.flush()
        self.pid = self.message("started")

    def stop_child(self) -> int:
        os.kill(self.pid, signal.SIGTERM)
        return self.message("exited")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(10)
        self.log.close()


@pytest.fixture
def held_port():
    """A port this test holds, named as the ini's `listen`: dlrd must not try to bind it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def activated(tmp_path, held_port):
    from conftest import Daemon

    started: list[Parent] = []

    def make(specs: list[str], extra: str = "") -> Parent:
        daemon = Daemon(tmp_path / f"d{len(started)}")
        daemon.directory.mkdir()
        daemon.ini.write_text(daemon.config(f"[server]\nlisten = 127.0.0.1:{held_port}\n{extra}"))
        daemon.log_offset = 0
        parent = Parent(daemon, specs)
        started.append(parent)
        return parent

    yield make
    for parent in started:
        if parent.process.poll() is None:
            try:
                os.kill(parent.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            parent.close()


def test_dlrd_serves_http_and_https_on_the_sockets_it_is_handed_and_binds_nothing(activated, tmp_path):
    pki = make_pki(tmp_path / "pki")
    parent = activated(["http=127.0.0.1:0", "https=127.0.0.1:0"],
                       f"tls_cert = {pki.server_cert}\ntls_key = {pki.server_key}\n")
    parent.wait_listening(2)
    log = parent.daemon.log()
    assert "socket activation" in log
    for name, scheme in (("http", "http"), ("https", "https")):
        assert f"listening on {scheme}://127.0.0.1:{parent.addresses[name][1]}" in log, log

    plain = post(parent.addresses["http"], receipt_body("ACT1"))
    secure = post(parent.addresses["https"], receipt_body("ACT2"), tls=pki.client_context())
    assert (plain.status, soap_report(plain)) == (200, 0)
    assert (secure.status, soap_report(secure)) == (200, 0)
    rows = parent.daemon.rows("SELECT message_id FROM receipts ORDER BY id")
    assert [row["message_id"] for row in rows] == ["ACT1", "ACT2"]
    assert parent.stop_child() == 0
    assert "Traceback" not in parent.daemon.log()


def test_a_receipt_sent_while_dlrd_restarts_waits_in_the_backlog_and_is_stored(activated):
    """What socket activation is for: systemd keeps the socket, so a restart refuses no connection."""
    parent = activated(["http=127.0.0.1:0"])
    parent.wait_listening(1)
    assert parent.stop_child() == 0

    with socket.create_connection(parent.addresses["http"], timeout=20) as client:  # accepted by the kernel
        body = receipt_body("ACT3")
        client.sendall(b"POST / HTTP/1.0\r\nHost: r\r\nContent-Type: text/soap\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(body), body))
        parent.restart()
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert [row["message_id"] for row in parent.daemon.rows("SELECT message_id FROM receipts")] == ["ACT3"]


def test_an_https_socket_without_a_certificate_is_refused_at_start_with_what_to_set(activated):
    parent = activated(["https=127.0.0.1:0"])
    assert parent.message("exited") != 0
    log = parent.daemon.log()
    assert "[server] tls_cert is not set" in log and "FileDescriptorName" in log, log


def test_a_datagram_socket_is_refused_at_start_naming_its_fd(tmp_path):
    """A socket unit with ListenDatagram= is a mistake in the unit; dlrd says which fd and why."""
    from conftest import Daemon

    daemon = Daemon(tmp_path / "udp")
    daemon.directory.mkdir()
    daemon.ini.write_text(daemon.config())
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    wrapper = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); "
               "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES='http'); "
               "os.execv(sys.executable, [sys.executable, '-m', 'dlrd', '--config', sys.argv[2], 'serve'])")
    result = subprocess.run([sys.executable, "-c", wrapper, str(udp.fileno()), str(daemon.ini)],
                            pass_fds=[udp.fileno()], capture_output=True, text=True, timeout=30)
    udp.close()
    assert result.returncode != 0
    assert "fd 3 (FileDescriptorName=http) is not a TCP socket" in result.stderr, result.stderr


def test_listen_variables_meant_for_another_process_are_ignored(daemon_factory):
    """LISTEN_PID names the process the sockets are for; inherited by anyone else, they mean nothing."""
    daemon = daemon_factory(env={"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "http"})
    assert "socket activation" not in daemon.log()
    assert soap_report(post(daemon.address, receipt_body("ACT4"))) == 0


def test_an_ini_written_for_the_socket_unit_is_refused_by_a_binding_serve_and_warned_of_elsewhere(tmp_path):
    """listen empty and tls_cert without tls_listen: right for dlrd.socket, wrong for a dlrd that binds.

    check-config and the readers' commands run from a shell, without systemd's variables, on that same
    ini: they warn and go on; only serve, which would listen nowhere, refuses.
    """
    pki = make_pki(tmp_path / "pki")
    data = tmp_path / "data"
    ini = tmp_path / "dlrd.ini"
    ini.write_text(f"[server]\nlisten =\ntls_cert = {pki.server_cert}\ntls_key = {pki.server_key}\n"
                   f"[storage]\ndatabase = {data / 'dlrd.db'}\n[journal]\ndirectory = {data}\n")

    def dlrd(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dlrd", "--config", str(ini), *command],
                              capture_output=True, text=True, timeout=60)

    served = dlrd("serve")
    assert served.returncode != 0 and "dlrd would listen nowhere" in served.stderr, served.stderr
    checked = dlrd("check-config")
    assert checked.returncode == 0, checked.stderr
    assert "would listen nowhere" in checked.stderr and "unless systemd/dlrd.socket" in checked.stderr
    assert "tls_cert: set, but tls_listen is empty" in checked.stderr
    data.mkdir()
    with closing(connect(data / "dlrd.db", 5.0)) as database:  # what the socket-activated serve made
        migrate(database)
    queried = dlrd("query", "--format", "json")
    assert queried.returncode == 0, queried.stderr


def test_sighup_under_socket_activation_reloads_and_does_not_ask_for_a_restart_over_listen(activated):
    """listen is not used under activation: a changed one needs no restart, and a reload keeps serving."""
    parent = activated(["http=127.0.0.1:0"])
    parent.wait_listening(1)
    parent.daemon.ini.write_text(parent.daemon.ini.read_text().replace("listen = ", "listen = 127.0.0.1:1, "))
    os.kill(parent.pid, signal.SIGHUP)
    wait_for(lambda: "SIGHUP: re-reading" in parent.daemon.log(), 10, "the reload")
    assert soap_report(post(parent.addresses["http"], receipt_body("ACT5"))) == 0
    assert "restart dlrd to apply" not in parent.daemon.log()
    assert parent.stop_child() == 0
