"""How to send one group commit to PostgreSQL: four ways of inserting a batch of receipts, timed (issue 16).

Each way stores batches of unique receipts, each batch one transaction
with the writer's unique key semantics (a receipt already stored is found,
not stored again), on a private cluster (tests/pg_cluster.py,
synchronous_commit = on, so each commit waits for its WAL flush as dlrd's
do). It prints the mean time per batch and per receipt, and the CPU this process
spent per receipt (what the writer takes from the request threads' GIL):

- unnest: one INSERT ... SELECT FROM unnest(array per column) ON CONFLICT
  DO NOTHING RETURNING (what dlrd/pgsql.py does): one statement, prepared
  once, whatever the batch size;
- values: a multi-row INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING
  RETURNING: one statement text per batch size;
- pipeline: executemany of the one-row INSERT in pipeline mode, RETURNING;
- copy: COPY into a temporary staging table, then INSERT ... SELECT from it
  ON CONFLICT DO NOTHING RETURNING.

    .venv/bin/python bench/pg_insert.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH.parent))

import psycopg  # noqa: E402
from pg_cluster import ROLE_PASSWORD, remove_cluster, start_cluster  # noqa: E402

from dlrd import pgsql  # noqa: E402

COLUMNS = pgsql.RECEIPT_COLUMNS
RETURNING = " ON CONFLICT DO NOTHING RETURNING id, message_id, sent_to, report, timestamp"
ROW = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
SIZES = (1, 8, 64, 512)
WORKDIR = Path("/var/tmp/dlrd-bench-multinode")


def rows(tag: str, count: int) -> list[tuple]:
    return [("2026-12-06T20:00:00.000Z", f"{tag}{n:07d}", "447009123456", 0, "2026-12-06T19:59:59Z",
             "2026-12-06T19:59:59Z", "Accepted by phone", "delivered", 1, "127.0.0.1", None, "bench")
            for n in range(count)]


def by_unnest(connection: psycopg.Connection, batch: list[tuple]) -> int:
    columns = [list(column) for column in zip(*batch)]
    return len(connection.execute(pgsql.INSERT_RECEIPTS, columns).fetchall())


def by_values(connection: psycopg.Connection, batch: list[tuple]) -> int:
    statement = f"INSERT INTO receipts ({', '.join(COLUMNS)}) VALUES " + ", ".join([ROW] * len(batch)) + RETURNING
    return len(connection.execute(statement, [value for row in batch for value in row]).fetchall())


def by_pipeline(connection: psycopg.Connection, batch: list[tuple]) -> int:
    cursor = connection.cursor()
    cursor.executemany(f"INSERT INTO receipts ({', '.join(COLUMNS)}) VALUES {ROW}{RETURNING}", batch,
                       returning=True)
    count = 0
    while True:
        count += len(cursor.fetchall())
        if not cursor.nextset():
            return count


def by_copy(connection: psycopg.Connection, batch: list[tuple]) -> int:
    connection.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS staging ON COMMIT DELETE ROWS AS "
                       f"SELECT {', '.join(COLUMNS)} FROM receipts WITH NO DATA")
    with connection.cursor().copy(f"COPY staging ({', '.join(COLUMNS)}) FROM STDIN") as copy:
        for row in batch:
            copy.write_row(row)
    return len(connection.execute(f"INSERT INTO receipts ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} "
                                  f"FROM staging{RETURNING}").fetchall())


WAYS = {"unnest": by_unnest, "values": by_values, "pipeline": by_pipeline, "copy": by_copy}


def main() -> int:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(WORKDIR)
    cluster = start_cluster()
    if cluster is None:
        sys.exit("no PostgreSQL server is installed: apt-get install postgresql")
    try:
        database = cluster.database()
        with psycopg.connect(cluster.dsn(database), password=ROLE_PASSWORD, autocommit=True) as setup:
            pgsql.migrate(setup)
        print(f"{'':<10}" + "".join(f"{f'{size} rows per batch':>24}" for size in SIZES))
        print(f"{'way':<10}" + "".join(f"{'ms/batch µs/row  cpu µs':>24}" for _ in SIZES))
        for name, insert in WAYS.items():
            cells = []
            for size in SIZES:
                batches = max(20, 2000 // size)
                with psycopg.connect(cluster.dsn(database), password=ROLE_PASSWORD, autocommit=True) as connection:
                    for warm in range(3):
                        with connection.transaction():
                            insert(connection, rows(f"W{name[0]}{size}x{warm}", size))
                    started, cpu = time.perf_counter(), time.process_time()
                    for number in range(batches):
                        batch = rows(f"{name[0]}{size}x{number}y", size)
                        with connection.transaction():
                            stored = insert(connection, batch)
                        if stored != size:
                            raise RuntimeError(f"{name}: {stored} of {size} stored")
                    seconds = (time.perf_counter() - started) / batches
                    cpu = (time.process_time() - cpu) / batches
                cells.append(f"{seconds * 1000:>8.2f} {seconds / size * 1e6:>7.0f} {cpu / size * 1e6:>7.0f}")
            print(f"{name:<10}" + "".join(f"{cell:>24}" for cell in cells))
    finally:
        remove_cluster(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
