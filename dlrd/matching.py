"""Strict matching: is a receipt's MessageIdentifier one the customer submitted?

With `[storage] strict_match = yes` the receipt endpoint looks every id up
in `expected_messages`. Request threads read it through read-only
connections of their own (one per thread, as sqlite3 connections are not
shared), so a lookup never waits for the writer thread or holds it up:
in WAL mode a reader sees the last commit and takes no lock a writer needs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from dlrd.errors import StorageUnavailable
from dlrd.readonly import read_only_uri

_LOOKUP = "SELECT 1 FROM expected_messages WHERE message_id = ?"


class ExpectedMessages:
    """The expected_messages table, read from any thread."""

    def __init__(self, database: Path) -> None:
        self.uri = read_only_uri(database)
        self._local = threading.local()

    def __contains__(self, message_id: str) -> bool:
        try:
            connection = self._local.connection
        except AttributeError:
            connection = self._local.connection = sqlite3.connect(self.uri, uri=True, isolation_level=None)
        try:
            return connection.execute(_LOOKUP, (message_id,)).fetchone() is not None
        except sqlite3.Error as error:
            raise StorageUnavailable(f"cannot read expected_messages: {error}") from None


def add_expected(connection: sqlite3.Connection, message_ids: Iterable[str]) -> int:
    """Record submitted ids in one transaction; returns how many were new (repeats are ignored)."""
    before = connection.total_changes
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.executemany("INSERT OR IGNORE INTO expected_messages (message_id) VALUES (?)",
                               ((message_id,) for message_id in message_ids))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return connection.total_changes - before
