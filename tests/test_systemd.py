"""sd_notify as systemd sees it: a real datagram socket standing in for systemd's."""

from __future__ import annotations

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
