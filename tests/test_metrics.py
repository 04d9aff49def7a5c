"""/metrics as Prometheus reads it: every line through a strict text-format parser, the values checked.

A real `dlrd serve` gets receipts of every state, a duplicate, a refused
receipt, a non-receipt, /healthz, ?wsdl and a 404; its /metrics is scraped
over HTTP. The parser (tests/prometheus_text.py) is shown to be strict by
feeding it what the format forbids. The README's alert rules are loaded as
YAML and may name only metrics a scrape shows.
"""

from __future__ import annotations

import os
import re
import threading
import time
import timeit
import urllib.request
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message
from pathlib import Path

import pytest
import yaml
from prometheus_text import Family, PrometheusTextError, parse, parse_value
from provider import receipt_envelope
from wire import exchange, post, receipt_body, soap_report, wait_for

from dlrd import __version__
from dlrd.codes import STATES
from dlrd.messages import RequestHead
from dlrd.metrics import HISTOGRAM_BUCKETS, METRIC_HELP, Histogram, Metrics, request_endpoint
from dlrd.receipt import validate_fields
from dlrd.receiver import receipt_lag

ROOT = Path(__file__).resolve().parents[1]


def scrape(daemon) -> tuple[str, dict[str, Family]]:
    with urllib.request.urlopen(daemon.urls[0] + "/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        data = answer.read()
    return data.decode(), parse(data)


def stamp(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def bucket(family: Family, le: str, **labels: str) -> float:
    return family.get(f"{family.name}_bucket", **labels, le=le)


def histogram_counts(family: Family, **labels: str) -> tuple[float, float]:
    return family.get(f"{family.name}_count", **labels), family.get(f"{family.name}_sum", **labels)


# ---------------------------------------------------------------- the daemon, scraped


@pytest.fixture(scope="module")
def traffic(module_daemon):
    """One daemon's answers to a known mix of requests, and its /metrics after them (scraped twice)."""
    daemon = module_daemon
    now = datetime.now(UTC).replace(microsecond=0)
    plus_one = timezone(timedelta(hours=1))
    receipts = [  # (MessageIdentifier, Report, Timestamp1): one per state, lags in known buckets
        ("LAG90", 0, stamp(now - timedelta(seconds=90))),  # delivered, 60 < lag <= 120
        ("LAG2H", -4, stamp(now - timedelta(hours=2, minutes=10))),  # pending, 7200 < lag <= 21600
        ("SKEW", 2, stamp(now + timedelta(hours=1))),  # failed, from the future: clamped to 0
        ("OFFSET", 999, (now - timedelta(seconds=90)).astimezone(plus_one).isoformat()),  # unknown, +01:00
    ]
    for message_id, report, timestamp in receipts:
        body = receipt_envelope(MessageIdentifier=message_id, Report=str(report), Timestamp1=timestamp)
        assert soap_report(post(daemon.address, body)) == 0, message_id
    seed = receipt_body("SEED2002")  # Timestamp1 2002-08-27: past every bound, only in +Inf
    assert soap_report(post(daemon.address, seed)) == 0
    assert soap_report(post(daemon.address, seed)) == 0  # the provider's retry: a duplicate
    bad = receipt_envelope(MessageIdentifier="BADNUMBER", SentTo="44-700")
    assert soap_report(post(daemon.address, bad)) == -1  # refused, quarantined
    assert post(daemon.address, b"<not-soap/>").status == 500  # not a receipt: a fault
    assert exchange(daemon.address, b"GET /healthz HTTP/1.0\r\n\r\n").status == 200
    assert exchange(daemon.address, b"GET /?wsdl HTTP/1.0\r\nHost: receiver\r\n\r\n").status == 200
    assert exchange(daemon.address, b"GET /nothing-here HTTP/1.0\r\n\r\n").status == 404
    first = scrape(daemon)
    second = scrape(daemon)
    return first, second


def test_every_line_of_a_scrape_is_strict_prometheus_text(traffic):
    (_, families), _ = traffic
    assert list(families) == list(METRIC_HELP), "one family per METRIC_HELP row, in its order"
    for name, (kind, help_text) in METRIC_HELP.items():
        assert families[name].kind == kind
        assert families[name].help == help_text
        if name != "dlrd_tls_certificate_expiry_timestamp_seconds":  # only with an HTTPS listener
            assert families[name].samples, f"{name} has no sample"


def test_counters_and_histogram_counts_print_as_integers(traffic):
    (text, families), _ = traffic
    kinds = {name: family.kind for name, family in families.items()}
    checked = 0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", series).group()
        integral = kinds.get(name) == "counter" or (
            name.endswith(("_bucket", "_count")) and kinds.get(name.rsplit("_", 1)[0]) == "histogram")
        if integral:
            assert re.fullmatch(r"[0-9]+", value), line
            checked += 1
    assert re.search(r"^dlrd_commits_total [0-9]+$", text, re.MULTILINE), "a counter from a gauge callable"
    assert checked > 50


def test_build_info_names_the_version(traffic):
    (_, families), _ = traffic
    assert families["dlrd_build_info"].get(version=__version__) == 1
    assert len(families["dlrd_build_info"].samples) == 1


def test_receipts_stored_by_state_sum_to_what_was_stored(traffic, module_daemon):
    (_, families), _ = traffic
    stored = families["dlrd_receipts_stored_total"]
    by_state = {sample.labels["state"]: sample.value for sample in stored.samples}
    assert by_state == {"delivered": 2, "pending": 1, "failed": 1, "unknown": 1}
    assert set(by_state) == set(STATES), "every state is a series from the start"
    assert sum(by_state.values()) == len(module_daemon.rows("SELECT id FROM receipts"))
    assert families["dlrd_receipts_duplicate_total"].get() == 1
    assert families["dlrd_receipts_quarantined_total"].get(reason="invalid-field") == 1


def test_receipt_lag_lands_in_the_buckets_its_timestamp1_says(traffic):
    (_, families), _ = traffic
    lag = families["dlrd_receipt_lag_seconds"]
    count, total = histogram_counts(lag)
    assert count == 5, "every stored receipt, not the duplicate nor the refused one"
    assert bucket(lag, "0") == 1, "the Timestamp1 from the future, clamped"
    assert bucket(lag, "60") == 1, "a receipt 90 s old is not under 60 s (offsets are read as offsets)"
    assert bucket(lag, "120") == 3, "the 90 s old ones, in Z and in +01:00"
    assert bucket(lag, "7200") == 3
    assert bucket(lag, "21600") == 4, "the one 2 h 10 min old"
    assert bucket(lag, "259200") == 4
    assert bucket(lag, "+Inf") == 5, "the seed's 2002 receipt"
    seed_lag = time.time() - datetime(2002, 8, 27, 13, 38, tzinfo=UTC).timestamp()
    assert seed_lag + 7800 + 180 - 120 < total < seed_lag + 7800 + 180 + 120


def test_request_duration_by_endpoint_and_status_class(traffic, module_daemon):
    """Needs the server.py diff (RequestHandler._answer observes each answer once it is sent)."""
    (_, first), _ = traffic
    duration = first["dlrd_request_duration_seconds"]
    counts = {(sample.labels["endpoint"], sample.labels["code"]): sample.value
              for sample in duration.series("dlrd_request_duration_seconds_count")}
    # Each of these read its answer until dlrd closed the connection, so each was observed by then.
    assert counts[("receipts", "2xx")] == 7  # 5 stored, the duplicate, the refused one (Report -1 is a 200)
    assert counts[("receipts", "5xx")] == 1  # the fault
    assert counts[("wsdl", "2xx")] == 1
    assert counts[("other", "4xx")] == 1
    assert counts[("healthz", "2xx")] >= 2  # the fixture's polling and ours
    assert counts.get(("metrics", "2xx"), 0) <= 1, "only scrapes made before this one"
    assert set(counts) <= {(endpoint, code) for endpoint in ("receipts", "healthz", "metrics", "wsdl", "other")
                           for code in ("1xx", "2xx", "3xx", "4xx", "5xx")}
    _, seconds = histogram_counts(duration, endpoint="receipts", code="2xx")
    assert 0 < seconds < 7 * 15, "each under commit_timeout"

    def scrapes_counted() -> float:
        """urllib returns once it has the body, maybe before dlrd observed the answer: hence the wait."""
        series = scrape(module_daemon)[1]["dlrd_request_duration_seconds"].series(
            "dlrd_request_duration_seconds_count")
        return sum(sample.value for sample in series if sample.labels == {"endpoint": "metrics", "code": "2xx"})

    assert wait_for(lambda: scrapes_counted() >= 2, 10, "the fixture's two scrapes to be counted")


def test_commit_batch_size_agrees_with_the_commit_counters(traffic):
    """Needs the store.py and daemon.py diffs (ReceiptStore.on_commit, set to Metrics.observe_commit)."""
    (_, families), _ = traffic
    batch = families["dlrd_commit_batch_size"]
    count, total = histogram_counts(batch)
    assert count == families["dlrd_commits_total"].get() > 0
    assert total == families["dlrd_committed_jobs_total"].get()
    assert bucket(batch, "1") >= 1, "these requests came one at a time: some commits held one job"


# ---------------------------------------------------------------- Metrics and its histograms


def test_histogram_buckets_are_cumulative_with_le_inclusive_bounds():
    metrics = Metrics()
    for value in (0, 1, 1.5, 2, 600, 10**9):
        metrics.observe("dlrd_commit_batch_size", value)
    families = parse(metrics.render())
    batch = families["dlrd_commit_batch_size"]
    assert bucket(batch, "1") == 2, "le is inclusive: 1 counts in le=1"
    assert bucket(batch, "2") == 4
    assert bucket(batch, "512") == 4
    assert bucket(batch, "+Inf") == 6
    assert histogram_counts(batch) == (6, 1 + 1.5 + 2 + 600 + 10**9)
    assert [sample.labels["le"] for sample in batch.series("dlrd_commit_batch_size_bucket")] == \
        [*(str(bound) for bound in HISTOGRAM_BUCKETS["dlrd_commit_batch_size"]), "+Inf"]


def test_labelled_histograms_keep_one_series_per_label_set():
    metrics = Metrics()
    metrics.observe("dlrd_request_duration_seconds", 0.002, endpoint="receipts", code="2xx")
    metrics.observe("dlrd_request_duration_seconds", 0.2, code="2xx", endpoint="receipts")
    metrics.observe("dlrd_request_duration_seconds", 3.0, endpoint="healthz", code="5xx")
    duration = parse(metrics.render())["dlrd_request_duration_seconds"]
    assert histogram_counts(duration, endpoint="receipts", code="2xx") == (2, 0.202)
    assert bucket(duration, "0.0025", endpoint="receipts", code="2xx") == 1
    assert bucket(duration, "2.5", endpoint="healthz", code="5xx") == 0
    assert bucket(duration, "5", endpoint="healthz", code="5xx") == 1


def test_an_unobserved_histogram_is_rendered_empty_so_alerts_see_the_series():
    families = parse(Metrics().render())
    lag = families["dlrd_receipt_lag_seconds"]
    assert histogram_counts(lag) == (0, 0)
    assert bucket(lag, "+Inf") == 0


def test_nan_is_not_observed():
    histogram = Histogram((1.0, 2.0))
    histogram.observe(float("nan"))
    histogram.observe(1.5)
    assert histogram.snapshot() == [((), [0, 1, 0, 1.5])]


def test_bucket_bounds_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        Histogram((1.0, 0.5))
    with pytest.raises(ValueError, match="increasing"):
        Histogram((1.0, 1.0))


def test_concurrent_observations_are_all_counted():
    metrics = Metrics()
    threads = [threading.Thread(target=lambda: [metrics.observe("dlrd_receipt_lag_seconds", 3.0)
                                                for _ in range(20000)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lag = parse(metrics.render())["dlrd_receipt_lag_seconds"]
    assert histogram_counts(lag) == (160000, 480000)


def test_counters_kept_as_gauge_callables_print_as_integers():
    metrics = Metrics()
    metrics.gauges["dlrd_commits_total"] = lambda: 12.0
    metrics.gauges["dlrd_storage_healthy"] = lambda: 1.0
    metrics.gauges["dlrd_last_receipt_timestamp_seconds"] = lambda: 1712345678.25
    text = metrics.render().decode()
    assert "\ndlrd_commits_total 12\n" in text
    assert "\ndlrd_storage_healthy 1\n" in text
    assert "\ndlrd_last_receipt_timestamp_seconds 1712345678.25\n" in text
    parse(text)


def test_label_values_are_escaped():
    metrics = Metrics()
    metrics.count("dlrd_requests_refused_total", status='a"b\\c\nd', reason="http")
    refused = parse(metrics.render())["dlrd_requests_refused_total"]
    assert refused.get(status='a"b\\c\nd', reason="http") == 1


def test_observing_costs_microseconds():
    """Not a timing gate (speed goes in bench/): a guard against an accidental O(n) or a syscall per call."""
    metrics = Metrics()
    number = 20000
    seconds = min(timeit.repeat(lambda: metrics.observe_commit(3), number=number, repeat=3)) / number
    assert seconds < 100e-6, f"{seconds * 1e6:.1f} µs per observation"


def head(method: str, target: str) -> RequestHead:
    return RequestHead(method, target, (1, 1), Message(), {})


@pytest.mark.parametrize(("method", "target", "endpoint"), [
    ("POST", "/", "receipts"),
    ("POST", "/cgi-bin/deliveryrecript.pl", "receipts"),
    ("GET", "/", "receipts"),  # a 405, still the receipt endpoint's
    ("POST", "/?wsdl", "receipts"),
    ("GET", "/?wsdl", "wsdl"),
    ("HEAD", "/cgi-bin/deliveryrecript.pl?WSDL", "wsdl"),
    ("GET", "/healthz", "healthz"),
    ("GET", "/metrics", "metrics"),
    ("GET", "/wp-login.php", "other"),
    ("GET", "/metrics/", "other"),
])
def test_request_endpoint_is_one_of_five_labels(method, target, endpoint):
    assert request_endpoint(head(method, target), {"/", "/cgi-bin/deliveryrecript.pl"}) == endpoint


def test_a_request_refused_before_its_head_parsed_is_other():
    assert request_endpoint(None, {"/"}) == "other"
    metrics = Metrics()
    metrics.observe_request(None, {"/"}, 408, 10.0)
    metrics.observe_request(head("GET", "/healthz"), {"/"}, 503, 0.001)
    duration = parse(metrics.render())["dlrd_request_duration_seconds"]
    assert histogram_counts(duration, endpoint="other", code="4xx") == (1, 10)
    assert histogram_counts(duration, endpoint="healthz", code="5xx") == (1, 0.001)


def lag_of(timestamp: str, arrived: datetime) -> float:
    receipt = validate_fields({"MessageIdentifier": "X", "SentTo": "1", "Timestamp1": timestamp, "Report": "0"})
    return receipt_lag(receipt.timestamp, arrived.timestamp())


def test_receipt_lag_reads_timestamp1_as_utc_or_its_offset_and_clamps_skew():
    arrived = datetime(2024, 6, 1, 12, 0, 30, 500000, tzinfo=UTC)
    assert lag_of("2024-06-01T12:00:00Z", arrived) == pytest.approx(30.5)
    assert lag_of("2024-06-01T14:00:00+02:00", arrived) == pytest.approx(30.5)
    assert lag_of("2024-06-01T12:00:00.25Z", arrived) == pytest.approx(30.25)
    assert lag_of("2024-06-01T12:05:00Z", arrived) == 0.0, "the provider's clock ahead of ours"


# ---------------------------------------------------------------- the parser is strict

GOOD = (
    "# HELP a_total Things, with a \\\\ and a \\n.\n"
    "# TYPE a_total counter\n"
    'a_total{x="1",y="q\\"\\\\\\n"} 3\n'
    'a_total{x="2",} 0 1712345678000\n'
    "# TYPE g gauge\n"
    "g -1.5e3\n"
    "# TYPE h histogram\n"
    'h_bucket{le="0.5"} 1\n'
    'h_bucket{le="+Inf"} 2\n'
    "h_sum 3.25\n"
    "h_count 2\n"
    "# a plain comment\n"
    "# TYPE n gauge\n"
    "n NaN\n"
)


def test_the_parser_reads_good_text():
    families = parse(GOOD)
    assert families["a_total"].help == "Things, with a \\ and a \n."
    assert families["a_total"].get(x="1", y='q"\\\n') == 3
    assert families["a_total"].samples[1].timestamp == 1712345678000
    assert families["g"].get() == -1500
    assert bucket(families["h"], "+Inf") == 2
    assert parse_value("NaN") != parse_value("NaN")


BAD = {
    "no final line feed": ("# TYPE g gauge\ng 1", "line feed"),
    "no TYPE": ("g 1\n", "no # TYPE"),
    "TYPE after samples": ("# TYPE g gauge\ng 1\n# TYPE g gauge\n", "after its samples"),
    "HELP twice": ("# HELP g a\n# HELP g b\n# TYPE g gauge\ng 1\n", "second # HELP"),
    "unknown kind": ("# TYPE g meter\ng 1\n", "TYPE must be"),
    "bad metric name": ("# TYPE 1g gauge\n", "bad metric name"),
    "bad label name": ('# TYPE g gauge\ng{1x="a"} 1\n', "bad label name"),
    "reserved label": ('# TYPE g gauge\ng{__name__="a"} 1\n', "reserved"),
    "label twice": ('# TYPE g gauge\ng{a="1",a="2"} 1\n', "twice"),
    "bad escape": ('# TYPE g gauge\ng{a="\\t"} 1\n', "bad escape"),
    "bad HELP escape": ("# HELP g a\\\"b\n# TYPE g gauge\ng 1\n", "bad escape"),
    "unterminated value": ('# TYPE g gauge\ng{a="1} 1\n', "unterminated"),
    "unquoted label": ("# TYPE g gauge\ng{a=1} 1\n", 'not followed by ="'),
    "python inf": ("# TYPE g gauge\ng inf\n", "not a sample value"),
    "python underscore": ("# TYPE g gauge\ng 1_000\n", "not a sample value"),
    "no value": ("# TYPE g gauge\ng\n", "no blank"),
    "two values": ("# TYPE g gauge\ng 1 2 3\n", "at most a timestamp"),
    "float timestamp": ("# TYPE g gauge\ng 1 2.5\n", "bad timestamp"),
    "blank line": ("# TYPE g gauge\n\ng 1\n", "blank line"),
    "leading space": ("# TYPE g gauge\n g 1\n", "leading whitespace"),
    "duplicate series": ('# TYPE g gauge\ng{a="1"} 1\ng{a="1"} 2\n', "twice"),
    "duplicate series, labels reordered": ('# TYPE g gauge\ng{a="1",b="2"} 1\ng{b="2",a="1"} 2\n', "twice"),
    "not contiguous": ("# TYPE g gauge\n# TYPE f gauge\ng 1\nf 1\ng{a=\"1\"} 2\n", "not contiguous"),
    "negative counter": ("# TYPE c counter\nc -1\n", "counter c is -1"),
    "NaN counter": ("# TYPE c counter\nc NaN\n", "counter c is nan"),
    "counter with a suffix": ("# TYPE c counter\nc_total 1\n", "no # TYPE"),
    "bare histogram sample": ("# TYPE h histogram\nh 1\n", "not a sample name"),
    "bucket without le": ("# TYPE h histogram\nh_bucket 1\nh_sum 1\nh_count 1\n", "le belongs"),
    "le on _count": ('# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count{le="1"} 1\n', "le belongs"),
    "no +Inf bucket": ('# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n', "+Inf"),
    "decreasing buckets": ('# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
                           "decrease"),
    "le out of order": ('# TYPE h histogram\nh_bucket{le="2"} 1\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\n'
                        "h_sum 1\nh_count 1\n", "increasing le"),
    "+Inf is not _count": ('# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 1\n', "is not _count"),
    "no _sum": ('# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_count 1\n', "no h_sum"),
    "no _count": ('# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_sum 1\n', "no h_count"),
    "bad le": ('# TYPE h histogram\nh_bucket{le="one"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
               "not a number"),
    "negative bucket": ('# TYPE h histogram\nh_bucket{le="+Inf"} -1\nh_sum 1\nh_count -1\n', "count is -1"),
    "a series per label set, one incomplete": (
        '# TYPE h histogram\nh_bucket{a="x",le="+Inf"} 1\nh_sum{a="x"} 1\nh_count{a="x"} 1\n'
        'h_bucket{a="y",le="+Inf"} 1\nh_count{a="y"} 1\n', "no h_sum"),
    "not UTF-8": (b"# TYPE g gauge\ng{a=\"\xff\"} 1\n", "UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_the_parser_refuses(case):
    text, reason = BAD[case]
    with pytest.raises(PrometheusTextError, match=re.escape(reason)):
        parse(text)


# ---------------------------------------------------------------- the README's alert rules

PROMQL_WORDS = {
    # functions and aggregations an alert might use
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "ceil", "changes", "clamp_max", "clamp_min",
    "count", "count_over_time", "day_of_week", "delta", "deriv", "floor", "histogram_quantile", "hour",
    "idelta", "increase", "irate", "max", "max_over_time", "min", "min_over_time", "minute", "predict_linear",
    "quantile_over_time", "rate", "resets", "round", "scalar", "sum", "time", "timestamp", "vector",
    # keywords
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
}


def readme_alert_rules() -> dict:
    """The ```yaml block under "### Alerts" in the README (DLRD_README names another file until it is pasted)."""
    path = Path(os.environ.get("DLRD_README", ROOT / "README.md"))
    text = path.read_text()
    section = re.search(r"^### Alerts\n(.*?)(?=^#{1,3} |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, f'{path}: no "### Alerts" section'
    blocks = re.findall(r"^```yaml\n(.*?)^```$", section.group(1), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f'{path}: "### Alerts" must hold one ```yaml block, found {len(blocks)}'
    return yaml.safe_load(blocks[0])


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords or labels."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\[[^\]]*\]|\{[^}]*\}", "", expr)  # ranges like [10m], label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    return {word for word in re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
            if word not in PROMQL_WORDS}


def test_metric_names_are_found_in_promql():
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(x_bucket{a="b"}[10m]))) > 1e3') == {"x_bucket"}
    assert metric_names("(time() - y) > 30 * 60 and on() hour() >= 7") == {"y"}


def test_readme_alert_rules_load_and_name_only_exported_metrics(daemon):
    rules_file = readme_alert_rules()
    _, families = scrape(daemon)
    exported = {sample.name for family in families.values() for sample in family.samples}
    assert set(rules_file) == {"groups"}
    rules = [rule for group in rules_file["groups"] for rule in group["rules"]]
    assert all(set(group) == {"name", "rules"} and group["name"] for group in rules_file["groups"])
    assert len(rules) == 3
    alerts = [rule["alert"] for rule in rules]
    assert len(set(alerts)) == 3 and all(re.fullmatch(r"[A-Z][A-Za-z0-9]*", alert) for alert in alerts)
    read = set()
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"[0-9]+[smhdw]", rule["for"]), rule["alert"]
        assert rule["labels"].get("severity") in ("page", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']} reads no metric"
        for name in names:
            assert name in exported, f"{rule['alert']}: {name} is not on /metrics"
            assert re.sub(r"_(bucket|sum|count)$", "", name) in METRIC_HELP, name
        read |= names
    assert {"dlrd_last_receipt_timestamp_seconds", "dlrd_receipt_lag_seconds_bucket",
            "dlrd_storage_healthy"} <= read
