"""The settings table, and the one way an ini file becomes a Config.

Every key dlrd understands is a row in SETTINGS: its section, name, parser,
default and help. Loading, validation messages, `check-config`, secret
redaction and the documented `etc/dlrd.ini` all come from that table, and a
test fails when `etc/dlrd.ini` and the table disagree.
"""

from __future__ import annotations

import configparser
import grp
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrd.activation import socket_activated
from dlrd.codes import ReportCode, parse_code_row
from dlrd.errors import ConfigError

CONFIG_ENV = "DLRD_CONFIG"
DEFAULT_DATA_DIR = "dlrd-data"
DATABASE_NAME = "dlrd.db"
MAX_CREDENTIAL = 20
REDACTED = "<redacted>"  # check-config's stand-in for a secret; refused as a value, so its output reloads safely
SECTIONS = ("server", "auth", "storage", "journal", "log", "report_codes")

Address = tuple[str, int]


def parse_addresses(text: str) -> list[Address]:
    """`host:port` items, comma-separated; IPv6 hosts in brackets."""
    addresses = []
    for item in _items(text):
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", item)
        if match is None:
            raise ValueError(f"{item!r} is not host:port (use [::1]:8443 for IPv6)")
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
        if port > 65535:
            raise ValueError(f"port {port} is above 65535")
        addresses.append((host, port))
    return addresses


def parse_paths(text: str) -> list[str]:
    paths = _items(text)
    if not paths:
        raise ValueError("at least one path is needed, like /")
    for path in paths:
        if not path.startswith("/") or "?" in path or " " in path:
            raise ValueError(f"{path!r} must be a URL path starting with /")
        if path in ("/healthz", "/metrics"):
            raise ValueError(f"{path} is dlrd's own endpoint; choose another receipt path")
    return paths


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", text.strip().lower())
    if match is None:
        raise ValueError(f"must be a size like 64k or 10m, got {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_positive_size(text: str) -> int:
    size = parse_size(text)
    if size <= 0:
        raise ValueError("must be more than 0")
    return size


def parse_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*s?", text.strip().lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"must be a number of seconds above 0 like 10 or 2.5, got {text!r}")
    return float(match.group(1))


def parse_count(text: str) -> int:
    if not text.strip().isdigit() or int(text) <= 0:
        raise ValueError(f"must be a whole number above 0, got {text!r}")
    return int(text)


def parse_whole_number(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"must be a whole number, 0 or more, got {text!r}")
    return int(text)


_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


def parse_bool(text: str) -> bool:
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"must be yes or no, got {text!r}") from None


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {text!r}")
        return value

    return parse


def parse_text(text: str) -> str:
    return text.strip()


def parse_node_name(text: str) -> str:
    name = text.strip()
    if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
        raise ValueError(f"{name!r} is not a node name: letters, digits, '.', '_' and '-', up to 63, like vps1")
    return name


def parse_dsn(text: str) -> str:
    """A libpq connection string without a password: the ini is no place for a secret."""
    dsn = text.strip()
    if re.search(r"(^|\s)password\s*=|://[^/@\s]*:[^/@\s]*@|[?&]password=", dsn):
        raise ValueError("holds a password; remove it and give it with password_file or password_credential")
    return dsn


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for item in _items(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or CIDR like 192.0.2.0/24 or 2001:db8::/32") from None
    return networks


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]


@dataclass(frozen=True)
class Setting:
    """One ini key: where it lives, how it is read, and what it is for."""

    section: str
    name: str
    parse: Callable[[str], Any]
    default: str
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("server", "listen", parse_addresses, "127.0.0.1:8080",
            "Plain-HTTP listen addresses, host:port, comma-separated ([::1]:8080 for IPv6). "
            "Empty disables plain HTTP."),
    Setting("server", "tls_listen", parse_addresses, "",
            "HTTPS listen addresses, host:port, comma-separated, like 0.0.0.0:443, [::]:443. Empty disables HTTPS. "
            "Needs tls_cert."),
    Setting("server", "tls_cert", parse_text, "",
            "PEM certificate chain, leaf first (certbot's fullchain.pem). Re-read on SIGHUP."),
    Setting("server", "tls_key", parse_text, "",
            "PEM private key of tls_cert (certbot's privkey.pem). Empty: the key is in tls_cert. Re-read on SIGHUP."),
    Setting("server", "tls_client_ca", parse_text, "",
            "PEM CA bundle; when set, HTTPS clients must present a certificate it signed, and its subject is "
            "stored with each receipt. Re-read on SIGHUP. Empty: no client certificates."),
    Setting("server", "path", parse_paths, "/",
            "URL paths that accept receipts, comma-separated. Point the provider's URL at one of them."),
    Setting("server", "max_body_bytes", parse_positive_size, "64k",
            "Largest request body accepted; larger ones get 413 before they are read. A receipt is under 1k."),
    Setting("server", "request_timeout", parse_seconds, "10",
            "Seconds a client has to send a request's line and headers, and the least time it gets for the body."),
    Setting("server", "max_connections", parse_count, "256",
            "Open connections at most, TLS handshakes included, and so the most request threads dlrd runs "
            "(an idle kept-alive connection holds none); a connection past this is closed at once."),
    Setting("server", "max_connections_per_source", parse_count, "32",
            "Open connections at most from one source address (IPv6: one /64), so one host can never hold "
            "the connections the provider needs; a connection past it is closed at once."),
    Setting("server", "keepalive_timeout", parse_seconds, "15",
            "Seconds an idle kept-alive connection is held open waiting for the client's next request."),
    Setting("server", "min_body_rate", parse_positive_size, "1k",
            "Slowest request body accepted, in bytes per second (like 1k): past request_timeout, a body "
            "must keep arriving at this rate or the client gets 408 and is disconnected."),
    Setting("server", "node", parse_node_name, "",
            "This node's name, on every journal line and, with backend = postgresql, on every receipt row it "
            "stores, so that several nodes' journals can be told apart and merged. Empty: the host name."),
    Setting("server", "monitor_allow_from", parse_networks, "",
            "Source addresses or CIDRs allowed to GET /healthz and /metrics, comma-separated. Others get 403. "
            "Empty: all sources. With [auth] allow_from set too, a source in neither list is closed as it "
            "connects, before a thread or a TLS handshake is spent on it."),
    Setting("auth", "username", parse_text, "",
            "Username the provider must send (set it on the provider's Delivery Receipts page). Empty: not checked."),
    Setting("auth", "pin", parse_text, "",
            "PIN the provider must send. Prefer pin_file or pin_credential: a PIN in a file others can read draws "
            "a warning at start.",
            secret=True),
    Setting("auth", "pin_file", parse_text, "",
            "File holding the PIN (one line, mode 0600 or 0640). Use instead of pin."),
    Setting("auth", "pin_credential", parse_text, "",
            "Name of a systemd credential holding the PIN ($CREDENTIALS_DIRECTORY/<name>, from LoadCredential= "
            "in the unit). Use instead of pin."),
    Setting("auth", "allow_from", parse_networks, "",
            "Source addresses or CIDRs allowed to POST, comma-separated, IPv4 and IPv6. Others get 403 before "
            "their body is read. Empty: all sources."),
    Setting("auth", "trusted_proxies", parse_networks, "",
            "Addresses of reverse proxies (nginx) whose X-Forwarded-For header is believed for allow_from and "
            "the stored remote address. Empty: X-Forwarded-For is ignored."),
    Setting("storage", "backend", choice("sqlite", "postgresql"), "sqlite",
            "sqlite: one node, the database is the file below. postgresql: several dlrd nodes share one "
            "PostgreSQL database (dsn); needs the extra: pip install 'dlrd[postgresql]' (README \"Running more "
            "than one node\")."),
    Setting("storage", "database", parse_text, "",
            f"SQLite database file. Empty: {DATABASE_NAME} in $STATE_DIRECTORY, or in ./{DEFAULT_DATA_DIR}."),
    Setting("storage", "dsn", parse_dsn, "",
            "backend = postgresql: the database, in libpq's syntax, like host=db1 port=5432 dbname=dlrd "
            "user=dlrd sslmode=verify-full. Never the password: give it with password_file or "
            "password_credential."),
    Setting("storage", "password_file", parse_text, "",
            "backend = postgresql: a file holding the database password (one line), readable by dlrd's user "
            "alone. Empty: none, or password_credential, or libpq's own ~/.pgpass."),
    Setting("storage", "password_credential", parse_text, "",
            "backend = postgresql: the name of a systemd credential holding the password (LoadCredential= in "
            "the unit), read from $CREDENTIALS_DIRECTORY."),
    Setting("storage", "synchronous", choice("full", "normal"), "full",
            "full: SQLite syncs its write-ahead log to disk at every commit, before the 200 goes out, so every "
            "answered receipt survives a crash of dlrd and a power cut or kernel panic. normal: one disk sync "
            "fewer per commit, faster on slow disks, still safe if dlrd crashes; but a power cut or kernel "
            "panic may roll back the last commits, losing receipts the provider was told were stored and will "
            "not send again (their journal lines may then name receipts the database lost)."),
    Setting("storage", "lock_timeout", parse_seconds, "5",
            "Seconds to wait for a database locked by another program (a backup, an sqlite3 shell) before "
            "answering 503 with Retry-After; the provider then sends the receipt again."),
    Setting("storage", "commit_timeout", parse_seconds, "15",
            "Seconds a request may wait for its commit, whatever holds it up (a disk that hangs, a long "
            "queue behind a locked database), before it is answered 503 with Retry-After and its connection "
            "closed. The receipt is still stored if the commit completes later; the provider's retry then "
            "gets 200 as a duplicate."),
    Setting("storage", "quarantine_max_bytes", parse_positive_size, "64m",
            "Most the quarantine table may hold (refused requests kept for replay, bodies and their columns), "
            "like 64m. Past it, refused requests are answered as usual but not kept: counted in "
            "dlrd_quarantine_not_kept_total{reason=\"full\"} and logged once a minute. Real receipts are never "
            "refused because of it. Delete old rows to make room."),
    Setting("storage", "quarantine_rate", parse_positive_size, "1m",
            "Bytes of refused requests kept per source address (IPv6: per /64) per minute, with as much again "
            "as a burst, like 1m (about a thousand receipts). Past it, that source's refused requests are "
            "answered as usual but not kept: counted in dlrd_quarantine_not_kept_total{reason=\"rate\"} and "
            "logged once a minute, so one host cannot fill the quarantine or the log."),
    Setting("storage", "strict_match", parse_bool, "no",
            "yes: a receipt is stored only when its MessageIdentifier is in the expected_messages table (filled "
            "by `dlrd expect` or by your own program); any other is answered Report -1, \"mismatched delivery "
            "receipt\", and quarantined, so `dlrd replay --quarantine --reason strict-match` lets it in once "
            "its id is expected. Ids match exactly: case and leading zeros count."),
    Setting("journal", "directory", parse_text, "",
            f"Directory of receipts.jsonl. Empty: $LOGS_DIRECTORY, or ./{DEFAULT_DATA_DIR}."),
    Setting("journal", "fsync", parse_bool, "no",
            "yes: sync receipts.jsonl to disk after every batch of lines (one more disk sync per commit). no: "
            "the lines reach the disk within seconds; if a power cut loses the last ones, dlrd appends them "
            "again from the database at the next start. Either way a line is written only after its commit."),
    Setting("journal", "rotate_bytes", parse_size, "0",
            "Rotate receipts.jsonl before an append would take it past this size, like 100m; one write of "
            "lines is never split, so a file can pass it by one batch. 0: not by size."),
    Setting("journal", "rotate_when", choice("never", "midnight"), "never",
            "midnight: rotate receipts.jsonl at every midnight, even when no receipt comes in (an empty file "
            "is left as it is). never: not by time."),
    Setting("journal", "rotate_utc", parse_bool, "yes",
            "yes: rotate_when's midnight is midnight UTC. no: midnight in the local time zone."),
    Setting("journal", "backups", parse_whole_number, "0",
            "Rotated files kept; older ones are deleted. 0 keeps them all. A rotated file is named by the UTC "
            "time of its rotation, like receipts-20261124T221700.123Z.jsonl, so names sort by time."),
    Setting("journal", "compress", parse_bool, "no",
            "yes: gzip rotated files (receipts-<time>.jsonl.gz) in a background thread, never delaying a receipt."),
    Setting("log", "level", choice("debug", "info", "warning", "error"), "info",
            "Least severe log message written to stderr (journald under systemd)."),
    Setting("log", "access_log", parse_bool, "no",
            "Log one line per HTTP request: client, method, path, status, bytes, milliseconds."),
)

_BY_KEY = {(setting.section, setting.name): setting for setting in SETTINGS}
# Keys that moved: the old name is still read, with a warning, so an upgrade never breaks an ini.
RENAMED = {("auth", "monitor_from"): ("server", "monitor_allow_from")}


@dataclass(frozen=True)
class Config:
    """The effective settings: every key of SETTINGS, parsed, plus report-code overrides."""

    values: dict[tuple[str, str], Any]
    report_codes: dict[int, ReportCode]
    source: str | None
    warnings: tuple[str, ...] = ()

    def __getitem__(self, key: tuple[str, str]) -> Any:
        return self.values[key]

    @property
    def database_path(self) -> Path:
        return Path(self["storage", "database"])

    @property
    def journal_dir(self) -> Path:
        return Path(self["journal", "directory"])


def default_config_path(environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get(CONFIG_ENV) or None


def load_config(path: str | None, environ: dict[str, str] | None = None, read_pin: bool = True,
                serving: bool = False) -> Config:
    """Read, validate and complete a configuration; raise ConfigError on the first problem.

    read_pin=False leaves pin_file and pin_credential unread, for the
    commands a reader may run without access to the PIN. serving=True is
    serve's (and SIGHUP's) reading, the one where listeners must add up;
    the other commands get a warning instead (see _check_combinations).
    """
    env = dict(os.environ if environ is None else environ)
    label = path or "built-in defaults"
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle, source=path)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file; pass an existing file to --config or ${CONFIG_ENV}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read it: {error}") from None
        except configparser.Error as error:
            raise ConfigError(f"{path}: not a valid ini file: {_one_line(str(error))}") from None

    values: dict[tuple[str, str], Any] = {}
    for section in parser.sections():
        if section not in SECTIONS:
            raise ConfigError(f"{label} [{section}]: unknown section; known sections are {', '.join(SECTIONS)}")
        if section == "report_codes":
            continue
        for name in parser[section]:
            if (section, name) not in _BY_KEY and (section, name) not in RENAMED:
                known = ", ".join(s.name for s in SETTINGS if s.section == section)
                raise ConfigError(f"{label} [{section}] {name}: unknown key; [{section}] knows {known}")
    warnings: list[str] = []
    renamed = _renamed_keys(parser, label, warnings)
    for setting in SETTINGS:
        text = renamed.get((setting.section, setting.name))
        if text is None:
            text = parser.get(setting.section, setting.name, fallback=setting.default)
        if setting.secret and text.strip() == REDACTED:
            raise ConfigError(f"{label} [{setting.section}] {setting.name}: {REDACTED} is what check-config prints "
                              "in place of the secret; put the real one here")
        try:
            values[setting.section, setting.name] = setting.parse(text)
        except ValueError as error:
            raise ConfigError(f"{label} [{setting.section}] {setting.name}: {error}") from None

    codes: dict[int, ReportCode] = {}
    if parser.has_section("report_codes"):
        for code_text, row in parser["report_codes"].items():
            try:
                code = parse_code_row(code_text, row)
            except ValueError as error:
                raise ConfigError(f"{label} [report_codes] {code_text}: {error}") from None
            codes[code.code] = code

    _complete_paths(values, env)
    _check_combinations(values, label, socket_activated(env), serving, warnings)
    if read_pin:
        _resolve_pin(values, label, env, warnings)
    if path and parser.get("auth", "pin", fallback="").strip() and (readers := _other_readers(Path(path))):
        warnings.append(f"{label} [auth] pin: this file is readable by {readers} and holds the PIN; "
                        "move the PIN to pin_file or pin_credential (README \"Secrets and readers\")")
    return Config(values, codes, path, tuple(warnings))


def _renamed_keys(parser: configparser.ConfigParser, label: str, warnings: list[str]) -> dict[tuple[str, str], str]:
    """The values given under an old key name, by their new key; both names at once is a ConfigError."""
    values = {}
    for (section, name), (new_section, new_name) in RENAMED.items():
        if not parser.has_option(section, name):
            continue
        if parser.has_option(new_section, new_name):
            raise ConfigError(f"{label} [{section}] {name}: this is the old name of [{new_section}] {new_name}, "
                              "which is set too; keep only the new one")
        values[new_section, new_name] = parser.get(section, name)
        warnings.append(f"{label} [{section}] {name} is now [{new_section}] {new_name}; rename it (the old name "
                        "still works)")
    return values


def _complete_paths(values: dict[tuple[str, str], Any], env: dict[str, str]) -> None:
    """Fill the empty path defaults from systemd's directories or ./dlrd-data."""
    # systemd may pass several colon-separated directories; the first is ours.
    state_dir = (env.get("STATE_DIRECTORY") or DEFAULT_DATA_DIR).split(":")[0]
    logs_dir = (env.get("LOGS_DIRECTORY") or DEFAULT_DATA_DIR).split(":")[0]
    if not values["storage", "database"]:
        values["storage", "database"] = str(Path(state_dir) / DATABASE_NAME)
    if not values["journal", "directory"]:
        values["journal", "directory"] = logs_dir
    if not values["server", "node"]:
        values["server", "node"] = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:63] or "dlrd"


def _check_combinations(values: dict[tuple[str, str], Any], label: str, activated: bool, serving: bool,
                        warnings: list[str]) -> None:
    """Refuse settings that contradict each other.

    Under socket activation the socket unit says where dlrd listens, so an
    empty listen and tls_listen are fine there, and the certificate goes
    with its https socket. check-config, query and the other commands run
    from a shell, without systemd's variables, on the very ini the
    socket-activated unit reads: for them those two are warnings.
    """
    def listeners_contradict(text: str) -> None:
        if activated:
            return
        if serving:
            raise ConfigError(text)
        warnings.append(f"{text} (unless systemd/dlrd.socket hands dlrd its sockets)")

    if not values["server", "listen"] and not values["server", "tls_listen"]:
        listeners_contradict(f"{label} [server] listen: empty and tls_listen is empty too, so dlrd would listen "
                             "nowhere; give a host:port")
    if values["server", "tls_listen"] and not values["server", "tls_cert"]:
        raise ConfigError(f"{label} [server] tls_cert: tls_listen is set, so a certificate is needed "
                          "(certbot: /etc/letsencrypt/live/<name>/fullchain.pem)")
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        if values["server", key] and not values["server", "tls_listen"]:
            listeners_contradict(f"{label} [server] {key}: set, but tls_listen is empty so HTTPS is off; "
                                 "set tls_listen or remove it")
    both = {address for address in values["server", "listen"] if address[1]} & set(values["server", "tls_listen"])
    if both:
        host, port = sorted(both)[0]
        raise ConfigError(f"{label} [server] tls_listen: {host}:{port} is also in listen; one port, one protocol")
    rotating = values["journal", "rotate_bytes"] or values["journal", "rotate_when"] != "never"
    for key in ("backups", "compress"):
        if values["journal", key] and not rotating:
            raise ConfigError(f"{label} [journal] {key}: set, but the journal never rotates; "
                              "set rotate_bytes or rotate_when")
    if values["storage", "backend"] == "postgresql":
        if not values["storage", "dsn"]:
            raise ConfigError(f"{label} [storage] dsn: backend is postgresql, so dlrd needs the database to "
                              "connect to, like host=db1 dbname=dlrd user=dlrd")
        if values["storage", "password_file"] and values["storage", "password_credential"]:
            raise ConfigError(f"{label} [storage] password_credential: password_file is set too; give the "
                              "password one way")
    else:
        for key in ("dsn", "password_file", "password_credential"):
            if values["storage", key]:
                raise ConfigError(f"{label} [storage] {key}: set, but backend is sqlite; set backend = "
                                  "postgresql or remove it")
    pin_sources = [key for key in ("pin", "pin_file", "pin_credential") if values["auth", key]]
    if len(pin_sources) > 1:
        raise ConfigError(f"{label} [auth] {pin_sources[1]}: {pin_sources[0]} is set too; give the PIN one way")
    if len(values["auth", "username"]) > MAX_CREDENTIAL:
        raise ConfigError(f"{label} [auth] username: longer than the provider's {MAX_CREDENTIAL} characters")


def _resolve_pin(values: dict[tuple[str, str], Any], label: str, env: dict[str, str], warnings: list[str]) -> None:
    """Read the PIN from its file or systemd credential, so the rest of dlrd sees one value."""
    source = None
    if values["auth", "pin_file"]:
        source = Path(values["auth", "pin_file"])
        key = "pin_file"
    elif values["auth", "pin_credential"]:
        key = "pin_credential"
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(f"{label} [auth] pin_credential: $CREDENTIALS_DIRECTORY is not set; run under "
                              "systemd with LoadCredential= or use pin_file")
        source = Path(directory) / values["auth", "pin_credential"]
    if source is not None:
        try:
            values["auth", "pin"] = source.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"{label} [auth] {key}: cannot read {source}: {error.strerror or error}") from None
        if not values["auth", "pin"]:
            raise ConfigError(f"{label} [auth] {key}: {source} is empty")
        if key == "pin_file" and (readers := _other_readers(source)):
            warnings.append(f"{label} [auth] pin_file: {source} is readable by {readers}; let dlrd's user alone "
                            f"read it: chown dlrd:root {source}; chmod 400 {source}")
    if len(values["auth", "pin"]) > MAX_CREDENTIAL:
        raise ConfigError(f"{label} [auth] pin: longer than the provider's {MAX_CREDENTIAL} characters")


def _other_readers(path: Path) -> str:
    """Who besides its owner may read `path` ("" for nobody): the group dlrd is the readers' group."""
    try:
        status = path.stat()
    except OSError:
        return ""
    if status.st_mode & stat.S_IROTH:
        return "every user"
    if not status.st_mode & stat.S_IRGRP:
        return ""
    try:
        return f"the group {grp.getgrgid(status.st_gid).gr_name}"
    except KeyError:
        return f"the group {status.st_gid}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_value(setting: Setting, value: Any) -> str:
    """A parsed value written back as ini text, as check-config prints it."""
    if setting.secret and value:
        return REDACTED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        if value and isinstance(value[0], tuple):
            return ", ".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in value)
        return ", ".join(str(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render_effective(config: Config) -> str:
    """The whole effective configuration as an ini file, secrets redacted."""
    lines = [f"# effective configuration from {config.source or 'built-in defaults'}"]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        if section == "report_codes":
            for code in sorted(config.report_codes.values(), key=lambda code: code.code):
                lines.append(f"{code.code} = {code.label}, {code.state}, {'yes' if code.final else 'no'}")
            continue
        for setting in _in_section(section):
            lines.append(f"{setting.name} = {render_value(setting, config[section, setting.name])}")
    return "\n".join(lines) + "\n"


def _in_section(section: str) -> Iterable[Setting]:
    return (setting for setting in SETTINGS if setting.section == section)


def render_example() -> str:
    """The documented example ini (etc/dlrd.ini): every key, its help and its default."""
    lines = [
        "# dlrd configuration. Every key is shown commented out with its built-in",
        "# default; uncomment and change only what you need. Generated from",
        "# dlrd/config.py by `dlrd check-config --example`; a test keeps them equal.",
    ]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        if section == "report_codes":
            lines += [
                "# Add or override report codes: <code> = <label>, <state>, <final>",
                "# state is delivered, pending, failed or unknown; final is yes or no.",
                "# Unknown codes are stored with state unknown, never refused.",
                "#99 = Held for review, pending, no",
            ]
            continue
        for setting in _in_section(section):
            lines += [f"# {line}" for line in _wrap(setting.help)]
            lines.append(f"#{setting.name} = {setting.default}".rstrip())
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 76) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines
