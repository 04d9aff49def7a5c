"""`dlrd quarantine` and `dlrd replay --quarantine`, against requests a running daemon refused and kept."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys

import pytest
from provider import SEED_PIN
from terminal import run_in_terminal
from wire import post, receipt_body, soap_report, wait_for

WRONG_PIN = """
    [auth]
    username = ANOther.61234
    pin = RED.music
"""
RIGHT_PIN = """
    [auth]
    username = ANOther.61234
    pin = BLUE.music
"""


def dlrd(daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it, with --config after the subcommand."""
    command = [sys.executable, "-m", "dlrd", *args[:1], "--config", str(daemon.ini), *args[1:]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def quarantine_rows(daemon) -> list[dict]:
    return [json.loads(line) for line in dlrd(daemon, "quarantine", "list", "--format", "json").stdout.splitlines()]


@pytest.fixture
def refused_for_a_wrong_pin(daemon_factory):
    """Five seed receipts refused because the ini held the wrong PIN, then the ini fixed."""
    daemon = daemon_factory(WRONG_PIN)
    for n in range(5):
        answer = post(daemon.address, receipt_body(f"AUTH{n}"))
        assert answer.status == 500 and b"authentication failed" in answer.body
    wait_for(lambda: len(daemon.rows("SELECT id FROM quarantine")) == 5, what="five quarantined requests")
    daemon.ini.write_text(daemon.config(RIGHT_PIN))
    return daemon


def test_quarantine_list_shows_what_was_kept_and_why(refused_for_a_wrong_pin):
    daemon = refused_for_a_wrong_pin
    rows = quarantine_rows(daemon)
    assert [row["message_id"] for row in rows] == [f"AUTH{n}" for n in range(5)]
    assert {row["kind"] for row in rows} == {"authentication"}
    assert {row["reason"] for row in rows} == {"authentication failed"}
    assert {row["remote_addr"] for row in rows} == {"127.0.0.1"}
    assert list(rows[0]) == ["id", "received_at", "remote_addr", "kind", "message_id", "reason"]
    csv_lines = dlrd(daemon, "quarantine", "list", "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == "id,received_at,remote_addr,kind,message_id,reason" and len(csv_lines) == 6
    table = dlrd(daemon, "quarantine", "list", "--format", "table", "--id", str(rows[2]["id"])).stdout
    assert "AUTH2" in table and "AUTH1" not in table
    assert dlrd(daemon, "quarantine", "list", "--reason", "strict-match").stdout == ""


def test_quarantine_show_prints_the_body_with_the_pin_redacted(refused_for_a_wrong_pin):
    daemon = refused_for_a_wrong_pin
    first = quarantine_rows(daemon)[0]
    shown = dlrd(daemon, "quarantine", "show", str(first["id"])).stdout
    assert f"id: {first['id']}" in shown and "kind: authentication" in shown
    assert "<MessageIdentifier" in shown and ">AUTH0<" in shown
    assert "[redacted]" in shown and SEED_PIN not in shown
    missing = dlrd(daemon, "quarantine", "show", "999999", check=False)
    assert missing.returncode == 2 and "no request 999999" in missing.stderr


def test_a_redacted_pin_is_never_trusted_silently(refused_for_a_wrong_pin):
    daemon = refused_for_a_wrong_pin
    result = dlrd(daemon, "replay", "--quarantine")
    assert "0 stored," in result.stdout and "5 stay" in result.stdout
    assert result.stdout.count("--trust-credentials") == 5
    assert len(daemon.rows("SELECT id FROM quarantine")) == 5
    assert daemon.rows("SELECT id FROM receipts") == []


def test_replay_after_the_pin_is_fixed_stores_them_as_they_arrived_and_empties_the_quarantine(
        refused_for_a_wrong_pin):
    daemon = refused_for_a_wrong_pin
    kept = {row["message_id"]: row for row in quarantine_rows(daemon)}
    dry = dlrd(daemon, "replay", "--quarantine", "--trust-credentials", "--dry-run")
    assert "5 would be stored" in dry.stdout and len(daemon.rows("SELECT id FROM quarantine")) == 5

    result = dlrd(daemon, "replay", "--quarantine", "--trust-credentials")
    assert "5 stored," in result.stdout and "0 stay" in result.stdout
    assert daemon.rows("SELECT id FROM quarantine") == []
    stored = {row["message_id"]: row for row in daemon.rows("SELECT * FROM receipts")}
    assert set(stored) == set(kept)
    for message_id, row in stored.items():
        assert row["received_at"] == kept[message_id]["received_at"]
        assert row["remote_addr"] == "127.0.0.1" and row["state"] == "delivered"
    # The running daemon writes the journal lines of what replay stored, once each.
    wait_for(lambda: len(daemon.journal()) == 5, what="journal lines for the replayed receipts")
    assert sorted(line["message_id"] for line in daemon.journal()) == sorted(kept)
    daemon.process.send_signal(signal.SIGHUP)  # the daemon takes the fixed PIN too
    wait_for(lambda: post(daemon.address, receipt_body("AFTER")).status == 200, what="the reloaded PIN")
    wait_for(lambda: len(daemon.journal()) == 6, what="the next receipt's line")
    after = daemon.rows("SELECT id FROM receipts WHERE message_id = 'AFTER'")[0]["id"]
    assert [line["id"] for line in daemon.journal()] == [*sorted(row["id"] for row in stored.values()), after]
    # Replaying again stores nothing twice: what was stored left the quarantine, and an AFTER refused
    # before the reload took effect is found already stored, its row removed too.
    again = dlrd(daemon, "replay", "--quarantine", "--trust-credentials").stdout
    assert "0 stored," in again and "0 stay" in again
    assert daemon.rows("SELECT id FROM quarantine") == [] and len(daemon.rows("SELECT id FROM receipts")) == 6


def test_trusting_the_pin_still_checks_the_username(daemon_factory):
    daemon = daemon_factory(WRONG_PIN)
    body = receipt_body("WRONGUSER").replace(b">ANOther.61234<", b">Stranger.1<")
    assert post(daemon.address, body).status == 500
    wait_for(lambda: daemon.rows("SELECT id FROM quarantine"), what="the refused request kept")
    daemon.ini.write_text(daemon.config(RIGHT_PIN))
    result = dlrd(daemon, "replay", "--quarantine", "--trust-credentials")
    assert "1 stay" in result.stdout and "authentication: authentication failed" in result.stdout
    assert daemon.rows("SELECT id FROM receipts") == []


def test_replay_picks_by_id_since_and_reason_and_reports_what_stays(daemon_factory):
    daemon = daemon_factory()
    bad_timestamp = receipt_body("BADTIME").replace(b"2002-08-27T13:38:00Z", b"yesterday")
    answer = post(daemon.address, bad_timestamp)
    assert answer.status == 200 and soap_report(answer) == -1
    wait_for(lambda: daemon.rows("SELECT id FROM quarantine"), what="the invalid receipt kept")
    assert quarantine_rows(daemon)[0]["kind"] == "invalid-field"
    for selection in (["--reason", "authentication"], ["--since", "1m", "--reason", "Timestamp1"],
                      ["--id", str(quarantine_rows(daemon)[0]["id"])]):
        result = dlrd(daemon, "replay", "--quarantine", *selection)
        expected = "1 stay" if selection[0] != "--reason" or selection[-1] != "authentication" else "0 stay"
        assert expected in result.stdout, (selection, result.stdout)
    assert "is not like 2002-08-27T13:38:00Z" in dlrd(daemon, "replay", "--quarantine").stdout
    assert len(daemon.rows("SELECT id FROM quarantine")) == 1
    bad = dlrd(daemon, "replay", "--quarantine", "--since", "last tuesday", check=False)
    assert bad.returncode == 2 and "is not a time" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_replay_waits_for_a_daemon_that_reloaded_and_both_keep_working(refused_for_a_wrong_pin):
    daemon = refused_for_a_wrong_pin
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: post(daemon.address, receipt_body("LIVE0")).status == 200, what="the reloaded PIN")
    result = dlrd(daemon, "replay", "--quarantine", "--trust-credentials")
    assert "5 stored," in result.stdout
    assert post(daemon.address, receipt_body("LIVE1")).status == 200
    wait_for(lambda: len(daemon.journal()) == 7, what="seven journal lines")
    ids = [line["id"] for line in daemon.journal()]
    assert len(set(ids)) == 7
    assert daemon.stop() == 0


def test_a_request_kept_for_a_field_rule_had_authenticated_and_needs_no_vouching(daemon_factory):
    """Its PIN was redacted too, but it passed the PIN check when it came: only its field is judged again."""
    daemon = daemon_factory(RIGHT_PIN)
    spaced_number = receipt_body("FIELDRULE").replace(b">447009123456<", b">+44 7009 123456<")
    answer = post(daemon.address, spaced_number)
    assert answer.status == 200 and soap_report(answer) == -1
    wait_for(lambda: daemon.rows("SELECT id FROM quarantine"), what="the invalid receipt kept")
    shown = dlrd(daemon, "quarantine", "show", str(quarantine_rows(daemon)[0]["id"])).stdout
    assert "[redacted]" in shown and SEED_PIN not in shown
    result = dlrd(daemon, "replay", "--quarantine")
    assert "1 stay" in result.stdout and "invalid-field: SentTo" in result.stdout, result.stdout
    assert "--trust-credentials" not in result.stdout


def test_a_quarantine_id_is_never_given_again_after_replay_took_its_row(refused_for_a_wrong_pin):
    """An operator who noted `--id 5` must never replay a stranger's request kept later under that id."""
    daemon = refused_for_a_wrong_pin
    newest = max(row["id"] for row in quarantine_rows(daemon))
    assert "1 stored," in dlrd(daemon, "replay", "--quarantine", "--trust-credentials", "--id", str(newest)).stdout
    assert post(daemon.address, receipt_body("LATER")).status == 500  # the daemon still has the wrong PIN
    wait_for(lambda: any(row["message_id"] == "LATER" for row in quarantine_rows(daemon)), what="LATER kept")
    later = next(row["id"] for row in quarantine_rows(daemon) if row["message_id"] == "LATER")
    assert later > newest
    gone = dlrd(daemon, "replay", "--quarantine", "--trust-credentials", "--id", str(newest), "--dry-run").stdout
    assert f"not found: #{newest}" in gone and "0 would be stored" in gone


def test_a_dry_run_counts_what_is_already_stored_as_the_real_run_does(refused_for_a_wrong_pin):
    daemon = refused_for_a_wrong_pin
    assert post(daemon.address, receipt_body("AUTH0")).status == 500  # a provider retry, kept a second time
    wait_for(lambda: len(quarantine_rows(daemon)) == 6, what="the retry kept")
    dry = dlrd(daemon, "replay", "--quarantine", "--trust-credentials", "--dry-run").stdout
    assert "5 would be stored, 1 already stored" in dry, dry
    real = dlrd(daemon, "replay", "--quarantine", "--trust-credentials").stdout
    assert "5 stored, 1 already stored" in real, real
    assert daemon.rows("SELECT id FROM quarantine") == []


def test_trusting_credentials_covers_a_request_that_sent_no_pin(refused_for_a_wrong_pin):
    daemon = refused_for_a_wrong_pin
    no_pin = re.sub(rb"<PIN[^>]*>[^<]*</PIN>\s*", b"", receipt_body("NOPIN"))
    assert b"<PIN" not in no_pin and post(daemon.address, no_pin).status == 500
    wait_for(lambda: any(row["message_id"] == "NOPIN" for row in quarantine_rows(daemon)), what="NOPIN kept")
    picked = ["--reason", "authentication", "--since", "1m"]
    assert "authentication failed" in dlrd(daemon, "replay", "--quarantine", *picked).stdout
    result = dlrd(daemon, "replay", "--quarantine", "--trust-credentials", *picked).stdout
    assert "6 stored," in result and "0 stay" in result, result


def test_a_request_kept_while_no_pin_was_configured_is_not_taken_as_authenticated(daemon_factory):
    """It passed no PIN check when it came: once a PIN is set, only the operator's word lets it in."""
    daemon = daemon_factory()
    assert soap_report(post(daemon.address, receipt_body("NOCHECK").replace(b"2002-08-27", b"2002-13-27"))) == -1
    wait_for(lambda: daemon.rows("SELECT id FROM quarantine"), what="the invalid receipt kept")
    assert daemon.rows("SELECT authenticated FROM quarantine")[0]["authenticated"] == 0
    daemon.ini.write_text(daemon.config(RIGHT_PIN))
    result = dlrd(daemon, "replay", "--quarantine").stdout
    assert "1 stay" in result and "--trust-credentials" in result, result


def test_what_a_stranger_sent_cannot_forge_rows_or_drive_the_terminal(refused_for_a_wrong_pin):
    daemon = refused_for_a_wrong_pin
    forged = "Z&#10; 99  2026-12-04 18:00:00  10.9.9.9  strict-match  LEGIT&#x9b;[2J"
    body = receipt_body("FORGED").replace(b">FORGED<", f">{forged}<".encode()).replace(
        b"<SOAP-ENV:Body", "<!-- \u009b[2J -->\n<SOAP-ENV:Body".encode(), 1)  # a raw C1 control: legal XML
    assert post(daemon.address, body).status == 500
    wait_for(lambda: len(quarantine_rows(daemon)) == 6, what="the forged request kept")
    kept = quarantine_rows(daemon)[-1]
    assert kept["message_id"].startswith("Z\n 99")  # kept as sent: json is data
    table = dlrd(daemon, "quarantine", "list", "--format", "table").stdout
    assert len(table.splitlines()) == 7 and "\x9b" not in table and "10.9.9.9" not in table.split("\\n")[0]
    assert "Z\\n" in table
    shown = run_in_terminal(daemon.ini, "quarantine", "show", str(kept["id"]), columns=200)
    assert shown.returncode == 0 and "\x9b" not in shown.stdout
    assert "message_id: Z\\n 99" in shown.stdout and "<!-- \\x9b[2J -->" in shown.stdout
    piped = subprocess.run([sys.executable, "-m", "dlrd", "quarantine", "show", "--config", str(daemon.ini),
                            str(kept["id"])], capture_output=True, timeout=60)
    assert "<!-- \u009b[2J -->".encode() in piped.stdout  # a pipe gets the body's bytes as kept, to resend


def test_an_empty_reason_is_refused_rather_than_picking_every_row(refused_for_a_wrong_pin):
    daemon = refused_for_a_wrong_pin
    result = dlrd(daemon, "replay", "--quarantine", "--trust-credentials", "--reason", "", check=False)
    assert result.returncode == 2 and "--reason" in result.stderr
    assert len(daemon.rows("SELECT id FROM quarantine")) == 5


def test_a_quarantine_kept_by_the_previous_schema_is_carried_over_and_replayable(daemon_factory, tmp_path):
    """A database from before migration 2: its kept requests keep their ids, and replay lets them in."""
    from dlrd.store import MIGRATIONS, _statements

    donor = daemon_factory(WRONG_PIN, name="donor")
    assert post(donor.address, receipt_body("OLDSCHEMA")).status == 500
    wait_for(lambda: donor.rows("SELECT id FROM quarantine"), what="the refused request kept")
    kept = donor.rows("SELECT received_at, remote_addr, reason, content_type, body FROM quarantine")[0]
    assert donor.stop() == 0

    directory = tmp_path / "old"
    (directory / "data").mkdir(parents=True)
    old = sqlite3.connect(directory / "data" / "dlrd.db", isolation_level=None)
    for statement in _statements(MIGRATIONS[0][2]):
        old.execute(statement)
    old.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT "
                "NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))")
    old.execute("INSERT INTO schema_migrations (version, name) VALUES (1, ?)", (MIGRATIONS[0][1],))
    old.execute("PRAGMA user_version = 1")
    old.execute("INSERT INTO quarantine (id, received_at, remote_addr, reason, content_type, body) "
                "VALUES (41, ?, ?, ?, ?, ?)", tuple(kept))
    old.close()

    daemon = daemon_factory(WRONG_PIN, name="old")
    assert daemon.data == directory / "data"
    rows = quarantine_rows(daemon)
    assert [(row["id"], row["kind"], row["message_id"]) for row in rows] == [(41, "", "")]
    assert post(daemon.address, receipt_body("NEWSCHEMA")).status == 500
    wait_for(lambda: len(quarantine_rows(daemon)) == 2, what="a new request kept")
    assert quarantine_rows(daemon)[1]["id"] == 42
    daemon.ini.write_text(daemon.config(RIGHT_PIN))
    result = dlrd(daemon, "replay", "--quarantine", "--trust-credentials", "--id", "41")
    assert "1 stored," in result.stdout
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")] == ["OLDSCHEMA"]
