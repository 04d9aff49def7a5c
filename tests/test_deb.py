"""The Debian package as an operator meets it: built once, read with dpkg-deb, installed into a scratch root.

packaging/build-deb.sh runs once per session on a PyInstaller one-dir tree
(see `one_dir_tree` for where it comes from: one build of the binary per
CI run, shared with tests/test_binary.py). The
install tests use dpkg itself, chrootless (`dpkg --root=DIR
--force-script-chrootless`): the maintainer scripts run on this host with
$DPKG_ROOT set, as they must for that mode, and the installed tree is
then checked file by file. No systemd runs there, so "enabled, not
started" is read from the wants symlink and from the absence of any
process and any state directory.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from systemd_root import group_id

from dlrd import __version__

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_UNITS = {
    "lib/systemd/system/dlrd.service": "systemd/dlrd.service",
    "usr/share/dlrd/socket-activated/dlrd.service": "systemd/socket-activated/dlrd.service",
    "usr/share/dlrd/socket-activated/dlrd.socket": "systemd/dlrd.socket",
    "usr/share/dlrd/socket-activated/dlrd-http.socket": "systemd/dlrd-http.socket",
}
EXEC_START = "ExecStart=/usr/bin/dlrd --config /etc/dlrd/dlrd.ini serve"
# Every lintian warning the package is known to draw, and why it stays (see
# packaging/debian/lintian-overrides for the errors overridden, and why).
KNOWN_WARNINGS = {
    "non-standard-file-perm": "/etc/dlrd/dlrd.ini is 0640: it may hold the PIN; readers get it through group dlrd",
    "non-standard-dir-perm": "/etc/dlrd is 0750 group dlrd, as README's install and ConfigurationDirectoryMode=",
    "maintainer-script-needs-depends-on-adduser": "adduser is only the fallback where systemd-sysusers is missing; "
                                                  "Depends: systemd | adduser",
    "maintainer-script-calls-systemctl": "prerm's fallback where init-system-helpers is missing",
    "hardening-no-pie": "PyInstaller's prebuilt bootloader is not PIE",
    "shared-library-lacks-prerequisites": "CPython extension modules that need nothing but libpython",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all(shutil.which(tool) for tool in ("dpkg", "dpkg-deb")),
                       reason="dpkg and dpkg-deb (Debian's dpkg package) build and install the .deb"),
]


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    """A command that must succeed; its output in the assertion message when it does not."""
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def one_dir_tree(binary: Path) -> Path:
    """The PyInstaller one-dir tree to package: $DLRD_ONEDIR, or dist/dlrd-dir from the session's one build."""
    given = os.environ.get("DLRD_ONEDIR")
    return Path(given) if given else binary.parent / "dlrd-dir"


@pytest.fixture(scope="session")
def deb(one_dir_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dlrd_<version>_<arch>.deb, built once for the session by packaging/build-deb.sh."""
    output = tmp_path_factory.mktemp("deb")
    run("bash", ROOT / "packaging/build-deb.sh", "--onedir", one_dir_tree, "--output", output, cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable})
    arch = run("dpkg", "--print-architecture").stdout.strip()
    path = output / f"dlrd_{__version__}_{arch}.deb"
    assert path.is_file(), f"build-deb.sh made {sorted(p.name for p in output.iterdir())}, not {path.name}"
    return path


@pytest.fixture(scope="session")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files, extracted (not installed) with dpkg-deb -x."""
    tree = tmp_path_factory.mktemp("unpacked")
    run("dpkg-deb", "-x", deb, tree)
    return tree


def listing(deb: Path) -> dict[str, tuple[str, str, str]]:
    """dpkg-deb -c as {path: (mode string, owner/group, symlink target or "")}, paths without "./"."""
    entries = {}
    for line in run("dpkg-deb", "-c", deb).stdout.splitlines():
        mode, owner, _size, _date, _time, name, *rest = line.split(None, 6)
        target = rest[0].removeprefix("-> ") if rest else ""
        entries[name.removeprefix("./").rstrip("/") or "."] = (mode, owner, target)
    return entries


def control_file(deb: Path, name: str) -> str:
    return run("dpkg-deb", "--info", deb, name).stdout


def dpkg(root: Path, *arguments: str | Path) -> subprocess.CompletedProcess[str]:
    """dpkg on the scratch root, maintainer scripts run chrootless with DPKG_ROOT (dpkg 1.21 sets it).

    --force-depends: the scratch root has no libc6 or systemd package; the
    host's libc and systemd-sysusers are what the binary and the scripts use.
    """
    return run("dpkg", f"--root={root}", "--force-script-chrootless", "--force-not-root", "--force-depends",
               "--log=/dev/null", *arguments, cwd="/")


def scratch_root(path: Path) -> Path:
    """An empty dpkg database: the least dpkg --root needs."""
    (path / "var/lib/dpkg/info").mkdir(parents=True)
    (path / "var/lib/dpkg/updates").mkdir()
    (path / "var/lib/dpkg/status").touch()
    return path


def package_state(root: Path) -> str:
    """dpkg's Status of dlrd in the scratch root, or "" when dpkg no longer knows it."""
    result = subprocess.run(["dpkg-query", f"--root={root}", "-W", "-f=${Status}", "dlrd"],
                            capture_output=True, text=True, timeout=60)
    return result.stdout if result.returncode == 0 else ""


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch root with the package installed and configured."""
    root = scratch_root(tmp_path_factory.mktemp("root"))
    dpkg(root, "--install", deb)
    return root


def test_file_name_and_control_fields(deb: Path) -> None:
    """Version from dlrd/__init__.py (the one place), architecture from dpkg, the fields policy wants."""
    fields = {name: run("dpkg-deb", "--field", deb, name).stdout.strip()
              for name in ("Package", "Version", "Architecture", "Maintainer", "Section", "Priority",
                           "Depends", "Installed-Size", "Description")}
    assert fields["Package"] == "dlrd"
    assert fields["Version"] == __version__
    assert fields["Architecture"] == run("dpkg", "--print-architecture").stdout.strip()
    assert (fields["Section"], fields["Priority"]) == ("net", "optional")
    assert re.fullmatch(r"libc6 \(>= 2\.\d+\), procps, systemd \| adduser", fields["Depends"]), fields["Depends"]
    assert re.fullmatch(r".+ <[^@\s]+@[^@\s]+>", fields["Maintainer"]), fields["Maintainer"]
    assert int(fields["Installed-Size"]) > 10_000  # KiB: the Python runtime is inside
    assert fields["Description"].startswith("Connection Software SOAP delivery-receipt daemon\n")


def test_files_modes_and_owners(deb: Path) -> None:
    """Every path the units, the README and the maintainer scripts rely on, with its mode; all root's."""
    entries = listing(deb)
    expected = {
        "usr/lib/dlrd/dlrd": "-rwxr-xr-x",
        "usr/lib/dlrd/_internal": "drwxr-xr-x",
        "lib/systemd/system/dlrd.service": "-rw-r--r--",
        "usr/lib/sysusers.d/dlrd.conf": "-rw-r--r--",
        "etc/dlrd": "drwxr-x---",
        "etc/dlrd/dlrd.ini": "-rw-r-----",
        "etc/logrotate.d/dlrd": "-rw-r--r--",
        "usr/share/dlrd/certbot-deploy-hook": "-rwxr-xr-x",
        "usr/share/dlrd/notify-reload.conf": "-rw-r--r--",
        "usr/share/dlrd/socket-activated/README": "-rw-r--r--",
        **{path: "-rw-r--r--" for path in PACKAGE_UNITS if path.startswith("usr/")},
        "usr/share/man/man8/dlrd.8.gz": "-rw-r--r--",
        "usr/share/doc/dlrd/copyright": "-rw-r--r--",
        "usr/share/doc/dlrd/changelog.gz": "-rw-r--r--",
        "usr/share/lintian/overrides/dlrd": "-rw-r--r--",
    }
    assert {path: entries.get(path, ("missing",))[0] for path in expected} == expected
    assert entries["usr/bin/dlrd"][0].startswith("l") and entries["usr/bin/dlrd"][2] == "../lib/dlrd/dlrd"
    assert {owner for _mode, owner, _target in entries.values()} == {"root/root"}
    assert not [path for path in entries if path.startswith(("usr/local", "opt", "var", "home", "tmp"))]
    writable = [path for path, (mode, _, _) in entries.items() if mode[0] != "l" and ("w" in mode[5] + mode[8])]
    assert not writable, f"group- or world-writable: {writable}"
    assert not [path for path, (mode, _, _) in entries.items() if "s" in mode.lower()[1:]], "setuid/setgid files"
    libraries = [mode for path, (mode, _, _) in entries.items() if re.search(r"\.so(\.|$)", path)]
    assert libraries and set(libraries) == {"-rw-r--r--"}, "shared objects are 0644, as lintian wants"


def test_conffiles(deb: Path) -> None:
    """The operator's ini and the logrotate stanza survive upgrades as conffiles; nothing else is one."""
    assert control_file(deb, "conffiles").split() == ["/etc/dlrd/dlrd.ini", "/etc/logrotate.d/dlrd"]


def test_maintainer_scripts_are_posix_sh_with_set_e_and_dpkg_root(deb: Path) -> None:
    """What install, remove and purge run: sh scripts that stop on the first failure and honour DPKG_ROOT."""
    for name in ("postinst", "prerm", "postrm"):
        text = control_file(deb, name)
        assert text.startswith("#!/bin/sh\n"), name
        assert re.search(r"^set -e$", text, flags=re.M), f"{name} has no set -e"
        assert "$DPKG_ROOT" in text, f"{name} ignores DPKG_ROOT: it would act on the host in a chrootless install"
        run("sh", "-n", "-c", text)
    lines = control_file(deb, "postinst").splitlines()
    commands = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    # Enabled, never started: the operator edits the ini first. Only try-restart, which restarts a dlrd
    # that runs (an upgrade replaced its files) and leaves a stopped one stopped.
    assert not re.search(r"(?<!try-)\b(start|restart)\b|invoke-rc\.d", commands), (
        "postinst must enable the unit but not start it: the operator edits the ini first")
    assert re.findall(r"\b(?:deb-systemd-invoke|systemctl) (\S+) \"\$UNIT\"", commands) == ["try-restart"] * 2


def test_units_run_the_packaged_binary_and_are_otherwise_the_repositorys(unpacked: Path) -> None:
    """Generated at build time: ExecStart and Documentation= changed, every other directive as in systemd/."""
    for packaged, source in PACKAGE_UNITS.items():
        text = (unpacked / packaged).read_text()
        assert "/usr/local" not in text, packaged
        assert re.findall(r"^Documentation=.*$", text, flags=re.M) == ["Documentation=man:dlrd(8)"], packaged
        if packaged.endswith(".service"):
            assert re.findall(r"^ExecStart=.*$", text, flags=re.M) == [EXEC_START], packaged

        def directives(unit: str) -> list[str]:
            return [line for line in unit.splitlines() if line.strip() and not line.startswith("#")
                    and not line.startswith(("ExecStart=", "Documentation="))]

        assert directives(text) == directives((ROOT / source).read_text()), packaged
    assert (unpacked / "usr/lib/sysusers.d/dlrd.conf").read_bytes() == (ROOT / "systemd/dlrd.sysusers").read_bytes()
    assert (unpacked / "etc/dlrd/dlrd.ini").read_bytes() == (ROOT / "etc/dlrd.ini").read_bytes()
    assert (unpacked / "etc/logrotate.d/dlrd").read_bytes() == (ROOT / "packaging/logrotate/dlrd").read_bytes()
    hook = unpacked / "usr/share/dlrd/certbot-deploy-hook"
    assert hook.read_bytes() == (ROOT / "systemd/certbot-deploy-hook").read_bytes()


def test_man_page_and_documents(unpacked: Path) -> None:
    """dlrd(8) as the generator makes it today, gzip'd without a name or time; copyright in DEP-5."""
    from dlrd import manpage

    page = gzip.decompress((unpacked / "usr/share/man/man8/dlrd.8.gz").read_bytes()).decode()
    assert page.split("\n", 1)[1] == manpage.render().split("\n", 1)[1], "the .TH line aside, as generated"
    header = (unpacked / "usr/share/man/man8/dlrd.8.gz").read_bytes()[:10]
    assert header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0", "gzip -n: no file name, no time stamp"
    copyright_text = (unpacked / "usr/share/doc/dlrd/copyright").read_text()
    assert copyright_text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n")
    changelog = gzip.decompress((unpacked / "usr/share/doc/dlrd/changelog.gz").read_bytes()).decode()
    assert changelog.startswith(f"dlrd ({__version__}) ")


@pytest.mark.skipif(not shutil.which("lintian"), reason="lintian is not installed (apt-get install lintian)")
def test_lintian_reports_no_errors_and_only_known_warnings(deb: Path) -> None:
    """Debian's own checker: no E: at all, and each W: one KNOWN_WARNINGS explains."""
    result = subprocess.run(["lintian", "--tag-display-limit", "0", str(deb)], capture_output=True, text=True,
                            timeout=600)
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("E:")], result.stdout
    warnings = {line.split()[2] for line in lines if line.startswith("W:")}
    assert warnings <= set(KNOWN_WARNINGS), f"new lintian warnings: {warnings - set(KNOWN_WARNINGS)}\n{result.stdout}"


def test_installed_binary_runs_from_the_scratch_root(installed: Path) -> None:
    """/usr/bin/dlrd, the symlink the units run, starts the tree with an empty environment, from anywhere."""
    binary = installed / "usr/bin/dlrd"
    assert os.readlink(binary) == "../lib/dlrd/dlrd"
    result = run(binary, "version", env={}, cwd="/")
    assert result.stdout == f"dlrd {__version__}\n"
    check = run(binary, "--config", installed / "etc/dlrd/dlrd.ini", "check-config", env={}, cwd="/")
    assert "[server]" in check.stdout


def test_installed_binary_serves_and_sends_a_receipt(installed: Path, daemon_factory) -> None:
    """The installed tree (stripped, RUNPATH dropped) serves and its send-test is accepted; SIGTERM exits 0."""
    binary = installed / "usr/bin/dlrd"
    # Daemon.start runs [*wrap, python, -m, dlrd, --config, ini, serve]: the wrapper drops the first
    # three and execs the installed binary in their place, so the process is the binary itself.
    daemon = daemon_factory(wrap=["sh", "-c", 'shift 3; exec "$0" "$@"', str(binary)])
    sent = run(binary, "send-test", daemon.url, "--message-id", "DEB-1", env={}, cwd="/")
    assert "HTTP 200" in sent.stdout and "Report: 0" in sent.stdout
    assert [row["message_id"] for row in daemon.journal()] == ["DEB-1"]
    assert daemon.stop() == 0


def test_installed_units_and_files(installed: Path) -> None:
    """What the unit needs is where it looks: the binary, the ini with group dlrd, the user with its home."""
    if os.geteuid() != 0:
        pytest.skip("as non-root, dpkg --force-not-root leaves the files this user's: root's owner cannot be checked")
    for packaged in PACKAGE_UNITS:
        text = (installed / packaged).read_text()
        for path in re.findall(r"^Exec\w+=(/\S+)", text, flags=re.M):
            if path.startswith("/usr/bin/dlrd"):
                assert os.access(installed / path.lstrip("/"), os.X_OK), f"{packaged}: {path} is not executable"
    gid = group_id(installed, "dlrd")
    passwd = {line.split(":")[0]: line.split(":") for line in (installed / "etc/passwd").read_text().splitlines()}
    assert passwd["dlrd"][3] == str(gid) and passwd["dlrd"][5] == "/var/lib/dlrd", passwd["dlrd"]
    for path, mode in (("etc/dlrd", 0o750), ("etc/dlrd/dlrd.ini", 0o640)):
        info = (installed / path).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, 0, gid), path
    assert (installed / "etc/logrotate.d/dlrd").stat().st_mode & 0o777 == 0o644


def test_installed_unit_is_enabled_but_not_started(installed: Path) -> None:
    """multi-user.target wants dlrd.service; nothing ran it: no dlrd process from the root, no state made."""
    wants = installed / "etc/systemd/system/multi-user.target.wants/dlrd.service"
    assert os.readlink(wants) == "/lib/systemd/system/dlrd.service"
    tree = str(installed / "usr/lib/dlrd/dlrd")
    running = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                running += [proc.name] if os.readlink(proc / "exe") == tree else []
            except OSError:
                continue
    assert not running
    assert not (installed / "var/lib/dlrd").exists() and not (installed / "var/log/dlrd").exists()
    assert package_state(installed) == "install ok installed"


@pytest.fixture
def fresh_root(deb: Path, tmp_path: Path) -> Iterator[Path]:
    root = scratch_root(tmp_path / "root")
    dpkg(root, "--install", deb)
    yield root


def test_remove_keeps_data_and_configuration_and_purge_deletes_them(fresh_root: Path) -> None:
    """What systemd and the operator made: kept on remove, gone on purge, with the unit's enablement."""
    root = fresh_root
    made = {"var/lib/dlrd/dlrd.db": "receipts", "var/log/dlrd/receipts.jsonl": "{}\n", "etc/dlrd/pin": "BLUE.music"}
    for path, text in made.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    wants = root / "etc/systemd/system/multi-user.target.wants/dlrd.service"

    dpkg(root, "--remove", "dlrd")
    assert package_state(root) == "deinstall ok config-files"
    assert {path: (root / path).read_text() for path in made} == made
    assert (root / "etc/dlrd/dlrd.ini").is_file() and (root / "etc/logrotate.d/dlrd").is_file()
    assert not (root / "usr/bin/dlrd").exists() and not (root / "usr/lib/dlrd").exists()
    assert not (root / "lib/systemd/system/dlrd.service").exists()

    dpkg(root, "--purge", "dlrd")
    assert package_state(root) == ""
    for path in ("var/lib/dlrd", "var/log/dlrd", "etc/dlrd", "etc/logrotate.d/dlrd"):
        assert not (root / path).exists(), f"{path} survived the purge"
    assert not wants.is_symlink()
    assert not (root / "etc/systemd/system/dlrd.service").is_symlink(), "remove's mask is lifted on purge"


# Run inside the booted container by dlrd-check.service: the README's `apt install ./dlrd_*.deb`
# route, then what an operator does with the unit. One "name=value" line per fact, for the test.
BOOTED_CHECK = r"""#!/bin/sh
out=/mnt/result/facts
fact() { printf '%s=%s\n' "$1" "$2" >> "$out"; }
fact systemd "$(systemctl --version | awk 'NR==1 {print $2}')"
apt-get install -y -o Dpkg::Use-Pty=0 /mnt/deb/dlrd.deb > /mnt/result/apt.log 2>&1
fact apt $?
fact enabled "$(systemctl is-enabled dlrd)"
fact active_after_install "$(systemctl is-active dlrd)"
systemctl start dlrd; fact start $?
fact main_pid "$(systemctl show -P MainPID dlrd)"
fact status_text "$(systemctl show -P StatusText dlrd)"
dlrd send-test http://127.0.0.1:8080/ --message-id NSPAWN-1 > /mnt/result/send-test.txt 2>&1; fact send_test $?
systemctl reload dlrd; fact reload $?
fact main_pid_after_reload "$(systemctl show -P MainPID dlrd)"
fact active_after_reload "$(systemctl is-active dlrd)"
systemctl stop dlrd; fact stop $?
fact result "$(systemctl show -P Result dlrd)"
fact exit_status "$(systemctl show -P ExecMainStatus dlrd)"
fact journal_lines "$(wc -l < /var/log/dlrd/receipts.jsonl)"
fact data_owner "$(stat -c %U:%G:%a /var/lib/dlrd /var/lib/dlrd/dlrd.db | tr '\n' ' ')"
journalctl -u dlrd --no-pager > /mnt/result/journal.txt 2>&1
fact done yes
systemctl poweroff
"""
BOOTED_UNIT = """[Unit]
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh /mnt/check/check.sh
"""


@pytest.mark.skipif(not os.environ.get("DLRD_NSPAWN_ROOT") or not shutil.which("systemd-nspawn"),
                    reason="opt-in: DLRD_NSPAWN_ROOT names a Debian root with systemd and procps (debootstrap "
                           "--variant=minbase --include=systemd,systemd-sysv,dbus,procps bookworm DIR), and "
                           "systemd-nspawn (systemd-container) boots it")
def test_unit_under_a_real_systemd(deb: Path, tmp_path: Path) -> None:
    """Boot systemd in a container (its root read-only under a tmpfs overlay), apt install the .deb,
    then start, send-test, reload and stop dlrd.service as an operator would."""
    base = Path(os.environ["DLRD_NSPAWN_ROOT"])
    check, result, package = tmp_path / "check", tmp_path / "result", tmp_path / "deb"
    for directory in (check, result, package):
        directory.mkdir()
    (check / "check.sh").write_text(BOOTED_CHECK)
    (check / "dlrd-check.service").write_text(BOOTED_UNIT)
    shutil.copy(deb, package / "dlrd.deb")
    boot = subprocess.run(
        ["systemd-nspawn", "--quiet", "--boot", f"--directory={base}", "--volatile=overlay", "--register=no",
         "--keep-unit", f"--bind-ro={check}:/mnt/check", f"--bind-ro={package}:/mnt/deb",
         f"--bind={result}:/mnt/result",
         "--bind-ro=" + str(check / "dlrd-check.service") + ":/etc/systemd/system/dlrd-check.service",
         "systemd.wants=dlrd-check.service"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    facts_file = result / "facts"
    assert facts_file.exists(), f"the container ran no check (exit {boot.returncode}):\n{boot.stdout[-3000:]}"
    facts = dict(line.split("=", 1) for line in facts_file.read_text().splitlines())
    logs = "\n".join((result / name).read_text() for name in ("apt.log", "send-test.txt", "journal.txt")
                     if (result / name).exists())
    assert facts.get("done") == "yes", f"{facts}\n{logs}"
    assert (facts["apt"], facts["enabled"], facts["active_after_install"]) == ("0", "enabled", "inactive"), logs
    assert (facts["start"], facts["send_test"], facts["reload"], facts["stop"]) == ("0", "0", "0", "0"), logs
    assert facts["main_pid"] == facts["main_pid_after_reload"] != "0"
    assert facts["active_after_reload"] == "active"
    assert facts["status_text"].startswith("listening on http://127.0.0.1:8080")
    assert (facts["result"], facts["exit_status"], facts["journal_lines"]) == ("success", "0", "1"), logs
    assert facts["data_owner"].split() == ["dlrd:dlrd:750", "dlrd:dlrd:640"]
    assert "SIGHUP: re-reading" in (result / "journal.txt").read_text()
