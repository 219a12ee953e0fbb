"""The TLS cells' key material: a throwaway CA and the origin's certificate, made at run time with trustme.

The PEM files go to the run's work directory (removed at the end of the run); nothing is ever committed.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
ORIGIN_NAME = "origin.bench.test"  # the name the TLS origin's certificate carries, sent as SNI and verified


@dataclass(frozen=True)
class TlsFiles:
    """The run's throwaway CA and the origin's certificate, as PEM files in the work directory."""

    ca: Path
    cert: Path
    key: Path
    name: str = ORIGIN_NAME


def make_tls_files(directory: Path) -> TlsFiles:
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA()
    leaf = authority.issue_cert(ORIGIN_NAME, HOST)
    files = TlsFiles(directory / "ca.pem", directory / "origin.pem", directory / "origin.key")
    authority.cert_pem.write_to_path(str(files.ca))
    with open(files.cert, "wb") as chain:
        for pem in leaf.cert_chain_pems:
            chain.write(pem.bytes())
    leaf.private_key_pem.write_to_path(str(files.key))
    files.key.chmod(0o600)
    return files


def tls_get(port: int, files: TlsFiles, path: str, timeout: float = 2.0) -> bytes:
    """One GET over a verified TLS connection (the name of the certificate sent as SNI); the raw response."""
    context = ssl.create_default_context(cafile=str(files.ca))
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=files.name) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {files.name}\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)
