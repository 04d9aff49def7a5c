"""systemd integration: sd_notify readiness, reload and stop states, and the watchdog.

Written against the documented protocol (sd_notify(3)): one datagram per
state change to $NOTIFY_SOCKET. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Tells systemd what the daemon is doing; silent when not run by systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = int(usec) / 2_000_000 if watched else None

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
