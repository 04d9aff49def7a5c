"""Attacks the threaded server must survive, each tried first against the asyncio server it replaced.

- 256 silent sockets from a host outside allow_from took every connection
  slot: the provider got 0 of 24 requests through, on HTTP and HTTPS.
- A keep-alive client that stopped reading with a few KB of answers unsent
  kept its slot for as long as it held the socket.
- An idle HTTPS connection cost about 300 KiB, not given back.
- A head ended by LF then an empty CRLF line was not seen as ended, so a
  pipelined POST was swallowed as a GET's headers; a bare CR was accepted.
- And the threaded design's own risk: idle kept-alive connections must not
  keep a new client out.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import struct
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from test_tls import https_address
from tls_certs import make_pki
from wire import connect, exchange, parse_answer, read_one, read_until_closed, receipt_body, soap_report, wait_for

PROVIDER, ATTACKER = "127.0.0.1", "127.0.0.2"
SILENT = 256
PROVIDER_REQUESTS = 24


def rss_kib(pid: int) -> int:
    return int(re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def metric(daemon, name: str, labels: str = "") -> float:
    body = exchange(daemon.address, b"GET /metrics HTTP/1.0\r\n\r\n").body.decode()
    pattern = "^" + re.escape(name) + (re.escape("{" + labels + "}") if labels else r"(?:\{\})?") + r" (\S+)$"
    match = re.search(pattern, body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def silent_sockets(address: tuple[str, int], count: int, source: str) -> list[socket.socket]:
    """`count` connections from `source` that send nothing; those the daemon closes at once are closed here too."""
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            continue
        held.append(sock)
    return held


def provider_receipts(address: tuple[str, int], tls: ssl.SSLContext | None, prefix: str) -> int:
    """How many of PROVIDER_REQUESTS receipts from 127.0.0.1 are stored, each on a new connection, promptly."""
    stored = 0
    for number in range(PROVIDER_REQUESTS):
        body = receipt_body(f"{prefix}{number:02d}")
        head = (b"POST / HTTP/1.0\r\nHost: receiver\r\nContent-Type: text/soap\r\nContent-Length: %d\r\n\r\n"
                % len(body))
        try:
            with socket.create_connection(address, timeout=3, source_address=(PROVIDER, 0)) as raw:
                sock = tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw
                sock.sendall(head + body)
                answer, _ = parse_answer(read_until_closed(sock))
        except (OSError, ValueError):
            continue
        stored += soap_report(answer) == 0
    return stored


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def tls_daemon(daemon_factory, pki, server: str = "", auth: str = ""):
    """A daemon on plain HTTP and HTTPS, with more [server] and [auth] lines."""
    ini = (f"[server]\nlisten = 127.0.0.1:0\ntls_listen = 127.0.0.1:0\ntls_cert = {pki.server_cert}\n"
           f"tls_key = {pki.server_key}\n{server}\n[auth]\n{auth}\n")
    daemon = daemon_factory(ini, wait=False)
    daemon.wait_listening(count=2)
    return daemon


def post_request(message_id: str) -> bytes:
    body = receipt_body(message_id)
    return b"POST / HTTP/1.0\r\nHost: r\r\nContent-Type: text/soap\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_silent_sockets_from_one_host_cannot_take_the_providers_connections(daemon_factory, pki, scheme):
    """Only max_connections_per_source limits them here: the attacker is allowed to connect (no allow_from)."""
    daemon = tls_daemon(daemon_factory, pki, "request_timeout = 30\nmax_connections = 256")
    address = https_address(daemon) if scheme == "https" else daemon.address
    with ExitStack() as stack:
        for sock in silent_sockets(address, SILENT, ATTACKER):
            stack.callback(sock.close)
        held = wait_for(lambda: (count := metric(daemon, "dlrd_connections_open")) >= 32 and count, 10,
                        "the attacker's connections")
        assert held <= 32 + 1, "one source held more than max_connections_per_source (32)"
        stored = provider_receipts(address, pki.client_context() if scheme == "https" else None, f"PS{scheme}")
    assert stored == PROVIDER_REQUESTS
    assert metric(daemon, "dlrd_requests_refused_total",
                  'reason="max-connections-per-source",status="closed"') >= SILENT - 32
    assert daemon.log().count("max_connections_per_source") == 1, "logged once a minute, not per connection"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_host_outside_allow_from_and_monitor_allow_from_is_closed_as_it_connects(daemon_factory, pki, scheme):
    daemon = tls_daemon(daemon_factory, pki, "request_timeout = 30\nmax_connections = 256\n"
                        "max_connections_per_source = 256\nmonitor_allow_from = 127.0.0.1", "allow_from = 127.0.0.1")
    address = https_address(daemon) if scheme == "https" else daemon.address
    with ExitStack() as stack:
        attackers = silent_sockets(address, SILENT, ATTACKER)
        for sock in attackers:
            stack.callback(sock.close)
        stored = provider_receipts(address, pki.client_context() if scheme == "https" else None, f"AF{scheme}")
        for sock in attackers[:5]:
            sock.settimeout(5)
            assert sock.recv(1) == b"", "an attacker's connection was held open"
    assert stored == PROVIDER_REQUESTS
    assert metric(daemon, "dlrd_requests_refused_total", 'reason="allow-from",status="closed"') >= SILENT
    assert metric(daemon, "dlrd_tls_handshake_failures_total") == 0, "a handshake was spent on a refused source"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_kept_alive_client_that_stops_reading_loses_its_connection(daemon_factory, pki, scheme):
    """Over TLS the asyncio server held such a connection for as long as the client held it (60 s and more)."""
    daemon = tls_daemon(daemon_factory, pki, "request_timeout = 1\nkeepalive_timeout = 2")
    address = https_address(daemon) if scheme == "https" else daemon.address
    with socket.socket() as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        raw.connect(address)
        sock = pki.client_context().wrap_socket(raw, server_hostname="127.0.0.1") if scheme == "https" else raw
        # A few KB of answers, and more than the kernel's socket buffers take, that it will never read.
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: receiver\r\n\r\n" * 20)
        started = time.monotonic()
        wait_for(lambda: metric(daemon, "dlrd_connections_open") == 1, 2 + 1 + 3,
                 "the daemon to close the connection that does not read")
    assert time.monotonic() - started < 6


def test_max_connections_idle_kept_alive_connections_do_not_keep_a_new_client_out(daemon_factory):
    limit = 20
    daemon = daemon_factory(f"[server]\nmax_connections = {limit}\nkeepalive_timeout = 60\n")
    idle = [connect(daemon.address) for _ in range(limit)]
    try:
        for sock in idle:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\n\r\n")
            assert read_one(sock).status == 200
        # All of max_connections are open and idle, kept alive for a minute.
        started = time.monotonic()
        answer = exchange(daemon.address, post_request("NEWCLIENT"), timeout=5)
        assert soap_report(answer) == 0
        assert time.monotonic() - started < 1.0
        closed = 0
        for sock in idle:
            sock.settimeout(0.2)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass
        assert closed >= 1, "no idle connection was closed to make room"
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.slow
def test_two_hundred_idle_tls_connections_cost_under_20_mb_given_back_after(daemon_factory, pki):
    """The asyncio server kept about 270 KiB per idle TLS connection (54 MB for 200), never given back."""
    daemon = tls_daemon(daemon_factory, pki, "max_connections = 400\nmax_connections_per_source = 400\n"
                                             "keepalive_timeout = 120")
    pid = daemon.process.pid
    address = https_address(daemon)
    context = pki.client_context()

    def threads() -> int:
        return len(list(Path(f"/proc/{pid}/task").iterdir()))

    def closed_and_retired() -> int:
        """RSS once the connections closed and the request threads retired (after 5 s idle)."""
        wait_for(lambda: threads() <= threads_idle and metric(daemon, "dlrd_connections_open") == 1, 30,
                 "the connections to close and the request threads to retire")
        return rss_kib(pid)

    def burst() -> int:
        """Open 200 TLS connections, each answered once and then idle; the RSS they cost while idle."""
        before = rss_kib(pid)
        connections = []
        try:
            for _ in range(200):
                sock = connect(address, tls=context)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
                assert read_one(sock).status == 200
                connections.append(sock)
            # Idle: parked in the selector, holding no thread (the pool retires idle threads after 5 s).
            wait_for(lambda: threads() <= threads_idle, 30, "the request threads to retire while the connections idle")
            assert metric(daemon, "dlrd_connections_open") == 201
            return rss_kib(pid) - before
        finally:
            for sock in connections:
                sock.close()

    threads_idle = threads()
    rss_idle = rss_kib(pid)
    grown = burst()
    assert grown < 20 * 1024, f"200 idle TLS connections cost {grown} KiB"
    # The heap is trimmed within TRIM_SECONDS of the burst's end, and RSS comes down from the burst's
    # peak. Not all of it: on this Debian 12 machine about 30 % came back (rss_idle 33.9 MB, grown
    # 5.0 MB, 1.4 MB back), leaving the old "three quarters back" bound 150-250 KiB from failing either
    # way from one run to the next. What stays is reused, which the second burst below checks.
    wait_for(lambda: rss_kib(pid) < rss_idle + grown - grown // 8, 60, "the burst's memory to be given back")
    after_first = closed_and_retired()
    burst()
    closed_and_retired()
    # And what stays is reused: once trimmed, a second burst leaves no more behind than the first.
    wait_for(lambda: rss_kib(pid) < after_first + 2 * 1024, 60,
             f"RSS to come back to the first burst's {after_first} KiB")


def test_a_head_ended_by_lf_then_an_empty_crlf_line_ends_there(daemon_factory):
    """The pipelined POST after it is a request of its own, not part of the GET's head."""
    daemon = daemon_factory()
    body = receipt_body("AFTERLF")
    raw = (b"GET /healthz HTTP/1.1\nHost: r\n\r\n"
           b"POST / HTTP/1.1\r\nHost: r\r\nContent-Type: text/soap\r\nConnection: close\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body) + body)
    with connect(daemon.address) as sock:
        sock.sendall(raw)
        data = read_until_closed(sock)
    health, rest = parse_answer(data)
    stored, _ = parse_answer(rest)
    assert health.status == 200
    assert soap_report(stored) == 0
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")] == ["AFTERLF"]


@pytest.mark.parametrize("raw", [
    b"GET /healthz HTTP/1.1\r\nHost: r\r\r\n\r\n",
    b"GET /healthz HTTP/1.1\rHost: r\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: r\r\nX-A: b\rc\r\n\r\n",
], ids=["cr-before-crlf", "cr-as-line-end", "cr-inside-a-value"])
def test_a_bare_cr_in_a_head_is_400(daemon_factory, raw):
    daemon = daemon_factory()
    with connect(daemon.address) as sock:
        sock.sendall(raw)
        answer, _ = parse_answer(read_until_closed(sock))
    assert answer.status == 400
    assert answer.header("connection") == "close"


def test_connections_closing_by_the_thousand_leave_no_thread_or_slot_behind(daemon_factory):
    """A client reset at every stage: before its head, mid-body, before reading its answer."""
    daemon = daemon_factory("[server]\nmax_connections_per_source = 256\n")
    request = post_request("RESET")

    def client(number: int) -> None:
        sock = socket.create_connection(daemon.address)
        stage = number % 3
        if stage >= 1:
            sock.sendall(request[:-800] if stage == 1 else request)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset

    threads = [threading.Thread(target=lambda n=n: [client(n * 100 + k) for k in range(100)]) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    wait_for(lambda: metric(daemon, "dlrd_connections_open") == 1, 15, "every reset connection to be released")
    assert "Traceback" not in daemon.log()
    assert daemon.healthy()


def test_claims_for_connections_that_waited_twice_leave_the_idle_thread_alive(daemon_factory, pki):
    """A kept-alive TLS connection that gets bytes making no plaintext waits in the idle selector twice with
    one deadline; two claims for it at max_connections closed it twice and killed the idle thread, after
    which every new connection was refused."""
    daemon = tls_daemon(daemon_factory, pki, "max_connections = 4\nmax_connections_per_source = 4")
    tls = connect(https_address(daemon), tls=pki.client_context())
    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
    assert read_one(tls).status == 200
    for piece in (b"\x17\x03\x03\x00\x40", b"\x00" * 10, b"\x00" * 10, b"\x00" * 10):
        socket.socket.send(tls, piece)  # raw bytes below TLS: part of a record that never completes
        time.sleep(0.1)  # the pacing of the attack itself: each piece wakes the connection once
    kept = []
    for host in range(3, 6):
        sock = socket.create_connection(daemon.address, source_address=(f"127.0.0.{host}", 0))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
        assert read_one(sock).status == 200
        kept.append(sock)
    answers: list[int] = []

    def newcomer(host: int) -> None:
        try:
            with socket.create_connection(daemon.address, timeout=5, source_address=(f"127.0.0.{host}", 0)) as sock:
                sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                answers.append(parse_answer(read_until_closed(sock))[0].status)
        except (OSError, ValueError):
            answers.append(0)

    newcomers = [threading.Thread(target=newcomer, args=(host,)) for host in range(10, 22)]
    for thread in newcomers:
        thread.start()
    for thread in newcomers:
        thread.join(30)
    tls.close()
    for sock in kept:
        sock.close()

    assert "internal error" not in daemon.log() and "Traceback" not in daemon.log(), daemon.log()
    wait_for(lambda: metric(daemon, "dlrd_connections_open") == 1, 10, "every connection to be let go")
    assert exchange(daemon.address, b"GET /healthz HTTP/1.0\r\n\r\n").status == 200


@pytest.mark.slow
def test_no_receipt_is_stored_unanswered_when_connections_are_reclaimed_under_load(daemon_factory):
    """Reclaiming a kept-alive connection just as its next request came in served that request and dropped
    its answer: 2,253 of about 20,000 receipts were stored but never answered."""
    daemon = daemon_factory("[server]\nmax_connections = 20\nmax_connections_per_source = 8\n")
    stop = threading.Event()
    unanswered: list[str] = []
    answered: list[str] = []
    counter = iter(range(10**9))

    def keep_posting(host: int) -> None:
        sock = None
        while not stop.is_set():
            message_id = f"R{next(counter)}"
            body = receipt_body(message_id)
            try:
                if sock is None:
                    sock = socket.create_connection(daemon.address, timeout=10,
                                                    source_address=(f"127.0.0.{host}", 0))
                sock.sendall(b"POST / HTTP/1.1\r\nHost: r\r\nContent-Type: text/soap\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body)
                answer = read_one(sock)
            except (OSError, ConnectionError):
                unanswered.append(message_id)
                if sock is not None:
                    sock.close()
                sock = None
                continue
            assert soap_report(answer) == 0
            answered.append(message_id)
            if answer.header("connection") == "close":
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def newcomers(host: int) -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(daemon.address, timeout=5, source_address=(f"127.0.0.{host}", 0)) as s:
                    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                    read_until_closed(s)
            except OSError:
                pass

    threads = [threading.Thread(target=keep_posting, args=(2 + number % 8,)) for number in range(20)]
    threads += [threading.Thread(target=newcomers, args=(host,)) for host in (20, 21)]
    for thread in threads:
        thread.start()
    stop.wait(8)  # the load runs for this long
    stop.set()
    for thread in threads:
        thread.join(30)

    stored = {row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")}
    assert answered and set(answered) <= stored
    assert stored & set(unanswered) == set(), "receipts stored whose client never got an answer"


def test_a_kept_alive_connection_answered_just_before_sigterm_is_closed_at_once(daemon_factory):
    daemon = daemon_factory()
    slow = connect(daemon.address)
    body = receipt_body("SLOWSTOP")
    slow.sendall(b"POST / HTTP/1.1\r\nHost: r\r\nContent-Type: text/soap\r\nContent-Length: %d\r\n\r\n" % len(body)
                 + body[:100])  # in progress: keeps the stop's grace going
    idle = connect(daemon.address)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
    assert read_one(idle).status == 200
    daemon.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    idle.settimeout(10)
    assert idle.recv(1) == b""
    assert time.monotonic() - started < 1.5, "the idle connection waited for the grace"
    slow.close()
    idle.close()
    assert daemon.process.wait(30) == 0
    daemon.process = None
