"""Deadlines against slow clients, on a real daemon with short timeouts.

A client that dribbles its head, dribbles its body below min_body_rate,
or holds a connection without sending anything is cut off on time; a slow
but steady body above the minimum rate is not.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from conftest import Daemon
from wire import connect, exchange, parse_answer, read_one, seed_request, wait_for

REQUEST_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 2.0
MIN_BODY_RATE = 1000
# The sweeper looks every 0.5 s; allow for it and a loaded CI machine.
SLACK = 1.5

INI = f"""
[server]
request_timeout = {REQUEST_TIMEOUT:g}
keepalive_timeout = {KEEPALIVE_TIMEOUT:g}
min_body_rate = {MIN_BODY_RATE}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    daemon = Daemon(tmp_path_factory.mktemp("timeouts")).start(INI)
    yield daemon
    assert daemon.stop() == 0, daemon.log()


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))


def open_connections(daemon: Daemon) -> float:
    metrics = exchange(daemon.address, b"GET /metrics HTTP/1.0\r\n\r\n").body.decode()
    return float(re.search(r"^dlrd_connections_open (\S+)$", metrics, re.MULTILINE).group(1))


def dribble(sock: socket.socket, pieces: list[bytes], interval: float, give_up: float = 10.0) -> tuple[bytes, float]:
    """Send `pieces` one per `interval` until the server answers or closes.

    The pacing is the wait for the server's answer: each recv waits at most
    `interval`. Returns what the server sent and the seconds from the first
    piece until the connection was closed.
    """
    started = time.monotonic()
    received = b""
    index = 0
    sock.settimeout(interval)
    while time.monotonic() - started < give_up:
        if index < len(pieces):
            try:
                sock.sendall(pieces[index])
            except (BrokenPipeError, ConnectionResetError):
                return received, time.monotonic() - started
            index += 1
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def test_a_client_dribbling_its_head_gets_408_after_request_timeout(daemon):
    head = b"POST / HTTP/1.1\r\nHost: receiver\r\nContent-Type: text/soap\r\n" + b"X-Padding: a\r\n" * 200
    with connect(daemon.address) as sock:
        received, elapsed = dribble(sock, [head[i:i + 1] for i in range(len(head))], interval=0.1)
    answer, _ = parse_answer(received)
    assert answer.status == 408
    assert answer.header("connection") == "close"
    assert answer.header("server") == "dlrd"
    assert REQUEST_TIMEOUT - 0.1 <= elapsed <= REQUEST_TIMEOUT + SLACK


def test_a_connection_that_never_sends_is_closed_after_request_timeout(daemon):
    with connect(daemon.address) as sock:
        received, elapsed = dribble(sock, [], interval=0.1)
    assert received == b""
    assert elapsed <= REQUEST_TIMEOUT + SLACK


def test_a_body_dribbled_below_min_body_rate_gets_408(daemon):
    body = b"<x/>" + b" " * 4996
    head = b"POST / HTTP/1.1\r\nHost: receiver\r\nContent-Type: text/soap\r\nContent-Length: %d\r\n\r\n" % len(body)
    with connect(daemon.address) as sock:
        sock.sendall(head)
        # 10 bytes every 0.1 s: 100 B/s, a tenth of min_body_rate.
        received, elapsed = dribble(sock, [body[i:i + 10] for i in range(0, len(body), 10)], interval=0.1)
    answer, _ = parse_answer(received)
    assert answer.status == 408
    # request_timeout plus what the bytes already received earned at min_body_rate.
    assert elapsed <= REQUEST_TIMEOUT + 50 / MIN_BODY_RATE * 10 + SLACK


def test_a_slow_body_above_min_body_rate_is_served_even_past_request_timeout(daemon):
    """The body deadline is a rate, not a fixed timeout: 3.2 kB at ~2 kB/s takes longer than
    request_timeout and is still answered."""
    body = seed_request().partition(b"\r\n\r\n")[2].replace(b"3C7D98A4", b"SLOWBODY")
    body += b"\n" * 2300  # whitespace after the root element is still well-formed XML
    head = (b"POST / HTTP/1.1\r\nHost: receiver\r\nConnection: close\r\nContent-Type: text/soap\r\n"
            b"Content-Length: %d" % len(body))
    with connect(daemon.address) as sock:
        sock.sendall(head + b"\r\n\r\n")
        received, elapsed = dribble(sock, [body[i:i + 200] for i in range(0, len(body), 200)], interval=0.1)
    assert elapsed > REQUEST_TIMEOUT
    answer, _ = parse_answer(received)
    assert answer.status == 200, answer.body
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")] == ["SLOWBODY"]


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(daemon):
    with connect(daemon.address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\n\r\n")
        answer = read_one(sock)
        assert answer.status == 200
        assert answer.header("connection") == "keep-alive"
        received, elapsed = dribble(sock, [], interval=0.1)
    assert received == b"", "an idle connection is closed without an answer"
    # keepalive_timeout, not request_timeout, applies between requests.
    assert KEEPALIVE_TIMEOUT - 0.1 <= elapsed <= KEEPALIVE_TIMEOUT + SLACK


def test_a_kept_alive_connection_serves_a_next_request_before_keepalive_timeout(daemon):
    with connect(daemon.address) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: receiver\r\n\r\n")
            assert read_one(sock).status == 200


def test_a_client_that_never_reads_its_answers_is_not_buffered_and_is_cut_off(daemon):
    """Pipelined requests from a client that reads nothing: the daemon stops reading them once its
    answers back up, instead of piling answers up in memory, and drops the client after
    keepalive_timeout."""
    pid = daemon.process.pid
    rss_before = rss_kib(pid)
    requests = b"GET /metrics HTTP/1.1\r\nHost: receiver\r\n\r\n" * 1000
    with socket.create_connection(daemon.address) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(0.2)  # the pacing of the sends; the server's behaviour decides how many go through
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < 3:
            try:
                sent += sock.send(requests)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        grown = rss_kib(pid) - rss_before
        # Each 40-byte request asks for a ~2 kB answer: unbounded buffering would grow by hundreds of MB.
        assert grown < 8 * 1024, f"RSS grew {grown} KiB while {sent} request bytes were pipelined"
        # Not reading still, the client is dropped once keepalive_timeout passes without an answer
        # going out (the /metrics request asking is the one connection left).
        wait_for(lambda: open_connections(daemon) == 1, KEEPALIVE_TIMEOUT + SLACK + 5,
                 "the daemon to drop the client that does not read")
