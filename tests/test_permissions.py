"""Who can read what under the shipped unit: the readers' group reads receipts, never the secrets.

Checked as far as it can be without systemd as PID 1: the unit's UMask and
directory modes are read from systemd/dlrd.service and applied to a real
`dlrd serve` (the umask through the child's start, the directories made
with the unit's modes and, as root, owned by a throwaway user as systemd
would chown them), systemd-sysusers builds its passwd and group in a
scratch root, and the README's "### Secrets and readers" commands run
line by line with throwaway users, checked with real reads by those users
(cat, gzip, /usr/bin/python3 and sqlite3, not the tests' interpreter).

The README is read from README.md, or from the file $DLRD_README names (a
draft not yet pasted in).
"""

from __future__ import annotations

import grp
import gzip
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon
from wire import post, receipt_body, wait_for

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "dlrd.service"
# Every shipped variant must keep the same modes: the recipe does not depend on which one runs.
UNITS = sorted([UNIT, *(ROOT / "systemd").glob("*/dlrd.service")])
SYSUSERS = ROOT / "systemd" / "dlrd.sysusers"
HOOK = ROOT / "systemd" / "certbot-deploy-hook"
README_ENV = "DLRD_README"
RECIPE_HEADING = "### Secrets and readers"
RUNNING_AS_ROOT = os.geteuid() == 0
NOT_ROOT = "reading as other users needs root to make them (CI runs the tests as root)"
NOBODY = 65534
RECEIPTS = 12
SEED_PIN = "BLUE.music"  # the seed envelope's, with its Username ANOther.61234
# Paths of the README's commands, moved under the test's root directory.
DOCUMENTED_PATHS = ("/etc/dlrd", "/var/lib/dlrd", "/var/log/dlrd")
ACCOUNT_NAME = re.compile(r"(?<![\w./-])(dlrd|alice)(?![\w./-])")  # the user/group dlrd and the reader alice


def service_settings(unit: Path = UNIT) -> dict[str, str]:
    """The [Service] settings of a shipped unit, the last one winning as in systemd."""
    settings: dict[str, str] = {}
    section = ""
    for line in unit.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def unit_modes(unit: Path = UNIT) -> tuple[int, int, int]:
    """UMask, StateDirectoryMode and LogsDirectoryMode of a unit (systemd's defaults where unset)."""
    settings = service_settings(unit)
    return (int(settings.get("UMask", "0022"), 8), int(settings.get("StateDirectoryMode", "0755"), 8),
            int(settings.get("LogsDirectoryMode", "0755"), 8))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("unit", UNITS, ids=[str(unit.relative_to(ROOT)) for unit in UNITS])
def test_the_unit_gives_its_group_read_and_others_nothing(unit: Path) -> None:
    settings = service_settings(unit)
    umask, state_mode, logs_mode = unit_modes(unit)

    assert settings.get("User") == settings.get("Group") == "dlrd", "the readers' group is the unit's Group="
    assert umask & 0o007 == 0o007, f"UMask={umask:04o} lets others read dlrd's files"
    assert umask & 0o020 and not umask & 0o040, f"UMask={umask:04o}: the group must read, not write"
    for name, directory_mode in (("StateDirectoryMode", state_mode), ("LogsDirectoryMode", logs_mode)):
        assert directory_mode & 0o007 == 0, f"{name}={directory_mode:04o} lets others in"
        assert directory_mode & 0o050 == 0o050, f"{name}={directory_mode:04o} keeps the group out"


def test_sysusers_makes_one_user_and_its_group(tmp_path: Path) -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()  # where it takes its passwd lock
    result = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    users = [line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()]
    groups = [line.split(":") for line in (tmp_path / "etc" / "group").read_text().splitlines()]
    (user,) = [entry for entry in users if entry[0] == "dlrd"]
    (group,) = [entry for entry in groups if entry[0] == "dlrd"]
    assert user[3] == group[2], "dlrd's primary group is the group dlrd, which the unit's files get"
    assert int(user[2]) < 1000, "a system user"
    assert user[5] == "/var/lib/dlrd"
    assert user[6].endswith("nologin")
    assert group[3] == "", "nobody reads dlrd's files until the operator adds readers"


def start_receiving(directory: Path, state: Path, logs: Path, umask: int,
                    wrap: list[str] | None = None) -> Daemon:
    """A real `dlrd serve` under the unit's umask, its database in `state` and journal in `logs`, rotating often."""
    daemon = Daemon(directory)
    directory.mkdir(exist_ok=True)
    extra = (f"[storage]\ndatabase = {state / 'dlrd.db'}\n"
             f"[journal]\ndirectory = {logs}\nrotate_bytes = 1000\ncompress = yes\n")
    return daemon.start(extra, preexec_fn=lambda: os.umask(umask), wrap=wrap)


def post_receipts(daemon: Daemon, logs: Path) -> list[str]:
    """Post RECEIPTS receipts and wait until the journal has them all and at least one rotated file is gzipped."""
    ids = [f"P{index:07X}" for index in range(RECEIPTS)]
    for message_id in ids:
        assert post(daemon.address, receipt_body(message_id)).status == 200
    wait_for(lambda: settled_ids(logs) == ids, 20, "every receipt in the journal and every rotated file gzipped")
    return ids


def settled_ids(logs: Path) -> list[str] | None:
    """The journal's ids once every rotated file is gzipped (then nothing moves: nothing more is posted)."""
    if not list(logs.glob("receipts-*.jsonl.gz")) or list(logs.glob("receipts-*.jsonl")) or list(logs.glob("*.tmp")):
        return None
    try:
        return sorted(journal_ids(logs, Path.read_bytes))
    except FileNotFoundError:
        return None


def journal_ids(logs: Path, read: Callable[[Path], bytes]) -> list[str]:
    """The message ids of every journal file, current and rotated, read with `read`."""
    ids = []
    for path in sorted(logs.glob("receipts*.jsonl*")):  # called once no file is mid-compression
        data = read(path)
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        ids += [json.loads(line)["message_id"] for line in data.splitlines() if line.strip()]
    return ids


def assert_files_have_the_units_modes(state: Path, logs: Path, umask: int) -> None:
    """dlrd's every file is 0666 minus the unit's umask (0640: the group reads it), its directories untouched."""
    expected = 0o666 & ~umask
    files = [path for path in [*state.iterdir(), *logs.iterdir()] if path.is_file()]
    names = {path.name for path in files}
    assert {"dlrd.db", "dlrd.db-wal", "dlrd.db-shm", "receipts.jsonl"} <= names, names
    assert any(name.endswith(".jsonl.gz") for name in names), names
    for path in files:
        assert mode(path) == expected, f"{path.name} is {mode(path):04o}, not {expected:04o}"


def test_dlrds_files_get_the_units_modes(shared_dir: Path) -> None:
    umask, state_mode, logs_mode = unit_modes()
    state, logs = shared_dir / "var-lib-dlrd", shared_dir / "var-log-dlrd"
    state.mkdir(mode=state_mode)
    logs.mkdir(mode=logs_mode)
    state.chmod(state_mode)  # mkdir's mode passes through the test's own umask
    logs.chmod(logs_mode)
    daemon = start_receiving(shared_dir / "run", state, logs, umask)
    try:
        post_receipts(daemon, logs)
        assert_files_have_the_units_modes(state, logs, umask)
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert (mode(state), mode(logs)) == (state_mode, logs_mode)


def throwaway_account(prefix: str) -> pwd.struct_passwd:
    name = f"{prefix}{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True, timeout=60)
    return pwd.getpwnam(name)


@pytest.fixture
def accounts() -> Iterator[tuple[pwd.struct_passwd, pwd.struct_passwd]]:
    """Real throwaway users standing in for the unit's dlrd and the README's reader alice; removed afterwards."""
    if not RUNNING_AS_ROOT:
        pytest.skip(NOT_ROOT)
    for tool in ("useradd", "userdel", "usermod", "setpriv", "runuser", "sqlite3"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    made: list[str] = []
    try:
        service = throwaway_account("dlrdsvc")
        made.append(service.pw_name)
        reader = throwaway_account("dlrdrdr")
        made.append(reader.pw_name)
        yield service, reader
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True, timeout=60)


def recipe_blocks() -> list[list[str]]:
    """The indented code blocks under README's "### Secrets and readers", up to the next heading, line by line."""
    source = Path(os.environ.get(README_ENV) or ROOT / "README.md")
    lines = source.read_text(encoding="utf-8").splitlines()
    assert RECIPE_HEADING in lines, (f"{source} has no {RECIPE_HEADING!r} section (set {README_ENV} to a draft "
                                     "holding it to test that)")
    blocks: list[list[str]] = []
    in_block = False
    for line in lines[lines.index(RECIPE_HEADING) + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("    ") and line.strip():
            if not in_block:
                blocks.append([])
                in_block = True
            blocks[-1].append(line.strip())
        elif line.strip():
            in_block = False  # prose ends a block
    return blocks


def localise(command: str, root: Path, service: str, reader: str) -> str:
    """The README's command for the test's machine: its paths under `root`, its dlrd and alice the throwaways."""
    for documented in DOCUMENTED_PATHS:
        command = command.replace(documented, f"{root}{documented}")
    return ACCOUNT_NAME.sub(lambda match: service if match.group(1) == "dlrd" else reader, command)


def as_user(account: pwd.struct_passwd, *command: str) -> subprocess.CompletedProcess[bytes]:
    """`command` run as `account` with the groups /etc/group gives it now, as at its next login."""
    return subprocess.run(["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups",
                           *command], capture_output=True, timeout=60)


def as_nobody(*command: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
                          capture_output=True, timeout=60)


def install_certificate(root: Path, service: pwd.struct_passwd) -> Path:
    """The real deploy hook installs a key into root/etc/dlrd/tls, as certbot's first run does."""
    lineage = root / "etc" / "letsencrypt" / "live" / "receipts.example.com"
    lineage.mkdir(parents=True)
    (lineage / "fullchain.pem").write_text("-----BEGIN CERTIFICATE-----\nchain\n")
    (lineage / "privkey.pem").write_text("-----BEGIN PRIVATE KEY-----\nthe key\n")
    config = root / "certbot.conf"
    config.write_text(f"DLRD_CERT_NAME=receipts.example.com\nDLRD_TLS_DIR={root}/etc/dlrd/tls\n"
                      f"DLRD_USER={service.pw_name}\nDLRD_GROUP={grp.getgrgid(service.pw_gid).gr_name}\n"
                      "SYSTEMCTL=false\n")  # `false is-active`: dlrd is not running, so no reload
    hooked = subprocess.run([str(HOOK)], env={**os.environ, "DLRD_HOOK_CONFIG": str(config),
                                              "RENEWED_LINEAGE": str(lineage)},
                            capture_output=True, text=True, timeout=60)
    assert hooked.returncode == 0, hooked.stderr
    return root / "etc" / "dlrd" / "tls" / "privkey.pem"


def test_the_readme_recipe_lets_readers_read_receipts_and_not_secrets(
        shared_dir: Path, accounts: tuple[pwd.struct_passwd, pwd.struct_passwd]) -> None:
    service, reader = accounts
    umask, state_mode, logs_mode = unit_modes()
    setup, checks = recipe_blocks()[:2]
    etc, state, logs = (Path(f"{shared_dir}{path}") for path in DOCUMENTED_PATHS)
    # README "Running under systemd": install -d -m 750 -g dlrd /etc/dlrd
    etc.mkdir(parents=True)
    os.chown(etc, 0, service.pw_gid)
    etc.chmod(0o750)
    # What systemd does at each start for StateDirectory= and LogsDirectory=: the unit's mode, User:Group.
    for directory, directory_mode in ((state, state_mode), (logs, logs_mode)):
        directory.mkdir(parents=True)
        os.chown(directory, service.pw_uid, service.pw_gid)
        directory.chmod(directory_mode)
    key = install_certificate(shared_dir, service)
    pin = etc / "pin"

    for command in setup:
        done = subprocess.run(["sh", "-c", localise(command, shared_dir, service.pw_name, reader.pw_name)],
                              input=SEED_PIN.encode() + b"\n", capture_output=True, timeout=60)
        assert done.returncode == 0, f"{command}: {done.stderr.decode()}"
    assert pin.read_text() == SEED_PIN + "\n"

    wrap = ["setpriv", f"--reuid={service.pw_uid}", f"--regid={service.pw_gid}", "--init-groups"]
    if as_user(service, sys.executable, "-c", "import dlrd").returncode != 0:
        pytest.skip(f"{sys.executable} cannot run as another user (a libpython only root may read)")
    daemon = start_receiving(shared_dir / "run", state, logs, umask, wrap=wrap)
    try:
        ids = post_receipts(daemon, logs)
        assert_files_have_the_units_modes(state, logs, umask)
        for path in [*state.iterdir(), *logs.iterdir()]:
            assert (path.stat().st_uid, path.stat().st_gid) == (service.pw_uid, service.pw_gid), path

        # The README's checks, line by line, while dlrd runs.
        for command in checks:
            done = subprocess.run(["sh", "-c", localise(command, shared_dir, service.pw_name, reader.pw_name)],
                                  capture_output=True, text=True, timeout=60)
            if "# Permission denied" in command:
                assert done.returncode != 0 and "Permission denied" in done.stderr, f"{command}: {done}"
            else:
                assert done.returncode == 0 and done.stdout.strip(), f"{command}: {done}"
            if "count(*)" in command:
                assert done.stdout.strip() == str(RECEIPTS)
            if "receipts.jsonl" in command:
                assert json.loads(done.stdout)["message_id"] in ids

        # The reader reads the database (SQLite's own read-only open, beside the writer) and every journal file.
        counted = as_user(reader, "/usr/bin/python3", "-c",
                          "import sqlite3, sys; print(sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)"
                          ".execute('SELECT count(*) FROM receipts').fetchone()[0])", str(state / "dlrd.db"))
        assert counted.returncode == 0, counted.stderr
        assert counted.stdout.decode().strip() == str(RECEIPTS)
        assert sorted(journal_ids(logs, lambda path: reader_reads(reader, path))) == ids
        # ... never the secrets, which dlrd itself reads.
        for secret in (pin, key):
            denied = as_user(reader, "cat", str(secret))
            assert denied.returncode != 0 and b"Permission denied" in denied.stderr, secret
            assert as_user(service, "cat", str(secret)).returncode == 0, secret
        # Without the group, nothing: the group is what lets the reader in.
        assert as_nobody("cat", str(state / "dlrd.db")).returncode != 0
        assert as_nobody("cat", str(logs / "receipts.jsonl")).returncode != 0
    finally:
        assert daemon.stop() == 0, daemon.log()


def reader_reads(reader: pwd.struct_passwd, path: Path) -> bytes:
    read = as_user(reader, "cat", str(path))
    assert read.returncode == 0, f"{reader.pw_name} cannot read {path}: {read.stderr.decode()}"
    return read.stdout


def configured_with_the_recipes_pin(root: Path, service: pwd.struct_passwd, reader: pwd.struct_passwd) -> Path:
    """/etc/dlrd as README "Running under systemd" makes it, the PIN file as the recipe writes it, and dlrd.ini."""
    (write_pin,) = [command for command in recipe_blocks()[0] if "/etc/dlrd/pin" in command]
    etc = Path(f"{root}/etc/dlrd")
    etc.mkdir(parents=True)
    os.chown(etc, 0, service.pw_gid)
    etc.chmod(0o750)
    done = subprocess.run(["sh", "-c", localise(write_pin, root, service.pw_name, reader.pw_name)],
                          input=SEED_PIN.encode() + b"\n", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    data = root / "data"
    data.mkdir()
    os.chown(data, service.pw_uid, service.pw_gid)
    ini = etc / "dlrd.ini"
    ini.write_text(f"[server]\nlisten = 127.0.0.1:0\n[auth]\nusername = ANOther.61234\npin_file = {etc / 'pin'}\n"
                   f"[storage]\ndatabase = {data}/dlrd.db\n[journal]\ndirectory = {data}\n")
    os.chown(ini, 0, service.pw_gid)  # install -m 640 -g dlrd etc/dlrd.ini /etc/dlrd/dlrd.ini
    ini.chmod(0o640)
    if as_user(service, sys.executable, "-c", "import dlrd").returncode != 0:
        pytest.skip(f"{sys.executable} cannot run as another user (a libpython only root may read)")
    return ini


def test_the_recipes_pin_file_draws_no_warning(shared_dir: Path,
                                               accounts: tuple[pwd.struct_passwd, pwd.struct_passwd]) -> None:
    """A PIN file made as the README says is read by dlrd (as its user) without a warning."""
    service, reader = accounts
    ini = configured_with_the_recipes_pin(shared_dir, service, reader)

    checked = as_user(service, sys.executable, "-m", "dlrd", "--config", str(ini), "check-config")

    assert checked.returncode == 0, checked.stderr
    assert b"pin" not in checked.stderr.lower(), checked.stderr


def test_a_reader_can_query_with_the_daemons_config(shared_dir: Path,
                                                    accounts: tuple[pwd.struct_passwd, pwd.struct_passwd]) -> None:
    """Readers use `dlrd query --config /etc/dlrd/dlrd.ini` too: a read-only command needs no PIN."""
    service, reader = accounts
    ini = configured_with_the_recipes_pin(shared_dir, service, reader)
    subprocess.run(["usermod", "-a", "-G", grp.getgrgid(service.pw_gid).gr_name, reader.pw_name],
                   check=True, capture_output=True, timeout=60)
    daemon = Daemon(shared_dir / "run")
    daemon.directory.mkdir()
    daemon.ini = ini
    daemon.config = lambda extra="": ini.read_text()  # type: ignore[method-assign]  # keep the file as the README has it
    daemon.start(wrap=["setpriv", f"--reuid={service.pw_uid}", f"--regid={service.pw_gid}", "--init-groups"],
                 preexec_fn=lambda: os.umask(unit_modes()[0]))
    try:
        assert post(daemon.address, receipt_body("READER01")).status == 200
        queried = as_user(reader, sys.executable, "-m", "dlrd", "--config", str(ini), "query", "--format", "json")
    finally:
        assert daemon.stop() == 0, daemon.log()

    assert queried.returncode == 0, queried.stderr
    assert json.loads(queried.stdout)["message_id"] == "READER01"
