"""dlrd's benchmark (issue 5 item 6): wrk against dlrd and against a stdlib baseline.

For every placement, mode and connection count it starts a fresh server with
a fresh database, runs wrk with bench/receipt.lua (a unique MessageIdentifier
per request), reads the server's peak RSS (VmHWM) and CPU time, stops it with
SIGTERM, and for dlrd checks that what wrk counted as stored is in SQLite and
in receipts.jsonl. It prints one table and the issue's targets with pass/fail,
and writes everything as JSON (--json).

Placements: "shared" leaves scheduling to the kernel (how the daemon runs in
production; wrk and the server share both cores); "split" pins the server to
CPU 0 and wrk to CPU 1. Both are run by default because the baseline's best
figure differs between them (see bench/README.md); the ceiling of a scenario
is the baseline's best over the placements measured.

    bench/run.sh                       # everything, 5 to 7 minutes
    bench/run.sh --duration 5 --placements shared --conns 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SEED = ROOT / "tests" / "envelopes" / "seed.xml"
LUA = BENCH / "receipt.lua"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024

# issue 5 item 6
TARGET_KEEPALIVE_RATIO = 0.50
TARGET_KEEPALIVE_P99_MS = 20.0
TARGET_CLOSE_RATIO = 0.70
TARGET_RSS_MB = 50.0
TARGET_MAX_MS = 1000.0
TARGET_CONNS = 16
QUIET_CORES = 0.15  # the machine counts as idle below this much CPU use by others
NOISY_CORES = 0.30  # a run during which others used more than this is repeated (--retries)


@dataclass
class Result:
    placement: str
    mode: str
    conns: int
    server: str
    duration_s: float = 0.0
    ok: int = 0
    bad: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    socket_errors: int = 0
    peak_rss_mb: float = 0.0
    server_cpu: float = 0.0  # cores used by the server during the run
    wrk_cpu: float = 0.0  # cores used by wrk
    other_cpu: float = 0.0  # cores used by anything else on the machine meanwhile (noise)
    rows: int | None = None  # dlrd: receipts in SQLite after the run
    journal_lines: int | None = None
    batches: dict[str, Any] | None = None  # from bench/dlrd_probe.py: histogram of jobs per transaction
    metrics_batch: float | None = None  # from dlrd's /metrics: committed jobs / commits during the run
    problems: list[str] = field(default_factory=list)
    wrk: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.bad + self.socket_errors


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# servers


class Server:
    """One server process under test, with its own directory and log."""

    def __init__(self, kind: str, directory: Path, cpus: set[int] | None, probe: bool) -> None:
        self.kind = kind
        self.directory = directory
        self.cpus = cpus
        self.log_path = directory / "server.log"
        self.batches_path = directory / "batches.json"
        self.database = directory / "dlrd.db"
        self.url = ""
        if kind == "baseline":
            self.argv = [PYTHON, str(BENCH / "baseline_server.py"), "--listen", "127.0.0.1:0"]
        else:
            ini = directory / "dlrd.ini"
            ini.write_text(textwrap.dedent(f"""\
                [server]
                listen = 127.0.0.1:0
                max_connections = 1024
                [storage]
                database = {self.database}
                synchronous = full
                [journal]
                directory = {directory}
                [log]
                level = warning
            """))
            program = [PYTHON, str(BENCH / "dlrd_probe.py")] if probe else [PYTHON, "-m", "dlrd"]
            self.argv = [*program, "--config", str(ini), "serve"]

    def start(self) -> None:
        env = {**os.environ, "DLRD_BENCH_BATCHES": str(self.batches_path)}
        # level = warning hides dlrd's "listening on" line: find the port from /proc instead.
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(self.argv, cwd=self.directory, stdout=log_file, stderr=log_file,
                                            env=env, preexec_fn=self._pin)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log()}")
            port = listening_port(self.process.pid)
            if port and self._healthy(f"http://127.0.0.1:{port}"):
                self.url = f"http://127.0.0.1:{port}/"
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not become healthy in 30 s:\n{self.log()}")

    def _pin(self) -> None:
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)

    @staticmethod
    def _healthy(base: str) -> bool:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(match.group(1)) / 1024 if match else 0.0

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def listening_port(pid: int) -> int | None:
    """The TCP port a process listens on, from /proc/net/tcp and its socket inodes."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # state LISTEN
                return int(parts[1].split(":")[1], 16)
    except OSError:
        return None
    return None


def scrape(url: str) -> dict[str, float]:
    """dlrd's /metrics as {name: value} for unlabelled samples (empty if there is no such endpoint)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
            try:
                values[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return values


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    numbers = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(numbers[:8])  # user nice system idle iowait irq softirq steal
    return total - numbers[3] - numbers[4], total


def wait_quiet(limit: float, threshold: float = QUIET_CORES) -> float:
    """Wait up to `limit` seconds until the machine is idle (other programs skew a benchmark); returns busy cores."""
    deadline = time.monotonic() + limit
    while True:
        before, _ = machine_cpu()
        time.sleep(1.0)
        after, _ = machine_cpu()
        busy = (after - before) / CLK_TCK
        if busy < threshold or time.monotonic() >= deadline:
            return busy


# wrk


def run_wrk(url: str, mode: str, conns: int, duration: float, threads: int, cpus: set[int] | None,
            tag: str) -> tuple[dict[str, Any], float, str]:
    argv = ["wrk", f"-t{min(threads, conns)}", f"-c{conns}", f"-d{int(duration)}s", "--timeout", "10s",
            "-s", str(LUA)]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    argv += [url, "--", str(SEED), tag]

    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, preexec_fn=pin)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode(errors="replace")
    match = re.search(r"^BENCH_JSON (\{.*\})$", text, re.M)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{text}")
    return json.loads(match.group(1)), usage.ru_utime + usage.ru_stime, text


# checks


def sample_receipt(url: str) -> str | None:
    """One receipt the provider's way (dlrd send-test's code): Report 0 and the id echoed."""
    from dlrd.sendtest import build_envelope, post_envelope

    message_id = "SAMPLE" + str(int(time.time() * 1000) % 10**9)
    result = post_envelope(url, build_envelope(message_id))
    if not result.accepted:
        return f"sample receipt not accepted: HTTP {result.status} {result.body[:200]!r}"
    if result.parsed is None or result.parsed.message_id != message_id:
        return f"sample receipt: MessageIdentifier not echoed ({result.parsed})"
    return None


def check_storage(server: Server, result: Result, sampled: int) -> None:
    with sqlite3.connect(f"file:{server.database}?mode=ro", uri=True) as connection:
        rows, distinct = connection.execute("SELECT count(*), count(DISTINCT message_id) FROM receipts").fetchone()
        quarantined = connection.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    connection.close()
    journal = server.directory / "receipts.jsonl"
    lines = sum(1 for _ in journal.open("rb")) if journal.exists() else 0
    result.rows, result.journal_lines = rows, lines
    stored = rows - sampled
    # wrk stops with up to one request per connection in flight: committed, never counted.
    if not result.ok <= stored <= result.ok + result.conns:
        result.problems.append(f"{stored} receipts stored but wrk counted {result.ok} answered Report 0")
    if distinct != rows:
        result.problems.append(f"{rows - distinct} duplicate MessageIdentifiers stored")
    if quarantined:
        result.problems.append(f"{quarantined} requests quarantined")
    if lines != rows:
        result.problems.append(f"receipts.jsonl has {lines} lines for {rows} receipts")
    if rows == 0:
        result.problems.append("nothing stored")


# one scenario


def run_scenario(kind: str, placement: str, mode: str, conns: int, options: argparse.Namespace,
                 workdir: Path, tag: str) -> Result:
    server_cpus, wrk_cpus = ({0}, {1}) if placement == "split" else (None, None)
    directory = workdir / f"{placement}-{mode}-{conns}-{kind}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    server = Server(kind, directory, server_cpus, probe=options.probe)
    server.start()
    result = Result(placement, mode, conns, kind)
    try:
        sampled = 0
        if kind == "dlrd":
            problem = sample_receipt(server.url)
            sampled = 1
            if problem:
                result.problems.append(problem)
        metrics_before = scrape(server.url) if kind == "dlrd" else {}
        cpu_before = server.cpu_seconds()
        busy_before, _ = machine_cpu()
        stats, wrk_cpu, _ = run_wrk(server.url, mode, conns, options.duration, options.threads, wrk_cpus, tag)
        busy_after, _ = machine_cpu()
        server_cpu = server.cpu_seconds() - cpu_before
        machine_busy = (busy_after - busy_before) / CLK_TCK
        metrics_after = scrape(server.url) if kind == "dlrd" else {}
        result.peak_rss_mb = server.peak_rss_mb()
    finally:
        code = server.stop()
    if code != 0:
        result.problems.append(f"{kind} exited with {code} after SIGTERM: {server.log()[-500:]}")
    seconds = stats["duration_s"]
    result.wrk = stats
    result.duration_s = seconds
    result.ok, result.bad = stats["ok"], stats["bad"]
    result.rps = stats["ok"] / seconds
    result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms = (
        stats["p50_ms"], stats["p90_ms"], stats["p99_ms"], stats["max_ms"])
    result.socket_errors = sum(stats[name] for name in ("err_connect", "err_read", "err_write", "err_timeout"))
    result.server_cpu = server_cpu / seconds
    result.wrk_cpu = wrk_cpu / seconds
    result.other_cpu = max(0.0, (machine_busy - server_cpu - wrk_cpu) / seconds)
    commits = metrics_after.get("dlrd_commits_total", 0) - metrics_before.get("dlrd_commits_total", 0)
    if commits > 0:
        jobs = metrics_after["dlrd_committed_jobs_total"] - metrics_before["dlrd_committed_jobs_total"]
        result.metrics_batch = jobs / commits
    if result.bad:
        result.problems.append(f"{result.bad} answers were not 200 with Report 0, e.g. {stats['sample_bad'][:200]!r}")
    if result.socket_errors:
        result.problems.append(f"wrk socket errors: connect {stats['err_connect']}, read {stats['err_read']}, "
                               f"write {stats['err_write']}, timeout {stats['err_timeout']}")
    if kind == "dlrd":
        check_storage(server, result, sampled)
        if server.batches_path.exists():
            result.batches = json.loads(server.batches_path.read_text())
    if not options.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return result


# report


def ceiling(results: list[Result], mode: str, conns: int) -> Result | None:
    candidates = [r for r in results if r.server == "baseline" and r.mode == mode and r.conns == conns]
    return max(candidates, key=lambda r: r.rps, default=None)


def find(results: list[Result], server: str, placement: str, mode: str, conns: int) -> Result | None:
    for result in results:
        if (result.server, result.placement, result.mode, result.conns) == (server, placement, mode, conns):
            return result
    return None


def batch_text(result: Result) -> str:
    """Mean receipts per commit during the run (dlrd's /metrics, else the probe) and the largest batch seen."""
    probe = result.batches if result.batches and result.batches.get("transactions") else None
    mean = result.metrics_batch if result.metrics_batch is not None else probe["mean"] if probe else None
    if mean is None:
        return ""
    return f"{mean:.1f} / {probe['max']}" if probe else f"{mean:.1f}"


def render_table(results: list[Result]) -> str:
    header = ("| placement | mode | conns | server | receipts/s | p50 ms | p99 ms | max ms | errors | peak RSS MB "
              "| server CPU | others' CPU | dlrd/baseline | dlrd/ceiling | commit batch mean / max |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        ratio = ratio_ceiling = batch = ""
        if r.server == "dlrd":
            base = find(results, "baseline", r.placement, r.mode, r.conns)
            best = ceiling(results, r.mode, r.conns)
            ratio = f"{r.rps / base.rps:.0%}" if base and base.rps else ""
            ratio_ceiling = f"{r.rps / best.rps:.0%}" if best and best.rps else ""
            batch = batch_text(r)
        lines.append(
            f"| {r.placement} | {r.mode} | {r.conns} | {r.server} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.max_ms:.1f} | {r.errors} | {r.peak_rss_mb:.1f} | {r.server_cpu:.2f} | {r.other_cpu:.2f} "
            f"| {ratio} | {ratio_ceiling} | {batch} |")
    return "\n".join(lines)


def _ceiling_row(results: list[Result], result: Result | None, scenario: str,
                 target: float) -> tuple[str, str, bool] | None:
    """(target, measured, passed) for `result` against its scenario's ceiling; None if either is missing."""
    best = ceiling(results, result.mode, result.conns) if result else None
    if result is None or best is None:
        return None
    ratio = result.rps / best.rps
    return (f"{scenario}: >= {target:.0%} of the ceiling",
            f"{result.rps:,.0f} / {best.rps:,.0f} ({best.placement}) = {ratio:.0%}", ratio >= target)


def verdicts(results: list[Result], placements: list[str]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, passed) for every target of issue 5 item 6, per placement of dlrd."""
    rows: list[tuple[str, str, bool | None]] = []
    for placement in placements:
        ka = find(results, "dlrd", placement, "keepalive", TARGET_CONNS)
        ka_row = _ceiling_row(results, ka, f"[{placement}] keep-alive, {TARGET_CONNS} conns", TARGET_KEEPALIVE_RATIO)
        if ka and ka_row:
            rows.append(ka_row)
            rows.append((f"[{placement}] keep-alive, {TARGET_CONNS} conns: p99 < 20 ms", f"{ka.p99_ms:.2f} ms",
                         ka.p99_ms < TARGET_KEEPALIVE_P99_MS))
        for conns in sorted({r.conns for r in results}):
            close = find(results, "dlrd", placement, "close", conns)
            close_row = _ceiling_row(results, close, f"[{placement}] new connection per receipt, {conns} conns",
                                     TARGET_CLOSE_RATIO)
            if close_row:
                rows.append(close_row)
        at64 = [r for r in results if r.server == "dlrd" and r.placement == placement and r.conns == 64]
        if at64:
            peak = max(r.peak_rss_mb for r in at64)
            rows.append((f"[{placement}] peak RSS at 64 conns < 50 MB", f"{peak:.1f} MB", peak < TARGET_RSS_MB))
        mine = [r for r in results if r.server == "dlrd" and r.placement == placement]
        if mine:
            slowest = max(mine, key=lambda r: r.max_ms)
            rows.append((f"[{placement}] no request slower than 1 s",
                         f"max {slowest.max_ms:.1f} ms ({slowest.mode}, {slowest.conns} conns)",
                         slowest.max_ms < TARGET_MAX_MS))
            failed = [r for r in mine if r.problems]
            rows.append((f"[{placement}] every answer 200 + Report 0, SQLite rows and JSONL lines match wrk",
                         "ok" if not failed else "; ".join(f"{r.mode}/{r.conns}: {p}" for r in failed
                                                          for p in r.problems),
                         not failed))
    return rows


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
            f"{subprocess.run(['wrk', '--version'], capture_output=True, text=True).stdout.split(' [')[0]}")


def dlrd_revision() -> str:
    """The commit dlrd ran from, and whether dlrd/ had uncommitted changes (others may be editing it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "dlrd"], cwd=ROOT).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"dlrd at {head}" + (" with uncommitted changes in dlrd/" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--conns", default="1,16,64", help="connection counts (default 1,16,64)")
    parser.add_argument("--modes", default="keepalive,close", help="keepalive and/or close")
    parser.add_argument("--servers", default="baseline,dlrd", help="baseline and/or dlrd")
    parser.add_argument("--placements", default="shared,split", help="shared and/or split (see the docstring)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: leave the CPU to the server)")
    parser.add_argument("--workdir", default="/var/tmp/dlrd-bench",
                        help="where databases go; keep it on a real disk (not tmpfs) so fsync costs what it costs")
    parser.add_argument("--json", default=str(BENCH / "results" / "latest.json"), help="write results here")
    parser.add_argument("--probe", action="store_true",
                        help="run dlrd through bench/dlrd_probe.py to record the largest commit batch and a histogram "
                             "(the mean comes from dlrd's /metrics either way)")
    parser.add_argument("--budget", type=float, default=420,
                        help="seconds after which quiet waits and repeats are skipped to finish in time (default 420)")
    parser.add_argument("--quiet-wait", type=float, default=20,
                        help="before each run, wait up to this many seconds for other programs to go idle (default 20)")
    parser.add_argument("--retries", type=int, default=1,
                        help="repeat a run during which other programs used the CPU, this many times (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep each run's database and logs")
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed; run bench/run.sh, which installs it")
    conns = [int(c) for c in options.conns.split(",")]
    modes = options.modes.split(",")
    servers = options.servers.split(",")
    placements = options.placements.split(",")
    if "split" in placements and len(os.sched_getaffinity(0)) < 2:
        parser.error("the split placement needs 2 CPUs")
    workdir = Path(options.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # A tag per run keeps MessageIdentifiers unique across runs too.
    tag = "".join("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(int(time.time()) // 36**i) % 36] for i in (2, 1, 0))

    host = machine()
    revision = dlrd_revision()
    log(f"# {host}; {revision}")
    results: list[Result] = []
    started = time.monotonic()
    for placement in placements:
        for mode in modes:
            for count in conns:
                for kind in servers:
                    late = time.monotonic() - started > options.budget
                    for attempt in range(options.retries if late else 0, options.retries + 1):
                        busy = wait_quiet(0 if late else options.quiet_wait)
                        if busy >= QUIET_CORES:
                            log(f"warning: the machine is busy with other work ({busy:.2f} cores); running anyway")
                        result = run_scenario(kind, placement, mode, count, options, workdir, tag)
                        if result.other_cpu <= NOISY_CORES or attempt == options.retries:
                            break
                        log(f"{placement} {mode} c={count} {kind}: other programs used {result.other_cpu:.2f} cores "
                            "meanwhile; running it again")
                    results.append(result)
                    batch = f", batch {batch_text(result)}" if batch_text(result) else ""
                    log(f"{placement:6} {mode:9} c={count:<3} {kind:8} {result.rps:8,.0f}/s  p50 {result.p50_ms:7.2f}"
                        f"  p99 {result.p99_ms:7.2f}  max {result.max_ms:7.1f} ms  errors {result.errors}"
                        f"  RSS {result.peak_rss_mb:5.1f} MB  cpu {result.server_cpu:.2f} wrk {result.wrk_cpu:.2f}"
                        f" other {result.other_cpu:.2f}{batch}"
                        + (f"  PROBLEMS: {result.problems}" if result.problems else ""))
    elapsed = time.monotonic() - started

    print(f"\nMachine: {host}\n{revision}; {options.duration:g} s per run, wrk -t{options.threads}, "
          f"whole bench {elapsed:.0f} s\n")
    print(render_table(results))
    noisy = [r for r in results if r.other_cpu > NOISY_CORES]
    if noisy:
        print(f"\nWarning: other programs used more than {NOISY_CORES} cores during {len(noisy)} run(s) "
              "(others' CPU column); those figures understate what the machine can do.")
    print("\nTargets (issue 5 item 6, synchronous=FULL, every 200 after its commit):\n")
    for target, measured, passed in verdicts(results, placements):
        mark = "PASS" if passed else "FAIL"
        print(f"- {mark}  {target}: {measured}")
    if options.json:
        path = Path(options.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        report = {"machine": host, "revision": revision, "duration_s": options.duration, "threads": options.threads,
                  "elapsed_s": elapsed, "results": [asdict(r) for r in results]}
        path.write_text(json.dumps(report, indent=1))
    return 0 if all(not r.problems for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
