"""Rebuild the receipts table from JSONL journal files (`dlrd replay --journal`).

The journal is the copy of the database that leaves the machine: after a
lost or damaged database, its files (plain, rotated and gzipped, named in
any order) put every receipt back under the id it had, so the ids tailers
already saw keep meaning the same receipt. Each line is checked on its own;
a bad one (not JSON, a missing field, a wrong type, the half line a crash
leaves at the end) is reported with its file and line number and skipped,
never fatal.

Rows go in with `INSERT OR IGNORE` in transactions sized to hold the write
lock about TARGET_LOCK_SECONDS, so a daemon serving on the same database
waits for its writer at most that long. Running it twice stores nothing
twice, and a line repeated after a crash (same id) is simply already there.

Files are read in the order of the first id each holds, whatever order the
command line names them in, so rows go in with ids rising. That is for a
daemon serving meanwhile: it never writes journal lines for ids at or below
its last journaled one (those are in its journal already) and appends the
rows past it, in id order, within a second. So this writes no journal
lines, nor the journal position, and the daemon's journal holds each
receipt once:

- a daemon whose journal directory holds the files rebuilt from (the
  database was lost, the journal was not) starts with new ids past the
  journal's last one and journals none of the rebuilt rows again;
- a daemon with an empty journal (a new machine) journals the rebuilt rows
  once, in id order, as they are committed.

In the second case a receipt the daemon stores during the rebuild takes the
next free id, which the rest of the journal may still carry: that line is
then reported as a conflict (its id taken by another receipt). Rebuild
before starting the daemon, or copy the journal files into its journal
directory first, and that cannot happen.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from dlrd.errors import StartupError
from dlrd.store import connect, migrate

LOCK_TIMEOUT_SECONDS = 30.0  # how long to wait for the daemon's writer; it holds the lock for milliseconds
TARGET_LOCK_SECONDS = 0.05  # each transaction aims to hold the write lock this long
FIRST_BATCH = 5_000
MIN_BATCH = 500
MAX_BATCH = 50_000
# Lines parsed as one JSON array: one call into the C parser instead of one per line (half the cost).
PARSE_CHUNK = 2_000
# A PASSIVE checkpoint after this many rows: the write-ahead log grows by the pages the rows dirtied.
CHECKPOINT_ROWS = 200_000
CACHE_KIB = 64 * 1024  # the sent_to index takes rows far from each other
PROGRESS_SECONDS = 5.0
LISTED = 1000  # conflicts and bad lines described one by one; past that only counted
MAX_ID = 2**63 - 1

# A journal line as one row, in the journal's field order, then tls_client (None when the line has
# none) and node ("" when the line has none: written before lines named their node).
FIELDS = ("id", "received_at", "message_id", "sent_to", "report", "timestamp", "label", "state", "final",
          "remote_addr")
_pick = itemgetter(*FIELDS)
_VALID_TYPES = frozenset({
    (int, str, str, str, int, str, str, str, bool, str, str, str),
    (int, str, str, str, int, str, str, str, bool, str, type(None), str),
})
COMPARED = len(FIELDS) + 1  # a row is the same receipt when these agree; which node journaled it is not compared
_TYPE_RULES = {
    "id": (int, "a whole number above 0"), "report": (int, "a whole number of at most 3 digits"),
    "final": (bool, "true or false"),
}
# timestamp_raw (?6 again): the journal keeps only the normalised Timestamp1, not the text the provider sent.
_INSERT = ("INSERT OR IGNORE INTO receipts (id, received_at, message_id, sent_to, report, timestamp, label, state, "
           "final, remote_addr, tls_client, node, timestamp_raw) "
           "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?6)")
_STORED_COLUMNS = ("id, received_at, message_id, sent_to, report, timestamp, label, state, final, remote_addr, "
                   "nullif(tls_client, '')")
_STORED_IN_RANGE = f"SELECT {_STORED_COLUMNS} FROM receipts WHERE id BETWEEN ? AND ?"
_STORED_BY_ID = f"SELECT {_STORED_COLUMNS} FROM receipts WHERE id IN (SELECT value FROM json_each(?))"
_FIND_KEY = "SELECT id FROM receipts WHERE message_id = ? AND sent_to = ? AND report = ? AND timestamp = ?"

Row = tuple[Any, ...]
Place = tuple[str, int]  # file, line number


@dataclass
class RebuildReport:
    """What a rebuild found and did, line by line where a line was not stored.

    `conflicts` and `bad_lines` describe at most LISTED lines each, as
    `file:line: what`; `conflict_count` and `bad_line_count` count them all.
    """

    files: int = 0
    lines: int = 0  # non-blank lines read
    inserted: int = 0
    already_there: int = 0  # same id, same receipt: an earlier rebuild, or a line repeated after a crash
    conflicts: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)
    conflict_count: int = 0
    bad_line_count: int = 0
    transactions: int = 0
    longest_lock_ms: float = 0.0  # the longest a transaction held the database's write lock
    seconds: float = 0.0

    def conflict(self, text: str) -> None:
        self.conflict_count += 1
        if len(self.conflicts) < LISTED:
            self.conflicts.append(text)

    def bad_line(self, text: str) -> None:
        self.bad_line_count += 1
        if len(self.bad_lines) < LISTED:
            self.bad_lines.append(text)

    def __str__(self) -> str:
        rate = f", {self.inserted / self.seconds:,.0f} rows/s" if self.seconds and self.inserted else ""
        lines = [f"{self.files} journal file(s), {self.lines:,} line(s): {self.inserted:,} stored, "
                 f"{self.already_there:,} already there, {self.conflict_count:,} conflict(s), "
                 f"{self.bad_line_count:,} bad line(s); {self.seconds:.1f} s{rate}, {self.transactions:,} "
                 f"transaction(s), write lock held at most {self.longest_lock_ms:.0f} ms"]
        lines += [f"  conflict: {text}" for text in self.conflicts]
        lines += [f"  bad line: {text}" for text in self.bad_lines]
        for listed, count, what in ((self.conflicts, self.conflict_count, "conflict"),
                                    (self.bad_lines, self.bad_line_count, "bad line")):
            if count > len(listed):
                lines.append(f"  ... and {count - len(listed)} more {what}(s)")
        if self.conflict_count:
            lines.append("conflicting lines were not stored: the database keeps the receipt it had under that id "
                         "or key; compare the two and delete the wrong row by hand if the journal is right")
        if self.bad_line_count:
            lines.append("bad lines were skipped; the rest of each file was read")
        return "\n".join(lines)


def rebuild_from_journals(database: Path, files: list[Path], progress: TextIO | None = None,
                          connection: Any = None) -> RebuildReport:
    """Insert every receipt the journal files hold into `database` under its journal id; report what was not.

    The database is created or migrated first; a daemon may be serving on
    it meanwhile. Files are read in the order of their first id (see the
    module docstring); progress, when given, gets a line per file and one
    every PROGRESS_SECONDS. `connection`, when given, is the database
    already opened and migrated (PostgreSQL's, dlrd.pgsql.PgConnection):
    several nodes' journals merge into it, each line under its own id,
    and new receipts then get ids past the largest.
    """
    started = time.monotonic()
    for path in files:
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise StartupError(f"cannot read the journal file {path}: {error.strerror or error}") from None
    report = RebuildReport(files=len(files))
    if connection is None:
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            # NORMAL: in WAL mode a power cut can take the last commits, never corrupt; running again restores them.
            connection = connect(database, LOCK_TIMEOUT_SECONDS, "normal")
        except (OSError, sqlite3.Error) as error:
            raise StartupError(f"cannot open the database {database}: {error}") from None
    try:
        migrate_sqlite = isinstance(connection, sqlite3.Connection)
        if migrate_sqlite:
            migrate(connection)
        connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        connection.execute("PRAGMA wal_autocheckpoint = 0")  # see _Loader.checkpoint
        loader = _Loader(connection, report)
        ticker = _Progress(progress, report)
        for path in sorted(files, key=_first_id):
            for rows, places in _journal_rows(path, report):
                loader.add(rows, places)
                ticker.tick()
            ticker.file_done(path)
        loader.finish()
        if not migrate_sqlite:
            connection.follow_explicit_ids()
    except sqlite3.Error as error:
        raise StartupError(f"cannot rebuild into the database {database}: {error} (locked by another program for "
                           f"over {LOCK_TIMEOUT_SECONDS:g} s?); what was committed stays, and running it again "
                           "stores nothing twice") from None
    finally:
        connection.close()
    report.seconds = time.monotonic() - started
    return report


def _open_journal(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _first_id(path: Path) -> int:
    """The id on the file's first readable line, for the reading order; a file with none goes last."""
    try:
        with _open_journal(path) as handle:
            for line in islice(handle, 100):
                try:
                    found = json.loads(line)["id"]
                except (ValueError, RecursionError, KeyError, TypeError):
                    continue
                if type(found) is int:
                    return found
    except (OSError, EOFError, zlib.error):
        pass
    return MAX_ID + 1


def _journal_rows(path: Path, report: RebuildReport) -> Iterator[tuple[list[Row], list[Place]]]:
    """The valid rows of one file, a chunk at a time, with their places; bad lines go to the report."""
    name = str(path)
    number = 0  # the last line read
    try:
        with _open_journal(path) as handle:
            while lines := list(islice(handle, PARSE_CHUNK)):
                first = number + 1
                number += len(lines)
                rows = _parse_whole_chunk(lines)
                if rows is not None:
                    report.lines += len(rows)
                    yield rows, list(zip(repeat(name), range(first, number + 1)))
                else:
                    yield _parse_line_by_line(lines, name, first, report)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        report.bad_line(f"{name}:{number + 1}: the gzip data is damaged or cut off there ({error}); "
                        "the lines before it were read")


def _parse_whole_chunk(lines: list[bytes]) -> list[Row] | None:
    """Every line of the chunk as a row, or None when any line is not a valid receipt (then each is read alone).

    The lines are parsed as one JSON array. A blank or torn line breaks the
    array; lines that hold more or fewer than one value each change the
    count; an array element that is not a valid receipt fails the checks:
    each sends the chunk to the line-by-line path, which names the line.
    """
    try:
        records = json.loads(b"[" + b",".join(lines) + b"]")
        if len(records) != len(lines):
            return None
        rows = [(*_pick(record), record.get("tls_client"), record.get("node", "")) for record in records]
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return None
    return rows if all(map(_valid, rows)) else None


def _parse_line_by_line(lines: list[bytes], name: str, first: int,
                        report: RebuildReport) -> tuple[list[Row], list[Place]]:
    rows: list[Row] = []
    places: list[Place] = []
    for number, line in enumerate(lines, first):
        if not line.strip():
            continue
        report.lines += 1
        try:
            record = json.loads(line)
            row = (*_pick(record), record.get("tls_client"), record.get("node", ""))
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
            report.bad_line(f"{name}:{number}: {_why_bad(line)}")
            continue
        if _valid(row):
            rows.append(row)
            places.append((name, number))
        else:
            report.bad_line(f"{name}:{number}: {_why_bad(line)}")
    return rows, places


def _valid(row: Row) -> bool:
    """The row's fields have the journal's types, its id fits SQLite and its report code three digits."""
    return tuple(map(type, row)) in _VALID_TYPES and 0 < row[0] <= MAX_ID and -999 <= row[4] <= 999


def _why_bad(line: bytes) -> str:
    """The operator's reason a line is not a receipt; called only for bad lines, so it may be slow."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as error:
        if not line.endswith(b"\n"):
            return "cut off: the file ends mid-line (a crash while it was written?)"
        return f"not JSON ({error})"
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    missing = [name for name in FIELDS if name not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    for name in (*FIELDS, "tls_client", "node"):
        if (name == "tls_client" and record.get(name) is None) or (name == "node" and name not in record):
            continue
        kind, wanted = _TYPE_RULES.get(name, (str, "a string"))
        value = record[name]
        if type(value) is not kind:
            return f"{name} must be {wanted}, not {json.dumps(value)[:40]}"
    if not 0 < record["id"] <= MAX_ID:
        return f"id must be a whole number above 0, not {record['id']}"
    return f"report must be a whole number of at most 3 digits, not {record['report']}"


class _Loader:
    """Collects rows and commits them in transactions sized to hold the write lock about TARGET_LOCK_SECONDS."""

    def __init__(self, connection: sqlite3.Connection, report: RebuildReport) -> None:
        self.connection = connection
        self.report = report
        self.batch_size = FIRST_BATCH
        self.rows: list[Row] = []
        self.places: list[Place] = []
        self.since_checkpoint = 0

    def add(self, rows: list[Row], places: list[Place]) -> None:
        self.rows += rows
        self.places += places
        while len(self.rows) >= self.batch_size:
            size = self.batch_size
            self._commit(self.rows[:size], self.places[:size])
            del self.rows[:size], self.places[:size]

    def finish(self) -> None:
        """Commit what is left, and copy the write-ahead log into the database."""
        if self.rows:
            self._commit(self.rows, self.places)
            self.rows, self.places = [], []
        self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _commit(self, rows: list[Row], places: list[Place]) -> None:
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        locked_at = time.perf_counter()
        try:
            fresh, fresh_places = self._not_stored(rows, places)
            before = connection.total_changes
            connection.executemany(_INSERT, fresh)
            inserted = connection.total_changes - before
            if inserted < len(fresh):
                self._report_key_conflicts(fresh, fresh_places)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        held = time.perf_counter() - locked_at
        self.report.inserted += inserted
        self.report.transactions += 1
        self.report.longest_lock_ms = max(self.report.longest_lock_ms, held * 1000)
        # Grows at most twice per step, so one quick commit cannot make the next one long.
        wanted = int(len(rows) * TARGET_LOCK_SECONDS / max(held, 1e-3))
        self.batch_size = max(MIN_BATCH, min(MAX_BATCH, wanted, 2 * self.batch_size))
        self.since_checkpoint += inserted
        if self.since_checkpoint >= CHECKPOINT_ROWS:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database, outside any transaction.

        SQLite's automatic checkpoint would run inside COMMIT, after the write
        lock is released but before the lock's hold time can be measured, and
        at every commit once the log is past 1000 pages (each commit here
        writes more than that). A PASSIVE checkpoint blocks no writer and
        leaves what a reader still uses for the next one (or the daemon's
        checkpointer); once the log is copied, the next commit starts it over.
        """
        self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.since_checkpoint = 0

    def _not_stored(self, rows: list[Row], places: list[Place]) -> tuple[list[Row], list[Place]]:
        """The rows whose id is free; the others are counted as already there or reported as conflicts."""
        ids = [row[0] for row in rows]
        low, high = min(ids), max(ids)
        if high - low < 2 * len(ids):
            cursor = self.connection.execute(_STORED_IN_RANGE, (low, high))
        else:  # ids far apart: a range would read every row in between
            cursor = self.connection.execute(_STORED_BY_ID, (json.dumps(ids),))
        stored = {row[0]: row for row in cursor}
        if not stored and len(set(ids)) == len(ids):
            return rows, places
        fresh, fresh_places = [], []
        for row, place in zip(rows, places):
            there = stored.get(row[0])
            if there is None:
                stored[row[0]] = row  # a repeat further on in this batch meets it here
                fresh.append(row)
                fresh_places.append(place)
            elif there[:COMPARED] == row[:COMPARED]:  # final is 1 in the table and true in JSON: equal in Python
                self.report.already_there += 1
            else:
                self.report.conflict(f"{place[0]}:{place[1]}: id {row[0]} is taken by another receipt "
                                     f"({_describe(there)}); this line's {_describe(row)} was not stored")
        return fresh, fresh_places

    def _report_key_conflicts(self, fresh: list[Row], places: list[Place]) -> None:
        """Name the rows the unique key turned away: the same receipt is stored under another id."""
        for row, place in zip(fresh, places):
            found = self.connection.execute(_FIND_KEY, (row[2], row[3], row[4], row[5])).fetchone()
            if found is not None and found[0] != row[0]:
                self.report.conflict(f"{place[0]}:{place[1]}: the receipt of id {row[0]} ({_describe(row)}) "
                                     f"is already stored as id {found[0]}; not stored again")


def _describe(row: Row) -> str:
    return f"message {row[2]} to {row[3]}, report {row[4]} at {row[5]}, received {row[1]}"


class _Progress:
    """A line per file read, and one every PROGRESS_SECONDS during a long one."""

    def __init__(self, stream: TextIO | None, report: RebuildReport) -> None:
        self.stream = stream
        self.report = report
        self.next_at = time.monotonic() + PROGRESS_SECONDS

    def tick(self) -> None:
        if self.stream is not None and time.monotonic() >= self.next_at:
            self.next_at = time.monotonic() + PROGRESS_SECONDS
            self._say(f"... {self.report.lines:,} line(s) read, {self.report.inserted:,} stored so far")

    def file_done(self, path: Path) -> None:
        self._say(f"read {path}: {self.report.lines:,} line(s) so far, {self.report.bad_line_count} bad")

    def _say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)
