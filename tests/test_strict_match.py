"""[storage] strict_match and `dlrd expect`, against a running daemon: both ways, and the customer's own writes."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

from wire import Answer, post, receipt_body, soap_report, wait_for

STRICT = """
    [storage]
    strict_match = yes
"""


def dlrd(daemon, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dlrd", *args[:1], "--config", str(daemon.ini), *args[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, input=stdin)


def soap_text(answer: Answer) -> str:
    match = re.search(rb"<(?:\w+:)?Text[^>]*>([^<]*)<", answer.body)
    return match.group(1).decode() if match else ""


def expected(daemon) -> set[str]:
    return {row["message_id"] for row in daemon.rows("SELECT message_id FROM expected_messages")}


def test_expect_takes_ids_from_arguments_a_csv_file_and_stdin_exactly_as_written(daemon_factory, tmp_path: Path):
    daemon = daemon_factory(STRICT)
    first = dlrd(daemon, "expect", "3C7D98A4", "0042")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("2 message id(s) now expected, 0 already were")
    ids = tmp_path / "ids.csv"
    ids.write_text("message_id,submitted_at\n3C7D98A4,2026-12-01\n3c7d98a4,2026-12-01\n\n042,2026-12-01\n")
    from_file = dlrd(daemon, "expect", "--file", str(ids))
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.startswith("2 message id(s) now expected, 1 already were")
    from_stdin = dlrd(daemon, "expect", "--file", "-", stdin="STDIN1\nSTDIN2\n")
    assert from_stdin.stdout.startswith("2 message id(s) now expected, 0 already were")
    # Leading zeros and case are kept: each spelling is its own id, as the provider echoes it.
    assert expected(daemon) == {"3C7D98A4", "3c7d98a4", "0042", "042", "STDIN1", "STDIN2"}
    assert first.stderr == ""  # strict_match is on: no note


def test_expect_refuses_an_id_no_receipt_could_carry_and_records_nothing(daemon_factory, tmp_path: Path):
    daemon = daemon_factory(STRICT)
    ids = tmp_path / "ids.txt"
    ids.write_text("GOOD1\nGOOD2\nTHIS ID HAS BLANKS\n")
    result = dlrd(daemon, "expect", "--file", str(ids))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"{ids}:3" in result.stderr and "nothing was recorded" in result.stderr
    too_long = dlrd(daemon, "expect", "A" * 16)
    assert too_long.returncode == 2 and "argument 1" in too_long.stderr
    none = dlrd(daemon, "expect")
    assert none.returncode == 2 and "no ids given" in none.stderr
    missing = dlrd(daemon, "expect", "--file", str(tmp_path / "absent.csv"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert expected(daemon) == set()


def test_expect_says_when_strict_match_is_off(daemon_factory):
    daemon = daemon_factory()
    result = dlrd(daemon, "expect", "3C7D98A4")
    assert result.returncode == 0 and "strict_match is off" in result.stderr
    # Off means off: any id is stored.
    assert soap_report(post(daemon.address, receipt_body("NOTEXPECTED"))) == 0


def test_strict_match_stores_expected_ids_and_quarantines_the_rest(daemon_factory):
    daemon = daemon_factory(STRICT)
    assert dlrd(daemon, "expect", "3C7D98A4").returncode == 0
    stored = post(daemon.address, receipt_body("3C7D98A4"))
    assert stored.status == 200 and soap_report(stored) == 0
    for stranger in ("UNKNOWN1", "3c7d98a4", "03C7D98A4"):
        answer = post(daemon.address, receipt_body(stranger))
        assert answer.status == 200 and soap_report(answer) == -1, stranger
        assert "mismatched delivery receipt" in soap_text(answer) and stranger in soap_text(answer)
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")] == ["3C7D98A4"]
    kept = daemon.rows("SELECT kind, message_id, reason FROM quarantine ORDER BY id")
    assert [(row["kind"], row["message_id"]) for row in kept] == [
        ("strict-match", "UNKNOWN1"), ("strict-match", "3c7d98a4"), ("strict-match", "03C7D98A4")]
    with urllib.request.urlopen(daemon.urls[0] + "/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'dlrd_receipts_quarantined_total{reason="strict-match"} 3' in metrics
    assert [line["message_id"] for line in daemon.journal()] == ["3C7D98A4"]


def test_a_receipt_that_came_before_its_id_is_replayed_once_the_id_is_expected(daemon_factory):
    daemon = daemon_factory(STRICT)
    assert soap_report(post(daemon.address, receipt_body("EARLY1"))) == -1
    wait_for(lambda: daemon.rows("SELECT id FROM quarantine"), what="the unexpected receipt kept")
    still = dlrd(daemon, "replay", "--quarantine", "--reason", "strict-match")
    assert still.returncode == 0 and "1 stay" in still.stdout and "mismatched delivery receipt" in still.stdout
    assert dlrd(daemon, "expect", "EARLY1").returncode == 0
    replayed = dlrd(daemon, "replay", "--quarantine", "--reason", "strict-match")
    assert replayed.returncode == 0 and "1 stored," in replayed.stdout, replayed.stdout
    assert daemon.rows("SELECT id FROM quarantine") == []
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")] == ["EARLY1"]
    wait_for(lambda: [line["message_id"] for line in daemon.journal()] == ["EARLY1"],
             what="the replayed receipt journaled once")


def test_the_customers_own_program_fills_the_table_while_the_daemon_runs(daemon_factory):
    """The README's schema is the contract: a plain INSERT from another program takes effect at once."""
    daemon = daemon_factory(STRICT)
    assert soap_report(post(daemon.address, receipt_body("FROMAPP1"))) == -1
    with sqlite3.connect(daemon.data / "dlrd.db", timeout=10) as connection:
        connection.execute("INSERT INTO expected_messages (message_id) VALUES (?)", ("FROMAPP1",))
        connection.executemany("INSERT OR IGNORE INTO expected_messages (message_id) VALUES (?)",
                               [(f"FROMAPP{n}",) for n in range(2, 50)])
    for n in range(1, 50):
        answer = post(daemon.address, receipt_body(f"FROMAPP{n}"))
        assert answer.status == 200 and soap_report(answer) == 0, n
    added = daemon.rows("SELECT added_at FROM expected_messages WHERE message_id = 'FROMAPP1'")[0]["added_at"]
    assert added.endswith("Z") and len(added) == len("2026-12-01T13:38:00.000Z")
    assert len(daemon.rows("SELECT id FROM receipts")) == 49
    assert daemon.stop() == 0


def test_sighup_turns_strict_match_on_and_off(daemon_factory):
    daemon = daemon_factory()
    assert soap_report(post(daemon.address, receipt_body("BEFORE1"))) == 0
    daemon.ini.write_text(daemon.config(STRICT))
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: soap_report(post(daemon.address, receipt_body("PROBE"))) == -1, what="strict_match on")
    daemon.ini.write_text(daemon.config())
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: soap_report(post(daemon.address, receipt_body("PROBE"))) == 0, what="strict_match off")
    assert "restart dlrd to apply" not in daemon.log(since_start=True)
    assert daemon.stop() == 0


def test_a_spreadsheets_utf8_csv_with_a_byte_order_mark_gives_clean_ids(daemon_factory, tmp_path: Path):
    """Excel's "CSV UTF-8" starts with a BOM; kept, it would glue itself to the header or the first id."""
    daemon = daemon_factory(STRICT)
    with_header, bare = tmp_path / "with_header.csv", tmp_path / "bare.csv"
    with_header.write_bytes(b"\xef\xbb\xbfmessage_id\r\nF6\r\n")
    bare.write_bytes(b"\xef\xbb\xbfF7\r\nF8\r\n")
    for path in (with_header, bare):
        assert dlrd(daemon, "expect", "--file", str(path)).returncode == 0
    assert expected(daemon) == {"F6", "F7", "F8"}
    assert soap_report(post(daemon.address, receipt_body("F7"))) == 0
