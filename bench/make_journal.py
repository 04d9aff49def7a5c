"""Write a realistic dlrd journal for the operator-tools bench: N receipts as JSONL, like dlrd writes them.

Messages get one to three receipts each (pending, sometimes delayed, then
delivered or failed, with the built-in report codes), a few seconds to
minutes apart; arrivals are spread evenly over the last --days days, so
the last 24 hours hold 1/days of them. Message ids are a unique
hex counter growing with submission time, like the seed's 3C7D98A4
(`--random-ids` for random ones, which the unique key's index takes far
apart: the costly case); numbers come from a pool so that some receive several messages. Lines are
encoded with dlrd.journal.journal_line, ids start at 1 in arrival order,
and --files splits them into rotated files (gzipped with --gzip) plus a
final receipts.jsonl, as the daemon leaves them.

    .venv/bin/python bench/make_journal.py --out /var/tmp/dlrd-journal --rows 1000000 --files 8 --gzip

It prints one JSON line: the files, the row count, and a message id and a
number that are in the journal (for `query --message-id` / `query --to`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from dlrd.codes import BUILTIN_CODES
from dlrd.journal import JOURNAL_NAME, journal_line, rotated_name

FAILURE_CODES = [code for code in BUILTIN_CODES.values() if code.state == "failed"]
PENDING, DELAYED, DELIVERED = BUILTIN_CODES[-4], BUILTIN_CODES[-3], BUILTIN_CODES[0]
PROVIDER_ADDRESSES = ("203.0.113.10", "203.0.113.11", "198.51.100.7")
TLS_CLIENT = "CN=dlr.connection-software.example"


def receipt_story(rng: random.Random) -> list[tuple[float, object]]:
    """The receipts of one message as (seconds after submission, report code)."""
    delivered_after = rng.uniform(5, 300)
    roll = rng.random()
    if roll < 0.60:
        return [(rng.uniform(1, 4), PENDING), (delivered_after, DELIVERED)]
    if roll < 0.80:
        return [(delivered_after, DELIVERED)]
    if roll < 0.90:
        return [(rng.uniform(1, 4), PENDING), (rng.uniform(60, 600), DELAYED), (delivered_after + 600, DELIVERED)]
    return [(rng.uniform(1, 4), PENDING), (delivered_after, rng.choice(FAILURE_CODES))]


def make_events(rows: int, days: float, seed: int, now: float,
                random_ids: bool) -> list[tuple[float, str, str, object, str | None]]:
    """`rows` receipts as (arrival, message id, number, code, tls client), in arrival order.

    Message ids grow with submission time, as a provider's counter gives
    them, unless `random_ids`.
    """
    rng = random.Random(seed)
    start = now - days * 86400
    numbers = [f"447{rng.randrange(10**9):09d}" for _ in range(max(1, rows // 5))]
    messages = int(rows / 1.9 * 1.01) + 10  # 1.9 receipts a message; a few more: the stories past `now` are cut
    submissions = sorted(rng.uniform(start, now) for _ in range(messages))
    counter = 0x3C7D98A4
    seen_ids: set[str] = set()
    events = []
    for submitted in submissions:
        if random_ids:
            message_id = f"{rng.getrandbits(48):012X}"
            if message_id in seen_ids:
                continue
            seen_ids.add(message_id)
        else:
            counter += rng.randint(1, 3)
            message_id = f"{counter:X}"
        number = rng.choice(numbers)
        tls_client = TLS_CLIENT if rng.random() < 0.1 else None
        for after, code in receipt_story(rng):
            arrival = submitted + after
            if arrival < now:
                events.append((arrival, message_id, number, code, tls_client))
    events.sort(key=lambda event: event[0])
    return events[-rows:]


def stamp(instant: float, millis: bool) -> str:
    moment = datetime.fromtimestamp(instant, UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_journal(out: Path, rows: int, files: int, compress: bool, days: float, seed: int,
                  random_ids: bool = False) -> dict:
    """Write the journal files into `out` (emptied first); returns what the bench needs to know of them."""
    now = time.time()
    events = make_events(rows, days, seed, now, random_ids)
    rng = random.Random(seed + 1)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    per_file = -(-len(events) // files)
    paths = []
    for part in range(files):
        chunk = events[part * per_file:(part + 1) * per_file]
        if not chunk:
            break
        last = part == files - 1 or (part + 1) * per_file >= len(events)
        path = out / (JOURNAL_NAME if last else rotated_name(int(chunk[-1][0] * 1000) + 1))
        with open(path, "wb") as handle:
            handle.writelines(
                journal_line({
                    "id": part * per_file + n + 1, "received_at": stamp(arrival, millis=True),
                    "message_id": message_id, "sent_to": number, "report": code.code, "label": code.label,
                    "state": code.state, "final": code.final,
                    "timestamp": stamp(arrival - rng.uniform(0.2, 3), millis=False),
                    "remote_addr": rng.choice(PROVIDER_ADDRESSES), "tls_client": tls_client,
                })
                for n, (arrival, message_id, number, code, tls_client) in enumerate(chunk))
        if compress and not last:
            with open(path, "rb") as plain, gzip.open(f"{path}.gz", "wb", compresslevel=6) as packed:
                shutil.copyfileobj(plain, packed, 1024 * 1024)
            path.unlink()
            path = path.with_name(path.name + ".gz")
        paths.append(path)
    sample = events[len(events) // 2]
    last_day = sum(1 for event in events if event[0] >= now - 86400)
    return {"files": [str(path) for path in paths], "rows": len(events), "last_24h": last_day,
            "sample_message_id": sample[1], "sample_sent_to": sample[2]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory to write into (emptied first)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="receipts to write")
    parser.add_argument("--files", type=int, default=1, help="split into this many files, the last receipts.jsonl")
    parser.add_argument("--gzip", action="store_true", help="gzip the rotated files, as [journal] compress does")
    parser.add_argument("--days", type=float, default=30.0, help="arrivals spread over this many days up to now")
    parser.add_argument("--random-ids", action="store_true",
                        help="random message ids instead of a growing counter (the unique key's costly case)")
    parser.add_argument("--seed", type=int, default=13, help="random seed, for the same journal every time")
    options = parser.parse_args(argv)
    if options.rows < 1 or options.files < 1:
        parser.error("--rows and --files must be at least 1")
    summary = write_journal(options.out, options.rows, options.files, options.gzip, options.days, options.seed,
                            options.random_ids)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
