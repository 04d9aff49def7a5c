"""One daemon per database: a second `dlrd serve` on the same data is refused, and nothing is written twice."""

from __future__ import annotations

import signal
import subprocess
import sys

from wire import post, receipt_body, wait_for


def serve(daemon, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """A second `dlrd serve` with the first daemon's ini, run to its end."""
    return subprocess.run([sys.executable, "-m", "dlrd", "serve", "--config", str(daemon.ini)],
                          capture_output=True, text=True, timeout=timeout)


def test_a_second_daemon_on_the_same_database_is_refused_naming_the_first(daemon):
    assert post(daemon.address, receipt_body("FIRST")).status == 200
    second = serve(daemon)
    assert second.returncode == 3
    lines = [line for line in second.stderr.splitlines() if line.startswith("dlrd: ")]
    assert len(lines) == 1, second.stderr
    assert f"another dlrd (pid {daemon.process.pid}) is serving {daemon.data / 'dlrd.db'}" in lines[0]
    assert "listening" not in second.stderr
    # The first one never noticed, and its journal holds each receipt once.
    assert post(daemon.address, receipt_body("SECOND")).status == 200
    wait_for(lambda: len(daemon.journal()) == 2, what="two journal lines")
    assert [line["message_id"] for line in daemon.journal()] == ["FIRST", "SECOND"]


def test_the_lock_goes_with_the_process_however_it_ends(daemon_factory):
    daemon = daemon_factory()
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    daemon.process = None
    daemon.start()  # no stale lock to clear by hand
    assert post(daemon.address, receipt_body("AFTERKILL")).status == 200
    assert (daemon.data / "dlrd.db.lock").read_text() == f"{daemon.process.pid}\n"
    assert daemon.stop() == 0
    daemon.start()  # nor after a clean stop
    assert (daemon.data / "dlrd.db.lock").read_text() == f"{daemon.process.pid}\n"
    assert post(daemon.address, receipt_body("AGAIN")).status == 200


def test_reading_and_replaying_beside_the_daemon_need_no_lock(daemon):
    assert post(daemon.address, receipt_body("READ")).status == 200
    for args in (["query", "--message-id", "READ"], ["stats"], ["quarantine", "list"], ["expect", "READ"],
                 ["replay", "--quarantine"], ["check-config"]):
        result = subprocess.run([sys.executable, "-m", "dlrd", *args[:1], "--config", str(daemon.ini), *args[1:]],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (args, result.stderr)
