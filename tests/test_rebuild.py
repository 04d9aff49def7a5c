"""`dlrd replay --journal`: a database rebuilt from the journal a running daemon wrote, rotated and gzipped.

The source is a real daemon fed real POSTs; its journal files, some of them
gzipped, are replayed by the `dlrd` command into an empty database, into
the same one again, with damaged and conflicting lines, and into the
database of a daemon that keeps serving meanwhile.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Daemon
from wire import post, receipt_body, soap_report, wait_for

# Every column the journal carries; timestamp_raw (the Timestamp1 text as sent) is the one it does not.
JOURNAL_COLUMNS = ("id", "received_at", "message_id", "sent_to", "report", "timestamp", "label", "state", "final",
                   "remote_addr", "tls_client")
REPORTS = (0, -4, -3, 2, 27)
RECEIPTS = 40
ROTATING = """
    [journal]
    rotate_bytes = 1500
"""


def run_dlrd(ini: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it, with --config after the subcommand."""
    command = [sys.executable, "-m", "dlrd", args[0], "--config", str(ini), *args[1:]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def rows_of(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as connection:
        return connection.execute(f"SELECT {', '.join(JOURNAL_COLUMNS)} FROM receipts ORDER BY id").fetchall()


def new_config(directory: Path) -> Path:
    """A config for a fresh data directory, as an operator writes one on a new machine."""
    directory.mkdir(parents=True)
    ini = directory / "dlrd.ini"
    ini.write_text(textwrap.dedent(f"""
        [storage]
        database = {directory / "data" / "dlrd.db"}
        [journal]
        directory = {directory / "data"}
    """))
    return ini


def post_receipts(daemon: Daemon, prefix: str, count: int) -> None:
    for n in range(count):
        answer = post(daemon.address, receipt_body(f"{prefix}{n:04d}", REPORTS[n % len(REPORTS)]))
        assert answer.status == 200 and soap_report(answer) == 0, answer


def journal_ids(daemon: Daemon) -> list[int]:
    return [record["id"] for record in daemon.journal_all()]


class Source:
    """A stopped daemon's database and a copy of its journal, rotated files half gzipped."""

    def __init__(self, daemon: Daemon, journal: Path) -> None:
        self.daemon = daemon
        self.database = daemon.data / "dlrd.db"
        self.journal = journal
        self.rows = rows_of(self.database)

    def files(self) -> list[Path]:
        return sorted(self.journal.iterdir())

    def copy(self, target: Path) -> list[Path]:
        shutil.copytree(self.journal, target)
        return sorted(target.iterdir())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Source:
    daemon = Daemon(tmp_path_factory.mktemp("source"))
    daemon.start(ROTATING)
    post_receipts(daemon, "RB", RECEIPTS)
    assert daemon.stop() == 0, daemon.log()
    files = daemon.journal_files()
    assert len(files) >= 5, "the journal should have rotated several times"
    journal = daemon.directory / "journal-copy"
    journal.mkdir()
    for n, path in enumerate(files):
        if n % 2 == 0 and path.name != "receipts.jsonl":
            (journal / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
        else:
            shutil.copy(path, journal / path.name)
    assert journal_ids(daemon) == list(range(1, RECEIPTS + 1))
    return Source(daemon, journal)


def test_a_journal_rebuilds_the_database_row_for_row_and_twice_stores_nothing_twice(source, tmp_path):
    ini = new_config(tmp_path / "new")
    database = tmp_path / "new" / "data" / "dlrd.db"
    files = source.files()
    assert any(path.name.endswith(".gz") for path in files) and any(path.name.endswith(".jsonl") for path in files)
    shuffled = [str(path) for path in files[::-1]]  # newest first: the order on the command line does not matter

    first = run_dlrd(ini, "replay", "--journal", *shuffled)
    assert f"{len(files)} journal file(s), {RECEIPTS} line(s): {RECEIPTS} stored, 0 already there, " \
           "0 conflict(s), 0 bad line(s)" in first.stdout
    assert rows_of(database) == source.rows
    with sqlite3.connect(database) as connection:
        # Not in the journal: the raw Timestamp1 is rebuilt from the normalised one.
        assert connection.execute("SELECT count(*) FROM receipts WHERE timestamp_raw != timestamp").fetchone()[0] == 0
        assert connection.execute("SELECT last_id FROM journal_position").fetchone()[0] == 0
    assert not (tmp_path / "new" / "data" / "receipts.jsonl").exists(), "a rebuild writes no journal"

    again = run_dlrd(ini, "replay", "--journal", *shuffled)
    assert f"{RECEIPTS} line(s): 0 stored, {RECEIPTS} already there, 0 conflict(s), 0 bad line(s)" in again.stdout
    assert rows_of(database) == source.rows


def test_torn_and_non_json_lines_are_reported_with_their_place_and_skipped(source, tmp_path):
    files = source.copy(tmp_path / "journal")
    plain = next(path for path in files if path.name.endswith(".jsonl") and path.name != "receipts.jsonl")
    lines = plain.read_bytes().splitlines(keepends=True)
    plain.write_bytes(b"".join([lines[0], b"this is not json\n", *lines[1:]]))
    current = tmp_path / "journal" / "receipts.jsonl"
    current.write_bytes(current.read_bytes() + b'{"id": 41, "received_at": "2026-')  # a crash mid-line
    current_lines = len(current.read_bytes().splitlines())
    ini = new_config(tmp_path / "new")

    result = run_dlrd(ini, "replay", "--journal", *map(str, files))
    assert f"{RECEIPTS + 2} line(s): {RECEIPTS} stored, 0 already there, 0 conflict(s), 2 bad line(s)" \
           in result.stdout
    assert f"bad line: {plain}:2: not JSON" in result.stdout
    assert f"bad line: {current}:{current_lines}: cut off: the file ends mid-line" in result.stdout
    assert rows_of(tmp_path / "new" / "data" / "dlrd.db") == source.rows


def test_lines_that_conflict_with_stored_receipts_are_reported_not_stored(source, tmp_path):
    ini = new_config(tmp_path / "new")
    database = tmp_path / "new" / "data" / "dlrd.db"
    run_dlrd(ini, "replay", "--journal", *map(str, source.files()))
    first = dict(zip(JOURNAL_COLUMNS, source.rows[0]))
    first["final"] = bool(first["final"])
    del first["tls_client"]
    moved = {**first, "id": 500}  # the same receipt under another id
    changed = {**first, "message_id": "OTHER01"}  # another receipt under a stored id
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(record) + "\n" for record in (moved, changed)))

    result = run_dlrd(ini, "replay", "--journal", str(extra))
    assert "2 line(s): 0 stored, 0 already there, 2 conflict(s), 0 bad line(s)" in result.stdout
    assert f"conflict: {extra}:1: the receipt of id 500 (message {first['message_id']} " in result.stdout
    assert f"is already stored as id {first['id']}; not stored again" in result.stdout
    assert f"conflict: {extra}:2: id {first['id']} is taken by another receipt (message {first['message_id']}" \
           in result.stdout
    assert rows_of(database) == source.rows


def test_a_running_daemon_keeps_serving_and_journals_each_rebuilt_receipt_once(source, daemon_factory):
    daemon = daemon_factory(name="fresh")  # a new machine: empty database, empty journal
    result = run_dlrd(daemon.ini, "replay", "--journal", *map(str, source.files()))
    assert f"{RECEIPTS} stored" in result.stdout
    wait_for(lambda: len(journal_ids(daemon)) >= RECEIPTS, what="the daemon to journal the rebuilt rows")
    post_receipts(daemon, "AFTER", 5)
    wait_for(lambda: len(journal_ids(daemon)) >= RECEIPTS + 5, what="the new receipts in the journal")
    assert journal_ids(daemon) == list(range(1, RECEIPTS + 6))
    assert rows_of(daemon.data / "dlrd.db")[:RECEIPTS] == source.rows
    assert daemon.journal_all()[:RECEIPTS] == source.daemon.journal_all()


def test_a_daemon_whose_database_was_lost_takes_its_journal_back_without_journaling_it_again(tmp_path):
    daemon = Daemon(tmp_path / "lost")
    daemon.directory.mkdir()
    daemon.start()
    try:
        post_receipts(daemon, "LOST", 10)
        assert daemon.stop() == 0
        before = daemon.journal_all()
        kept = rows_of(daemon.data / "dlrd.db")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{daemon.data / 'dlrd.db'}{suffix}").unlink(missing_ok=True)
        daemon.start()  # the journal is ahead of the (new, empty) database
        result = run_dlrd(daemon.ini, "replay", "--journal", *map(str, daemon.journal_files()))
        assert "10 stored" in result.stdout
        assert rows_of(daemon.data / "dlrd.db") == kept
        post_receipts(daemon, "BACK", 3)
        wait_for(lambda: len(daemon.journal_all()) >= 13, what="the new receipts in the journal")
        assert daemon.journal_all()[:10] == before
        assert journal_ids(daemon) == list(range(1, 14))
        assert [row[0] for row in rows_of(daemon.data / "dlrd.db")] == list(range(1, 14))
    finally:
        if daemon.process is not None:
            assert daemon.stop() == 0, daemon.log()
