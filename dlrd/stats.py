"""`dlrd stats`: "what share failed yesterday, and with which codes?" answered for a period.

One pass over the period's receipts through the received_at index: counts
by state and by report code (with the label stored beside each receipt),
the delivery rate, the lag between Timestamp1 and arrival, and the
receipts per hour or day drawn as bars, so a dip in traffic (the provider
stopped sending) is seen at a glance. Only the period's lag values are
held, to sort them for the percentiles; the last 24 hours of a database
of a million receipts take well under a second. Read-only, like `dlrd
query`: safe beside the running daemon.

The delivery rate is counted on receipts, not messages: of the final
receipts that arrived in the period, the share whose state is delivered.
A message still pending at the end of the period is in neither count, and
each message normally gets one final receipt, so this is the share of the
messages that finished in the period that were delivered. (Deciding per
message would need every message's whole history, not one pass over the
period.)
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dlrd.codes import STATES
from dlrd.config import Config
from dlrd.errors import EXIT_OK, StartupError, UsageError
from dlrd.output import resolve_format, terminal_width, unicode_ok
from dlrd.query import check_period
from dlrd.timespec import MOMENT_HELP, moment_argument, stored_text

DEFAULT_PERIOD = timedelta(hours=24)
HOURLY_UP_TO = timedelta(days=2)
BUCKETS = {"hour": (13, timedelta(hours=1)), "day": (10, timedelta(days=1))}  # key length in received_at text
MAX_BUCKETS = 10_000  # 13 months of hours, 27 years of days: more is a typo, not a chart

DESCRIPTION = """\
Counts by state and by report code, the delivery rate, the lag between
Timestamp1 and arrival, and receipts per hour or day as bars, for a period
(default: the last 24 hours). Times are UTC; --until is exclusive.

delivery rate: of the final receipts that arrived in the period, the share
whose state is delivered (receipts still pending are in neither count).
lag: arrival (received_at) minus Timestamp1, median and 95th percentile
(nearest rank); a provider whose clock runs ahead gives negative lags.

examples:
  dlrd stats
  dlrd stats --since 2026-12-01 --until 2026-12-02 --by hour
  dlrd stats --since 30d --format json | jq .delivery_rate
"""


@dataclass
class Summary:
    """What `dlrd stats` found in one period."""

    since: datetime
    until: datetime
    by: str
    receipts: int = 0
    final: int = 0
    delivered: int = 0
    by_state: Counter[str] = field(default_factory=Counter)
    by_report: Counter[tuple[int, str, str]] = field(default_factory=Counter)
    lag_median: float | None = None
    lag_p95: float | None = None
    lag_max: float | None = None
    buckets: list[tuple[datetime, int]] = field(default_factory=list)
    last_received_at: str | None = None

    @property
    def delivery_rate(self) -> float | None:
        return self.delivered / self.final if self.final else None

    def as_json(self) -> dict[str, Any]:
        """The summary as one JSON object, for `--format json | jq`."""
        rate = self.delivery_rate
        return {
            "since": stored_text(self.since), "until": stored_text(self.until), "by": self.by,
            "receipts": self.receipts, "final": self.final, "delivered": self.delivered,
            "delivery_rate": None if rate is None else round(rate, 6),
            "lag_seconds": {"median": _rounded(self.lag_median), "p95": _rounded(self.lag_p95),
                            "max": _rounded(self.lag_max)},
            "by_state": {state: self.by_state.get(state, 0) for state in _states(self.by_state)},
            "by_report": [{"report": report, "label": label, "state": state, "count": count}
                          for (report, label, state), count in _report_rows(self.by_report)],
            "buckets": [{"start": stored_text(start), "count": count} for start, count in self.buckets],
            "last_received_at": self.last_received_at,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.usage = "%(prog)s [--config PATH] [--since TIME] [--until TIME] [--by hour|day] [--format F]"
    parser.add_argument("--since", type=moment_argument, metavar="TIME",
                        help=f"from TIME ({MOMENT_HELP}) (default: 24 h before --until)")
    parser.add_argument("--until", type=moment_argument, metavar="TIME", help="to TIME, exclusive (default: now)")
    parser.add_argument("--by", choices=tuple(BUCKETS),
                        help="one bar per hour or per day (default: hour for periods up to 2 days, else day)")
    parser.add_argument("--format", choices=("table", "json"),
                        help="output format (default: table on a terminal, json when piped)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    from dlrd import storage  # the commands that do not read the database do not load it

    until = args.until or datetime.now(UTC)
    since = args.since or until - DEFAULT_PERIOD
    check_period(since, until)
    by = args.by or ("hour" if until - since <= HOURLY_UP_TO else "day")
    buckets = (until - since) / BUCKETS[by][1]
    if buckets > MAX_BUCKETS:
        raise UsageError(f"--by {by} from {stored_text(since)} to {stored_text(until)} would be {buckets:,.0f} rows "
                         f"(at most {MAX_BUCKETS:,}): use {'--by day or ' if by == 'hour' else ''}a shorter period")
    connection = storage.open_reader(config)
    try:
        summary = summarise(connection, since, until, by)
    except sqlite3.Error as error:
        raise StartupError(f"cannot read the database {storage.describe(config)}: {error}") from None
    finally:
        connection.close()
    if resolve_format(args.format, sys.stdout) == "json":
        print(json.dumps(summary.as_json(), ensure_ascii=False, separators=(",", ":")))
    else:
        sys.stdout.write("".join(render_table(summary, terminal_width(sys.stdout), unicode_ok(sys.stdout))))
    return EXIT_OK


def summarise(connection: sqlite3.Connection, since: datetime, until: datetime, by: str) -> Summary:
    """Read the period's receipts once, in received_at order, and count what `dlrd stats` shows."""
    key_length, _ = BUCKETS[by]
    summary = Summary(since, until, by)
    lags = array("d")
    per_bucket: Counter[str] = Counter()
    by_state, by_report = summary.by_state, summary.by_report
    # julianday() reads times to the millisecond: lags are exact to about 1 ms.
    cursor = connection.execute(
        "SELECT state, report, label, final, (julianday(received_at) - julianday(timestamp)) * 86400.0, "
        "substr(received_at, 1, ?) FROM receipts WHERE received_at >= ? AND received_at < ?",
        (key_length, stored_text(since), stored_text(until)))
    final = delivered = 0
    for state, report, label, is_final, lag, bucket in cursor:
        by_state[state] += 1
        by_report[(report, label, state)] += 1
        per_bucket[bucket] += 1
        if is_final:
            final += 1
            if state == "delivered":
                delivered += 1
        if lag is not None:
            lags.append(lag)
    summary.receipts, summary.final, summary.delivered = sum(per_bucket.values()), final, delivered
    if lags:
        ordered = sorted(lags)
        del lags
        summary.lag_median = _median(ordered)
        summary.lag_p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
        summary.lag_max = ordered[-1]
    summary.buckets = [(start, per_bucket.get(_bucket_key(start, by), 0)) for start in bucket_starts(since, until, by)]
    summary.last_received_at = connection.execute(
        "SELECT max(received_at) FROM receipts WHERE received_at < ?", (stored_text(until),)).fetchone()[0]
    return summary


def bucket_starts(since: datetime, until: datetime, by: str) -> Iterator[datetime]:
    """The start of every hour or day (UTC) the period touches, empty ones included: a gap must show as one."""
    _, step = BUCKETS[by]
    start = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if by == "day":
        start = start.replace(hour=0)
    while start < until:
        yield start
        start += step


def _bucket_key(start: datetime, by: str) -> str:
    """The bucket as the SQL above cuts it out of received_at: 2026-12-01T13 or 2026-12-01."""
    return stored_text(start)[:BUCKETS[by][0]]


def render_table(summary: Summary, width: int = 80, unicode: bool = True) -> Iterator[str]:
    """The summary as a person reads it: figures first, then the breakdowns, then one bar per hour or day."""
    arrow, block = ("→", "█") if unicode else ("->", "#")
    span = _duration((summary.until - summary.since).total_seconds())
    yield f"period         {_minute(summary.since)} {arrow} {_minute(summary.until)} UTC ({span})\n"
    last = summary.last_received_at
    last_text = f"{last[:10]} {last[11:19]} UTC" if last else "none stored before the end of the period"
    if summary.receipts == 0:
        yield "receipts       0: no receipt arrived in this period\n"
        yield f"last receipt   {last_text}\n"
        return
    yield f"receipts       {summary.receipts:,}\n"
    rate = summary.delivery_rate
    if rate is None:
        yield "delivery rate  - (no final receipt in this period)\n"
    else:
        yield (f"delivery rate  {rate * 100:.1f} %  ({summary.delivered:,} delivered of "
               f"{summary.final:,} final receipts)\n")
    if summary.lag_median is not None and summary.lag_p95 is not None:
        yield (f"lag            median {_duration(summary.lag_median)}, p95 {_duration(summary.lag_p95)}, "
               f"max {_duration(summary.lag_max or 0.0)}  (Timestamp1 {arrow} arrival)\n")
    yield f"last receipt   {last_text}\n"

    yield "\nby state\n"
    count_width = len(f"{summary.receipts:,}")
    for state in _states(summary.by_state):
        count = summary.by_state.get(state, 0)
        yield f"  {state:<10} {count:>{count_width},}  {count / summary.receipts * 100:5.1f} %\n"

    yield "\nby report code\n"
    rows = _report_rows(summary.by_report)
    label_width = min(max(len(label) for (_, label, _), _ in rows), max(12, width - 36 - count_width))
    for (report, label, state), count in rows:
        shown = label if len(label) <= label_width else label[:label_width - 1] + ("…" if unicode else "~")
        yield f"  {report:>4}  {shown:<{label_width}}  {state:<10} {count:>{count_width},}\n"

    yield f"\nreceipts per {summary.by} (UTC)\n"
    label_length = 16 if summary.by == "hour" else 10
    peak = max(count for _, count in summary.buckets)
    bucket_width = len(f"{peak:,}")
    room = max(10, width - label_length - 2 - bucket_width - 2)
    partial = False
    for start, count in summary.buckets:
        label = f"{start:%Y-%m-%d %H:%M}" if summary.by == "hour" else f"{start:%Y-%m-%d}"
        end = start + BUCKETS[summary.by][1]
        mark = " "
        if start < summary.since or end > summary.until:
            mark, partial = "*", True
        bar = block * max(1 if count else 0, round(count / peak * room)) if peak else ""
        yield f"{label}{mark} {count:>{bucket_width},}  {bar}".rstrip() + "\n"
    if partial:
        yield f"* covers part of the {summary.by} only: the period starts or ends inside it\n"


def _states(by_state: Counter[str]) -> list[str]:
    return [*STATES, *sorted(state for state in by_state if state not in STATES)]


def _report_rows(by_report: Counter[tuple[int, str, str]]) -> list[tuple[tuple[int, str, str], int]]:
    """Most frequent first; equal counts by code."""
    return sorted(by_report.items(), key=lambda item: (-item[1], item[0][0], item[0][1]))


def _median(ordered: list[float]) -> float:
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _minute(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M}"


def _duration(seconds: float) -> str:
    """A lag or a period as a person says it: 850 ms, 2.4 s, 12 min, 3.5 h, 30 d."""
    size = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if size < 1:
        return f"{sign}{size * 1000:.0f} ms"
    if size < 120:
        return f"{sign}{size:.1f} s"
    if size < 7200:
        return f"{sign}{size / 60:.0f} min"
    if size < 172800:
        return f"{sign}{size / 3600:.1f} h".replace(".0 h", " h")
    return f"{sign}{size / 86400:.1f} d".replace(".0 d", " d")

