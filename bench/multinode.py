"""dlrd on PostgreSQL next to dlrd on SQLite, and two nodes next to one (issue 16), measured in one run.

A private PostgreSQL cluster (tests/pg_cluster.py: initdb on a temporary
directory under /var/tmp, synchronous_commit = on, fsync = on) runs on this
machine. Each configuration gets a fresh database; wrk posts
bench/receipt.lua's unique receipts over keep-alive connections for
--duration seconds. "2 nodes" is two dlrd processes on one database, each
given half of the connections by a wrk of its own, at the same time. After
each run the rows are counted: every receipt wrk saw answered 200 must be
stored, none twice. The SQLite run, the baseline, uses the same disk.

    .venv/bin/python bench/multinode.py                 # 16 and 64 connections, 10 s each (~2 min)
    .venv/bin/python bench/multinode.py --conns 64 --duration 5
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from pg_cluster import ROLE_PASSWORD, remove_cluster, start_cluster  # noqa: E402
from run import PYTHON, listening_port, run_wrk  # noqa: E402

WORKDIR = Path("/var/tmp/dlrd-bench-multinode")


@dataclass
class Figure:
    setup: str
    conns: int
    rps: float
    p50_ms: float
    p99_ms: float
    rss_mb: float
    ok: int
    stored: int


class Node:
    """One `dlrd serve` with its own journal directory; on PostgreSQL when given a dsn."""

    def __init__(self, directory: Path, name: str, dsn: str | None) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        storage = f"database = {directory / 'dlrd.db'}\nsynchronous = full\n"
        if dsn is not None:
            (directory / "password").write_text(ROLE_PASSWORD)
            storage = f"backend = postgresql\ndsn = {dsn}\npassword_file = {directory / 'password'}\n"
        ini = directory / "dlrd.ini"
        ini.write_text(f"[server]\nlisten = 127.0.0.1:0\nnode = {name}\nmax_connections = 1024\n"
                       f"max_connections_per_source = 1024\n[storage]\n{storage}"
                       f"[journal]\ndirectory = {directory}\n[log]\nlevel = warning\n")
        self.log = open(directory / "dlrd.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen([PYTHON, "-m", "dlrd", "--config", str(ini), "serve"], cwd=directory,
                                        stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while (port := listening_port(self.process.pid)) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dlrd did not start: {(directory / 'dlrd.log').read_text()}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}/"

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        if self.process.wait(30) != 0:
            raise RuntimeError(f"dlrd exited {self.process.returncode}")
        self.log.close()


def measure(setup: str, nodes: list[Node], conns: int, duration: float, count_rows) -> Figure:
    """wrk against every node at once, conns shared between them; the figures summed or taken at worst."""
    outcomes: list[dict] = [{} for _ in nodes]

    def load(number: int, node: Node) -> None:
        # receipt.lua keeps 3 characters of the tag: one for the setup, one for the count, one for the node.
        tag = f"{setup[0]}{'SL'[conns > 16]}{number}"
        outcomes[number], _, _ = run_wrk(node.url, "keepalive", conns // len(nodes), duration, 1, None, tag)

    runners = [threading.Thread(target=load, args=(number, node)) for number, node in enumerate(nodes)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    rss = max(node.peak_rss_mb() for node in nodes)
    for node in nodes:
        node.stop()
    ok = sum(outcome["ok"] for outcome in outcomes)
    stored = count_rows()
    if stored < ok:
        raise RuntimeError(f"{setup}: wrk saw {ok} answered 200 but {stored} are stored")
    seconds = max(outcome["duration_s"] for outcome in outcomes)
    return Figure(setup, conns, ok / seconds, max(o["p50_ms"] for o in outcomes),
                  max(o["p99_ms"] for o in outcomes), rss, ok, stored)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=float, default=10.0)
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    WORKDIR.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(WORKDIR)  # the cluster's data on the same disk as SQLite's
    cluster = start_cluster()
    if cluster is None:
        sys.exit("no PostgreSQL server is installed: apt-get install postgresql")
    figures: list[Figure] = []
    try:
        for conns in options.conns:
            run_dir = Path(tempfile.mkdtemp(prefix=f"c{conns}-"))
            database = run_dir / "sqlite" / "dlrd.db"
            node = Node(run_dir / "sqlite", "s", None)
            def sqlite_rows(database: Path = database) -> int:
                return sqlite3.connect(database).execute("SELECT count(*) FROM receipts").fetchone()[0]

            figures.append(measure("SQLite, 1 node", [node], conns, options.duration, sqlite_rows))
            for count in (1, 2):
                name = cluster.database()

                def rows(name: str = name) -> int:
                    return int(cluster.psql("SELECT count(*) FROM receipts", name))

                nodes = [Node(run_dir / f"pg{count}-{n}", f"n{n}", cluster.dsn(name)) for n in range(count)]
                figures.append(measure(f"PostgreSQL, {count} node{'s' * (count > 1)}", nodes, conns,
                                       options.duration, rows))
    finally:
        remove_cluster(cluster)
    print(f"\n{'setup':<20} {'conns':>5} {'receipts/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'peak RSS MB':>12} "
          f"{'vs SQLite':>10}")
    for figure in figures:
        sqlite = next(f for f in figures if f.conns == figure.conns and f.setup.startswith("SQLite"))
        print(f"{figure.setup:<20} {figure.conns:>5} {figure.rps:>11,.0f} {figure.p50_ms:>8.1f} "
              f"{figure.p99_ms:>8.1f} {figure.rss_mb:>12.1f} {figure.rps / sqlite.rps:>9.0%}")
    for conns in options.conns:
        by = {f.setup: f for f in figures if f.conns == conns}
        one, two, sqlite = by["PostgreSQL, 1 node"], by["PostgreSQL, 2 nodes"], by["SQLite, 1 node"]
        print(f"{conns} conns: PostgreSQL 1 node at {one.rps / sqlite.rps:.0%} of SQLite (target >= 70 % at 64); "
              f"2 nodes {two.rps / one.rps:.2f}x one node (target > 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
