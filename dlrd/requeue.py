"""Re-ingesting quarantined requests (`dlrd replay --quarantine`) through the network path's rules.

Each kept request is parsed and judged by `receiver.admit` with the config
as it is now; what passes is inserted with its original arrival time and
source, and its quarantine row deleted in the same transaction, BATCH rows
to a transaction so a daemon beside it waits for the lock briefly.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

from dlrd import storage
from dlrd.auth import Credentials
from dlrd.codes import ReportCodeTable
from dlrd.config import Config
from dlrd.errors import StartupError
from dlrd.messages import split_content_type
from dlrd.receiver import (
    Admitted,
    Refused,
    admit,
    credentials,
)
from dlrd.review import selected
from dlrd.soap import REDACTED_PIN, EnvelopeRejected, parse_envelope, version_from_content_type
from dlrd.store import ReceiptInsert

BATCH = 500


@dataclass
class ReplayReport:
    """What one replay did: receipts stored, already stored, and what stayed with why."""

    stored: int = 0
    duplicates: int = 0
    stayed: list[str] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # the quarantine ids the selection found


def replay_quarantine(config: Config, args: argparse.Namespace) -> ReplayReport:
    """Replay the selected rows in batches, each batch one transaction."""
    database = storage.describe(config)
    if not storage.on_postgresql(config) and not config.database_path.is_file():
        raise StartupError(f"no database at {database}: nothing was quarantined there")
    codes = ReportCodeTable(config.report_codes)
    # The receipts it stores are this node's: its daemon journals them.
    rules = (credentials(config), codes, storage.expected_messages(config), config["server", "node"])
    report = ReplayReport()
    try:
        connection = storage.open_writer(config)  # an older dlrd's quarantine gains its kind and message_id
        reader = storage.open_reader(config)
        rows = selected(reader, args, "id, received_at, remote_addr, authenticated, content_type, body")
        batch: list[sqlite3.Row] = []
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH:
                _replay_batch(connection, batch, rules, args, report)
                batch = []
        if batch:
            _replay_batch(connection, batch, rules, args, report)
    except sqlite3.Error as error:
        raise StartupError(f"cannot replay into the database {database}: {error} (is it locked for longer than "
                           "[storage] lock_timeout?)") from None
    return report


def _replay_batch(connection: sqlite3.Connection, rows: Iterable[sqlite3.Row], rules: tuple,
                  args: argparse.Namespace, report: ReplayReport) -> None:
    admitted: list[tuple[int, ReceiptInsert]] = []
    for row in rows:
        report.seen.add(row["id"])
        # A request that passed a configured PIN check before a field rule or strict_match refused it
        # needs no one's word for its redacted PIN; any other needs the operator's.
        outcome = _judge(row, rules, args.trust_credentials or bool(row["authenticated"]))
        if isinstance(outcome, str):
            report.stayed.append(f"#{row['id']} ({row['received_at']} from {row['remote_addr']}): {outcome}")
        else:
            admitted.append((row["id"], outcome))
    if not admitted:
        return
    # A dry run does the same and rolls back, so that what it says about
    # receipts already stored (a provider's retry, one kept twice) is exact.
    connection.execute("BEGIN IMMEDIATE")
    try:
        stored = storage.insert_receipts(connection, [job for _, job in admitted])
        connection.executemany("DELETE FROM quarantine WHERE id = ?", [(row_id,) for row_id, _ in admitted])
        connection.execute("ROLLBACK" if args.dry_run else "COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    duplicates = sum(outcome.duplicate for outcome in stored)
    report.duplicates += duplicates
    report.stored += len(stored) - duplicates


def _judge(row: sqlite3.Row, rules: tuple, trust_credentials: bool) -> ReceiptInsert | str:
    """The insert job for a kept request that passes today's rules, or why it stays."""
    media_type, charset = split_content_type(row["content_type"])
    try:
        envelope = parse_envelope(bytes(row["body"]), charset, version_from_content_type(media_type))
    except EnvelopeRejected as rejected:
        return f"not a receipt: {rejected.reason}"
    creds, codes, expected, node = rules
    if creds.pin:
        if trust_credentials:  # the operator vouches for the PIN (redacted, or missing); the Username must match
            creds = Credentials(creds.username, "")
        elif envelope.fields.get("PIN") == REDACTED_PIN:
            return ("its PIN was redacted when it was kept, so it cannot authenticate; if it came from the "
                    "provider, replay it with --trust-credentials")
    verdict: Admitted | Refused = admit(envelope, creds, codes, expected)
    if isinstance(verdict, Refused):
        return f"{verdict.kind}: {verdict.reason}"
    return ReceiptInsert(verdict.receipt, verdict.code, row["received_at"], row["remote_addr"], None, node)


