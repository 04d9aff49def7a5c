"""The JSONL journal: one line per stored receipt, for programs that tail it.

Only the store's writer thread calls into a JournalWriter, so nothing here
locks. Lines carry the receipt's `id`: delivery to the file is at least
once, and a consumer drops the rare repeat by id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

JOURNAL_NAME = "receipts.jsonl"
JOURNAL_FIELDS = (
    "id", "received_at", "message_id", "sent_to", "report", "label", "state", "final", "timestamp", "remote_addr",
)
_TAIL_BYTES = 64 * 1024


def journal_line(row: dict[str, Any]) -> bytes:
    """One receipt as the journal's JSON object; `tls_client` only when there is one."""
    record = {name: row[name] for name in JOURNAL_FIELDS}
    record["final"] = bool(record["final"])
    if row.get("tls_client"):
        record["tls_client"] = row["tls_client"]
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class JournalWriter:
    """Appends whole lines to receipts.jsonl, and knows the last id it holds."""

    def __init__(self, directory: Path, fsync: bool = False) -> None:
        self.directory = directory
        self.path = directory / JOURNAL_NAME
        self.fsync = fsync
        self._file: Any = None

    def open(self) -> None:
        """Open for appending, cutting off a line a crash left half-written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._drop_partial_line()
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open across calls)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, lines: Iterable[bytes]) -> None:
        """Write the lines in one call, so a reader never sees half a batch mid-line."""
        data = b"".join(lines)
        if not data:
            return
        if self._file is None:
            self.open()
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._file.fileno())

    def last_id(self) -> int:
        """The id on the journal's last complete line, 0 when there is none."""
        try:
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - _TAIL_BYTES))
                tail = handle.read()
        except FileNotFoundError:
            return 0
        for line in reversed(tail.split(b"\n")):
            try:
                return int(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                continue
        return 0

    def _drop_partial_line(self) -> None:
        try:
            with open(self.path, "r+b") as handle:
                size = handle.seek(0, os.SEEK_END)
                if size == 0:
                    return
                handle.seek(max(0, size - _TAIL_BYTES))
                tail = handle.read()
                if tail.endswith(b"\n"):
                    return
                cut = tail.rfind(b"\n")
                handle.truncate(size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail)))
        except FileNotFoundError:
            return
