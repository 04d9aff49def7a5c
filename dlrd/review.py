"""`dlrd quarantine list` and `dlrd quarantine show ID`: what dlrd refused but kept, and why.

Read-only, like `dlrd query`: safe beside the running daemon. The bodies
were stored with their PIN already redacted, so `show` prints exactly what
was kept and nothing more secret.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Iterator
from datetime import datetime

from dlrd.config import Config
from dlrd.errors import EXIT_OK, UsageError
from dlrd.output import visible, write_rows
from dlrd.storage import open_reader
from dlrd.timespec import moment_argument, stored_text

LIST_COLUMNS = ("id", "received_at", "remote_addr", "kind", "message_id", "reason")


class NoSuchRequest(UsageError):
    """`quarantine show` was given an id the quarantine does not hold."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dlrd.cli import add_config_option

    actions = parser.add_subparsers(dest="quarantine_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the kept requests, oldest first",
                                 description="the kept requests, oldest first", formatter_class=parser.formatter_class)
    add_config_option(listing)
    add_selection(listing)
    listing.add_argument("--format", choices=("table", "json", "csv"),
                         help="output format (default: table on a terminal, else json)")
    listing.set_defaults(run=run_list)
    show = actions.add_parser("show", help="one kept request: its columns, then the body as kept",
                              description="one kept request: its columns, then the body as kept (PIN redacted)",
                              formatter_class=parser.formatter_class)
    add_config_option(show)
    show.add_argument("id", type=int, help="the id `dlrd quarantine list` shows")
    show.set_defaults(run=run_show)


def add_selection(parser: argparse.ArgumentParser) -> None:
    """The options that pick quarantined requests; `dlrd replay --quarantine` takes the same."""
    parser.add_argument("--id", type=int, nargs="+", dest="ids", metavar="ID", help="only these ids")
    parser.add_argument("--since", type=moment_argument, metavar="TIME",
                        help="kept at or after TIME (2026-12-01, 2026-12-01T13:38Z, or an age: 30m, 2h, 7d)")
    parser.add_argument("--until", type=moment_argument, metavar="TIME", help="kept before TIME")
    parser.add_argument("--reason", metavar="R", type=_words,
                        help="a kind (authentication, invalid-field, strict-match) or words of the reason")


def _words(text: str) -> str:
    """argparse type for --reason: an empty one would pick every row, which a script's empty variable never means."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a kind (authentication, invalid-field, strict-match) or words")
    return text


def selected(connection: sqlite3.Connection, args: argparse.Namespace, columns: str) -> Iterator[sqlite3.Row]:
    """The quarantine rows the selection options pick, oldest first, streamed from the cursor."""
    conditions, parameters = selection_sql(args.ids, args.since, args.until, args.reason)
    connection.row_factory = sqlite3.Row
    yield from connection.execute(f"SELECT {columns} FROM quarantine{conditions} ORDER BY id", parameters)


def selection_sql(ids: list[int] | None, since: datetime | None, until: datetime | None,
                  reason: str | None) -> tuple[str, list[object]]:
    clauses: list[str] = []
    parameters: list[object] = []
    if ids:
        clauses.append(f"id IN ({', '.join('?' for _ in ids)})")
        parameters.extend(ids)
    if since is not None:
        clauses.append("received_at >= ?")
        parameters.append(stored_text(since))
    if until is not None:
        clauses.append("received_at < ?")
        parameters.append(stored_text(until))
    if reason:
        clauses.append("(kind = ? OR instr(lower(reason), lower(?)) > 0)")
        parameters.extend((reason, reason))
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), parameters


def run_list(args: argparse.Namespace, config: Config) -> int:
    connection = open_reader(config)
    rows = (dict(row) for row in selected(connection, args, ", ".join(LIST_COLUMNS)))
    write_rows(rows, LIST_COLUMNS, args.format, sys.stdout, nothing="the quarantine holds no such request")
    return EXIT_OK


def run_show(args: argparse.Namespace, config: Config) -> int:
    connection = open_reader(config)
    connection.row_factory = sqlite3.Row
    row = connection.execute("SELECT * FROM quarantine WHERE id = ?", (args.id,)).fetchone()
    if row is None:
        raise NoSuchRequest(f"the quarantine holds no request {args.id}: `dlrd quarantine list` shows what it holds")
    terminal = sys.stdout.isatty()
    for name in ("id", "received_at", "remote_addr", "kind", "reason", "message_id", "content_type"):
        print(f"{name}: {visible(str(row[name]))}")
    print()
    body = bytes(row["body"])
    if terminal:  # what a stranger sent must not drive the terminal; a pipe or a file gets the bytes as kept
        sys.stdout.write(visible(body.decode("utf-8", "backslashreplace"), keep="\n\t").rstrip("\n") + "\n")
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(body if body.endswith(b"\n") else body + b"\n")
    sys.stdout.flush()
    return EXIT_OK
