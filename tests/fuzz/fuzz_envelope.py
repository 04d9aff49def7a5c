"""atheris harness: the SOAP envelope parser on arbitrary bytes.

parse_envelope may only answer with an Envelope or raise EnvelopeRejected;
any other exception is a crash. A parsed envelope must also survive being
answered (build_response) and redacted (redact_pin). See README.md here.
"""

from __future__ import annotations

from pathlib import Path

import atheris
from fuzz_run import run

with atheris.instrument_imports(include=["dlrd"]):
    from dlrd.soap import EnvelopeRejected, build_fault, build_response, parse_envelope, redact_pin

HERE = Path(__file__).resolve().parent
SEED = HERE.parent / "envelopes" / "seed.xml"
CHARSETS = [None, "utf-8", "iso-8859-1", "us-ascii", "utf-16", "ebcdic", "x"]


def seed_corpus(directory: Path) -> None:
    """Put the provider's example, and a few variants of it, in the corpus."""
    directory.mkdir(parents=True, exist_ok=True)
    seed = SEED.read_bytes()
    variants = {
        "seed.xml": seed,
        "seed-no-declaration.xml": seed.split(b"?>", 1)[1],
        "seed-latin1.xml": seed.replace(b"UTF-8", b"ISO-8859-1").replace(b"ANOther", b"AN\xd6ther"),
        "seed-soap12.xml": seed.replace(b"http://schemas.xmlsoap.org/soap/envelope/",
                                       b"http://www.w3.org/2003/05/soap-envelope"),
    }
    for name, data in variants.items():
        # The first byte picks the Content-Type charset (see test_one_input).
        (directory / name).write_bytes(b"\x00" + data)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    charset = CHARSETS[data[0] % len(CHARSETS)]
    body = data[1:]
    try:
        envelope = parse_envelope(body, charset)
    except EnvelopeRejected as rejected:
        build_fault(rejected.soap_version, True, rejected.reason)
        return
    build_response(envelope, envelope.fields.get("MessageIdentifier", ""), 0, "stored")
    redact_pin(body, envelope.fields.get("PIN"))


def main() -> None:
    seed_corpus(HERE / "corpus" / "envelope")
    run("envelope", test_one_input)


if __name__ == "__main__":
    main()
