"""Docs that cannot drift: what an operator can see must be in the README."""

from __future__ import annotations

from pathlib import Path

from dlrd.metrics import METRIC_HELP

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_metric_is_documented_in_the_readme():
    missing = [name for name in METRIC_HELP if f"`{name}`" not in README]
    assert missing == []


def test_readme_quick_start_and_ci_run_the_same_test_command():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    command = ci.strip().splitlines()[-1]
    assert command in README


def test_every_file_the_install_routes_name_is_in_the_checkout():
    """README "Install without Python": each packaging/ or systemd/ path its commands name exists (dist/ is
    what build-binary.sh and build-deb.sh make; tests/test_binary.py and tests/test_deb.py build them)."""
    import re

    root = Path(__file__).resolve().parents[1]
    section = README.split("## Install without Python", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in section.splitlines() if line.startswith("    ")]
    named = {path for line in commands for path in re.findall(r"(?<![\w/])(?:packaging|systemd)/[\w./-]+", line)}
    assert {"packaging/build-deb.sh", "packaging/build-binary.sh", "systemd/one-file-binary.conf"} <= named
    assert [path for path in sorted(named) if not (root / path).exists()] == []
