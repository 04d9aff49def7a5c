"""SPEC section 4: one ini file, refused at start with the file, section, key and reason on one line.

The commands run as subprocesses, as an operator runs them, in an empty
directory with none of dlrd's environment variables set.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from provider import receipt_envelope
from wire import post

from dlrd.cli import build_parser
from dlrd.config import SETTINGS, load_config
from dlrd.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
DLRD_VARIABLES = ("DLRD_CONFIG", "STATE_DIRECTORY", "LOGS_DIRECTORY", "CREDENTIALS_DIRECTORY", "DLRD_DEBUG")


def dlrd(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if key not in DLRD_VARIABLES}
    return subprocess.run([sys.executable, "-m", "dlrd", *args], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def write_ini(directory: Path, text: str, name: str = "dlrd.ini") -> Path:
    """`text` as an ini file, with data kept inside the test's directory unless `text` says otherwise."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_dict({"storage": {"database": str(directory / "data" / "dlrd.db")},
                      "journal": {"directory": str(directory / "data")}})
    parser.read_string(text)
    path = directory / name
    with open(path, "w") as handle:
        parser.write(handle)
    return path


def assert_one_line_naming(stderr: str, *parts: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    for part in parts:
        assert part in lines[0], f"{part!r} missing from {lines[0]!r}"
    assert "Traceback" not in stderr


BAD_VALUES = [
    ("server", "max_body_bytes", "lots", "size"),
    ("server", "max_body_bytes", "0", "more than 0"),
    ("server", "request_timeout", "-1", "seconds"),
    ("server", "max_connections", "0", "above 0"),
    ("server", "listen", "localhost", "host:port"),
    ("server", "listen", "127.0.0.1:70000", "65535"),
    ("server", "path", "receipts", "starting with /"),
    ("server", "path", "/healthz", "dlrd's own endpoint"),
    ("storage", "synchronous", "sometimes", "full"),
    ("log", "level", "loud", "debug"),
    ("log", "access_log", "maybe", "yes or no"),
    ("report_codes", "abc", "Oops, failed, yes", "report code number"),
    ("report_codes", "1000", "Too big, failed, yes", "3 digits"),
    ("report_codes", "27", "Expired, gone, yes", "state"),
    ("report_codes", "27", "Expired, failed, perhaps", "final"),
    ("report_codes", "27", "Expired", "<label>, <state>, <final>"),
    ("auth", "pin", "<redacted>", "what check-config prints in place of the secret"),
]


@pytest.mark.parametrize(("section", "key", "value", "reason"), BAD_VALUES,
                         ids=[f"{section}.{key}={value}" for section, key, value, _ in BAD_VALUES])
def test_bad_value_is_refused_by_check_config_with_one_line(tmp_path, section, key, value, reason):
    ini = write_ini(tmp_path, f"[{section}]\n{key} = {value}\n", name="receiver.ini")

    result = dlrd("--config", str(ini), "check-config", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stdout == ""
    assert_one_line_naming(result.stderr, "receiver.ini", f"[{section}]", key, reason)


@pytest.mark.parametrize(("section", "key", "value", "reason"), [BAD_VALUES[0], BAD_VALUES[8], BAD_VALUES[13]],
                         ids=["size", "choice", "report-code"])
def test_bad_value_stops_serve_before_anything_starts(tmp_path, section, key, value, reason):
    """Nothing half-starts: no database, no journal, no listener, exit 1."""
    ini = write_ini(tmp_path, f"[server]\nlisten = 127.0.0.1:0\n[{section}]\n{key} = {value}\n")

    result = dlrd("--config", str(ini), "serve", cwd=tmp_path)

    assert result.returncode == 1
    assert_one_line_naming(result.stderr, "dlrd.ini", f"[{section}]", key, reason)
    assert not (tmp_path / "data").exists()
    assert "listening" not in result.stderr


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_unknown_key_is_refused(tmp_path, command):
    ini = write_ini(tmp_path, "[server]\nlisten_port = 8080\n")

    result = dlrd("--config", str(ini), command, cwd=tmp_path)

    assert result.returncode == 1
    assert_one_line_naming(result.stderr, "dlrd.ini", "[server]", "listen_port", "unknown key")


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_unknown_section_is_refused(tmp_path, command):
    ini = write_ini(tmp_path, "[sever]\nlisten = 127.0.0.1:8080\n")

    result = dlrd("--config", str(ini), command, cwd=tmp_path)

    assert result.returncode == 1
    assert_one_line_naming(result.stderr, "dlrd.ini", "[sever]", "unknown section")


def test_missing_config_file_is_refused(tmp_path):
    result = dlrd("--config", str(tmp_path / "absent.ini"), "check-config", cwd=tmp_path)

    assert result.returncode == 1
    assert_one_line_naming(result.stderr, "absent.ini", "no such file")


def test_not_an_ini_file_is_refused(tmp_path):
    ini = tmp_path / "dlrd.ini"
    ini.write_text("listen = 127.0.0.1:8080\n")

    result = dlrd("--config", str(ini), "check-config", cwd=tmp_path)

    assert result.returncode == 1
    assert_one_line_naming(result.stderr, "dlrd.ini")


def test_check_config_prints_the_effective_settings_with_the_pin_redacted(tmp_path):
    ini = write_ini(tmp_path, "[auth]\nusername = ANOther.61234\npin = BLUE.music\n"
                              "[server]\nmax_body_bytes = 32k\n[report_codes]\n99 = Held for review, pending, no\n")

    result = dlrd("--config", str(ini), "check-config", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "BLUE.music" not in result.stdout + result.stderr
    assert re.search(r"^pin = <redacted>$", result.stdout, re.M)
    assert re.search(r"^username = ANOther\.61234$", result.stdout, re.M)
    assert re.search(r"^max_body_bytes = 32768$", result.stdout, re.M)
    assert re.search(r"^99 = Held for review, pending, no$", result.stdout, re.M)
    # Every key of the table is shown, defaults included.
    for setting in SETTINGS:
        assert re.search(rf"^{setting.name} = ", result.stdout, re.M), setting.name


def test_dlrd_config_variable_names_the_file_and_config_option_wins(tmp_path):
    from_env = write_ini(tmp_path, "[server]\nrequest_timeout = 7\n", name="from-env.ini")
    from_option = write_ini(tmp_path, "[server]\nrequest_timeout = 9\n", name="from-option.ini")

    by_env = dlrd("check-config", cwd=tmp_path, env={"DLRD_CONFIG": str(from_env)})
    by_option = dlrd("--config", str(from_option), "check-config", cwd=tmp_path, env={"DLRD_CONFIG": str(from_env)})

    assert by_env.returncode == 0 and re.search(r"^request_timeout = 7$", by_env.stdout, re.M)
    assert by_option.returncode == 0 and re.search(r"^request_timeout = 9$", by_option.stdout, re.M)


def test_dlrd_config_variable_pointing_at_a_bad_file_is_refused(tmp_path):
    bad = write_ini(tmp_path, "[log]\nlevel = chatty\n", name="env.ini")

    result = dlrd("check-config", cwd=tmp_path, env={"DLRD_CONFIG": str(bad)})

    assert result.returncode == 1
    assert_one_line_naming(result.stderr, "env.ini", "[log]", "level")


def test_without_a_config_the_defaults_serve_loopback_8080_with_data_in_dlrd_data(tmp_path):
    result = dlrd("check-config", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert re.search(r"^listen = 127\.0\.0\.1:8080$", result.stdout, re.M)
    assert re.search(r"^database = (\S*/)?dlrd-data/dlrd\.db$", result.stdout, re.M)
    assert re.search(r"^directory = (\S*/)?dlrd-data$", result.stdout, re.M)


def test_report_codes_section_overrides_and_adds_codes_used_by_the_daemon(daemon_factory):
    daemon = daemon_factory("[report_codes]\n27 = Expired, really, failed, yes\n99 = Held for review, pending, no\n")

    post(daemon.address, receipt_envelope(MessageIdentifier="OVR27", Report="27"))
    post(daemon.address, receipt_envelope(MessageIdentifier="OVR99", Report="99"))
    post(daemon.address, receipt_envelope(MessageIdentifier="OVR0", Report="0"))

    stored = {row["message_id"]: (row["label"], row["state"], row["final"])
              for row in daemon.rows("SELECT * FROM receipts")}
    assert stored == {
        "OVR27": ("Expired, really", "failed", 1),
        "OVR99": ("Held for review", "pending", 0),
        "OVR0": ("Accepted by phone", "delivered", 1),
    }
    assert {line["message_id"]: line["label"] for line in daemon.journal()}["OVR99"] == "Held for review"


def test_etc_dlrd_ini_is_the_generated_example(tmp_path):
    """The documented example cannot drift from the settings table it is generated from."""
    result = dlrd("check-config", "--example", cwd=tmp_path)

    assert result.returncode == 0
    assert (ROOT / "etc" / "dlrd.ini").read_text() == result.stdout


def test_etc_dlrd_ini_documents_every_key_under_its_section():
    text = (ROOT / "etc" / "dlrd.ini").read_text()
    sections = re.split(r"^\[(\w+)\]$", text, flags=re.M)
    documented = {name: body for name, body in zip(sections[1::2], sections[2::2])}
    for setting in SETTINGS:
        assert re.search(rf"^#{setting.name} =", documented.get(setting.section, ""), re.M), \
            f"[{setting.section}] {setting.name} is not in etc/dlrd.ini"


def test_loading_etc_dlrd_ini_gives_the_built_in_defaults():
    example = load_config(str(ROOT / "etc" / "dlrd.ini"), environ={})
    defaults = load_config(None, environ={})

    assert example.values == defaults.values
    assert example.report_codes == defaults.report_codes == {}


def help_text(tmp_path: Path, *args: str) -> str:
    result = dlrd(*args, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def subcommands() -> list[str]:
    parser = build_parser()
    [commands] = [action for action in parser._actions if action.choices and isinstance(action.choices, dict)]
    return sorted(commands.choices)


def test_every_exit_code_and_subcommand_is_documented(tmp_path):
    documentation = (ROOT / "README.md").read_text() + help_text(tmp_path)

    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^\s*{code}\s+\S", documentation, re.M), f"exit code {code} ({meaning}) is undocumented"
    assert {"serve", "check-config", "send-test", "version"} <= set(subcommands())
    for command in subcommands():
        assert re.search(rf"\b{re.escape(command)}\b", documentation), f"{command} is undocumented"


@pytest.mark.parametrize("command", subcommands())
def test_help_works_for_every_subcommand(tmp_path, command):
    assert f"usage: dlrd {command}" in help_text(tmp_path, command)


def test_version_prints_the_version(tmp_path):
    from dlrd import __version__

    result = dlrd("version", cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout.strip() == f"dlrd {__version__}"
