"""The writer thread on PostgreSQL: ReceiptStore's group commit, queue and journal, over the network.

What the SQLite store does between batches (the journal, failure logging,
the 503 that follows a failed commit) is inherited as it is; what differs
is the transaction and what can go wrong with it. A batch is one
transaction of a few statements: the node's writer lock, the node's
largest id so far (so the journal knows whether anything of this node
lies between its last line and this batch), and one INSERT for every
receipt. The database going away is a storage condition like a full disk:
503 with Retry-After until it answers again, reconnecting with backoff.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from dlrd import pgsql
from dlrd.config import Config
from dlrd.errors import StartupError
from dlrd.journal import JOURNAL_FIELDS, JournalWriter
from dlrd.store import (
    POSITION_SECONDS,
    QUARANTINE_FULL,
    QuarantineInsert,
    ReceiptInsert,
    ReceiptStore,
    StorageCondition,
    StoredReceipt,
    probe_write,
)

log = logging.getLogger("dlrd.store")

RECONNECT_FIRST_SECONDS = 0.25
RECONNECT_MAX_SECONDS = 2.0
ATTEMPTS = 3  # a batch's tries: another after a connection that died while idle, or an id already taken
# Connection errors PostgreSQL itself answered with (a wrong password, pg_hba.conf, no such database,
# too many connections): the database is reachable and refuses this node, which retrying will not change.
_REFUSING_CLASSES = ("28", "3D", "42", "53")
_NEWEST = "SELECT coalesce(max(id), 0) FROM receipts WHERE node = %s"
_ROWS_AFTER = (f"SELECT {', '.join(JOURNAL_FIELDS)}, node, tls_client FROM receipts WHERE node = %s AND id > %s "
               "ORDER BY id LIMIT %s")
_PROBE = (f"INSERT INTO receipts ({', '.join(pgsql.RECEIPT_COLUMNS)}) "
          "VALUES ('', '', 'dlrd-health-probe', 0, '', '', '', '', 0, '', NULL, %s) "
          "ON CONFLICT DO NOTHING RETURNING id")
# A fault of one job: the batch is tried again receipt by receipt (ReceiptStore._isolate).
_JOB_FAULTS = (psycopg.DataError, psycopg.IntegrityError)
_SEQUENCE_END = "SELECT last_value FROM receipts_id_seq"


class ConnectFailed(psycopg.OperationalError):
    """The writer could not connect; `kind` is the storage condition's (unreachable, refused, config)."""

    def __init__(self, text: str, kind: str) -> None:
        super().__init__(text)
        self.kind = kind


class PostgresStore(ReceiptStore):
    """The receipts of one node, committed into a PostgreSQL database other nodes share."""

    database_errors = (psycopg.Error,)

    def __init__(self, config: Config, journal: JournalWriter) -> None:
        super().__init__(config.database_path, journal, lock_timeout=config["storage", "lock_timeout"],
                         quarantine_max_bytes=config["storage", "quarantine_max_bytes"],
                         node=config["server", "node"])
        self.config = config
        self.description = pgsql.describe(config)
        self.statement_timeout = config["storage", "commit_timeout"]
        self._node_lock = pgsql.node_lock(self.node)
        # Literals, so that the three go as one simple query: the lock key is two integers, and a node
        # name is letters, digits, '.', '_' and '-' only (config.parse_node_name).
        lock_class, lock_key = self._node_lock
        self._opening = (f"BEGIN; SELECT pg_advisory_xact_lock({lock_class}, {lock_key}); "
                         f"SELECT coalesce(max(id), 0) FROM receipts WHERE node = '{self.node}'")
        self._newest_before = 0  # this node's largest id when the last batch began
        self._retry_at = 0.0
        self._retry_wait = RECONNECT_FIRST_SECONDS
        self._connect_error = ""  # the last failed try's reason and kind, repeated until the next try
        self._connect_kind = "unreachable"

    def open(self) -> None:
        """Connect, migrate (once across nodes), catch the journal up, start the writer."""
        self._connection = pgsql.open_database(self.config, self.statement_timeout)
        try:
            connection = self._connection
            if connection.execute("SHOW synchronous_commit").fetchone()[0] == "off":
                log.warning("the %s has synchronous_commit = off: a crash of PostgreSQL may lose receipts dlrd "
                            "answered 200; set it on (ALTER ROLE dlrd SET synchronous_commit = on)",
                            self.description)
            if not self._claim_node_name(connection):
                log.warning("another connection to the %s holds node name %s: another dlrd with the same "
                            "[server] node, or the connection of one that died without closing it (it goes "
                            "once PostgreSQL notices). Two nodes with one name each journal the other's "
                            "receipts too: give each node its own [server] node", self.description, self.node)
            self.quarantine_budget.count(connection)
            row = connection.execute("SELECT last_id FROM journal_position WHERE node = %s", (self.node,)).fetchone()
            self.journal.on_open = self._journal_opened
            self.journal.open()
            self._journaled_id = max(self.journal.last_id(), row[0] if row else 0)
            self._keep_ids_past_journal(connection)
        except (psycopg.Error, OSError) as error:
            self._disconnect()
            self.journal.close()
            raise StartupError(f"cannot open the {self.description} or the journal in {self.journal.directory}: "
                               f"{error}") from None
        self._start_writer()

    # the transaction

    def _writer_connection(self) -> psycopg.Connection:
        """The connection, made again after a failure no sooner than the backoff allows."""
        if self._connection is None:
            now = time.monotonic()
            if now < self._retry_at:  # the last try's failure stands until the next try
                raise ConnectFailed(self._connect_error, self._connect_kind)
            connection = None
            try:
                connection = pgsql.connect(self.config, self.statement_timeout)
                self._claim_node_name(connection)
                self._keep_ids_past_journal(connection)
            except (psycopg.Error, StartupError) as error:
                if connection is not None:
                    connection.close()
                self._connect_error = " ".join(str(error).split())
                self._connect_kind = _connect_failure_kind(error)
                self._retry_at = now + self._retry_wait
                self._retry_wait = min(self._retry_wait * 2, RECONNECT_MAX_SECONDS)
                raise ConnectFailed(self._connect_error, self._connect_kind) from None
            self._connection = connection
            self._retry_wait = RECONNECT_FIRST_SECONDS
        return self._connection

    def _claim_node_name(self, connection: psycopg.Connection) -> bool:
        """Hold this node's name for the connection's life; False when another connection holds it."""
        return connection.execute("SELECT pg_try_advisory_lock(%s, %s)", pgsql.node_name_lock(self.node)).fetchone()[0]

    def _keep_ids_past_journal(self, connection: psycopg.Connection) -> None:
        """Ids the journal has given are not given again (a database restored, a lagging replica promoted).

        Readers drop a repeated id as a repeated line, so a reissued id
        would hide a new receipt from them (SQLite's store keeps the same rule).
        """
        end = connection.execute(_SEQUENCE_END).fetchone()[0]
        if self._journaled_id > end:
            log.warning("the journal names receipt id %d but the ids of the %s end at %d (restored from a backup, "
                        "or a replica promoted?); new receipts get ids from %d on, so that no id means two "
                        "receipts", self._journaled_id, self.description, end, self._journaled_id + 1)
            connection.execute(pgsql.IDS_PAST, (self._journaled_id,))

    def _transaction(self, jobs: list[Any]) -> list[Any]:
        """One attempt, and one more on a new connection when the old one had died meanwhile.

        A connection PostgreSQL dropped while dlrd was idle (a restart) fails
        the next batch though the database is back. Trying again is safe
        even when the first COMMIT's outcome is unknown: a receipt it did
        store is then found by its key and answered as a duplicate.
        """
        had_connection = self._connection is not None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._attempt(jobs)
            except psycopg.errors.UniqueViolation as error:
                # An id the sequence gave is taken: rows put back with their ids (`replay --journal`)
                # ran ahead of it. Past them, with new ids, the receipts go in.
                if error.diag.constraint_name != "receipts_pkey" or attempt == ATTEMPTS:
                    raise
                log.info("receipt ids from the sequence were taken by rows stored with ids of their own "
                         "(dlrd replay --journal); moving the sequence past them")
                self._writer_connection().execute(pgsql.FOLLOW_EXPLICIT_IDS)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                if not self._drop_broken_connection() or not had_connection or attempt > 1:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(self, jobs: list[Any]) -> list[Any]:
        connection = self._writer_connection()
        now = time.monotonic()
        position = self._position_to_record() if now >= self._position_due else None
        # BEGIN, the lock and the node's largest id in one round trip; each statement of it still reads
        # a snapshot of its own, so the largest id is read after the lock is held.
        try:
            opening = connection.execute(self._opening)
            opening.nextset()
            opening.nextset()
            self._newest_before = opening.fetchone()[0]
            results = self._run_jobs(connection, jobs)
            if position is not None:
                connection.execute(pgsql.SAVE_POSITION, (self.node, position))
            connection.execute("COMMIT")
        except BaseException:
            if not connection.closed and connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                try:
                    connection.execute("ROLLBACK")
                except psycopg.Error:
                    pass  # a lost connection: the server rolls back itself, and the caller hears the first error
            raise
        if position is not None:
            self._position_due = now + POSITION_SECONDS
        return results

    def _run_jobs(self, connection: psycopg.Connection, jobs: list[Any]) -> list[Any]:
        """Every job's result in the jobs' order; the receipts among them go in with one statement."""
        results: list[Any] = [None] * len(jobs)
        receipts = [(n, job) for n, job in enumerate(jobs) if type(job) is ReceiptInsert]
        if receipts:
            stored = pgsql.insert_receipts(connection, [job for _, job in receipts])
            for (n, _), outcome in zip(receipts, stored):
                results[n] = outcome
        for n, job in enumerate(jobs):
            if type(job) is QuarantineInsert:
                results[n] = self._keep(connection, job)
            elif job is probe_write:
                row = connection.execute(_PROBE, (self.node,)).fetchone()
                if row is not None:
                    connection.execute("DELETE FROM receipts WHERE id = %s", row)
                results[n] = True
            elif type(job) is not ReceiptInsert:
                raise TypeError(f"the PostgreSQL writer cannot run {job!r}")
        return results

    def _keep(self, connection: psycopg.Connection, job: QuarantineInsert) -> int | str:
        """A refused request into the quarantine, within quarantine_max_bytes (the server's disk is its own)."""
        budget = job.budget
        if not budget.room_for(job.size, connection):
            return QUARANTINE_FULL
        row_id = connection.execute(pgsql.INSERT_QUARANTINE, (*job.params, self.node)).fetchone()[0]
        budget.used = (budget.used or 0) + job.size
        return row_id

    def _drop_broken_connection(self) -> bool:
        """Forget a connection that can no longer be used; True when there was one."""
        connection = self._connection
        if connection is None or not (connection.broken or connection.closed):
            return False
        self._disconnect()
        return True

    # the journal: this node's receipts only

    def _follows_journal(self, new: list[StoredReceipt]) -> bool:
        """Nothing of this node was committed between the journal's last line and this batch.

        Other nodes take ids in between, so the ids of one node's journal
        have gaps; what counts is this node's largest id before the batch,
        read under its writer lock.
        """
        return self._newest_before <= self._journaled_id

    def _newest_id(self) -> int:
        return self._writer_connection().execute(_NEWEST, (self.node,)).fetchone()[0]

    def _rows_after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        cursor = self._writer_connection().execute(_ROWS_AFTER, (self.node, after_id, limit))
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row)) for row in cursor]

    def _save_position(self, position: int) -> None:
        assert self._connection is not None
        self._connection.execute(pgsql.SAVE_POSITION, (self.node, position))

    # what SQLite needed and PostgreSQL does not

    def _database_lost(self) -> StorageCondition | None:
        return None

    def _bound_write_ahead_log(self) -> None:
        return None

    def _disk_state(self) -> str:
        return ""

    def _condition_of(self, error: Exception) -> StorageCondition | None:  # type: ignore[override]
        """The storage condition behind an error, or None when the error is a fault of one job."""
        if isinstance(error, _JOB_FAULTS):
            return None
        detail = " ".join(str(error).split()) or type(error).__name__
        self._drop_broken_connection()
        kind = error.kind if isinstance(error, ConnectFailed) else "unreachable"
        if kind == "refused":
            return StorageCondition(kind, f"the {self.description} refuses this node's connection: {detail}; "
                                          "check the password, pg_hba.conf and max_connections")
        if kind == "config":
            return StorageCondition(kind, f"cannot connect to the {self.description}: {detail}")
        if self._connection is None:
            return StorageCondition(kind, f"cannot reach the {self.description}: {detail}; check that "
                                          "PostgreSQL runs and that this node can connect to it "
                                          "(pg_isready, [storage] dsn)")
        return StorageCondition("write", f"the {self.description} refused the commit: {detail}")


def _connect_failure_kind(error: Exception) -> str:
    """unreachable (nothing answered, or not yet), refused (PostgreSQL said no), config (dlrd's own settings)."""
    if isinstance(error, StartupError):
        return "config"  # the password file went away or became unreadable
    sqlstate = getattr(getattr(error, "diag", None), "sqlstate", None) or ""
    return "refused" if sqlstate.startswith(_REFUSING_CLASSES) else "unreachable"
