"""The certbot deploy hook as certbot runs it: for dlrd's certificate, and for somebody else's.

certbot runs every deploy hook for every renewed lineage, so the hook must
recognise dlrd's from its config and leave the others alone. Each test runs
the real `systemd/certbot-deploy-hook` with a fake lineage directory, a
config file of its own (DLRD_HOOK_CONFIG), a temporary TLS directory and a
fake `systemctl` first on PATH that records its arguments and answers
`is-active` as the test says. Owners are checked only as root, with a
throwaway system user standing in for `dlrd`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "systemd" / "certbot-deploy-hook"
DOMAIN = "receipts.example.com"
OTHER_DOMAIN = "mail.example.org"
RUNNING_AS_ROOT = os.geteuid() == 0
NOT_ROOT = "owners need root: the hook chowns the key to dlrd's user (CI runs the tests as root)"
README_ENV = "DLRD_README"  # a draft of README.md to read instead (tests of unpasted text)
DOCUMENTED_COMMAND = re.compile(r"(?m)^ {4,}(?:echo DLRD_CERT_NAME=|RENEWED_LINEAGE=)[^\n]*|`certbot certonly[^`]*`")


@dataclass
class Account:
    """The user and group standing in for the unit's User=dlrd and Group=dlrd."""

    user: str
    group: str
    uid: int
    gid: int


@pytest.fixture
def service_account() -> Iterator[Account]:
    """As root, a real throwaway system user with its own group, removed afterwards; else the running user."""
    if not RUNNING_AS_ROOT:
        import grp
        import pwd

        yield Account(pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name, os.getuid(), os.getgid())
        return
    if shutil.which("useradd") is None:
        pytest.skip("running as root but useradd (passwd package) is missing to make a throwaway user")
    name = f"dlrdhook{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        import grp
        import pwd

        entry = pwd.getpwnam(name)
        yield Account(name, grp.getgrgid(entry.pw_gid).gr_name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@dataclass
class Site:
    """One certbot-and-dlrd machine in a temporary directory."""

    base: Path
    account: Account

    @property
    def config(self) -> Path:
        return self.base / "certbot.conf"

    @property
    def tls(self) -> Path:
        return self.base / "etc-dlrd" / "tls"

    @property
    def calls(self) -> Path:
        return self.base / "systemctl-calls"

    def lineage(self, name: str, files: tuple[str, ...] = ("fullchain.pem", "privkey.pem")) -> Path:
        """A fake /etc/letsencrypt/live/<name> holding PEM-looking files whose content names the lineage."""
        directory = self.base / "letsencrypt" / "live" / name
        directory.mkdir(parents=True, exist_ok=True)
        for file in files:
            (directory / file).write_text(f"-----BEGIN {file} of {name}-----\n{secrets.token_hex(16)}\n")
            (directory / file).chmod(0o600)  # as certbot keeps them
        return directory

    def write_config(self, cert_name: str = DOMAIN, user: str | None = None, extra: str = "") -> None:
        self.config.write_text(f"DLRD_CERT_NAME={cert_name}\nDLRD_TLS_DIR={self.tls}\n"
                               f"DLRD_USER={user or self.account.user}\nDLRD_GROUP={self.account.group}\n{extra}")
        self.config.chmod(0o644)

    def run(self, lineage: Path | None, active: bool = True) -> subprocess.CompletedProcess[str]:
        """The hook as certbot runs it: RENEWED_LINEAGE set, the real PATH behind the fake systemctl."""
        bin_dir = self.base / "bin"
        bin_dir.mkdir(exist_ok=True)
        fake = bin_dir / "systemctl"
        fake.write_text(f'#!/bin/sh\necho "$*" >> {self.calls}\n'
                        f'if [ "$1" = is-active ]; then exit {0 if active else 3}; fi\nexit 0\n')
        fake.chmod(0o755)
        env = {key: value for key, value in os.environ.items() if key != "RENEWED_LINEAGE"}
        env |= {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DLRD_HOOK_CONFIG": str(self.config)}
        if lineage is not None:
            env["RENEWED_LINEAGE"] = str(lineage)
        return subprocess.run([str(HOOK)], env=env, capture_output=True, text=True, timeout=30)

    def systemctl_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def installed(self) -> dict[str, str]:
        """Every file in the TLS directory (temporaries included) with its content."""
        if not self.tls.exists():
            return {}
        return {path.name: path.read_text() for path in sorted(self.tls.iterdir())}


@pytest.fixture
def site(service_account: Account) -> Iterator[Site]:
    """A site under /tmp that other users may enter (pytest's tmp_path is root's alone), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="dlrd-hook-", dir="/tmp"))
    base.chmod(0o755)
    site = Site(base, service_account)
    site.write_config()
    yield site
    shutil.rmtree(base)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dlrd_certificate_is_installed_and_dlrd_reloaded(site: Site) -> None:
    lineage = site.lineage(DOMAIN)

    result = site.run(lineage)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert site.installed() == {"fullchain.pem": (lineage / "fullchain.pem").read_text(),
                                "privkey.pem": (lineage / "privkey.pem").read_text()}
    assert mode(site.tls) == 0o750
    assert mode(site.tls / "fullchain.pem") == 0o644
    assert mode(site.tls / "privkey.pem") == 0o400  # the group dlrd (the readers') cannot read it
    assert site.systemctl_calls() == ["is-active --quiet dlrd", "reload dlrd"]


def test_trailing_slash_in_the_lineage_is_still_dlrd(site: Site) -> None:
    lineage = site.lineage(DOMAIN)

    result = site.run(Path(f"{lineage}/"))

    assert result.returncode == 0, result.stderr
    assert set(site.installed()) == {"fullchain.pem", "privkey.pem"}


def test_another_certificate_is_left_alone(site: Site) -> None:
    site.run(site.lineage(DOMAIN))
    before = site.installed()
    site.calls.unlink()

    result = site.run(site.lineage(OTHER_DOMAIN))

    assert result.returncode == 0, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert OTHER_DOMAIN in result.stderr and "nothing done" in result.stderr
    assert site.installed() == before
    assert site.systemctl_calls() == []


def test_another_certificate_creates_nothing(site: Site) -> None:
    site.lineage(DOMAIN)  # dlrd's certificate exists, it is just not the one renewed now
    result = site.run(site.lineage(OTHER_DOMAIN))

    assert result.returncode == 0, result.stderr
    assert not site.tls.exists()


def test_a_misspelt_certificate_name_fails_the_hook_instead_of_letting_the_certificate_expire(site: Site) -> None:
    """certbot reports a failing hook; one that said "not mine" for every renewal would hide the typo for ever."""
    site.write_config(cert_name="reciepts.example.com")
    site.lineage(DOMAIN)

    result = site.run(site.lineage(DOMAIN))

    assert result.returncode == 1
    assert "reciepts.example.com" in result.stderr and "fix DLRD_CERT_NAME" in result.stderr
    assert not site.tls.exists()


def test_a_stopped_dlrd_is_not_started_by_a_reload(site: Site) -> None:
    lineage = site.lineage(DOMAIN)

    result = site.run(lineage, active=False)

    assert result.returncode == 0, result.stderr
    assert site.systemctl_calls() == ["is-active --quiet dlrd"]
    assert "not running" in result.stderr
    assert site.installed()["privkey.pem"] == (lineage / "privkey.pem").read_text()


def test_a_renewal_replaces_the_pair(site: Site) -> None:
    site.run(site.lineage(DOMAIN))
    renewed = site.lineage(DOMAIN)  # new contents, as after a renewal

    result = site.run(renewed)

    assert result.returncode == 0, result.stderr
    assert site.installed() == {"fullchain.pem": (renewed / "fullchain.pem").read_text(),
                                "privkey.pem": (renewed / "privkey.pem").read_text()}
    assert mode(site.tls / "privkey.pem") == 0o400


def test_a_missing_key_stops_the_hook_before_anything_is_copied(site: Site) -> None:
    site.run(site.lineage(DOMAIN))
    before = site.installed()
    site.calls.unlink()
    lineage = site.base / "letsencrypt" / "live" / DOMAIN
    (lineage / "privkey.pem").unlink()
    (lineage / "fullchain.pem").write_text("a renewed chain whose key went missing\n")

    result = site.run(lineage)

    assert result.returncode == 1
    assert "privkey.pem" in result.stderr and "old certificate" in result.stderr
    assert site.installed() == before  # no new chain beside the old key, no temporary left
    assert site.systemctl_calls() == []


def test_a_failed_copy_leaves_the_old_pair_and_no_temporary(site: Site) -> None:
    site.run(site.lineage(DOMAIN))
    before = site.installed()
    site.calls.unlink()
    site.write_config(user="no-such-user-dlrd")

    result = site.run(site.lineage(DOMAIN))

    assert result.returncode != 0
    assert "no-such-user-dlrd" in result.stderr
    assert site.installed() == before
    assert site.systemctl_calls() == []


def test_a_config_others_may_write_is_refused(site: Site) -> None:
    site.config.chmod(0o666)

    result = site.run(site.lineage(DOMAIN))

    assert result.returncode == 1
    assert "writable by nobody else" in result.stderr and str(site.config) in result.stderr
    assert not site.tls.exists()


def test_a_missing_config_says_what_to_write(site: Site) -> None:
    site.config.unlink()

    result = site.run(site.lineage(DOMAIN))

    assert result.returncode == 1
    assert "DLRD_CERT_NAME=" in result.stderr
    assert not site.tls.exists()


def test_without_renewed_lineage_it_says_how_to_run_it(site: Site) -> None:
    result = site.run(None)

    assert result.returncode == 1
    assert f"RENEWED_LINEAGE=/etc/letsencrypt/live/{DOMAIN}" in result.stderr
    assert not site.tls.exists()


@pytest.mark.skipif(not RUNNING_AS_ROOT, reason=NOT_ROOT)
def test_owners_let_dlrd_alone_read_the_key(site: Site) -> None:
    result = site.run(site.lineage(DOMAIN))
    assert result.returncode == 0, result.stderr
    account = site.account

    assert (site.tls.stat().st_uid, site.tls.stat().st_gid) == (0, account.gid)
    assert ((site.tls / "fullchain.pem").stat().st_uid, (site.tls / "fullchain.pem").stat().st_gid) == (0, 0)
    assert ((site.tls / "privkey.pem").stat().st_uid, (site.tls / "privkey.pem").stat().st_gid) == (account.uid, 0)
    # A real read as the service user: it can open the key in its directory.
    as_service = ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups", "cat"]
    read = subprocess.run([*as_service, str(site.tls / "privkey.pem")], capture_output=True, text=True, timeout=30)
    assert read.returncode == 0, read.stderr
    assert read.stdout == site.installed()["privkey.pem"]


def documented_hook_commands() -> list[str]:
    """The commands of step 1 of README "Exposing dlrd on the internet" (or of the draft $DLRD_README)."""
    source = Path(os.environ.get(README_ENV) or ROOT / "README.md")
    text = source.read_text(encoding="utf-8")
    return [match.group(0).strip().strip("`") for match in re.finditer(DOCUMENTED_COMMAND, text)]


def documented_command(start: str) -> str:
    """The first command of README step 1 that starts with `start`; a failure naming what is missing."""
    found = [command for command in documented_hook_commands() if command.startswith(start)]
    assert found, f"README step 1 has no command starting {start!r} (set {README_ENV} to a draft to test that)"
    return found[0]


def test_the_readme_names_one_certificate_throughout() -> None:
    """The README's certbot command, its certbot.conf line and its first run all name the same certificate."""
    certbot = documented_command("certbot certonly")
    config = documented_command("echo DLRD_CERT_NAME=")
    first_run = documented_command("RENEWED_LINEAGE=")
    domain = re.search(r"-d (\S+)", certbot).group(1)
    assert config.split()[1] == f"DLRD_CERT_NAME={domain}"
    default_config = re.search(r"\$\{DLRD_HOOK_CONFIG:-([^}]+)\}", HOOK.read_text()).group(1)
    assert config.split()[-1] == default_config, "the README writes the file the installed hook reads"
    assert first_run.startswith(f"RENEWED_LINEAGE=/etc/letsencrypt/live/{domain} ")


def test_the_readme_config_line_drives_the_hook(site: Site) -> None:
    """Run the README's own `echo DLRD_CERT_NAME=... > /etc/dlrd/certbot.conf`, pointed at the test's file."""
    config_line = documented_command("echo DLRD_CERT_NAME=")
    subprocess.run(["sh", "-c", config_line.replace("/etc/dlrd/certbot.conf", str(site.config))], check=True)
    domain = config_line.split()[1].split("=", 1)[1]
    with site.config.open("a") as config:
        config.write(f"DLRD_TLS_DIR={site.tls}\nDLRD_USER={site.account.user}\nDLRD_GROUP={site.account.group}\n")

    dlrds = site.lineage(domain)
    assert site.run(site.lineage(OTHER_DOMAIN)).returncode == 0
    assert not site.tls.exists()
    result = site.run(dlrds)
    assert result.returncode == 0, result.stderr
    assert set(site.installed()) == {"fullchain.pem", "privkey.pem"}


def test_a_symlinked_config_is_refused_with_what_to_do(site: Site) -> None:
    """find's permission check would judge the link (0777), and chmod cannot change that: say what it is."""
    real = site.base / "certbot.conf.real"
    site.config.rename(real)
    site.config.symlink_to(real)

    result = site.run(site.lineage(DOMAIN))

    assert result.returncode == 1
    assert "is a symbolic link" in result.stderr
    assert not site.tls.exists()
