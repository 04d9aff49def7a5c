"""An external logrotate with the shipped stanza loses no line for a `tail -F` reader (issue 14 item 5).

The real `logrotate` binary rotates a real daemon's journal again and
again, with packaging/logrotate/dlrd pointed at a temporary directory,
while receipts arrive on several connections and a real `tail -F` reads.
The in-process test pins the check itself: a rename between two appends
sends the second batch to a new receipts.jsonl.
"""

from __future__ import annotations

import grp
import gzip
import json
import logging
import os
import pwd
import re
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, Daemon
from wire import KeepAliveClient, post, receipt_body, soap_report, wait_for

from dlrd.journal import JournalWriter

STANZA = ROOT / "packaging" / "logrotate" / "dlrd"
SHIPPED_PATH = "/var/log/dlrd/receipts.jsonl"
LOGROTATE = shutil.which("logrotate") or next(
    (path for path in ("/usr/sbin/logrotate", "/sbin/logrotate") if os.access(path, os.X_OK)), None)
RECEIPTS = 800
CONNECTIONS = 4
RECEIPTS_PER_ROTATION = 32  # at most 25 rotations: the stanza keeps 30 files, so none is deleted


def logrotate_config(journal: Path) -> str:
    """The shipped stanza for `journal`, its `su` line naming the user running the tests."""
    text = STANZA.read_text()
    assert SHIPPED_PATH in text, f"{STANZA} no longer names {SHIPPED_PATH}"
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    text = text.replace(SHIPPED_PATH, str(journal))
    return re.sub(r"(?m)^(\s*)su\s+\S+\s+\S+\s*$", rf"\1su {user} {group}", text)


def journal_lines(directory: Path) -> list[dict]:
    """Every line of receipts.jsonl and of the files logrotate made of it (.1, .2.gz, ...)."""
    records = []
    for path in directory.glob("receipts.jsonl*"):
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        records += [json.loads(line) for line in data.splitlines() if line.strip()]
    return records


def test_a_rename_between_two_appends_sends_the_second_batch_to_a_new_file(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dlrd.journal")
    writer = JournalWriter(tmp_path)
    writer.open()
    try:
        writer.append([b'{"id":1}\n'])
        os.rename(tmp_path / "receipts.jsonl", tmp_path / "receipts.jsonl.1")  # logrotate's nocreate
        assert writer.renamed_away()
        writer.append([b'{"id":2}\n'])
        assert not writer.renamed_away()
        os.rename(tmp_path / "receipts.jsonl", tmp_path / "receipts.jsonl.2")
        (tmp_path / "receipts.jsonl").write_bytes(b"")  # logrotate's create
        writer.append([b'{"id":3}\n'])
    finally:
        writer.close()
    assert (tmp_path / "receipts.jsonl.1").read_bytes() == b'{"id":1}\n'
    assert (tmp_path / "receipts.jsonl.2").read_bytes() == b'{"id":2}\n'
    assert (tmp_path / "receipts.jsonl").read_bytes() == b'{"id":3}\n'
    assert sum("followed the rotation" in record.getMessage() for record in caplog.records) == 2


def test_a_rename_away_and_back_writes_the_batch_once(tmp_path):
    """Its rename event is still queued at the next write; with nothing to follow, nothing is written twice."""
    writer = JournalWriter(tmp_path)
    writer.open()
    try:
        writer.append([b'{"id":1}\n'])
        os.rename(tmp_path / "receipts.jsonl", tmp_path / "aside")
        os.rename(tmp_path / "aside", tmp_path / "receipts.jsonl")
        writer.append([b'{"id":2}\n'])
    finally:
        writer.close()
    assert (tmp_path / "receipts.jsonl").read_bytes() == b'{"id":1}\n{"id":2}\n'


def test_a_followed_rotation_is_not_appended_again_when_the_new_file_is_deleted(daemon_factory):
    """What went into the renamed file is safe there: the deleted-file rewind goes back to the rotation, no further."""
    daemon = daemon_factory()
    journal = daemon.data / "receipts.jsonl"
    assert soap_report(post(daemon.address, receipt_body("ROTA"))) == 0
    os.rename(journal, daemon.data / "receipts.jsonl.1")
    assert soap_report(post(daemon.address, receipt_body("ROTB"))) == 0
    journal.unlink()
    sent = []

    def journal_back() -> bool:
        # The deletion is checked once a second, at a commit: keep receipts coming until it is noticed.
        sent.append(f"ROTC{len(sent)}")
        assert soap_report(post(daemon.address, receipt_body(sent[-1]))) == 0
        return journal.exists()

    wait_for(journal_back, 10, "the journal to be made again")
    assert [json.loads(line)["message_id"] for line in (daemon.data / "receipts.jsonl.1").read_text().splitlines()] \
        == ["ROTA"]
    assert [line["message_id"] for line in daemon.journal()] == ["ROTB", *sent]


def test_a_deleted_journal_is_left_to_the_store_which_appends_again_what_went_into_it(tmp_path):
    writer = JournalWriter(tmp_path)
    writer.open()
    try:
        writer.append([b'{"id":1}\n'])
        (tmp_path / "receipts.jsonl").unlink()
        assert not writer.renamed_away(), "deleted, not renamed: the store's deleted() check owns this case"
        assert writer.deleted()
    finally:
        writer.close()


def test_the_idle_writer_follows_a_rotation_within_its_once_a_second_check(tmp_path):
    writer = JournalWriter(tmp_path)
    writer.open()
    try:
        writer.append([b'{"id":1}\n'])
        os.rename(tmp_path / "receipts.jsonl", tmp_path / "receipts.jsonl.1")
        writer.check_while_idle()  # what the store's idle writer calls once a second
        assert (tmp_path / "receipts.jsonl").exists(), "the renamed file is let go of without a new receipt"
        assert not writer.renamed_away()
    finally:
        writer.close()


def test_the_shipped_stanza_has_no_postrotate_and_keeps_the_newest_rotated_file_plain():
    lines = [line.strip() for line in STANZA.read_text().splitlines()]
    words = [line.split()[0] for line in lines if line and not line.startswith("#")]
    assert "postrotate" not in words, "dlrd follows a rotation by itself; see the stanza's comment"
    assert {"nocreate", "delaycompress", "missingok", "notifempty"} <= set(words)


@pytest.mark.slow
@pytest.mark.skipif(LOGROTATE is None, reason="needs logrotate(8) (Debian package logrotate; .ci/run installs it)")
@pytest.mark.skipif(shutil.which("tail") is None, reason="needs tail(1)")
def test_logrotate_with_the_shipped_stanza_loses_no_line_for_tail_follow(daemon_factory, tmp_path):
    daemon: Daemon = daemon_factory()
    journal = daemon.data / "receipts.jsonl"
    config = tmp_path / "logrotate.conf"
    config.write_text(logrotate_config(journal))
    config.chmod(0o644)  # logrotate refuses a config others can write
    state = tmp_path / "logrotate.state"
    tail_errors = tmp_path / "tail.stderr"
    with open(tail_errors, "wb") as errors:
        tail = subprocess.Popen(["tail", "-F", "-n", "+1", str(journal)], stdout=subprocess.PIPE, stderr=errors)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(json.loads(line)["message_id"] for line in tail.stdout),
                              daemon=True)
    reader.start()
    failures: list[str] = []

    def poster(offset: int) -> None:
        client = KeepAliveClient(daemon.address)
        try:
            for number in range(offset, RECEIPTS, CONNECTIONS):
                report = soap_report(client.post(receipt_body(f"LR{number:04d}")))
                if report != 0:
                    failures.append(f"LR{number:04d}: Report {report}")
        finally:
            client.close()

    def stored() -> int:
        return daemon.rows("SELECT count(*) FROM receipts")[0][0]

    posters = [threading.Thread(target=poster, args=(offset,)) for offset in range(CONNECTIONS)]
    rotations = 0
    try:
        for thread in posters:
            thread.start()
        while any(thread.is_alive() for thread in posters):
            target = min(RECEIPTS, stored() + RECEIPTS_PER_ROTATION)
            wait_for(lambda target=target: stored() >= target or not any(thread.is_alive() for thread in posters),
                     30, f"{target} receipts stored")
            before = journal.stat().st_ino if journal.exists() else None
            run = subprocess.run([LOGROTATE, "-f", "-s", str(state), str(config)], capture_output=True, text=True)
            assert run.returncode == 0, f"logrotate failed:\n{run.stderr}"
            after = journal.stat().st_ino if journal.exists() else None
            rotations += before is not None and before != after
        for thread in posters:
            thread.join(30)
        assert not failures, failures[:5]
        expected = {f"LR{number:04d}" for number in range(RECEIPTS)}
        wait_for(lambda: set(seen) >= expected, 20, "tail -F to print every receipt")
    finally:
        tail.terminate()
        tail.wait(10)
        reader.join(10)
    counts = Counter(seen)
    log = daemon.log()
    again = log.count("writing that batch again")
    assert rotations >= 10, f"only {rotations} rotations happened"
    assert sorted(counts) == sorted(expected), "tail -F printed exactly the receipts posted, none lost"
    repeated = {message_id: count for message_id, count in counts.items() if count > 1}
    # A rename that falls inside a write sends that batch to both files (JournalWriter.append): the
    # one repeat dlrd allows itself, and only then, at most once per batch written again.
    assert not repeated or again, f"tail -F printed these more than once: {repeated}\n{tail_errors.read_text()}"
    assert max(counts.values()) <= 2
    followed = log.count("followed the rotation") + again
    assert followed >= rotations - 1, f"{rotations} rotations, {followed} followed\n{tail_errors.read_text()}"
    rows = sorted((row["id"], row["message_id"]) for row in daemon.rows("SELECT id, message_id FROM receipts"))
    lines = sorted((record["id"], record["message_id"]) for record in journal_lines(daemon.data))
    assert sorted(set(lines)) == rows, "the journal files hold every stored receipt and nothing else"
    assert len(lines) == len(rows) or again, "and each once, unless a batch was written again"
    print(f"\nlogrotate: {RECEIPTS} receipts on {CONNECTIONS} connections, {rotations} rotations, "
          f"tail -F printed {len(seen)} lines, lost {len(expected - set(counts))}, repeated {len(repeated)}, "
          f"batches written again {again}, repeated lines in the files {len(lines) - len(rows)}")
