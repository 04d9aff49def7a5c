"""A 200 is a promise: the crash test.

SPEC section 3: a receipt answered 200 is committed, and its JSONL line is
written at least once, even across a crash between commit and append.
Concurrent posters record every MessageIdentifier answered 200 with
Report 0; the daemon is killed with SIGKILL mid-load and restarted on the
same files, several times; then every acknowledged receipt must be in
SQLite and in the journal (across rotated and gzipped files), every
stored receipt must have a line, and a repeated line must be the same
receipt with the same id.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import statistics
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path

import pytest
from wire import KeepAliveClient, post, receipt_body, soap_report, wait_for

from dlrd import store as store_module
from dlrd.codes import ReportCode
from dlrd.journal import JournalWriter
from dlrd.receipt import Receipt
from dlrd.store import MAX_BATCH, VALUES_ROWS, ReceiptStore, connect, insert_receipt, insert_receipts, migrate

CYCLES = 5
POSTERS = 8
ACKED_PER_CYCLE = 500
TIME_LIMIT = 60.0
DELIVERED = ReportCode(0, "Accepted by phone", "delivered", True)
CRASH_INI = """
[journal]
rotate_bytes = 16k
compress = yes
"""


class Posters:
    """Threads posting unique receipts, half over keep-alive and half a connection each, until stopped."""

    def __init__(self, address: tuple[str, int], cycle: int) -> None:
        self.address = address
        self.cycle = cycle
        self.acknowledged: list[str] = []
        self.other_answers: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._post, args=(number,), daemon=True)
                        for number in range(POSTERS)]
        self._lock = threading.Lock()

    def __enter__(self) -> Posters:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive(), "a poster hung"

    def _post(self, number: int) -> None:
        keep_alive = number % 2 == 0
        client = KeepAliveClient(self.address, timeout=10) if keep_alive else None
        sequence = 0
        while not self.stop.is_set():
            message_id = f"K{self.cycle}T{number}N{sequence}"
            sequence += 1
            try:
                answer = client.post(receipt_body(message_id)) if client else post(self.address,
                                                                                   receipt_body(message_id))
            except (OSError, ValueError):
                continue  # the daemon is gone, or died mid-answer: not acknowledged
            if len(answer.body) < int(answer.header("content-length") or 0):
                continue  # cut off by the kill: not acknowledged
            with self._lock:
                if answer.status == 200 and soap_report(answer) == 0:
                    self.acknowledged.append(message_id)
                else:
                    self.other_answers.append(answer.status)
        if client:
            client.close()

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)


@pytest.mark.slow
def test_every_acknowledged_receipt_survives_sigkill_mid_load(daemon_factory):
    began = time.monotonic()
    daemon = daemon_factory(CRASH_INI)
    acknowledged: list[str] = []
    for cycle in range(CYCLES):
        if cycle:
            daemon.start(CRASH_INI)
            # Before any new load: everything acknowledged so far is already in the database.
            stored = {row[0] for row in daemon.rows("SELECT message_id FROM receipts")}
            assert set(acknowledged) <= stored, sorted(set(acknowledged) - stored)[:10]
        with Posters(daemon.address, cycle) as posters:
            wait_for(lambda posters=posters: posters.count() >= ACKED_PER_CYCLE, 20,
                     f"{ACKED_PER_CYCLE} acknowledged receipts in cycle {cycle}")
            # Kill at an arbitrary moment of the load, not at a batch boundary we chose.
            target = posters.count() + random.randint(1, 50)
            wait_for(lambda posters=posters, target=target: posters.count() >= target, 20,
                     "more receipts before the kill")
            daemon.kill()
        assert not posters.other_answers, f"answers other than 200 before the kill: {posters.other_answers[:10]}"
        acknowledged += posters.acknowledged

    # One more start lets dlrd journal what the last kill left unjournaled; then stop it as systemd would.
    daemon.start(CRASH_INI)
    assert daemon.stop() == 0
    assert time.monotonic() - began < TIME_LIMIT

    rows = {row["id"]: dict(row) for row in daemon.rows(
        "SELECT id, received_at, message_id, sent_to, report, label, state, final, timestamp, remote_addr "
        "FROM receipts")}
    by_message = {row["message_id"]: row for row in rows.values()}
    missing = [message_id for message_id in acknowledged if message_id not in by_message]
    assert not missing, f"{len(missing)} acknowledged receipts are not in SQLite: {missing[:10]}"

    lines = daemon.journal_all()
    journaled: dict[int, dict] = {}
    for line in lines:
        assert line["id"] in rows, f"a journal line names a receipt SQLite does not hold: {line}"
        row = rows[line["id"]]
        assert {key: line[key] for key in row} == {**row, "final": bool(row["final"])}, line
        if line["id"] in journaled:
            assert line == journaled[line["id"]], "a repeated line must be the same receipt"
        journaled[line["id"]] = line
    unjournaled = sorted(set(rows) - set(journaled))
    assert not unjournaled, f"{len(unjournaled)} stored receipts have no journal line: ids {unjournaled[:10]}"
    ids_in_order = [line["id"] for line in lines]
    first_seen = list(dict.fromkeys(ids_in_order))
    assert first_seen == sorted(first_seen), "journal lines must follow commit order"

    rotated = [path for path in daemon.journal_files() if path.name != "receipts.jsonl"]
    assert any(path.name.endswith(".gz") for path in rotated), "rotation and compression were not exercised"
    print(f"\n{CYCLES} SIGKILL cycles in {time.monotonic() - began:.1f} s: {len(acknowledged)} acknowledged, "
          f"{len(rows)} stored, {len(lines)} journal lines in {len(rotated) + 1} files "
          f"({len(lines) - len(journaled)} repeated)")


# group commit


def receipt(message_id: str) -> Receipt:
    return Receipt(message_id=message_id, sent_to="447009123456", report=0, timestamp="2002-08-27T13:38:00Z",
                   timestamp_raw="2002-08-27T13:38:00Z", username=None, pin=None)


def submit(store: ReceiptStore, message_id: str) -> Future:
    return store.store_receipt(receipt(message_id), DELIVERED, "2026-11-24T22:00:00.000Z", "192.0.2.1")


@contextmanager
def writer_held_by_a_lock(tmp_path: Path, first_id: str) -> Iterator[tuple[ReceiptStore, sqlite3.Connection, Future]]:
    """Another program holds the write lock, and the writer waits inside its transaction with one receipt alone.

    Yields the store, the lock holder (ROLLBACK releases the writer) and the held receipt's future.
    """
    store = ReceiptStore(tmp_path / "dlrd.db", JournalWriter(tmp_path), lock_timeout=30)
    store.open()
    holder = sqlite3.connect(tmp_path / "dlrd.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        first = submit(store, first_id)
        with pytest.raises(FutureTimeout):
            first.result(timeout=0.5)
        yield store, holder, first
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        store.close()


def test_receipts_are_answered_only_after_the_one_commit_that_holds_them_all(tmp_path):
    with writer_held_by_a_lock(tmp_path, "HELD0") as (store, holder, first):
        queued = [submit(store, f"HELD{number}") for number in range(1, 100)]
        assert not any(future.done() for future in queued)
        commits, jobs = store.commits, store.committed_jobs
        holder.execute("ROLLBACK")
        first.result(timeout=10)
        # Answered means committed: another connection sees it at once.
        assert holder.execute("SELECT count(*) FROM receipts WHERE message_id = 'HELD0'").fetchone()[0] == 1
        results = [future.result(timeout=10) for future in queued]
    assert len({result.id for result in results}) == 99
    # The first receipt's transaction was already waiting; the 99 that queued behind it share one.
    assert store.commits - commits == 2 and store.committed_jobs - jobs == 100
    assert [json.loads(text)["message_id"] for text in (tmp_path / "receipts.jsonl").read_text().splitlines()] == [
        f"HELD{number}" for number in range(100)]


def test_a_queue_longer_than_one_statement_takes_is_committed_in_full_batches_in_order(tmp_path):
    with writer_held_by_a_lock(tmp_path, "LONG0") as (store, holder, first):
        queued = [submit(store, f"LONG{number}") for number in range(1, 2 * MAX_BATCH + 76)]
        commits = store.commits
        holder.execute("ROLLBACK")
        results = [first.result(timeout=30)] + [future.result(timeout=30) for future in queued]
    # One INSERT of MAX_BATCH rows binds 11 values per row: this SQLite takes it in full batches.
    assert store.commits - commits == 4, "the held receipt, then two full batches and the rest"
    assert [result.id for result in results] == list(range(1, 2 * MAX_BATCH + 77))
    assert [json.loads(text)["id"] for text in (tmp_path / "receipts.jsonl").read_text().splitlines()] == [
        result.id for result in results]


def test_a_batch_in_one_statement_gives_each_receipt_its_own_id_and_finds_duplicates(tmp_path):
    connection = connect(tmp_path / "dlrd.db", lock_timeout=5)
    migrate(connection)

    def job(message_id: str):
        return insert_receipt(receipt(message_id), DELIVERED, "2026-11-24T22:00:00.000Z", "192.0.2.1")

    first = insert_receipts(connection, [job(f"B{number}") for number in range(5)])
    assert [(stored.id, stored.duplicate) for stored in first] == [(n, False) for n in range(1, 6)]
    assert [stored.record["id"] for stored in first] == [1, 2, 3, 4, 5]
    # Committed on return (autocommit): another connection sees the rows, each under its own id.
    other = connect(tmp_path / "dlrd.db", lock_timeout=5)
    assert other.execute("SELECT id, message_id FROM receipts ORDER BY id").fetchall() == [
        (n + 1, f"B{n}") for n in range(5)]

    # New, stored before, new, the same again in this batch, new.
    second = insert_receipts(connection, [job("C0"), job("B2"), job("C1"), job("C1"), job("C2")])
    assert [(stored.id, stored.duplicate) for stored in second] == [
        (6, False), (3, True), (7, False), (7, True), (8, False)]
    assert [stored.record["message_id"] for stored in second if not stored.duplicate] == ["C0", "C1", "C2"]
    assert other.execute("SELECT message_id FROM receipts WHERE id > 5 ORDER BY id").fetchall() == [
        ("C0",), ("C1",), ("C2",)]

    # Nothing new at all.
    third = insert_receipts(connection, [job("B0"), job("C2")])
    assert [(stored.id, stored.duplicate) for stored in third] == [(1, True), (8, True)]

    # A batch past VALUES_ROWS travels as one JSON array: the same ids and duplicates.
    large = [job(f"D{number}") for number in range(VALUES_ROWS)] + [job("C1"), job("D0"), job("E0")]
    fourth = insert_receipts(connection, large)
    assert [(stored.id, stored.duplicate) for stored in fourth] == [
        *((9 + number, False) for number in range(VALUES_ROWS)), (7, True), (9, True), (9 + VALUES_ROWS, False)]
    assert other.execute("SELECT message_id FROM receipts WHERE id = ?", (9 + VALUES_ROWS,)).fetchone() == ("E0",)
    other.close()
    connection.close()


def test_a_lone_receipt_is_committed_at_once_with_no_batching_wait(tmp_path):
    # synchronous = normal takes the disk's sync time out of the figure, leaving dlrd's own delay.
    store = ReceiptStore(tmp_path / "dlrd.db", JournalWriter(tmp_path), synchronous="normal")
    store.open()
    latencies = []
    try:
        for number in range(40):
            began = time.perf_counter()
            store.store_receipt(receipt(f"LONE{number}"), DELIVERED, "2026-11-24T22:00:00.000Z",
                                "192.0.2.1").result(timeout=10)
            latencies.append(time.perf_counter() - began)
    finally:
        store.close()
    assert store.commits == 40, "each lone receipt is its own commit"
    assert statistics.median(latencies) < 0.002, f"median {statistics.median(latencies) * 1000:.2f} ms"


def test_metrics_count_commits_and_the_jobs_they_held(daemon):
    def counters() -> tuple[float, float]:
        with urllib.request.urlopen(daemon.urls[0] + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
        return tuple(float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))
                     for name in ("dlrd_commits_total", "dlrd_committed_jobs_total"))

    commits, jobs = counters()
    client = KeepAliveClient(daemon.address)
    for number in range(5):
        assert soap_report(client.post(receipt_body(f"METRIC{number}"))) == 0
    client.close()
    assert counters() == (commits + 5, jobs + 5)


def test_the_wal_stays_bounded_under_steady_load(tmp_path):
    """The background checkpointer must not stop the WAL from starting over (it grew 600 MB in 40 s once)."""
    store = ReceiptStore(tmp_path / "dlrd.db", JournalWriter(tmp_path), synchronous="normal")
    store.open()

    def post(thread: int) -> None:
        for number in range(1500):
            store.store_receipt(receipt(f"W{thread}N{number}"), DELIVERED, "2026-11-24T22:00:00.000Z",
                                "192.0.2.1").result(timeout=10)

    try:
        posters = [threading.Thread(target=post, args=(thread,)) for thread in range(8)]
        for poster in posters:
            poster.start()
        for poster in posters:
            poster.join(60)
        wal_bytes = (tmp_path / "dlrd.db-wal").stat().st_size
    finally:
        store.close()
    assert store.committed_jobs == 12000
    assert wal_bytes < 8 * 1024 * 1024, f"the WAL grew to {wal_bytes / 1e6:.1f} MB"


def test_the_wal_stays_bounded_when_the_background_checkpoint_keeps_the_writers_from_running(tmp_path, monkeypatch):
    """The writer's automatic checkpoint gives way to the Checkpointer's pass; once the WAL passes its limit the
    writer waits for that pass and truncates the log itself (a full suite once saw it at 60 MB)."""
    monkeypatch.setattr(store_module, "CHECKPOINT_SECONDS", 0.001)
    store = ReceiptStore(tmp_path / "dlrd.db", JournalWriter(tmp_path), synchronous="normal")
    store.open()
    largest = [0]

    def post(thread: int) -> None:
        for number in range(1500):
            store.store_receipt(receipt(f"B{thread}N{number}"), DELIVERED, "2026-11-24T22:00:00.000Z",
                                "192.0.2.1").result(timeout=10)
            if number % 50 == 0:
                largest[0] = max(largest[0], (tmp_path / "dlrd.db-wal").stat().st_size)

    try:
        posters = [threading.Thread(target=post, args=(thread,)) for thread in range(8)]
        for poster in posters:
            poster.start()
        for poster in posters:
            poster.join(120)
    finally:
        store.close()
    assert store.committed_jobs == 12000
    assert largest[0] < 8 * 1024 * 1024, f"the WAL grew to {largest[0] / 1e6:.1f} MB"
