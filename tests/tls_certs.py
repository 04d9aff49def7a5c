"""Certificates made in the test run: a CA, server certificates and client certificates."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class Pki:
    """A CA with one server certificate and one client certificate, written as PEM files."""

    ca: trustme.CA
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, with_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if with_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_pki(directory: Path, name: str = "pki", server_cn: str = "dlrd test server") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name=f"{name} CA")
    server = ca.issue_cert("127.0.0.1", "::1", "localhost", common_name=server_cn)
    client = ca.issue_cert("provider.example", common_name="provider.example",
                           organization_name="Connection Software test")
    files = Pki(ca, directory / f"{name}-ca.pem", directory / f"{name}-server.pem",
                directory / f"{name}-server.key", directory / f"{name}-client.pem", directory / f"{name}-client.key")
    ca.cert_pem.write_to_path(str(files.ca_file))
    # Chain file as certbot writes fullchain.pem: leaf first, then the issuer(s).
    server.private_key_pem.write_to_path(str(files.server_key))
    files.server_cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    client.private_key_pem.write_to_path(str(files.client_key))
    files.client_cert.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    return files
