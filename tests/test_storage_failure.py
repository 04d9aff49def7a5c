"""When storage cannot make a receipt durable, dlrd says so and heals by itself.

SPEC section 1: "storage cannot make the receipt durable (disk full,
database locked too long)" is a 503 with Retry-After and a SOAP Server
fault, so the provider retries. The conditions are made real, without
root: another process holding the database's write lock, and a file-size
limit (RLIMIT_FSIZE) on the daemon standing in for a full disk. Each
condition is logged once, not once per request, and /healthz follows it.
Where a private mount namespace is allowed (root, or unprivileged user
namespaces), a real full tmpfs and a real read-only mount are used too.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import pytest
from wire import Answer, KeepAliveClient, connect, post, read_one, receipt_body, soap_report, wait_for

from dlrd import store as store_module
from dlrd.journal import JournalWriter
from dlrd.store import ReceiptStore

FAILING = "storage cannot commit receipts"
RECOVERED = "storage commits again"

ENVELOPES = Path(__file__).resolve().parent / "envelopes"


def new_id() -> str:
    return uuid.uuid4().hex[:15].upper()


def health(daemon) -> int:
    try:
        with urllib.request.urlopen(daemon.urls[0] + "/healthz", timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def metric(daemon, name: str) -> float:
    with urllib.request.urlopen(daemon.urls[0] + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def assert_unavailable(answer: Answer) -> None:
    """503, Retry-After, and a SOAP 1.1 fault whose faultcode is Server."""
    assert answer.status == 503, answer
    assert answer.header("retry-after") and answer.header("retry-after").isdigit()
    assert re.search(rb"<faultcode>[\w-]+:Server</faultcode>", answer.body), answer.body


def assert_recovered_once(daemon, acknowledged: list[str]) -> None:
    """A new receipt is stored again and /healthz is 200, with one failure line and one recovery line logged."""
    after = new_id()
    assert soap_report(post(daemon.address, receipt_body(after))) == 0
    acknowledged.append(after)
    assert health(daemon) == 200
    log = daemon.log(since_start=True)
    assert log.count(RECOVERED) == 1 and log.count(FAILING) == 1, log


def test_database_locked_past_lock_timeout_answers_503_once_logged_and_recovers(daemon_factory):
    daemon = daemon_factory("[storage]\nlock_timeout = 0.3\n")
    stored_before = new_id()
    assert soap_report(post(daemon.address, receipt_body(stored_before))) == 0

    holder = sqlite3.connect(daemon.data / "dlrd.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    refused = [new_id() for _ in range(4)]
    try:
        for message_id in refused:
            assert_unavailable(post(daemon.address, receipt_body(message_id)))
        # An invalid receipt cannot be quarantined either: 503 too, and no log line claims it was.
        assert_unavailable(post(daemon.address, (ENVELOPES / "bad_sent_to.xml").read_bytes()))
        assert health(daemon) == 503
        assert metric(daemon, "dlrd_storage_healthy") == 0
        log = daemon.log(since_start=True)
        assert log.count(FAILING) == 1, log
        assert "quarantined" not in log, log
        assert "locked" in log.split(FAILING, 1)[1].splitlines()[0]
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    # The lock is gone: the very next receipt is stored, with no restart.
    retried = refused[0]
    assert soap_report(post(daemon.address, receipt_body(retried))) == 0
    assert health(daemon) == 200
    log = daemon.log(since_start=True)
    assert log.count(RECOVERED) == 1 and log.count(FAILING) == 1, log
    stored = {row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")}
    assert stored == {stored_before, retried}
    assert [line["message_id"] for line in daemon.journal()] == [stored_before, retried]


def _limit_file_size(limit: int):
    # Soft limit only: the hard limit stays unlimited, so this test (the same
    # user, no privilege) may lift it later with prlimit(2).
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def _lift_file_size_limit(pid: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def test_disk_full_answers_503_once_logged_and_recovers_when_space_returns(daemon_factory):
    # A fresh database, its write-ahead log and the journal each stay far
    # below 256 KiB at start; sustained posting grows the write-ahead log
    # (a few pages a commit) into the limit, where write(2) fails with EFBIG
    # as it would with ENOSPC on a full disk.
    daemon = daemon_factory(preexec_fn=_limit_file_size(256 * 1024))
    acknowledged = []
    first_refusal = None
    for _ in range(400):
        message_id = new_id()
        answer = post(daemon.address, receipt_body(message_id))
        if answer.status != 200:
            first_refusal = answer
            break
        assert soap_report(answer) == 0
        acknowledged.append(message_id)
    assert first_refusal is not None, "the file-size limit was never reached"
    assert acknowledged, "the limit was hit before the first receipt"
    assert_unavailable(first_refusal)
    for _ in range(3):
        assert_unavailable(post(daemon.address, receipt_body(new_id())))
    assert health(daemon) == 503
    log = daemon.log(since_start=True)
    assert log.count(FAILING) == 1, log
    assert daemon.process.poll() is None, "SIGXFSZ killed the daemon"

    _lift_file_size_limit(daemon.process.pid)
    assert_recovered_once(daemon, acknowledged)

    stored = [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts ORDER BY id")]
    assert stored == acknowledged
    assert [line["message_id"] for line in daemon.journal()] == acknowledged


def test_journal_write_failure_after_commit_still_answers_200_and_catches_up(daemon_factory):
    # Only the journal is near the limit: the receipts commit (they are
    # durable, so 200), their lines wait, and follow once the file can grow.
    limit = 256 * 1024
    daemon = daemon_factory()
    daemon.stop()
    padding = b'{"padding":"' + b"x" * 200 + b'"}\n'
    (daemon.data / "receipts.jsonl").write_bytes(padding * ((limit - 1500) // len(padding)))
    daemon.start(preexec_fn=_limit_file_size(limit))

    acknowledged = [new_id() for _ in range(12)]
    for message_id in acknowledged:
        answer = post(daemon.address, receipt_body(message_id))
        assert answer.status == 200 and soap_report(answer) == 0, answer
    assert health(daemon) == 200
    assert metric(daemon, "dlrd_journal_writable") == 0
    log = daemon.log(since_start=True)
    assert log.count("cannot write the journal") == 1, log
    assert FAILING not in log

    _lift_file_size_limit(daemon.process.pid)
    late = new_id()
    assert soap_report(post(daemon.address, receipt_body(late))) == 0
    acknowledged.append(late)
    wait_for(lambda: "writable again" in daemon.log(since_start=True), 10, "the journal to catch up")
    assert metric(daemon, "dlrd_journal_writable") == 1

    # Every line is whole JSON (a write cut short by the limit was cut back
    # off), and each receipt is there exactly once, in id order.
    records = [record for record in daemon.journal() if "id" in record]
    rows = daemon.rows("SELECT id, message_id FROM receipts ORDER BY id")
    assert [(record["id"], record["message_id"]) for record in records] == [tuple(row) for row in rows]
    assert [record["message_id"] for record in records] == acknowledged


def _mount_namespace() -> tuple[list[str], list[str]] | None:
    """How to run a command in a private mount namespace, and how to enter it; None if not allowed here."""
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return None
    if os.geteuid() == 0:
        unshare, enter = ["unshare", "--mount"], ["--mount"]
    else:
        unshare, enter = ["unshare", "--map-root-user", "--mount"], ["--user", "--mount", "--preserve-credentials"]
    probe = subprocess.run([*unshare, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', "/tmp"],
                           capture_output=True, timeout=30)
    return (unshare, enter) if probe.returncode == 0 else None


NAMESPACE = _mount_namespace()
needs_mounts = pytest.mark.skipif(NAMESPACE is None, reason="needs a private mount namespace (unshare, mount)")


@needs_mounts
def test_a_really_full_disk_answers_503_once_logged_and_recovers_when_space_is_added(daemon_factory, tmp_path):
    unshare, enter = NAMESPACE
    data = tmp_path / "d" / "data"
    # The data directory is a 400 KiB tmpfs seen only by the daemon: a small disk that fills up (ENOSPC).
    mount_small_disk = [*unshare, "sh", "-c", 'mkdir -p "$0" && mount -t tmpfs -o size=400k tmpfs "$0" && exec "$@"',
                        str(data)]
    daemon = daemon_factory(wrap=mount_small_disk)
    acknowledged = []
    for _ in range(600):
        message_id = new_id()
        answer = post(daemon.address, receipt_body(message_id))
        if answer.status != 200:
            break
        acknowledged.append(message_id)
    assert_unavailable(answer)
    assert acknowledged, "the disk was full before the first receipt"
    for _ in range(3):
        assert_unavailable(post(daemon.address, receipt_body(new_id())))
    assert health(daemon) == 503
    log = daemon.log(since_start=True)
    assert log.count(FAILING) == 1, log
    assert "full" in log.split(FAILING, 1)[1].splitlines()[0]

    # The operator makes room; no restart.
    grow = subprocess.run(["nsenter", "--target", str(daemon.process.pid), *enter,
                           # Options from the command line only: in a user namespace, the ones
                           # mount(8) would add from mountinfo (uid=) are refused.
                           "mount", "--options-source", "disable", "-o", "remount,size=8m", str(data)],
                          capture_output=True, timeout=30)
    assert grow.returncode == 0, grow.stderr
    assert_recovered_once(daemon, acknowledged)

    assert stored_and_journaled(daemon, data, enter) == (acknowledged, acknowledged)


def stored_and_journaled(daemon, data: Path, enter: list[str]) -> tuple[list[str], list[str]]:
    """The MessageIdentifiers in SQLite and in receipts.jsonl, read inside the daemon's mount namespace."""
    read = subprocess.run(
        ["nsenter", "--target", str(daemon.process.pid), *enter, sys.executable, "-c",
         "import json, sqlite3, sys; from pathlib import Path; data = Path(sys.argv[1]); "
         "rows = sqlite3.connect(data / 'dlrd.db').execute('SELECT message_id FROM receipts ORDER BY id'); "
         "lines = (data / 'receipts.jsonl').read_text().splitlines(); "
         "print(json.dumps([[row[0] for row in rows], [json.loads(line)['message_id'] for line in lines]]))",
         str(data)], capture_output=True, text=True, timeout=30)
    assert read.returncode == 0, read.stderr
    stored, journaled = json.loads(read.stdout)
    return stored, journaled


def _loop_mounted_ext4(image: Path, mount_point: Path) -> list[str] | None:
    """A command prefix that runs a program with an ext4 image mounted (errors=remount-ro); None if not here."""
    if NAMESPACE is None or os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not Path("/sys/fs/ext4").is_dir():
        return None
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    unshare, _enter = NAMESPACE
    prefix = [*unshare, "sh", "-c", 'mkdir -p "$0" && mount -o loop,errors=remount-ro "$1" "$0" && shift && exec "$@"',
              str(mount_point), str(image)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    return prefix if probe.returncode == 0 else None


def test_a_file_system_turning_read_only_at_runtime_answers_503_once_logged(daemon_factory, tmp_path):
    data = tmp_path / "d" / "data"
    mount = _loop_mounted_ext4(tmp_path / "fs.img", data)
    if mount is None:
        pytest.skip("needs root, a mount namespace, mkfs.ext4 and a loop device")
    _unshare, enter = NAMESPACE
    daemon = daemon_factory(wrap=mount)
    acknowledged = [new_id() for _ in range(3)]
    for message_id in acknowledged:
        assert soap_report(post(daemon.address, receipt_body(message_id))) == 0
    mounted = subprocess.run(["nsenter", "--target", str(daemon.process.pid), *enter,
                              "findmnt", "-n", "-o", "SOURCE", str(data)], capture_output=True, text=True, timeout=30)
    # The kernel's own switch for an ext4 error: with errors=remount-ro the file system turns read-only under
    # the running daemon, as a failing disk makes it (a plain remount is refused while files are open).
    Path(f"/sys/fs/ext4/{Path(mounted.stdout.strip()).name}/trigger_fs_error").write_text("dlrd test\n")
    for _ in range(3):
        assert_unavailable(post(daemon.address, receipt_body(new_id())))
    assert health(daemon) == 503
    assert metric(daemon, "dlrd_storage_healthy") == 0
    log = daemon.log(since_start=True)
    assert log.count(FAILING) == 1, log
    assert stored_and_journaled(daemon, data, enter) == (acknowledged, acknowledged)


@needs_mounts
def test_a_read_only_file_system_at_start_is_refused_with_the_reason(daemon):
    unshare, _enter = NAMESPACE
    assert soap_report(post(daemon.address, receipt_body(new_id()))) == 0
    assert daemon.stop() == 0
    # Remounting read-only under a running daemon is refused by the kernel (its files are open for
    # writing), so the read-only case that can be made real is the one at start.
    result = subprocess.run(
        [*unshare, "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
         str(daemon.data), sys.executable, "-m", "dlrd", "--config", str(daemon.ini), "serve"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "read-only" in message, message


def test_a_commit_held_past_commit_timeout_answers_503_and_the_receipt_is_kept_when_it_completes(daemon_factory):
    # The lock wait (30 s) outlasts commit_timeout (1 s): what a hanging disk looks like from the receipt's side.
    daemon = daemon_factory("[storage]\nlock_timeout = 30\ncommit_timeout = 1\n")
    holder = sqlite3.connect(daemon.data / "dlrd.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    held = [new_id(), new_id()]
    try:
        for message_id in held:
            answer = post(daemon.address, receipt_body(message_id))
            assert_unavailable(answer)
            assert answer.header("connection") == "close"
        assert metric(daemon, "dlrd_storage_failures_total") == 2
        log = daemon.log(since_start=True)
        assert log.count("waited longer than commit_timeout") == 1, log
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    # The held commits complete once the lock is gone: the receipts are kept, and
    # the provider's retry is answered as a duplicate of the stored receipt.
    wait_for(lambda: len(daemon.rows("SELECT id FROM receipts")) == 2, what="the held receipts committed")
    retry = post(daemon.address, receipt_body(held[0]))
    assert soap_report(retry) == 0 and b"duplicate" in retry.body
    assert [line["message_id"] for line in daemon.journal()] == held
    log = daemon.log(since_start=True)
    assert log.count("commits complete again after") == 1, log
    assert health(daemon) == 200


def test_an_answer_at_commit_timeout_keeps_the_envelopes_soap_version_and_is_counted_once(daemon_factory):
    # The lock wait (2 s) ends after commit_timeout answered: the late failure must not be counted again.
    daemon = daemon_factory("[storage]\nlock_timeout = 2\ncommit_timeout = 0.5\n")
    soap12 = (ENVELOPES / "soap12.xml").read_bytes()
    holder = sqlite3.connect(daemon.data / "dlrd.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        answer = post(daemon.address, soap12, content_type=None)  # SPEC: the version is the envelope's
        assert answer.status == 503 and answer.header("retry-after"), answer
        assert answer.header("content-type").startswith("application/soap+xml")
        assert b"http://www.w3.org/2003/05/soap-envelope" in answer.body and b"Receiver" in answer.body
        wait_for(lambda: "stayed locked by another program" in daemon.log(since_start=True), 10,
                 "the held commit to fail at lock_timeout")
        assert metric(daemon, "dlrd_storage_failures_total") == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_stop_while_storage_is_stuck_answers_the_waiting_receipts_503_and_waits_out_one_lock_only(daemon_factory):
    # lock_timeout outlasts the stop's grace (10 s): a stuck writer at shutdown.
    daemon = daemon_factory("[storage]\nlock_timeout = 12\n")
    holder = sqlite3.connect(daemon.data / "dlrd.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    sockets = []
    try:
        for _ in range(3):
            body = receipt_body(new_id())
            sock = connect(daemon.address, timeout=30)
            sock.sendall(f"POST / HTTP/1.1\r\nHost: receiver\r\nContent-Type: text/soap\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            sockets.append(sock)
        # Sent before /metrics was asked, so read by the time it answers.
        wait_for(lambda: metric(daemon, "dlrd_connections_open") >= 4, 10, "the three receipts to arrive")
        stopped = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        for sock in sockets:
            assert_unavailable(read_one(sock))  # not a dropped connection: the provider knows to retry
        assert daemon.process.wait(30) == 0
        # One wait for the lock (12 s), not one per batch plus one for the final checkpoint.
        assert time.monotonic() - stopped < 12 + 4
        log = daemon.log(since_start=True)
        assert "stopping: 3 request(s) still waited for storage" in log, log
        assert "commit_timeout" not in log, log  # it was the stop, not commit_timeout, that answered them
    finally:
        for sock in sockets:
            sock.close()
        holder.execute("ROLLBACK")
        holder.close()


def test_a_disk_hovering_at_full_logs_its_failure_once_not_once_per_flap(daemon_factory):
    # Each checkpoint lets the write-ahead log start over inside the limit, so under load a few commits
    # fit again before it bites once more: failure and recovery alternate many times a second.
    daemon = daemon_factory(preexec_fn=_limit_file_size(300 * 1024))
    statuses: list[list[int]] = [[] for _ in range(4)]
    load_ends = time.monotonic() + 4

    def keep_posting(mine: list[int]) -> None:
        client = KeepAliveClient(daemon.address)
        try:
            while time.monotonic() < load_ends:
                mine.append(client.post(receipt_body(new_id())).status)
        finally:
            client.close()

    clients = [threading.Thread(target=keep_posting, args=(mine,)) for mine in statuses]
    for client in clients:
        client.start()
    for client in clients:
        client.join(30)
    comebacks = sum(before == 503 and after == 200 for mine in statuses for before, after in pairwise(mine))
    assert comebacks >= 2, f"storage did not fail and come back repeatedly: {comebacks}"
    log = daemon.log(since_start=True)
    assert log.count(FAILING) == 1, log
    assert log.count(RECOVERED) <= 1, log
    _lift_file_size_limit(daemon.process.pid)
    wait_for(lambda: health(daemon) == 200, 10, "/healthz 200 once the limit is lifted")


def test_the_failure_log_rule_for_a_condition_that_keeps_coming_back(tmp_path, monkeypatch, caplog):
    """Once per condition; a relapse within RELAPSE_SECONDS of the last line is not logged, unless it lasts."""
    now = [0.0]
    monkeypatch.setattr(store_module, "time", SimpleNamespace(monotonic=lambda: now[0]))  # the store's clock only
    store = ReceiptStore(tmp_path / "dlrd.db", JournalWriter(tmp_path))
    full = store_module.StorageCondition("write", "the disk is full")
    caplog.set_level("WARNING", logger="dlrd.store")
    for at, event in ((0, "fail"), (1, "recover"), (2, "fail"), (3, "recover"), (4, "fail"), (30, "fail"),
                      (61, "fail"), (62, "recover"), (200, "fail")):
        now[0] = at
        if event == "fail":
            store._fail(full)
        else:
            store._recover()
    failing = f"{FAILING}: the disk is full; answering 503 until it can"
    recovered = f"{RECOVERED} after: the disk is full"
    assert [record.getMessage() for record in caplog.records] == [
        failing, recovered,  # the first time: both logged
        f"{failing} (back 2 time(s) since it was last logged)",  # back at 2 and 4, still failing a minute on
        recovered,
        failing,  # long after: a new episode
    ]


LOST = "while dlrd had it open"


def test_a_database_deleted_under_the_running_daemon_is_answered_503_not_200(daemon_factory):
    daemon = daemon_factory()
    assert soap_report(post(daemon.address, receipt_body("BEFORE"))) == 0
    (daemon.data / "dlrd.db").unlink()  # what `rm` does to a file dlrd still holds open

    assert_unavailable(post(daemon.address, receipt_body("AFTER1")))
    assert_unavailable(post(daemon.address, receipt_body("AFTER2")))
    assert health(daemon) == 503
    assert metric(daemon, "dlrd_storage_healthy") == 0
    log = daemon.log(since_start=True)
    assert log.count(LOST) == 1, log
    assert "was deleted" in log and "restart dlrd" in log
    assert daemon.stop() == 0

    daemon.start()
    assert daemon.rows("SELECT message_id FROM receipts") == [], "no receipt was answered 200 after the deletion"
    assert [line["message_id"] for line in daemon.journal()] == ["BEFORE"]


def test_a_database_deleted_while_idle_turns_healthz_and_the_metric_within_a_second(daemon_factory):
    daemon = daemon_factory()
    (daemon.data / "dlrd.db").unlink()

    wait_for(lambda: metric(daemon, "dlrd_storage_healthy") == 0, 5, "the idle writer to notice")
    assert daemon.log(since_start=True).count(LOST) == 1


def test_a_database_replaced_under_the_running_daemon_is_answered_503_until_it_is_put_back(daemon_factory):
    daemon = daemon_factory()
    path = daemon.data / "dlrd.db"
    assert soap_report(post(daemon.address, receipt_body("BEFORE"))) == 0
    os.link(path, daemon.directory / "original.db")  # the operator keeps the file dlrd has open
    with sqlite3.connect(path) as source, sqlite3.connect(daemon.directory / "copy.db") as copy:
        source.backup(copy)
    os.replace(daemon.directory / "copy.db", path)  # a backup restored over it, as `mv` does

    assert_unavailable(post(daemon.address, receipt_body("REFUSED")))
    assert health(daemon) == 503
    log = daemon.log(since_start=True)
    assert log.count(LOST) == 1 and "replaced by another file" in log, log

    os.replace(daemon.directory / "original.db", path)  # put back: the path names the open file again
    assert soap_report(post(daemon.address, receipt_body("AFTER"))) == 0
    assert health(daemon) == 200
    assert daemon.log(since_start=True).count(RECOVERED) == 1
    assert daemon.stop() == 0
    daemon.start()
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts ORDER BY id")] == [
        "BEFORE", "AFTER"]
    assert [line["message_id"] for line in daemon.journal()] == ["BEFORE", "AFTER"]


def test_a_replaced_database_is_left_whole_when_dlrd_is_killed_after_noticing(daemon_factory):
    """The old write-ahead log must not stay beside the replacement: opened later, SQLite replays it into it.

    Before, after `mv other.db dlrd.db` and a kill -9 the replacement was "database disk image is malformed",
    or silently held the old rows instead of its own.
    """
    daemon = daemon_factory()
    path = daemon.data / "dlrd.db"
    for number in range(300):
        assert soap_report(post(daemon.address, receipt_body(f"OLD{number}"))) == 0
    wal = daemon.data / "dlrd.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    replacement = daemon.directory / "replacement.db"
    with sqlite3.connect(replacement) as connection:
        connection.execute("CREATE TABLE own_rows (name TEXT)")
        connection.executemany("INSERT INTO own_rows VALUES (?)", [("NEW",)] * 4)
    connection.close()
    os.replace(replacement, path)

    assert_unavailable(post(daemon.address, receipt_body("REFUSED")))
    wait_for(lambda: not wal.exists() or wal.stat().st_size == 0, 5, "dlrd to let go of the old write-ahead log")
    daemon.kill()

    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("SELECT count(*) FROM own_rows").fetchone()[0] == 4
        assert connection.execute("SELECT name FROM sqlite_master WHERE name = 'receipts'").fetchone() is None
    connection.close()


@needs_mounts
def test_refused_requests_are_not_kept_when_the_disk_is_nearly_full_and_receipts_still_are(daemon_factory, tmp_path):
    """The last QUARANTINE_DISK_RESERVE of the disk is for receipts: a flood of refused requests got it before."""
    unshare, enter = NAMESPACE
    data = tmp_path / "d" / "data"
    mount = [*unshare, "sh", "-c", 'mkdir -p "$0" && mount -t tmpfs -o size=40m tmpfs "$0" && exec "$@"', str(data)]
    daemon = daemon_factory("[auth]\npin = right\n[storage]\nquarantine_rate = 100m\n", wrap=mount)
    bad_pin = receipt_body("BADPIN0").replace(b"BLUE.music", b"RED.music")
    assert post(daemon.address, bad_pin).status == 500
    # The operator's disk fills up with something else: less than the reserve is left.
    fill = subprocess.run(["nsenter", "--target", str(daemon.process.pid), *enter, "dd", "if=/dev/zero",
                           f"of={data / 'ballast'}", "bs=1M", "count=12"], capture_output=True, timeout=30)
    assert fill.returncode == 0, fill.stderr
    for number in range(1, 6):
        assert post(daemon.address, bad_pin.replace(b"BADPIN0", f"BADPIN{number}".encode())).status == 500
    good = receipt_body("GOOD").replace(b"BLUE.music", b"right")
    assert soap_report(post(daemon.address, good)) == 0

    assert metric_with_labels(daemon, "dlrd_quarantine_not_kept_total", 'reason="disk"') == 5
    assert "the disk holding the database is nearly full" in daemon.log()
    stored, _journaled = stored_and_journaled(daemon, data, enter)
    assert stored == ["GOOD"]


def metric_with_labels(daemon, name: str, labels: str) -> float:
    with urllib.request.urlopen(daemon.urls[0] + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    match = re.search(rf"^{re.escape(name)}{re.escape('{' + labels + '}')} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
