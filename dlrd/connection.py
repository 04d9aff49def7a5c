"""One client connection: its socket, the bytes read ahead, and reading and writing under deadlines.

A socket timeout bounds one recv or send; a slow client that sends a byte
just before each timeout would never be cut off. So every wait here is
measured against a deadline for the whole head, body or answer, and the
socket's timeout is set to what is left of it before each call.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from typing import Any

from dlrd.framing import ChunkedDecoder, check_incomplete_head, head_end, head_start
from dlrd.tls import client_identity

READ_SIZE = 64 * 1024


class DeadlinePassed(Exception):
    """The client did not send (or take) what it had to within its deadline."""


class ClientGone(Exception):
    """The client closed or reset the connection, or its TLS broke."""


class ClientConnection:
    """A connection from accept to close, served by one worker at a time.

    Between requests it belongs to nobody: it waits in the idle selector
    (`dlrd.idle`), which hands it to a worker again when its next byte comes.
    """

    __slots__ = ("_blocking", "buffer", "guard", "held", "idle_until", "kernel_timeouts", "opened", "peer_addr",
                 "reclaimed", "remote_addr", "request", "served", "sock", "source_key", "tls_client", "tls_context")

    def __init__(self, sock: socket.socket, peer_addr: str, source_key: str,
                 tls_context: ssl.SSLContext | None, request_timeout: float) -> None:
        self.sock: socket.socket = sock
        self.peer_addr = peer_addr
        self.remote_addr = peer_addr
        self.source_key = source_key
        self.tls_context = tls_context  # set until the handshake is done
        self.kernel_timeouts = tls_context is None  # plain sockets: see _kernel_timeout; TLS: ssl's own timeouts
        self._blocking = True
        self.tls_client: str | None = None
        self.buffer = bytearray()
        self.opened = time.monotonic()
        # Until when it may wait for its client's next request: request_timeout from accept for the
        # first (handshake included), keepalive_timeout from each answer after that.
        self.idle_until = self.opened + request_timeout
        self.served = 0  # requests answered
        self.request: Any = None  # the dlrd.messages.Request being served, for a stop to answer
        # A worker waiting on it for the next request (held), and whether it was taken back for a new
        # client meanwhile (reclaimed): set under the guard, by the worker and by the accept thread.
        self.guard = threading.Lock()
        self.held = False
        self.reclaimed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    # TLS

    def handshake(self, deadline: float) -> None:
        """The TLS handshake, in the worker and under the deadline (never in the accept thread).

        A failed handshake still sends OpenSSL's alert: blocking ssl
        sockets flush it before raising, so a TLS 1.1 client reads
        protocol_version rather than a bare EOF.
        """
        context, self.tls_context = self.tls_context, None
        assert context is not None
        tls = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        self.sock = tls
        try:
            self._set_timeout(deadline)
            tls.do_handshake()
        except BaseException as error:
            # The plain socket back, so the failure can be answered and the connection closed gently.
            self.sock = socket.socket(fileno=tls.detach())
            if isinstance(error, TimeoutError):
                raise DeadlinePassed from None
            raise
        self.tls_client = client_identity(tls.getpeercert())

    # reading

    def pending(self) -> bool:
        """Bytes already received and not yet used: a pipelined request, or TLS records decrypted ahead."""
        if self.buffer:
            return True
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0

    def receive(self, deadline: float) -> None:
        """Append what one recv brings, waiting until `deadline` at most."""
        try:
            if self.kernel_timeouts:
                self._kernel_timeout(socket.SO_RCVTIMEO, deadline)
                data = self.sock.recv(READ_SIZE)
            else:
                self._set_timeout(deadline)
                data = self.sock.recv(READ_SIZE)
        except (TimeoutError, BlockingIOError):
            raise DeadlinePassed from None
        except (OSError, ssl.SSLError) as error:
            raise ClientGone(str(error)) from None
        if not data:
            raise ClientGone("closed")
        self.buffer += data

    def read_head(self, request_timeout: float) -> bytes:
        """The next request's head, from its request line to its empty line; the deadline runs from its first byte.

        Empty lines before the request line are dropped (RFC 9112 §2.2).
        Whatever cannot become a valid head is refused as soon as it
        arrives, not when the deadline passes.
        """
        deadline = time.monotonic() + request_timeout
        buffer = self.buffer
        checked = 0
        while True:
            start = head_start(buffer)
            end = head_end(buffer, max(start, checked - 2))
            if end >= 0:
                block = bytes(buffer[start:end])
                del buffer[:end]
                return block
            checked = check_incomplete_head(buffer, start, checked)
            self.receive(deadline)

    def read_body(self, length: int | None, limit: int, request_timeout: float, min_body_rate: int) -> bytes:
        """The body: `length` bytes, or chunked when `length` is None.

        A minimum transfer rate, not just an idle timer: the body gets
        request_timeout plus the time its bytes so far earned at
        min_body_rate, so a client dribbling a byte now and then still
        runs out of time.
        """
        started = time.monotonic()
        buffer = self.buffer
        if length is not None:
            while len(buffer) < length:
                self.receive(started + request_timeout + len(buffer) / min_body_rate)
            body = bytes(buffer[:length])
            del buffer[:length]
            return body
        decoder = ChunkedDecoder(limit)
        while not decoder.feed(buffer):
            self.receive(started + request_timeout + (len(decoder.body) + len(buffer)) / min_body_rate)
        return bytes(decoder.body)

    # writing

    def send(self, data: bytes, deadline: float) -> None:
        """Write all of `data` by `deadline`: a client that does not take its answer loses its connection."""
        try:
            if self.kernel_timeouts:
                view = memoryview(data)
                while view:
                    self._kernel_timeout(socket.SO_SNDTIMEO, deadline)
                    view = view[self.sock.send(view):]
            else:
                self._set_timeout(deadline)
                self.sock.sendall(data)
        except (TimeoutError, BlockingIOError):
            raise DeadlinePassed from None
        except (OSError, ssl.SSLError) as error:
            raise ClientGone(str(error)) from None

    def _kernel_timeout(self, option: int, deadline: float) -> None:
        """A blocking plain socket whose next recv or send the kernel ends at `deadline`.

        Python polls before each recv and send on a socket with a timeout,
        so every call gives up the GIL twice; with twenty request threads
        each release is a chance for another to take it, and a receipt's
        work is cut into slices with thread switches between. The kernel's
        own SO_RCVTIMEO and SO_SNDTIMEO do the same job in the one call.
        """
        remaining = deadline - time.monotonic()
        if remaining < 0.000_001:  # 0 would mean no timeout at all
            raise DeadlinePassed
        if not self._blocking:
            self.sock.setblocking(True)
            self._blocking = True
        seconds = int(remaining)
        self.sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", seconds,
                                                                   int((remaining - seconds) * 1_000_000)))

    def _set_timeout(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlinePassed
        self.sock.settimeout(remaining)

    def nonblocking(self) -> None:
        """For the idle selector and the peeks that must not wait."""
        self.sock.setblocking(False)
        self._blocking = False

    # closing

    def unread(self) -> bool:
        """True when the client sent bytes not read yet (closing now would reset the connection)."""
        if self.buffer:
            return True
        try:
            self.nonblocking()  # with a timeout set, Python would poll for it before the recv
            return bool(self.sock.recv(1, socket.MSG_PEEK))
        except (BlockingIOError, InterruptedError):
            return False
        except (OSError, ValueError):
            return False  # gone, or a TLS socket (which cannot peek): close it plainly

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self) -> None:
        """Close at once with a reset, dropping whatever is unsent (a client that does not read)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()
