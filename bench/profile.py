"""Profile dlrd under wrk load with py-spy and print where each thread's time goes.

    python3 -m venv /tmp/spy && /tmp/spy/bin/pip install py-spy      # once
    .venv/bin/python bench/profile.py --py-spy /tmp/spy/bin/py-spy --mode keepalive --conns 16

It starts dlrd on a fresh database the way bench/run.py does, runs wrk with
bench/receipt.lua, and samples the daemon with `py-spy record --threads`,
twice over if --idle is given: on-CPU samples show what costs CPU; with
idle samples included, the waits (fsync, queue, epoll, the GIL) show too.
The summary lists, per thread, the lines with the most samples (self) and
the dlrd functions with the most samples below them (inclusive).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from run import MODES, Server, run_wrk

TOP = 18
POOL_THREAD = re.compile(r"(dlrd-request)-\d+")


def summarise(raw: Path) -> str:
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():  # a thread sampled with no Python frame
            continue
        frames = stack.split(";")
        # The request threads of the pool (dlrd-request-1, -2, ...) do the same work: one summary for them all.
        thread = POOL_THREAD.sub(r"\1-*", frames[0].split(": ", 1)[-1])
        samples = int(count)
        totals[thread] += samples
        own[thread][frames[-1]] += samples
        for frame in set(frames[1:]):
            if "dlrd/" in frame:
                inclusive[thread][frame.split(" (")[0]] += samples
    out = []
    for thread, total in totals.most_common():
        out.append(f"\n== thread {thread}: {total} samples")
        out.append("  self:")
        out += [f"    {n / total:6.1%}  {frame}" for frame, n in own[thread].most_common(TOP)]
        out.append("  inclusive (dlrd functions):")
        out += [f"    {n / total:6.1%}  {frame}" for frame, n in inclusive[thread].most_common(TOP)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy program")
    parser.add_argument("--mode", choices=tuple(MODES), default="keepalive")
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--duration", type=int, default=8, help="seconds of load (py-spy samples all but 2)")
    parser.add_argument("--idle", action="store_true", help="include idle samples (waits) as well")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--split", action="store_true", help="pin dlrd to CPU 0 and wrk to CPU 1 (run.py's split)")
    parser.add_argument("--workdir", default="/var/tmp/dlrd-bench")
    options = parser.parse_args()

    directory = Path(options.workdir) / "profile"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    server = Server("dlrd", directory, {0} if options.split else None, probe=False, tls=MODES[options.mode].tls)
    server.start()
    raw = Path(tempfile.mkstemp(suffix=".txt")[1])
    try:
        result: dict[str, object] = {}

        def load() -> None:
            result["stats"], _, result["text"] = run_wrk(server.url, options.mode, options.conns, options.duration,
                                                         1, {1} if options.split else None, "PRF")

        loader = threading.Thread(target=load)
        loader.start()
        command = [options.py_spy, "record", "-p", str(server.process.pid), "-d", str(options.duration - 2),
                   "-r", str(options.rate), "--threads", "--format", "raw", "-o", str(raw), "--nonblocking"]
        if options.idle:
            command.append("--idle")
        if options.gil:
            command.append("--gil")
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        loader.join()
    finally:
        server.stop()
    stats = result.get("stats", {})
    flags = (" (idle included)" if options.idle else "") + (" (GIL holders only)" if options.gil else "")
    rate = stats.get("ok", 0) / stats.get("duration_s", 1)
    print(f"dlrd {options.mode} {options.conns} conns under py-spy{flags}: {rate:,.0f} receipts/s, "
          f"p50 {stats.get('p50_ms')} ms, p99 {stats.get('p99_ms')} ms (slowed by sampling)")
    print(summarise(raw))
    raw.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
