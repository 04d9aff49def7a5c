"""`dlrd serve`: assemble the daemon from its parts and run it until told to stop.

Signal handlers do nothing but let Python write the signal's number into a
socketpair (signal.set_wakeup_fd); the main thread's loop reads it and
does the work, so a signal never interrupts a transaction or a write
halfway. The same loop feeds systemd's watchdog.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time

from dlrd import __version__
from dlrd.activation import inherited_sockets
from dlrd.app import Application
from dlrd.codes import ReportCodeTable
from dlrd.config import Config, load_config
from dlrd.errors import ConfigError
from dlrd.instance import InstanceLock, hold_database, hold_journal
from dlrd.journal import JournalWriter, Rotation
from dlrd.metrics import Metrics
from dlrd.preflight import check_startup
from dlrd.receiver import ReceiptEndpoint, credentials
from dlrd.server import HttpServer
from dlrd.storage import describe, expected_messages, on_postgresql, receipt_store
from dlrd.store import Pending
from dlrd.systemd import Notifier

log = logging.getLogger("dlrd")

# Keys whose new value SIGHUP cannot apply to a running daemon.
RESTART_ONLY = (
    ("server", "listen"), ("server", "tls_listen"), ("server", "max_connections"),
    ("server", "max_body_bytes"), ("server", "request_timeout"), ("storage", "database"),
    ("storage", "synchronous"), ("storage", "lock_timeout"), ("journal", "directory"),
)
LISTENERS = (("server", "listen"), ("server", "tls_listen"))
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
JOURNAL_REOPEN_SECONDS = 30.0
REOPEN_POLL_SECONDS = 0.05


def configure_logging(level: str) -> None:
    """Log to stderr: for journald with each line's priority, elsewhere with the time to the millisecond."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournaldFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def stderr_is_journal() -> bool:
    """True when stderr is the journald stream systemd gave us: $JOURNAL_STREAM names its device and inode.

    Compared, as systemd.exec(5) asks, so that `dlrd ... 2>file` run from a
    service's shell does not write priority prefixes into a file.
    """
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        stats = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (stats.st_dev, stats.st_ino) == (device, inode)


class JournaldFormatter(logging.Formatter):
    """Each line with its sd-daemon(3) `<N>` syslog priority, which journald turns into PRIORITY=.

    Every line of a multi-line record gets it (journald splits on newlines),
    so a traceback's lines are errors too in `journalctl -p err`, not info.
    """

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


class Daemon:
    """The parts of a running dlrd, and what SIGHUP and SIGTERM do to them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        journal = JournalWriter(config.journal_dir, config["journal", "fsync"], journal_rotation(config))
        self.store = receipt_store(config, journal)
        self.receipts = ReceiptEndpoint(self.store, ReportCodeTable(config.report_codes), self.metrics,
                                        credentials(config), config["storage", "quarantine_rate"],
                                        config["storage", "commit_timeout"], expected_messages(config))
        self.app = Application(config, self.store, self.receipts, self.metrics)
        self.server: HttpServer | None = None
        self.notifier = Notifier()
        self.instance: InstanceLock | None = None

    def start(self) -> None:
        """Check, open the storage and bind every listener; StartupError if one is unusable.

        The checks are check-config's too (dlrd.preflight), so both refuse with the same line.
        """
        inherited = inherited_sockets()
        for warning in check_startup(self.config, binds=not inherited):
            log.warning("%s", warning)
        # Before anything is opened or bound. On PostgreSQL the database is shared, the journal is not.
        instance = self.instance = (hold_journal(self.config.journal_dir) if on_postgresql(self.config)
                                    else hold_database(self.config.database_path))
        metrics, store = self.metrics, self.store
        try:
            store.open()
        except BaseException:
            instance.release()
            raise
        metrics.gauges["dlrd_storage_healthy"] = lambda: float(self.app.health.storage_ready())
        metrics.gauges["dlrd_journal_writable"] = lambda: float(store.journal_writable)
        metrics.gauges["dlrd_commits_total"] = lambda: store.commits
        metrics.gauges["dlrd_committed_jobs_total"] = lambda: store.committed_jobs
        metrics.gauges["dlrd_last_receipt_timestamp_seconds"] = lambda: self.receipts.last_stored
        metrics.gauges["dlrd_quarantine_bytes"] = lambda: store.quarantine_budget.used or 0
        store.on_commit = metrics.observe_commit
        try:
            self.server = HttpServer(self.config, self.app, metrics, inherited)
            self.server.start()
        except BaseException:
            if self.server is not None:
                self.server.close_listeners()
            store.close()
            instance.release()
            raise

    def run(self) -> int:
        """The main loop: signals in, the watchdog out, until SIGTERM or SIGINT."""
        assert self.server is not None
        wake_in, wake_out = socket.socketpair()
        wake_in.setblocking(False)
        wake_out.setblocking(False)
        previous = signal.set_wakeup_fd(wake_out.fileno(), warn_on_full_buffer=False)
        handlers = {signum: signal.signal(signum, _ignore) for signum in (*STOP_SIGNALS, signal.SIGHUP)}
        try:
            for warning in self.config.warnings:
                log.warning("%s", warning)
            log.info("dlrd %s (node %s) storing receipts in %s, journal in %s", __version__,
                     self.config["server", "node"], describe(self.config), self.config.journal_dir)
            how = " (socket activation: [server] listen and tls_listen are not used)" if self.server.inherited else ""
            for url in self.server.bound:
                log.info("listening on %s%s", url, how)
            self.notifier.ready(f"listening on {', '.join(self.server.bound)}")
            self._loop(wake_in)
            # Still under the handlers: a second SIGTERM (Ctrl-C twice, a signal passed on by a
            # bootloader) must not kill the stop that finishes the requests in progress.
            self.stop()
        finally:
            signal.set_wakeup_fd(previous)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            wake_in.close()
            wake_out.close()
        return 0

    def _loop(self, wake_in: socket.socket) -> None:
        """Until a stop signal: act on SIGHUP, feed the watchdog on time, never block on the writer.

        The journal is reopened by the writer thread between two batches;
        with storage stuck that can take lock_timeout, and meanwhile the
        watchdog must still be fed and SIGTERM still obeyed. A SIGHUP that
        comes meanwhile is acted on once that reopening is done, never lost:
        the operator who edited the ini twice expects the second edit applied.
        """
        assert self.server is not None
        interval = self.notifier.watchdog_interval
        next_ping = time.monotonic() + interval if interval else None
        reopening: Pending | None = None
        reload_wanted = False  # a SIGHUP that came while the last one's journal reopening was pending
        while True:
            now = time.monotonic()
            waits = [deadline - now for deadline in (next_ping,) if deadline is not None]
            if reopening is not None:
                waits.append(REOPEN_POLL_SECONDS)
            elif reload_wanted:
                waits.append(0.0)
            readable, _, _ = select.select([wake_in], [], [], max(0.0, min(waits)) if waits else None)
            now = time.monotonic()
            if next_ping is not None and now >= next_ping:
                next_ping = now + interval  # type: ignore[operator]
                if self.store.writer_alive() and self.server.alive():
                    self.notifier.watchdog()
            if readable:
                signals = set(wake_in.recv(64))
                if signals & {int(signum) for signum in STOP_SIGNALS}:
                    return
                reload_wanted = reload_wanted or int(signal.SIGHUP) in signals
            if reload_wanted and reopening is None:
                reload_wanted = False
                reopening = self.reload()
                reopened_by = now + JOURNAL_REOPEN_SECONDS
            if reopening is not None and (reopening.done() or now >= reopened_by):
                if not reopening.done():
                    log.error("SIGHUP: the journal was not reopened within %.0f s (storage stuck?)",
                              JOURNAL_REOPEN_SECONDS)
                elif reopening.error is not None:
                    log.error("SIGHUP: could not reopen the journal: %s", reopening.error)
                reopening = None
                self.notifier.ready("reloaded")

    def stop(self) -> None:
        self.notifier.stopping()
        log.info("stopping: finishing requests in progress")
        assert self.server is not None
        self.server.stop()
        self.store.close()
        if self.instance is not None:
            self.instance.release()
        log.info("stopped")

    def reload(self) -> Pending:
        """SIGHUP: re-read the config, reload the certificate; the journal's reopening is left to the writer,
        and what it returns says when that is done (the main loop then tells systemd READY)."""
        assert self.server is not None
        config = self.config
        self.notifier.reloading()
        log.info("SIGHUP: re-reading %s, reloading the certificate, reopening the journal",
                 config.source or "the built-in defaults")
        try:
            fresh = load_config(config.source, serving=True)
        except ConfigError as error:
            log.error("SIGHUP: %s; keeping the running configuration", error)
        else:
            ignored = LISTENERS if self.server.inherited else ()  # systemd's sockets, whatever the ini says
            changed = [f"[{section}] {name}" for section, name in RESTART_ONLY
                       if fresh[section, name] != config[section, name] and (section, name) not in ignored]
            if changed:
                log.warning("SIGHUP: %s changed; restart dlrd to apply", ", ".join(changed))
            logging.getLogger().setLevel(fresh["log", "level"].upper())
            self.app.reload(fresh)
            self.server.reload(fresh)
            receipts = self.receipts
            receipts.credentials = credentials(fresh)
            receipts.codes = ReportCodeTable(fresh.report_codes)
            receipts.commit_timeout = fresh["storage", "commit_timeout"]
            receipts.expected = expected_messages(fresh)
            receipts.quarantine_rate.per_minute = fresh["storage", "quarantine_rate"]
            self.store.quarantine_budget.limit = fresh["storage", "quarantine_max_bytes"]
            for warning in fresh.warnings:
                log.warning("%s", warning)
            self.config = config = fresh
        return self.store.reopen_journal(config["journal", "fsync"], journal_rotation(config))


def _ignore(signum: int, frame: object) -> None:
    """The handler of every signal dlrd acts on: the number reaches the main loop through the wakeup fd."""


def serve(config: Config) -> int:
    """Run until SIGTERM or SIGINT; raise StartupError if something needed is unusable."""
    configure_logging(config["log", "level"])
    # A full file-size limit must surface as EFBIG on write (a 503), not kill the daemon.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    daemon = Daemon(config)
    daemon.start()
    return daemon.run()


def journal_rotation(config: Config) -> Rotation:
    return Rotation(config["journal", "rotate_bytes"], config["journal", "rotate_when"],
                    config["journal", "rotate_utc"], config["journal", "backups"], config["journal", "compress"])
