"""Counters and gauges, rendered in the Prometheus text format for /metrics.

Every refusal increments a counter here, so an operator's dashboard shows
what the log lines say. Request threads count concurrently: `+=` on a
Counter is a read and a write, so a lock keeps increments from being lost.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

METRIC_HELP = {
    "dlrd_receipts_stored_total": ("counter", "Receipts committed to the database."),
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
    "dlrd_storage_healthy": ("gauge", "1 when the last database transaction committed, else 0."),
    "dlrd_commits_total": ("counter", "Write transactions committed; each holds every receipt queued meanwhile."),
    "dlrd_committed_jobs_total": ("counter", "Receipts, quarantined requests and health probes those transactions "
                                  "held; divided by dlrd_commits_total, the mean group-commit batch size."),
    "dlrd_journal_writable": ("gauge", "0 while receipts.jsonl cannot be written; the lines follow once it can."),
    "dlrd_last_receipt_timestamp_seconds": ("gauge", "Unix time of the last stored receipt; silence is an alarm."),
}


class Metrics:
    """The daemon's counters, labelled the Prometheus way."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[str, Callable[[], float]] = {}
        self._lock = threading.Lock()

    def count(self, name: str, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.counters[key] += 1

    def value(self, name: str, **labels: str) -> int:
        return self.counters[name, tuple(sorted(labels.items()))]

    def render(self) -> bytes:
        lines = []
        for name, (kind, help_text) in METRIC_HELP.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            if name in self.gauges:
                lines.append(f"{name} {float(self.gauges[name]())!r}")
                continue
            with self._lock:
                samples = [(labels, value) for (metric, labels), value in self.counters.items() if metric == name]
            if not samples and kind == "counter":
                samples = [((), 0)]
            for labels, value in sorted(samples):
                rendered = ",".join(f'{key}="{_escape(text)}"' for key, text in labels)
                lines.append(f"{name}{{{rendered}}} {value}" if rendered else f"{name} {value}")
        return ("\n".join(lines) + "\n").encode("utf-8")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
