"""Connections waiting for their client, in one selector thread, so an idle connection holds no thread.

A keep-alive connection between requests, a new one whose client has not
sent a byte yet, and one closing after a refusal (draining what the
client still sends, so the kernel does not reset the connection and
destroy the answer, RFC 9112 §9.6) all wait here. When a waiting
connection's next byte comes it goes back to the worker pool; when its
deadline passes it is closed. This is the design of gunicorn's gthread
worker and cheroot's connection manager: without it, every idle
keep-alive connection would hold a thread, and `max_connections` of them
would leave none for a new client.

Other threads only queue work here and wake the selector through a
socketpair; the selector and its registrations belong to its own thread.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable

from dlrd.connection import ClientConnection

log = logging.getLogger("dlrd.server")

HOUSEKEEPING_SECONDS = 0.5
DRAIN_BYTES = 64 * 1024

WAIT, LINGER = "wait", "linger"


class IdleConnections:
    """The selector thread: hands a waiting connection back on its next byte, closes it at its deadline."""

    def __init__(self, on_ready: Callable[[ClientConnection], None], on_closed: Callable[[ClientConnection], None],
                 housekeeping: Callable[[], None]) -> None:
        self._on_ready = on_ready
        self._on_closed = on_closed
        self._housekeeping = housekeeping
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._selector.register(self._wake_in, selectors.EVENT_READ)
        self._incoming: collections.deque[tuple[str, ClientConnection, float]] = collections.deque()
        self._deadlines: list[tuple[float, int, ClientConnection]] = []
        self._waiting: dict[ClientConnection, tuple[str, float]] = {}
        self._order = itertools.count()
        self._sleeping = False
        self._stopping = False  # dlrd stops: what waits for a next request is closed, now and when it comes
        self._ended = False
        # Kept-alive connections here or on their way here, and how many of them new clients have
        # claimed (reclaim()); counted when queued, so a connection just handed over can be claimed.
        self._lock = threading.Lock()
        self._kept_alive = 0
        self._claimed = 0
        self._thread = threading.Thread(target=self._run, name="dlrd-idle", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, connection: ClientConnection, deadline: float) -> None:
        """Hold `connection` until its client sends a byte (then on_ready) or `deadline` passes (then close)."""
        if connection.served:
            with self._lock:
                self._kept_alive += 1
        self._queue(WAIT, connection, deadline)

    def linger(self, connection: ClientConnection, deadline: float) -> None:
        """Drain and drop what the client still sends after its answer, then close, at EOF or `deadline`."""
        self._queue(LINGER, connection, deadline)

    def reclaim(self) -> bool:
        """From any thread: True when a kept-alive connection waiting here will be closed to make room.

        At max_connections, a new client matters more than an idle
        kept-alive connection, which its client reopens when it needs it
        (RFC 9112 §9.6: either side may close an idle connection): the
        longest idle one is closed, and the new client is served at once.
        """
        with self._lock:
            if self._kept_alive - self._claimed <= 0:
                return False
            self._claimed += 1
        self._wake()
        return True

    def close_waiting(self) -> None:
        """dlrd is stopping: close every connection waiting for its client's next request, now and from now on."""
        self._stopping = True
        self._wake()

    def stop(self) -> None:
        """Close everything still here and end the thread."""
        self._ended = True
        self._wake()
        self._thread.join(5)

    def _queue(self, kind: str, connection: ClientConnection, deadline: float) -> None:
        self._incoming.append((kind, connection, deadline))
        if self._sleeping:
            self._wake()

    def _wake(self) -> None:
        try:
            self._wake_out.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up byte is already waiting

    def _run(self) -> None:
        next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
        while not self._ended:
            try:
                next_housekeeping = self._turn(next_housekeeping)
            except Exception:  # this thread must outlive any bug: every idle connection depends on it
                log.exception("internal error in the idle connections' thread")
        self._take_incoming()
        for connection in list(self._waiting):
            self._close(connection)
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()

    def _turn(self, next_housekeeping: float) -> float:
        """One wait for events, and what is due after it; returns when housekeeping is next due."""
        now = time.monotonic()
        timeout = min(next_housekeeping, self._deadlines[0][0] if self._deadlines else next_housekeeping) - now
        self._sleeping = True
        if self._incoming or self._claimed or self._stopping:
            timeout = 0
        try:
            events = self._selector.select(max(timeout, 0))
        finally:
            self._sleeping = False
        for key, _mask in events:
            if key.fileobj is self._wake_in:
                self._drain_wake()
            elif key.fileobj in self._waiting:  # not closed by an earlier event of this turn
                self._ready(key.fileobj)  # type: ignore[arg-type]
        self._take_incoming()
        if self._claimed:
            self._close_claimed()
        if self._stopping:
            for connection, (kind, _deadline) in list(self._waiting.items()):
                if kind == WAIT:
                    self._close(connection)
        now = time.monotonic()
        self._expire(now)
        if now >= next_housekeeping:
            next_housekeeping = now + HOUSEKEEPING_SECONDS
            self._housekeeping()
        return next_housekeeping

    def _drain_wake(self) -> None:
        try:
            while self._wake_in.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _take_incoming(self) -> None:
        while self._incoming:
            kind, connection, deadline = self._incoming.popleft()
            try:
                self._selector.register(connection, selectors.EVENT_READ)
            except (ValueError, KeyError, OSError):  # closed meanwhile, or (a bug) here already
                self._uncount(kind, connection)
                connection.close()
                self._on_closed(connection)
                continue
            self._waiting[connection] = (kind, deadline)
            heapq.heappush(self._deadlines, (deadline, next(self._order), connection))
        if len(self._deadlines) > 4 * len(self._waiting) + 64:
            # Entries of connections that left before their deadline: drop them so the heap stays small.
            self._deadlines = [entry for entry in self._deadlines if self._is_current(entry)]
            heapq.heapify(self._deadlines)

    def _is_current(self, entry: tuple[float, int, ClientConnection]) -> bool:
        deadline, _order, connection = entry
        return self._waiting.get(connection, ("", -1.0))[1] == deadline

    def _close_claimed(self) -> None:
        """Close the longest idle kept-alive connections, as many as new clients claimed."""
        idle = sorted((deadline, connection) for connection, (kind, deadline) in self._waiting.items()
                      if kind == WAIT and connection.served)
        for _deadline, connection in idle:
            with self._lock:
                if self._claimed <= 0:
                    return
                self._claimed -= 1
            self._close(connection)
        with self._lock:
            self._claimed = min(self._claimed, self._kept_alive)

    def _ready(self, connection: ClientConnection) -> None:
        kind, _deadline = self._waiting[connection]
        if kind == WAIT:
            if _closed_by_client(connection):
                self._close(connection)  # here: a worker woken to read an EOF costs a thread switch or a start
                return
            self._forget(connection)
            self._on_ready(connection)
            return
        try:
            connection.nonblocking()
            data = connection.sock.recv(DRAIN_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            entry = heapq.heappop(deadlines)
            if self._is_current(entry):
                self._close(entry[2])

    def _forget(self, connection: ClientConnection) -> None:
        entry = self._waiting.pop(connection, None)
        if entry is None:
            return
        self._uncount(entry[0], connection)
        try:
            self._selector.unregister(connection)
        except (KeyError, ValueError):
            pass

    def _uncount(self, kind: str, connection: ClientConnection) -> None:
        if kind == WAIT and connection.served:
            with self._lock:
                self._kept_alive -= 1

    def _close(self, connection: ClientConnection) -> None:
        if connection not in self._waiting:
            return  # closed already
        self._forget(connection)
        connection.close()
        self._on_closed(connection)


def _closed_by_client(connection: ClientConnection) -> bool:
    """True when the readable socket's next bytes are its end (or an error): nothing left for a worker.

    Peeks at the TCP bytes themselves, below TLS (an SSLSocket refuses
    flags on recv), so nothing is consumed.
    """
    try:
        connection.nonblocking()
        return socket.socket.recv(connection.sock, 1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
