"""The JSONL journal: one line per stored receipt, for programs that tail it.

Only the store's writer thread calls into a JournalWriter, so the file,
its size and its rotation need no lock. Lines carry the receipt's `id`:
delivery to the file is at least once, and a consumer drops the rare
repeat by id.

Rotation renames receipts.jsonl to receipts-<UTC time>.jsonl and opens a
new receipts.jsonl, as logrotate would, so `tail -F receipts.jsonl`
follows it. Compressing and deleting rotated files is slow work for a
background thread (RotatedFiles), never for the writer.

An external logrotate (packaging/logrotate/dlrd) renames the file under a
running dlrd. GNU `tail -F` (coreutils 9.1, tail.c `recheck`) reads the
old file only until it handles the rename event: it then closes the old
descriptor without reading what is left ("tail may miss entries being
written to the old file", says its own FIXME), and reads the new file
from its start. So a line dlrd appends to the renamed file reaches no
tailing reader, however long logrotate leaves that file uncompressed; a
line written before the rename is safe, since its change event is queued
before the rename's and tail reads to the end at each. Hence
JournalWriter.append checks before each batch that receipts.jsonl still
names the open file and, when it was renamed away, reopens at once (no
SIGHUP needed), and checks again after the write: a rename that fell
between the two (microseconds) may have come before the write, so the
batch is written again into the new file. That batch may then be read
twice, once from each file; the `id` lets readers drop the repeat, as
with every at-least-once line.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import logging
import os
import re
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("dlrd.journal")

JOURNAL_NAME = "receipts.jsonl"
JOURNAL_FIELDS = (
    "id", "received_at", "message_id", "sent_to", "report", "label", "state", "final", "timestamp", "remote_addr",
)
# receipts-20261124T221700.123Z.jsonl[.gz]: fixed width, so names sort by time.
ROTATED_NAME = re.compile(r"receipts-(\d{8}T\d{6}\.\d{3}Z)\.jsonl(\.gz)?")
_STAMP_FORMAT = "%Y%m%dT%H%M%S"
_TAIL_BYTES = 64 * 1024
_COPY_CHUNK = 1024 * 1024

Clock = Callable[[], float]
# One encoder for every line: json.dumps with separators builds a new one per call.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def journal_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One receipt (a stored row, or an insert's record) as the journal's object: final a boolean,
    `node` and `tls_client` only when there is one. `dlrd query` prints the same, so one jq filter
    serves both."""
    record = {name: row[name] for name in JOURNAL_FIELDS}
    record["final"] = bool(record["final"])
    if row.get("node"):
        record["node"] = row["node"]
    if row.get("tls_client"):
        record["tls_client"] = row["tls_client"]
    return record


def journal_line(row: Mapping[str, Any]) -> bytes:
    """One receipt as the journal's JSON line."""
    return _LINE_ENCODER.encode(journal_record(row)).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class Rotation:
    """When receipts.jsonl is rotated, and what becomes of the rotated files."""

    max_bytes: int = 0  # 0: not by size
    when: str = "never"  # or "midnight"
    utc: bool = True  # midnight in UTC, else in the local time zone
    backups: int = 0  # rotated files kept; 0 keeps them all
    compress: bool = False


def rotated_name(stamp_ms: int) -> str:
    """The rotated file's name for a UTC instant in milliseconds."""
    instant = datetime.fromtimestamp(stamp_ms // 1000, UTC)
    return f"receipts-{instant.strftime(_STAMP_FORMAT)}.{stamp_ms % 1000:03d}Z.jsonl"


def _stamp_of(name: str) -> int | None:
    match = ROTATED_NAME.fullmatch(name)
    if match is None:
        return None
    whole, _, millis = match.group(1).rstrip("Z").partition(".")
    try:
        instant = datetime.strptime(whole, _STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None  # looks like ours but names no real instant (month 13): not a rotated journal file
    return int(instant.timestamp()) * 1000 + int(millis)


def rotated_files(directory: Path) -> list[Path]:
    """Rotated journal files, oldest first; a file both plain and gzipped (mid-compression) counts once, plain."""
    by_stamp: dict[int, Path] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        stamp = _stamp_of(name)
        if stamp is not None and (stamp not in by_stamp or not name.endswith(".gz")):
            by_stamp[stamp] = directory / name
    return [by_stamp[stamp] for stamp in sorted(by_stamp)]


def journal_files(directory: Path) -> list[Path]:
    """Every journal file in the order its lines were written: rotated files, then receipts.jsonl."""
    current = directory / JOURNAL_NAME
    return rotated_files(directory) + ([current] if current.exists() else [])


def read_lines(path: Path) -> list[bytes]:
    """The complete lines of a journal file, gzipped or not."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    return [line for line in lines[:-1] if line.strip()]


def _read_lines_or_gzipped(path: Path) -> list[bytes]:
    """read_lines, or of the .gz the housekeeper turned a plain rotated file into while it was looked for."""
    try:
        return read_lines(path)
    except FileNotFoundError:
        if path.name.endswith(".gz"):
            raise
        return read_lines(path.with_name(path.name + ".gz"))


def _last_id(lines: Iterable[bytes]) -> int:
    for line in reversed(list(lines)):
        try:
            return int(json.loads(line)["id"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def next_midnight(now: float, utc: bool) -> float:
    """The first midnight after `now`, in UTC or in the local time zone (DST-aware)."""
    if utc:
        today = datetime.fromtimestamp(now, UTC).date()
        return datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC).timestamp()
    today = date.fromtimestamp(now)
    # A naive datetime's timestamp() is local time, through mktime(3).
    return datetime.combine(today + timedelta(days=1), datetime.min.time()).timestamp()


class JournalWriter:
    """Appends whole lines to receipts.jsonl, rotates it, and knows the last id it holds."""

    def __init__(self, directory: Path, fsync: bool = False, rotation: Rotation | None = None,
                 clock: Clock = time.time) -> None:
        self.directory = directory
        self.path = directory / JOURNAL_NAME
        self.fsync = fsync
        self.rotation = rotation or Rotation()
        self.clock = clock
        self.rotated = RotatedFiles(directory, self.rotation)
        self._file: Any = None
        self._watch: RenameWatch | None = None
        # Told each time receipts.jsonl is opened anew (a rotation, dlrd's or logrotate's): what went into the
        # file before is safe under its new name, which the store's deleted-file rewind must not go back past.
        self.on_open: Callable[[], None] | None = None
        self._next_rollover: float | None = None
        self._last_stamp = 0
        self._repair_size: int | None = None
        self._rotation_failed = False
        # The file's size, kept here rather than asked of the kernel at every
        # append: dlrd is the only writer of receipts.jsonl.
        self._size = 0

    def open(self) -> None:
        """Open for appending, cutting off a line a crash left half-written; start the housekeeper."""
        self._open_file()
        self.rotated.start()

    def close(self) -> None:
        """Close the file and stop the housekeeper (an unfinished compression is redone at next start)."""
        self._close_file()
        self.rotated.stop()

    def reopen(self, fsync: bool | None = None, rotation: Rotation | None = None) -> None:
        """Close and reopen receipts.jsonl by name (an external logrotate may have moved it),
        taking new settings when given."""
        if fsync is not None:
            self.fsync = fsync
        if rotation is not None and rotation != self.rotation:
            self.rotation = self.rotated.rotation = rotation
            self._next_rollover = None
            self.rotated.start()
        try:
            self.sync()  # an external logrotate moved the file: its lines go to disk before dlrd lets go of it
        finally:
            # Reopened even when that failed, and the failure raised after, so
            # the store records no position past lines that may not be on disk.
            self._close_file()
            self._open_file()

    def sync(self) -> None:
        """Put every line appended so far on disk, whatever `fsync` says.

        The store records the journal's position in the database only after
        this, so the position never names a line a power cut could still take.
        """
        if self._file is not None:
            os.fdatasync(self._file.fileno())

    def append(self, lines: Iterable[bytes]) -> None:
        """Write the lines in one call, so a reader never sees half a batch mid-line.

        A failed write (disk full) is cut back off the file before the error is
        raised, so the next append never continues a torn line.
        """
        data = b"".join(lines)
        if not data:
            return
        if self._file is None:
            self._open_file()
        self._repair()
        self._follow_rename()  # raises, unlike check_while_idle's: the store holds the batch back
        self.rotate_if_due(len(data))
        if self._file is None:
            self._open_file()  # a rotation renamed the file but could not open the new one
        self._write(data)
        if self._renamed_before_the_write() and self._follow_rename(again=True):
            if self._file is None:
                self._open_file()
            self._write(data)

    def _renamed_before_the_write(self) -> bool:
        """True when the file was renamed away before the write just made was seen, so tail -F may miss it.

        The rename can fall between the check before the write and the
        write: microseconds, or milliseconds when another thread holds the
        GIL. What tail -F reads depends on the order of the change events
        the kernel queues for it, and the inotify watch on the open file
        gets the same events in the same order: a rename queued after the
        write's own change event is one tail handles after reading the
        batch, so that batch is not written again. Without a watch (not
        Linux, or no inotify left), any rename seen now counts as before.
        """
        if self._watch is None:
            return self.renamed_away()
        try:
            events = self._watch.events()
        except OSError:
            return self.renamed_away()
        if IN_MOVE_SELF not in events:
            # Renamed, yet no event: before the watch was made (in the instant after the open), so before the write.
            return self.renamed_away()
        renamed = events.index(IN_MOVE_SELF)
        written = max((at for at, event in enumerate(events) if event == IN_MODIFY), default=-1)
        return written < 0 or renamed < written

    def _write(self, data: bytes) -> None:
        start = self._size
        try:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written:]
                self._size += written
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError:
            self._repair_size = start
            try:
                self._repair()
            except OSError:
                pass  # left for the next append
            raise

    def last_id(self) -> int:
        """The id on the journal's last complete line, 0 when there is none.

        Right after a rotation receipts.jsonl is empty, so the newest rotated
        file speaks for it; otherwise a restart would journal it all again.
        """
        found = self._last_id_in(self.path)
        if found:
            return found
        for path in reversed(rotated_files(self.directory)):
            try:
                found = _last_id(_read_lines_or_gzipped(path))
            except (OSError, EOFError, zlib.error):
                continue
            if found:
                return found
        return 0

    def seconds_until_rollover(self) -> float | None:
        """How long the writer may idle before a time-based rotation is due; None when there is none."""
        if self._next_rollover is None or self._file is None:
            return None
        return max(0.0, self._next_rollover - self.clock())

    def check_while_idle(self) -> None:
        """Once a second while the writer idles: follow an external rotation, so the renamed file is let
        go of within a second even when no receipt comes in, and rotate when a time limit falls due."""
        if self._file is None:
            return
        try:
            self._follow_rename()
        except OSError as error:
            log.debug("could not reopen the journal after an external rotation: %s", error)
            return  # the next append meets the same error, and the store reports it
        self.rotate_if_due()

    def rotate_if_due(self, incoming: int = 0) -> bool:
        """Rotate now if the size or time limit says so; a failure is logged once and retried later."""
        if self._file is None:
            return False
        size = self._size
        if size == 0:
            # Nothing to rotate; a time rollover just moves on to the next midnight.
            if self._next_rollover is not None and self.clock() >= self._next_rollover:
                self._next_rollover = next_midnight(self.clock(), self.rotation.utc)
            return False
        by_size = 0 < self.rotation.max_bytes < size + incoming
        by_time = self._next_rollover is not None and self.clock() >= self._next_rollover
        if not (by_size or by_time):
            return False
        try:
            self._rotate()
        except (OSError, ValueError, OverflowError) as error:  # a stray far-future name: no next name
            if not self._rotation_failed:
                log.error("cannot rotate the journal %s: %s; appending to it until rotation works", self.path, error)
                self._rotation_failed = True
            if by_time:
                self._next_rollover = self.clock() + 60
            return False
        if self._rotation_failed:
            log.warning("journal rotation works again")
            self._rotation_failed = False
        return True

    def _rotate(self) -> None:
        now_ms = int(self.clock() * 1000)
        stamp = max(now_ms, self._last_stamp + 1)
        target = self.directory / rotated_name(stamp)
        # Synced even with fsync = no (once per rotation): the database's
        # journal position may already count these lines.
        os.fdatasync(self._file.fileno())
        os.rename(self.path, target)
        self._last_stamp = stamp
        self._close_file()
        self._open_file()
        if self.fsync:
            _fsync_directory(self.directory)
        log.info("journal rotated to %s", target.name)
        self.rotated.wake()

    def renamed_away(self) -> bool:
        """True when receipts.jsonl no longer names the open file while that file lives on under another name.

        A deleted file (no name left) is not renamed away: the store's
        deleted() check appends again what went into it, which following
        it here would skip.
        """
        if self._file is None:
            return False
        opened = os.fstat(self._file.fileno())
        if opened.st_nlink == 0:
            return False
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return True  # renamed, and nothing made in its place yet (logrotate's nocreate)
        except OSError:
            return False
        return (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino)

    def _follow_rename(self, again: bool = False) -> bool:
        """Reopen receipts.jsonl by name when it was renamed away (an external logrotate), not waiting for SIGHUP.

        False when it was not: a rename away and back, whose event is still queued, leaves nothing to follow.
        """
        if not self.renamed_away():
            return False
        moved_to = self._current_name()
        if again:
            log.info("the journal %s was renamed%s while a batch was written to it; writing that batch again "
                     "to a new %s, so that tail -F readers get it (a reader may see it twice)",
                     self.path, moved_to, JOURNAL_NAME)
        else:
            log.info("the journal %s was renamed%s (a logrotate); followed the rotation: appending to a new %s",
                     self.path, moved_to, JOURNAL_NAME)
        self.reopen()
        return True

    def _current_name(self) -> str:
        """' to <path>' where the open file now is (Linux /proc), or '' when that cannot be known."""
        try:
            return f" to {os.readlink(f'/proc/self/fd/{self._file.fileno()}')}"
        except OSError:
            return ""

    def deleted(self) -> bool:
        """True when receipts.jsonl was deleted while open: what is appended to it now reaches no reader."""
        return self._file is not None and os.fstat(self._file.fileno()).st_nlink == 0

    def _open_file(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)  # also when it was deleted under a running dlrd
        try:
            last_written = self.path.stat().st_mtime  # before a repair's truncate makes it "now"
        except FileNotFoundError:
            last_written = None
        self._drop_partial_line()
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open across calls)
        self._watch = RenameWatch.of(self._file.fileno())
        self._repair_size = None
        if self.on_open is not None:
            self.on_open()
        self._size = os.fstat(self._file.fileno()).st_size
        stamps = [_stamp_of(path.name) or 0 for path in rotated_files(self.directory)]
        self._last_stamp = max([self._last_stamp, *stamps])
        if self.rotation.when == "midnight":
            # A file last written before a midnight passed (dlrd was down) rotates at the first append.
            since = last_written if self._size and last_written is not None else self.clock()
            self._next_rollover = next_midnight(since, self.rotation.utc)

    def _close_file(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _repair(self) -> None:
        if self._repair_size is None:
            return
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        if size > self._repair_size:
            os.ftruncate(fd, self._repair_size)
            size = self._repair_size
        self._size = size
        self._repair_size = None

    @staticmethod
    def _last_id_in(path: Path) -> int:
        try:
            with open(path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - _TAIL_BYTES))
                tail = handle.read()
        except FileNotFoundError:
            return 0
        return _last_id(tail.split(b"\n")[:-1])

    def _drop_partial_line(self) -> None:
        """Cut the file back to its last newline: a crash can leave half a line, a power cut a run of zeros."""
        try:
            with open(self.path, "r+b") as handle:
                size = end = handle.seek(0, os.SEEK_END)
                while end > 0:
                    start = max(0, end - _TAIL_BYTES)
                    handle.seek(start)
                    chunk = handle.read(end - start)
                    cut = chunk.rfind(b"\n")
                    if cut >= 0:
                        end = start + cut + 1
                        break
                    end = start
                if end < size:
                    handle.truncate(end)
        except FileNotFoundError:
            return


IN_MODIFY = 0x00000002
IN_MOVE_SELF = 0x00000800
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name


class RenameWatch:
    """An inotify watch on the open journal file: its change and rename events, in the order the kernel queued them.

    Linux only, through libc (the standard library has no inotify); `of`
    gives None elsewhere or when no watch can be had, and the journal then
    judges a rename by stat alone.
    """

    _libc: Any = None
    _said_unavailable = False

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor

    @classmethod
    def of(cls, file_descriptor: int) -> RenameWatch | None:
        """A watch on the file open at `file_descriptor` (by /proc/self/fd, so on that very file), or None."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            if cls._libc is None:
                cls._libc = ctypes.CDLL(None, use_errno=True)
            descriptor = cls._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError) as error:
            return cls._unavailable(str(error))
        if descriptor < 0:
            return cls._unavailable(os.strerror(ctypes.get_errno()))
        watched = cls._libc.inotify_add_watch(descriptor, f"/proc/self/fd/{file_descriptor}".encode(),
                                              IN_MODIFY | IN_MOVE_SELF)
        if watched < 0:
            reason = os.strerror(ctypes.get_errno())
            os.close(descriptor)
            return cls._unavailable(reason)
        return cls(descriptor)

    @classmethod
    def _unavailable(cls, reason: str) -> None:
        """No watch: said once (fs.inotify.max_user_instances reached, say), since it makes repeats likelier."""
        if not cls._said_unavailable:
            cls._said_unavailable = True
            log.info("no inotify watch on the journal (%s); an external rotation is judged by stat alone, so a "
                     "batch written just as logrotate renames the file may be written to both files", reason)

    def events(self) -> list[int]:
        """The events queued since the last call, oldest first: IN_MODIFY or IN_MOVE_SELF each."""
        found: list[int] = []
        while True:
            try:
                data = os.read(self.descriptor, 4096)
            except BlockingIOError:
                return found
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                found += [event for event in (IN_MODIFY, IN_MOVE_SELF) if mask & event]

    def close(self) -> None:
        os.close(self.descriptor)


class RotatedFiles:
    """The background housekeeper of rotated files: gzips them and deletes those past the kept count.

    It runs at start (finishing what a crash interrupted) and after each
    rotation, in its own thread, so compressing never delays a receipt.
    """

    def __init__(self, directory: Path, rotation: Rotation) -> None:
        self.directory = directory
        self.rotation = rotation
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start, or wake with new settings (SIGHUP), so they apply now rather than at the next rotation."""
        if self._thread is not None:
            self.wake()
            return
        if not (self.rotation.compress or self.rotation.backups):
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="dlrd-journal-housekeeper", daemon=True)
        self._thread.start()
        self.wake()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                self.tidy()
            except Exception:  # a housekeeping bug must not end the thread; the next rotation retries
                log.exception("journal housekeeping failed")

    def tidy(self) -> None:
        """Compress what is not yet compressed, then delete the oldest files past `backups`."""
        for stale in self.directory.glob("receipts-*.jsonl.gz.tmp"):
            stale.unlink(missing_ok=True)
        if self.rotation.compress:
            for path in rotated_files(self.directory):
                if self._stopping:
                    return
                if not path.name.endswith(".gz"):
                    self._compress(path)
        if self.rotation.backups:
            for path in rotated_files(self.directory)[:-self.rotation.backups]:
                plain = path.with_name(path.name.removesuffix(".gz"))
                plain.unlink(missing_ok=True)
                plain.with_name(plain.name + ".gz").unlink(missing_ok=True)
                log.info("deleted the old journal file %s (backups = %d)", path.name, self.rotation.backups)

    def _compress(self, path: Path) -> None:
        target = path.with_name(path.name + ".gz")
        temporary = path.with_name(path.name + ".gz.tmp")
        try:
            with open(path, "rb") as source, open(temporary, "wb") as raw:
                with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, mtime=int(path.stat().st_mtime)) as out:
                    while chunk := source.read(_COPY_CHUNK):
                        if self._stopping:
                            break
                        out.write(chunk)
                if self._stopping:
                    raise InterruptedError("stopping")
                # Whatever `fsync` says: the plain file is about to be deleted.
                raw.flush()
                os.fsync(raw.fileno())
            os.rename(temporary, target)
            path.unlink()
        except OSError as error:
            temporary.unlink(missing_ok=True)
            if not isinstance(error, InterruptedError):
                log.error("cannot compress the journal file %s: %s; it stays uncompressed", path.name, error)
            return
        log.info("compressed the journal file %s", target.name)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
