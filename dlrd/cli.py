"""The `dlrd` command line: one program, one subcommand per job.

Failures the operator can fix end as one line on stderr and a documented
exit code; DLRD_DEBUG=1 shows the traceback as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from dlrd import __version__
from dlrd.config import CONFIG_ENV, Config, default_config_path, load_config, render_effective, render_example
from dlrd.errors import EXIT_CODES, EXIT_NOT_ACCEPTED, EXIT_OK, EXIT_UNREACHABLE, ConfigError, DlrdError
from dlrd.sendtest import SendFailed, TlsOptions, build_envelope, describe, new_message_id, post_envelope


def build_parser() -> argparse.ArgumentParser:
    exit_codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="dlrd",
        description="Receive, store and answer Connection Software SOAP delivery receipts.",
        epilog=f"exit codes:\n{exit_codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH",
                        help=f"ini file to read (default: ${CONFIG_ENV}, else built-in defaults)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser("serve", help="run the daemon in the foreground (the default)")

    check = commands.add_parser("check-config", help="validate the config and print the effective settings")
    check.add_argument("--example", action="store_true",
                       help="print the documented example ini with every key and its default instead")

    send = commands.add_parser("send-test", help="POST a receipt like the provider does and print the answer")
    send.add_argument("url", help="the receipt URL, like http://127.0.0.1:8080/")
    send.add_argument("--message-id", help="MessageIdentifier (default: a new unique one)")
    send.add_argument("--sent-to", default="447009123456", help="SentTo (default: %(default)s)")
    send.add_argument("--report", default="0", help="Report code (default: %(default)s)")
    send.add_argument("--timestamp", help="Timestamp1 (default: now, like 2002-08-27T13:38:00Z)")
    send.add_argument("--username", default="ANOther.61234", help="Username (default: %(default)s)")
    send.add_argument("--pin", default="BLUE.music", help="PIN (default: %(default)s)")
    send.add_argument("--no-credentials", action="store_true", help="send no Username and no PIN")
    send.add_argument("--content-type", default="text/soap", help="Content-Type (default: %(default)s)")
    send.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default: %(default)s)")
    send.add_argument("--cafile", help="CA bundle to verify an https:// receiver with")
    send.add_argument("--insecure", action="store_true", help="do not verify the receiver's certificate")
    send.add_argument("--cert", help="client certificate (PEM) for receivers that require one")
    send.add_argument("--key", help="private key of --cert, if not in the same file")

    commands.add_parser("version", help="print the version")
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
    config = load_config(args.config or default_config_path())
    if command == "check-config":
        _check_certificates(config)
        for warning in config.warnings:
            print(f"dlrd: warning: {warning}", file=sys.stderr)
        sys.stdout.write(render_effective(config))
        return EXIT_OK
    from dlrd.daemon import serve  # the daemon's imports are only paid for by `serve`

    return serve(config)


def _check_certificates(config: Config) -> None:
    """check-config loads the certificate and key the way serve will, so a bad pair fails here first."""
    if not config["server", "tls_listen"]:
        return
    from dlrd.tls import build_server_context, certificate_files

    try:
        build_server_context(certificate_files(config))
    except DlrdError as error:
        raise ConfigError(f"{config.source or 'built-in defaults'} {error}") from None


def _send_test(args: argparse.Namespace) -> int:
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
