"""The HTTP server: listeners, connections, limits and timeouts.

One asyncio event loop owns every socket, so a slow or silent client costs
a little memory and never a thread: Python's ThreadingHTTPServer starts a
thread per connection and has no defence against slowloris. Each response
leaves in one write on a TCP_NODELAY socket (asyncio sets it), avoiding the
Nagle/delayed-ACK stall of header-then-body writes.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import ssl
import time
from typing import Any

from dlrd.app import Application
from dlrd.auth import normalised_address
from dlrd.config import Address, Config
from dlrd.errors import StartupError
from dlrd.http import (
    ChunkedDecoder,
    HttpError,
    Request,
    RequestHead,
    Response,
    check_incomplete_head,
    find_head_end,
    parse_head,
    plain_response,
    render_response,
)
from dlrd.metrics import Metrics
from dlrd.tls import ServerTls, certificate_files, client_identity

log = logging.getLogger("dlrd.server")
access_log = logging.getLogger("dlrd.access")

LISTEN_BACKLOG = 512
SWEEP_INTERVAL = 0.5
SHUTDOWN_GRACE = 10.0
ANSWER_FLUSH_SECONDS = 1.0  # after the grace: time for the 503s sent to requests still waiting for storage
LINGER_SECONDS = 2.0
READ_BUFFER_BYTES = 64 * 1024

IDLE, HEAD, BODY, BUSY, CLOSED = "idle", "head", "body", "busy", "closed"


class Connection(asyncio.BufferedProtocol):
    """One client connection: reads requests one at a time, answers each in order.

    A buffered protocol: asyncio's plain one receives into a fresh 256 KiB
    bytes object per read, and in a socketpair microbenchmark that
    allocation cost more than the read (13 µs against 3). Here every read
    lands in the server's one scratch buffer and only the bytes received
    are copied into the connection's.
    """

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote_addr = "unknown"
        self.peer_addr = "unknown"
        self.client_cert: str | None = None
        self.buffer = bytearray()
        self.state = IDLE
        self.deadline = 0.0
        self.head: RequestHead | None = None
        self.request: Request | None = None  # the one being served, while BUSY
        self.decoder: ChunkedDecoder | None = None
        self.body_started = 0.0
        self.paused = False
        self.peer_closed = False
        self.linger_until = 0.0
        self.write_blocked = False
        self.dispatching = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self.peer_addr = self.remote_addr = normalised_address(peer[0]) if peer else "unknown"
        if self.server.at_connection_limit():
            self.state = CLOSED
            transport.abort()
            return
        self.transport = transport
        self.client_cert = client_identity(transport.get_extra_info("peercert"))
        self.server.connections.add(self)
        self.deadline = time.monotonic() + self.server.request_timeout
        if self.buffer:
            # TLS: application data that arrived with the end of the handshake.
            self._advance()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.server.connections.discard(self)

    def eof_received(self) -> bool:
        # A client may half-close after sending its request (HTTP/1.0 style):
        # keep the write side open until its answer is out.
        self.peer_closed = True
        if self.state in (IDLE, CLOSED) and not self.buffer:
            return False
        self._advance()
        # Half a request followed by EOF will never complete: close. Stay
        # open while an answer is pending or a pipelined request still waits.
        return self.state == BUSY or (self.state == IDLE and bool(self.buffer))

    def get_buffer(self, sizehint: int) -> memoryview:
        # Safe to share: asyncio calls buffer_updated right after the read
        # that filled it, and one event loop thread serves every connection.
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.state == CLOSED:
            return
        self.buffer += self.server.read_buffer[:nbytes]
        if self.transport is None:
            return  # TLS: bytes that came with the handshake's end, read once connection_made runs
        if self.state != BUSY and not self.write_blocked:
            self._advance()
        # Pipelined bytes wait until the current answer is out; stop
        # reading once they exceed what one request may hold.
        if len(self.buffer) > self._buffer_limit() and not self.paused and self.state != CLOSED:
            self._pause()

    def pause_writing(self) -> None:
        # asyncio's write buffer passed its high-water mark: the client is not
        # reading its answers. Read and answer nothing more until it does, or
        # pipelined requests would pile their answers up in memory.
        self.write_blocked = True
        if not self.paused:
            self._pause()

    def resume_writing(self) -> None:
        self.write_blocked = False
        if self.state in (IDLE, HEAD, BODY):
            self._next_request()

    # request reading

    def _advance(self) -> None:
        try:
            self._read_requests()
        except HttpError as error:
            self.server.metrics.count("dlrd_requests_refused_total", status=str(error.status), reason="http")
            log.info("refused a request from %s: %d %s", self.remote_addr, error.status, error.reason)
            self._send(plain_response(error.status, error.reason, close=True), keep_alive=False)

    def _read_requests(self) -> None:
        now = time.monotonic()
        if self.state == IDLE:
            if not self.buffer:
                return
            self.state = HEAD
            self.deadline = now + self.server.request_timeout
        if self.state == HEAD:
            end = find_head_end(self.buffer)
            if end < 0:
                check_incomplete_head(self.buffer)
                return
            head = parse_head(bytes(self.buffer[:end]))
            del self.buffer[:end]
            forwarded_for = head.headers.get("x-forwarded-for")
            self.remote_addr = self.server.app.sources.client_address(self.peer_addr, forwarded_for)
            refusal = self.server.app.check_head(head, self.remote_addr)
            if refusal is not None:
                self._log_access(head, refusal)
                self._send(refusal, keep_alive=False)
                return
            if head.expects_continue:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
            self.head = head
            self.decoder = ChunkedDecoder(self.server.max_body) if head.chunked else None
            self.body_started = now
            self.state = BODY
        if self.state == BODY:
            head = self.head
            assert head is not None
            if self.decoder is not None:
                if not self.decoder.feed(self.buffer):
                    return
                body = bytes(self.decoder.body)
            else:
                length = head.content_length or 0
                if len(self.buffer) < length:
                    return
                body = bytes(self.buffer[:length])
                del self.buffer[:length]
            self._dispatch(head, body)

    def _dispatch(self, head: RequestHead, body: bytes) -> None:
        self.state = BUSY
        self.deadline = time.monotonic() + self.server.commit_timeout
        request = self.request = Request(head, body, self.remote_addr, self.client_cert)
        self.dispatching = True
        try:
            self.server.app.serve(request, lambda response: self._respond(request, response))
        except Exception:
            log.exception("internal error while serving %s %s from %s", head.method, head.path, self.remote_addr)
            self._respond(request, plain_response(500, "internal error", close=True))
        finally:
            self.dispatching = False

    def _respond(self, request: Request, response: Response) -> None:
        if self.state != BUSY:
            return  # the client went away, or was answered 503 past commit_timeout, while this was committed
        self.request = None
        self._log_access(request.head, response)
        # A client that pipelined requests and then half-closed still gets
        # every answer: EOF ends the connection only once nothing is left.
        keep_alive = (request.head.keep_alive and not response.close and not self.server.stopping
                      and not (self.peer_closed and not self.buffer))
        self._send(response, keep_alive, head_only=request.head.method == "HEAD")
        if not keep_alive:
            return
        self.state = IDLE
        self.head = None
        self.decoder = None
        self.deadline = time.monotonic() + self.server.keepalive_timeout
        if self.write_blocked:
            return  # resume_writing carries on once the client reads
        if self.dispatching:
            # Answered at once (a refusal): read the next pipelined request
            # from the loop, not from inside this one, so a client that
            # pipelines a thousand bad requests cannot nest a thousand calls.
            asyncio.get_running_loop().call_soon(self._next_request)
        else:
            self._next_request()

    def _next_request(self) -> None:
        """Read and answer what the client sent next, now that the last answer is out."""
        if self.write_blocked:
            return  # the client stopped reading since this was scheduled; resume_writing calls again
        self._advance()
        if self.peer_closed and (self.state in (HEAD, BODY) or (self.state == IDLE and not self.buffer)):
            # What is left after EOF is half a request that can never complete.
            self.state = CLOSED
            self.transport.close()  # type: ignore[union-attr]
        elif self.paused and self.state != CLOSED and len(self.buffer) <= self._buffer_limit():
            # Read on only once the pipelined bytes already held are used up,
            # else each answer would let another read's worth pile up.
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _buffer_limit(self) -> int:
        """Bytes read ahead of the request being served: one request's worth at most."""
        return self.server.max_body + 2 * 16384

    # answering

    def _send(self, response: Response, keep_alive: bool, head_only: bool = False) -> None:
        transport = self.transport
        assert transport is not None
        data = render_response(response.status, response.all_headers(), response.body, time.time(), keep_alive)
        if head_only:
            data = data[: len(data) - len(response.body)]
        transport.write(data)
        if not keep_alive:
            self.state = CLOSED
            if transport.can_write_eof() and not self.peer_closed:
                # RFC 9112 §9.6: close in two steps. Closing with request bytes
                # still unread makes the kernel send a reset, which can destroy
                # the answer (a 413, a 403) before the client reads it; so send
                # FIN, drop whatever still arrives, and close on the client's
                # EOF or after LINGER_SECONDS.
                transport.write_eof()
                self.linger_until = time.monotonic() + LINGER_SECONDS
                if self.paused:
                    self.paused = False
                    transport.resume_reading()
            else:
                transport.close()

    def answer_overdue(self, stopping: bool = False) -> None:
        """Storage holds this request too long (commit_timeout, or dlrd is stopping): answer now so the
        provider retries, and close, since the late outcome must not be taken for the next request's answer."""
        request = self.request
        assert request is not None
        request.overdue = True
        response = self.server.app.overdue(request, stopping)
        self._log_access(request.head, response)
        self.request = None
        self._send(response, keep_alive=False)

    def _pause(self) -> None:
        self.paused = True
        self.transport.pause_reading()  # type: ignore[union-attr]

    def _log_access(self, head: RequestHead, response: Response) -> None:
        if self.server.access_log:
            access_log.info('%s "%s %s HTTP/%d.%d" %d %d', self.remote_addr, head.method, head.path,
                            *head.version, response.status, len(response.body))

    # timeouts

    def expire(self, now: float) -> None:
        """Act on a passed deadline (called by the sweeper): close a slow or idle client, answer a stuck commit."""
        if self.state == CLOSED:
            if self.linger_until and now >= self.linger_until and self.transport is not None:
                self.transport.abort()
            return
        if self.state == BUSY:
            if now >= self.deadline and self.request is not None:
                self.answer_overdue()
            return
        if self.state == BODY:
            # A minimum transfer rate, not just an idle timer: a client
            # dribbling a byte now and then still runs out of time.
            received = len(self.decoder.body) if self.decoder else len(self.buffer)
            deadline = self.body_started + self.server.request_timeout + received / self.server.min_body_rate
        else:
            deadline = self.deadline
        if now < deadline:
            return
        if self.state == IDLE:
            self.state = CLOSED
            if self.write_blocked:
                # close() would wait for a client that reads nothing to take its answers.
                self.transport.abort()  # type: ignore[union-attr]
            else:
                self.transport.close()  # type: ignore[union-attr]
            return
        self.server.metrics.count("dlrd_requests_refused_total", status="408", reason="timeout")
        log.info("timed out a slow client %s while it sent the request %s", self.remote_addr,
                 "head" if self.state == HEAD else "body")
        self._send(plain_response(408, "request timeout", close=True), keep_alive=False)


class _AlertingSSLProtocol(asyncio.sslproto.SSLProtocol):
    """asyncio's TLS protocol, but a failed handshake still sends OpenSSL's alert.

    In CPython 3.11 sslproto._do_handshake does not call _process_outgoing
    when do_handshake raises SSLError, so the alert OpenSSL queued is never
    sent: a TLS 1.1 client would see a bare EOF instead of the
    protocol_version alert that tells its operator what is wrong.
    """

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            self._process_outgoing()  # type: ignore[attr-defined]
        super()._on_handshake_complete(handshake_exc)  # type: ignore[misc]


async def _start_tls(transport: asyncio.Transport, protocol: asyncio.Protocol, context: ssl.SSLContext,
                     timeout: float) -> asyncio.Transport:
    """loop.start_tls(server_side=True) with _AlertingSSLProtocol in place of asyncio's own."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    ssl_protocol = _AlertingSSLProtocol(loop, protocol, context, waiter, server_side=True,
                                        call_connection_made=False, ssl_handshake_timeout=timeout)
    transport.pause_reading()
    transport.set_protocol(ssl_protocol)
    made = loop.call_soon(ssl_protocol.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    return ssl_protocol._app_transport  # type: ignore[attr-defined]


class TlsHandshake(asyncio.Protocol):
    """An HTTPS connection before its handshake: holds the socket still until the server wraps it."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        # Nothing may be read before TLS takes the transport over.
        transport.pause_reading()
        if self.server.at_connection_limit():
            transport.abort()
            return
        self.server.handshakes.add(asyncio.get_running_loop().create_task(self.server.handshake(transport)))


class HttpServer:
    """Listens on the configured addresses and owns every connection."""

    def __init__(self, config: Config, app: Application, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.tls = ServerTls(certificate_files(config)) if config["server", "tls_listen"] else None
        self.tls_listen: list[Address] = config["server", "tls_listen"]
        self.listen: list[Address] = config["server", "listen"]
        self.max_connections: int = config["server", "max_connections"]
        self.max_body: int = config["server", "max_body_bytes"]
        self.request_timeout: float = config["server", "request_timeout"]
        self.keepalive_timeout: float = config["server", "keepalive_timeout"]
        self.commit_timeout: float = config["storage", "commit_timeout"]
        self.min_body_rate: int = config["server", "min_body_rate"]
        self.access_log: bool = config["log", "access_log"]
        self.connections: set[Connection] = set()
        self.read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        self.handshakes: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.bound: list[str] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._limit_logged = 0.0
        metrics.gauges["dlrd_connections_open"] = lambda: len(self.connections)
        if self.tls is not None:
            metrics.gauges["dlrd_tls_certificate_expiry_timestamp_seconds"] = lambda: self.tls.expires_at or 0.0

    async def start(self) -> None:
        """Bind every listener or none: a half-started daemon is worse than a refusal."""
        loop = asyncio.get_running_loop()
        listeners = [("http", address, lambda: Connection(self)) for address in self.listen]
        listeners += [("https", address, lambda: TlsHandshake(self)) for address in self.tls_listen]
        for scheme, (host, port), factory in listeners:
            try:
                server = await loop.create_server(factory, host, port, backlog=LISTEN_BACKLOG, reuse_address=True)
            except OSError as error:
                await self.close_listeners()
                key = "listen" if scheme == "http" else "tls_listen"
                raise StartupError(f"cannot listen on {host}:{port}: {error.strerror or error}; "
                                   f"free the port or change [server] {key}") from None
            self._servers.append(server)
            for sock in server.sockets:
                self.bound.append(f"{scheme}://" + _url_host(sock.getsockname()))
        self._sweeper = loop.create_task(self._sweep())

    async def handshake(self, transport: asyncio.Transport) -> None:
        """Run one TLS handshake with a deadline; a failure costs one log line, never the listener."""
        assert self.tls is not None
        peer = transport.get_extra_info("peername")
        remote = peer[0] if peer else "unknown"
        connection = Connection(self)
        try:
            tls_transport = await _start_tls(transport, connection, self.tls.context, self.request_timeout)
        except Exception as error:  # every handshake failure ends the same way: log, count, drop
            self.metrics.count("dlrd_tls_handshake_failures_total")
            log.info("TLS handshake with %s failed: %s", remote, _handshake_failure(error))
            transport.abort()
            return
        finally:
            self.handshakes.discard(asyncio.current_task())  # type: ignore[arg-type]
        connection.connection_made(tls_transport)

    def at_connection_limit(self) -> bool:
        """True (and counted, and logged at most once a minute) when no connection may be added."""
        if len(self.connections) + len(self.handshakes) < self.max_connections:
            return False
        self.metrics.count("dlrd_requests_refused_total", status="closed", reason="max-connections")
        self.note_connection_limit()
        return True

    def reload(self, config: Config) -> None:
        """Apply what SIGHUP may change without a restart: the certificate, the access log, commit_timeout."""
        self.access_log = config["log", "access_log"]
        self.commit_timeout = config["storage", "commit_timeout"]
        if self.tls is not None and config["server", "tls_cert"]:
            self.tls.reload(certificate_files(config))

    async def close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers = []

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish, then close what is left."""
        self.stopping = True
        for server in self._servers:
            server.close()
        await self._drain(SHUTDOWN_GRACE)
        waiting = [connection for connection in self.connections
                   if connection.state == BUSY and connection.request is not None]
        if waiting:
            # Storage held these through the grace (a lock, a hanging disk):
            # a 503 lets the provider retry, where a dropped connection
            # leaves it guessing.
            log.warning("stopping: %d request(s) still waited for storage after %.0f s; answered them 503 "
                        "so the provider retries", len(waiting), SHUTDOWN_GRACE)
            for connection in waiting:
                connection.answer_overdue(stopping=True)
            await self._drain(ANSWER_FLUSH_SECONDS)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        for handshake in list(self.handshakes):
            handshake.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._servers = []

    async def _drain(self, seconds: float) -> None:
        """Close connections as they go idle, until none is left or `seconds` passed."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for connection in list(self.connections):
                if connection.state == IDLE and connection.transport is not None:
                    connection.state = CLOSED
                    connection.transport.close()
            if not self.connections:
                return
            await asyncio.sleep(0.05)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.expire(now)
            self.app.receipts.flush_logs()

    def note_connection_limit(self) -> None:
        now = time.monotonic()
        if now - self._limit_logged > 60:
            self._limit_logged = now
            log.warning("connection limit reached (max_connections = %d); closing new connections",
                        self.max_connections)


def _url_host(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _handshake_failure(error: Exception) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or error.__class__.__name__
    if isinstance(error, (TimeoutError, ConnectionAbortedError)):
        return "no handshake within request_timeout"
    return str(error) or error.__class__.__name__
