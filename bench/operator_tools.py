"""The operator tools at scale (issue 13, "Speed and scale"): replay --journal, query and stats on 1M receipts.

1. bench/make_journal.py writes --rows receipts (default 1M) as rotated,
   gzipped journal files plus receipts.jsonl, into the directory a daemon
   will serve from later; `dlrd replay --journal` fills an empty database
   from them: rows/s (target >= 50 000).
2. `dlrd query --message-id X` and `dlrd query --to N`: wall time of the
   command minus that of `dlrd version` (Python's and dlrd's start-up,
   measured in the same run), the best of --repeat runs (target < 50 ms).
   `dlrd stats` over the last 24 h (its default period), the same way
   (target < 1 s).
3. Peak RSS (ru_maxrss) of `dlrd query --format json > /dev/null` over
   every row, on the 1M-row database and on a 100k-row one: memory must
   stay flat (the rows stream, never a list).
4. The daemon serving the 1M-row database, with wrk's keep-alive load at 16
   connections (bench/run.py's Server and run_wrk): p99 alone, then p99
   while a `stats` and a full `query` run beside it in a loop (target: <
   10 % change), --rounds times interleaved, medians compared: one 10 s
   run's p99 moves by a third from run to run on a small VM.

    .venv/bin/python bench/operator_tools.py                 # about 5 minutes on an idle machine
    .venv/bin/python bench/operator_tools.py --rows 200000 --duration 5

Other programs using the CPU skew every figure: the script waits up to
20 s for the machine to go idle before each timed step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import run  # bench/run.py: the daemon under load (Server, run_wrk, wait_quiet, machine_cpu)

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
TARGET_ROWS_PER_S = 50_000
TARGET_QUERY_MS = 50.0
TARGET_STATS_MS = 1000.0
TARGET_P99_CHANGE = 0.10
SMALL_ROWS = 100_000


def dlrd(ini: Path, *args: str) -> list[str]:
    return [PYTHON, "-m", "dlrd", "--config", str(ini), *args]


def ini_for(directory: Path) -> Path:
    """The config of a database and journal in `directory`, as bench/run.py's Server lays them out."""
    ini = directory / "dlrd.ini"
    ini.write_text(run.dlrd_ini(run.DLRD, directory, directory / "dlrd.db", None))
    return ini


def timed(argv: list[str], stdout: int | None = subprocess.DEVNULL) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stderr) of one command; fails loudly when it does."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{stderr}")
    return wall, usage.ru_maxrss / 1024, stderr


def best_ms(argv: list[str], repeat: int) -> float:
    """The fastest of `repeat` runs: other programs on the machine only ever add time."""
    return min(timed(argv)[0] for _ in range(repeat)) * 1000


def make_journal(directory: Path, rows: int) -> dict:
    output = subprocess.run([PYTHON, str(BENCH / "make_journal.py"), "--out", str(directory), "--rows", str(rows),
                             "--files", "8", "--gzip"], capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def replay(directory: Path, journal: dict) -> tuple[float, str]:
    """Fill `directory`/dlrd.db from the journal files; returns (wall seconds, the report)."""
    ini = ini_for(directory)
    started = time.perf_counter()
    result = subprocess.run(dlrd(ini, "replay", "--journal", *journal["files"]), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0 or f"{journal['rows']:,} stored" not in result.stdout:
        raise RuntimeError(f"replay --journal failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return wall, result.stdout.strip()


class Beside:
    """`dlrd stats` and a full `dlrd query` run in a loop each, beside the daemon, while the block runs.

    `runs` counts the finished runs of each ([stats, query]), so the table
    says how much ran beside the load.
    """

    def __init__(self, ini: Path) -> None:
        self.ini = ini
        self.runs = [0, 0]
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(index, argv), daemon=True)
                         for index, argv in enumerate((("stats",), ("query", "--format", "json")))]

    def __enter__(self) -> Beside:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join()

    def _loop(self, index: int, argv: tuple[str, ...]) -> None:
        while not self._stopping.is_set():
            process = subprocess.Popen(dlrd(self.ini, *argv), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            while process.poll() is None:
                if self._stopping.wait(0.05):
                    process.terminate()
                    process.wait()
                    return
            if process.returncode != 0:
                raise RuntimeError(f"dlrd {' '.join(argv)} beside the daemon exited {process.returncode}")
            self.runs[index] += 1


def load(directory: Path, duration: float, beside: bool, tag: str) -> dict:
    """p99 of the daemon serving `directory`/dlrd.db under wrk at 16 keep-alive connections."""
    server = run.Server(run.DLRD, directory, None, probe=False)
    server.start()
    try:
        run.wait_quiet(20)
        busy_before, _ = run.machine_cpu()
        cpu_before = server.cpu_seconds()
        if beside:
            with Beside(directory / "dlrd.ini") as others:
                stats, wrk_cpu, _ = run.run_wrk(server.url, "keepalive", run.TARGET_CONNS, duration, 1, None, tag)
            runs = others.runs
        else:
            stats, wrk_cpu, _ = run.run_wrk(server.url, "keepalive", run.TARGET_CONNS, duration, 1, None, tag)
            runs = [0, 0]
        busy_after, _ = run.machine_cpu()
        server_cpu = server.cpu_seconds() - cpu_before
    finally:
        code = server.stop()
    if code != 0:
        raise RuntimeError(f"dlrd exited {code} on SIGTERM:\n{server.log()}")
    seconds = stats["duration_s"]
    everything = (busy_after - busy_before) / run.CLK_TCK
    return {"rps": stats["ok"] / seconds, "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"],
            "max_ms": stats["max_ms"], "bad": stats["bad"], "stats_runs": runs[0], "query_runs": runs[1],
            "other_cores": max(0.0, everything - server_cpu - wrk_cpu) / seconds}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/dlrd-bench/operator-tools"),
                        help="where the journals and databases go (ext4, not tmpfs: fsync costs what it costs)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="receipts in the big journal")
    parser.add_argument("--repeat", type=int, default=7, help="runs of each timed command; the fastest is kept")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs alone and beside, interleaved")
    options = parser.parse_args()
    big, small = options.workdir / "big", options.workdir / "small"
    table: list[tuple[str, str, str, str]] = []  # what, figure, target, verdict

    print(f"writing {options.rows:,} receipts with bench/make_journal.py ...", file=sys.stderr)
    journal = make_journal(big, options.rows)
    run.wait_quiet(20)
    wall, report = replay(big, journal)
    print(report)
    rate = journal["rows"] / wall
    table.append(("replay --journal, wall time of the command", f"{rate:,.0f} rows/s ({wall:.1f} s)",
                  f">= {TARGET_ROWS_PER_S:,}", verdict(rate >= TARGET_ROWS_PER_S)))
    lock = re.search(r"write lock held at most (\d+) ms", report)
    if lock:
        table.append(("replay --journal, longest write-lock hold", f"{lock.group(1)} ms", "<= ~100 ms",
                      verdict(int(lock.group(1)) <= 100)))

    ini = big / "dlrd.ini"
    run.wait_quiet(20)
    startup = best_ms([PYTHON, "-m", "dlrd", "version"], options.repeat)
    table.append(("baseline: `dlrd version` (start-up)", f"{startup:.0f} ms", "", ""))
    for name, args in (("query --message-id", ("query", "--format", "json", "--message-id",
                                               journal["sample_message_id"])),
                       ("query --to", ("query", "--format", "json", "--to", journal["sample_sent_to"]))):
        spent = best_ms(dlrd(ini, *args), options.repeat) - startup
        table.append((f"{name}, minus start-up", f"{spent:.1f} ms", f"< {TARGET_QUERY_MS:.0f} ms",
                      verdict(spent < TARGET_QUERY_MS)))
    spent = best_ms(dlrd(ini, "stats"), options.repeat) - startup
    table.append((f"stats, last 24 h ({journal['last_24h']:,} receipts), minus start-up", f"{spent:.0f} ms",
                  f"< {TARGET_STATS_MS:.0f} ms", verdict(spent < TARGET_STATS_MS)))

    small_journal = make_journal(small, SMALL_ROWS)
    replay(small, small_journal)
    run.wait_quiet(20)
    big_wall, big_rss, _ = timed(dlrd(ini, "query", "--format", "json"))
    _, small_rss, _ = timed(dlrd(small / "dlrd.ini", "query", "--format", "json"))
    table.append((f"full query --format json, peak RSS at {SMALL_ROWS // 1000}k rows", f"{small_rss:.1f} MB",
                  "", ""))
    table.append((f"full query --format json, peak RSS at {journal['rows'] // 1000}k rows "
                  f"({journal['rows'] / big_wall:,.0f} rows/s)", f"{big_rss:.1f} MB",
                  "flat (<= +10 %)", verdict(big_rss <= small_rss * 1.10)))

    tag = f"{int(time.time()) % 100000:05d}"
    alone_runs, busy_runs = [], []
    for round_number in range(options.rounds):  # interleaved: the machine's drift falls on both alike
        alone_runs.append(load(big, options.duration, beside=False, tag=f"A{round_number}{tag}"))
        busy_runs.append(load(big, options.duration, beside=True, tag=f"S{round_number}{tag}"))
    alone_p99 = statistics.median(run_["p99_ms"] for run_ in alone_runs)
    busy_p99 = statistics.median(run_["p99_ms"] for run_ in busy_runs)
    change = busy_p99 / alone_p99 - 1

    def spread(runs: list[dict]) -> str:
        others = max(run_["other_cores"] for run_ in runs)
        return ", ".join(f"{run_['p99_ms']:.1f}" for run_ in runs) + f"; others' CPU at most {others:.2f} cores"

    table.append((f"daemon, 16 keep-alive conns, alone (median of {options.rounds})",
                  f"p99 {alone_p99:.1f} ms ({spread(alone_runs)}), "
                  f"{statistics.median(run_['rps'] for run_ in alone_runs):,.0f}/s", "", ""))
    table.append((f"daemon, with stats x{sum(r['stats_runs'] for r in busy_runs)} and full query "
                  f"x{sum(r['query_runs'] for r in busy_runs)} beside",
                  f"p99 {busy_p99:.1f} ms ({spread(busy_runs)}), "
                  f"{statistics.median(run_['rps'] for run_ in busy_runs):,.0f}/s ({change:+.0%})",
                  f"< {TARGET_P99_CHANGE:.0%} change", verdict(change < TARGET_P99_CHANGE)))
    bad = sum(run_["bad"] for run_ in alone_runs + busy_runs)
    if bad:
        table.append(("answers not 200 with Report 0", str(bad), "0", "FAIL"))

    widths = [max(len(row[n]) for row in table) for n in range(4)]
    print()
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0 if all(row[3] != "FAIL" for row in table) else 1


if __name__ == "__main__":
    sys.exit(main())
