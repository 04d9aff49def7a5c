"""README "Running under systemd", followed line by line in a scratch root, once per route.

Everything but starting systemd runs as written, with the absolute paths
moved under the scratch root: `systemd-sysusers --root`, `systemctl --root
enable` (both work without systemd as PID 1), `install` with the group the
scratch root's sysusers made. `systemctl daemon-reload` and `--now` need a
running systemd and are left out; what they would load is checked instead
with `systemd-analyze verify` on the installed tree. DLRD_README names
another file holding the section (a draft), README.md by default.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from systemd_root import group_id, stub_executable, with_host_units

ROOT = Path(__file__).resolve().parents[1]
README = Path(os.environ.get("DLRD_README", ROOT / "README.md"))
SECTION = "## Running under systemd"
LOGROTATE = "packaging/logrotate/dlrd"
VENV_ROUTE = "python3 -m venv /opt/dlrd && "

needs_tools = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("systemctl", "systemd-sysusers", "systemd-analyze")),
    reason="systemctl, systemd-sysusers and systemd-analyze are needed to follow the section")


def install_block() -> list[str]:
    """The first code block of the section (indented or fenced), one command or comment per line."""
    text = README.read_text()
    assert SECTION in text, f"{README} has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.M)[0]
    fenced = re.search(r"^```[a-z]*\n(.*?)^```", section, flags=re.M | re.S)
    indented = re.search(r"((?:^    .*\n)+)", section, flags=re.M)
    candidates = [m for m in (fenced, indented) if m is not None]
    assert candidates, f"no code block under {SECTION!r} in {README}"
    first = min(candidates, key=lambda m: m.start())
    block = first.group(1)
    return [line[4:] if first is indented else line for line in block.splitlines() if line.strip()]


def routes(lines: list[str]) -> dict[str, list[str]]:
    """Split the block at its "# Either" / "# Or" comments: the common lines go into both routes."""
    markers = [line for line in lines if line.startswith(("# Either", "# Or"))]
    assert [marker.split()[1] for marker in markers] == ["Either", "Or"], (
        f"{README}: the install block must offer the two routes, '# Either ...' then '# Or ...'")
    chosen: dict[str, list[str]] = {"own addresses": [], "socket activation": []}
    current = None
    for line in lines:
        if line.startswith("#"):
            current = ("own addresses" if line.startswith("# Either")
                       else "socket activation" if line.startswith("# Or") else None)
            continue
        for name, commands in chosen.items():
            if current in (None, name):
                commands.append(line)
    assert all(chosen.values()), f"{README}: a route of the install block has no command"
    return chosen


def systemd_version() -> int:
    out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[1])


def rewrite(line: str, root: Path, logrotate: Path) -> str | None:
    """The line as it runs in the scratch root, or None for what needs a running systemd or pip."""
    if line.startswith(VENV_ROUTE):
        return None  # run for real, into a scratch /opt, by test_the_first_line_installs_a_dlrd_that_runs
    line = re.sub(r"(?<![\w/.])/(usr/lib|usr/local|etc)/", rf"{root}/\1/", line)
    line = re.sub(r"\bsystemd-sysusers\b(?! --root)", f"systemd-sysusers --root={root}", line)
    line = line.replace("systemctl daemon-reload && ", "")
    line = re.sub(r"\bsystemctl enable --now\b", f"systemctl --root={root} enable", line)
    line = line.replace(LOGROTATE, str(logrotate))
    if "-g dlrd" in line:
        line = line.replace("-g dlrd", f"-g {group_id(root, 'dlrd')}")
    return line


def prepare_root(tmp_path: Path) -> Path:
    """An empty system but for this host's units, the usual directories, and the dlrd of the first line."""
    root = with_host_units(tmp_path / "root")
    for stub in ("/usr/local/bin/dlrd", "/bin/kill"):  # what the first line and the OS provide
        stub_executable(root, stub)
    # The directories the block installs into, present on any host with systemd and logrotate.
    for directory in ("usr/lib/sysusers.d", "etc/systemd/system", "etc/logrotate.d"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    return root


def follow(route: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """Run the route's lines in a scratch root; returns the root and the lines skipped (with reasons)."""
    root = prepare_root(tmp_path)
    logrotate = ROOT / LOGROTATE
    if not logrotate.exists():  # shipped by the logrotate work (issue 14 item 5); a stand-in until then
        logrotate = tmp_path / "logrotate-dlrd"
        logrotate.write_text("/var/log/dlrd/receipts.jsonl {\n}\n")
    skipped = []
    for line in routes(install_block())[route]:
        command = rewrite(line, root, logrotate)
        if command is None:
            skipped.append(f"{line!r}: installs dlrd itself, stood in for by /usr/local/bin/dlrd here")
            continue
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{line}\nran as: {command}\n{result.stderr}"
    return root, skipped


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def check_common(root: Path) -> None:
    """What both routes leave behind: the user, the config, logrotate, the reload drop-in where it fits."""
    assert mode(root / "usr/lib/sysusers.d/dlrd.conf") == 0o644
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    assert passwd["dlrd"][5] == "/var/lib/dlrd"
    gid = group_id(root, "dlrd")
    config = root / "etc/dlrd"
    assert (mode(config), config.stat().st_gid) == (0o750, gid)
    assert (mode(config / "dlrd.ini"), (config / "dlrd.ini").stat().st_gid) == (0o640, gid)
    assert (config / "dlrd.ini").read_bytes() == (ROOT / "etc/dlrd.ini").read_bytes()
    assert mode(root / "etc/logrotate.d/dlrd") == 0o644
    drop_in = root / "etc/systemd/system/dlrd.service.d/notify-reload.conf"
    if systemd_version() >= 253:
        assert drop_in.read_bytes() == (ROOT / "systemd/notify-reload.conf").read_bytes()
    else:
        assert not drop_in.exists(), "systemd 252 does not know Type=notify-reload: the block must leave it out"
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", "dlrd.service"],
                            capture_output=True, text=True, timeout=60)
    assert (verify.returncode, verify.stderr) == (0, "")


def wants(root: Path, target: str, unit: str) -> Path:
    return root / "etc/systemd/system" / f"{target}.wants" / unit


@needs_tools
def test_readme_route_dlrd_binds_its_own_addresses(tmp_path):
    root, skipped = follow("own addresses", tmp_path)
    assert len(skipped) == 1 and VENV_ROUTE in skipped[0]
    check_common(root)
    units = root / "etc/systemd/system"
    assert (units / "dlrd.service").read_bytes() == (ROOT / "systemd/dlrd.service").read_bytes()
    assert mode(units / "dlrd.service") == 0o644
    assert os.readlink(wants(root, "multi-user.target", "dlrd.service")) == "/etc/systemd/system/dlrd.service"
    assert not (units / "dlrd.socket").exists()
    assert not wants(root, "sockets.target", "dlrd.socket").exists()


@needs_tools
def test_readme_route_socket_activation(tmp_path):
    root, skipped = follow("socket activation", tmp_path)
    assert len(skipped) == 1 and VENV_ROUTE in skipped[0]
    check_common(root)
    units = root / "etc/systemd/system"
    assert (units / "dlrd.service").read_bytes() == (ROOT / "systemd/socket-activated/dlrd.service").read_bytes()
    for name in ("dlrd.service", "dlrd.socket", "dlrd-http.socket"):
        assert mode(units / name) == 0o644, name
    assert (units / "dlrd.socket").read_bytes() == (ROOT / "systemd/dlrd.socket").read_bytes()
    assert os.readlink(wants(root, "multi-user.target", "dlrd.service")) == "/etc/systemd/system/dlrd.service"
    # `systemctl enable dlrd` enables the socket too (Also=); the plain-HTTP socket stays opt-in.
    assert os.readlink(wants(root, "sockets.target", "dlrd.socket")) == "/etc/systemd/system/dlrd.socket"
    assert not wants(root, "sockets.target", "dlrd-http.socket").exists()
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", "dlrd.socket",
                             "dlrd-http.socket"], capture_output=True, text=True, timeout=60)
    assert (verify.returncode, verify.stderr) == (0, "")


@pytest.mark.slow
def test_the_first_line_installs_a_dlrd_that_runs_where_the_units_run_it(tmp_path):
    """The Debian 12 route (PEP 668 refuses pip into the system's Python), run for real: /opt and
    /usr/local under a scratch root, the checkout installed from the registry's wheels."""
    first = install_block()[0]
    assert first.startswith(VENV_ROUTE) and first.endswith("/usr/local/bin/dlrd")
    for unit in ("systemd/dlrd.service", "systemd/socket-activated/dlrd.service"):
        assert "ExecStart=/usr/local/bin/dlrd --config /etc/dlrd/dlrd.ini serve" in (ROOT / unit).read_text()
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    command = re.sub(r"(?<![\w/.])/(opt|usr/local)/", rf"{root}/\1/", first)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{first}\nran as: {command}\n{result.stderr}"
    version = subprocess.run([str(root / "usr/local/bin/dlrd"), "version"], capture_output=True, text=True,
                             timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert version.returncode == 0 and version.stdout.startswith("dlrd "), version
