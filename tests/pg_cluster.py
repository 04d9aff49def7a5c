"""A private PostgreSQL cluster for the tests: initdb and pg_ctl on a temporary directory and a free port.

PostgreSQL refuses to run as root, and CI runs as root: there the cluster
belongs to the `postgres` user Debian's package creates (or `nobody`), and
every pg_ctl call runs as that user. Clients connect over TCP with a
password (scram-sha-256), as a dlrd node on another machine would.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

ROLE = "dlrd"
ROLE_PASSWORD = "dlrd-test-password"


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian keeps them out of PATH)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parts[-3]))
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    """A running cluster; `database()` makes a fresh database owned by the dlrd role for one test."""

    bin: Path
    directory: Path
    port: int
    owner: str | None  # the user the server runs as when the tests run as root

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def _as_owner(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", self.owner, "--", *command] if self.owner else command

    def pg_ctl(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), *arguments]),
                              capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        self.pg_ctl("-w", "-t", "60", "-l", str(self.directory / "server.log"), "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-w", "-t", "60", "-m", mode, "stop")

    def psql(self, statement: str, database: str = "postgres") -> str:
        result = subprocess.run(
            self._as_owner([str(self.bin / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                            "-h", str(self.directory), "-p", str(self.port), "-U", "postgres", "-d", database,
                            "-c", statement]),
            capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={database} user={ROLE}"


def start_cluster() -> Cluster | None:
    """initdb and start a cluster, or None when no PostgreSQL server is installed."""
    binaries = server_binaries()
    if binaries is None:
        return None
    owner = None
    if os.geteuid() == 0:
        owner = "postgres"
        try:
            pwd.getpwnam(owner)
        except KeyError:
            owner = "nobody"
    directory = Path(tempfile.mkdtemp(prefix="dlrd-pg-"))
    cluster = Cluster(binaries, directory, _free_port(), owner)
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    password_file = directory / "superuser-password"
    password_file.write_text("unused-superuser-password\n")
    if owner:
        os.chown(password_file, pwd.getpwnam(owner).pw_uid, -1)
    subprocess.run(cluster._as_owner([str(binaries / "initdb"), "-D", str(cluster.data), "-U", "postgres",
                                      "--auth-local=trust", "--auth-host=scram-sha-256",
                                      f"--pwfile={password_file}", "-E", "UTF8", "--locale=C.UTF-8"]),
                   capture_output=True, text=True, check=True, timeout=300)
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write(f"port = {cluster.port}\nlisten_addresses = '127.0.0.1'\n"
                   f"unix_socket_directories = '{directory}'\nsynchronous_commit = on\nfsync = on\n"
                   "max_connections = 200\nshared_buffers = 128MB\n")
    cluster.start()
    cluster.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
    return cluster


def remove_cluster(cluster: Cluster) -> None:
    cluster.pg_ctl("-w", "-m", "immediate", "stop", check=False)
    shutil.rmtree(cluster.directory, ignore_errors=True)
