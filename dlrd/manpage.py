"""dlrd(8), written from the argparse definitions so that the man page cannot drift from --help.

packaging/build-deb.sh runs `python -m dlrd.manpage -o dlrd.8` at build time:
every subcommand (nested ones such as `quarantine list` included), each
option with its metavar, help text and default exactly as --help shows
them, the exit codes from dlrd.errors, and the files and environment the
Debian package and its unit use. The date comes from $SOURCE_DATE_EPOCH
when set, so two builds of one version give the same bytes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dlrd import __version__
from dlrd.config import CONFIG_ENV, DATABASE_NAME
from dlrd.errors import EXIT_CODES

ENVIRONMENT = (
    (CONFIG_ENV, "the ini file to read when no --config is given; without either, dlrd runs on built-in defaults."),
    ("DLRD_DEBUG", "when set (to anything), a failure prints its Python traceback after the one-line message."),
    ("STATE_DIRECTORY",
     f"set by systemd (StateDirectory=dlrd): where an empty [storage] database puts {DATABASE_NAME}."),
    ("LOGS_DIRECTORY", "set by systemd (LogsDirectory=dlrd): where an empty [journal] directory puts receipts.jsonl."),
    ("CREDENTIALS_DIRECTORY", "set by systemd (LoadCredential=): where [auth] pin_credential is read from."),
    ("LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES",
     "set by systemd's socket activation (dlrd.socket): serve on the sockets handed over instead of binding "
     "listen and tls_listen; a name starting with https or tls is served with TLS."),
    ("NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID",
     "set by systemd for Type=notify and WatchdogSec=: READY, RELOADING, STOPPING and the watchdog's pings."),
    ("JOURNAL_STREAM", "set by systemd when stderr is the journal: each log line then carries its <N> priority."),
)

FILES = (
    ("/etc/dlrd/dlrd.ini", "the configuration (a conffile, mode 0640, group dlrd); "
                           "dlrd check-config --example prints every key with its default."),
    (f"/var/lib/dlrd/{DATABASE_NAME}", "the SQLite database of receipts (with its -wal and -shm files)."),
    ("/var/log/dlrd/receipts.jsonl", "the journal: one JSON line per stored receipt, rotated by logrotate."),
    ("/lib/systemd/system/dlrd.service", "the unit: dlrd binds the ini's listen and tls_listen addresses itself."),
    ("/usr/share/dlrd/socket-activated/", "the socket-activated dlrd.service with dlrd.socket and dlrd-http.socket, "
                                          "to copy into /etc/systemd/system/ instead."),
    ("/usr/lib/sysusers.d/dlrd.conf", "the dlrd system user and group."),
    ("/etc/logrotate.d/dlrd", "daily rotation of the journal."),
    ("/usr/share/dlrd/certbot-deploy-hook", "certbot deploy hook that hands a renewed certificate to dlrd; "
                                            "install it as /etc/letsencrypt/renewal-hooks/deploy/dlrd."),
)

SEE_ALSO = ("systemctl(1)", "journalctl(1)", "systemd.service(5)", "systemd.socket(5)", "sysusers.d(5)",
            "logrotate(8)", "certbot(1)")


def escape(text: str) -> str:
    """Roff-safe text: backslashes kept literal, minus signs as minus signs, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def bold(text: str) -> str:
    return f"\\fB{escape(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{escape(text)}\\fR"


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def walk(parser: argparse.ArgumentParser, prefix: str = "dlrd") -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(full command name, one-line help, parser) for every subcommand, depth first, in --help's order."""
    subcommands = _subcommands(parser)
    if subcommands is None:
        return
    helps = {choice.dest: choice.help or "" for choice in subcommands._choices_actions}
    for name, sub in subcommands.choices.items():
        yield f"{prefix} {name}", helps.get(name, ""), sub
        yield from walk(sub, f"{prefix} {name}")


def usage(parser: argparse.ArgumentParser) -> str:
    """argparse's own usage line, unwrapped: the synopsis --help prints."""
    text = parser.format_usage().strip()
    text = text.removeprefix("usage:").strip()
    return re.sub(r"\s+", " ", text)


def invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """`--since TIME` or `url` as roff, the metavar as argparse would name it."""
    formatter = parser._get_formatter()
    if not action.option_strings:
        return italic(formatter._metavar_formatter(action, action.dest)(1)[0])
    names = ", ".join(bold(option) for option in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
    return f"{names} {italic(metavar)}"


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help --help shows for the action, defaults and choices expanded by the parser's own formatter."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    text = parser._get_formatter()._expand_help(action)
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        choices = ", ".join(str(choice) for choice in action.choices)
        if choices not in text:
            text = f"{text} (one of: {choices})"
    return text


def options(parser: argparse.ArgumentParser) -> list[str]:
    """A .TP paragraph per argument, -h and the subcommand list left out (the man page is their help)."""
    lines: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        lines += [".TP", invocation(parser, action)]
        text = help_text(parser, action)
        if text:
            lines.append(escape(text))
    return lines


def build_date() -> str:
    """$SOURCE_DATE_EPOCH's day (reproducible builds), else today's, in UTC."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def render(parser: argparse.ArgumentParser | None = None, date: str | None = None) -> str:
    """The whole dlrd(8) page as roff (man macros)."""
    if parser is None:
        from dlrd.cli import build_parser

        parser = build_parser()
    lines = [
        f'.TH DLRD 8 "{date or build_date()}" "dlrd {__version__}" "System Administration"',
        ".SH NAME",
        "dlrd \\- receive, store and answer Connection Software SOAP delivery receipts",
        ".SH SYNOPSIS",
        f"{bold('dlrd')} [{bold('--config')} {italic('PATH')}] {italic('COMMAND')} [{italic('OPTIONS')}]",
        ".br",
        f"{bold('dlrd --version')}",
        ".SH DESCRIPTION",
        escape(parser.description or ""),
        ".PP",
        escape("Under systemd, dlrd runs as `dlrd serve` (Type=notify, user dlrd): systemctl start, reload "
               "(SIGHUP: re-read the ini, reload the certificate, reopen the journal) and stop. The other commands "
               "read the same database and journal; --config is taken before or after the command. Every command "
               "accepts -h (--help), which prints what follows for that command."),
        ".SH OPTIONS",
        *options(parser),
        ".SH COMMANDS",
    ]
    for name, summary, sub in walk(parser):
        lines += [f'.SS "{escape(name)}"', escape(summary), ".PP", escape(usage(sub))]
        if sub.description and sub.description != summary:
            lines += [".PP", escape(sub.description)]
        lines += options(sub)
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_CODES.items():
        lines += [".TP", bold(str(code)), escape(meaning)]
    lines.append(".SH ENVIRONMENT")
    for name, meaning in ENVIRONMENT:
        lines += [".TP", bold(name), escape(meaning)]
    lines.append(".SH FILES")
    for path, meaning in FILES:
        lines += [".TP", italic(path), escape(meaning)]
    lines.append(".SH SEE ALSO")
    lines.append(",\n".join(bold(ref.split("(")[0]) + "(" + ref.split("(")[1] for ref in SEE_ALSO))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m dlrd.manpage [-o FILE]`: the page on stdout or into FILE."""
    arguments = argparse.ArgumentParser(prog="python -m dlrd.manpage", description="write dlrd(8) as roff")
    arguments.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    args = arguments.parse_args(argv)
    page = render()
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)  # /usr/local/share/man/man8 is often not there yet
        output.write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
