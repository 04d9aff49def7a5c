"""The daemon as users meet it: a real `dlrd serve` process on a loopback port.

Each test gets its own data directory, ini file and log file; the daemon is
stopped with SIGTERM the way systemd stops it, and must exit 0.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from wire import wait_for

ROOT = Path(__file__).resolve().parents[1]


class PgDatabase:
    """A fresh database on the test cluster, and the ini lines that point a daemon at it."""

    def __init__(self, cluster, directory: Path) -> None:
        from pg_cluster import ROLE_PASSWORD

        self.cluster = cluster
        self.name = cluster.database()
        self.dsn = cluster.dsn(self.name)
        self.password_file = directory / "pg-password"
        self.password_file.write_text(ROLE_PASSWORD + "\n")
        self.password_file.chmod(0o600)

    def ini(self) -> str:
        return f"[storage]\nbackend = postgresql\ndsn = {self.dsn}\npassword_file = {self.password_file}\n"

    def connect(self):
        import psycopg
        from pg_cluster import ROLE_PASSWORD
        from psycopg.rows import dict_row

        return psycopg.connect(self.dsn, password=ROLE_PASSWORD, autocommit=True, row_factory=dict_row)

    def rows(self, query: str, *params: object) -> list[dict]:
        """The rows of a query written for sqlite3 (`?` placeholders), read with psycopg."""
        from dlrd.pgsql import translate

        statement, values = translate(query, params)
        with self.connect() as connection:
            cursor = connection.execute(statement, values or None)
            return [_Row(row) for row in cursor.fetchall()] if cursor.description else []


class _Row:
    """A psycopg dict row read as the tests read sqlite3.Row: by name, by position, as a tuple, or dict(row)."""

    def __init__(self, row: dict) -> None:
        self._row = row
        self._values = tuple(row.values())

    def keys(self) -> list[str]:
        return list(self._row)

    def __getitem__(self, key):
        return self._values[key] if isinstance(key, int | slice) else self._row[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class Daemon:
    """One `dlrd serve` subprocess and the files it owns; its database SQLite, or PostgreSQL when given one."""

    def __init__(self, directory: Path, postgres: PgDatabase | None = None) -> None:
        self.postgres = postgres
        self.directory = directory
        self.data = directory / "data"
        self.ini = directory / "dlrd.ini"
        self.log_path = directory / "dlrd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.urls: list[str] = []

    def config(self, extra: str = "") -> str:
        base = textwrap.dedent(f"""
            [server]
            listen = 127.0.0.1:0
            path = /, /cgi-bin/deliveryrecript.pl
            node = test-node
            [storage]
            database = {self.data / "dlrd.db"}
            [journal]
            directory = {self.data}
        """)
        if self.postgres is not None:
            base = merge_ini(base, self.postgres.ini())
        return merge_ini(base, textwrap.dedent(extra))

    def start(self, extra: str = "", env: dict[str, str] | None = None, wait: bool = True,
              preexec_fn=None, wrap: list[str] | None = None) -> Daemon:
        """Start `dlrd serve`; `wrap` is a command that execs the daemon (so its pid is dlrd's)."""
        self.ini.write_text(self.config(extra))
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed once the child holds it)
        self.process = subprocess.Popen(
            [*(wrap or []), sys.executable, "-m", "dlrd", "--config", str(self.ini), "serve"],
            cwd=self.directory, stdout=log, stderr=log, env={**os.environ, **(env or {})},
            preexec_fn=preexec_fn,
        )
        log.close()
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, count: int = 1) -> None:
        def listening() -> list[str]:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"dlrd exited with {self.process.returncode}:\n{self.log()}")
            return re.findall(r"listening on (\S+)", self.log(since_start=True))

        self.urls = wait_for(lambda: len(listening()) >= count and listening(), 20, "dlrd to listen")
        wait_for(self.healthy, 10, "/healthz to answer 200")

    @property
    def url(self) -> str:
        return self.urls[0] + "/"

    @property
    def address(self) -> tuple[str, int]:
        host, port = re.match(r"https?://\[?([^\]]+?)\]?:(\d+)$", self.urls[0]).groups()
        return host, int(port)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.urls[0] + "/healthz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def log(self, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        return data[self.log_offset if since_start else 0:].decode("utf-8", "replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def db(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.data / "dlrd.db", timeout=10)
        connection.row_factory = sqlite3.Row
        return connection

    def rows(self, query: str, *params: object) -> list[sqlite3.Row]:
        if self.postgres is not None:
            return self.postgres.rows(query, *params)
        with self.db() as connection:
            return connection.execute(query, params).fetchall()

    def journal(self) -> list[dict]:
        path = self.data / "receipts.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def journal_files(self) -> list[Path]:
        """Rotated journal files oldest first, then receipts.jsonl; read independently of dlrd's code.

        Rotated names carry a fixed-width UTC time, so sorting names sorts by
        time; a file found both plain and gzipped (caught mid-compression)
        counts once.
        """
        rotated: dict[str, Path] = {}
        for path in self.data.glob("receipts-*.jsonl*"):
            if path.name.endswith(".jsonl"):
                rotated[path.name] = path
            elif path.name.endswith(".jsonl.gz"):
                rotated.setdefault(path.name[:-3], path)
        current = self.data / "receipts.jsonl"
        return [rotated[name] for name in sorted(rotated)] + ([current] if current.exists() else [])

    def journal_all(self) -> list[dict]:
        """Every line of every journal file, in the order they were written."""
        records = []
        for path in self.journal_files():
            data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
            records += [json.loads(line) for line in data.splitlines() if line.strip()]
        return records


def merge_ini(base: str, extra: str) -> str:
    """Lay `extra`'s keys over `base`'s, section by section."""
    import configparser

    merged = configparser.ConfigParser(interpolation=None)
    merged.optionxform = str
    merged.read_string(base)
    merged.read_string(extra)
    lines = []
    for section in merged.sections():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in merged[section].items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL cluster for the session (tests/pg_cluster.py); skipped where no server is installed."""
    from pg_cluster import remove_cluster, start_cluster

    cluster = start_cluster()
    if cluster is None:
        pytest.skip("no PostgreSQL server is installed (.ci/run installs Debian's postgresql)")
    yield cluster
    remove_cluster(cluster)


@pytest.fixture
def backend() -> str:
    """The storage backend of the daemons a test starts; modules that run on both parametrize it."""
    return "sqlite"


def _postgres_for(backend: str, request, directory: Path) -> PgDatabase | None:
    if backend != "postgresql":
        return None
    return PgDatabase(request.getfixturevalue("pg_cluster"), directory)


@pytest.fixture
def daemon_factory(tmp_path: Path, backend: str, request) -> Iterator[callable]:
    """Start daemons on demand; any still running at the end must stop cleanly."""
    started: list[Daemon] = []
    postgres = _postgres_for(backend, request, tmp_path)

    def make(extra: str = "", name: str = "d", **kwargs) -> Daemon:
        daemon = Daemon(tmp_path / name, postgres)
        daemon.directory.mkdir(exist_ok=True)
        started.append(daemon)
        return daemon.start(extra, **kwargs)

    yield make
    for daemon in started:
        if daemon.process is not None:
            code = daemon.stop()
            assert code == 0, f"dlrd exited {code} on SIGTERM:\n{daemon.log()}"


@pytest.fixture
def daemon(daemon_factory) -> Daemon:
    return daemon_factory()


@pytest.fixture(scope="module")
def module_backend() -> str:
    """module_daemon's backend; modules that run on both parametrize it."""
    return "sqlite"


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory, module_backend: str, request) -> Iterator[Daemon]:
    """One daemon shared by a whole module, for tests that each bring their own MessageIdentifiers.

    Starting a daemon per case would dominate the run time of the
    parametrized wire fixtures and of the hypothesis test against a live daemon.
    """
    directory = tmp_path_factory.mktemp("module-daemon")
    daemon = Daemon(directory, _postgres_for(module_backend, request, directory))
    daemon.start()
    yield daemon
    if daemon.process is not None:
        code = daemon.stop()
        assert code == 0, f"dlrd exited {code} on SIGTERM:\n{daemon.log()}"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that other users may enter (pytest's tmp_path is root's alone), removed after."""
    directory = Path(tempfile.mkdtemp(prefix="dlrd-shared-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture(scope="session")
def binary() -> Path:
    """dist/dlrd (and dist/dlrd-dir beside it), built by packaging/build-binary.sh once per session:
    tests/test_binary.py and tests/test_deb.py share the one build."""
    import time

    started = time.monotonic()
    result = subprocess.run(["bash", str(ROOT / "packaging" / "build-binary.sh")], capture_output=True, text=True,
                            timeout=900, cwd=ROOT)
    if result.returncode == 3:  # build-binary.sh's status when PyInstaller cannot be installed
        pytest.skip(f"PyInstaller cannot be installed here: {result.stderr.strip()[-500:]}")
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nbuild-binary.sh: {time.monotonic() - started:.1f} s; {result.stdout.strip()}")
    return ROOT / "dist" / "dlrd"
