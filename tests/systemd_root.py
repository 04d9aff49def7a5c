"""A scratch root for systemd's offline tools: this host's units, and stubs where the units' binaries go.

`systemd-analyze verify --root` and `systemctl --root enable` need the
targets the units name (multi-user.target, sockets.target, sysinit.target)
and an executable at every absolute Exec path; this is that much of a system.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def with_host_units(root: Path) -> Path:
    """`root` holding a copy of this host's unit directory; the test is skipped on a host without one."""
    host_units = next((Path(p) for p in ("/usr/lib/systemd/system", "/lib/systemd/system")
                       if Path(p, "multi-user.target").exists() and Path(p, "sysinit.target").exists()), None)
    if host_units is None:
        pytest.skip("this host has no systemd unit directory to copy the targets from")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    return root


def stub_executable(root: Path, path: str) -> None:
    """An executable that does nothing at `path` inside `root`, standing in for dlrd, kill and the like."""
    stub = root / path.lstrip("/")
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)


def group_id(root: Path, name: str) -> int:
    """The gid `name` has in the scratch root's own /etc/group (the host's may differ)."""
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no group {name} in {root}/etc/group:\n{(root / 'etc/group').read_text()}")
