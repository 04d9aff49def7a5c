"""dlrd(8) is written from the argparse definitions: every command, option and exit code, and nothing man warns of.

The checks read the page back through man(1) as an operator would see it,
and compare it with what the parser itself says, so a new option or a
changed default that the page missed fails here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlrd import __version__, manpage
from dlrd.cli import build_parser
from dlrd.errors import EXIT_CODES

needs_man = pytest.mark.skipif(not shutil.which("man"), reason="man (Debian's man-db) renders the page")


def rendered(page: str, tmp_path: Path) -> tuple[str, str]:
    """(the page as man shows it, one very wide line per paragraph; man's warnings)."""
    source = tmp_path / "dlrd.8"
    source.write_text(page)
    env = {**os.environ, "MANWIDTH": "1000", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": "", "MANROFFSEQ": ""}
    shown = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(source)], capture_output=True,
                           text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    return re.sub(r".\x08", "", shown.stdout), shown.stderr  # overstrike bold/underline, if man kept any


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def every_command(parser: argparse.ArgumentParser, prefix: str = "dlrd"):
    """(name, parser) of every subcommand, nested ones included, read from argparse itself."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from every_command(sub, f"{prefix} {name}")


@needs_man
def test_page_renders_without_warnings(tmp_path: Path) -> None:
    """What lintian's groff-message check runs: man --warnings prints nothing on stderr."""
    text, warnings = rendered(manpage.render(), tmp_path)
    assert warnings == ""
    assert text.lstrip().startswith("DLRD(8)")
    assert f"dlrd {__version__}" in text


def command_blocks(text: str) -> dict[str, str]:
    """The rendered COMMANDS section split at its subheadings (man indents .SS by three spaces)."""
    commands = text.split("\nCOMMANDS\n", 1)[1].split("\nEXIT STATUS\n", 1)[0]
    parts = re.split(r"^ {3}(dlrd [a-z -]+)$", commands, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@needs_man
def test_every_command_option_help_and_default_is_on_the_page(tmp_path: Path) -> None:
    """Under each subcommand's heading, each of its options as a paragraph of its own, with --help's text."""
    text, _ = rendered(manpage.render(), tmp_path)
    blocks = command_blocks(text)
    commands = list(every_command(build_parser()))
    assert {"dlrd serve", "dlrd send-test", "dlrd quarantine list", "dlrd quarantine show", "dlrd version"} <= {
        name for name, _ in commands}
    assert list(blocks) == [name for name, _ in commands], "one heading per subcommand, in --help's order"
    missing = []
    for name, sub in commands:
        block = blocks[name]
        help_text = sub.format_help()
        for action in sub._actions:
            if action.help in (None, argparse.SUPPRESS) or isinstance(
                    action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            # The option's help as --help prints it (wrapped there; unwrapped here).
            expanded = normalized(sub._get_formatter()._expand_help(action))
            assert expanded in normalized(help_text)
            names = action.option_strings or [action.metavar or action.dest]
            for option in names:
                if not re.search(rf"^ +(\S+, )*{re.escape(option)}( |,|$)", block, flags=re.M):
                    missing.append(f"{name}: no paragraph for {option}")
            if expanded not in normalized(block):
                missing.append(f"{name} {action.dest}: {expanded!r}")
    assert not missing


@needs_man
def test_exit_codes_environment_files_and_see_also(tmp_path: Path) -> None:
    """The sections an operator looks for, with the exit codes from dlrd.errors."""
    text, _ = rendered(manpage.render(), tmp_path)
    sections = re.findall(r"^([A-Z][A-Z ]+)$", text, flags=re.M)
    assert sections[:2] == ["NAME", "SYNOPSIS"]
    for section in ("DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"):
        assert section in sections
    status = normalized(text.split("EXIT STATUS", 1)[1].split("ENVIRONMENT", 1)[0])
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {normalized(meaning)}" in status
    for path in ("/etc/dlrd/dlrd.ini", "/var/lib/dlrd/dlrd.db", "/var/log/dlrd/receipts.jsonl",
                 "/lib/systemd/system/dlrd.service"):
        assert path in text
    assert "DLRD_CONFIG" in text and "DLRD_DEBUG" in text
    assert "systemd.service(5)" in text


def test_roff_escapes() -> None:
    """Minus signs stay minus signs (copy-paste of options works), and no text line starts a request."""
    assert manpage.escape("--config") == "\\-\\-config"
    assert manpage.escape(".ini and 'quoted'\n.x") == "\\&.ini and 'quoted'\n\\&.x"
    assert manpage.escape("a\\b") == "a\\eb"
    page = manpage.render(date="2026-01-01")
    body = [line for line in page.splitlines() if not line.startswith(".")]
    assert not [line for line in body if line.startswith("'")]


def test_date_comes_from_source_date_epoch(tmp_path: Path) -> None:
    """Two builds of one version give the same bytes (reproducible builds): the date is $SOURCE_DATE_EPOCH's."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1796342400"}  # 2026-12-04T00:00:00Z
    pages = []
    for run in ("first", "second"):
        out = tmp_path / f"{run}.8"
        subprocess.run([sys.executable, "-m", "dlrd.manpage", "-o", str(out)], env=env, check=True, timeout=60)
        pages.append(out.read_bytes())
    assert pages[0] == pages[1]
    assert pages[0].startswith(b'.TH DLRD 8 "2026-12-04" "dlrd ' + __version__.encode() + b'"')
