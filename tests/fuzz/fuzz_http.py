"""atheris harness: the HTTP request reader (dlrd/framing.py on the stdlib's parse_request) on arbitrary bytes.

The head parser and the chunked decoder may only raise HttpError; a head
they accept must answer every property the server asks of it without
raising. See README.md here.
"""

from __future__ import annotations

from pathlib import Path

import atheris
from fuzz_run import run

with atheris.instrument_imports(include=["dlrd"]):
    from dlrd.framing import (
        ChunkedDecoder,
        HttpError,
        check_incomplete_head,
        head_end,
        head_start,
        parse_head,
    )

HERE = Path(__file__).resolve().parent
SEED = HERE.parent / "envelopes" / "seed.xml"


def seed_corpus(directory: Path) -> None:
    """The provider's example POST, and a chunked and a pipelined variant of it."""
    directory.mkdir(parents=True, exist_ok=True)
    body = SEED.read_bytes()
    plain = (b"POST /cgi-bin/deliveryrecript.pl HTTP/1.0\r\nHost: www.another.com:80\r\n"
             b"Content-Type: text/soap\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    chunked = (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Type: text/xml; charset=utf-8\r\n"
               b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
               + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (body[:100], body[100:]))
               + b"0\r\nTrailer: x\r\n\r\n")
    variants = {"seed.http": plain, "seed-chunked.http": chunked, "seed-pipelined.http": plain + plain}
    for name, data in variants.items():
        (directory / name).write_bytes(data)


def test_one_input(data: bytes) -> None:
    buffer = bytearray(data)
    start = head_start(buffer)
    end = head_end(buffer, start)
    try:
        if end < 0:
            check_incomplete_head(buffer, start)
            return
        head = parse_head(bytes(buffer[start:end]))
    except HttpError as error:
        assert 400 <= error.status < 600, error.status
        return
    # Everything the server and the application read from a head.
    _ = (head.path, head.query, head.keep_alive, head.content_length, head.media_type, head.charset,
         head.expects_continue)
    del buffer[:end]
    if not head.chunked:
        return
    decoder = ChunkedDecoder(64 * 1024)
    try:
        # Feed in two pieces, as the network might deliver them.
        middle = len(buffer) // 2
        rest = bytearray(buffer[middle:])
        part = bytearray(buffer[:middle])
        if not decoder.feed(part):
            part += rest
            decoder.feed(part)
    except HttpError as error:
        assert error.status in (400, 413), error.status
        return
    assert len(decoder.body) <= 64 * 1024


def main() -> None:
    seed_corpus(HERE / "corpus" / "http")
    run("http", test_one_input)


if __name__ == "__main__":
    main()
