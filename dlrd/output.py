"""Rows on stdout for people and for programs: `--format table`, `json` or `csv`.

`dlrd query`, `dlrd quarantine list` and `dlrd stats` print the same way:
a table when a person is looking (stdout is a terminal), JSON lines when a
program is (piped), so `dlrd query | jq` needs no option. Rows arrive as an
iterator and leave one at a time: a query of every receipt in a large
database keeps flat memory. A table needs column widths before its first
line, so it takes them from the first TABLE_SAMPLE rows only, then streams
the rest into those widths; it fits the terminal (80 columns when there is
none) by shortening the columns that can be shortened, never an id.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

FORMATS = ("table", "json", "csv")
FORMAT_HELP = "output format (default: table on a terminal, json when piped)"
DEFAULT_WIDTH = 80
TABLE_SAMPLE = 200
GAP = "  "

Row = Mapping[str, Any]
# Compact and UTF-8, exactly as dlrd.journal encodes its lines, so a row printed
# as JSON is byte for byte the journal line when the row is the journal's record.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def short_time(value: Any) -> str:
    """A stored UTC time (2026-12-01T13:38:00.123Z) as a table shows it: 2026-12-01 13:38:00."""
    text = "" if value is None else str(value)
    if len(text) >= 19 and text[10:11] == "T":
        return f"{text[:10]} {text[11:19]}"
    return text


def cell_text(value: Any) -> str:
    """A value as text for a table or csv cell: JSON's words for booleans and null."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


@dataclass(frozen=True)
class Column:
    """How one table column is headed, filled and fitted.

    `shrink`: may this column be shortened (its cells elided with an
    ellipsis) to fit the terminal? Never for ids and numbers an operator
    copies into the next command.
    """

    name: str
    header: str = ""
    value: Callable[[Row], str] | None = None
    align: str = "<"
    shrink: bool = True

    @property
    def title(self) -> str:
        return self.header or self.name

    def text(self, row: Row) -> str:
        if self.value is not None:
            return self.value(row)
        return cell_text(row.get(self.name))


# How the columns dlrd's commands share look in a table when a caller names them only.
KNOWN_COLUMNS: Mapping[str, Column] = {
    "id": Column("id", align=">", shrink=False),
    "received_at": Column("received_at", "received (UTC)", lambda row: short_time(row.get("received_at")),
                          shrink=False),
    "timestamp": Column("timestamp", "Timestamp1 (UTC)", lambda row: short_time(row.get("timestamp")), shrink=False),
    "message_id": Column("message_id", "message id", shrink=False),
    "sent_to": Column("sent_to", "to", shrink=False),
    "report": Column("report", align=">", shrink=False),
    "remote_addr": Column("remote_addr", "from"),
}


def as_column(column: str | Column) -> Column:
    if isinstance(column, Column):
        return column
    return KNOWN_COLUMNS.get(column, Column(column))


def resolve_format(format_name: str | None, stream: TextIO) -> str:
    """The format asked for, else table for a person at a terminal and json for a program."""
    if format_name:
        return format_name
    return "table" if _isatty(stream) else "json"


def terminal_width(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to ($COLUMNS first, as shells set it); 80 when there is none."""
    if not _isatty(stream):
        return DEFAULT_WIDTH
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        width = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return DEFAULT_WIDTH
    return width if width > 0 else DEFAULT_WIDTH  # a fresh pseudo-terminal reports 0


def unicode_ok(stream: TextIO) -> bool:
    """Can `stream` carry … and █? Not on a terminal in the C/POSIX locale's ASCII."""
    return (getattr(stream, "encoding", None) or "").lower().replace("-", "") in ("utf8", "utf16", "utf32")


def write_rows(rows: Iterable[Row], columns: Sequence[str | Column], format_name: str | None, stream: TextIO,
               nothing: str = "no rows", table_columns: Sequence[str | Column] | None = None) -> int:
    """Write `rows` to `stream` in `format_name` (None: table on a terminal, else json); returns how many.

    json: each row as it is, one object per line (the caller shapes it, so a
    receipt is its journal record); csv: a header row of `columns`, then
    their values; table: `table_columns` (default `columns`) aligned to the
    terminal. With no rows, the table shows `nothing` where the rows would
    be; json and csv keep stdout for data and say it on stderr, and csv
    still writes its header row.
    """
    chosen = resolve_format(format_name, stream)
    if chosen == "json":
        count = _write_json(rows, stream)
    elif chosen == "csv":
        count = _write_csv(rows, [as_column(column) for column in columns], stream)
    else:
        count = write_table(rows, [as_column(column) for column in table_columns or columns], stream,
                            terminal_width(stream), nothing)
    stream.flush()
    if count == 0 and chosen != "table" and nothing:
        print(f"dlrd: {nothing}", file=sys.stderr)
    return count


def _write_json(rows: Iterable[Row], stream: TextIO) -> int:
    count = 0
    write, encode = stream.write, _JSON.encode
    for row in rows:
        write(encode(dict(row)) + "\n")
        count += 1
    return count


def _write_csv(rows: Iterable[Row], columns: list[Column], stream: TextIO) -> int:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([column.name for column in columns])
    count = 0
    for row in rows:
        writer.writerow([cell_text(row.get(column.name)) for column in columns])
        count += 1
    return count


def write_table(rows: Iterable[Row], columns: list[Column], stream: TextIO, width: int = DEFAULT_WIDTH,
                nothing: str = "no rows") -> int:
    """An aligned table no wider than `width`, widths taken from the first TABLE_SAMPLE rows; returns how many rows."""
    iterator = iter(rows)
    def cells_of(row: Row) -> list[str]:
        return [visible(column.text(row)) for column in columns]

    sample = [cells_of(row) for row in itertools.islice(iterator, TABLE_SAMPLE)]
    if not sample:
        stream.write(f"{nothing}\n")
        return 0
    widths = fit_widths([column.title for column in columns], sample, [column.shrink for column in columns], width)
    ellipsis = "…" if unicode_ok(stream) else "~"
    aligns = [column.align for column in columns]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for cell, size, align in zip(cells, widths, aligns, strict=True):
            if len(cell) > size and size > 0:
                cell = cell[:size - 1] + ellipsis if size > 1 else ellipsis
            parts.append(f"{cell:{align}{size}}")
        return GAP.join(parts).rstrip() + "\n"

    stream.write(line([column.title for column in columns]))
    for cells in sample:
        stream.write(line(cells))
    count = len(sample)
    for row in iterator:
        stream.write(line(cells_of(row)))
        count += 1
    return count


def visible(text: str, keep: str = "") -> str:
    """`text` with every character a terminal would act on, or not show, written as an escape.

    Cells can hold what a stranger sent (a refused request's
    MessageIdentifier): a newline would forge a table row and C1 controls
    (U+009B) drive the terminal. `keep` names the ones to leave (a body's
    newlines).
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in keep else char.encode("unicode_escape").decode("ascii")
                   for char in text)


def fit_widths(titles: Sequence[str], sample: Sequence[Sequence[str]], shrinkable: Sequence[bool],
               width: int) -> list[int]:
    """Column widths for `sample` that fit `width`: the widest shrinkable column gives way first.

    A shrinkable column keeps at least its title's width (and 8 characters
    when its cells are longer), so a reason shortened to "authenti…" still
    reads; when even that does not fit, the line runs long rather than
    elide an id.
    """
    widths = [max([len(title), *(len(cells[n]) for cells in sample)]) for n, title in enumerate(titles)]
    floors = [min(widths[n], max(len(title), 8)) if shrinkable[n] else widths[n] for n, title in enumerate(titles)]
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
    while excess > 0:
        candidates = [n for n in range(len(widths)) if widths[n] > floors[n]]
        if not candidates:
            break
        widest = max(candidates, key=lambda n: widths[n])
        others = [widths[n] for n in candidates if n != widest]
        step = min(excess, widths[widest] - floors[widest], max(1, widths[widest] - max(others, default=0)))
        widths[widest] -= step
        excess -= step
    return widths


def iter_dicts(cursor: Iterable[Sequence[Any]], names: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Rows of a cursor as dicts, one at a time (never the whole result in a list)."""
    for values in cursor:
        yield dict(zip(names, values, strict=True))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
