"""Counters, gauges and histograms, rendered in the Prometheus text format (0.0.4) for /metrics.

Every refusal increments a counter here, so an operator's dashboard shows
what the log lines say. Request threads count concurrently: `+=` on a
Counter is a read and a write, so a lock keeps increments from being lost.

Histograms are on the request path (one observation per answer), so an
observation is a bisect over fixed bucket bounds and one increment under
the histogram's own lock; the cumulative `_bucket` series Prometheus wants
are summed up only when /metrics is scraped.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Container
from typing import TYPE_CHECKING

from dlrd import __version__
from dlrd.codes import STATES
from dlrd.wsdl import is_wsdl_query

if TYPE_CHECKING:
    from dlrd.messages import RequestHead

Labels = tuple[tuple[str, str], ...]

METRIC_HELP = {
    "dlrd_build_info": ("gauge", "Always 1; the version label says which dlrd is running."),
    "dlrd_receipts_stored_total": ("counter", "Receipts committed to the database, by the state their report code "
                                   "means (delivered, pending, failed, unknown); their sum is every receipt stored."),
    "dlrd_receipts_duplicate_total": ("counter", "Provider retries of receipts already stored."),
    "dlrd_receipts_quarantined_total": ("counter", "Requests kept in the quarantine table, by reason kind."),
    "dlrd_quarantine_not_kept_total": ("counter", "Refused requests answered but not kept in the quarantine: "
                                       "past quarantine_rate for their source, or quarantine_max_bytes in all."),
    "dlrd_quarantine_bytes": ("gauge", "What the quarantine table holds, in bytes, against quarantine_max_bytes."),
    "dlrd_requests_refused_total": ("counter", "Requests refused before storage, by HTTP status and reason kind."),
    "dlrd_auth_failures_total": ("counter", "Receipts refused because Username or PIN did not match."),
    "dlrd_tls_handshake_failures_total": ("counter", "HTTPS connections dropped during the TLS handshake."),
    "dlrd_tls_certificate_expiry_timestamp_seconds": ("gauge", "Unix time when the served certificate expires."),
    "dlrd_storage_failures_total": ("counter", "Receipts answered 503 because the database could not commit."),
    "dlrd_connections_open": ("gauge", "Client connections open now."),
    "dlrd_storage_healthy": ("gauge", "1 when the last database transaction committed, the writer runs and no "
                             "transaction has been stuck for a second; else 0 (and /healthz says why)."),
    "dlrd_health_probes_total": ("counter", "Probe transactions /healthz ran, one a second at most however many "
                                 "monitors poll; not in dlrd_commits_total."),
    "dlrd_commits_total": ("counter", "Write transactions committed; each holds every receipt queued meanwhile."),
    "dlrd_committed_jobs_total": ("counter", "Receipts and quarantined requests those transactions "
                                  "held; divided by dlrd_commits_total, the mean group-commit batch size."),
    "dlrd_commit_batch_size": ("histogram", "Jobs (receipts, quarantined requests) per committed "
                               "write transaction: how much group commit is saving."),
    "dlrd_journal_writable": ("gauge", "0 while receipts.jsonl cannot be written; the lines follow once it can."),
    "dlrd_last_receipt_timestamp_seconds": ("gauge", "Unix time of the last stored receipt; silence is an alarm."),
    "dlrd_receipt_lag_seconds": ("histogram", "Seconds from a stored receipt's Timestamp1 to its arrival; a "
                                 "Timestamp1 later than the arrival (clock skew) counts as 0, in the le=\"0\" bucket."),
    "dlrd_request_duration_seconds": ("histogram", "Seconds from a request's first byte being read to its answer "
                                      "being written, by endpoint and status class."),
}

# Bucket upper bounds (le), chosen for what each histogram measures.
HISTOGRAM_BUCKETS: dict[str, tuple[float, ...]] = {
    # /healthz, /metrics and refusals answer in well under a millisecond; a
    # stored receipt waits for its group commit, one fsync: 1-10 ms on an SSD,
    # tens on a spinning or network disk. 5 s is lock_timeout's and 15 s
    # commit_timeout's default, where a hanging disk's 503s pile up; 30 s
    # catches slow bodies (request_timeout plus min_body_rate).
    "dlrd_request_duration_seconds": (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                      2.5, 5.0, 10.0, 15.0, 30.0),
    # Powers of two up to MAX_BATCH (512, dlrd/store.py): 1 is a quiet
    # server, tens a busy one; a batch at 512 means the writer is the bottleneck.
    "dlrd_commit_batch_size": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    # le="0" holds only the clamped negatives (the provider's clock ahead
    # of ours), so skew shows itself. The provider posts within seconds
    # of Timestamp1 when all is well; minutes mean its queue is backing up;
    # hours to days are retries after our 503s or an SMSC's late
    # Delayed/Expired reports.
    "dlrd_receipt_lag_seconds": (0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                                 7200.0, 21600.0, 86400.0, 259200.0),
}

# Series rendered as 0 before the first increment, so rate() and sum() see
# every state from the start instead of a series appearing mid-graph.
ZERO_SERIES: dict[str, tuple[Labels, ...]] = {
    "dlrd_receipts_stored_total": tuple((("state", state),) for state in STATES),
}

# dlrd's own endpoints (dlrd/app.py routes them), here since the endpoint label needs them.
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
_STATUS_CLASSES = tuple(f"{hundred}xx" for hundred in range(10))


def request_endpoint(head: RequestHead | None, receipt_paths: Container[str]) -> str:
    """The `endpoint` label of a request: a few fixed values, never the path itself (a scanner's
    random paths would make a series each)."""
    if head is None:  # refused before its head could be parsed
        return "other"
    path = head.path
    if path in receipt_paths:
        return "wsdl" if head.method != "POST" and is_wsdl_query(head.query) else "receipts"
    if path == HEALTH_PATH:
        return "healthz"
    if path == METRICS_PATH:
        return "metrics"
    return "other"


class Histogram:
    """One histogram family: per label set, a count per bucket (not cumulative) and the sum of values."""

    __slots__ = ("_lock", "_series", "bounds")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"bucket bounds must be distinct and increasing, got {bounds}")
        self.bounds = bounds
        self._series: dict[Labels, list[float]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, labels: Labels = ()) -> None:
        """Count `value` in the first bucket whose bound is >= it (+Inf past the last)."""
        if value != value:  # NaN: it would make _sum NaN for the rest of the process's life
            return
        index = bisect_left(self.bounds, value)
        with self._lock:
            counts = self._series.get(labels)
            if counts is None:
                # one slot per bound, one for +Inf, the sum last
                counts = self._series[labels] = [0] * (len(self.bounds) + 2)
            counts[index] += 1
            counts[-1] += value

    def snapshot(self) -> list[tuple[Labels, list[float]]]:
        """A consistent copy of every series, sorted by labels: buckets then sum, as observe() keeps them."""
        with self._lock:
            return sorted((labels, list(counts)) for labels, counts in self._series.items())


class Metrics:
    """The daemon's counters, gauges and histograms, labelled the Prometheus way."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, Labels]] = Counter()
        self.gauges: dict[str, Callable[[], float]] = {}
        self.histograms = {name: Histogram(bounds) for name, bounds in HISTOGRAM_BUCKETS.items()}
        self.info: dict[str, Labels] = {"dlrd_build_info": (("version", __version__),)}
        self._lock = threading.Lock()

    def count(self, name: str, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())) if labels else ())
        with self._lock:
            self.counters[key] += 1

    def value(self, name: str, **labels: str) -> int:
        return self.counters[name, tuple(sorted(labels.items()))]

    def observe(self, name: str, value: float, **labels: str) -> None:
        """One observation of the histogram `name` (a key of HISTOGRAM_BUCKETS)."""
        self.histograms[name].observe(value, tuple(sorted(labels.items())) if labels else ())

    def observe_request(self, head: RequestHead | None, receipt_paths: Container[str], status: int,
                        seconds: float) -> None:
        """The server's one call per answer: dlrd_request_duration_seconds by endpoint and status class."""
        labels = (("code", _STATUS_CLASSES[status // 100 % 10]), ("endpoint", request_endpoint(head, receipt_paths)))
        self.histograms["dlrd_request_duration_seconds"].observe(seconds, labels)

    def observe_commit(self, batch_size: int) -> None:
        """The store's call after each committed transaction (ReceiptStore.on_commit)."""
        self.histograms["dlrd_commit_batch_size"].observe(batch_size)

    def render(self) -> bytes:
        lines = []
        for name, (kind, help_text) in METRIC_HELP.items():
            lines += [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}"]
            if name in self.histograms:
                lines += self._render_histogram(name)
            elif name in self.info:
                lines.append(f"{name}{_labels(self.info[name])} 1")
            elif name in self.gauges:
                value = self.gauges[name]()
                lines.append(f"{name} {int(value) if kind == 'counter' else _number(value)}")
            else:
                lines += self._render_counter(name, kind)
        return ("\n".join(lines) + "\n").encode("utf-8")

    def _render_counter(self, name: str, kind: str) -> list[str]:
        with self._lock:
            samples = {labels: value for (metric, labels), value in self.counters.items() if metric == name}
        for labels in ZERO_SERIES.get(name, ()):
            samples.setdefault(labels, 0)
        if not samples and kind == "counter":
            samples = {(): 0}
        return [f"{name}{_labels(labels)} {value}" for labels, value in sorted(samples.items())]

    def _render_histogram(self, name: str) -> list[str]:
        histogram = self.histograms[name]
        series = histogram.snapshot() or [((), [0] * (len(histogram.bounds) + 2))]
        bounds = [*(_number(bound) for bound in histogram.bounds), "+Inf"]
        lines = []
        for labels, counts in series:
            cumulative = 0
            for bound, count in zip(bounds, counts):
                cumulative += count
                lines.append(f"{name}_bucket{_labels((*labels, ('le', bound)))} {cumulative}")
            lines.append(f"{name}_sum{_labels(labels)} {_number(counts[-1])}")
            lines.append(f"{name}_count{_labels(labels)} {cumulative}")
        return lines


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(text)}"' for key, text in labels) + "}"


def _number(value: float) -> str:
    """A sample value as the text format spells it: integers without a fraction, +Inf, -Inf, NaN."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
