"""Where the gap to the ceiling goes: dlrd with parts of its receipt path taken away.

`run.py` says how far dlrd is from the baseline; this says which part of
dlrd the distance is in. The same wrk load runs against the baseline and
against three builds of dlrd that differ only in what happens after a
receipt is parsed, validated and handed to the store:

- `dlrd`: unchanged, every receipt committed (synchronous = FULL) and journaled;
- `no-storage`: the writer thread still takes every batch and releases
  the waiting request threads, but the SQLite transaction and the journal
  append are replaced by ids from a counter;
- `no-writer`: no hand-over at all; `ReceiptStore.submit` gives the
  request thread an already finished `Pending`, so it answers each
  receipt as soon as it is handed to the store.

So `no-writer` is the cost of HTTP, SOAP and the rules in Python, the step
to `no-storage` the cost of crossing to the writer thread and back, and the
step to `dlrd` the cost of SQLite, its fsync and the journal. The stubs are
installed from the outside, as `dlrd_probe.py` does; dlrd's code is not
changed. The script also times `fdatasync` of one commit's worth of WAL
(7 pages) on the work directory's disk: one receipt at one connection
cannot be answered faster than that.

    .venv/bin/python bench/decompose.py                   # 2 to 5 minutes
    .venv/bin/python bench/decompose.py --rounds 3 --duration 10
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import run

VARIANTS = ("baseline", "dlrd", "no-storage", "no-writer")
# (placement, mode, connections): keep-alive at 16 connections and a connection per receipt at one,
# the targets the asyncio design missed and the ones with the least room.
SCENARIOS = (("split", "keepalive", 16), ("split", "close", 1))
WAL_COMMIT_BYTES = 7 * (4096 + 24)  # pages and frame headers one single-receipt commit writes (strace)


def serve_variant(variant: str, argv: list[str]) -> int:
    """Run `dlrd argv` with the named part of the store stubbed out (this process becomes the daemon)."""
    from dlrd import store
    from dlrd.cli import main

    ids = itertools.count(1)
    if variant == "no-storage":
        stub_storage(store, ids)
    elif variant == "no-writer":
        stub_writer(store, ids)
    return main(argv)


def stub_storage(store: Any, ids: Iterator[int]) -> None:
    """The writer thread runs as ever, but commits a batch of receipts by numbering it and journals nothing."""
    real_transaction = store.ReceiptStore._transaction

    def transaction(self: Any, jobs: list[Any]) -> list[Any]:
        if all(type(job) is store.ReceiptInsert for job in jobs):
            return [job.stored(next(ids)) for job in jobs]
        return real_transaction(self, jobs)  # /healthz's probe write stays real

    store.ReceiptStore._transaction = transaction
    store.ReceiptStore._journal_committed = lambda self, batch=None, at_start=False: None


def stub_writer(store: Any, ids: Iterator[int]) -> None:
    """A receipt's Pending is finished before submit returns: the request thread never waits on the writer."""
    real_submit = store.ReceiptStore.submit

    def submit(self: Any, job: Any) -> Any:
        if type(job) is not store.ReceiptInsert:
            return real_submit(self, job)  # /healthz's probe write and quarantined requests stay real
        pending = store.Pending()
        pending.set_result(job.stored(next(ids)))
        return pending

    store.ReceiptStore.submit = submit


def measure(variant: str, placement: str, mode: str, conns: int, duration: float, workdir: Path) -> float:
    """Receipts per second wrk counted as stored (200, Report 0) in one run of `duration` seconds."""
    directory = workdir / f"{variant}-{placement}-{mode}-{conns}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    server_cpus, wrk_cpus = ({0}, {1}) if placement == "split" else (None, None)
    server = run.Server("baseline" if variant == "baseline" else "dlrd", directory, server_cpus, probe=False)
    if variant in ("no-storage", "no-writer"):
        options = server.argv[server.argv.index("--config"):]  # what run.py passes to `dlrd`
        server.argv = [run.PYTHON, str(Path(__file__).resolve()), "--serve-variant", variant, *options]
    server.start()
    try:
        stats, _, _ = run.run_wrk(server.url, mode, conns, duration, 1, wrk_cpus, f"d{int(time.time()) % 10000}")
    finally:
        code = server.stop()
    shutil.rmtree(directory, ignore_errors=True)
    if code != 0 or stats["bad"]:
        raise RuntimeError(f"{variant}: exit code {code}, {stats['bad']} bad answers:\n{server.log()}")
    return stats["ok"] / stats["duration_s"]


def fdatasync_us(directory: Path, count: int = 2000) -> float:
    """Median time to overwrite one commit's worth of WAL in place and fdatasync it, in µs."""
    path = directory / "fdatasync.probe"
    block = os.urandom(WAL_COMMIT_BYTES)
    span = 64 * WAL_COMMIT_BYTES
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, bytes(span), 0)
        os.fsync(fd)
        took = []
        for i in range(count):
            started = time.perf_counter()
            os.pwrite(fd, block, i % 64 * WAL_COMMIT_BYTES)
            os.fdatasync(fd)
            took.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(took) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6, help="seconds per run (default 6)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant and scenario; the median is shown")
    parser.add_argument("--workdir", default="/var/tmp/dlrd-bench", help="on a real disk, as for run.py")
    options = parser.parse_args()
    workdir = Path(options.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run.log(f"fdatasync of {WAL_COMMIT_BYTES} bytes in {workdir}: {fdatasync_us(workdir):.0f} µs (median)")
    commit_us = statistics.median(run.single_row_commit_seconds(workdir, 200)) * 1e6
    run.log(f"single-row durable commit (run.py's one-connection limit) in {workdir}: {commit_us:.0f} µs (median)")
    print("| scenario | server | receipts/s | of the baseline | µs per receipt |")
    print("|---|---|---|---|---|")
    for placement, mode, conns in SCENARIOS:
        rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for _ in range(options.rounds):  # interleaved, so drift in the machine hits every variant alike
            for variant in VARIANTS:
                run.wait_quiet(10)
                rates[variant].append(measure(variant, placement, mode, conns, options.duration, workdir))
        baseline = statistics.median(rates["baseline"])
        for variant in VARIANTS:
            rate = statistics.median(rates[variant])
            spread = f"{min(rates[variant]):,.0f} to {max(rates[variant]):,.0f}"
            print(f"| {placement} {mode} {conns} | {variant} | {rate:,.0f} ({spread}) | {rate / baseline:.0%} "
                  f"| {1e6 / rate:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-variant"]:
        sys.exit(serve_variant(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
