"""/healthz: an answer within a second in every state, and at most one probe transaction a second.

The answer comes from what the writer already knows: whether its thread
runs, how the last transaction ended and when, whether the batch in hand
has been stuck, whether the journal takes lines. Only when nothing has
committed for PROBE_SECONDS does a poll start a probe (a write
transaction that stores nothing), and every poll meanwhile waits on that
same probe, so a dozen monitors polling each second cost one transaction
a second, not a dozen; a probe stuck behind a held lock is answered 503
at ANSWER_SECONDS, not after lock_timeout.
"""

from __future__ import annotations

import threading
import time

from dlrd.metrics import Metrics
from dlrd.store import Pending, ReceiptStore, probe_write

PROBE_SECONDS = 1.0  # a commit this recent needs no probe; probes start this far apart at most
ANSWER_SECONDS = 0.8  # the longest a poll waits for a probe
STUCK_SECONDS = 1.0  # a batch in hand for longer than this is storage that cannot take receipts now


class HealthCheck:
    """The writer's state as (status, reason); thread-safe, polled from any number of request threads."""

    def __init__(self, store: ReceiptStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self._lock = threading.Lock()
        self._probe: Pending | None = None
        self._probe_started = -PROBE_SECONDS

    def storage_ready(self) -> bool:
        """What dlrd_storage_healthy says, from the writer's state alone (no probe): the last transaction
        committed, the writer runs, and no batch is stuck; the README's alert rule watches it."""
        store = self.store
        return store.condition is None and store.writer_alive() and self._stuck_for(time.monotonic()) is None

    def answer(self) -> tuple[int, str]:
        """200 with "ok" and what is worth knowing, or 503 with why the daemon cannot store receipts now."""
        store = self.store
        started = time.monotonic()
        if not store.writer_alive():
            return 503, "storage: the writer thread is not running; restart dlrd (the log says why it ended)"
        stuck = self._stuck_for(started)
        if stuck is not None:
            return 503, (f"storage: the writer has waited {stuck:.1f} s on one transaction "
                         "(the database locked by another program, or a slow disk)")
        condition = store.condition
        if condition is None and started - store.last_commit_at <= PROBE_SECONDS:
            return self._ok()
        # After a failure too: while no receipt comes in, a probe is how recovery is seen.
        probe, probe_started = self._current_probe(started)
        if not probe.wait(max(0.0, started + ANSWER_SECONDS - time.monotonic())):
            return 503, (f"storage: no write transaction completed within {ANSWER_SECONDS:.1f} s (the database "
                         "locked by another program, or a slow disk)")
        condition = store.condition  # the last transaction's outcome, the probe's or a later one's
        if condition is not None:
            return 503, f"storage: {condition.text}"
        if probe.error is not None and store.last_commit_at < probe_started:
            return 503, f"storage: the probe transaction failed: {probe.error}"
        return self._ok()

    def _stuck_for(self, now: float) -> float | None:
        """How long the batch in hand has taken, once that is over STUCK_SECONDS; else None."""
        busy_since = self.store.busy_since
        if busy_since is None or now - busy_since <= STUCK_SECONDS:
            return None
        return now - busy_since

    def _current_probe(self, now: float) -> tuple[Pending, float]:
        """The probe in flight or begun less than PROBE_SECONDS ago (done, then), else a new one; and its start."""
        with self._lock:
            probe = self._probe
            if probe is None or (probe.done() and now - self._probe_started >= PROBE_SECONDS):
                self._probe_started = now
                probe = self._probe = self.store.submit(probe_write)
                self.metrics.count("dlrd_health_probes_total")
            return probe, self._probe_started

    def _ok(self) -> tuple[int, str]:
        store = self.store
        if not store.journal_writable:
            return 200, (f"ok: receipts are committed; the journal cannot be written ({store.journal_error}), "
                         "its lines follow once it can")
        return 200, "ok"
