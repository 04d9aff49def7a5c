"""`dlrd query` against receipts a running daemon stored from real POSTs, read the way an operator reads them."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import termios
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Daemon
from provider import receipt_envelope
from terminal import Result, cli_env, run_cli, run_in_terminal
from wire import KeepAliveClient, post, soap_report, wait_for

from dlrd.journal import JOURNAL_FIELDS, journal_line
from dlrd.query import SELECTED, Selection, build_sql, journal_record

NUMBER_A, NUMBER_B, NUMBER_C, NUMBER_D = "447700900001", "447700900002", "447700900003", "447700900004"
BULK = 120  # enough journal-sized lines to fill a shrunken pipe many times over


def timestamp1(seconds_ago: float) -> str:
    """Timestamp1 as the provider writes it, `seconds_ago` before now."""
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def send(daemon: Daemon, message_id: str, sent_to: str, report: int, stamp: str) -> None:
    """POST one receipt as the provider does; it must be stored (Report 0)."""
    body = receipt_envelope(MessageIdentifier=message_id, SentTo=sent_to, Report=str(report), Timestamp1=stamp)
    answer = post(daemon.address, body)
    assert answer.status == 200 and soap_report(answer) == 0, answer


def send_bulk(daemon: Daemon, count: int, prefix: str = "B") -> None:
    client = KeepAliveClient(daemon.address)
    try:
        for n in range(count):
            body = receipt_envelope(MessageIdentifier=f"{prefix}{n:04d}", SentTo=f"4477008{n % 7:05d}",
                                    Report="0", Timestamp1=timestamp1(2))
            answer = client.post(body)
            assert answer.status == 200 and soap_report(answer) == 0
    finally:
        client.close()


def fill(daemon: Daemon) -> None:
    """The stories the tests ask about, then a bulk of plain deliveries."""
    send(daemon, "M1", NUMBER_A, -4, timestamp1(60))
    send(daemon, "M1", NUMBER_A, 0, timestamp1(30))
    send(daemon, "M2", NUMBER_B, -4, timestamp1(60))
    send(daemon, "M2", NUMBER_B, 27, timestamp1(20))
    send(daemon, "M3", NUMBER_A, -4, timestamp1(10))
    send(daemon, "M4", "+" + NUMBER_C, 0, timestamp1(5))
    # Out of order: the delivery is stamped later than the delay that arrives after it.
    send(daemon, "M5", NUMBER_D, 0, timestamp1(5))
    send(daemon, "M5", NUMBER_D, -3, timestamp1(50))
    send(daemon, "M6", NUMBER_D, 99, timestamp1(1))
    send_bulk(daemon, BULK)


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Daemon:
    """One daemon for the module, its database filled through real POSTs, its journal caught up."""
    daemon = Daemon(tmp_path_factory.mktemp("query"))
    daemon.start()
    fill(daemon)
    wait_for(lambda: len(daemon.journal()) == 9 + BULK, what="every receipt journaled")
    yield daemon
    if daemon.process is not None:
        assert daemon.stop() == 0


def newest_first(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda record: (record["received_at"], record["id"]), reverse=True)


def ids_of(result: Result) -> list[str]:
    return [row["message_id"] for row in result.json()]


# json: the journal's own lines


def test_piped_output_is_json_lines_equal_to_the_journal_lines_newest_first(filled):
    result = run_cli(filled.ini, "query")
    journal_lines = {json.loads(line)["id"]: line for line in
                     (filled.data / "receipts.jsonl").read_text().splitlines()}
    assert result.json() == newest_first(filled.journal())
    # Byte for byte, so `dlrd query | jq` and `tail -F receipts.jsonl | jq` take the same filter.
    for line in result.lines():
        assert line == journal_lines[json.loads(line)["id"]]
    assert list(result.json()[0]) == [*JOURNAL_FIELDS, "node"]


def test_a_tls_client_identity_is_printed_as_the_journal_prints_it():
    values = (7, "2026-12-01T13:38:00.123Z", "M1", NUMBER_A, 0, "Accepted by phone", "delivered", 1,
              "2026-12-01T13:37:58Z", "203.0.113.10", "CN=dlr.example")
    row = dict(zip(SELECTED, values, strict=True))
    assert json.dumps(journal_record(values), ensure_ascii=False, separators=(",", ":")) + "\n" == \
        journal_line(row).decode()
    assert "tls_client" not in journal_record((*values[:-1], None))


# the filters


def test_message_id_gives_every_receipt_of_that_message_newest_first(filled):
    rows = run_cli(filled.ini, "query", "--message-id", "M1").json()
    assert [(row["message_id"], row["report"], row["state"]) for row in rows] == [
        ("M1", 0, "delivered"), ("M1", -4, "pending")]
    both = run_cli(filled.ini, "query", "--message-id", "M1,M2").json()
    assert sorted({row["message_id"] for row in both}) == ["M1", "M2"] and len(both) == 4
    assert run_cli(filled.ini, "query", "--message-id", "M1", "--message-id", "M4").json()[0]["message_id"] == "M4"
    assert run_cli(filled.ini, "query", "--message-id", "m1").stdout == ""  # exact: case matters


def test_to_matches_the_number_with_or_without_a_plus(filled):
    assert sorted(ids_of(run_cli(filled.ini, "query", "--to", NUMBER_A))) == ["M1", "M1", "M3"]
    assert ids_of(run_cli(filled.ini, "query", "--to", "+" + NUMBER_C)) == ["M4"]
    assert ids_of(run_cli(filled.ini, "query", "--to", NUMBER_C)) == ["M4"]


def test_state_and_report_filter_and_combine(filled):
    assert [(row["message_id"], row["report"]) for row in run_cli(filled.ini, "query", "--state", "failed").json()] \
        == [("M2", 27)]
    unknown = run_cli(filled.ini, "query", "--state", "unknown").json()
    assert [(row["message_id"], row["label"]) for row in unknown] == [("M6", "Unknown report code 99")]
    pending = run_cli(filled.ini, "query", "--report", "-4", "--to", NUMBER_A).json()
    assert sorted(row["message_id"] for row in pending) == ["M1", "M3"]
    assert {row["report"] for row in run_cli(filled.ini, "query", "--report", "27,-3").json()} == {-3, 27}
    assert run_cli(filled.ini, "query", "--state", "failed", "--report", "0").stdout == ""


def test_since_and_until_split_the_receipts_at_an_arrival_time(filled):
    journal = sorted(filled.journal(), key=lambda record: (record["received_at"], record["id"]))
    middle = journal[len(journal) // 2]["received_at"]
    since = run_cli(filled.ini, "query", "--since", middle).json()
    until = run_cli(filled.ini, "query", "--until", middle).json()
    assert since == newest_first([record for record in journal if record["received_at"] >= middle])
    assert until == newest_first([record for record in journal if record["received_at"] < middle])
    assert len(since) + len(until) == len(journal)
    # The same instant written in another zone is the same bound.
    plus_one = (datetime.fromisoformat(middle.replace("Z", "+00:00")) + timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+01:00"
    assert run_cli(filled.ini, "query", "--since", plus_one).json() == since
    assert len(run_cli(filled.ini, "query", "--since", "1h").json()) == len(journal)
    nothing = run_cli(filled.ini, "query", "--until", "1h")
    assert nothing.stdout == "" and "no receipt matches" in nothing.stderr


def test_limit_and_oldest_first_pick_the_ends(filled):
    everything = newest_first(filled.journal())
    assert run_cli(filled.ini, "query", "--limit", "3").json() == everything[:3]
    assert run_cli(filled.ini, "query", "--limit", "3", "--oldest-first").json() == everything[::-1][:3]
    assert [row["message_id"] for row in run_cli(filled.ini, "query", "--oldest-first", "--limit", "2").json()] \
        == ["M1", "M1"]


def test_latest_gives_one_row_per_message_with_its_latest_state(filled):
    rows = run_cli(filled.ini, "query", "--latest").json()
    by_message = {(row["message_id"], row["sent_to"]): row for row in rows}
    assert len(by_message) == len(rows) == 6 + BULK
    assert by_message[("M1", NUMBER_A)]["report"] == 0
    assert by_message[("M2", NUMBER_B)]["state"] == "failed"
    assert by_message[("M3", NUMBER_A)]["state"] == "pending"
    # The delay arrived after the delivery: the final state stays.
    assert by_message[("M5", NUMBER_D)]["report"] == 0
    # Each row is the journal record of the receipt that holds the latest state.
    journal = {record["id"]: record for record in filled.journal()}
    assert all(row == journal[row["id"]] for row in rows)
    assert ids_of(run_cli(filled.ini, "query", "--latest", "--state", "pending")) == ["M3"]
    assert [row["report"] for row in run_cli(filled.ini, "query", "--latest", "--message-id", "M5").json()] == [0]
    assert ids_of(run_cli(filled.ini, "query", "--latest", "--to", NUMBER_A, "--oldest-first")) == ["M1", "M3"]


# the formats


def test_csv_has_a_header_row_and_the_journal_values(filled):
    result = run_cli(filled.ini, "query", "--format", "csv", "--message-id", "M2")
    assert result.lines()[0] == ",".join((*JOURNAL_FIELDS, "tls_client"))
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["report"], row["state"], row["final"], row["tls_client"]) for row in rows] == [
        ("27", "failed", "true", ""), ("-4", "pending", "false", "")]
    empty = run_cli(filled.ini, "query", "--format", "csv", "--message-id", "NOSUCH")
    assert empty.lines() == [",".join((*JOURNAL_FIELDS, "tls_client"))]


def test_on_a_terminal_the_default_is_a_table_that_fits_80_columns(filled):
    result = run_in_terminal(filled.ini, "query", "--limit", "400")
    assert result.returncode == 0, result.stderr
    lines = result.lines()
    assert lines[0].split() == ["received", "(UTC)", "message", "id", "to", "state", "report"]
    assert len(lines) == 1 + 9 + BULK
    assert max(len(line) for line in lines) <= 80
    m2 = next(line for line in lines if " M2 " in line and "failed" in line)
    assert NUMBER_B in m2 and "27 Expired by SMSC" in m2
    # Aligned: every row starts its message id where the header does.
    column = lines[0].index("message id")
    assert all(line[column:].split()[0].startswith(("M", "B")) for line in lines[1:])


def test_a_narrow_terminal_elides_labels_but_never_ids(filled):
    result = run_in_terminal(filled.ini, "query", "--message-id", "M2", columns=66)
    lines = result.lines()
    assert max(len(line) for line in lines) <= 66
    assert " M2 " in lines[1] and NUMBER_B in lines[1] and "27 Exp" in lines[1]
    assert "27 Expired by SMSC" not in lines[1] and lines[1].endswith(("…", "~"))


def test_an_empty_table_says_so_where_the_rows_would_be(filled):
    result = run_in_terminal(filled.ini, "query", "--message-id", "NOSUCH")
    assert result.returncode == 0 and result.stdout.strip() == "no receipt matches"


def test_table_can_be_asked_for_when_piped(filled):
    lines = run_cli(filled.ini, "query", "--format", "table", "--to", NUMBER_A).lines()
    assert lines[0].startswith("received (UTC)") and len(lines) == 4


# unusable arguments and files


@pytest.mark.parametrize("args, words", [
    (["--since", "last tuesday"], "is not a time"),
    (["--until", "2026-13-01"], "is not a time"),
    (["--state", "lost"], "is not a state"),
    (["--report", "zero"], "is not a report code"),
    (["--limit", "0"], "is not a count"),
    (["--to", "call-me"], "is not a handset number"),
    (["--format", "xml"], "invalid choice"),
    (["--since", "1h", "--until", "2h"], "is not before --until"),
])
def test_an_unusable_argument_is_exit_2_with_one_line(filled, args, words):
    result = run_cli(filled.ini, "query", *args, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_no_database_is_exit_3_saying_what_to_do(tmp_path):
    ini = tmp_path / "dlrd.ini"
    ini.write_text(f"[storage]\ndatabase = {tmp_path / 'missing.db'}\n")
    result = run_cli(ini, "query", check=False)
    assert result.returncode == 3 and "no database at" in result.stderr and "dlrd serve" in result.stderr


@pytest.fixture
def open_directory() -> Path:
    """A directory under /tmp that another user can reach (pytest's own tmp_path is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="dlrd-query-"))
    path.chmod(0o755)
    yield path
    for inner in [path, *path.rglob("*")]:
        inner.chmod(0o755 if inner.is_dir() else 0o644)
    shutil.rmtree(path)


def in_read_only(directory: Path, command: list[str]) -> list[str]:
    """`command` run where `directory` really is read-only: by permissions, or for root (whom permissions
    do not stop) inside a private mount namespace where it is mounted read-only; the host sees no mount."""
    if os.geteuid() != 0:
        return command
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("running as root without unshare --mount: cannot make a directory read-only for root")
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(directory), *command]


def test_a_copy_in_a_read_only_directory_with_no_daemon_answers_the_same(filled, open_directory):
    copy_dir = open_directory / "copy"
    copy_dir.mkdir()
    source, target = sqlite3.connect(filled.data / "dlrd.db"), sqlite3.connect(copy_dir / "dlrd.db")
    source.backup(target)
    target.execute("PRAGMA journal_mode = WAL")  # as the daemon's file is: a WAL reader wants a -shm beside it
    source.close()
    target.close()
    ini = open_directory / "copy.ini"
    ini.write_text(f"[storage]\ndatabase = {copy_dir / 'dlrd.db'}\n")
    expected = run_cli(filled.ini, "query", "--to", NUMBER_A).stdout
    (copy_dir / "dlrd.db").chmod(0o444)
    copy_dir.chmod(0o555)
    query = [sys.executable, "-m", "dlrd", "query", "--config", str(ini), "--to", NUMBER_A]
    stats = [sys.executable, "-m", "dlrd", "stats", "--config", str(ini), "--since", "1h"]
    try:
        assert subprocess.run(in_read_only(copy_dir, ["touch", str(copy_dir / "probe")]),
                              capture_output=True).returncode != 0, "the directory is not read-only"
        done = subprocess.run(in_read_only(copy_dir, query), capture_output=True, text=True, timeout=60,
                              env=cli_env())
        summary = subprocess.run(in_read_only(copy_dir, stats), capture_output=True, text=True, timeout=60,
                                 env=cli_env())
    finally:
        copy_dir.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected and len(done.stdout.splitlines()) == 3
    assert summary.returncode == 0 and json.loads(summary.stdout)["receipts"] == 9 + BULK
    assert sorted(path.name for path in copy_dir.iterdir()) == ["dlrd.db"]  # nothing was written beside it


def test_a_copy_whose_write_ahead_log_cannot_be_read_is_refused_not_shown_stale(filled, open_directory):
    writable, copy_dir = open_directory / "work", open_directory / "copy"
    writable.mkdir()
    copy_dir.mkdir()
    source, target = sqlite3.connect(filled.data / "dlrd.db"), sqlite3.connect(writable / "dlrd.db")
    source.backup(target)
    source.close()
    target.execute("PRAGMA journal_mode = WAL")
    target.execute("PRAGMA wal_autocheckpoint = 0")
    target.execute("DELETE FROM receipts WHERE message_id = 'M1'")
    target.commit()
    try:  # copied as `cp dlrd.db dlrd.db-wal` would, while the log still holds that commit
        for name in ("dlrd.db", "dlrd.db-wal"):
            shutil.copy(writable / name, copy_dir / name)
    finally:
        target.close()
    ini = open_directory / "copy.ini"
    ini.write_text(f"[storage]\ndatabase = {copy_dir / 'dlrd.db'}\n")
    copy_dir.chmod(0o555)
    try:
        command = [sys.executable, "-m", "dlrd", "query", "--config", str(ini), "--message-id", "M1"]
        done = subprocess.run(in_read_only(copy_dir, command), capture_output=True, text=True, timeout=60,
                              env=cli_env())
    finally:
        copy_dir.chmod(0o755)
    assert done.returncode == 3 and done.stdout == ""
    assert "write-ahead log dlrd.db-wal holds commits" in done.stderr and ".backup" in done.stderr


# beside the running daemon


def test_a_query_holding_its_cursor_never_holds_up_the_daemon(daemon_factory):
    daemon = daemon_factory()
    send_bulk(daemon, BULK, prefix="Q")
    wait_for(lambda: len(daemon.journal()) == BULK, what="the first receipts journaled")
    command = [sys.executable, "-m", "dlrd", "query", "--config", str(daemon.ini), "--oldest-first"]
    # A one-page pipe: the query soon blocks writing, its statement (and read snapshot) open.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    reader = subprocess.Popen(command, stdout=write_end, stderr=subprocess.PIPE, env=cli_env())
    os.close(write_end)
    output = os.fdopen(read_end, "rb")
    try:
        # Its output is several times what the pipe and its own buffer hold: once a byte is in the
        # pipe, the query has begun its statement and cannot end it until this test reads.
        wait_for(lambda: reader.poll() is not None or waiting_bytes(read_end) > 0, 30, "the query's first rows")
        assert reader.poll() is None, reader.stderr.read()
        # It runs at the lowest CPU priority, so on a small machine the daemon's requests come first.
        assert int(Path(f"/proc/{reader.pid}/stat").read_text().rpartition(")")[2].split()[16]) == 19
        started = time.monotonic()
        for n in range(20):
            send(daemon, f"LIVE{n}", NUMBER_A, 0, timestamp1(1))
        assert time.monotonic() - started < 10
        assert reader.poll() is None  # still held up by its reader, not by the daemon
        printed = [json.loads(line)["message_id"] for line in output.read().decode().splitlines()]
        assert reader.wait(30) == 0, reader.stderr.read()
    finally:
        output.close()
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    # It printed what was committed when it began, and nothing of what came in meanwhile.
    assert printed == [f"Q{n:04d}" for n in range(BULK)]
    assert len(run_cli(daemon.ini, "query", "--message-id", "LIVE19").json()) == 1


def waiting_bytes(fd: int) -> int:
    """Bytes written into a pipe and not read yet."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_each_lookup_is_an_index_search(filled):
    now = datetime.now(UTC)
    connection = sqlite3.connect(f"file:{filled.data / 'dlrd.db'}?mode=ro", uri=True)
    cases = {
        "sqlite_autoindex_receipts_1 (message_id=?)": Selection(message_ids=["M1"]),
        "receipts_sent_to (sent_to=?)": Selection(sent_to=[NUMBER_A]),
        "receipts_received_at (received_at>?)": Selection(since=now - timedelta(hours=1)),
    }
    try:
        for index, selection in cases.items():
            sql, parameters = build_sql(selection)
            plan = " | ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", parameters))
            assert f"SEARCH r USING INDEX {index}" in plan, plan
        # Newest first with no narrower filter walks the received_at index: no sort, rows stream.
        sql, parameters = build_sql(Selection(states=["failed"]))
        plan = " | ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", parameters))
        assert "USING INDEX receipts_received_at" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        connection.close()


def test_the_help_lists_every_option(filled):
    text = run_cli(filled.ini, "query", "--help").stdout
    for option in ("--message-id", "--to", "--state", "--report", "--since", "--until", "--latest", "--limit",
                   "--oldest-first", "--format", "--config"):
        assert option in text
    assert "newest first" in text and "journal" in text


def test_a_database_from_before_the_node_column_is_read_as_it_is(filled, tmp_path):
    """A copy taken before the upgrade (schema 2), read by the new dlrd without a daemon to migrate it."""
    copy = tmp_path / "before.db"
    source, target = sqlite3.connect(filled.data / "dlrd.db"), sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.execute("ALTER TABLE receipts DROP COLUMN node")
    target.execute("PRAGMA user_version = 2")
    target.commit()
    target.close()
    ini = tmp_path / "before.ini"
    ini.write_text(f"[storage]\ndatabase = {copy}\n")

    result = run_cli(ini, "query", "--limit", "2")

    assert result.returncode == 0, result.stderr
    assert [list(record) for record in result.json()] == [list(JOURNAL_FIELDS)] * 2
