"""`dlrd expect`: record the message ids the customer submitted, for [storage] strict_match.

The ids go into `expected_messages`, the table a customer's own program
may also fill (its schema is in the README). They are kept exactly as
given: matching is exact, so `03C7D98A4` and `3c7d98a4` are other ids
than `3C7D98A4`. An id a receipt could never carry (empty, longer than
MessageIdentifier's 15 characters, with blanks) is refused with its line,
and nothing is recorded, so a wrong file is not half taken.
"""

from __future__ import annotations

import argparse
import csv
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from dlrd.config import Config
from dlrd.errors import EXIT_OK, StartupError, UsageError
from dlrd.matching import add_expected
from dlrd.receipt import MAX_MESSAGE_ID

# A first row naming the column is a header, not an id.
HEADER_NAMES = frozenset({"message_id", "messageidentifier", "message id", "id"})


class UnusableIds(UsageError):
    """The ids given cannot be message ids; nothing was recorded."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="ID", help="MessageIdentifier values, exactly as submitted")
    parser.add_argument("--file", type=Path, metavar="PATH",
                        help="read ids from a file, one per line or the first column of a CSV; - reads stdin")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    given = [(f"argument {n}", message_id) for n, message_id in enumerate(args.ids, 1)]
    if args.file is not None:
        given.extend(_ids_from_file(args.file))
    if not given:
        raise UnusableIds("no ids given: name them (dlrd expect 3C7D98A4 ...) or pass --file ids.csv")
    ids = [_checked(where, message_id) for where, message_id in given]
    from dlrd.storage import describe, open_writer  # the storage code is paid for only when ids are recorded

    database = describe(config)
    try:
        connection = open_writer(config)
        try:
            added = add_expected(connection, ids)
        finally:
            connection.close()
    except (OSError, sqlite3.Error) as error:
        raise StartupError(f"cannot write the database {database}: {error}") from None
    print(f"{added} message id(s) now expected, {len(ids) - added} already were ({database})")
    if not config["storage", "strict_match"]:
        print("note: [storage] strict_match is off, so receipts are stored whatever their id", file=sys.stderr)
    return EXIT_OK


def _ids_from_file(path: Path) -> Iterator[tuple[str, str]]:
    if str(path) == "-":
        yield from _ids_from_lines(sys.stdin, "stdin")
        return
    try:
        with path.open(newline="", encoding="utf-8-sig") as lines:  # Excel's "CSV UTF-8" starts with a BOM
            yield from _ids_from_lines(lines, str(path))
    except OSError as error:
        raise UnusableIds(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise UnusableIds(f"{path} is not UTF-8 text: {error.reason}") from None


def _ids_from_lines(lines: TextIO, name: str) -> Iterator[tuple[str, str]]:
    for number, row in enumerate(csv.reader(lines), 1):
        if not row or not "".join(row).strip():
            continue
        if number == 1 and row[0].strip().lower() in HEADER_NAMES:
            continue
        yield f"{name}:{number}", row[0].strip()


def _checked(where: str, message_id: str) -> str:
    if not message_id or len(message_id) > MAX_MESSAGE_ID or any(char.isspace() for char in message_id):
        raise UnusableIds(f"{where}: {message_id[:40]!r} cannot be a MessageIdentifier (1 to {MAX_MESSAGE_ID} "
                          "characters, no blanks); nothing was recorded")
    return message_id
