"""Where an upstream server is: its URL parsed once, at configuration time."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ("UpstreamAddress", "parse_upstream")


@dataclass(frozen=True)
class UpstreamAddress:
    host: str
    port: int
    host_header: bytes  # the upstream's own ``host[:port]``, for rewrite_host and HTTP/1.0 clients
    tls: bool = False  # an https:// upstream


def parse_upstream(url: str) -> UpstreamAddress:
    """``http://HOST:PORT``, ``https://HOST:PORT`` (or ``HOST:PORT``) → address; other schemes or a path
    are errors."""
    if not isinstance(url, str):
        raise TypeError(f"upstream must be a str like 'http://127.0.0.1:8000', got {type(url).__name__}")
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"upstream {url!r}: only http:// and https:// upstreams are supported")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"upstream {url!r}: a path prefix is not supported, give {parts.scheme}://HOST:PORT")
    default = _DEFAULT_PORTS[parts.scheme]
    try:
        port = parts.port or default
    except ValueError as exc:
        raise ValueError(f"upstream {url!r}: {exc}") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"upstream {url!r}: no host")
    shown = f"[{host}]" if ":" in host else host
    header = shown if port == default else f"{shown}:{port}"
    return UpstreamAddress(host, port, header.encode("idna"), tls=parts.scheme == "https")


_DEFAULT_PORTS = {"http": 80, "https": 443}
