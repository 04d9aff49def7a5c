"""The one place that picks the storage backend: the daemon's writer, the commands' connections, strict_match.

Everything else talks to what these return: a ReceiptStore (the writer
thread, the same interface on both engines), and for the commands a
connection that takes dlrd's SQL (sqlite3's own, or dlrd.pgsql's
PgConnection). PostgreSQL's modules are imported only when the config
names it, so the SQLite path loads nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dlrd.config import Config
from dlrd.errors import StartupError

if TYPE_CHECKING:
    from dlrd.journal import JournalWriter
    from dlrd.store import ReceiptStore


def on_postgresql(config: Config) -> bool:
    return config["storage", "backend"] == "postgresql"


def receipt_store(config: Config, journal: JournalWriter) -> ReceiptStore:
    """The daemon's writer for the configured backend; StartupError (what to install) without psycopg."""
    if on_postgresql(config):
        from dlrd import pgsql

        pgsql.require_psycopg()
        from dlrd.pgstore import PostgresStore

        return PostgresStore(config, journal)
    from dlrd.store import ReceiptStore

    return ReceiptStore(config.database_path, journal, config["storage", "synchronous"],
                        config["storage", "lock_timeout"], config["storage", "quarantine_max_bytes"],
                        node=config["server", "node"])


def describe(config: Config) -> str:
    """The database as a log line names it."""
    if on_postgresql(config):
        from dlrd import pgsql

        return pgsql.describe(config)
    return str(config.database_path)


def open_reader(config: Config) -> Any:
    """A connection for the read-only commands (query, stats, quarantine list/show)."""
    if not on_postgresql(config):
        from dlrd.readonly import open_read_only

        return open_read_only(config.database_path)
    from dlrd import pgsql

    connection = pgsql.PgConnection(pgsql.open_connection(config), config)
    if connection.execute("SELECT to_regclass('receipts')").fetchone()[0] is None:
        connection.close()
        raise StartupError(f"the {pgsql.describe(config)} holds no dlrd tables: run dlrd serve once, or check "
                           "[storage] dsn in the --config file")
    return connection


def open_writer(config: Config) -> Any:
    """A connection for the commands that write (replay, expect), the schema brought up to date first."""
    if not on_postgresql(config):
        from dlrd.store import connect, migrate

        database = config.database_path
        database.parent.mkdir(parents=True, exist_ok=True)
        connection = connect(database, config["storage", "lock_timeout"])
        migrate(connection)
        return connection
    from dlrd import pgsql

    return pgsql.PgConnection(pgsql.open_database(config), config)


def insert_receipts(connection: Any, jobs: Sequence[Any]) -> list[Any]:
    """Store ReceiptInsert jobs inside the caller's transaction, on whichever engine `connection` is."""
    if hasattr(connection, "insert_receipts"):
        return connection.insert_receipts(jobs)
    from dlrd.store import insert_receipts as insert_into_sqlite

    return insert_into_sqlite(connection, list(jobs))


def expected_messages(config: Config) -> Any:
    """The ids a receipt must be for under [storage] strict_match; None when it is off."""
    if not config["storage", "strict_match"]:
        return None
    if on_postgresql(config):
        from dlrd.pgsql import ExpectedMessages as OnPostgresql

        return OnPostgresql(config)
    from dlrd.matching import ExpectedMessages

    return ExpectedMessages(config.database_path)
