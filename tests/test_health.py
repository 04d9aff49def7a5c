"""/healthz answers within a second in every state, probes at most once a second, and says why.

Monitors poll; a load balancer polls every node each second, often from
several workers. Each poll used to commit a transaction, and a held lock
made it wait 5 s to say 503. The states are made real: many concurrent
pollers, another program holding the database's write lock, the database
deleted under the daemon.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import threading
import time

from wire import exchange, get, post, receipt_body, soap_report, wait_for


def health(daemon, timeout: float = 10) -> tuple[int, str, float]:
    """(status, body, seconds it took)."""
    started = time.monotonic()
    status, body = get(daemon.urls[0] + "/healthz", timeout)
    return status, body, time.monotonic() - started


def counter(daemon, name: str) -> int:
    return int(re.search(rf"^{name} (\S+)$", get(daemon.urls[0] + "/metrics")[1], re.M).group(1))


def test_many_monitors_polling_cost_at_most_one_probe_transaction_a_second(daemon_factory):
    daemon = daemon_factory()
    before = counter(daemon, "dlrd_health_probes_total")
    commits = counter(daemon, "dlrd_commits_total")
    started = time.monotonic()
    answers: list[tuple[int, str, float]] = []

    def poll() -> None:
        while time.monotonic() - started < 3.0:
            answers.append(health(daemon))

    pollers = [threading.Thread(target=poll) for _ in range(8)]
    for poller in pollers:
        poller.start()
    for poller in pollers:
        poller.join()
    elapsed = time.monotonic() - started
    probes = counter(daemon, "dlrd_health_probes_total") - before
    assert counter(daemon, "dlrd_commits_total") == commits, "a probe is not a commit of work"
    assert len(answers) > 50, "the pollers were too slow to prove anything"
    assert all(status == 200 and body == "ok\n" for status, body, _ in answers)
    assert 1 <= probes <= elapsed + 1, f"{probes} probe transactions for {len(answers)} polls in {elapsed:.1f} s"


def test_a_recent_commit_is_answer_enough(daemon_factory):
    """Receipts flowing prove the database writable: no probe is added while they do."""
    daemon = daemon_factory()
    assert soap_report(post(daemon.address, receipt_body("HEALTH1"))) == 0
    before = counter(daemon, "dlrd_health_probes_total")
    assert health(daemon)[:2] == (200, "ok\n")
    assert counter(daemon, "dlrd_health_probes_total") == before


def test_under_a_held_write_lock_every_poll_answers_503_within_a_second_with_the_reason(daemon_factory):
    daemon = daemon_factory("[storage]\nlock_timeout = 30\ncommit_timeout = 30\n")
    holder = sqlite3.connect(daemon.data / "dlrd.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        # Within a second of the start's own probe, that commit is still the answer.
        wait_for(lambda: health(daemon)[0] == 503, 5, "/healthz to see the held lock")
        answers = [health(daemon) for _ in range(5)]
        assert all(status == 503 for status, _, _ in answers), answers
        assert all(seconds < 1.0 for _, _, seconds in answers), answers
        assert all("storage:" in body and "locked by another program" in body for _, body, _ in answers), answers
        assert daemon.process.poll() is None
    finally:
        holder.execute("ROLLBACK") if holder.in_transaction else None
        holder.close()
    wait_for(lambda: health(daemon)[0] == 200, 40, "/healthz 200 once the lock is released")


def test_a_deleted_database_is_named_in_the_body(daemon_factory):
    daemon = daemon_factory()
    (daemon.data / "dlrd.db").unlink()
    wait_for(lambda: health(daemon)[0] == 503, 5, "/healthz to see the deletion")
    status, body, seconds = health(daemon)
    assert status == 503 and seconds < 1.0
    assert body.startswith("storage: ") and "deleted" in body, body


def listening(daemon):
    """The daemon once it listens, for a test whose /healthz the fixture's own poll may not read."""
    wait_for(lambda: "listening on" in daemon.log(), 20, "dlrd to listen")
    daemon.urls = re.findall(r"listening on (\S+)", daemon.log())
    return daemon


def test_monitor_allow_from_limits_healthz_and_metrics_and_no_one_else(daemon_factory):
    daemon = listening(daemon_factory("[server]\nmonitor_allow_from = 127.0.0.2/32\n", wait=False))
    for path in ("/healthz", "/metrics"):
        request = f"GET {path} HTTP/1.0\r\n\r\n".encode()
        assert exchange(daemon.address, request).status == 403
        with socket.create_connection(daemon.address, timeout=10, source_address=("127.0.0.2", 0)) as sock:
            sock.sendall(request)
            assert sock.recv(12).startswith(b"HTTP/1.1 200")
    assert soap_report(post(daemon.address, receipt_body("HEALTH2"))) == 0, "receipts are not monitors' business"
    assert "not in [server] monitor_allow_from" in daemon.log()


def test_the_old_name_monitor_from_still_works_and_asks_to_be_renamed(daemon_factory):
    daemon = listening(daemon_factory("[auth]\nmonitor_from = 127.0.0.2/32\n", wait=False))
    assert "[auth] monitor_from is now [server] monitor_allow_from" in daemon.log()
    assert exchange(daemon.address, b"GET /healthz HTTP/1.0\r\n\r\n").status == 403


def test_both_names_at_once_is_refused(tmp_path):
    import pytest

    from dlrd.config import load_config
    from dlrd.errors import ConfigError

    ini = tmp_path / "dlrd.ini"
    ini.write_text("[server]\nmonitor_allow_from = 10.0.0.0/8\n[auth]\nmonitor_from = 10.0.0.0/8\n")
    with pytest.raises(ConfigError, match=r"old name of \[server\] monitor_allow_from"):
        load_config(str(ini))


def test_a_writer_stuck_behind_a_lock_turns_the_storage_metric_to_0_as_healthz_turns_503(daemon_factory):
    """The README's DlrdStorageUnhealthy alert watches dlrd_storage_healthy: it must not say 1 while receipts wait."""
    daemon = daemon_factory("[storage]\nlock_timeout = 30\ncommit_timeout = 30\n")
    holder = sqlite3.connect(daemon.data / "dlrd.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiting = threading.Thread(target=post, args=(daemon.address, receipt_body("STUCK1")), kwargs={"timeout": 60})
    try:
        waiting.start()
        wait_for(lambda: "has waited" in health(daemon)[1], 10, "the writer to be stuck on the receipt")
        assert counter(daemon, "dlrd_storage_healthy") == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        waiting.join(60)
    wait_for(lambda: counter(daemon, "dlrd_storage_healthy") == 1, 10, "the metric back at 1")
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")] == ["STUCK1"]
