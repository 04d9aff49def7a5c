"""One daemon per database: `serve` holds an exclusive lock on a file beside it for as long as it runs.

Two daemons on one data directory both commit receipts into the database
(SQLite serialises them, so nothing breaks there) but both append every
receipt they see to the same receipts.jsonl: 20 receipts once gave 39
journal lines. The lock is `flock` on `<database>.lock`, which the kernel
lets go when the process ends however it ends, so a killed daemon leaves
nothing to clean up. The holder's pid is written into the file, so the
refusal can say which process to look at. The commands that only read, and
replay or expect, which write the database but never the journal, take no
lock. On PostgreSQL several nodes share the database by design, and what
must have one daemon is the journal directory: the lock is `dlrd.lock` there.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dlrd.errors import StartupError


class InstanceLock:
    """The held lock; closing it (or the process ending) lets the next daemon start."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def hold_database(database: Path) -> InstanceLock:
    """Take the lock for `database`; StartupError naming the other daemon when one holds it."""
    return _hold(lock_path(database), "[storage] database",
                 f"is serving {database}", "give this one its own [storage] database and [journal] directory")


def hold_journal(directory: Path) -> InstanceLock:
    """Take the lock for a journal directory (PostgreSQL: the database is shared, the journal is not)."""
    return _hold(directory / "dlrd.lock", "[journal] directory", f"journals into {directory}",
                 "give this node its own [journal] directory")


def _hold(path: Path, key: str, doing: str, remedy: str) -> InstanceLock:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise StartupError(f"{key}: cannot open the lock file {path}: {error.strerror or error}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(descriptor)
        os.close(descriptor)
        raise StartupError(f"another dlrd{holder} {doing} (it holds {path}): stop it first "
                           f"(systemctl stop dlrd), or {remedy}") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
    return InstanceLock(path, descriptor)


def _holder(descriptor: int) -> str:
    """' (pid N)' from what the holder wrote, or '' when it wrote nothing readable yet."""
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""
