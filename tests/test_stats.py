"""`dlrd stats` against receipts a running daemon stored from real POSTs, checked against its own journal."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from datetime import datetime

import pytest
from conftest import Daemon
from terminal import run_cli, run_in_terminal
from test_query import send, timestamp1
from wire import wait_for

OPERATOR_CODE = """
    [report_codes]
    99 = Operator's own code, failed, yes
"""
# (message id, number, report, seconds between Timestamp1 and the POST)
RECEIPTS = [
    ("S1", "447700900011", -4, 3), ("S1", "447700900011", 0, 5),
    ("S2", "447700900012", -4, 2), ("S2", "447700900012", 27, 40),
    ("S3", "447700900013", -4, 1), ("S3", "447700900013", -3, 90),
    ("S4", "447700900014", 0, 7), ("S5", "447700900015", 0, 4),
    ("S6", "447700900016", 99, 6), ("S7", "447700900017", 123, 8),
]


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Daemon:
    daemon = Daemon(tmp_path_factory.mktemp("stats"))
    daemon.start(OPERATOR_CODE)
    for message_id, number, report, lag in RECEIPTS:
        send(daemon, message_id, number, report, timestamp1(lag))
    wait_for(lambda: len(daemon.journal()) == len(RECEIPTS), what="every receipt journaled")
    yield daemon
    if daemon.process is not None:
        assert daemon.stop() == 0


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_json_counts_rate_and_lag_match_the_journal(filled):
    summary = run_cli(filled.ini, "stats").json()[0]
    journal = filled.journal()
    assert summary["receipts"] == len(journal) == len(RECEIPTS)
    assert summary["by_state"] == {"delivered": 3, "pending": 4, "failed": 2, "unknown": 1}
    assert summary["by_state"] == {state: sum(1 for r in journal if r["state"] == state)
                                   for state in ("delivered", "pending", "failed", "unknown")}
    final = [record for record in journal if record["final"]]
    assert summary["final"] == len(final) == 5  # 0, 0, 27, 0 and the operator's final 99
    assert summary["delivered"] == 3 and summary["delivery_rate"] == pytest.approx(3 / 5)
    by_report = {row["report"]: row for row in summary["by_report"]}
    assert by_report[0]["count"] == 3 and by_report[0]["label"] == "Accepted by phone"
    assert by_report[99]["label"] == "Operator's own code" and by_report[99]["state"] == "failed"
    assert by_report[123]["label"] == "Unknown report code 123" and by_report[123]["state"] == "unknown"
    assert sum(row["count"] for row in summary["by_report"]) == len(journal)
    lags = sorted((instant(r["received_at"]) - instant(r["timestamp"])).total_seconds() for r in journal)
    assert summary["lag_seconds"]["median"] == pytest.approx(statistics.median(lags), abs=0.002)
    assert summary["lag_seconds"]["p95"] == pytest.approx(lags[math.ceil(0.95 * len(lags)) - 1], abs=0.002)
    assert summary["lag_seconds"]["max"] == pytest.approx(lags[-1], abs=0.002)
    assert summary["last_received_at"] == max(record["received_at"] for record in journal)


def test_buckets_cover_the_period_hour_by_hour_and_hold_every_receipt(filled):
    summary = run_cli(filled.ini, "stats", "--since", "3h").json()[0]
    assert summary["by"] == "hour" and len(summary["buckets"]) in (3, 4)
    starts = [instant(bucket["start"]) for bucket in summary["buckets"]]
    assert all((later - earlier).total_seconds() == 3600 for earlier, later in itertools.pairwise(starts))
    counted = {bucket["start"][:13]: bucket["count"] for bucket in summary["buckets"] if bucket["count"]}
    assert counted == Counter(record["received_at"][:13] for record in filled.journal())
    by_day = run_cli(filled.ini, "stats", "--since", "3d").json()[0]
    assert by_day["by"] == "day" and len(by_day["buckets"]) in (3, 4)
    assert {b["start"][:10]: b["count"] for b in by_day["buckets"] if b["count"]} == \
        Counter(record["received_at"][:10] for record in filled.journal())
    forced = run_cli(filled.ini, "stats", "--since", "3d", "--by", "hour").json()[0]
    assert forced["by"] == "hour" and len(forced["buckets"]) in (72, 73)


def test_until_ends_the_period_before_the_receipts(filled):
    first = min(record["received_at"] for record in filled.journal())
    summary = run_cli(filled.ini, "stats", "--until", first).json()[0]
    assert summary["receipts"] == 0 and summary["until"] == first


def test_an_empty_period_is_clear_and_exit_0(filled):
    summary = run_cli(filled.ini, "stats", "--since", "2001-01-01", "--until", "2001-01-02").json()[0]
    assert summary["receipts"] == 0 and summary["delivery_rate"] is None
    assert summary["lag_seconds"] == {"median": None, "p95": None, "max": None}
    assert [bucket["count"] for bucket in summary["buckets"]] == [0] * 24
    table = run_cli(filled.ini, "stats", "--since", "2001-01-01", "--until", "2001-01-02", "--format", "table")
    assert "no receipt arrived in this period" in table.stdout
    assert "none stored before the end of the period" in table.stdout


def test_on_a_terminal_the_default_is_a_table_with_a_bar_per_hour_that_fits(filled):
    result = run_in_terminal(filled.ini, "stats")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "delivery rate  60.0 %  (3 delivered of 5 final receipts)" in text
    assert "Operator's own code" in text and "Unknown report code 123" in text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    hours = lines[lines.index("receipts per hour (UTC)") + 1:]
    bars = [line for line in hours if line[:4].isdigit()]
    assert len(bars) in (24, 25)
    # The busiest hour's bar reaches the right margin; hours with no receipt have none.
    assert max(len(line) for line in bars) >= 75
    assert sum(1 for line in bars if line.endswith(" 0")) >= len(bars) - 2
    wide = run_in_terminal(filled.ini, "stats", columns=120).stdout.splitlines()
    assert 110 <= max(len(line) for line in wide) <= 120


def test_piped_stats_are_one_json_object(filled):
    result = run_cli(filled.ini, "stats")
    assert len(result.lines()) == 1 and result.json()[0]["by"] == "hour"


@pytest.mark.parametrize("args, words", [
    (["--since", "soon"], "is not a time"),
    (["--by", "week"], "invalid choice"),
    (["--format", "csv"], "invalid choice"),
    (["--since", "2026-12-02", "--until", "2026-12-01"], "is not before --until"),
    (["--since", "2016-01-01", "--by", "hour"], "use --by day or a shorter period"),
    (["--since", "100000w"], "a shorter period"),
])
def test_an_unusable_argument_is_exit_2_with_one_line(filled, args, words):
    result = run_cli(filled.ini, "stats", *args, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_help_says_how_the_rate_is_counted(filled):
    text = run_cli(filled.ini, "stats", "--help").stdout
    for option in ("--since", "--until", "--by", "--format", "--config"):
        assert option in text
    assert "of the final receipts that arrived in the period" in text
