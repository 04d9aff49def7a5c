"""The times operators type: `--since 2h`, `--until 2026-12-01`, `--since 2026-12-01T13:38`.

Stored times (received_at) are UTC text with milliseconds, so a bound is
turned into that same text and compared as text, which lets SQLite use the
received_at index. A time without a zone is UTC, as everything dlrd stores.
A bare date is its midnight, so `--since 2026-12-01 --until 2026-12-02` is
that whole day (an --until bound is exclusive).
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

MOMENT_HELP = "2026-12-01, 2026-12-01T13:38Z, 2026-12-01T14:38+01:00, or an age: 90s, 30m, 2h, 7d, 2w; UTC"
_RELATIVE = re.compile(r"(\d{1,9})\s*(s|sec|m|min|h|d|w)", re.IGNORECASE)
_UNITS = {"s": "seconds", "sec": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days",
          "w": "weeks"}
# What datetime.fromisoformat takes beyond ISO 8601's calendar forms (week dates, ordinal
# dates, 20261201 without dashes) is refused: an operator's typo should not become a date.
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?\s*(Z|[+-]\d{2}:?\d{2})?",
                  re.IGNORECASE)


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from `7d`, `90m`, `now`, `2026-12-01`, `2026-12-01T13:38:00Z` or `...+01:00`."""
    text = text.strip()
    now = now or datetime.now(UTC)
    if text.lower() == "now":
        return now
    relative = _RELATIVE.fullmatch(text)
    try:
        if relative:
            return now - timedelta(**{_UNITS[relative.group(2).lower()]: int(relative.group(1))})
        if not _ISO.fullmatch(text):
            raise ValueError(text)
        candidate = re.sub(r"\s*([+-]\d{2}:?\d{2}|[Zz])$", r"\1", text)
        candidate = re.sub(r"[Zz]$", "+00:00", candidate).replace(" ", "T", 1)
        moment = datetime.fromisoformat(candidate)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is not a time: use an ISO date or time (2026-12-01, 2026-12-01T13:38Z) "
                         "or an age (30m, 2h, 7d)") from None


def stored_text(moment: datetime) -> str:
    """The moment as received_at is stored: 2026-12-01T13:38:00.000Z."""
    utc = moment.astimezone(UTC)
    # Not strftime: glibc's %Y writes the year 999 as "999", which would sort after "2026".
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}."
            f"{utc.microsecond // 1000:03d}Z")


def moment_argument(text: str) -> datetime:
    """argparse type: a bad time is exit 2 with one line, like any unusable argument."""
    try:
        return parse_moment(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
