"""The quarantine stays useful and bounded: a flood of refused requests cannot fill the disk or the log.

Before, every request that failed authentication was kept whole, from any
source, with no rate and no cap: one client wrote about 33 MB/s, and once
the disk was full the provider's real receipts got 503.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest
from provider import read_soap_answer
from test_auth import AUTH_INI, ENVELOPE, SEED_USERNAME, with_credentials
from wire import exchange, parse_answer, read_until_closed, wait_for

from dlrd import store as store_module
from dlrd.ratelimit import SUMMARY_SECONDS, LogTally, SourceBudget, source_key
from dlrd.soap import REDACTED_PIN, parse_envelope

PADDING = b"<Padding>" + b"x" * 8000 + b"</Padding>\n"
QUARANTINE_SIZE = ("SELECT coalesce(sum(length(body) + length(reason) + length(remote_addr) + length(content_type)"
                   " + length(received_at) + length(kind) + length(message_id)), 0) FROM quarantine")


def post_from(source: str, address: tuple[str, int], body: bytes) -> int:
    """POST `body` from the loopback address `source`; the HTTP status."""
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(address)
        sock.sendall(b"POST / HTTP/1.0\r\nHost: receiver\r\nContent-Type: text/soap\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
        sock.shutdown(socket.SHUT_WR)
        answer, _ = parse_answer(read_until_closed(sock))
    if answer.status == 200:
        assert read_soap_answer(answer.body).report == 0
    return answer.status


def bad_pin_flood(source: str, address: tuple[str, int], count: int, prefix: str) -> list[int]:
    body = with_credentials(SEED_USERNAME, "RED.music").replace(b"</Report>\n", b"</Report>\n" + PADDING)
    return [post_from(source, address, body.replace(b"3C7D98A4", f"{prefix}{n}".encode())) for n in range(count)]


def metric_samples(daemon, name: str) -> dict[str, float]:
    with urllib.request.urlopen(daemon.urls[0] + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {labels: float(value) for labels, value in re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)}


def test_a_bad_pin_flood_from_one_source_is_not_kept_past_its_rate_and_the_provider_is_served(daemon_factory):
    cap = 200 * 1024
    daemon = daemon_factory(AUTH_INI + f"""
    [storage]
    quarantine_max_bytes = {cap}
    quarantine_rate = 64k
""")
    statuses: list[int] = []
    attackers = [threading.Thread(target=lambda n=n: statuses.extend(
        bad_pin_flood("127.0.0.2", daemon.address, 100, f"F{n}X"))) for n in range(3)]
    for attacker in attackers:
        attacker.start()
    provider = [post_from("127.0.0.1", daemon.address, ENVELOPE.replace(b"3C7D98A4", f"OK{n}".encode()))
                for n in range(100)]
    for attacker in attackers:
        attacker.join(60)

    assert provider == [200] * 100
    assert statuses == [500] * 300, "every refused request is answered the same, kept or not"
    assert daemon.rows("SELECT count(*) FROM receipts")[0][0] == 100
    kept = daemon.rows("SELECT count(*) FROM quarantine WHERE remote_addr = '127.0.0.2'")[0][0]
    # 64 KiB of burst, and a little refill during the run, at about 8 KiB a request.
    assert 1 <= kept <= 10, kept
    assert daemon.rows(QUARANTINE_SIZE)[0][0] <= cap
    not_kept = metric_samples(daemon, "dlrd_quarantine_not_kept_total")
    assert not_kept['{reason="rate"}'] == 300 - kept
    assert metric_samples(daemon, "dlrd_auth_failures_total")[""] == 300
    log = wait_for(lambda: "quarantine_rate" in daemon.log() and daemon.log(), 5, "the rate log line")
    assert "not keeping refused requests from 127.0.0.2" in log
    # A line per kept request, one for the run: not 300.
    assert log.count("authentication failed for a receipt") == kept
    assert log.count("quarantine_rate") == 1


def test_the_quarantine_stops_growing_at_its_cap_and_real_receipts_still_get_in(daemon_factory):
    cap = 100 * 1024
    daemon = daemon_factory(AUTH_INI + f"""
    [storage]
    quarantine_max_bytes = {cap}
    quarantine_rate = 10m
""")
    for number, source in enumerate(f"127.0.0.{host}" for host in range(2, 6)):
        assert bad_pin_flood(source, daemon.address, 10, f"S{number}X") == [500] * 10

    assert post_from("127.0.0.1", daemon.address, ENVELOPE) == 200
    size = daemon.rows(QUARANTINE_SIZE)[0][0]
    kept = daemon.rows("SELECT count(*) FROM quarantine")[0][0]
    assert cap - 10_000 < size <= cap, "filled up to the cap, less than one request short of it"
    assert metric_samples(daemon, "dlrd_quarantine_not_kept_total")['{reason="full"}'] == 40 - kept
    assert metric_samples(daemon, "dlrd_quarantine_bytes")[""] == size
    assert "the quarantine is full" in wait_for(lambda: daemon.log(), 5, "the log")
    assert daemon.log().count("quarantine is full") == 1
    assert daemon.healthy()


def test_rows_deleted_from_the_quarantine_make_room_again(daemon_factory):
    limits = "    [storage]\n    quarantine_max_bytes = 20k\n    quarantine_rate = 10m\n"
    daemon = daemon_factory(AUTH_INI + limits)
    assert bad_pin_flood("127.0.0.2", daemon.address, 4, "R") == [500] * 4
    assert daemon.rows("SELECT count(*) FROM quarantine")[0][0] == 2
    assert daemon.stop() == 0
    with daemon.db() as connection:
        connection.execute("DELETE FROM quarantine")

    daemon.start(AUTH_INI + limits)
    assert bad_pin_flood("127.0.0.2", daemon.address, 1, "T") == [500]

    assert daemon.rows("SELECT count(*) FROM quarantine")[0][0] == 1


def test_the_budget_refills_at_its_rate_and_never_past_one_minute_of_it():
    now = [0.0]
    budget = SourceBudget(600, clock=lambda: now[0])
    assert budget.take("192.0.2.1", 600)
    assert budget.take("192.0.2.2", 600), "each source has its own budget"
    now[0] = 30.0
    assert budget.take("192.0.2.1", 300)
    assert not budget.take("192.0.2.1", 1)
    now[0] = 10_000.0
    assert not budget.take("192.0.2.1", 601)
    assert budget.take("192.0.2.1", 600)


def test_ipv6_sources_share_a_budget_per_slash_64():
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("192.0.2.7") == "192.0.2.7"


def test_a_run_of_events_is_logged_once_then_counted_once_a_minute(caplog):
    now = [0.0]
    tally = LogTally(logging.getLogger("test.tally"), "first from %s", "%d more from %d source(s), most %s",
                     clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.tally"):
        tally.note("192.0.2.1")
        for second in range(1, 59):
            now[0] = float(second)
            tally.note("192.0.2.1" if second % 3 else "192.0.2.2")
        tally.flush()
        assert [record.getMessage() for record in caplog.records] == ["first from 192.0.2.1"]
        now[0] = SUMMARY_SECONDS
        tally.flush()
        now[0] = SUMMARY_SECONDS + 61
        tally.flush()
        now[0] = SUMMARY_SECONDS + 200
        tally.note("192.0.2.9")

    assert [record.getMessage() for record in caplog.records] == [
        "first from 192.0.2.1", "58 more from 2 source(s), most 192.0.2.1", "first from 192.0.2.9"]


def test_a_body_built_to_slow_the_pin_redaction_does_not_stall_the_daemon(daemon_factory):
    """Thirteen thousand unclosed <PIN> tags in a comment took the redaction 4.5 s a request, holding the GIL."""
    daemon = daemon_factory(AUTH_INI)
    hostile = with_credentials("Someone.Else", "RED.music").replace(
        b"<Report", b"<!--" + b"<PIN>" * 12_500 + b"-->\n<Report")
    assert len(hostile) < 64 * 1024
    answers: list[int] = []
    floods = [threading.Thread(target=lambda: answers.append(post_from("127.0.0.2", daemon.address, hostile)))
              for _ in range(4)]
    for flood in floods:
        flood.start()
    started = time.monotonic()
    assert post_from("127.0.0.1", daemon.address, ENVELOPE) == 200
    waited = time.monotonic() - started
    for flood in floods:
        flood.join(60)
    assert answers == [500] * 4
    assert waited < 2.0, f"a real receipt waited {waited:.1f} s behind four hostile ones"


@pytest.mark.parametrize("pin_element", [
    b'<PIN a="/>">BLUE&#46;music</PIN>',
    b"<PIN>BLUE<!--</PIN>-->.music</PIN>",
    b"<PIN>BLUE<?x </PIN>?>.music</PIN>",
    b"<PIN><![CDATA[BLUE</PIN>]]>.music</PIN>",
    b"<PIN>BLUE.music</PIN><Extra a='BLUE&#46;music'/>",
], ids=["gt-in-attribute", "end-tag-in-comment", "end-tag-in-pi", "end-tag-in-cdata", "in-an-attribute"])
def test_a_pin_the_parser_reads_never_stays_in_the_quarantined_body(daemon_factory, pin_element):
    daemon = daemon_factory(AUTH_INI)
    body = with_credentials("Someone.Else", None).replace(b"<Report", pin_element + b"\n<Report")
    assert "BLUE" in parse_envelope(body).fields["PIN"]  # the parser reads the PIN

    assert post_from("127.0.0.1", daemon.address, body) == 500

    [kept] = daemon.rows("SELECT body FROM quarantine")
    assert b"BLUE" not in kept["body"]
    assert parse_envelope(kept["body"]).fields["PIN"] == REDACTED_PIN


def test_a_flood_from_many_ipv6_networks_is_held_by_the_budget_all_sources_share(daemon_factory):
    """One customer's /56 is 256 /64s, each with a budget of its own: together they filled the quarantine at once."""
    daemon = daemon_factory(AUTH_INI + "    trusted_proxies = 127.0.0.1\n"
                            "    [storage]\n    quarantine_rate = 10k\n    quarantine_max_bytes = 10m\n")
    body = with_credentials(SEED_USERNAME, "RED.music").replace(b"</Report>\n", b"</Report>\n" + PADDING)
    for network in range(120):
        head = (b"POST / HTTP/1.0\r\nHost: r\r\nContent-Type: text/soap\r\nX-Forwarded-For: 2001:db8:1:%x::1\r\n"
                b"Content-Length: %d\r\n\r\n" % (network, len(body)))
        assert exchange(daemon.address, head + body).status == 500

    kept = daemon.rows("SELECT count(*) FROM quarantine")[0][0]
    # 16 times one source's 10 KiB, a little refill, about 8 KiB a request: not 120 requests.
    assert 1 <= kept <= (16 * 10 * 1024) // len(body) + 2, kept


def test_rows_deleted_while_dlrd_runs_make_room_again_on_sighup(daemon_factory):
    daemon = daemon_factory(AUTH_INI + "    [storage]\n    quarantine_max_bytes = 20k\n    quarantine_rate = 10m\n")
    assert bad_pin_flood("127.0.0.2", daemon.address, 4, "H") == [500] * 4
    assert daemon.rows("SELECT count(*) FROM quarantine")[0][0] == 2
    with daemon.db() as connection:
        connection.execute("DELETE FROM quarantine")
    connection.close()

    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: metric_samples(daemon, "dlrd_quarantine_bytes")[""] == 0, 10, "the quarantine to be counted")
    assert bad_pin_flood("127.0.0.2", daemon.address, 1, "J") == [500]
    assert daemon.rows("SELECT count(*) FROM quarantine")[0][0] == 1


def test_the_cap_is_counted_again_when_met_so_deleted_rows_make_room(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(store_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    connection = store_module.connect(tmp_path / "dlrd.db", lock_timeout=5)
    store_module.migrate(connection)
    budget = store_module.QuarantineBudget(1000)
    job = store_module.insert_quarantine("2026-12-01T00:00:00.000Z", "192.0.2.1", "r", "text/soap", b"x" * 900,
                                         budget)
    assert isinstance(job(connection), int)
    assert job(connection) == store_module.QUARANTINE_FULL
    connection.execute("DELETE FROM quarantine")
    now[0] += store_module.RECOUNT_SECONDS - 1
    assert job(connection) == store_module.QUARANTINE_FULL, "counted at most every RECOUNT_SECONDS"
    now[0] += 1
    assert isinstance(job(connection), int)
