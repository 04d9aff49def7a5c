"""Reading the database from the command line, beside a running daemon or from a copy.

A `mode=ro` connection never takes a write lock, so the daemon's writer is
never blocked by it; in WAL mode a reader sees the last commit before its
statement began. A copy in a directory nobody may write (where SQLite
cannot make the -shm file a WAL reader needs) is opened `immutable`: safe
only because no daemon writes that copy, and only when the copy has no
write-ahead log holding commits, since an immutable reader does not read
one (it would show the database as of its last checkpoint, silently).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

from dlrd.errors import StartupError


def read_only_uri(path: Path, options: str = "mode=ro") -> str:
    """The URI that opens `path` read-only, whatever characters its name holds."""
    return f"file:{urllib.parse.quote(str(path.resolve()))}?{options}"


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the dlrd database at `path`; StartupError saying what to do when there is none."""
    if not path.is_file():
        raise StartupError(f"no database at {path}: run dlrd serve once, or pass the --config that names it")
    try:
        connection = _connect(read_only_uri(path))
    except sqlite3.Error as error:
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            raise StartupError(
                f"cannot read the database {path} ({error}): its write-ahead log {wal.name} holds commits that "
                f"only a reader able to create {path.name}-shm in {path.parent} can see; run as a user who may "
                f"write there, or copy the database whole: sqlite3 {path} \".backup /tmp/dlrd-copy.db\"") from None
        try:
            connection = _connect(read_only_uri(path, "mode=ro&immutable=1"))
        except sqlite3.Error:
            raise StartupError(f"cannot read the database {path}: {error}") from None
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:
        connection.close()
        raise StartupError(f"cannot read the database {path}: {error}") from None
    if "receipts" not in tables:
        connection.close()
        raise StartupError(f"{path} is not a dlrd database (it has no receipts table): check [storage] database "
                           "in the --config file")
    return connection


def _connect(uri: str) -> sqlite3.Connection:
    connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        connection.close()
        raise
    return connection
