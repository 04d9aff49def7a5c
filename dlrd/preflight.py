"""What `dlrd serve` checks before it opens or binds anything, shared with `dlrd check-config`.

Both commands call check_startup, so check-config refuses exactly what
serve would refuse, with the same line and exit code. Nothing here creates
or changes the database or the journal: writability is proven by creating
and removing an empty temporary file beside them, because os.access says
yes to root even on a read-only mount or an immutable file.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import sys
import tempfile
from pathlib import Path

from dlrd.config import DATABASE_NAME, Config
from dlrd.errors import StartupError
from dlrd.journal import JOURNAL_NAME
from dlrd.store import SCHEMA_VERSION
from dlrd.tls import build_server_context, certificate_files, check_certificate_dates

SQLITE_HEADER = b"SQLite format 3\x00"
USER_VERSION_OFFSET = 60  # sqlite.org/fileformat.html §1.3: the header's 4-byte big-endian user version
CAP_NET_BIND_SERVICE = 10  # linux/capability.h
UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
STATE_DIRECTORY_HINT = "systemd: StateDirectory=dlrd"
LOGS_DIRECTORY_HINT = "systemd: LogsDirectory=dlrd"


def check_startup(config: Config, binds: bool = True) -> list[str]:
    """Refuse with StartupError what serve could not start with; return the warnings serve logs at start.

    The order is serve's own: the database, the journal, the certificate, then the listeners.
    A port another process holds is not checked: check-config runs beside
    the live daemon, whose own ports would then always look taken.
    """
    warnings = []
    if config["storage", "backend"] == "postgresql":
        from dlrd import pgsql

        pgsql.require_psycopg()
        pgsql.password(config)  # a password file dlrd cannot read is refused now, not at the first reconnect
        if config["storage", "password_credential"] and "CREDENTIALS_DIRECTORY" not in os.environ:
            warnings.append(pgsql.CREDENTIAL_OUTSIDE_SYSTEMD)
    else:
        check_database(config.database_path)
    check_journal(config.journal_dir)
    warnings += check_certificates(config)
    if binds:  # not under socket activation, where systemd bound the sockets
        check_addresses(config)
        check_ports(config)
    return warnings


def check_database(path: Path) -> None:
    """The database file is SQLite (or absent, or empty) and writable, and its directory takes new files.

    SQLite writes `-wal` and `-shm` files beside the database, so the
    directory must be writable even when the file already exists.
    """
    key = "[storage] database"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise StartupError(f"{key}: {path} is a directory; name the database file, like {path / DATABASE_NAME}")
    if mode is not None and not stat.S_ISREG(mode):
        raise StartupError(f"{key}: {path} is not a regular file; name the database file, like "
                           f"{path.parent / DATABASE_NAME}")
    _check_directory(key, path.parent, STATE_DIRECTORY_HINT)
    if mode is None:
        return
    for existing in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if existing.exists():
            _check_writable_file(key, existing, STATE_DIRECTORY_HINT)
    try:
        with open(path, "rb") as handle:
            header = handle.read(USER_VERSION_OFFSET + 4)
    except OSError as error:
        raise StartupError(f"{key}: cannot read {path} as {_user()}: {_remedy(error, STATE_DIRECTORY_HINT)}") from None
    if header and not header.startswith(SQLITE_HEADER):
        raise StartupError(f"{key}: {path} is not an SQLite database; point [storage] database at dlrd's "
                           "database, or move that file away and dlrd creates a new one")
    # Read from the file's header, not through SQLite, so that nothing (not even a -shm file) is created.
    # A version still in the -wal file is not seen here; versions only grow, so this never refuses wrongly.
    version = int.from_bytes(header[USER_VERSION_OFFSET:USER_VERSION_OFFSET + 4], "big")
    if version > SCHEMA_VERSION:
        raise StartupError(f"{key}: {path} has schema version {version}, newer than this dlrd "
                           f"({SCHEMA_VERSION}); run the newer dlrd or restore a backup")


def check_journal(directory: Path) -> None:
    """The journal directory takes new files (rotation renames and compresses there) and receipts.jsonl appends."""
    key = "[journal] directory"
    _check_directory(key, directory, LOGS_DIRECTORY_HINT)
    journal = directory / JOURNAL_NAME
    if journal.is_dir():
        raise StartupError(f"{key}: {journal} is a directory; move it away so dlrd can write its journal there")
    if journal.exists():
        _check_writable_file(key, journal, LOGS_DIRECTORY_HINT)


def check_certificates(config: Config) -> list[str]:
    """Load the certificate and key as serve does; refuse an expired one, warn of one that ends soon."""
    if not config["server", "tls_cert"]:  # set without tls_listen only under socket activation
        return []
    files = certificate_files(config)
    build_server_context(files)
    warning = check_certificate_dates(files.cert)
    return [warning] if warning else []


def check_addresses(config: Config) -> None:
    """Every listen host resolves to an address of this machine: bound with port 0, so no port is taken."""
    for key in ("listen", "tls_listen"):
        for host, port in config["server", key]:
            try:
                infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except socket.gaierror as error:
                raise StartupError(f"[server] {key}: cannot resolve {host!r} ({error.strerror}); "
                                   "name an address of this machine, or 0.0.0.0 for all") from None
            for family, _type, _proto, _name, sockaddr in infos:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    try:
                        probe.bind((sockaddr[0], 0, *sockaddr[2:]))
                    except OSError as error:
                        remedy = ("it is not an address of this machine (`ip -brief address` lists them)"
                                  if error.errno == errno.EADDRNOTAVAIL else error.strerror or str(error))
                        raise StartupError(f"[server] {key}: cannot listen on {host}:{port}: {remedy}; "
                                           f"change [server] {key}") from None


def check_ports(config: Config) -> None:
    """A port below the unprivileged start needs CAP_NET_BIND_SERVICE; say how to grant it.

    setcap is offered only for a frozen (PyInstaller) dlrd: an installed
    `dlrd` is a Python script, the kernel ignores file capabilities on
    scripts, and setting them on the interpreter gives every Python program
    the port.
    """
    start = unprivileged_port_start()
    setcap = f"run setcap cap_net_bind_service=+ep {sys.executable}, " if getattr(sys, "frozen", False) else ""
    for key in ("listen", "tls_listen"):
        for host, port in config["server", key]:
            if 0 < port < start and not may_bind_privileged_ports():
                raise StartupError(
                    f"[server] {key}: {host}:{port} is below port {start} and {_user()} "
                    "lacks CAP_NET_BIND_SERVICE; add AmbientCapabilities=CAP_NET_BIND_SERVICE to the unit "
                    f"(systemd/dlrd.service has it), {setcap}lower sysctl net.ipv4.ip_unprivileged_port_start, "
                    f"or listen on a port of {start} or above")


def unprivileged_port_start() -> int:
    """net.ipv4.ip_unprivileged_port_start (Linux 4.11 on; it covers IPv6 too), else the classic 1024."""
    try:
        return int(UNPRIVILEGED_PORT_START.read_text())
    except (OSError, ValueError):
        return 1024


def may_bind_privileged_ports() -> bool:
    """Whether this process holds CAP_NET_BIND_SERVICE; being root is not enough under a bounding set."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_BIND_SERVICE & 1)
    return os.geteuid() == 0


def _check_directory(key: str, directory: Path, hint: str) -> None:
    """The directory exists and takes a new file, or its nearest existing ancestor would let serve create it."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == directory:
            raise StartupError(f"{key}: {directory} is not a directory; move that file away, or name a directory")
        raise StartupError(f"{key}: {existing} is not a directory, so {directory} cannot be created")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dlrd-check-", dir=existing)
    except OSError as error:
        if existing == directory:
            raise StartupError(f"{key}: cannot create files in {directory} as {_user()}: "
                               f"{_remedy(error, hint)}") from None
        raise StartupError(f"{key}: {directory} does not exist and cannot be created in {existing} as {_user()}: "
                           f"{_remedy(error, hint)}") from None
    os.close(fd)
    os.unlink(probe)


def _check_writable_file(key: str, path: Path, hint: str) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
    except OSError as error:
        raise StartupError(f"{key}: cannot write {path} as {_user()}: {_remedy(error, hint)}") from None


def _remedy(error: OSError, hint: str) -> str:
    """The reason, and what to do about the two an operator meets: permissions and a read-only mount."""
    reason = error.strerror or str(error)
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"{reason}; make it writable by the user dlrd runs as ({hint})"
    if error.errno == errno.EROFS:
        return (f"{reason}; the file system is mounted read-only: remount it read-write, or under "
                "ProtectSystem=strict add the path to ReadWritePaths=")
    return reason


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
