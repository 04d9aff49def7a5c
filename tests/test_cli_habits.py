"""One command line habit everywhere: --config before or after the subcommand, $DLRD_CONFIG, --version, --help."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from wire import wait_for

from dlrd import __version__
from dlrd.cli import build_parser

# Each subcommand that reads the config, with arguments that make it read the database the config names.
READERS = {
    "check-config": [],
    "query": ["--message-id", "3C7D98A4"],
    "stats": [],
    "quarantine list": [],
    "quarantine show": ["1"],
    "replay": ["--quarantine"],
    "expect": ["3C7D98A4"],
}


def dlrd(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "DLRD_CONFIG"}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "dlrd", *args], capture_output=True, text=True, timeout=60,
                          env=environ, cwd=cwd)


@pytest.fixture
def marked_config(tmp_path: Path) -> Path:
    """An ini whose one unusual setting (a report code) shows in what every command prints when it is read."""
    ini = tmp_path / "marked.ini"
    ini.write_text(f"[storage]\ndatabase = {tmp_path / 'marked' / 'dlrd.db'}\n"
                   f"[journal]\ndirectory = {tmp_path / 'marked'}\n"
                   "[report_codes]\n7 = marked-config, failed, yes\n")
    return ini


def broken_config(tmp_path: Path) -> Path:
    ini = tmp_path / "broken.ini"
    ini.write_text("[server]\nlisten = not-an-address\n")
    return ini


@pytest.mark.parametrize("command", READERS)
def test_config_is_read_before_or_after_the_subcommand_and_from_the_environment(command: str, tmp_path: Path):
    """A broken ini must be refused the same way wherever it is named; naming none uses the defaults."""
    ini = broken_config(tmp_path)
    words = command.split()
    arguments = READERS[command]
    placements = {
        "before": ["--config", str(ini), *words, *arguments],
        "after": [*words, "--config", str(ini), *arguments],
        "last": [*words, *arguments, "--config", str(ini)],
    }
    for where, argv in placements.items():
        result = dlrd(*argv, cwd=tmp_path)
        assert result.returncode == 1, (where, result.stderr)
        assert f"{ini}" in result.stderr and "listen" in result.stderr, (where, result.stderr)
    from_env = dlrd(*words, *arguments, env={"DLRD_CONFIG": str(ini)}, cwd=tmp_path)
    assert from_env.returncode == 1 and f"{ini}" in from_env.stderr
    # Given on the command line, --config wins over $DLRD_CONFIG.
    good = tmp_path / "good.ini"
    good.write_text(f"[storage]\ndatabase = {tmp_path / 'good.db'}\n[journal]\ndirectory = {tmp_path}\n")
    overridden = dlrd(*words, "--config", str(good), *arguments, env={"DLRD_CONFIG": str(ini)}, cwd=tmp_path)
    assert overridden.returncode != 1 and "listen" not in overridden.stderr, overridden.stderr


def test_check_config_prints_the_settings_of_the_file_wherever_it_is_named(marked_config: Path, tmp_path: Path):
    for argv in (["--config", str(marked_config), "check-config"], ["check-config", "--config", str(marked_config)]):
        result = dlrd(*argv, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "marked-config" in result.stdout and str(tmp_path / "marked" / "dlrd.db") in result.stdout
    from_env = dlrd("check-config", env={"DLRD_CONFIG": str(marked_config)}, cwd=tmp_path)
    assert from_env.returncode == 0 and "marked-config" in from_env.stdout


def test_serve_takes_config_after_the_subcommand(tmp_path: Path):
    ini = tmp_path / "serve.ini"
    data = tmp_path / "data"
    ini.write_text(f"[server]\nlisten = 127.0.0.1:0\n[storage]\ndatabase = {data / 'dlrd.db'}\n"
                   f"[journal]\ndirectory = {data}\n")
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "dlrd", "serve", "--config", str(ini)], stdout=output,
                                   stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for(lambda: "listening on" in log.read_text() or process.poll() is not None, 20, "dlrd to listen")
        assert process.poll() is None, log.read_text()
        assert (data / "dlrd.db").exists()  # the ini's data directory, not ./dlrd-data
        assert not (tmp_path / "dlrd-data").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


def test_version_option_and_subcommand_agree():
    option, command = dlrd("--version"), dlrd("version")
    assert option.returncode == command.returncode == 0
    assert option.stdout == command.stdout == f"dlrd {__version__}\n"


def _subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, nested ones (quarantine list) included, read from the real definitions."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[" ".join([*words, name])] = sub
                    walk(sub, [*words, name])

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize("command", sorted(_subcommand_parsers()))
def test_help_lists_every_option_with_its_default(command: str):
    parser = _subcommand_parsers()[command]
    result = dlrd(*command.split(), "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0 and result.stderr == ""
    text = re.sub(r"\s+", " ", result.stdout)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        for option in action.option_strings:
            assert option in text, (command, option)
        if action.default not in (None, False, argparse.SUPPRESS) and not isinstance(action, argparse._HelpAction):
            assert f"(default: {action.default})" in text, (command, action.dest, action.default)
    if command != "version" and command != "send-test":
        assert "--config PATH" in text


@pytest.mark.parametrize(("argv", "words"), [
    (["send-test", "example.com/receipts"], "is not an http:// or https:// URL"),
    (["send-test", "ftp://example.com/"], "is not an http:// or https:// URL"),
    (["query", "--since", "last tuesday"], "is not a time"),
    (["stats", "--until", "2026-13-45"], "is not a time"),
    (["replay", "--quarantine", "--id", "seven"], "invalid int value"),
    (["quarantine", "frobnicate"], "invalid choice"),
    (["no-such-command"], "invalid choice"),
])
def test_an_unusable_argument_is_exit_2_with_one_line(argv: list[str], words: str, tmp_path: Path):
    result = dlrd(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and words in result.stderr, result.stderr
    assert "--help" in result.stderr


@pytest.mark.parametrize(("argv", "niceness"), [
    (["query", "--message-id", "3C7D98A4"], 19),
    (["--config", "query", "stats"], 19),  # the ini may be named like a command: its value is skipped
    (["--config=/etc/dlrd/dlrd.ini", "quarantine", "list"], 19),
    (["stats", "--config", "/etc/dlrd/dlrd.ini"], 19),
    (["serve"], 0),
    (["--config", "stats", "serve"], 0),
    (["replay", "--quarantine"], 0),
    ([], 0),
])
def test_only_the_commands_that_read_give_up_their_cpu_priority(argv: list[str], niceness: int):
    """Lowered before dlrd.cli's imports: those cost as much CPU as a day's stats beside the daemon."""
    probe = ("import os, sys; from dlrd.launch import yield_cpu_if_reading; "
             "yield_cpu_if_reading(sys.argv[1:]); print(os.nice(0))")
    result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == os.nice(0) + niceness
