"""What one source may cost: a per-source byte budget, and log lines that sum up instead of repeating.

Both exist for floods. Every request that fails authentication is kept in
the quarantine for replay; one host posting such requests as fast as it
can would fill the disk (33 MB/s was seen) and swamp the log with a line
each. A budget in bytes rather than requests favours the provider: its
receipts are under 1 KiB, a flood's bodies are as large as allowed.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

Clock = Callable[[], float]

MAX_TRACKED_SOURCES = 4096
SUMMARY_SECONDS = 60.0


def source_key(address: str) -> str:
    """The unit a budget belongs to: an IPv4 address, or an IPv6 /64 (one host's usual share)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class SourceBudget:
    """A token bucket per source: `per_minute` bytes a minute, with as much again as a burst.

    Thread-safe: request threads share it. At most MAX_TRACKED_SOURCES
    buckets are kept; past that the least recently used goes, which only
    gives that source a full bucket again.
    """

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, source: str, size: int) -> bool:
        """True (and the bytes spent) when `source` may have `size` more bytes kept now."""
        key = source_key(source)
        now = self._clock()
        with self._lock:
            tokens, when = self._buckets.pop(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - when) * self.per_minute / 60.0)
            allowed = size <= tokens
            if allowed:
                tokens -= size
            self._buckets[key] = (tokens, now)  # re-inserted: the dict's order is least recently used first
            if len(self._buckets) > MAX_TRACKED_SOURCES:
                del self._buckets[next(iter(self._buckets))]
            return allowed


class LogTally:
    """Logs the first of a run of events at once, then their count once a minute, never a line each.

    `flush` is called from the server's housekeeping, so the count of a run
    that stopped is still logged within a minute.
    """

    def __init__(self, logger: logging.Logger, first: str, summary: str, clock: Clock = time.monotonic) -> None:
        self._log = logger
        self._first = first  # a format taking the source
        self._summary = summary  # a format taking the count, the number of sources and the busiest source
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: Counter[str] = Counter()
        self._logged_at: float | None = None

    def note(self, source: str) -> None:
        now = self._clock()
        with self._lock:
            if self._logged_at is None or (not self._sources and now - self._logged_at >= SUMMARY_SECONDS):
                self._log.warning(self._first, source)
                self._logged_at = now
                return
            self._sources[source] += 1
        self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log the count held since the last line, if a minute has passed."""
        now = self._clock() if now is None else now
        with self._lock:
            if not self._sources or self._logged_at is None or now - self._logged_at < SUMMARY_SECONDS:
                return
            count = sum(self._sources.values())
            busiest, _ = self._sources.most_common(1)[0]
            sources = len(self._sources)
            self._sources.clear()
            self._logged_at = now
        self._log.warning(self._summary, count, sources, busiest)
