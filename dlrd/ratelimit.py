"""What one source may cost: a per-source byte budget, and log lines that sum up instead of repeating.

All of it exists for floods. Every request that fails authentication is kept in
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
from functools import lru_cache

Clock = Callable[[], float]

MAX_TRACKED_SOURCES = 4096
ALL_SOURCES_FACTOR = 16
SUMMARY_SECONDS = 60.0
LINES_PER_MINUTE = 30


@lru_cache(maxsize=4096)
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
    """A token bucket per source, `per_minute` bytes a minute with as much again as a burst, and one for all
    sources together, ALL_SOURCES_FACTOR times as large.

    The shared bucket is for floods from many addresses: an IPv6 customer
    holds 256 /64s in its /56, each with a full bucket of its own. Thread-
    safe: request threads share it. At most MAX_TRACKED_SOURCES buckets are
    kept; past that the least recently used goes, which only gives that
    source a full bucket again (the shared bucket still holds).
    """

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, when)
        self._all = (float(per_minute * ALL_SOURCES_FACTOR), clock())
        self._lock = threading.Lock()

    def take(self, source: str, size: int) -> bool:
        """True (and the bytes spent) when `source` may have `size` more bytes kept now."""
        key = source_key(source)
        now = self._clock()
        with self._lock:
            own = self._refill(self._buckets.pop(key, (float(self.per_minute), now)), self.per_minute, now)
            shared = self._refill(self._all, self.per_minute * ALL_SOURCES_FACTOR, now)
            allowed = size <= own and size <= shared
            if allowed:
                own -= size
                shared -= size
            self._buckets[key] = (own, now)  # re-inserted: the dict's order is least recently used first
            self._all = (shared, now)
            if len(self._buckets) > MAX_TRACKED_SOURCES:
                del self._buckets[next(iter(self._buckets))]
            return allowed

    @staticmethod
    def _refill(bucket: tuple[float, float], per_minute: int, now: float) -> float:
        tokens, when = bucket
        return min(float(per_minute), tokens + (now - when) * per_minute / 60.0)


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


class LogLimiter:
    """At most LINES_PER_MINUTE lines a minute for each kind of refusal; the rest counted, then summed up.

    A refusal costs a stranger one request and the operator one log line:
    without a limit, 4000 malformed requests in two seconds wrote 4000
    lines. The lines held back go to DEBUG, so `level = debug` still shows
    every one. `flush` is called from the server's housekeeping.
    """

    def __init__(self, logger: logging.Logger, clock: Clock = time.monotonic) -> None:
        self._log = logger
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int, int]] = {}  # kind -> (window start, logged, held back)

    def log(self, level: int, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            start, logged, held = self._windows.get(kind, (now, 0, 0))
            if now - start >= SUMMARY_SECONDS:
                self._summarise(kind, held)
                start, logged, held = now, 0, 0
            if logged < LINES_PER_MINUTE:
                self._windows[kind] = (start, logged + 1, held)
                allowed = True
            else:
                self._windows[kind] = (start, logged, held + 1)
                allowed = False
        if allowed:
            self._log.log(level, message, *args)
        elif self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(message, *args)

    def flush(self) -> None:
        now = self._clock()
        with self._lock:
            for kind, (start, _logged, held) in list(self._windows.items()):
                if now - start >= SUMMARY_SECONDS:
                    self._summarise(kind, held)
                    del self._windows[kind]

    def _summarise(self, kind: str, held: int) -> None:
        if held:
            self._log.warning("%d more %s in the last minute were not logged one by one", held, kind)
