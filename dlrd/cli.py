"""The `dlrd` command line: one program, one subcommand per job.

Failures the operator can fix end as one line on stderr and a documented
exit code; DLRD_DEBUG=1 shows the traceback as well. `--config` is taken
before or after the subcommand: each subcommand that reads the config
declares it again, with SUPPRESS as its default so that one given before
the subcommand is not overwritten by the subcommand's absent one.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import NoReturn

from dlrd import __version__
from dlrd.config import CONFIG_ENV, Config, default_config_path, load_config, render_effective, render_example
from dlrd.errors import EXIT_CODES, EXIT_NOT_ACCEPTED, EXIT_OK, EXIT_UNREACHABLE, DlrdError

CONFIG_HELP = f"ini file to read (default: ${CONFIG_ENV}, else built-in defaults)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help, and descriptions kept as written.

    A default of None or False (an option that is off unless given) is not
    shown: "(default: None)" tells the operator nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An unusable argument is exit 2 and one line, which names the --help that explains."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """--config on a subcommand: SUPPRESS keeps one given before the subcommand from being overwritten."""
    parser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)


def _url_argument(text: str) -> str:
    from dlrd.sendtest import url_argument  # ssl, urllib and lxml are paid for by send-test alone

    return url_argument(text)


def build_parser() -> argparse.ArgumentParser:
    from dlrd import expect, query, replay, review, stats

    exit_codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = Parser(
        prog="dlrd",
        description="Receive, store and answer Connection Software SOAP delivery receipts.",
        epilog=f"exit codes:\n{exit_codes}",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    parser.add_argument("--version", action="version", version=f"dlrd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, reads_config: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if reads_config:
            add_config_option(sub)
        return sub

    command("serve", "run the daemon in the foreground (the default)")

    check = command("check-config", "validate the config as serve would, and print the effective settings")
    check.add_argument("--example", action="store_true",
                       help="print the documented example ini with every key and its default instead")

    send = command("send-test", "POST a receipt like the provider does and print the answer", reads_config=False)
    send.add_argument("url", type=_url_argument, help="the receipt URL, like http://127.0.0.1:8080/")
    send.add_argument("--message-id", help="MessageIdentifier (default: a new unique one)")
    send.add_argument("--sent-to", default="447009123456", help="SentTo")
    send.add_argument("--report", default="0", help="Report code")
    send.add_argument("--timestamp", help="Timestamp1 (default: now, like 2002-08-27T13:38:00Z)")
    send.add_argument("--username", default="ANOther.61234", help="Username")
    send.add_argument("--pin", default="BLUE.music", help="PIN")
    send.add_argument("--no-credentials", action="store_true", help="send no Username and no PIN")
    send.add_argument("--content-type", default="text/soap", help="Content-Type")
    send.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    send.add_argument("--cafile", help="CA bundle to verify an https:// receiver with")
    send.add_argument("--insecure", action="store_true", help="do not verify the receiver's certificate")
    send.add_argument("--cert", help="client certificate (PEM) for receivers that require one")
    send.add_argument("--key", help="private key of --cert, if not in the same file")

    query.add_arguments(command("query", "receipts by message id, number, state, report code or time"))
    stats.add_arguments(command("stats", "counts by state and report code, delivery rate, lag and traffic"))
    review.add_arguments(command("quarantine", "the refused requests dlrd kept, and why"))
    replay.add_arguments(command("replay", "let quarantined requests in, or rebuild the database from journals"))
    expect.add_arguments(command("expect", "record submitted message ids for [storage] strict_match"))
    command("version", "print the version", reads_config=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except DlrdError as error:
        if os.environ.get("DLRD_DEBUG"):
            traceback.print_exc()
        print(f"dlrd: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `dlrd query | head`: the reader has what it wanted
        sys.stderr.close()
        return EXIT_OK


# Commands the reader group runs (README "Secrets and readers"): they read the database, never the PIN file.
READS_NO_PIN = ("query", "stats", "quarantine")


def _run(args: argparse.Namespace) -> int:
    command = args.command or "serve"
    if command == "version":
        print(f"dlrd {__version__}")
        return EXIT_OK
    if command == "send-test":
        return _send_test(args)
    if command == "check-config" and args.example:
        sys.stdout.write(render_example())
        return EXIT_OK
    config = load_config(args.config or default_config_path(), read_pin=command not in READS_NO_PIN,
                         serving=command == "serve")
    if command == "check-config":
        return _check_config(config)
    if command == "serve":
        from dlrd.daemon import serve  # the daemon's imports are only paid for by `serve`

        return serve(config)
    return args.run(args, config)


def _check_config(config: Config) -> int:
    """What serve would refuse at start, refused here with the same line; then the effective settings
    and the report-code table receipts are stored with.

    The table's lines are ini comments, so the whole output is a config file again once the real PIN
    replaces `<redacted>` (which load_config refuses as a secret).
    """
    from dlrd.codes import BUILTIN_CODES, ReportCodeTable
    from dlrd.preflight import check_startup

    for warning in [*config.warnings, *check_startup(config)]:
        print(f"dlrd: warning: {warning}", file=sys.stderr)
    sys.stdout.write(render_effective(config))
    rows = [("code", "label", "state", "final", "from")]
    for code in ReportCodeTable(config.report_codes).items():
        origin = "built-in"
        if code.code in config.report_codes:
            origin = "[report_codes], replaces built-in" if code.code in BUILTIN_CODES else "[report_codes]"
        rows.append((str(code.code), code.label, code.state, "yes" if code.final else "no", origin))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    print("\n# report codes in effect")
    for code_text, label, state, final, origin in rows:
        print(f"# {code_text:>{widths[0]}}  {label:<{widths[1]}}  {state:<{widths[2]}}  {final:<{widths[3]}}  {origin}")
    return EXIT_OK


def _send_test(args: argparse.Namespace) -> int:
    from dlrd.sendtest import SendFailed, TlsOptions, build_envelope, describe, new_message_id, post_envelope

    body = build_envelope(
        message_id=args.message_id or new_message_id(),
        sent_to=args.sent_to,
        report=args.report,
        timestamp=args.timestamp,
        username=None if args.no_credentials else args.username,
        pin=None if args.no_credentials else args.pin,
    )
    tls = TlsOptions(args.cafile, args.insecure, args.cert, args.key)
    try:
        result = post_envelope(args.url, body, args.content_type, args.timeout, tls)
    except SendFailed as error:
        print(f"dlrd: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(describe(result))
    return EXIT_OK if result.accepted else EXIT_NOT_ACCEPTED
