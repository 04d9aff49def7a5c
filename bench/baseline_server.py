"""The benchmark's ceiling: a minimal stdlib threaded HTTP server.

It reads each POSTed body and answers a canned SubmitDeliveryReceiptResponse
without parsing or storing anything, so it measures what this design (Python,
one process, stdlib sockets) can do at best on the machine. It is tuned the
way a careful developer would tune it: HTTP/1.1 keep-alive, a listen backlog
of 1024, TCP_NODELAY, and each response written in one send.

    python bench/baseline_server.py --listen 127.0.0.1:8099
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The shape and size of dlrd's answer to the seed envelope (its Report 0 "stored").
CANNED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"\n'
    b'xmlns:SOAP-ENC="http://schemas.xmlsoap.org/soap/encoding/"\n'
    b'xmlns:xsi="http://www.w3.org/1999/XMLSchema-instance"\n'
    b'xmlns:xsd="http://www.w3.org/1999/XMLSchema"\n'
    b'xmlns:ns1="http://www.itsarrived.net/dtd/sendsms3">\n'
    b'<SOAP-ENV:Body SOAP-ENV:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">\n'
    b"<ns1:SubmitDeliveryReceiptResponse>\n"
    b'<MessageIdentifier xsi:type="xsd:string">3C7D98A4</MessageIdentifier>\n'
    b'<Report xsi:type="xsd:int">0</Report>\n'
    b'<Text xsi:type="xsd:string">stored</Text>\n'
    b"</ns1:SubmitDeliveryReceiptResponse>\n"
    b"</SOAP-ENV:Body>\n"
    b"</SOAP-ENV:Envelope>\n"
)
MAX_BODY = 64 * 1024


def _response(keep_alive: bool) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Server: baseline\r\n"
        "Content-Type: text/soap; charset=utf-8\r\n"
        f"Content-Length: {len(CANNED_BODY)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + CANNED_BODY


RESPONSE_KEEP_ALIVE = _response(True)
RESPONSE_CLOSE = _response(False)
HEALTHY = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says Connection: close
    disable_nagle_algorithm = True  # StreamRequestHandler sets TCP_NODELAY on each accepted socket

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        self.rfile.read(length)
        # One write of head and body together (wfile is unbuffered: one sendall).
        self.wfile.write(RESPONSE_CLOSE if self.close_connection else RESPONSE_KEEP_ALIVE)

    def do_GET(self) -> None:
        self.wfile.write(HEALTHY)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog
    daemon_threads = True
    allow_reuse_address = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8099", help="host:port (loopback only)")
    options = parser.parse_args()
    host, _, port = options.listen.rpartition(":")
    server = Server((host, int(port)), Handler)
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening on http://{host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
