"""SQLite storage: schema and migrations, and the single writer thread.

One thread owns the write connection. Request handlers hand it jobs and
wait on a future; it commits everything that queued up meanwhile as one
transaction (group commit), appends the journal lines, and only then
releases the waiters, so a 200 always follows a commit. There is no
batching timer: a lone receipt is committed as soon as it arrives.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrd.codes import ReportCode
from dlrd.errors import StartupError, StorageUnavailable
from dlrd.journal import JOURNAL_FIELDS, JournalWriter, journal_line
from dlrd.receipt import Receipt

log = logging.getLogger("dlrd.store")

MAX_BATCH = 512

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "receipts, quarantine and latest_state", """
        CREATE TABLE receipts (
            id INTEGER PRIMARY KEY,
            received_at TEXT NOT NULL,
            message_id TEXT NOT NULL,
            sent_to TEXT NOT NULL,
            report INTEGER NOT NULL,
            timestamp TEXT NOT NULL,
            timestamp_raw TEXT NOT NULL,
            label TEXT NOT NULL,
            state TEXT NOT NULL,
            final INTEGER NOT NULL,
            remote_addr TEXT NOT NULL,
            tls_client TEXT,
            UNIQUE (message_id, sent_to, report, timestamp)
        );
        CREATE INDEX receipts_sent_to ON receipts (sent_to);
        CREATE INDEX receipts_received_at ON receipts (received_at);
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY,
            received_at TEXT NOT NULL,
            remote_addr TEXT NOT NULL,
            reason TEXT NOT NULL,
            content_type TEXT NOT NULL,
            body BLOB NOT NULL
        );
        -- A final state is never replaced by a later non-final one; among
        -- equals the newer Timestamp1 wins (receipts arrive out of order).
        CREATE VIEW latest_state AS
        SELECT id, message_id, sent_to, report, label, state, final, timestamp, received_at
        FROM (
            SELECT *, row_number() OVER (
                PARTITION BY message_id, sent_to
                ORDER BY final DESC, julianday(timestamp) DESC, id DESC
            ) AS rank
            FROM receipts
        )
        WHERE rank = 1;
        CREATE TABLE journal_position (
            only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
            last_id INTEGER NOT NULL
        );
        INSERT INTO journal_position VALUES (1, 0);
    """),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_INSERT_RECEIPT = """
    INSERT OR IGNORE INTO receipts (received_at, message_id, sent_to, report, timestamp, timestamp_raw,
                                    label, state, final, remote_addr, tls_client)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


@dataclass(frozen=True)
class StoredReceipt:
    """The outcome of storing a receipt: its id, and whether it was already there."""

    id: int
    duplicate: bool


def connect(path: Path, lock_timeout: float, synchronous: str = "full") -> sqlite3.Connection:
    """A connection with the pragmas every dlrd connection needs."""
    connection = sqlite3.connect(path, timeout=lock_timeout, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the schema forward; each applied migration is recorded by name."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
    )
    current = connection.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise StartupError(
            f"the database has schema version {current}, newer than this dlrd ({SCHEMA_VERSION}); "
            "run the newer dlrd or restore a backup"
        )
    for version, name, script in MIGRATIONS:
        if version <= current:
            continue
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                connection.execute(statement)
            connection.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name))
            connection.execute(f"PRAGMA user_version = {version}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        log.info("database migrated to schema version %d (%s)", version, name)


def _statements(script: str) -> list[str]:
    """Split a migration on statement ends (sqlite3 executes one at a time in a transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [statement for statement in statements if statement]


Job = Callable[[sqlite3.Connection], Any]


class ReceiptStore:
    """The database and journal behind one writer thread."""

    def __init__(self, database: Path, journal: JournalWriter, synchronous: str = "full",
                 lock_timeout: float = 5.0) -> None:
        self.database = database
        self.journal = journal
        self.synchronous = synchronous
        self.lock_timeout = lock_timeout
        self.healthy = True
        self._queue: queue.SimpleQueue[tuple[Job, Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._connection: sqlite3.Connection | None = None
        self._journaled_id = 0
        self._journal_behind = False
        self._failure: str | None = None

    def open(self) -> None:
        """Create or migrate the database, catch the journal up, start the writer."""
        try:
            self.database.parent.mkdir(parents=True, exist_ok=True)
            self._connection = connect(self.database, self.lock_timeout, self.synchronous)
            migrate(self._connection)
            self.journal.open()
            self._journaled_id = self._connection.execute("SELECT last_id FROM journal_position").fetchone()[0]
            self._journal_behind = True
            self._catch_up_journal()
        except (sqlite3.Error, OSError) as error:
            raise StartupError(f"cannot open the database {self.database}: {error}") from None
        self._thread = threading.Thread(target=self._run, name="dlrd-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish every queued job, then close; called once the server stopped accepting."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self.journal.close()

    def submit(self, job: Job) -> Future[Any]:
        """Queue a job for the writer; the future resolves after its transaction committed."""
        future: Future[Any] = Future()
        if self._thread is None:
            future.set_exception(StorageUnavailable("dlrd is shutting down"))
        else:
            self._queue.put((job, future))
        return future

    def store_receipt(self, receipt: Receipt, code: ReportCode, received_at: str, remote_addr: str,
                      tls_client: str | None = None) -> Future[StoredReceipt]:
        params = (received_at, receipt.message_id, receipt.sent_to, receipt.report, receipt.timestamp,
                  receipt.timestamp_raw, code.label, code.state, int(code.final), remote_addr, tls_client)

        def insert(connection: sqlite3.Connection) -> StoredReceipt:
            cursor = connection.execute(_INSERT_RECEIPT, params)
            if cursor.rowcount == 1:
                return StoredReceipt(cursor.lastrowid or 0, duplicate=False)
            row = connection.execute(
                "SELECT id FROM receipts WHERE message_id = ? AND sent_to = ? AND report = ? AND timestamp = ?",
                (receipt.message_id, receipt.sent_to, receipt.report, receipt.timestamp),
            ).fetchone()
            return StoredReceipt(row[0], duplicate=True)

        return self.submit(insert)

    def quarantine(self, received_at: str, remote_addr: str, reason: str, content_type: str,
                   body: bytes) -> Future[int]:
        """Keep a refused request for replay; the caller has already redacted the PIN."""

        def insert(connection: sqlite3.Connection) -> int:
            cursor = connection.execute(
                "INSERT INTO quarantine (received_at, remote_addr, reason, content_type, body) VALUES (?, ?, ?, ?, ?)",
                (received_at, remote_addr, reason, content_type, body),
            )
            return cursor.lastrowid or 0

        return self.submit(insert)

    def reopen_journal(self) -> Future[bool]:
        """Close and reopen receipts.jsonl (after an external logrotate moved it)."""

        def reopen(connection: sqlite3.Connection) -> bool:
            self.journal.close()
            self.journal.open()
            return True

        return self.submit(reopen)

    def probe(self) -> Future[bool]:
        """A write transaction that stores nothing: proves the database takes writes now."""
        return self.submit(lambda connection: True)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._commit(batch)
                    return
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Job, Future[Any]]]) -> None:
        # A waiter that gave up (a health probe past its deadline) is skipped.
        batch = [(job, future) for job, future in batch if future.set_running_or_notify_cancel()]
        connection = self._connection
        assert connection is not None
        results = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for job, _future in batch:
                    results.append(job(connection))
                connection.execute("UPDATE journal_position SET last_id = ?", (self._journaled_id,))
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            self._fail(str(error))
            failure = StorageUnavailable(str(error))
            for _job, future in batch:
                future.set_exception(failure)
            return
        self._recover()
        new_ids = [result.id for result in results if isinstance(result, StoredReceipt) and not result.duplicate]
        if new_ids or self._journal_behind:
            self._append_journal(new_ids)
        for (_job, future), result in zip(batch, results):
            future.set_result(result)

    def _append_journal(self, new_ids: list[int]) -> None:
        """Journal the batch; if the file cannot be written, catch up from the database later."""
        try:
            if self._journal_behind:
                self._catch_up_journal()
            else:
                self.journal.append(journal_line(row) for row in self._rows(new_ids[0], new_ids[-1]))
                self._journaled_id = new_ids[-1]
        except OSError as error:
            if not self._journal_behind:
                log.error("cannot write the journal %s: %s; receipts are safe in the database and will be "
                          "appended once it is writable", self.journal.path, error)
            self._journal_behind = True

    def _catch_up_journal(self) -> None:
        """Append every committed receipt the journal does not hold yet (after a crash or a write error)."""
        assert self._connection is not None
        start = max(self._journaled_id, self.journal.last_id())
        rows = self._rows(start + 1, None)
        if rows:
            self.journal.append(journal_line(row) for row in rows)
            log.info("journal caught up with %d receipt(s) committed but not yet journaled", len(rows))
            self._journaled_id = rows[-1]["id"]
        else:
            self._journaled_id = max(self._journaled_id, start)
        self._journal_behind = False

    def _rows(self, first_id: int, last_id: int | None) -> list[dict[str, Any]]:
        assert self._connection is not None
        columns = ", ".join(JOURNAL_FIELDS) + ", tls_client"
        query = f"SELECT {columns} FROM receipts WHERE id >= ?"
        params: tuple[int, ...] = (first_id,)
        if last_id is not None:
            query += " AND id <= ?"
            params = (first_id, last_id)
        cursor = self._connection.execute(query + " ORDER BY id", params)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def _fail(self, reason: str) -> None:
        self.healthy = False
        if reason != self._failure:
            log.error("storage cannot commit receipts: %s; answering 503 until it can", reason)
            self._failure = reason

    def _recover(self) -> None:
        self.healthy = True
        if self._failure is not None:
            log.warning("storage commits again after: %s", self._failure)
            self._failure = None
