"""sd_notify as systemd sees it: a real datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time

from wire import wait_for


def test_ready_reloading_stopping_and_watchdog_reach_notify_socket(daemon_factory, tmp_path):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(10)
    messages: list[str] = []

    def received(text: str) -> bool:
        while not any(text in message for message in messages):
            messages.append(listener.recv(4096).decode())
        return True

    try:
        daemon = daemon_factory(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
        assert received("READY=1")
        assert received("WATCHDOG=1")
        daemon.process.send_signal(signal.SIGHUP)
        assert received("RELOADING=1")
        wait_for(lambda: received("STATUS=reloaded"), 10, "READY after the reload")
        assert daemon.stop() == 0
        assert received("STOPPING=1")
    finally:
        listener.close()


def test_what_the_watchdog_checks_turns_false_when_a_thread_it_needs_dies(tmp_path):
    """systemd restarts a daemon that stops feeding its watchdog: it must stop when a thread it needs died."""
    from dlrd.config import load_config
    from dlrd.daemon import Daemon

    ini = tmp_path / "dlrd.ini"
    ini.write_text(f"[server]\nlisten = 127.0.0.1:0\n[storage]\ndatabase = {tmp_path / 'dlrd.db'}\n"
                   f"[journal]\ndirectory = {tmp_path}\n")
    daemon = Daemon(load_config(str(ini)))
    daemon.start()
    try:
        assert daemon.store.writer_alive() and daemon.server.alive()
        daemon.server._listeners[0].shutdown()  # the accept thread ends, as if it had died
        wait_for(lambda: not daemon.server.alive(), 5, "the dead accept thread to be seen")
        assert daemon.store.writer_alive()
    finally:
        daemon.stop()
    assert not daemon.store.writer_alive()


def test_the_watchdog_is_fed_and_sigterm_obeyed_while_a_sighup_waits_for_stuck_storage(daemon_factory, tmp_path):
    """The journal is reopened by the writer; with the database locked that took lock_timeout, and the main
    loop waited for it: no watchdog ping for 30 s (systemd would kill dlrd) and SIGTERM ignored."""
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(10)
    daemon = daemon_factory("[storage]\nlock_timeout = 30\ncommit_timeout = 30\n",
                            env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "600000"})
    holder = sqlite3.connect(daemon.data / "dlrd.db", isolation_level=None)
    try:
        assert b"READY=1" in listener.recv(4096)
        holder.execute("BEGIN EXCLUSIVE")  # the reopen records the journal position: it waits for this lock
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: b"RELOADING=1" in listener.recv(4096), 10, "RELOADING")
        started = time.monotonic()
        pings = 0
        while time.monotonic() - started < 2.0:
            pings += listener.recv(4096) == b"WATCHDOG=1"
        assert pings >= 3, "the watchdog went quiet while the reopen waited"
        daemon.process.send_signal(signal.SIGTERM)
        wait_for(lambda: b"STOPPING=1" in listener.recv(4096), 5, "SIGTERM to be obeyed at once")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        listener.close()
    assert daemon.process.wait(60) == 0
    daemon.process = None


def test_the_watchdog_is_fed_for_the_pid_systemd_watches():
    """WATCHDOG_PID names the process systemd forked: dlrd itself, or, in the one-file binary, its parent,
    PyInstaller's bootloader (tests/test_binary.py runs the real thing)."""
    from dlrd.systemd import Notifier, runs_under_one_file_bootloader

    def interval(watched_pid: int, one_file_child: bool) -> float | None:
        environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(watched_pid)}
        return Notifier(environ, one_file_child=one_file_child).watchdog_interval

    assert interval(os.getpid(), one_file_child=False) == 15.0
    assert interval(os.getppid(), one_file_child=True) == 15.0
    assert interval(os.getppid(), one_file_child=False) is None  # another process's watchdog: not ours
    assert interval(os.getppid() + 100_000, one_file_child=True) is None
    assert not runs_under_one_file_bootloader()  # this test runs the package, not a frozen binary


def test_a_second_sigterm_during_the_stop_does_not_kill_it(daemon_factory):
    """The stop waits for a receipt stuck behind a lock; SIGTERM again (Ctrl-C twice, a signal a bootloader
    passes on) must not end it by the default action: the receipt is still answered and dlrd exits 0."""
    import threading

    from wire import get, post, receipt_body

    daemon = daemon_factory("[storage]\nlock_timeout = 30\ncommit_timeout = 30\n")
    holder = sqlite3.connect(daemon.data / "dlrd.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(post(daemon.address, receipt_body("TWICE"),
                                                                  timeout=60)))
    try:
        waiting.start()
        wait_for(lambda: "has waited" in get(daemon.urls[0] + "/healthz")[1], 10, "the receipt to wait")
        daemon.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping: finishing requests in progress" in daemon.log(), 10, "the stop to begin")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.poll() is None, "the second SIGTERM killed the stop"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    waiting.join(60)
    assert daemon.process.wait(60) == 0
    daemon.process = None
    assert [answer.status for answer in answers] == [200]

