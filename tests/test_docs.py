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
