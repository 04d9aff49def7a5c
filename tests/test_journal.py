"""The JSONL journal: a line per stored receipt, at least once, rotated so `tail -F` keeps up.

SPEC section 3. The writer and its rotation are tested in-process where a
clock must be stood in for (midnight comes once a day); everything else
runs against a real daemon, a real `tail -F` and real files.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from wire import KeepAliveClient, post, receipt_body, soap_report, wait_for

from dlrd import journal as journal_module
from dlrd import store as store_module
from dlrd.codes import ReportCode
from dlrd.journal import JournalWriter, Rotation, journal_files, read_lines
from dlrd.receipt import Receipt
from dlrd.store import ReceiptStore

DELIVERED = ReportCode(0, "Accepted by phone", "delivered", True)
ROTATED = re.compile(r"receipts-\d{8}T\d{6}\.\d{3}Z\.jsonl(\.gz)?")


def line(receipt_id: int, padding: int = 0) -> bytes:
    return json.dumps({"id": receipt_id, "message_id": f"M{receipt_id}", "pad": "x" * padding}).encode() + b"\n"


def ids_in(directory: Path) -> list[int]:
    return [json.loads(text)["id"] for path in journal_files(directory) for text in read_lines(path)]


def utc(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()


class Clock:
    """The one thing the journal tests stand in for: time, so midnight comes when the test says."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def receipt(message_id: str) -> Receipt:
    return Receipt(message_id=message_id, sent_to="447009123456", report=0, timestamp="2002-08-27T13:38:00Z",
                   timestamp_raw="2002-08-27T13:38:00Z", username=None, pin=None)


# rotation, in-process


def test_size_rotation_keeps_every_line_in_files_that_sort_by_time(tmp_path):
    writer = JournalWriter(tmp_path, rotation=Rotation(max_bytes=1000))
    writer.open()
    try:
        for receipt_id in range(1, 101):
            writer.append([line(receipt_id, padding=50)])
    finally:
        writer.close()
    files = journal_files(tmp_path)
    assert len(files) > 5
    assert all(ROTATED.fullmatch(path.name) for path in files[:-1])
    assert all(path.stat().st_size <= 1000 for path in files)
    assert ids_in(tmp_path) == list(range(1, 101)), "names sort in the order the lines were written"


def test_rotated_names_never_collide_even_within_one_millisecond(tmp_path):
    frozen = Clock(utc("2026-11-24T22:17:00.123"))
    writer = JournalWriter(tmp_path, rotation=Rotation(max_bytes=10), clock=frozen)
    writer.open()
    for receipt_id in range(1, 6):
        writer.append([line(receipt_id)])
    writer.close()
    names = sorted(path.name for path in tmp_path.glob("receipts-*"))
    assert names == [f"receipts-20261124T221700.{ms}Z.jsonl" for ms in (123, 124, 125, 126)]
    # A restart within the same millisecond still goes after what is on disk.
    writer = JournalWriter(tmp_path, rotation=Rotation(max_bytes=10), clock=frozen)
    writer.open()
    writer.append([line(6)])
    writer.close()
    assert (tmp_path / "receipts-20261124T221700.127Z.jsonl").exists()
    assert ids_in(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_midnight_rotation_in_utc(tmp_path):
    clock = Clock(utc("2026-11-24T23:59:59.500"))
    writer = JournalWriter(tmp_path, rotation=Rotation(when="midnight", utc=True), clock=clock)
    writer.open()
    writer.append([line(1)])
    assert 0 < writer.seconds_until_rollover() <= 0.5
    clock.now = utc("2026-11-24T23:59:59.999")
    writer.append([line(2)])
    assert not list(tmp_path.glob("receipts-*"))
    clock.now = utc("2026-11-25T00:00:00.001")
    writer.append([line(3)])
    writer.close()
    assert [path.name for path in journal_files(tmp_path)] == ["receipts-20261125T000000.001Z.jsonl",
                                                              "receipts.jsonl"]
    assert ids_in(tmp_path) == [1, 2, 3]


def test_midnight_rotation_in_local_time(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "XST5")  # POSIX TZ: local time is UTC-5, no tzdata needed
    time.tzset()
    try:
        clock = Clock(utc("2026-11-25T00:30:00.000"))  # 19:30 local
        writer = JournalWriter(tmp_path, rotation=Rotation(when="midnight", utc=False), clock=clock)
        writer.open()
        writer.append([line(1)])
        assert writer.seconds_until_rollover() == pytest.approx(4.5 * 3600)
        clock.now = utc("2026-11-25T04:59:59.000")
        writer.append([line(2)])
        assert not writer.rotate_if_due()
        clock.now = utc("2026-11-25T05:00:00.250")  # local midnight
        assert writer.rotate_if_due()
        writer.close()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert [path.name for path in journal_files(tmp_path)] == ["receipts-20261125T050000.250Z.jsonl",
                                                              "receipts.jsonl"]


def test_idle_writer_rotates_at_midnight_with_no_receipt_coming_in(tmp_path):
    clock = Clock(utc("2026-11-24T23:59:59.000"))
    store = ReceiptStore(tmp_path / "dlrd.db",
                         JournalWriter(tmp_path, rotation=Rotation(when="midnight"), clock=clock))
    store.open()
    try:
        store.store_receipt(receipt("IDLE1"), DELIVERED, "2026-11-24T23:59:59.000Z", "192.0.2.1").result(10)
        clock.now = utc("2026-11-25T00:00:00.500")
        # The writer waits at most until its midnight (one second of real time here), then rotates.
        wait_for(lambda: list(tmp_path.glob("receipts-*.jsonl")), 10, "the idle rotation at midnight")
    finally:
        store.close()
    assert [path.name for path in journal_files(tmp_path)] == ["receipts-20261125T000000.500Z.jsonl",
                                                              "receipts.jsonl"]
    assert (tmp_path / "receipts.jsonl").stat().st_size == 0


def test_a_line_torn_by_a_crash_does_not_hide_a_midnight_missed_while_dlrd_was_down(tmp_path):
    current = tmp_path / "receipts.jsonl"
    current.write_bytes(line(1) + line(2) + b'{"id":3,"mess')
    written = utc("2026-11-24T18:00:00.000")
    os.utime(current, (written, written))
    # Started the next day: cutting the torn line must not make yesterday's file look written today.
    writer = JournalWriter(tmp_path, rotation=Rotation(when="midnight"), clock=Clock(utc("2026-11-25T09:00:00.000")))
    writer.open()
    try:
        assert writer.seconds_until_rollover() == 0
        writer.append([line(3)])
    finally:
        writer.close()
    assert [path.name for path in journal_files(tmp_path)] == ["receipts-20261125T090000.000Z.jsonl",
                                                              "receipts.jsonl"]
    assert ids_in(tmp_path) == [1, 2, 3]


@pytest.mark.parametrize("stray", ["receipts-20261301T000000.000Z.jsonl", "receipts-99991231T235959.999Z.jsonl"],
                         ids=["month-13", "year-9999"])
def test_a_stray_file_named_like_a_rotated_one_never_stops_the_journal(tmp_path, stray, caplog):
    (tmp_path / stray).write_bytes(b"not a journal\n")
    writer = JournalWriter(tmp_path, rotation=Rotation(max_bytes=100, backups=5))
    writer.open()
    try:
        for receipt_id in range(1, 7):
            writer.append([line(receipt_id, padding=40)])  # each line alone passes 60 bytes: rotation is due
        assert writer.last_id() == 6
    finally:
        writer.close()
    assert (tmp_path / stray).read_bytes() == b"not a journal\n"
    lines = [json.loads(text)["id"] for path in tmp_path.glob("receipts*.jsonl") if path.name != stray
             for text in path.read_bytes().splitlines()]
    assert sorted(lines) == [1, 2, 3, 4, 5, 6]
    if stray.startswith("receipts-9999"):
        # No name sorts after it: rotation fails, logged once, and every line stays in receipts.jsonl.
        assert sum("cannot rotate the journal" in record.getMessage() for record in caplog.records) == 1
        assert [json.loads(text)["id"] for text in (tmp_path / "receipts.jsonl").read_bytes().splitlines()] == [
            1, 2, 3, 4, 5, 6]


def test_new_backups_and_compress_settings_apply_at_once_on_reopen(tmp_path):
    for stamp, receipt_id in (("101", 1), ("102", 2), ("103", 3)):
        (tmp_path / f"receipts-20261124T221700.{stamp}Z.jsonl").write_bytes(line(receipt_id))
    writer = JournalWriter(tmp_path, rotation=Rotation(max_bytes=1024, backups=2))
    writer.open()
    try:
        # The housekeeper's work at start ends with deleting the oldest file; then it waits.
        wait_for(lambda: len(list(tmp_path.glob("receipts-*"))) == 2, 10, "the oldest file deleted at start")
        writer.reopen(rotation=Rotation(max_bytes=1024, backups=1, compress=True))  # SIGHUP with new settings
        kept = ["receipts-20261124T221700.103Z.jsonl.gz"]
        wait_for(lambda: [path.name for path in tmp_path.glob("receipts-*")] == kept, 10,
                 "one gzipped backup, without waiting for the next rotation")
    finally:
        writer.close()
    assert ids_in(tmp_path) == [3]

def test_compression_and_old_file_removal_run_off_the_writers_path(tmp_path, monkeypatch):
    gate = threading.Event()
    compressing = threading.Event()
    real_compress = journal_module.RotatedFiles._compress

    def held_compress(self, path):
        compressing.set()
        gate.wait(10)
        real_compress(self, path)

    monkeypatch.setattr(journal_module.RotatedFiles, "_compress", held_compress)
    writer = JournalWriter(tmp_path, rotation=Rotation(max_bytes=200, backups=3, compress=True))
    writer.open()
    try:
        writer.append([line(1, padding=150)])
        writer.append([line(2, padding=150)])
        wait_for(compressing.is_set, 10, "the housekeeper to start compressing")
        # Compression is stuck, yet lines are written and files rotated without waiting for it.
        for receipt_id in range(3, 21):
            writer.append([line(receipt_id, padding=150)])
        assert len(list(tmp_path.glob("receipts-*.jsonl"))) > 3
        gate.set()

        def tidied() -> bool:
            names = sorted(path.name for path in tmp_path.iterdir())
            return len(names) == 4 and all(name.endswith(".jsonl.gz") for name in names[:3])

        wait_for(tidied, 10, "three gzipped backups and nothing else")
    finally:
        gate.set()
        writer.close()
    assert ids_in(tmp_path) == [17, 18, 19, 20]
    with gzip.open(journal_files(tmp_path)[0]) as handle:
        assert json.loads(handle.readline())["id"] == 17


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzipped"])
def test_last_id_comes_from_the_newest_rotated_file_after_a_rotation(tmp_path, compressed):
    writer = JournalWriter(tmp_path, rotation=Rotation(max_bytes=1024 * 1024))
    writer.open()
    writer.append([line(1), line(2)])
    assert writer.rotate_if_due(incoming=1024 * 1024)
    writer.append([line(3)])
    assert writer.rotate_if_due(incoming=1024 * 1024)  # receipts.jsonl is now empty
    writer.close()
    assert (tmp_path / "receipts.jsonl").stat().st_size == 0
    if compressed:
        for path in tmp_path.glob("receipts-*.jsonl"):
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
    assert JournalWriter(tmp_path).last_id() == 3


def test_fsync_setting_syncs_every_append(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    for fsync, expected in ((False, 0), (True, 3)):
        synced.clear()
        writer = JournalWriter(tmp_path / str(fsync), fsync=fsync)
        writer.open()
        for receipt_id in range(3):
            writer.append([line(receipt_id)])
        writer.close()
        assert len(synced) == expected


def test_a_run_of_zeros_longer_than_one_read_is_cut_back_to_the_last_whole_line(tmp_path):
    writer = JournalWriter(tmp_path)
    writer.open()
    writer.append([line(1), line(2)])
    writer.close()
    # What a power cut can leave with delayed allocation: the size grew, the blocks read back as zeros.
    with open(tmp_path / "receipts.jsonl", "ab") as handle:
        handle.write(b"\0" * 200_000)
    writer = JournalWriter(tmp_path)
    writer.open()
    assert writer.last_id() == 2
    writer.append([line(3)])
    writer.close()
    assert (tmp_path / "receipts.jsonl").read_bytes() == line(1) + line(2) + line(3)


def test_last_id_reads_the_gzipped_file_the_housekeeper_made_while_it_looked(tmp_path, monkeypatch):
    plain = tmp_path / "receipts-20261124T221700.123Z.jsonl"
    plain.with_name(plain.name + ".gz").write_bytes(gzip.compress(line(7) + line(8)))
    (tmp_path / "receipts.jsonl").touch()
    # The listing was taken while the file was still plain; it was compressed and deleted before being read.
    monkeypatch.setattr(journal_module, "rotated_files", lambda directory: [plain])
    assert JournalWriter(tmp_path).last_id() == 8


def test_rotation_and_compression_reach_the_disk_even_with_fsync_off(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def record(real):
        return lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))

    monkeypatch.setattr(journal_module.os, "fsync", record(real_fsync))
    monkeypatch.setattr(journal_module.os, "fdatasync", record(real_fdatasync))
    writer = JournalWriter(tmp_path, fsync=False, rotation=Rotation(max_bytes=1024 * 1024, compress=True))
    writer.open()
    try:
        writer.append([line(1)])
        assert synced == []  # appends are not synced with fsync = no
        assert writer.rotate_if_due(incoming=1024 * 1024)
        wait_for(lambda: list(tmp_path.glob("receipts-*.jsonl.gz")), 10, "the rotated file to be gzipped")
    finally:
        writer.close()
    # The rotated file before its rename (the store's position may count its lines), the .gz before the
    # plain file is deleted.
    assert [Path(path).name for path in synced if ".gz" not in path] == ["receipts.jsonl"]
    assert any(path.endswith(".jsonl.gz.tmp") for path in synced)


def test_the_recorded_journal_position_never_counts_a_line_not_yet_on_disk(tmp_path, monkeypatch):
    """A power cut with fsync = no may take lines the files showed; the position must not count them."""
    on_disk = [0]  # the last id in receipts.jsonl at its latest sync
    real_sync = JournalWriter.sync

    def sync(self):
        real_sync(self)
        on_disk[0] = self.last_id()

    monkeypatch.setattr(JournalWriter, "sync", sync)
    monkeypatch.setattr(store_module, "POSITION_SECONDS", 0.0)  # record the position at every commit
    store = ReceiptStore(tmp_path / "dlrd.db", JournalWriter(tmp_path, fsync=False))
    store.open()
    positions = []
    try:
        for number in range(5):
            store.store_receipt(receipt(f"POS{number}"), DELIVERED, "2026-11-24T22:00:00.000Z",
                                "192.0.2.1").result(10)
            with sqlite3.connect(tmp_path / "dlrd.db") as connection:
                positions.append(connection.execute("SELECT last_id FROM journal_position").fetchone()[0])
            assert positions[-1] <= on_disk[0]
    finally:
        store.close()
    assert positions == [0, 1, 2, 3, 4]  # each commit records the lines before it, synced first
    with sqlite3.connect(tmp_path / "dlrd.db") as connection:
        assert connection.execute("SELECT last_id FROM journal_position").fetchone()[0] == 5  # exact at a stop


# at least once, against a real daemon


def test_one_line_per_stored_receipt_carrying_its_id(daemon):
    for message_id in ("ONE", "TWO", "ONE", "THREE"):
        assert soap_report(post(daemon.address, receipt_body(message_id))) == 0
    rows = daemon.rows("SELECT id, message_id FROM receipts ORDER BY id")
    lines = daemon.journal()
    assert [(line["id"], line["message_id"]) for line in lines] == [tuple(row) for row in rows]
    assert [line["message_id"] for line in lines] == ["ONE", "TWO", "THREE"]
    assert set(lines[0]) == {"id", "received_at", "message_id", "sent_to", "report", "label", "state", "final", "node",
                             "timestamp", "remote_addr"}


def test_committed_but_unjournaled_receipts_are_appended_at_start(daemon):
    for message_id in ("BEFORE1", "BEFORE2"):
        assert soap_report(post(daemon.address, receipt_body(message_id))) == 0
    assert daemon.stop() == 0
    # The state a crash between commit and append leaves: rows committed in
    # SQLite, their lines missing, and half a line at the end of the file.
    with daemon.db() as connection:
        for message_id in ("CRASH1", "CRASH2", "CRASH3"):
            connection.execute(
                "INSERT INTO receipts (received_at, message_id, sent_to, report, timestamp, timestamp_raw, label, "
                "state, final, remote_addr) VALUES ('2026-11-24T22:00:00.000Z', ?, '447009123456', 0, "
                "'2002-08-27T13:38:00Z', '2002-08-27T13:38:00Z', 'Accepted by phone', 'delivered', 1, '127.0.0.1')",
                (message_id,))
    with open(daemon.data / "receipts.jsonl", "ab") as handle:
        handle.write(b'{"id":3,"received_at":"2026-11-24T22:00:0')
    daemon.start()
    assert "journal caught up with 3 receipt(s)" in daemon.log(since_start=True)
    assert soap_report(post(daemon.address, receipt_body("AFTER"))) == 0
    rows = daemon.rows("SELECT id, message_id FROM receipts ORDER BY id")
    lines = daemon.journal()  # json.loads of every line: no torn line is left
    assert [(line["id"], line["message_id"]) for line in lines] == [tuple(row) for row in rows]
    assert [line["message_id"] for line in lines] == ["BEFORE1", "BEFORE2", "CRASH1", "CRASH2", "CRASH3", "AFTER"]


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzipped"])
def test_restart_right_after_a_rotation_journals_nothing_twice(daemon_factory, compressed):
    ini = "[journal]\nrotate_bytes = 1m\n"
    daemon = daemon_factory(ini)
    for number in range(5):
        assert soap_report(post(daemon.address, receipt_body(f"ROT{number}"))) == 0
    assert daemon.stop() == 0
    # As a rotation leaves it: every line in the newest rotated file, receipts.jsonl empty.
    current = daemon.data / "receipts.jsonl"
    rotated = daemon.data / "receipts-20261124T221700.123Z.jsonl"
    shutil.move(current, rotated)
    current.touch()
    if compressed:
        rotated.with_name(rotated.name + ".gz").write_bytes(gzip.compress(rotated.read_bytes()))
        rotated.unlink()
    daemon.start(ini)
    assert soap_report(post(daemon.address, receipt_body("ROT5"))) == 0
    assert [line["message_id"] for line in daemon.journal_all()] == [f"ROT{number}" for number in range(6)]
    assert [line["message_id"] for line in daemon.journal()] == ["ROT5"]


def test_an_external_logrotate_is_followed_at_the_next_batch_and_sighup_still_reopens(daemon):
    assert soap_report(post(daemon.address, receipt_body("OLD1"))) == 0
    moved = daemon.data / "receipts.jsonl.1"
    os.rename(daemon.data / "receipts.jsonl", moved)
    # dlrd follows the rename at the next batch, without waiting for SIGHUP (issue 14 item 5).
    assert soap_report(post(daemon.address, receipt_body("OLD2"))) == 0
    daemon.process.send_signal(signal.SIGHUP)
    wait_for((daemon.data / "receipts.jsonl").exists, 10, "a new receipts.jsonl after SIGHUP")
    for message_id in ("NEW1", "NEW2"):
        assert soap_report(post(daemon.address, receipt_body(message_id))) == 0
    assert [json.loads(text)["message_id"] for text in moved.read_text().splitlines()] == ["OLD1"]
    assert [line["message_id"] for line in daemon.journal()] == ["OLD2", "NEW1", "NEW2"]


def test_a_clean_restart_after_an_external_logrotate_journals_nothing_twice(daemon):
    for message_id in ("OLD1", "OLD2", "OLD3"):
        assert soap_report(post(daemon.address, receipt_body(message_id))) == 0
    moved = daemon.data / "receipts.jsonl.1"
    os.rename(daemon.data / "receipts.jsonl", moved)
    daemon.process.send_signal(signal.SIGHUP)
    wait_for((daemon.data / "receipts.jsonl").exists, 10, "a new receipts.jsonl after SIGHUP")
    assert daemon.stop() == 0
    daemon.start()
    assert soap_report(post(daemon.address, receipt_body("NEW1"))) == 0
    assert "caught up" not in daemon.log(since_start=True)
    assert [json.loads(text)["message_id"] for text in moved.read_text().splitlines()] == ["OLD1", "OLD2", "OLD3"]
    assert [(line["id"], line["message_id"]) for line in daemon.journal()] == [(4, "NEW1")]


def test_a_database_restored_from_a_backup_never_gives_a_journaled_id_to_another_receipt(daemon):
    for message_id in ("A0", "A1", "A2"):
        assert soap_report(post(daemon.address, receipt_body(message_id))) == 0
    assert daemon.stop() == 0
    backup = daemon.directory / "backup.db"
    with daemon.db() as connection, sqlite3.connect(backup) as copy:
        connection.backup(copy)
    daemon.start()
    for message_id in ("B0", "B1", "B2"):
        assert soap_report(post(daemon.address, receipt_body(message_id))) == 0
    assert daemon.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        (daemon.data / f"dlrd.db{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, daemon.data / "dlrd.db")  # the operator restores last night's backup
    daemon.start()
    assert "new receipts get ids from 7 on" in daemon.log(since_start=True)
    # A repeat of a restored receipt stores nothing, so the next new one still starts after the journal.
    assert soap_report(post(daemon.address, receipt_body("A0"))) == 0
    for message_id in ("C0", "C1"):
        assert soap_report(post(daemon.address, receipt_body(message_id))) == 0
    assert daemon.stop() == 0
    daemon.start()
    assert soap_report(post(daemon.address, receipt_body("C2"))) == 0
    assert [tuple(row) for row in daemon.rows("SELECT id, message_id FROM receipts ORDER BY id")] == [
        (1, "A0"), (2, "A1"), (3, "A2"), (7, "C0"), (8, "C1"), (9, "C2")]
    lines = daemon.journal()
    assert [line["id"] for line in lines] == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # no id names two receipts
    assert [line["message_id"] for line in lines[-3:]] == ["C0", "C1", "C2"]


@pytest.mark.skipif(shutil.which("tail") is None, reason="needs tail(1)")
def test_tail_follow_sees_every_line_across_rotations(daemon_factory):
    daemon = daemon_factory("[journal]\nrotate_bytes = 4k\ncompress = yes\n")
    tail = subprocess.Popen(["tail", "-n", "+1", "-F", str(daemon.data / "receipts.jsonl")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen: list[dict] = []
    reader = threading.Thread(target=lambda: seen.extend(json.loads(text) for text in tail.stdout), daemon=True)
    reader.start()
    try:
        count = 240

        def poster(offset: int) -> None:
            client = KeepAliveClient(daemon.address)
            for number in range(offset, count, 4):
                assert soap_report(client.post(receipt_body(f"TAIL{number}"))) == 0
            client.close()

        posters = [threading.Thread(target=poster, args=(offset,)) for offset in range(4)]
        for thread in posters:
            thread.start()
        for thread in posters:
            thread.join(30)
        stored = {row[0] for row in daemon.rows("SELECT id FROM receipts")}
        assert len(stored) == count
        wait_for(lambda: {line["id"] for line in seen} >= stored, 20, "tail -F to print every receipt")
    finally:
        tail.terminate()
        tail.wait(10)
        reader.join(10)
    assert sorted(line["id"] for line in seen) == sorted(stored), "each line exactly once"
    rotated = [path for path in daemon.journal_files() if path.name != "receipts.jsonl"]
    assert len(rotated) >= 10


def test_sighup_applies_new_rotation_settings_without_a_restart(daemon):
    assert soap_report(post(daemon.address, receipt_body("BEFORE"))) == 0
    daemon.ini.write_text(daemon.config("[journal]\nrotate_bytes = 1k\ncompress = yes\n"))
    daemon.process.send_signal(signal.SIGHUP)
    client = KeepAliveClient(daemon.address)
    posted = 0

    def rotated_and_compressed() -> bool:
        nonlocal posted
        assert soap_report(client.post(receipt_body(f"AFTER{posted}"))) == 0
        posted += 1
        return any(path.name.endswith(".jsonl.gz") for path in daemon.journal_files())

    wait_for(rotated_and_compressed, 20, "the new settings to rotate and gzip the journal")
    client.close()
    wait_for(lambda: not list(daemon.data.glob("receipts-*.jsonl")), 10, "every rotated file to be gzipped")
    assert "restart dlrd to apply" not in daemon.log(since_start=True)
    assert [line["message_id"] for line in daemon.journal_all()] == ["BEFORE"] + [f"AFTER{n}" for n in range(posted)]


def test_a_journal_deleted_under_a_running_daemon_is_made_again_with_every_receipt_since(daemon):
    assert soap_report(post(daemon.address, receipt_body("KEPT"))) == 0
    (daemon.data / "receipts.jsonl").unlink()  # an operator's mistake: dlrd still holds the file open
    sent = []

    def journal_back() -> bool:
        # Checked once a second, at a commit: keep receipts coming until it is noticed.
        sent.append(f"AFTER{len(sent)}")
        assert soap_report(post(daemon.address, receipt_body(sent[-1]))) == 0
        return (daemon.data / "receipts.jsonl").exists()

    wait_for(journal_back, 10, "a new receipts.jsonl")
    assert daemon.stop() == 0
    assert "was deleted while dlrd was writing it" in daemon.log()
    lines = daemon.journal()
    ids = [line["id"] for line in lines]
    assert ids == list(range(ids[0], ids[-1] + 1))  # in order, none missing from where it starts again
    assert [line["message_id"] for line in lines if line["message_id"] != "KEPT"] == sent


def test_sighup_makes_a_deleted_journal_directory_again_with_the_receipts_it_missed(daemon_factory, tmp_path):
    journal_dir = tmp_path / "journal"
    daemon = daemon_factory(f"[journal]\ndirectory = {journal_dir}\n")
    assert soap_report(post(daemon.address, receipt_body("BEFORE"))) == 0
    shutil.rmtree(journal_dir)
    assert soap_report(post(daemon.address, receipt_body("LOST"))) == 0  # appended to the deleted file
    daemon.process.send_signal(signal.SIGHUP)
    current = journal_dir / "receipts.jsonl"
    wait_for(lambda: current.exists() and b"LOST" in current.read_bytes(), 10, "the journal made again")
    assert soap_report(post(daemon.address, receipt_body("AFTER"))) == 0
    assert [json.loads(text)["message_id"] for text in current.read_text().splitlines()][-2:] == ["LOST", "AFTER"]


def test_a_journal_deleted_just_before_a_clean_stop_still_gets_every_receipt(daemon):
    """The deleted-file check ran once a second; a stop inside that second recorded lines no file held."""
    assert soap_report(post(daemon.address, receipt_body("CHECKED"))) == 0  # a commit that runs the check
    (daemon.data / "receipts.jsonl").unlink()
    for message_id in ("GONE1", "GONE2", "GONE3"):
        assert soap_report(post(daemon.address, receipt_body(message_id))) == 0

    assert daemon.stop() == 0
    assert {"GONE1", "GONE2", "GONE3"} <= {line["message_id"] for line in daemon.journal()}
    daemon.start()
    assert daemon.stop() == 0
    journaled = [line["message_id"] for line in daemon.journal()]
    assert sorted(set(journaled) - {"CHECKED"}) == ["GONE1", "GONE2", "GONE3"]
    assert len(journaled) == len(set(journaled)), "a restart journals nothing twice"
