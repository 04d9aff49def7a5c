"""SQLite storage: schema and migrations, and the single writer thread.

One thread owns the write connection. Request threads hand it their jobs
and wait on a Pending each; it commits everything that queued up
meanwhile as one transaction (group commit), appends the journal lines,
and only then releases the waiters, so a 200 always follows a commit.
There is no batching timer: a lone receipt is committed as soon as it
arrives. A batch of receipts is one SQL statement, so the writer takes the
GIL back from the request threads a few times per batch, not per receipt.
"""

from __future__ import annotations

import _thread
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from dlrd.codes import ReportCode
from dlrd.errors import StartupError, StorageUnavailable
from dlrd.journal import JOURNAL_FIELDS, JournalWriter, Rotation, journal_line
from dlrd.receipt import Receipt

log = logging.getLogger("dlrd.store")

MAX_BATCH = 512

# The same on both engines (dlrd/pgsql.py uses it too).
LATEST_STATE_VIEW = """
        -- A final state is never replaced by a later non-final one; among
        -- equals the newer Timestamp1 wins (receipts arrive out of order).
        -- Timestamps are compared as text to the microsecond (julianday()
        -- keeps only milliseconds): seconds, then the fraction or 000000.
        CREATE VIEW latest_state AS
        SELECT id, message_id, sent_to, report, label, state, final, timestamp, received_at
        FROM (
            SELECT *, row_number() OVER (
                PARTITION BY message_id, sent_to
                ORDER BY final DESC, substr(timestamp, 1, 19) DESC,
                         CASE WHEN length(timestamp) = 27 THEN substr(timestamp, 21, 6) ELSE '000000' END DESC,
                         id DESC
            ) AS rank
            FROM receipts
        ) AS ranked
        WHERE rank = 1;
"""

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
    """ + LATEST_STATE_VIEW + """
        CREATE TABLE journal_position (
            only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
            last_id INTEGER NOT NULL
        );
        INSERT INTO journal_position VALUES (1, 0);
    """),
    (2, "expected_messages for strict_match, and what the quarantine knows of each request", """
        -- The message ids the customer submitted: with [storage] strict_match
        -- a receipt for any other id is answered Report -1 and quarantined.
        -- Filled by `dlrd expect` or by the customer's own program.
        CREATE TABLE expected_messages (
            message_id TEXT PRIMARY KEY,
            added_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        ) WITHOUT ROWID;
        -- The quarantine made again: AUTOINCREMENT, so that the id of a row
        -- replay deleted is never given to another request (an operator who
        -- noted `--id 7` must not replay a stranger's request under it);
        -- kind: authentication, invalid-field or strict-match (empty for rows
        -- kept before this migration); message_id: as read from the body;
        -- authenticated: 1 when the request passed a configured PIN check.
        CREATE TABLE quarantine_v2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            received_at TEXT NOT NULL,
            remote_addr TEXT NOT NULL,
            reason TEXT NOT NULL,
            content_type TEXT NOT NULL,
            body BLOB NOT NULL,
            kind TEXT NOT NULL DEFAULT '',
            message_id TEXT NOT NULL DEFAULT '',
            authenticated INTEGER NOT NULL DEFAULT 0
        );
        INSERT INTO quarantine_v2 (id, received_at, remote_addr, reason, content_type, body)
            SELECT id, received_at, remote_addr, reason, content_type, body FROM quarantine;
        DROP TABLE quarantine;
        ALTER TABLE quarantine_v2 RENAME TO quarantine;
        CREATE INDEX quarantine_received_at ON quarantine (received_at);
    """),
    (3, "the node that stored each receipt", """
        -- [server] node of the daemon that stored the row, as on its journal line;
        -- empty for rows stored before this migration and rows rebuilt from journals.
        ALTER TABLE receipts ADD COLUMN node TEXT NOT NULL DEFAULT '';
    """),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_RECEIPT_COLUMNS = ("received_at", "message_id", "sent_to", "report", "timestamp", "timestamp_raw",
                    "label", "state", "final", "remote_addr", "tls_client", "node")
# A batch of receipts is stored with one statement: in autocommit mode it
# is its own transaction, so the batch costs the writer one call into SQLite
# (one release of the GIL) instead of one per receipt plus BEGIN and COMMIT;
# each release is a hand-off with the request threads.
#
# Up to VALUES_ROWS receipts, a multi-row INSERT ... VALUES binds each value
# directly. Each row count is its own prepared statement, and SQLite's
# statements grow with their rows: those for 1 to 64 rows hold 3 MB, those
# for 1 to 256 rows held 36 MB. So larger batches, which only come under
# heavy load, pass their rows as one JSON array instead: one statement
# whatever the size, at two to three times the CPU per row, since
# json_extract parses the row again for every column.
VALUES_ROWS = 64
_COLUMN_PLACEHOLDERS = ", ".join("?" for _ in _RECEIPT_COLUMNS)
_ROW_PLACEHOLDERS = f"({_COLUMN_PLACEHOLDERS})"
_INSERT_FROM_JSON = f"""
    INSERT OR IGNORE INTO receipts ({", ".join(_RECEIPT_COLUMNS)})
    SELECT {", ".join(f"json_extract(value, '$[{n}]')" for n in range(len(_RECEIPT_COLUMNS)))}
    FROM json_each(?)
"""


@lru_cache(maxsize=VALUES_ROWS)
def _insert_values(rows: int) -> str:
    return (f"INSERT OR IGNORE INTO receipts ({', '.join(_RECEIPT_COLUMNS)}) VALUES "
            + ", ".join([_ROW_PLACEHOLDERS] * rows))


_FIND_RECEIPT = "SELECT id FROM receipts WHERE message_id = ? AND sent_to = ? AND report = ? AND timestamp = ?"


_PROBE_RECEIPT = ("", "dlrd-health-probe", "", 0, "", "", "", "", 0, "", None, "")
# A row that holds an id in place inside one transaction, so that the
# receipts after it get higher ids (SQLite gives a new row the largest id
# plus one); deleted again before the commit, so no reader ever sees it.
# OR IGNORE: `dlrd replay --journal` may have put the real row with that id back already.
_HOLD_ID = f"INSERT OR IGNORE INTO receipts (id, {', '.join(_RECEIPT_COLUMNS)}) VALUES (?, {_COLUMN_PLACEHOLDERS})"
_ID_HOLDER = ("", "dlrd-id-placeholder", "", 0, "", "", "", "", 0, "", None, "")


class ReceiptInsert:
    """The job that stores a receipt, or finds the stored one it duplicates.

    The writer stores a batch made only of these with one statement
    (`insert_receipts`); called on its own, the job stores its receipt alone.
    """

    __slots__ = ("params", "record")

    def __init__(self, receipt: Receipt, code: ReportCode, received_at: str, remote_addr: str,
                 tls_client: str | None, node: str = "") -> None:
        self.params = (received_at, receipt.message_id, receipt.sent_to, receipt.report, receipt.timestamp,
                       receipt.timestamp_raw, code.label, code.state, int(code.final), remote_addr, tls_client, node)
        self.record = {
            "id": 0, "received_at": received_at, "message_id": receipt.message_id, "sent_to": receipt.sent_to,
            "report": receipt.report, "label": code.label, "state": code.state, "final": code.final,
            "timestamp": receipt.timestamp, "remote_addr": remote_addr, "node": node, "tls_client": tls_client,
        }

    def __call__(self, connection: sqlite3.Connection) -> StoredReceipt:
        return insert_receipts(connection, [self])[0]

    def stored(self, receipt_id: int) -> StoredReceipt:
        """The outcome when this receipt was new and got `receipt_id`."""
        self.record["id"] = receipt_id
        return StoredReceipt(receipt_id, duplicate=False, record=self.record)

    @property
    def key(self) -> tuple[str, str, int, str]:
        """The columns of the receipts table's unique constraint."""
        return self.params[1], self.params[2], self.params[3], self.params[4]


def insert_receipt(receipt: Receipt, code: ReportCode, received_at: str, remote_addr: str,
                   tls_client: str | None = None, node: str = "") -> ReceiptInsert:
    """The job that stores a receipt as `node`'s, or finds the stored one it duplicates."""
    return ReceiptInsert(receipt, code, received_at, remote_addr, tls_client, node)


def insert_receipts(connection: sqlite3.Connection, jobs: list[ReceiptInsert]) -> list[StoredReceipt]:
    """Store a batch of receipts with one statement; in autocommit mode it is committed on return.

    New rows get consecutive ids in the batch's order (SQLite gives a new
    row the largest id plus one). When some were already stored, each
    receipt's row is looked up: the first receipt to own a new id is the
    new one, any other is a duplicate, just as if they came one by one.
    """
    if len(jobs) <= VALUES_ROWS:
        cursor = connection.execute(_insert_values(len(jobs)), [value for job in jobs for value in job.params])
    else:
        cursor = connection.execute(_INSERT_FROM_JSON, (json.dumps([job.params for job in jobs]),))
    inserted = cursor.rowcount
    last_id = cursor.lastrowid or 0
    if inserted == len(jobs):
        return [job.stored(last_id - inserted + 1 + n) for n, job in enumerate(jobs)]
    new_ids = range(last_id - inserted + 1, last_id + 1) if inserted > 0 else range(0)
    results, claimed = [], set()
    for job in jobs:
        receipt_id = connection.execute(_FIND_RECEIPT, job.key).fetchone()[0]
        if receipt_id in new_ids and receipt_id not in claimed:
            claimed.add(receipt_id)
            results.append(job.stored(receipt_id))
        else:
            results.append(StoredReceipt(receipt_id, duplicate=True))
    return results


_QUARANTINE_SIZE = ("SELECT coalesce(sum(length(body) + length(reason) + length(remote_addr) + length(content_type)"
                    " + length(received_at) + length(kind) + length(message_id)), 0) FROM quarantine")


class QuarantineBudget:
    """How much the quarantine may hold, and how much it holds: touched by the writer thread only.

    Anyone who can reach a receipt path can make a request that is
    refused and kept; without a cap a flood of them fills the disk, and
    then real receipts are answered 503. `used` is counted in the database
    at start, on SIGHUP, after a failed transaction (which may have
    counted rows it did not keep), and when the cap is met, at most every
    RECOUNT_SECONDS, so rows an operator deleted make room again.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used: int | None = None
        self.counted_at = 0.0

    def count(self, connection: sqlite3.Connection) -> int:
        self.used = connection.execute(_QUARANTINE_SIZE).fetchone()[0]
        self.counted_at = time.monotonic()
        return self.used

    def room_for(self, size: int, connection: sqlite3.Connection) -> bool:
        used = self.count(connection) if self.used is None else self.used
        if used + size <= self.limit:
            return True
        if time.monotonic() - self.counted_at >= RECOUNT_SECONDS:
            return self.count(connection) + size <= self.limit
        return False


# Refused requests are not kept while the database's file system has less
# free than this: the last of the disk is for real receipts.
QUARANTINE_DISK_RESERVE = 32 * 1024 * 1024
RECOUNT_SECONDS = 10.0
QUARANTINE_FULL, QUARANTINE_DISK = "full", "disk"


class QuarantineInsert:
    """The job that keeps a refused request for replay if there is room: its row id, or why it was not kept.

    The caller has already redacted the PIN. Not kept: QUARANTINE_FULL
    past quarantine_max_bytes, QUARANTINE_DISK with less than
    QUARANTINE_DISK_RESERVE free on the disk.
    """

    __slots__ = ("budget", "params", "size")

    def __init__(self, received_at: str, remote_addr: str, reason: str, content_type: str, body: bytes,
                 budget: QuarantineBudget, kind: str = "", message_id: str = "", authenticated: bool = False) -> None:
        self.params = (received_at, remote_addr, reason, content_type, body, kind, message_id, int(authenticated))
        self.size = (len(body) + len(reason) + len(remote_addr) + len(content_type) + len(received_at)
                     + len(kind) + len(message_id))
        self.budget = budget

    def __call__(self, connection: sqlite3.Connection) -> int | str:
        budget = self.budget
        if not budget.room_for(self.size, connection):
            return QUARANTINE_FULL
        if _free_bytes(connection) < QUARANTINE_DISK_RESERVE + self.size:
            return QUARANTINE_DISK
        cursor = connection.execute(
            "INSERT INTO quarantine (received_at, remote_addr, reason, content_type, body, kind, message_id, "
            "authenticated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            self.params,
        )
        budget.used = (budget.used or 0) + self.size
        return cursor.lastrowid or 0


def _free_bytes(connection: sqlite3.Connection) -> int:
    """Free bytes for unprivileged writers on the file system of the connection's main database."""
    path = connection.execute("PRAGMA database_list").fetchone()[2]
    try:
        stats = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return QUARANTINE_DISK_RESERVE * 2  # cannot tell: let SQLite say whether it fits
    return stats.f_bavail * stats.f_frsize


def insert_quarantine(received_at: str, remote_addr: str, reason: str, content_type: str, body: bytes,
                      budget: QuarantineBudget, kind: str = "", message_id: str = "",
                      authenticated: bool = False) -> QuarantineInsert:
    """The job that keeps a refused request for replay within `budget`; the caller has already redacted the PIN.

    `content_type` is the request's media type with its charset, so that a
    replay reads the body as the network request was read. `authenticated`
    says the request passed a configured Username/PIN check before it was
    refused, so a replay need not take the operator's word for its PIN.
    """
    return QuarantineInsert(received_at, remote_addr, reason, content_type, body, budget, kind, message_id,
                            authenticated)


def probe_write(connection: sqlite3.Connection) -> bool:
    """The /healthz job: a write transaction that stores nothing, proving the database takes a receipt now.

    It writes and deletes a receipt row that no real one can match (ids
    are 15 characters at most), so it dirties the pages a receipt
    dirties: a disk with room for a smaller transaction is not "healthy".
    """
    cursor = connection.execute(_insert_values(1), _PROBE_RECEIPT)
    if cursor.rowcount == 1:
        connection.execute("DELETE FROM receipts WHERE id = ?", (cursor.lastrowid,))
    return True


@dataclass(frozen=True)
class StoredReceipt:
    """The outcome of storing a receipt: its id, and whether it was already there.

    A new receipt carries its journal record, so the writer journals it
    without reading back the row it has just inserted.
    """

    id: int
    duplicate: bool
    record: dict[str, Any] | None = field(default=None, compare=False, repr=False)


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
        if connection.execute("PRAGMA user_version").fetchone()[0] >= version:  # another process applied it meanwhile
            connection.execute("COMMIT")
            continue
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


class Pending:
    """A job's outcome, for the threads that wait on it (one, but for a health probe): a lock the writer releases.

    What concurrent.futures.Future does with a Condition, a list of waiters
    and callbacks, this does with one lock acquired at birth: waiting is
    acquiring it, finishing is releasing it. At group-commit rates the
    Future's bookkeeping cost the request threads more than parsing did.
    """

    __slots__ = ("_finished", "error", "interrupted", "value")

    def __init__(self) -> None:
        self._finished = _thread.allocate_lock()
        self._finished.acquire()
        self.value: Any = None
        self.error: BaseException | None = None
        self.interrupted = False  # released early by interrupt(): the outcome is not known

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job finished (or interrupt() was called) within `timeout` seconds (None: however long)."""
        if self._finished.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._finished.release()  # stays finished for later waits
            return True
        return False

    def result(self, timeout: float | None = None) -> Any:
        """The job's result, or its exception raised; TimeoutError when it did not finish in time."""
        if not self.wait(timeout):
            raise TimeoutError("the writer did not finish the job in time")
        if self.error is not None:
            raise self.error
        return self.value

    def done(self) -> bool:
        return not self._finished.locked()

    def set_result(self, value: Any) -> None:
        self.value = value
        self._release()

    def set_exception(self, error: BaseException) -> None:
        self.error = error
        self._release()

    def interrupt(self) -> None:
        """Wake the waiter now without an outcome (dlrd is stopping); the job itself still runs."""
        self.interrupted = True
        self._release()

    def _release(self) -> None:
        try:
            self._finished.release()
        except RuntimeError:
            pass  # released already: the outcome came after interrupt(), or the other way round


# (work, pending, transactional): a transactional job runs inside the batch's
# transaction; any other work (reopening the journal) runs between batches.
_Work = tuple[Callable[..., Any], Pending, bool]

# SQLite result codes that mean "the storage cannot take writes now", as
# opposed to a fault of one job; https://www.sqlite.org/rescode.html
_LOCKED_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_STORAGE_CODES = _LOCKED_CODES | {
    sqlite3.SQLITE_PERM, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_NOTADB,
}
JOURNAL_CHUNK = 1000
# How stale journal_position may grow. It counts only lines known to be on
# disk (the journal is synced before it is recorded), and at start it
# stands in for lines the files no longer show (an external logrotate moved
# them away); a stale one journals a few receipts twice, which the id on
# every line lets readers drop. It is recorded exactly at a clean stop and
# at each reopen.
POSITION_SECONDS = 1.0
IDLE_CHECK_SECONDS = 1.0
CHECKPOINT_SECONDS = 0.25
# A failure of the same kind back this soon after the last one was logged is
# the same episode (a disk hovering at full: each checkpoint frees room for a
# few commits), logged again only once this long has passed.
RELAPSE_SECONDS = 60.0
FINAL_CHECKPOINT_WAIT_MS = 1000  # at a stop, a locked database is not waited for lock_timeout again
WAL_LIMIT_BYTES = 6 * 1024 * 1024  # 1.5 times SQLite's automatic checkpoint (1000 pages)
WAL_CHECKPOINT_WAIT_MS = 20  # longer only stalls every receipt behind a reader that is not done
WAL_RETRY_SECONDS = 1.0
WAL_RETRY_MAX_SECONDS = 30.0
_LOW_DISK_BYTES = 1024 * 1024
_READ_ONLY = "its file system is read-only"


@dataclass(frozen=True)
class StorageCondition:
    """Why the database cannot commit now: a kind, logged once while it lasts, and the operator's text."""

    kind: str  # "locked", "read-only" or "write"
    text: str


class DatabaseFile:
    """The database file as dlrd opened it, to notice when its path stops naming it.

    A database deleted or replaced under a running daemon keeps taking
    commits into a file that nobody will open again: after a restart those
    receipts are gone though each was answered 200. So the writer compares
    the open file with the path before and after every transaction, and
    once a second when idle.

    The descriptor is held until every SQLite connection of the process is
    closed: closing any descriptor of a file drops the POSIX locks the
    process holds on it, SQLite's included (fcntl(2)).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        opened = os.fstat(self._fd)
        self._identity = (opened.st_dev, opened.st_ino)

    def lost(self) -> str | None:
        """None while the path names the open file; else what became of it, for the operator."""
        if os.fstat(self._fd).st_nlink == 0:
            return "deleted"
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return "moved away"
        except OSError:
            return None  # cannot tell (a permission change): the commits themselves will say
        if (now.st_dev, now.st_ino) != self._identity:
            return "replaced by another file"
        return None

    def connect(self, lock_timeout: float, synchronous: str) -> sqlite3.Connection:
        """A new connection by path, only while the path names this file (checked before and after)."""
        what = self.lost()
        if what is None:
            connection = connect(self.path, lock_timeout, synchronous)
            what = self.lost()
            if what is None:
                return connection
            connection.close()
        raise DatabaseLost(what)

    def close(self) -> None:
        os.close(self._fd)


def _empty_write_ahead_log(connection: sqlite3.Connection) -> None:
    """Copy the write-ahead log into the database file dlrd has open, wherever it now is, and truncate it.

    Once the database has been moved or replaced, SQLite neither
    checkpoints nor deletes its write-ahead log at close (it sees the file
    moved), so `dlrd.db-wal` would stay at the path and be replayed into
    whatever file is put there: a restored backup was left "malformed", or
    silently holding the old rows instead of its own. Emptied, it is
    harmless there, and the moved file holds every commit.
    """
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as error:
        log.warning("could not empty the write-ahead log of the database dlrd had open: %s", error)


class DatabaseLost(Exception):
    """The database path no longer names the file dlrd opened; nothing may connect to it by path."""


class Checkpointer:
    """Copies the write-ahead log into the database file from a thread of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses 1000
    WAL pages, and copying those pages stalled that commit, and every
    receipt waiting on it, for 100 ms and more on a small VPS disk. A
    PASSIVE checkpoint here, every CHECKPOINT_SECONDS, does that copying
    beside the writer without blocking it. The writer keeps its automatic
    checkpoint all the same: only a checkpoint that no commit can overtake
    lets the WAL start over, so without it the WAL grows without bound
    under steady load (600 MB in 40 s); by the time it runs, nearly every
    page has been copied already, so it costs the writer little.
    """

    def __init__(self, database: Path, lock_timeout: float, synchronous: str, database_file: DatabaseFile) -> None:
        self.database = database
        self.lock_timeout = lock_timeout
        self.synchronous = synchronous
        self.database_file = database_file
        # Held for each pass: the writer takes it to truncate the log, so the two never meet (see
        # ReceiptStore._bound_write_ahead_log).
        self.pass_lock = threading.Lock()
        # False when the last pass could not copy every frame: a reader's snapshot (a long
        # `dlrd query`) still needs the older ones, and truncating would only wait for it.
        self.caught_up = True
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlrd-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        while not self._stopping.wait(CHECKPOINT_SECONDS):
            if self.database_file.lost() is not None:
                # Never connect by path to a file that is not the one dlrd opened.
                if connection is not None:
                    _empty_write_ahead_log(connection)
                    connection.close()
                    connection = None
                continue
            try:
                if connection is None:
                    connection = self.database_file.connect(self.lock_timeout, self.synchronous)
                with self.pass_lock:
                    _, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.caught_up = copied >= frames
            except (sqlite3.Error, DatabaseLost) as error:
                # The writer reports storage trouble once per condition; a failed
                # checkpoint only leaves the WAL longer until the next one.
                log.debug("WAL checkpoint failed: %s", error)
                if connection is not None:
                    connection.close()
                connection = None
        if connection is not None and self.database_file.lost() is None:
            try:
                connection.execute(f"PRAGMA busy_timeout = {FINAL_CHECKPOINT_WAIT_MS}")
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as error:
                log.debug("final WAL checkpoint failed: %s", error)
        if connection is not None:
            connection.close()


class ReceiptStore:
    """The database and journal behind one writer thread."""

    # What the database raises; a subclass for another engine names its own.
    database_errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, database: Path, journal: JournalWriter, synchronous: str = "full",
                 lock_timeout: float = 5.0, quarantine_max_bytes: int = 64 * 1024 * 1024, node: str = "") -> None:
        self.database = database
        self.node = node  # stored with every receipt it takes, and so on its journal line
        self.journal = journal
        self.synchronous = synchronous
        self.lock_timeout = lock_timeout
        self.journal_writable = True
        self.journal_error = ""  # why it is not, for /healthz
        # Plain ints, written only by the writer thread and read by /metrics:
        # commits / committed_jobs is the mean group-commit batch size.
        self.commits = 0
        self.committed_jobs = 0
        self.on_commit: Callable[[int], None] | None = None  # told each committed batch's size (metrics)
        # What /healthz answers from (dlrd.health), also written only by the writer thread:
        self.last_commit_at = 0.0  # time.monotonic() of the last commit
        self.busy_since: float | None = None  # when the batch in hand began; None while the writer waits
        self.quarantine_budget = QuarantineBudget(quarantine_max_bytes)
        self._database_file: DatabaseFile | None = None
        self._wal_path = Path(f"{database}-wal")
        self._wal_retry_at = 0.0
        self._wal_retry_wait = WAL_RETRY_SECONDS
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._connection: sqlite3.Connection | None = None
        self._journaled_id = 0
        self._linked_id = 0  # journaled while receipts.jsonl was last seen in its directory
        self._id_floor = 0  # when the journal is ahead of the database: the id new receipts must follow
        self._position_due = 0.0
        self._condition: StorageCondition | None = None
        self._logged_kind = ""  # the last failure logged, when, and relapses since left unlogged
        self._logged_at = 0.0
        self._relapses = 0
        self._silent = False  # the current failure is a relapse that was not logged
        self._closing = False  # close() was called: queued work is still done, unless storage is failing
        self._checkpointer: Checkpointer | None = None

    def open(self) -> None:
        """Create or migrate the database, catch the journal up, start the writer."""
        try:
            self.database.parent.mkdir(parents=True, exist_ok=True)
            self._connection = connect(self.database, self.lock_timeout, self.synchronous)
            migrate(self._connection)
            self._database_file = DatabaseFile(self.database)
            self.quarantine_budget.count(self._connection)
            position = self._connection.execute("SELECT last_id FROM journal_position").fetchone()[0]
            self.journal.on_open = self._journal_opened
            self.journal.open()
            # The files' last line and the position each may be the further: a power cut can take lines the
            # files showed (fsync = no), never lines the position counts, and an external logrotate moves
            # counted lines out of sight. The further one is where journaling goes on.
            self._journaled_id = max(self.journal.last_id(), position)
            newest = self._connection.execute("SELECT coalesce(max(id), 0) FROM receipts").fetchone()[0]
            if self._journaled_id > newest:
                # Reusing the journal's ids would make readers drop new receipts as repeats.
                log.warning("the journal names receipt id %d but the database ends at %d (restored from a "
                            "backup?); new receipts get ids from %d on, so that no id means two receipts",
                            self._journaled_id, newest, self._journaled_id + 1)
                self._id_floor = self._journaled_id
        except (sqlite3.Error, OSError) as error:
            self._disconnect()
            self._close_database_file()
            self.journal.close()
            disk = self._disk_state()
            raise StartupError(f"cannot open the database {self.database} or the journal in "
                               f"{self.journal.directory}: {error}{f' ({disk})' if disk else ''}") from None
        self._start_writer()
        assert self._database_file is not None
        self._checkpointer = Checkpointer(self.database, self.lock_timeout, self.synchronous, self._database_file)
        self._checkpointer.start()

    def _start_writer(self) -> None:
        """Journal what was committed but not journaled before the last stop, then take jobs."""
        self._journal_committed(at_start=True)
        self._linked_id = self._journaled_id
        self._thread = threading.Thread(target=self._run, name="dlrd-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish every queued job, then close; called once the server stopped accepting."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._closing = True
                self._queue.put(None)
        if thread is not None:
            thread.join()
            if self._rewind_if_journal_deleted():
                # Deleted since the last once-a-second check: the lines written since go into a new file
                # before the position that counts them is recorded.
                self._reopen_deleted_journal()
            self._record_position()
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        while True:  # work queued behind the stop marker is refused, not left waiting
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._refuse([item], StorageUnavailable("dlrd is shutting down"))
        self._disconnect()
        self._close_database_file()
        self.journal.close()

    def submit(self, job: Job) -> Pending:
        """From any thread: queue a job for the writer; its Pending finishes after its transaction committed.

        The job runs even if nobody waits for it any more (a receipt answered
        503 at commit_timeout is still kept when its commit completes).
        """
        return self._enqueue(job, transactional=True)

    def _enqueue(self, work: Callable[..., Any], transactional: bool) -> Pending:
        pending = Pending()
        with self._lock:
            if self._thread is None:
                pending.set_exception(StorageUnavailable("dlrd is shutting down"))
                return pending
            self._queue.put((work, pending, transactional))
        return pending

    def store_receipt(self, receipt: Receipt, code: ReportCode, received_at: str, remote_addr: str,
                      tls_client: str | None = None) -> Pending:
        """From a thread: queue a receipt; its Pending finishes once it is committed."""
        return self.submit(insert_receipt(receipt, code, received_at, remote_addr, tls_client, self.node))

    def reopen_journal(self, fsync: bool | None = None, rotation: Rotation | None = None) -> Pending:
        """Close and reopen receipts.jsonl between two batches (after an external logrotate moved it),
        taking new fsync and rotation settings when given (SIGHUP re-read the config)."""
        return self._enqueue(lambda: self._reopen_journal(fsync, rotation), transactional=False)

    @property
    def condition(self) -> StorageCondition | None:
        """Why the last transaction could not commit; None once one commits again."""
        return self._condition

    def writer_alive(self) -> bool:
        """False once the writer thread died: the watchdog then stops feeding systemd."""
        return self._thread is not None and self._thread.is_alive()

    # the writer thread

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._idle_wait())
            except queue.Empty:
                try:
                    self.journal.check_while_idle()  # rotations while no receipt comes in
                    lost = self._database_lost()
                    if lost is not None:
                        self._fail(lost)  # /healthz and the log tell at once, not at the next receipt
                    else:
                        self._journal_rows_stored_elsewhere()
                except Exception:  # the writer must outlive any bug, or every later request would hang
                    log.exception("the writer thread failed on its idle checks")
                continue
            batch: list[_Work] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self.busy_since = time.monotonic()
            try:
                if self._closing and self._condition is not None:
                    # Each batch would wait out lock_timeout again; the stop must not take that long.
                    self._refuse(batch, StorageUnavailable("dlrd is stopping while storage fails"))
                else:
                    self._process(batch)
            except Exception:  # the writer must outlive any bug, or every later request would hang
                log.exception("the writer thread failed on a batch")
                for _work, pending, _transactional in batch:
                    if not pending.done():
                        pending.set_exception(StorageUnavailable("internal error in the writer"))
            self.busy_since = None
            if item is None:
                return

    def _idle_wait(self) -> float:
        """How long the idle writer may sleep: until a time rotation, and a second at most (DatabaseFile)."""
        rollover = self.journal.seconds_until_rollover()
        return IDLE_CHECK_SECONDS if rollover is None else min(rollover, IDLE_CHECK_SECONDS)

    @staticmethod
    def _refuse(works: list[_Work], error: StorageUnavailable) -> None:
        for _work, pending, _transactional in works:
            pending.set_exception(error)

    def _process(self, batch: list[_Work]) -> None:
        jobs = [(work, pending) for work, pending, transactional in batch if transactional]
        # Refused requests kept for replay commit in a transaction of their own: one that fails
        # (the disk full) must not fail the receipts beside it.
        receipts = [job for job in jobs if type(job[0]) is not QuarantineInsert]
        kept = [job for job in jobs if type(job[0]) is QuarantineInsert]
        if receipts:
            self._commit(receipts)
        if kept:
            self._commit(kept)
        for work, pending, transactional in batch:
            if not transactional:
                try:
                    pending.set_result(work())
                except Exception as error:
                    pending.set_exception(error)

    def _commit(self, batch: list[tuple[Job, Pending]]) -> None:
        """One transaction for the whole batch, then the journal, then the waiters: 200 follows commit.

        The database file is checked before and after: a commit into a
        file that was deleted or replaced meanwhile is answered 503 and
        not journaled, since no restart will ever read it.
        """
        lost = self._database_lost()
        if lost is not None:
            self._refuse_batch(batch, lost)
            return
        try:
            results = self._transaction([job for job, _pending in batch])
        except DatabaseLost:
            self._refuse_batch(batch, self._database_lost() or StorageCondition("lost", "the database was lost"))
            return
        except self.database_errors as error:
            self.quarantine_budget.used = None  # the failed transaction may have counted rows it did not keep
            condition = self._condition_of(error)
            if condition is None:
                self._isolate(batch, error)
                return
            self._refuse_batch(batch, condition)
            return
        except Exception as error:
            self.quarantine_budget.used = None
            self._isolate(batch, error)
            return
        lost = self._database_lost()
        if lost is not None:
            self._refuse_batch(batch, lost)
            return
        self.last_commit_at = time.monotonic()
        held = sum(job is not probe_write for job, _pending in batch)  # a health probe is no work done
        if held:
            self.commits += 1
            self.committed_jobs += held
            if self.on_commit is not None:
                self.on_commit(held)
        self._recover()
        new = [result for result in results if isinstance(result, StoredReceipt) and not result.duplicate]
        if new and self.journal_writable and self._follows_journal(new):
            # The usual case: the batch's receipts follow the journal's last line.
            self._journal_committed(new)
        elif new or not self.journal_writable:
            self._journal_committed()
        for (_job, pending), result in zip(batch, results):
            pending.set_result(result)
        self._bound_write_ahead_log()

    def _follows_journal(self, new: list[StoredReceipt]) -> bool:
        """The receipts a batch stored come right after the journal's last line, with nothing between.

        In SQLite a new row gets the largest id plus one, so a batch follows
        when its ids continue the journal's without a gap; rows in a gap were
        stored by another program and are read back from the database.
        """
        return new[0].id == self._journaled_id + 1 and new[-1].id - new[0].id == len(new) - 1

    def _refuse_batch(self, batch: list[tuple[Job, Pending]], condition: StorageCondition) -> None:
        self._fail(condition)
        failure = StorageUnavailable(condition.text)
        for _job, pending in batch:
            pending.set_exception(failure)

    def _database_lost(self) -> StorageCondition | None:
        """The condition to report when the database path no longer names the file dlrd has open."""
        if self._database_file is None:
            return None
        what = self._database_file.lost()
        if what is None:
            return None
        if self._connection is not None:
            _empty_write_ahead_log(self._connection)
        # Nothing connects again until the path names this file once more.
        self._disconnect()
        return StorageCondition("lost", f"the database {self.database} was {what} while dlrd had it open; "
                                        "receipts committed into it now would be gone after a restart, so they "
                                        f"are answered 503: move the file back to {self.database}, or restart "
                                        "dlrd to use the file now at that path (systemctl restart dlrd)")

    def _close_database_file(self) -> None:
        if self._database_file is not None:
            self._database_file.close()
            self._database_file = None

    def _bound_write_ahead_log(self) -> None:
        """Past WAL_LIMIT_BYTES, checkpoint and truncate the write-ahead log here, between two batches.

        The writer's automatic checkpoint gives way (SQLITE_BUSY) to the
        Checkpointer's, and the log starts over only at a transaction
        begun while no checkpoint runs and every frame is copied; with the
        Checkpointer's passes slow (a busy disk) the log grew to 60 MB under
        steady load. This one waits for the Checkpointer's pass to end,
        keeps the next off, and with nothing to overtake it the log starts
        over. A reader holding an old snapshot (a long `dlrd query`, an
        sqlite3 shell) can still stop it, and waiting for that reader would
        stall every receipt behind the writer: so nothing is tried while the
        Checkpointer's last pass was held back by one, and after a try that
        a reader stopped, the next waits twice as long (WAL_RETRY_SECONDS
        doubling up to WAL_RETRY_MAX_SECONDS).
        """
        now = time.monotonic()
        if now < self._wal_retry_at or self._connection is None:
            return
        try:
            if os.stat(self._wal_path).st_size <= WAL_LIMIT_BYTES:
                self._wal_retry_wait = WAL_RETRY_SECONDS
                return
        except OSError:
            return
        if self._checkpointer is not None and not self._checkpointer.caught_up:
            self._wal_retry_at = now + WAL_RETRY_SECONDS
            return
        connection = self._connection
        pass_lock = self._checkpointer.pass_lock if self._checkpointer is not None else threading.Lock()
        with pass_lock:  # waits for the Checkpointer's pass in progress, if any, and keeps the next one off
            try:
                connection.execute(f"PRAGMA busy_timeout = {WAL_CHECKPOINT_WAIT_MS}")
                busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as error:
                log.debug("could not truncate the write-ahead log: %s", error)
                busy = 1
            finally:
                try:
                    connection.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
                except sqlite3.Error:
                    self._disconnect()
        if busy:
            self._wal_retry_at = now + self._wal_retry_wait
            self._wal_retry_wait = min(self._wal_retry_wait * 2, WAL_RETRY_MAX_SECONDS)
        else:
            self._wal_retry_wait = WAL_RETRY_SECONDS

    def _isolate(self, batch: list[tuple[Job, Pending]], error: Exception) -> None:
        """A job failed on its own account: retry the others alone, so one bad receipt fails only itself."""
        if len(batch) == 1:
            batch[0][1].set_exception(error)
            return
        for item in batch:
            self._commit([item])

    def _writer_connection(self) -> sqlite3.Connection:
        """The writer's connection; made again by path only while the path names the file dlrd opened."""
        if self._connection is None:
            assert self._database_file is not None
            self._connection = self._database_file.connect(self.lock_timeout, self.synchronous)
        return self._connection

    def _transaction(self, jobs: list[Job]) -> list[Any]:
        connection = self._writer_connection()
        now = time.monotonic()
        if now < self._position_due and not self._id_floor and all(type(job) is ReceiptInsert for job in jobs):
            return insert_receipts(connection, jobs)  # type: ignore[arg-type]
        position = self._position_to_record()
        floor = self._id_floor
        connection.execute("BEGIN IMMEDIATE")
        try:
            if floor:
                connection.execute(_HOLD_ID, (floor, *_ID_HOLDER))
            results = [job(connection) for job in jobs]
            if floor:
                connection.execute("DELETE FROM receipts WHERE id = ? AND message_id = ?", (floor, _ID_HOLDER[1]))
            if position is not None:
                connection.execute("UPDATE journal_position SET last_id = ?", (position,))
            connection.execute("COMMIT")
            self._position_due = now + POSITION_SECONDS
        except BaseException:
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error:
                    self._disconnect()
            raise
        if floor and any(isinstance(result, StoredReceipt) and not result.duplicate for result in results):
            self._id_floor = 0  # a stored receipt now holds the largest id itself
        return results

    def _position_to_record(self) -> int | None:
        """Once a POSITION_SECONDS: the journal made again if it was deleted, then the position to record."""
        if self._rewind_if_journal_deleted():
            try:
                self.journal.reopen()
            except OSError as error:  # the next append opens it, or reports why it cannot
                log.debug("could not make the journal again yet: %s", error)
        return self._durable_position()

    def _journal_opened(self) -> None:
        """A new receipts.jsonl (a rotation): the lines so far are safe in the old file, under its new name."""
        self._linked_id = self._journaled_id

    def _rewind_if_journal_deleted(self) -> bool:
        """True when receipts.jsonl was deleted while open; the caller reopens it.

        Checked once a second and at each reopen: journaling goes back to the
        last check that found the file in place, so what went into the deleted
        file is appended again (at least once; a reader drops repeats by id).
        """
        if not self.journal.deleted():
            self._linked_id = self._journaled_id
            return False
        log.error("the journal %s was deleted while dlrd was writing it; making a new one and appending "
                  "again the receipts after id %d", self.journal.path, self._linked_id)
        self._journaled_id = self._linked_id
        return True

    def _durable_position(self) -> int | None:
        """The journal position to record: the last line on disk. None when the journal cannot be synced."""
        try:
            self.journal.sync()
        except OSError:
            return None
        return self._journaled_id

    def _record_position(self) -> None:
        """Record the exact journal position (at a clean stop, after a reopen), so a restart journals nothing twice."""
        position = self._durable_position()
        if position is None or self._connection is None or self._condition is not None:
            return  # failing storage would only make the stop wait for lock_timeout
        try:
            self._save_position(position)
        except self.database_errors as error:
            log.debug("could not record the journal position: %s", error)

    def _save_position(self, position: int) -> None:
        assert self._connection is not None
        self._connection.execute("UPDATE journal_position SET last_id = ?", (position,))

    def _reopen_journal(self, fsync: bool | None, rotation: Rotation | None) -> None:
        if self._connection is not None:
            try:
                self.quarantine_budget.count(self._connection)  # SIGHUP: rows an operator deleted make room
            except self.database_errors as error:
                log.debug("could not count the quarantine: %s", error)
        deleted = self._rewind_if_journal_deleted()
        self.journal.reopen(fsync, rotation)
        if deleted:
            self._journal_committed()
        self._record_position()

    def _reopen_deleted_journal(self) -> None:
        """Make receipts.jsonl again and append what went into the deleted one (see _rewind_if_journal_deleted)."""
        try:
            self.journal.reopen()
        except OSError as error:
            log.error("cannot make the journal %s again: %s; the receipts are safe in the database and are "
                      "appended at the next start", self.journal.path, error)
            return
        self._journal_committed()

    def _journal_committed(self, batch: list[StoredReceipt] | None = None, at_start: bool = False) -> None:
        """Journal every committed receipt not journaled yet; on failure, hold them until it works.

        `batch` holds the receipts this writer committed, with their records;
        when rows lie between the last journaled one and the batch (another
        program, `dlrd replay`, stored them), all are read back from the
        database instead, so the daemon stays the journal's one writer.
        """
        try:
            if batch:
                self.journal.append(journal_line(stored.record) for stored in batch if stored.record)
                self._journaled_id = batch[-1].id
                count = len(batch)
            else:
                count = self._catch_up_journal()
        except DatabaseLost:
            return  # the writer reports that condition; the journal catches up once the file is back
        except (OSError, *self.database_errors) as error:
            if self.journal_writable:
                log.error("cannot write the journal %s: %s; receipts are safe in the database and will be "
                          "appended once it is writable", self.journal.path, error)
            self.journal_writable = False
            self.journal_error = str(error)
            return
        if not self.journal_writable:
            log.warning("the journal %s is writable again; appended the %d receipt(s) held back",
                        self.journal.path, count)
        elif at_start and count:
            log.info("journal caught up with %d receipt(s) committed but not yet journaled", count)
        self.journal_writable = True

    def _journal_rows_stored_elsewhere(self) -> None:
        """Once a second while idle: journal receipts another program (`dlrd replay`) committed meanwhile."""
        if self._condition is not None or self._connection is None:
            return
        try:
            newest = self._newest_id()
        except self.database_errors:
            return  # the next batch meets the same error and reports it
        if newest > self._journaled_id:
            self._journal_committed()

    def _newest_id(self) -> int:
        """The largest receipt id that belongs in this node's journal."""
        return self._writer_connection().execute("SELECT coalesce(max(id), 0) FROM receipts").fetchone()[0]

    def _catch_up_journal(self) -> int:
        """Append the receipts with an id past the last journaled one, in chunks; returns how many."""
        count = 0
        while True:
            rows = self._rows_after(self._journaled_id, JOURNAL_CHUNK)
            if rows:
                self.journal.append(journal_line(row) for row in rows)
                self._journaled_id = rows[-1]["id"]
                count += len(rows)
            if len(rows) < JOURNAL_CHUNK:
                return count

    def _rows_after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        columns = ", ".join(JOURNAL_FIELDS) + ", node, tls_client"
        cursor = self._writer_connection().execute(
            f"SELECT {columns} FROM receipts WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def _disconnect(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except self.database_errors:
                pass
            self._connection = None

    # failure and recovery, logged once per condition

    def _condition_of(self, error: sqlite3.Error) -> StorageCondition | None:
        """The storage condition behind an error, or None when the error is a fault of one job."""
        code = getattr(error, "sqlite_errorcode", None)
        primary = code & 0xFF if code is not None else None
        if primary not in _STORAGE_CODES:
            return None
        detail = f"{error} ({error.sqlite_errorname})"
        if primary in _LOCKED_CODES:
            return StorageCondition("locked", f"the database {self.database} stayed locked by another program "
                                              f"for longer than lock_timeout ({self.lock_timeout:g} s): {detail}; "
                                              f"`fuser {self.database}` shows which")
        disk = self._disk_state()
        if primary == sqlite3.SQLITE_READONLY or disk == _READ_ONLY:
            return StorageCondition("read-only", f"the database {self.database} is read-only "
                                                 f"({disk or 'file permissions'}): {detail}")
        return StorageCondition("write", f"cannot write the database {self.database}: {detail}; "
                                         f"{disk or 'check free space, file-size limits and the disk'}")

    def _disk_state(self) -> str:
        """What the file system holding the database says of itself, for the operator's message."""
        try:
            stats = os.statvfs(self.database.parent)
        except OSError:
            return ""
        if stats.f_flag & os.ST_RDONLY:
            return _READ_ONLY
        if stats.f_bavail * stats.f_frsize < _LOW_DISK_BYTES:
            return "the disk is full"
        return ""

    def _fail(self, condition: StorageCondition) -> None:
        """Log a failure once per condition; one that keeps coming back is logged once per RELAPSE_SECONDS."""
        now = time.monotonic()
        if self._condition is not None and condition.kind == self._condition.kind:
            self._condition = condition  # /healthz tells the latest words; the kind is logged already
            if self._silent and now - self._logged_at >= RELAPSE_SECONDS:
                self._log_failure(condition, now)  # still failing: the log must not end on "commits again"
            return
        self._condition = condition
        if condition.kind == self._logged_kind and now - self._logged_at < RELAPSE_SECONDS:
            self._relapses += 1
            self._silent = True
            return
        self._log_failure(condition, now)

    def _log_failure(self, condition: StorageCondition, now: float) -> None:
        again = (f" (back {self._relapses} time(s) since it was last logged)"
                 if self._relapses else "")
        log.error("storage cannot commit receipts: %s; answering 503 until it can%s", condition.text, again)
        self._logged_kind, self._logged_at, self._relapses, self._silent = condition.kind, now, 0, False

    def _recover(self) -> None:
        if self._condition is not None:
            if not self._silent:
                log.warning("storage commits again after: %s", self._condition.text)
            self._condition = None
            self._silent = False
