"""`dlrd query`: the stored receipts an operator asks about, from the shell, beside the running daemon.

"Did message 3C7D98A4 arrive, and what is its state?" A message id, a
number or a period is an index lookup (message_id leads the unique key's
index; sent_to and received_at have their own), so a question about one
message or one number is answered in milliseconds whatever the size of the
database; --state and --report alone filter a scan in received_at order.
Rows stream from the cursor, never held in a list. The
database is opened read-only (dlrd.readonly), so a query never blocks or
slows the daemon's writer; it sees the receipts committed when it began.

As JSON each row is the receipt's journal record, so one jq filter serves
`dlrd query | jq` and `tail -F receipts.jsonl | jq` alike.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dlrd import journal
from dlrd.codes import STATES
from dlrd.config import Config
from dlrd.errors import EXIT_OK, StartupError, UsageError
from dlrd.output import FORMAT_HELP, FORMATS, Column, write_rows
from dlrd.timespec import MOMENT_HELP, moment_argument, stored_text

# The journal's fields, and tls_client, which the journal writes only when there is one.
SELECTED = (*journal.JOURNAL_FIELDS, "tls_client")

TABLE_COLUMNS = (
    Column("received_at", "received (UTC)", lambda row: f"{row['received_at'][:10]} {row['received_at'][11:19]}",
           shrink=False),
    Column("message_id", "message id", shrink=False),
    Column("sent_to", "to", shrink=False),
    Column("state", "state", shrink=False),
    Column("report", "report", lambda row: f"{row['report']} {row['label']}"),
)

DESCRIPTION = """\
Receipts as stored, newest first: every matching row unless --limit. Filters
combine (AND); a repeated filter, or a comma list, matches any of its values.

With --latest, one row per message (message id and number): its latest state,
as the latest_state view decides it (a final state is never replaced by a later
non-final one; among equals the newer Timestamp1 wins), and every other option
filters those rows: `--latest --state pending --until 1h` lists the messages
still pending an hour after their last receipt.

json is one object per line with exactly the journal's fields (receipts.jsonl),
so `dlrd query | jq` and `tail -F receipts.jsonl | jq` take the same filter.
The database is opened read-only: safe beside the running daemon, and on a
copy of the file with no daemon.

examples:
  dlrd query --message-id 3C7D98A4
  dlrd query --to 447009123456 --since 7d --format csv > number.csv
  dlrd query --latest --state failed --since 2026-12-01 --until 2026-12-02
"""


@dataclass(frozen=True)
class Selection:
    """What `dlrd query` was asked for, apart from how to print it."""

    message_ids: Sequence[str] = ()
    sent_to: Sequence[str] = ()
    states: Sequence[str] = ()
    reports: Sequence[int] = ()
    since: datetime | None = None
    until: datetime | None = None
    latest: bool = False
    limit: int | None = None
    oldest_first: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.usage = "%(prog)s [--config PATH] [filters...] [--latest] [--limit N] [--format F]"
    filters = parser.add_argument_group("filters")
    filters.add_argument("--message-id", dest="message_ids", action="extend", type=_texts, metavar="ID",
                         help="MessageIdentifier, exactly as the provider sent it")
    filters.add_argument("--to", dest="sent_to", action="extend", type=_numbers, metavar="NUMBER",
                         help="SentTo, the handset number (E.164; a leading + is ignored)")
    filters.add_argument("--state", dest="states", action="extend", type=_states, metavar="STATE",
                         help=f"{', '.join(STATES)}")
    filters.add_argument("--report", dest="reports", action="extend", type=_reports, metavar="CODE",
                         help="report code, like 0, 27 or -4 (a list that starts with a minus sign takes "
                              "an =: --report=-4,27)")
    filters.add_argument("--since", type=moment_argument, metavar="TIME",
                         help=f"received at or after TIME ({MOMENT_HELP})")
    filters.add_argument("--until", type=moment_argument, metavar="TIME", help="received before TIME")
    parser.add_argument("--latest", action="store_true",
                        help="one row per message: its latest state (the latest_state view)")
    parser.add_argument("--limit", type=_positive, metavar="N", help="at most N rows (default: every matching row)")
    parser.add_argument("--oldest-first", action="store_true", help="oldest first (default: newest first)")
    parser.add_argument("--format", choices=FORMATS, help=FORMAT_HELP)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    from dlrd import storage  # the commands that do not read the database do not load it

    selection = Selection(
        message_ids=args.message_ids or (), sent_to=args.sent_to or (), states=args.states or (),
        reports=args.reports or (), since=args.since, until=args.until, latest=args.latest, limit=args.limit,
        oldest_first=args.oldest_first,
    )
    check_period(selection.since, selection.until)
    connection = storage.open_reader(config)
    try:
        write_rows(receipts(connection, selection), SELECTED, args.format, sys.stdout,
                   nothing="no receipt matches", table_columns=TABLE_COLUMNS)
    except sqlite3.Error as error:
        raise StartupError(f"cannot read the database {storage.describe(config)}: {error}") from None
    finally:
        connection.close()
    return EXIT_OK


def check_period(since: datetime | None, until: datetime | None) -> None:
    """A period that ends before it starts is a typing mistake, not an empty answer."""
    if since is not None and until is not None and since >= until:
        raise UsageError(f"--since ({stored_text(since)}) is not before --until ({stored_text(until)}): "
                         "swap them, or leave one out")


def receipts(connection: sqlite3.Connection, selection: Selection) -> Iterator[dict[str, Any]]:
    """The selected receipts as journal records, one at a time, straight from the cursor."""
    if not _has_node_column(connection):
        sql, parameters = build_sql(selection, with_node=False)
        for values in connection.execute(sql, parameters):
            yield journal_record(values)
        return
    sql, parameters = build_sql(selection)
    for *values, node in connection.execute(sql, parameters):
        yield journal_record(values, node)


def _has_node_column(connection: Any) -> bool:
    """False for an SQLite database from before schema 3 (a copy, or one no daemon has opened since the upgrade)."""
    if not isinstance(connection, sqlite3.Connection):
        return True  # PostgreSQL's schema has had it from the start
    return any(row[1] == "node" for row in connection.execute("PRAGMA table_info(receipts)"))


def journal_record(values: Sequence[Any], node: str = "") -> dict[str, Any]:
    """A receipts row (SELECTED's columns) as dlrd.journal writes it, with the node that stored it."""
    return journal.journal_record({**dict(zip(SELECTED, values, strict=True)), "node": node})


def build_sql(selection: Selection, with_node: bool = True) -> tuple[str, list[Any]]:
    """The statement and parameters for `selection`: SELECTED's columns, then the node that stored the row.

    Each condition is on an indexed column as stored (received_at is
    compared as the same fixed-width UTC text), so SQLite looks rows up by
    index; the order, received_at then id, is the received_at index's own,
    so rows stream without a sort when nothing narrower is asked.
    """
    if selection.latest:
        # The view has no remote_addr or tls_client: join its rows back to their receipts by id.
        # Conditions go on the view's columns; those on message_id and sent_to (the window's
        # PARTITION BY) are pushed into it, so the window runs over the matching rows only.
        source = "latest_state AS chosen JOIN receipts AS r ON r.id = chosen.id"
        where_prefix, columns = "chosen.", ", ".join(f"r.{name}" for name in SELECTED)
    else:
        source, where_prefix, columns = "receipts AS r", "r.", ", ".join(f"r.{name}" for name in SELECTED)
    if with_node:
        columns += ", r.node"
    clauses: list[str] = []
    parameters: list[Any] = []

    def any_of(column: str, values: Sequence[Any]) -> None:
        if values:
            unique = list(dict.fromkeys(values))
            clauses.append(f"{where_prefix}{column} = ?" if len(unique) == 1
                           else f"{where_prefix}{column} IN ({', '.join('?' for _ in unique)})")
            parameters.extend(unique)

    any_of("message_id", selection.message_ids)
    any_of("sent_to", selection.sent_to)
    any_of("state", selection.states)
    any_of("report", selection.reports)
    if selection.since is not None:
        clauses.append(f"{where_prefix}received_at >= ?")
        parameters.append(stored_text(selection.since))
    if selection.until is not None:
        clauses.append(f"{where_prefix}received_at < ?")
        parameters.append(stored_text(selection.until))
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    direction = "ASC" if selection.oldest_first else "DESC"
    sql = f"SELECT {columns} FROM {source}{where} ORDER BY r.received_at {direction}, r.id {direction}"
    if selection.limit is not None:
        sql += " LIMIT ?"
        parameters.append(selection.limit)
    return sql, parameters


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _texts(text: str) -> list[str]:
    items = _split(text)
    if not items:
        raise argparse.ArgumentTypeError("give a value, like --message-id 3C7D98A4")
    return items


def _numbers(text: str) -> list[str]:
    numbers = [item.removeprefix("+") for item in _split(text)]
    bad = [number for number in numbers if not number.isdigit()]
    if bad or not numbers:
        raise argparse.ArgumentTypeError(f"{text!r} is not a handset number: digits, like 447009123456")
    return numbers


def _states(text: str) -> list[str]:
    states = _split(text.lower())
    bad = [state for state in states if state not in STATES]
    if bad or not states:
        raise argparse.ArgumentTypeError(f"{text!r} is not a state: use {', '.join(STATES)}")
    return states


def _reports(text: str) -> list[int]:
    try:
        codes = [int(item) for item in _split(text)]
    except ValueError:
        codes = []
    if not codes:
        raise argparse.ArgumentTypeError(f"{text!r} is not a report code: a number like 0, -4 or 27")
    return codes


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: a whole number from 1, like 50")
    return value
