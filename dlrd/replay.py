"""`dlrd replay`: let quarantined requests in once the cause is fixed, or rebuild the database from journals.

`--quarantine` reads each kept request again through the rules the network
path applies (`receiver.admit`, with the config as it is now), so a fixed
PIN, a report code added to [report_codes] or an id now expected lets it
in. A receipt is stored with its original arrival time and source, and its
quarantine row is deleted in the same transaction: it is never in both
places, nor in neither. What stays is listed with the reason it stays.

The kept bodies had their PIN redacted, so they cannot prove who sent
them again. One kept for a field rule or for strict_match passed the
Username/PIN check when it came, and is taken as authenticated; one kept
because authentication failed passes, with credentials configured, only
under `--trust-credentials`: the operator vouches for it, never dlrd
silently. The Username is checked either way.

This process writes the database directly, beside the daemon if one runs
(waiting for its lock like any writer); the daemon writes the journal
lines of what replay stored, within a second, and a daemon started later
catches up the same way. The re-ingesting is dlrd.requeue's, the
rebuilding (`--journal`) dlrd.rebuild's; both are imported only when they
run, so that `dlrd --help` and the read-only commands do not pay for lxml
and the storage code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlrd.config import Config
from dlrd.errors import EXIT_OK, UsageError
from dlrd.review import add_selection


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--quarantine", action="store_true",
                        help="re-ingest kept requests through today's rules (select them with the options below)")
    source.add_argument("--journal", nargs="+", type=Path, metavar="FILE",
                        help="fill or rebuild the database from JSONL journal files (.gz too), keeping their ids")
    add_selection(parser)
    parser.add_argument("--trust-credentials", action="store_true",
                        help="take requests kept for failed authentication, whose PIN was redacted, as "
                             "authenticated: they came from the provider (say so only when you know it; the "
                             "Username is still checked)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be stored and what would stay; "
                                                               "change nothing")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    if args.journal:
        if args.ids or args.since or args.until or args.reason or args.trust_credentials:
            raise UsageError("--id, --since, --until, --reason and --trust-credentials select quarantined "
                             "requests; they do not go with --journal")
        return _rebuild(config, args.journal, args.dry_run)
    from dlrd.requeue import replay_quarantine

    report = replay_quarantine(config, args)
    stored, already = ("would be stored", "already stored (their rows would go too)") if args.dry_run else (
        "stored", "already stored (their rows went too)")
    print(f"{report.stored + report.duplicates + len(report.stayed)} quarantined request(s): "
          f"{report.stored} {stored}, {report.duplicates} {already}, {len(report.stayed)} stay")
    for line in report.stayed:
        print(f"  stays: {line}")
    for missing in sorted(set(args.ids or ()) - report.seen):
        beside = " that --since, --until or --reason also pick" if args.since or args.until or args.reason else ""
        print(f"  not found: #{missing}: no such request in the quarantine{beside} (stored by an earlier replay, "
              "or deleted)")
    if report.stored and not args.dry_run:
        print("the running daemon journals the stored receipts within a second (or dlrd serve at its next start)")
    return EXIT_OK


def _rebuild(config: Config, files: list[Path], dry_run: bool) -> int:
    from dlrd.rebuild import rebuild_from_journals

    if dry_run:
        raise UsageError("--dry-run goes with --quarantine only")
    from dlrd import storage

    connection = storage.open_writer(config) if storage.on_postgresql(config) else None
    report = rebuild_from_journals(config.database_path, files, progress=sys.stderr, connection=connection)
    print(report)
    return EXIT_OK
