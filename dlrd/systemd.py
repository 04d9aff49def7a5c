"""systemd integration: sd_notify readiness, reload and stop states, and the watchdog.

Written against the documented protocol (sd_notify(3)): one datagram per
state change to $NOTIFY_SOCKET. Outside systemd every call is a no-op.

The one-file binary (packaging/dlrd.spec) runs as two processes: PyInstaller's
bootloader, which systemd started and knows as the main PID, and this Python
process, its child. The bootloader forwards every signal to the child and exits
with the child's status, so it stays the main PID (systemd keeps the exit
status, and Restart=on-failure works); the unit's NotifyAccess=all lets
systemd accept the child's notifications, and the child feeds the watchdog
systemd set for its parent (WATCHDOG_PID is the bootloader's PID).
"""

from __future__ import annotations

import os
import socket
import sys
import time


def runs_under_one_file_bootloader() -> bool:
    """True in the Python process of a PyInstaller one-file binary, whose parent is the bootloader.

    A one-file bundle is unpacked under $TMPDIR (sys._MEIPASS is a _MEIxxxx
    directory there, wherever TMPDIR is); a one-directory bundle is one process
    whose sys._MEIPASS is its _internal/, and a package install is not frozen.
    """
    bundle = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or bundle is None:
        return False
    home = os.path.dirname(os.path.realpath(sys.executable))
    # A one-directory bundle's _MEIPASS is fixed by the spec (its contents directory, _internal);
    # a one-file bundle's is a _MEIxxxxxx the bootloader made under $TMPDIR, which may lie beside it.
    return os.path.realpath(bundle) not in (home, os.path.join(home, "_internal"))


class Notifier:
    """Tells systemd what the daemon is doing; silent when not run by systemd."""

    def __init__(self, environ: dict[str, str] | None = None, one_file_child: bool | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid in self._own_pids(one_file_child))
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = int(usec) / 2_000_000 if watched else None

    @staticmethod
    def _own_pids(one_file_child: bool | None) -> set[str]:
        """The PIDs whose watchdog is this process's to feed: its own, and the bootloader's when it is one."""
        pids = {str(os.getpid())}
        if runs_under_one_file_bootloader() if one_file_child is None else one_file_child:
            pids.add(str(os.getppid()))
        return pids

    def send(self, message: str) -> None:
        if self._address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message.encode("utf-8"), self._address)
            except OSError:
                pass  # systemd went away; nothing useful to do about it

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        self.send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")
