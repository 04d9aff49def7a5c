"""Run `dlrd` exactly as the console script does, recording the writer's commit batch sizes.

dlrd's /metrics gives only the mean group-commit batch, so the benchmark wraps
ReceiptStore._commit from the outside (dlrd's code is not changed): each call
is one transaction, and len(batch) the jobs it committed. When the daemon
exits, the counts go as JSON to the file named by $DLRD_BENCH_BATCHES. The
wrapper costs two clock reads and a dict update per transaction. If a later
dlrd renames _commit, the daemon still runs and the file says so. It also records how long each
transaction took (the SQL, the COMMIT with its fsync, the journal append and
releasing the waiters): the slowest, and how many took 5, 20 or 100 ms or more.

    DLRD_BENCH_BATCHES=/tmp/batches.json python bench/dlrd_probe.py --config dlrd.ini serve
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from typing import Any

from dlrd import store
from dlrd.cli import main

sizes: Counter[int] = Counter()
seconds = [0.0]
slowest = [0.0]
slow = Counter()  # transactions by duration bucket, from 5 ms up


def install() -> bool:
    original = getattr(store.ReceiptStore, "_commit", None)
    if original is None:
        return False

    def _commit(self: Any, batch: list[Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, batch, *args, **kwargs)
        finally:
            took = time.perf_counter() - started
            seconds[0] += took
            slowest[0] = max(slowest[0], took)
            if took >= 0.005:
                slow[">=100ms" if took >= 0.1 else ">=20ms" if took >= 0.02 else ">=5ms"] += 1
            sizes[len(batch)] += 1

    store.ReceiptStore._commit = _commit  # type: ignore[method-assign]
    for name in PARTS:  # the parts of a commit, timed apart when this dlrd has them
        if hasattr(store.ReceiptStore, name):
            setattr(store.ReceiptStore, name, _timed(name, getattr(store.ReceiptStore, name)))
    return True


PARTS = ("_transaction", "_journal_committed")  # SQL + COMMIT (fsync, checkpoints); the JSONL append
part_slowest: dict[str, float] = {}
part_seconds: Counter[str] = Counter()


def _timed(name: str, method: Any) -> Any:
    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            took = time.perf_counter() - started
            part_seconds[name] += took
            part_slowest[name] = max(part_slowest.get(name, 0.0), took)

    return timed


def dump(path: str, installed: bool) -> None:
    transactions = sum(sizes.values())
    jobs = sum(size * count for size, count in sizes.items())
    report = {
        "instrumented": installed,
        "transactions": transactions,
        "jobs": jobs,
        "mean": jobs / transactions if transactions else 0.0,
        "max": max(sizes, default=0),
        "commit_seconds": seconds[0],
        "slowest_commit_ms": slowest[0] * 1000,
        "slow_commits": dict(slow),
        "parts": {name: {"seconds": part_seconds[name], "slowest_ms": part_slowest.get(name, 0.0) * 1000}
                  for name in PARTS if name in part_slowest},
        "histogram": {str(size): count for size, count in sorted(sizes.items())},
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    installed = install()
    try:
        code = main()
    finally:
        if os.environ.get("DLRD_BENCH_BATCHES"):
            dump(os.environ["DLRD_BENCH_BATCHES"], installed)
    sys.exit(code)
