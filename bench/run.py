"""dlrd's benchmark (issues 5 and 12): wrk against dlrd, the asyncio dlrd it replaced, and a stdlib baseline.

For every placement, mode and connection count it starts a fresh server with
a fresh database, runs wrk with bench/receipt.lua (a unique MessageIdentifier
per request), reads the server's peak RSS (VmHWM) and CPU time, stops it with
SIGTERM, and for both dlrds checks that what wrk counted as stored is in
SQLite and in receipts.jsonl. It prints one table and the issue's targets with
pass/fail, and writes everything as JSON (--json).

Servers: "baseline" (bench/baseline_server.py, the ceiling of this design),
"dlrd" (the working tree: the threaded http.server design) and "asyncio"
(dlrd at --asyncio-rev, the asyncio event loop design it replaced, run from a
git worktree of that revision so that both are measured in the same run).

Modes: "keepalive", "close" (a new connection per receipt, the provider's
HTTP/1.0 way) and "tls-keepalive" (keep-alive over HTTPS, both dlrds only,
at --tls-conns connections).

Placements: "shared" leaves scheduling to the kernel (how the daemon runs in
production; wrk and the server share both cores); "split" pins the server to
CPU 0 and wrk to CPU 1. Both are run by default because the baseline's best
figure differs between them (see bench/README.md); the targets compare
within one placement.

    bench/run.sh                       # everything, 8 to 12 minutes
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
import ssl
import statistics
import subprocess
import sys
import tempfile
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

BASELINE = "baseline"
DLRD = "dlrd"
ASYNCIO = "asyncio"
SERVER_KINDS = (BASELINE, DLRD, ASYNCIO)
DLRD_KINDS = (DLRD, ASYNCIO)  # the servers that store receipts, and so get the storage checks
ASYNCIO_REV = "dbea7b8"  # the last commit of the asyncio event loop design

# issue 12's targets, each within one placement
TARGET_KEEPALIVE_RATIO = 0.50  # of the baseline, keep-alive at TARGET_CONNS
TARGET_KEEPALIVE_P99_MS = 20.0
TARGET_CLOSE_RATIO = 0.70  # of the baseline, a new connection per receipt at TARGET_CONNS
TARGET_CLOSE_1_RATIO = 0.90  # of the one-connection limit, see close_limit()
TARGET_TLS_RATIO = 0.80  # HTTPS keep-alive of plain keep-alive, at TARGET_CONNS
TARGET_RSS_MB = 50.0  # at TARGET_MANY_CONNS, either mode
TARGET_MAX_MS = 1000.0  # at TARGET_MANY_CONNS, either mode
TARGET_CONNS = 16
TARGET_MANY_CONNS = 64
QUIET_CORES = 0.15  # the machine counts as idle below this much CPU use by others
NOISY_CORES = 0.30  # a run during which others used more than this is repeated (--retries)
COMMIT_COLUMNS = ("received_at", "message_id", "sent_to", "report", "timestamp", "timestamp_raw", "label", "state",
                  "final", "remote_addr", "tls_client")


@dataclass(frozen=True)
class Mode:
    """How wrk talks to the server: over HTTPS or not, kept alive or a new connection per receipt."""

    tls: bool
    close: bool
    plain: str  # the same mode over plain HTTP, which the HTTPS figure is compared with


MODES = {
    "keepalive": Mode(tls=False, close=False, plain="keepalive"),
    "close": Mode(tls=False, close=True, plain="close"),
    "tls-keepalive": Mode(tls=True, close=False, plain="keepalive"),
    "tls-close": Mode(tls=True, close=True, plain="close"),
}


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
    exit_code: int | None = None  # after SIGTERM
    rows: int | None = None  # dlrd: receipts in SQLite after the run
    journal_lines: int | None = None
    batches: dict[str, Any] | None = None  # from bench/dlrd_probe.py: histogram of jobs per transaction
    metrics_batch: float | None = None  # from dlrd's /metrics: committed jobs / commits during the run
    problems: list[str] = field(default_factory=list)  # wrong answers, socket errors, storage mismatches
    wrk: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.bad + self.socket_errors

    @property
    def failed(self) -> bool:
        """Any correctness problem, an unclean exit included: the run's figures do not count."""
        return bool(self.problems) or self.exit_code != 0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# TLS


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA and a certificate for 127.0.0.1 it signed, as PEM files."""

    cert: Path  # the chain, leaf first
    key: Path
    ca: Path

    def client_context(self) -> ssl.SSLContext:
        """What the bench's own requests (health, metrics) trust: the throw-away CA only."""
        return ssl.create_default_context(cafile=str(self.ca))


def make_tls_files(directory: Path) -> TlsFiles:
    """Issue a certificate with trustme, so the TLS runs need no files from outside the bench."""
    import trustme

    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "ca.pem")
    files.cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.key))
    files.key.chmod(0o600)
    authority.cert_pem.write_to_path(str(files.ca))
    return files


# the asyncio dlrd


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


def asyncio_worktree(revision: str, workdir: Path) -> Path:
    """A git worktree of dlrd at `revision`, made once and reused, so the old design runs beside the new.

    It is named after the full commit, so a worktree is never moved to another
    revision under a bench that may be using it.
    """
    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    directory = workdir / f"asyncio-src-{commit[:12]}"
    if directory.exists():
        try:
            if git("rev-parse", "HEAD", cwd=directory) == commit:
                return directory
        except subprocess.CalledProcessError:
            pass
        log(f"{directory} is not a worktree at {commit[:12]}: making it again")
        shutil.rmtree(directory)
        git("worktree", "prune")
    git("worktree", "add", "--detach", str(directory), commit)
    return directory


def check_imports_from(source: Path) -> None:
    """Fail early unless PYTHONPATH=`source` makes `import dlrd` load that copy, not the editable install."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    found = subprocess.run([PYTHON, "-c", "import dlrd; print(dlrd.__file__)"], env=env, cwd=source.parent,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(source.resolve()):
        raise RuntimeError(f"with PYTHONPATH={source}, dlrd is imported from {found}")


# servers


def dlrd_ini(kind: str, directory: Path, database: Path, tls: TlsFiles | None) -> str:
    """dlrd's config for a bench run: durable commits, and room for every connection wrk opens.

    Only the new dlrd knows max_connections_per_source (all of wrk's
    connections come from 127.0.0.1); the asyncio dlrd refuses unknown keys.
    """
    lines = ["[server]"]
    if tls:
        # dlrd refuses an empty listen only when tls_listen is empty too: HTTPS only, /healthz included.
        lines += ["listen =", "tls_listen = 127.0.0.1:0", f"tls_cert = {tls.cert}", f"tls_key = {tls.key}"]
    else:
        lines += ["listen = 127.0.0.1:0"]
    lines += ["max_connections = 1024"]
    if kind == DLRD:
        lines += ["max_connections_per_source = 1024"]
    lines += ["[storage]", f"database = {database}", "synchronous = full",
              "[journal]", f"directory = {directory}",
              "[log]", "level = warning"]
    return "\n".join(lines) + "\n"


class Server:
    """One server process under test, with its own directory and log.

    `kind` is baseline, dlrd (this working tree) or asyncio (the copy of dlrd
    in `source`, a worktree of the asyncio revision).
    """

    def __init__(self, kind: str, directory: Path, cpus: set[int] | None, probe: bool, tls: bool = False,
                 source: Path | None = None) -> None:
        if kind == ASYNCIO and source is None:
            raise ValueError("the asyncio dlrd needs the worktree it runs from")
        if kind == BASELINE and tls:
            raise ValueError("the baseline speaks plain HTTP only")
        self.kind = kind
        self.directory = directory
        self.cpus = cpus
        self.source = source if kind == ASYNCIO else None
        self.log_path = directory / "server.log"
        self.batches_path = directory / "batches.json"
        self.database = directory / "dlrd.db"
        self.tls = make_tls_files(directory) if tls else None
        self.url = ""
        if kind == BASELINE:
            self.argv = [PYTHON, str(BENCH / "baseline_server.py"), "--listen", "127.0.0.1:0"]
        else:
            ini = directory / "dlrd.ini"
            ini.write_text(dlrd_ini(kind, directory, self.database, self.tls))
            program = [PYTHON, str(BENCH / "dlrd_probe.py")] if probe else [PYTHON, "-m", "dlrd"]
            self.argv = [*program, "--config", str(ini), "serve"]

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_context(self) -> ssl.SSLContext | None:
        return self.tls.client_context() if self.tls else None

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "DLRD_BENCH_BATCHES": str(self.batches_path)}
        if self.source is not None:
            # Ahead of the editable install's finder, which comes after the path entries.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source), os.environ.get("PYTHONPATH")]))
        return env

    def start(self) -> None:
        # level = warning hides dlrd's "listening on" line: find the port from /proc instead.
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(self.argv, cwd=self.directory, stdout=log_file, stderr=log_file,
                                            env=self.environment(), preexec_fn=self._pin)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log()}")
            port = listening_port(self.process.pid)
            if port and self._healthy(f"{self.scheme}://127.0.0.1:{port}"):
                self.url = f"{self.scheme}://127.0.0.1:{port}/"
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not become healthy in 30 s:\n{self.log()}")

    def _pin(self) -> None:
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)

    def _healthy(self, base: str) -> bool:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2, context=self.client_context) as answer:
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


def scrape(url: str, context: ssl.SSLContext | None = None) -> dict[str, float]:
    """dlrd's /metrics as {name: value} for unlabelled samples (empty if there is no such endpoint)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5, context=context) as answer:
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
    """wrk with receipt.lua against `url` (http:// or https://, which wrk does without checking the certificate)."""
    argv = ["wrk", f"-t{min(threads, conns)}", f"-c{conns}", f"-d{int(duration)}s", "--timeout", "10s",
            "-s", str(LUA)]
    if MODES[mode].close:
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


# the one-connection limit


def single_row_commit_seconds(workdir: Path, count: int) -> list[float]:
    """Seconds each of `count` single-row durable commits took on the bench disk, without dlrd around them.

    At one connection nothing can be batched, so every receipt pays one
    commit with its fsync on top of what the baseline pays for the request:
    the target is judged against that sum. The database is dlrd's schema
    (dlrd.store's migrations) in WAL mode with synchronous = FULL, and each
    row is one INSERT in autocommit mode, the statement dlrd commits a lone
    receipt with.
    """
    from dlrd import store

    directory = workdir / "commit-probe"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    connection = sqlite3.connect(directory / "probe.db", isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        store.migrate(connection)
        insert = (f"INSERT INTO receipts ({', '.join(COMMIT_COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in COMMIT_COLUMNS)})")
        took = []
        for n in range(count):
            row = ("2026-01-01T00:00:00.000000Z", f"C{n:09d}", "+447700900123", 0, "2026-01-01T00:00:00",
                   "2026-01-01T00:00:00", "Delivered", "delivered", 1, "127.0.0.1", None)
            started = time.perf_counter()
            connection.execute(insert, row)
            took.append(time.perf_counter() - started)
    finally:
        connection.close()
        shutil.rmtree(directory, ignore_errors=True)
    return took


def close_limit(baseline_rps: float, commit_s: float) -> float:
    """Receipts/s at one connection if dlrd cost what the baseline costs per cycle plus one durable commit."""
    return 1 / (1 / baseline_rps + commit_s)


# checks


def sample_receipt(url: str, tls: TlsFiles | None) -> str | None:
    """One receipt the provider's way (dlrd send-test's code): Report 0 and the id echoed."""
    from dlrd.sendtest import TlsOptions, build_envelope, post_envelope

    message_id = "SAMPLE" + str(int(time.time() * 1000) % 10**9)
    options = TlsOptions(cafile=str(tls.ca)) if tls else TlsOptions()
    result = post_envelope(url, build_envelope(message_id), tls=options)
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


def record_wrk(result: Result, stats: dict[str, Any]) -> None:
    """Copy wrk's figures into `result`, noting wrong answers and socket errors as problems."""
    seconds = stats["duration_s"]
    result.wrk = stats
    result.duration_s = seconds
    result.ok, result.bad = stats["ok"], stats["bad"]
    result.rps = stats["ok"] / seconds
    result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms = (
        stats["p50_ms"], stats["p90_ms"], stats["p99_ms"], stats["max_ms"])
    result.socket_errors = sum(stats[name] for name in ("err_connect", "err_read", "err_write", "err_timeout"))
    if result.bad:
        result.problems.append(f"{result.bad} answers were not 200 with Report 0, e.g. {stats['sample_bad'][:200]!r}")
    if result.socket_errors:
        result.problems.append(f"wrk socket errors: connect {stats['err_connect']}, read {stats['err_read']}, "
                               f"write {stats['err_write']}, timeout {stats['err_timeout']}")


def run_scenario(kind: str, placement: str, mode: str, conns: int, options: argparse.Namespace,
                 workdir: Path, tag: str) -> Result:
    server_cpus, wrk_cpus = ({0}, {1}) if placement == "split" else (None, None)
    directory = workdir / f"{placement}-{mode}-{conns}-{kind}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    server = Server(kind, directory, server_cpus, probe=options.probe, tls=MODES[mode].tls,
                    source=options.asyncio_source if kind == ASYNCIO else None)
    server.start()
    stores = kind in DLRD_KINDS
    result = Result(placement, mode, conns, kind)
    try:
        sampled = 0
        if stores:
            problem = sample_receipt(server.url, server.tls)
            sampled = 1
            if problem:
                result.problems.append(problem)
        metrics_before = scrape(server.url, server.client_context) if stores else {}
        cpu_before = server.cpu_seconds()
        busy_before, _ = machine_cpu()
        stats, wrk_cpu, _ = run_wrk(server.url, mode, conns, options.duration, options.threads, wrk_cpus, tag)
        busy_after, _ = machine_cpu()
        server_cpu = server.cpu_seconds() - cpu_before
        machine_busy = (busy_after - busy_before) / CLK_TCK
        metrics_after = scrape(server.url, server.client_context) if stores else {}
        result.peak_rss_mb = server.peak_rss_mb()
    finally:
        result.exit_code = server.stop()
    if result.exit_code != 0:
        log(f"{kind} exited with {result.exit_code} after SIGTERM: {server.log()[-500:]}")
    record_wrk(result, stats)
    seconds = result.duration_s
    result.server_cpu = server_cpu / seconds
    result.wrk_cpu = wrk_cpu / seconds
    result.other_cpu = max(0.0, (machine_busy - server_cpu - wrk_cpu) / seconds)
    commits = metrics_after.get("dlrd_commits_total", 0) - metrics_before.get("dlrd_commits_total", 0)
    if commits > 0:
        jobs = metrics_after["dlrd_committed_jobs_total"] - metrics_before["dlrd_committed_jobs_total"]
        result.metrics_batch = jobs / commits
    if stores:
        check_storage(server, result, sampled)
        if server.batches_path.exists():
            result.batches = json.loads(server.batches_path.read_text())
    if not options.keep:
        shutil.rmtree(directory, ignore_errors=True)
    return result


# report


def ceiling(results: list[Result], mode: str, conns: int) -> Result | None:
    """The baseline's best run of a scenario over the placements measured."""
    candidates = [r for r in results if r.server == BASELINE and r.mode == mode and r.conns == conns]
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


def percent(result: Result | None, reference: Result | None) -> str:
    """result's receipts/s as a share of reference's, or "" when either is missing."""
    if result is None or reference is None or not reference.rps:
        return ""
    return f"{result.rps / reference.rps:.0%}"


def render_table(results: list[Result]) -> str:
    header = ("| placement | mode | conns | server | receipts/s | p50 ms | p99 ms | max ms | errors | peak RSS MB "
              "| server CPU | others' CPU | of baseline | of ceiling | dlrd/asyncio | TLS/plain "
              "| commit batch mean / max |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        of_baseline = of_ceiling = of_asyncio = of_plain = ""
        if r.server != BASELINE:
            of_baseline = percent(r, find(results, BASELINE, r.placement, r.mode, r.conns))
            of_ceiling = percent(r, ceiling(results, r.mode, r.conns))
        if r.server == DLRD:
            of_asyncio = percent(r, find(results, ASYNCIO, r.placement, r.mode, r.conns))
        if MODES[r.mode].tls:
            of_plain = percent(r, find(results, r.server, r.placement, MODES[r.mode].plain, r.conns))
        lines.append(
            f"| {r.placement} | {r.mode} | {r.conns} | {r.server} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.max_ms:.1f} | {r.errors} | {r.peak_rss_mb:.1f} | {r.server_cpu:.2f} | {r.other_cpu:.2f} "
            f"| {of_baseline} | {of_ceiling} | {of_asyncio} | {of_plain} | {batch_text(r)} |")
    return "\n".join(lines)


Verdict = tuple[str, str, bool | None]  # (target, measured, passed; None: not judged, a reference is missing)


def missing(target: str, what: str) -> Verdict:
    """A target whose own run was measured but whose reference was not: said, so that it is not taken as met."""
    return (target, f"not judged: {what} was not measured in this run", None)


def ratio_verdict(target: str, result: Result, reference: Result, wanted: float, name: str) -> Verdict:
    ratio = result.rps / reference.rps
    return (f"{target}: >= {wanted:.0%} of {name}",
            f"{result.rps:,.0f} / {reference.rps:,.0f} = {ratio:.0%}", ratio >= wanted)


def throughput_verdicts(results: list[Result], placement: str, commit_s: float | None) -> list[Verdict]:
    """The rate targets of issue 12 for the new dlrd, each against a reference measured in the same placement."""
    def get(server: str, mode: str, conns: int) -> Result | None:
        return find(results, server, placement, mode, conns)

    tag, n = f"[{placement}]", TARGET_CONNS
    rows: list[Verdict] = []
    keepalive, base_keepalive = get(DLRD, "keepalive", n), get(BASELINE, "keepalive", n)
    if keepalive:
        target = f"{tag} keep-alive, {n} conns"
        rows.append(ratio_verdict(target, keepalive, base_keepalive, TARGET_KEEPALIVE_RATIO, "the baseline")
                    if base_keepalive else missing(target, "the baseline"))
        rows.append((f"{tag} keep-alive, {n} conns: p99 < {TARGET_KEEPALIVE_P99_MS:g} ms", f"{keepalive.p99_ms:.2f} ms",
                     keepalive.p99_ms < TARGET_KEEPALIVE_P99_MS))
    close, base_close = get(DLRD, "close", n), get(BASELINE, "close", n)
    if close:
        target = f"{tag} new connection per receipt, {n} conns"
        rows.append(ratio_verdict(target, close, base_close, TARGET_CLOSE_RATIO, "the baseline")
                    if base_close else missing(target, "the baseline"))
    single = get(DLRD, "close", 1)
    if single:
        rows.append(close_1_verdict(tag, single, get(BASELINE, "close", 1), commit_s))
    tls = get(DLRD, "tls-keepalive", n)
    if tls:
        target = f"{tag} keep-alive over TLS, {n} conns"
        rows.append(ratio_verdict(target, tls, keepalive, TARGET_TLS_RATIO, "plain keep-alive")
                    if keepalive else missing(target, f"dlrd's plain keep-alive at {n} conns"))
    return rows


def close_1_verdict(tag: str, single: Result, baseline: Result | None, commit_s: float | None) -> Verdict:
    """A connection per receipt at one connection, against the baseline's cycle plus one durable commit."""
    target = (f"{tag} new connection per receipt, 1 conn: >= {TARGET_CLOSE_1_RATIO:.0%} of the limit "
              "1 / (baseline cycle + one durable single-row commit)")
    if baseline is None or not baseline.rps:
        return missing(target, "the baseline")
    if commit_s is None:
        return missing(target, "the single-row commit (--commits 0)")
    limit = close_limit(baseline.rps, commit_s)
    ratio = single.rps / limit
    return (target, f"{single.rps:,.0f} / {limit:,.0f} = {ratio:.0%} (limit = 1 / (1/{baseline.rps:,.0f} + "
                    f"{commit_s * 1e6:.0f} µs))", ratio >= TARGET_CLOSE_1_RATIO)


def many_connection_verdicts(results: list[Result], placement: str) -> list[Verdict]:
    """Memory and the worst latency of the new dlrd at TARGET_MANY_CONNS connections, either mode."""
    many = [r for r in results if r.server == DLRD and r.placement == placement and r.conns == TARGET_MANY_CONNS]
    if not many:
        return []
    tag, n = f"[{placement}]", TARGET_MANY_CONNS
    fattest = max(many, key=lambda r: r.peak_rss_mb)
    slowest = max(many, key=lambda r: r.max_ms)
    return [(f"{tag} {n} conns: peak RSS < {TARGET_RSS_MB:g} MB", f"{fattest.peak_rss_mb:.1f} MB ({fattest.mode})",
             fattest.peak_rss_mb < TARGET_RSS_MB),
            (f"{tag} {n} conns: no request over 1 s", f"max {slowest.max_ms:.1f} ms ({slowest.mode})",
             slowest.max_ms < TARGET_MAX_MS)]


def correctness_verdicts(results: list[Result], placement: str) -> list[Verdict]:
    """For each dlrd measured: every answer right and stored once, and a clean exit on SIGTERM."""
    rows: list[Verdict] = []
    for kind in DLRD_KINDS:
        mine = [r for r in results if r.server == kind and r.placement == placement]
        if not mine:
            continue
        wrong = [f"{r.mode}/{r.conns}: {problem}" for r in mine for problem in r.problems]
        runs = f"ok in {len(mine)} run{'s' if len(mine) != 1 else ''}"
        rows.append((f"[{placement}] {kind}: every answer 200 + Report 0, SQLite rows and JSONL lines match wrk",
                     "; ".join(wrong) or runs, not wrong))
        unclean = [f"{r.mode}/{r.conns}: {r.exit_code}" for r in mine if r.exit_code != 0]
        rows.append((f"[{placement}] {kind}: exit 0 on SIGTERM", "; ".join(unclean) or runs, not unclean))
    return rows


def verdicts(results: list[Result], placements: list[str], commit_s: float | None) -> list[Verdict]:
    """Every target of issue 12 that the runs measured, per placement, then the correctness checks."""
    rows: list[Verdict] = []
    for placement in placements:
        rows += throughput_verdicts(results, placement, commit_s)
        rows += many_connection_verdicts(results, placement)
        rows += correctness_verdicts(results, placement)
    return rows


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, "
            f"{subprocess.run(['wrk', '--version'], capture_output=True, text=True).stdout.split(' [')[0]}")


def dlrd_revision() -> str:
    """The commit dlrd ran from, and whether dlrd/ had uncommitted changes (others may be editing it)."""
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "dlrd"], cwd=ROOT).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"dlrd at {head}" + (" with uncommitted changes in dlrd/" if dirty else "")


# the run


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--conns", default="1,16,64",
                        help="connection counts of the plain-HTTP modes (default 1,16,64)")
    parser.add_argument("--tls-conns", default=str(TARGET_CONNS),
                        help=f"connection counts of the TLS modes (default {TARGET_CONNS})")
    parser.add_argument("--modes", default="keepalive,close,tls-keepalive", help=f"any of {', '.join(MODES)}")
    parser.add_argument("--servers", default=",".join(SERVER_KINDS),
                        help="baseline, dlrd (this working tree) and/or asyncio (dlrd at --asyncio-rev)")
    parser.add_argument("--asyncio-rev", default=ASYNCIO_REV,
                        help="the asyncio dlrd's git revision, run from a worktree made in --workdir "
                             f"(default {ASYNCIO_REV})")
    parser.add_argument("--placements", default="shared,split", help="shared and/or split (see the docstring)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: leave the CPU to the server)")
    parser.add_argument("--workdir", default="/var/tmp/dlrd-bench",
                        help="where databases go; keep it on a real disk (not tmpfs) so fsync costs what it costs")
    parser.add_argument("--commits", type=int, default=200,
                        help="single-row commits timed for the one-connection limit (default 200)")
    parser.add_argument("--json", default=str(BENCH / "results" / "latest.json"), help="write results here")
    parser.add_argument("--probe", action="store_true",
                        help="run dlrd through bench/dlrd_probe.py to record the largest commit batch and a histogram "
                             "(the mean comes from dlrd's /metrics either way)")
    parser.add_argument("--budget", type=float, default=720,
                        help="seconds after which quiet waits and repeats are skipped to finish in time (default 720)")
    parser.add_argument("--quiet-wait", type=float, default=20,
                        help="before each run, wait up to this many seconds for other programs to go idle (default 20)")
    parser.add_argument("--retries", type=int, default=1,
                        help="repeat a run during which other programs used the CPU, this many times (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep each run's database and logs")
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed; run bench/run.sh, which installs it")
    options.conns = [int(c) for c in options.conns.split(",")]
    options.tls_conns = [int(c) for c in options.tls_conns.split(",")]
    options.modes = options.modes.split(",")
    options.servers = options.servers.split(",")
    options.placements = options.placements.split(",")
    for name, values, known in (("mode", options.modes, MODES), ("server", options.servers, SERVER_KINDS),
                                ("placement", options.placements, ("shared", "split"))):
        unknown = [value for value in values if value not in known]
        if unknown:
            parser.error(f"unknown {name} {', '.join(unknown)}; known: {', '.join(known)}")
    if "split" in options.placements and len(os.sched_getaffinity(0)) < 2:
        parser.error("the split placement needs 2 CPUs")
    return options


def scenarios(options: argparse.Namespace) -> list[tuple[str, str, int, str]]:
    """(placement, mode, connections, server) in the order they run; the baseline has no TLS."""
    order = []
    for placement in options.placements:
        for mode in options.modes:
            tls = MODES[mode].tls
            for count in options.tls_conns if tls else options.conns:
                for kind in options.servers:
                    if not (tls and kind == BASELINE):
                        order.append((placement, mode, count, kind))
    return order


def measure_commit(workdir: Path, count: int) -> dict[str, float] | None:
    """The median single-row durable commit on the bench disk (and its spread), or None when none was asked for."""
    if count <= 0:
        return None
    took = sorted(single_row_commit_seconds(workdir, count))
    figures = {"count": count, "median_s": statistics.median(took), "p10_s": took[len(took) // 10],
               "p90_s": took[len(took) * 9 // 10], "max_s": took[-1]}
    log(f"single-row durable commit in {workdir}: median {figures['median_s'] * 1e6:.0f} µs "
        f"(p10 {figures['p10_s'] * 1e6:.0f}, p90 {figures['p90_s'] * 1e6:.0f}, max {figures['max_s'] * 1e6:.0f}) "
        f"over {count}")
    return figures


def run_all(options: argparse.Namespace, workdir: Path, tag: str) -> list[Result]:
    """Every scenario once, or again when other programs took the CPU meanwhile (within --budget)."""
    results: list[Result] = []
    started = time.monotonic()
    for placement, mode, count, kind in scenarios(options):
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
        log(f"{placement:6} {mode:13} c={count:<3} {kind:8} {result.rps:8,.0f}/s  p50 {result.p50_ms:7.2f}"
            f"  p99 {result.p99_ms:7.2f}  max {result.max_ms:7.1f} ms  errors {result.errors}"
            f"  RSS {result.peak_rss_mb:5.1f} MB  cpu {result.server_cpu:.2f} wrk {result.wrk_cpu:.2f}"
            f" other {result.other_cpu:.2f}{batch}"
            + (f"  PROBLEMS: {result.problems}" if result.problems else "")
            + (f"  EXIT {result.exit_code}" if result.exit_code != 0 else ""))
    return results


def print_limits(results: list[Result], placements: list[str], commit: dict[str, float] | None) -> None:
    """The one-connection limit per placement, so the close/1 verdict can be checked by hand."""
    if commit is None:
        return
    print(f"\nOne durable single-row commit on the bench disk: median {commit['median_s'] * 1e6:.0f} µs "
          f"over {commit['count']:.0f} (p90 {commit['p90_s'] * 1e6:.0f} µs)")
    for placement in placements:
        base = find(results, BASELINE, placement, "close", 1)
        if base and base.rps:
            limit = close_limit(base.rps, commit["median_s"])
            print(f"[{placement}] one-connection limit = 1 / (1/{base.rps:,.0f} + {commit['median_s'] * 1e6:.0f} µs)"
                  f" = 1 / ({1e6 / base.rps:.0f} + {commit['median_s'] * 1e6:.0f} µs) = {limit:,.0f} receipts/s")


def main() -> int:
    options = parse_options()
    workdir = Path(options.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    options.asyncio_source = None
    if ASYNCIO in options.servers:
        options.asyncio_source = asyncio_worktree(options.asyncio_rev, workdir)
        check_imports_from(options.asyncio_source)
    # A tag per run keeps MessageIdentifiers unique across runs too.
    tag = "".join("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(int(time.time()) // 36**i) % 36] for i in (2, 1, 0))

    host = machine()
    revision = dlrd_revision()
    if options.asyncio_source is not None:
        revision += f"; asyncio dlrd at {git('rev-parse', '--short', 'HEAD', cwd=options.asyncio_source)}"
    log(f"# {host}; {revision}")
    started = time.monotonic()
    wait_quiet(options.quiet_wait)
    commit = measure_commit(workdir, options.commits)
    results = run_all(options, workdir, tag)
    elapsed = time.monotonic() - started

    print(f"\nMachine: {host}\n{revision}; {options.duration:g} s per run, wrk -t{options.threads}, "
          f"whole bench {elapsed:.0f} s\n")
    print(render_table(results))
    noisy = [r for r in results if r.other_cpu > NOISY_CORES]
    if noisy:
        print(f"\nWarning: other programs used more than {NOISY_CORES} cores during {len(noisy)} run(s) "
              "(others' CPU column); those figures understate what the machine can do.")
    print_limits(results, options.placements, commit)
    print("\nTargets (issue 12, synchronous=FULL, every 200 after its commit, each within one placement):\n")
    for target, measured, passed in verdicts(results, options.placements, commit["median_s"] if commit else None):
        print(f"- {'SKIP' if passed is None else 'PASS' if passed else 'FAIL'}  {target}: {measured}")
    if options.json:
        path = Path(options.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        report = {"machine": host, "revision": revision, "duration_s": options.duration, "threads": options.threads,
                  "elapsed_s": elapsed, "single_row_commit": commit, "results": [asdict(r) for r in results]}
        path.write_text(json.dumps(report, indent=1))
    return 0 if not any(r.failed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
