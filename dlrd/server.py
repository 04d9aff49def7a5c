"""The HTTP server: stdlib socketserver listeners, http.server request handlers, a bounded pool of threads.

The path of a connection: a Listener (socketserver.TCPServer, one per
address, each in its own accept thread) accepts it and judges it before
anything is spent on it (max_connections, max_connections_per_source,
allow_from); a worker from the WorkerPool runs its TLS handshake under a
deadline and a RequestHandler (http.server.BaseHTTPRequestHandler) reads
each request with the stdlib's parse_request, made strict by
dlrd.framing; between requests the connection waits in IdleConnections'
selector, not in a thread. Each answer leaves in one write on a
TCP_NODELAY socket, avoiding the Nagle/delayed-ACK stall of
header-then-body writes.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from dlrd.activation import InheritedSocket
from dlrd.app import Application
from dlrd.auth import normalised_address
from dlrd.config import Address, Config
from dlrd.connection import ClientConnection, ClientGone, DeadlinePassed
from dlrd.errors import StartupError
from dlrd.framing import HttpError, StrictParsing, head_start
from dlrd.idle import IdleConnections
from dlrd.messages import Request, RequestHead, Response, plain_response
from dlrd.metrics import Metrics
from dlrd.pool import WorkerPool
from dlrd.ratelimit import LogLimiter, source_key
from dlrd.tls import ServerTls, certificate_files

log = logging.getLogger("dlrd.server")
access_log = logging.getLogger("dlrd.access")

LISTEN_BACKLOG = 512
ACCEPT_POLL_SECONDS = 0.5
SHUTDOWN_GRACE = 10.0
ANSWER_FLUSH_SECONDS = 1.0  # after the grace: time for the 503s sent to requests still waiting for storage
LINGER_SECONDS = 2.0
# After an answer, a worker waits this long on the connection for the next
# request before handing it to the idle selector: a busy keep-alive client
# sends it within microseconds, and the hand-over costs two thread switches.
KEEPALIVE_HOLD_SECONDS = 0.05
LIMIT_LOG_SECONDS = 60.0
_PLAIN_HTTP_TEXT = b"this port speaks HTTPS: use an https:// URL\n"
PLAIN_HTTP_ON_TLS_PORT = (b"HTTP/1.1 400 Bad Request\r\nServer: dlrd\r\nContent-Type: text/plain; charset=utf-8\r\n"
                          b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (len(_PLAIN_HTTP_TEXT), _PLAIN_HTTP_TEXT))


class ConnectionLimits:
    """max_connections and max_connections_per_source, counted from accept to close (TLS handshakes included)."""

    def __init__(self, total: int, per_source: int) -> None:
        self.total = total
        self.per_source = per_source
        self.open = 0
        self._by_source: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, key: str, reclaim: Callable[[], bool]) -> str | None:
        """None and counted when one more connection from `key` may open; else the reason it may not.

        At the limit, `reclaim()` may free a place (an idle kept-alive
        connection closed for it): the count then passes the limit for the
        moment that takes.
        """
        with self._lock:
            held = self._by_source.get(key, 0)
            if held >= self.per_source:
                return "max-connections-per-source"
            if self.open >= self.total and not reclaim():
                return "max-connections"
            self.open += 1
            self._by_source[key] = held + 1
            return None

    def release(self, key: str) -> None:
        with self._lock:
            self.open -= 1
            held = self._by_source[key] - 1
            if held:
                self._by_source[key] = held
            else:
                del self._by_source[key]


class MemoryReturn:
    """Gives the C heap's free memory back to the system after a burst of connections.

    A TLS connection's OpenSSL state is allocated in the malloc arena of
    the request thread that ran its handshake; when a burst is over, glibc
    keeps the freed memory of those arenas unless asked (malloc_trim(3)).
    Asked at most every TRIM_SECONDS, and only once the open connections
    fell TRIM_AFTER below the most seen since the last time.
    """

    TRIM_SECONDS = 30.0
    TRIM_AFTER = 64

    def __init__(self) -> None:
        self._most = 0
        self._last = time.monotonic()
        try:
            self._trim: Callable[[int], int] | None = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc (musl): nothing to ask
            self._trim = None

    def after_burst(self, open_connections: int) -> None:
        self._most = max(self._most, open_connections)
        now = time.monotonic()
        if self._most - open_connections < self.TRIM_AFTER or now - self._last < self.TRIM_SECONDS:
            return
        self._most, self._last = open_connections, now
        if self._trim is not None:
            self._trim(0)


class Listener(socketserver.TCPServer):
    """One listening address: accepts, judges and hands on; it never reads a byte from a client."""

    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: Address, server: HttpServer, tls: bool) -> None:
        host, port = address
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.dlrd = server
        self.tls = tls
        super().__init__((host, port), None, bind_and_activate=True)  # type: ignore[arg-type]

    @classmethod
    def adopt(cls, inherited: InheritedSocket, server: HttpServer) -> Listener:
        """A listener on a socket systemd bound: TCPServer.__init__ would make a socket of its own, which
        RestrictAddressFamilies=AF_UNIX forbids, so only BaseServer's part of it runs."""
        listener = cls.__new__(cls)
        listener.address_family = inherited.sock.family
        listener.dlrd = server
        listener.tls = inherited.tls
        socketserver.BaseServer.__init__(listener, inherited.sock.getsockname(), None)  # type: ignore[arg-type]
        listener.socket = inherited.sock
        return listener

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # [::]:443 beside 0.0.0.0:443: each family on its own socket, as the ini lists them.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.dlrd.admit(request, client_address[0])

    def process_request(self, request: Any, client_address: Any) -> None:
        self.dlrd.accepted(request, client_address[0], self.tls)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("internal error accepting a connection from %s", client_address[0])
        self.shutdown_request(request)

    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"


class RequestHandler(StrictParsing):
    """One worker's turn at a connection: its TLS handshake, then requests until it goes idle or closes.

    socketserver runs setup(), handle() and finish() from the constructor;
    `request` is the ClientConnection and `server` the HttpServer.
    """

    server: HttpServer  # type: ignore[assignment]
    request: ClientConnection  # type: ignore[assignment]

    def setup(self) -> None:
        self.wfile = _AnswerWriter(self.request, self.server.request_timeout)  # type: ignore[assignment]
        self.park_until: float | None = None  # set when the connection is to wait in the idle selector
        self.started = time.monotonic()  # reset as each request begins (handle_one_request)

    def finish(self) -> None:
        pass  # the connection outlives this handler: it waits for its next request, or was closed

    def version_string(self) -> str:
        return "dlrd"

    def date_time_string(self, timestamp: float | None = None) -> str:
        return http_date(time.time() if timestamp is None else timestamp)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # dlrd's access log has its own line (_log_access)

    def handle(self) -> None:
        connection = self.request
        server = self.server
        if connection.tls_context is not None and not server.handshake(connection):
            return
        while True:
            start = head_start(connection.buffer)
            if start:
                del connection.buffer[:start]  # RFC 9112 §2.2: a CRLF after a body is no request
            if not connection.pending() and not self._await_request():
                return
            if not self.handle_one_request():  # type: ignore[func-returns-value]
                return

    def _await_request(self) -> bool:
        """True when the next request's first bytes are here. Otherwise the connection is closed, or,
        with `park_until` set, waits in the idle selector once this worker lets go of it (_serve)."""
        connection = self.request
        server = self.server
        if server.stopping and connection.served:
            server.close(connection)
            return False
        idle_until = connection.idle_until
        with connection.guard:
            connection.held = True
        server.holding.add(connection)
        arrived = gone = False
        try:
            connection.receive(min(time.monotonic() + KEEPALIVE_HOLD_SECONDS, idle_until))
            arrived = True
        except DeadlinePassed:
            pass
        except ClientGone:
            gone = True
        finally:
            server.holding.discard(connection)
            with connection.guard:
                connection.held = False
                reclaimed = connection.reclaimed
        if reclaimed or gone:
            server.close(connection)  # reclaimed for a new client: what just came is not served
            return False
        if arrived:
            return True
        if server.stopping or time.monotonic() >= idle_until:
            server.close(connection)
        else:
            self.park_until = idle_until
        return False

    def handle_one_request(self) -> bool:  # type: ignore[override]
        """Read, serve and answer one request; True when the connection stays open for the next."""
        connection = self.request
        server = self.server
        self.started = time.monotonic()  # the head's first bytes are here: its duration counts from now
        try:
            self.parse_head_block(connection.read_head(server.request_timeout))
        except HttpError as error:
            return self._refuse(error, None)
        except DeadlinePassed:
            return self._timed_out("head")
        except ClientGone:
            server.close(connection)
            return False
        head = RequestHead(self.command, self.path, self.version, self.headers, self.fields, self.expects_continue)
        app = server.app
        connection.remote_addr = app.sources.client_address(connection.peer_addr, head.forwarded_for)
        refusal = app.check_head(head, connection.remote_addr)
        if refusal is not None:
            return self._answer(head, refusal)
        try:
            if head.expects_continue:
                self.send_response_only(100)
                self.end_headers()
            body = connection.read_body(None if head.chunked else head.content_length or 0, server.max_body,
                                        server.request_timeout, server.min_body_rate)
        except HttpError as error:
            return self._refuse(error, head)
        except DeadlinePassed:
            return self._timed_out("body")
        except ClientGone:
            server.close(connection)
            return False
        scheme = "https" if isinstance(connection.sock, ssl.SSLSocket) else "http"
        request = connection.request = Request(head, body, connection.remote_addr, connection.tls_client,
                                               peer_addr=connection.peer_addr, scheme=scheme)
        try:
            response = app.serve(request)
        except Exception:
            log.exception("internal error while serving %s %s from %s", head.method, head.path,
                          connection.remote_addr)
            response = plain_response(500, "internal error", close=True)
        finally:
            connection.request = None
        return self._answer(head, response)

    def _refuse(self, error: HttpError, head: RequestHead | None) -> bool:
        """A request whose framing cannot be trusted: answer, then close, whatever it said."""
        self.server.metrics.count("dlrd_requests_refused_total", status=str(error.status), reason="http")
        self.server.refusals.log(logging.INFO, "refusals of malformed requests", "refused a request from %s: %d %s",
                                 self.request.remote_addr, error.status, error.reason)
        self.request.buffer.clear()
        return self._answer(head, plain_response(error.status, error.reason, close=True), refusal=True)

    def _timed_out(self, part: str) -> bool:
        self.server.metrics.count("dlrd_requests_refused_total", status="408", reason="timeout")
        self.server.refusals.log(logging.INFO, "timeouts of slow clients",
                                 "timed out a slow client %s while it sent the request %s", self.request.remote_addr,
                                 part)
        self.request.buffer.clear()
        return self._answer(None, plain_response(408, "request timeout", close=True), refusal=True)

    def _answer(self, head: RequestHead | None, response: Response, refusal: bool = False) -> bool:
        """Send `response` in one write; True when the connection stays open for the next request."""
        connection = self.request
        server = self.server
        keep_alive = head is not None and head.keep_alive and not response.close and not server.stopping
        if head is None:
            self.request_version = self.protocol_version  # else send_response writes no status line (HTTP/0.9)
        self._headers_buffer = []
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Connection", "keep-alive" if keep_alive else "close")
        self._headers_buffer.append(b"\r\n")
        if head is None or head.method != "HEAD":
            self._headers_buffer.append(response.body)
        data = b"".join(self._headers_buffer)
        self._headers_buffer = []
        undelivered: DeadlinePassed | ClientGone | None = None
        try:
            connection.send(data, time.monotonic() + server.request_timeout)
        except (DeadlinePassed, ClientGone) as error:
            undelivered = error
        seconds = time.monotonic() - self.started
        server.metrics.observe_request(head, server.app.receipt_paths, response.status, seconds)
        if server.access_log and head is not None:
            # Logged whether or not the client took it: a provider that says it got no answer is looked up here.
            access_log.info('%s "%s %s HTTP/%d.%d" %d %d %.1fms%s', connection.remote_addr, head.method, head.path,
                            *head.version, response.status, len(response.body), seconds * 1000,
                            "" if undelivered is None else " (not delivered: the client left)")
        if undelivered is not None:
            if isinstance(undelivered, DeadlinePassed):
                self.server.metrics.count("dlrd_requests_refused_total", status="closed", reason="not-reading")
                server.refusals.log(logging.INFO, "closes of clients that did not take their answer",
                                    "closed the connection of %s: it did not take its answer within "
                                    "request_timeout", connection.remote_addr)
            server.abort(connection)
            return False
        connection.served += 1
        if keep_alive:
            connection.idle_until = time.monotonic() + server.keepalive_timeout
            return True
        server.close_after_answer(connection, linger=refusal)
        return False


class _AnswerWriter:
    """The handler's wfile: each write is one send under the answer deadline."""

    __slots__ = ("connection", "timeout")

    def __init__(self, connection: ClientConnection, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout

    def write(self, data: bytes) -> int:
        self.connection.send(data, time.monotonic() + self.timeout)
        return len(data)

    def flush(self) -> None:
        pass


_date_cache: tuple[int, str] = (0, "")


def http_date(now: float) -> str:
    """The Date header value, formatted once per second."""
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, usegmt=True))
    return _date_cache[1]


class HttpServer:
    """Every listener, the worker pool and the idle selector, and the limits they share."""

    def __init__(self, config: Config, app: Application, metrics: Metrics,
                 inherited: list[InheritedSocket] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.inherited = inherited or []
        if self.inherited:
            tls_wanted = any(sock.tls for sock in self.inherited)
            if tls_wanted and not config["server", "tls_cert"]:
                names = ", ".join(sock.name for sock in self.inherited if sock.tls)
                raise StartupError(f"socket activation: the socket unit hands over {names} for HTTPS but "
                                   "[server] tls_cert is not set; set tls_cert and tls_key, or rename the "
                                   "socket (FileDescriptorName=http)")
        else:
            tls_wanted = bool(config["server", "tls_listen"])
        self.tls = ServerTls(certificate_files(config)) if tls_wanted else None
        self.tls_listen: list[Address] = config["server", "tls_listen"]
        self.listen: list[Address] = config["server", "listen"]
        self.max_body: int = config["server", "max_body_bytes"]
        self.request_timeout: float = config["server", "request_timeout"]
        self.keepalive_timeout: float = config["server", "keepalive_timeout"]
        self.min_body_rate: int = config["server", "min_body_rate"]
        self.access_log: bool = config["log", "access_log"]
        self.limits = ConnectionLimits(config["server", "max_connections"],
                                       config["server", "max_connections_per_source"])
        self.pool = WorkerPool(self._serve, self.limits.total, on_refused=self.close)
        self.refusals = LogLimiter(log)
        self.memory = MemoryReturn()
        self.idle = IdleConnections(self.pool.submit, self._closed, self._housekeeping)
        self.active: set[ClientConnection] = set()  # in a worker's hands now
        self.holding: set[ClientConnection] = set()  # of those, waiting for their next request (a kept-alive hold)
        self.stopping = False
        self.bound: list[str] = []
        self._listeners: list[Listener] = []
        self._accept_threads: list[threading.Thread] = []
        self._refusals_logged: dict[str, float] = {}
        metrics.gauges["dlrd_connections_open"] = lambda: self.limits.open
        if self.tls is not None:
            metrics.gauges["dlrd_tls_certificate_expiry_timestamp_seconds"] = lambda: self.tls.expires_at or 0.0

    # starting and stopping

    def start(self) -> None:
        """Bind every listener or none: a half-started daemon is worse than a refusal.

        Under socket activation the sockets systemd handed over are served
        instead, and listen and tls_listen are not used.
        """
        self._listeners = [Listener.adopt(inherited, self) for inherited in self.inherited]
        wanted = [] if self.inherited else \
            [(address, False) for address in self.listen] + [(address, True) for address in self.tls_listen]
        for (host, port), tls in wanted:
            try:
                for resolved in _resolve(host, port):
                    self._listeners.append(Listener(resolved, self, tls))
            except OSError as error:
                self.close_listeners()
                key = "tls_listen" if tls else "listen"
                raise StartupError(f"cannot listen on {host}:{port}: {error.strerror or error}; "
                                   f"free the port or change [server] {key}") from None
        self.bound = [listener.url() for listener in self._listeners]
        self.idle.start()
        for listener in self._listeners:
            thread = threading.Thread(target=listener.serve_forever, args=(ACCEPT_POLL_SECONDS,),
                                      name=f"dlrd-accept {listener.url()}", daemon=True)
            thread.start()
            self._accept_threads.append(thread)

    def _housekeeping(self) -> None:
        self.app.housekeeping()
        self.refusals.flush()
        self.memory.after_burst(self.limits.open)

    def alive(self) -> bool:
        """False once an accept thread or the idle selector died: the watchdog then stops feeding systemd."""
        return self.idle.alive() and all(thread.is_alive() for thread in self._accept_threads)

    def close_listeners(self) -> None:
        for listener in self._listeners:
            listener.server_close()
        self._listeners = []

    def stop(self) -> None:
        """Stop accepting, close idle connections, let requests in progress finish, then close what is left."""
        self.stopping = True
        stoppers = [threading.Thread(target=listener.shutdown) for listener in self._listeners]
        for stopper in stoppers:
            stopper.start()
        self.idle.close_waiting()
        for stopper in stoppers:
            stopper.join()
        self.close_listeners()
        self._drain(SHUTDOWN_GRACE)
        waiting = [connection.request.waiting_on for connection in list(self.active)
                   if connection.request is not None and connection.request.waiting_on is not None]
        if waiting:
            # Storage held these through the grace (a lock, a hanging disk):
            # a 503 lets the provider retry, where a dropped connection
            # leaves it guessing.
            log.warning("stopping: %d request(s) still waited for storage after %.0f s; answered them 503 "
                        "so the provider retries", len(waiting), SHUTDOWN_GRACE)
            for pending in waiting:
                pending.interrupt()
            self._drain(ANSWER_FLUSH_SECONDS)
        for connection in list(self.active):
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)  # wakes a worker still reading from a slow client
            except OSError:
                pass
        self._drain(ANSWER_FLUSH_SECONDS)
        self.pool.stop()
        self.idle.stop()

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.active and time.monotonic() < deadline:
            time.sleep(0.02)

    def reload(self, config: Config) -> None:
        """Apply what SIGHUP may change without a restart: the certificate, the access log, the timeouts."""
        self.access_log = config["log", "access_log"]
        self.keepalive_timeout = config["server", "keepalive_timeout"]
        self.min_body_rate = config["server", "min_body_rate"]
        self.limits.per_source = config["server", "max_connections_per_source"]
        if self.tls is not None and config["server", "tls_cert"]:
            self.tls.reload(certificate_files(config))

    # a connection's life

    def admit(self, sock: socket.socket, peer: str) -> bool:
        """In the accept thread: may this connection open? A refused one is closed without a byte read."""
        address = normalised_address(peer)
        if self.stopping:
            return False
        if self.app.sources.refused_at_accept(address):
            self._refused("allow-from", address, "refused connections from %s at once: not in [auth] allow_from "
                                                  "or [server] monitor_allow_from")
            return False
        reason = self.limits.admit(source_key(address), self._reclaim)
        if reason is None:
            return True
        if reason == "max-connections":
            self._refused(reason, address, f"connection limit reached (max_connections = {self.limits.total}); "
                                           "closing new connections (the latest from %s)")
        else:
            self._refused(reason, address, "%s holds max_connections_per_source "
                                           f"({self.limits.per_source}) connections; closing its new ones")
        return False

    def _refused(self, reason: str, address: str, message: str) -> None:
        self.metrics.count("dlrd_requests_refused_total", status="closed", reason=reason)
        now = time.monotonic()
        key = reason if reason == "max-connections" else f"{reason} {address}"
        if now - self._refusals_logged.get(key, -LIMIT_LOG_SECONDS) >= LIMIT_LOG_SECONDS:
            if len(self._refusals_logged) > 1024:
                self._refusals_logged.clear()
            self._refusals_logged[key] = now
            log.warning(message, address)

    def _reclaim(self) -> bool:
        """At max_connections: close an idle kept-alive connection for a new client (see IdleConnections.reclaim),
        waiting in the idle selector or still held by its worker just after its answer.

        A held one is only marked under its guard and shut down; its worker
        closes it and serves nothing more on it, even bytes it has just read.
        """
        if self.idle.reclaim():
            return True
        for connection in list(self.holding):
            with connection.guard:
                if not connection.held or connection.reclaimed or not connection.served:
                    continue
                connection.reclaimed = True
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)  # its worker's recv ends at once
            except OSError:
                pass
            return True
        return False

    def accepted(self, sock: socket.socket, peer: str, tls: bool) -> None:
        """In the accept thread: hand an admitted connection to a worker (its handshake and first request)."""
        address = normalised_address(peer)
        context = self.tls.context if tls and self.tls is not None else None
        self.pool.submit(ClientConnection(sock, address, source_key(address), context, self.request_timeout))

    def _serve(self, connection: ClientConnection) -> None:
        """A worker's task: serve the connection until it goes idle or closes."""
        self.active.add(connection)
        park_until = None
        try:
            park_until = RequestHandler(connection, connection.peer_addr, self).park_until  # type: ignore[arg-type]
        except Exception:
            log.exception("internal error on the connection of %s", connection.remote_addr)
            self.close(connection)
        finally:
            self.active.discard(connection)
        if park_until is not None:
            # Only now, out of this worker's hands: from the idle selector another worker may take it at once.
            self.idle.wait(connection, park_until)

    def handshake(self, connection: ClientConnection) -> bool:
        """The TLS handshake, under request_timeout from accept; a failure costs one log line, never the listener."""
        try:
            connection.handshake(connection.opened + self.request_timeout)
            return True
        except (DeadlinePassed, ClientGone, ssl.SSLError, OSError) as error:
            self.metrics.count("dlrd_tls_handshake_failures_total")
            self.refusals.log(logging.INFO, "failed TLS handshakes", "TLS handshake with %s failed: %s",
                              connection.peer_addr, _handshake_failure(error))
            if isinstance(error, ssl.SSLError) and error.reason == "HTTP_REQUEST":
                # Plain HTTP on the HTTPS port: say so in HTTP, as nginx does, rather than with a reset.
                try:
                    connection.send(PLAIN_HTTP_ON_TLS_PORT, time.monotonic() + self.request_timeout)
                except (DeadlinePassed, ClientGone):
                    pass
            self.close_after_answer(connection, linger=True)  # drained, so the client reads the alert
            return False

    def close_after_answer(self, connection: ClientConnection, linger: bool) -> None:
        """Close once the answer is out: in two steps when the client may still be sending (RFC 9112 §9.6).

        Closing with request bytes unread makes the kernel send a reset,
        which can destroy the answer (a 413, a 403) before the client reads
        it; so send FIN, and let the idle selector drop whatever still
        arrives and close on the client's EOF or after LINGER_SECONDS.
        """
        if not isinstance(connection.sock, ssl.SSLSocket) and (linger or connection.unread()):
            try:
                connection.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close(connection)
                return
            connection.buffer.clear()
            self.idle.linger(connection, time.monotonic() + LINGER_SECONDS)
            return
        self.close(connection)

    def close(self, connection: ClientConnection) -> None:
        connection.close()
        self._closed(connection)

    def abort(self, connection: ClientConnection) -> None:
        connection.abort()
        self._closed(connection)

    def _closed(self, connection: ClientConnection) -> None:
        self.limits.release(connection.source_key)


def _resolve(host: str, port: int) -> list[Address]:
    """Every address `host` names (localhost: 127.0.0.1 and ::1), as most servers bind them."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {error.strerror}") from None
    addresses: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = (sockaddr[0], sockaddr[1])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _handshake_failure(error: Exception) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or error.__class__.__name__
    if isinstance(error, DeadlinePassed):
        return "no handshake within request_timeout"
    return str(error) or error.__class__.__name__
