"""The times operators type after --since and --until, and the stored text they become."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlrd.timespec import moment_argument, parse_moment, stored_text

NOW = datetime(2026, 12, 1, 13, 38, 0, 123456, tzinfo=UTC)
moments = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
zones = st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60))


@pytest.mark.parametrize("text, expected", [
    ("2h", NOW - timedelta(hours=2)),
    ("90m", NOW - timedelta(minutes=90)),
    ("30 min", NOW - timedelta(minutes=30)),
    ("45s", NOW - timedelta(seconds=45)),
    ("7d", NOW - timedelta(days=7)),
    ("2W", NOW - timedelta(weeks=2)),
    ("now", NOW),
    ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
    ("2026-12-01T13:38", datetime(2026, 12, 1, 13, 38, tzinfo=UTC)),
    ("2026-12-01 13:38:05", datetime(2026, 12, 1, 13, 38, 5, tzinfo=UTC)),
    ("2026-12-01T13:38:00Z", datetime(2026, 12, 1, 13, 38, tzinfo=UTC)),
    ("2026-12-01T14:38:00+01:00", datetime(2026, 12, 1, 13, 38, tzinfo=UTC)),
    ("2026-12-01T08:38-0500", datetime(2026, 12, 1, 13, 38, tzinfo=UTC)),
    ("2026-12-01T13:38:00.5Z", datetime(2026, 12, 1, 13, 38, 0, 500000, tzinfo=UTC)),
])
def test_ages_dates_and_times_parse_to_utc(text, expected):
    assert parse_moment(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2h ago", "-2h", "20261201", "2026-W48", "2026-12-01T25:00",
                                  "2026-13-01", "12/01/2026", "99999999999d", "0001-01-01T00:00+01:00"])
def test_anything_else_is_refused_with_what_to_type(text):
    with pytest.raises(ValueError, match="is not a time: use an ISO date or time"):
        parse_moment(text, NOW)
    with pytest.raises(argparse.ArgumentTypeError):
        moment_argument(text)


@given(moments, zones)
def test_an_iso_time_in_any_zone_is_that_instant(moment, zone):
    assert parse_moment(moment.astimezone(zone).isoformat(), NOW) == moment


@given(st.integers(0, 10**6), st.sampled_from(["s", "m", "h", "d", "w"]))
def test_an_age_counts_back_from_now(count, unit):
    delta = {"s": timedelta(seconds=count), "m": timedelta(minutes=count), "h": timedelta(hours=count),
             "d": timedelta(days=count), "w": timedelta(weeks=count)}[unit]
    try:
        expected = NOW - delta
    except OverflowError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            parse_moment(f"{count}{unit}", NOW)
    else:
        assert parse_moment(f"{count}{unit}", NOW) == expected


@given(moments, moments)
def test_stored_text_sorts_as_the_instants_do(first, second):
    # received_at bounds are compared as text inside SQLite: text order must be time order (to the ms).
    a, b = stored_text(first), stored_text(second)
    assert len(a) == len(b) == 24 and a.endswith("Z")
    if first.replace(microsecond=first.microsecond // 1000 * 1000) < \
            second.replace(microsecond=second.microsecond // 1000 * 1000):
        assert a < b
    assert parse_moment(a, NOW) == first.replace(microsecond=first.microsecond // 1000 * 1000)


@given(st.text(max_size=30))
def test_no_text_breaks_the_parser_with_anything_but_value_error(text):
    try:
        moment = parse_moment(text, NOW)
    except ValueError:
        return
    assert moment.tzinfo is UTC or moment.utcoffset() == timedelta(0)
