"""Log lines as journald and a terminal get them: priorities, milliseconds, durations, and never a PIN."""

from __future__ import annotations

import os
import re
import signal

from wire import get, post, receipt_body, wait_for

SEED_PIN = "BLUE.music"  # the seed envelope's PIN: it must never appear in any log line
AUTH = f"[auth]\nusername = ANOther.61234\npin = {SEED_PIN}\n"


def journal_stream(daemon) -> dict[str, str]:
    """$JOURNAL_STREAM as systemd sets it: the device and inode of the stderr dlrd will get."""
    daemon.log_path.parent.mkdir(parents=True, exist_ok=True)
    daemon.log_path.touch()
    stats = os.stat(daemon.log_path)
    return {"JOURNAL_STREAM": f"{stats.st_dev}:{stats.st_ino}"}


def credentials_body(message_id: str, pin: str) -> bytes:
    return receipt_body(message_id).replace(SEED_PIN.encode(), pin.encode())


def test_under_journald_every_line_carries_its_priority_and_no_time(tmp_path):
    from conftest import Daemon

    daemon = Daemon(tmp_path / "j")
    daemon.directory.mkdir()
    daemon.start("[log]\nlevel = debug\naccess_log = yes\n", env=journal_stream(daemon))
    post(daemon.address, receipt_body("LOG1"))
    post(daemon.address, b"<not-soap/>")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP" in daemon.log(), 10, "the reload line")
    assert daemon.stop() == 0

    lines = daemon.log().splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert not any(re.search(r"\d\d:\d\d:\d\d", line[:40]) for line in lines), "journald adds the time itself"
    priorities = {re.match(r"<(\d)>(\w+)", line).groups() for line in lines}
    assert {("6", "INFO"), ("4", "WARNING")} <= priorities, priorities
    assert all(level == {"7": "DEBUG", "6": "INFO", "4": "WARNING", "3": "ERROR"}[number]
               for number, level in priorities)


def test_each_line_of_a_traceback_keeps_the_error_priority():
    """journald splits a record on newlines: unprefixed traceback lines would be filed as info."""
    import logging

    from dlrd.daemon import JournaldFormatter

    try:
        raise RuntimeError("writer failed")
    except RuntimeError:
        record = logging.LogRecord("dlrd.store", logging.ERROR, __file__, 1, "the writer thread failed", (),
                                   __import__("sys").exc_info())
    lines = JournaldFormatter("%(levelname)s %(name)s: %(message)s").format(record).splitlines()
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines), lines
    assert lines[-1] == "<3>RuntimeError: writer failed"


def test_a_journal_stream_that_is_not_our_stderr_keeps_the_plain_format(daemon_factory):
    """`dlrd serve 2>file` from a service's shell inherits $JOURNAL_STREAM; the file must not get prefixes."""
    daemon = daemon_factory(env={"JOURNAL_STREAM": "8:12345"})
    assert daemon.stop() == 0
    assert not any(line.startswith("<") for line in daemon.log().splitlines())


def test_plain_lines_have_milliseconds_and_the_access_line_a_duration(daemon_factory):
    daemon = daemon_factory("[log]\naccess_log = yes\n")
    post(daemon.address, receipt_body("LOG2"))
    wait_for(lambda: '"POST / HTTP/1.0" 200' in daemon.log(), 5, "the access line")
    [line] = [line for line in daemon.log().splitlines() if '"POST / HTTP/1.0"' in line]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO dlrd\.access: 127\.0\.0\.1 "
                    r'"POST / HTTP/1\.0" 200 \d+ \d+\.\dms$', line), line


def test_the_pin_appears_in_no_log_line_in_either_format(tmp_path):
    """Right and wrong PINs, a refused body, a reload, under journald and plain, at debug with the access log."""
    from conftest import Daemon

    for name, journald in (("plain", False), ("journald", True)):
        daemon = Daemon(tmp_path / name)
        daemon.directory.mkdir()
        env = journal_stream(daemon) if journald else {}
        daemon.start(AUTH + "[log]\nlevel = debug\naccess_log = yes\n", env=env)
        assert post(daemon.address, credentials_body("PIN1", SEED_PIN)).status == 200
        assert post(daemon.address, credentials_body("PIN2", "WRONG.pin9")).status == 500
        post(daemon.address, credentials_body("PIN3", SEED_PIN).replace(b"447009123456", b"not-a-number"))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in daemon.log() or "SIGHUP" in daemon.log(), 10, "the reload")  # noqa: B023
        assert daemon.stop() == 0
        log = daemon.log()
        assert "authentication failed" in log
        assert SEED_PIN not in log and "WRONG.pin9" not in log, log


def test_an_answer_the_client_never_took_still_has_its_access_line(daemon_factory):
    """The provider says it got no answer: the access log must show what dlrd answered, and that it was not taken."""
    import socket
    import sqlite3
    import struct

    daemon = daemon_factory("[storage]\nlock_timeout = 30\ncommit_timeout = 30\n[log]\naccess_log = yes\n")
    holder = sqlite3.connect(daemon.data / "dlrd.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    body = receipt_body("GONE1")
    client = socket.create_connection(daemon.address, timeout=10)
    try:
        client.sendall(b"POST / HTTP/1.1\r\nHost: r\r\nContent-Type: text/soap\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(body), body))
        wait_for(lambda: "has waited" in get(daemon.urls[0] + "/healthz")[1], 10,
                 "the receipt to wait in the writer's hands")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset: the provider gave up
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_for(lambda: '"POST / HTTP/1.1" 200' in daemon.log(), 20, "the access line")
    [line] = [line for line in daemon.log().splitlines() if '"POST / HTTP/1.1" 200' in line]
    assert line.endswith("(not delivered: the client left)"), line
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts")] == ["GONE1"]
