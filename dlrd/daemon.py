"""`dlrd serve`: assemble the daemon from its parts and run it until told to stop.

Signal handlers only set an event; the main coroutine does the work, so a
signal never interrupts a transaction halfway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from dlrd import __version__
from dlrd.app import Application
from dlrd.auth import Credentials
from dlrd.codes import ReportCodeTable
from dlrd.config import Config, load_config
from dlrd.errors import ConfigError
from dlrd.journal import JournalWriter, Rotation
from dlrd.metrics import Metrics
from dlrd.receiver import ReceiptEndpoint
from dlrd.server import HttpServer
from dlrd.store import ReceiptStore
from dlrd.systemd import Notifier

log = logging.getLogger("dlrd")

# Keys whose new value SIGHUP cannot apply to a running daemon.
RESTART_ONLY = (
    ("server", "listen"), ("server", "tls_listen"), ("server", "tls_client_ca"), ("server", "max_connections"),
    ("server", "max_body_bytes"), ("server", "request_timeout"), ("storage", "database"),
    ("storage", "synchronous"), ("storage", "lock_timeout"), ("journal", "directory"),
)


def configure_logging(level: str) -> None:
    """Log to stderr; under systemd journald adds the time, so the line carries none."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def serve(config: Config) -> int:
    """Run until SIGTERM or SIGINT; raise StartupError if something needed is unusable."""
    configure_logging(config["log", "level"])
    # A full file-size limit must surface as EFBIG on write (a 503), not kill the daemon.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return asyncio.run(_serve(config))


async def _serve(config: Config) -> int:
    metrics = Metrics()
    journal = JournalWriter(config.journal_dir, config["journal", "fsync"], journal_rotation(config))
    store = ReceiptStore(config.database_path, journal, config["storage", "synchronous"],
                         config["storage", "lock_timeout"], config["storage", "quarantine_max_bytes"])
    store.open()
    store.attach_loop(asyncio.get_running_loop())
    metrics.gauges["dlrd_storage_healthy"] = lambda: float(store.healthy)
    metrics.gauges["dlrd_journal_writable"] = lambda: float(store.journal_writable)
    metrics.gauges["dlrd_commits_total"] = lambda: store.commits
    metrics.gauges["dlrd_committed_jobs_total"] = lambda: store.committed_jobs
    receipts = ReceiptEndpoint(store, ReportCodeTable(config.report_codes), metrics, credentials(config),
                               config["storage", "quarantine_rate"])
    metrics.gauges["dlrd_quarantine_bytes"] = lambda: store.quarantine_budget.used or 0
    metrics.gauges["dlrd_last_receipt_timestamp_seconds"] = lambda: receipts.last_stored
    app = Application(config, store, receipts, metrics)
    try:
        server = HttpServer(config, app, metrics)
        await server.start()
    except BaseException:
        store.close()
        raise
    for warning in config.warnings:
        log.warning("%s", warning)

    stop = asyncio.Event()
    hangup = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    notifier = Notifier()
    reloader = loop.create_task(_reload_on_hangup(hangup, config, store, app, receipts, server, notifier))
    log.info("dlrd %s storing receipts in %s, journal in %s", __version__, config.database_path,
             config.journal_dir)
    for url in server.bound:
        log.info("listening on %s", url)
    notifier.ready(f"listening on {', '.join(server.bound)}")
    watchdog = loop.create_task(_feed_watchdog(notifier, store)) if notifier.watchdog_interval else None
    await stop.wait()
    notifier.stopping()
    reloader.cancel()
    if watchdog is not None:
        watchdog.cancel()
    log.info("stopping: finishing requests in progress")
    await server.stop()
    store.close()
    log.info("stopped")
    return 0


def journal_rotation(config: Config) -> Rotation:
    return Rotation(config["journal", "rotate_bytes"], config["journal", "rotate_when"],
                    config["journal", "rotate_utc"], config["journal", "backups"], config["journal", "compress"])


def credentials(config: Config) -> Credentials:
    return Credentials(config["auth", "username"], config["auth", "pin"])


async def _reload_on_hangup(hangup: asyncio.Event, config: Config, store: ReceiptStore, app: Application,
                            receipts: ReceiptEndpoint, server: HttpServer, notifier: Notifier) -> None:
    """SIGHUP: re-read the config, reload the certificate, reopen the journal; never drop a connection."""
    while True:
        await hangup.wait()
        hangup.clear()
        notifier.reloading()
        log.info("SIGHUP: re-reading %s, reloading the certificate, reopening the journal",
                 config.source or "the built-in defaults")
        try:
            fresh = load_config(config.source)
        except ConfigError as error:
            log.error("SIGHUP: %s; keeping the running configuration", error)
        else:
            changed = [f"[{section}] {name}" for section, name in RESTART_ONLY
                       if fresh[section, name] != config[section, name]]
            if changed:
                log.warning("SIGHUP: %s changed; restart dlrd to apply", ", ".join(changed))
            logging.getLogger().setLevel(fresh["log", "level"].upper())
            app.reload(fresh)
            server.reload(fresh)
            receipts.credentials = credentials(fresh)
            receipts.codes = ReportCodeTable(fresh.report_codes)
            receipts.quarantine_rate.per_minute = fresh["storage", "quarantine_rate"]
            store.quarantine_budget.limit = fresh["storage", "quarantine_max_bytes"]
            for warning in fresh.warnings:
                log.warning("%s", warning)
            config = fresh
        try:
            await asyncio.wrap_future(store.reopen_journal(config["journal", "fsync"], journal_rotation(config)))
        except Exception as error:
            log.error("SIGHUP: could not reopen the journal: %s", error)
        notifier.ready("reloaded")


async def _feed_watchdog(notifier: Notifier, store: ReceiptStore) -> None:
    """Ping systemd's watchdog while the event loop runs and the writer thread is alive."""
    assert notifier.watchdog_interval is not None
    while True:
        await asyncio.sleep(notifier.watchdog_interval)
        if store.writer_alive():
            notifier.watchdog()
