"""A request and its answer as the application sees them: no sockets, no framing.

The server fills a RequestHead from what the stdlib's parser read, and
sends back whatever Response the application returns; the endpoints
(`app.py`, `receiver.py`) only ever see these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message
from typing import Any


class RequestHead:
    """A parsed request line and header block.

    What every request needs from its headers (path, keep-alive, media
    type, charset, length) is worked out once here: the stdlib's
    `Message.get` walks every header on each call.
    """

    __slots__ = ("charset", "chunked", "content_length", "expects_continue", "forwarded_for", "headers",
                 "keep_alive", "media_type", "method", "path", "target", "version")

    def __init__(self, method: str, target: str, version: tuple[int, int], headers: Message,
                 fields: dict[str, list[str]], expects_continue: bool = False) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.path = target.partition("?")[0]
        connection = fields.get("connection")
        if connection is None:
            self.keep_alive = version >= (1, 1)
        else:
            tokens = {token.strip().lower() for value in connection for token in value.split(",")}
            # RFC 9112 §9.6: close wins over keep-alive, whatever the version.
            self.keep_alive = "close" not in tokens and (version >= (1, 1) or "keep-alive" in tokens)
        content_type = fields.get("content-type")
        self.media_type, self.charset = split_content_type(content_type[0]) if content_type else ("", None)
        length = fields.get("content-length")
        self.content_length = None if length is None else int(length[0])
        self.chunked = "transfer-encoding" in fields
        self.expects_continue = expects_continue and version >= (1, 1)
        forwarded = fields.get("x-forwarded-for")
        self.forwarded_for = ", ".join(forwarded) if forwarded else None

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


def split_content_type(value: str) -> tuple[str, str | None]:
    """A Content-Type's media type, lower-cased, and its charset parameter (None without one).

    The quarantine keeps a request's content type as `media; charset=...`,
    so `dlrd replay` reads it back with this too.
    """
    media_type, _, parameters = value.partition(";")
    return media_type.strip().lower(), _charset(parameters) if parameters else None


def _charset(parameters: str) -> str | None:
    """The charset parameter of a Content-Type, from the text after its first ';'."""
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower() or None
    return None


@dataclass
class Request:
    """A complete request as the application sees it."""

    head: RequestHead
    body: bytes
    remote_addr: str
    tls_client: str | None = None
    # The socket's peer (remote_addr may be a proxy's client) and "http" or
    # "https": what a URL dlrd hands out (the WSDL's address) is built from.
    peer_addr: str = ""
    scheme: str = "http"
    # What the request waits on while storage commits it (a store Pending),
    # so a stop can answer it before the commit completes.
    waiting_on: Any = None


@dataclass
class Response:
    """What to send back; `close` ends the connection after it."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def plain_response(status: int, text: str, close: bool = False, headers: list[tuple[str, str]] | None = None
                   ) -> Response:
    """A short text answer for refusals that are not about SOAP (404, 405, 413 ...)."""
    return Response(status, (text + "\n").encode("utf-8"), headers=headers or [], close=close)
