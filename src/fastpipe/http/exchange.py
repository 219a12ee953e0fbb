"""One request and its response: the owner of the response body's Pipe.

An exchange is made when a request starts arriving and lives until its response has ended. Its Pipe
holds it as owner, so the upstream connection and the response head it refers to stay reachable for as
long as the body streams, however the client side drops its own references.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import ProxyProtocol
    from .upstream import UpstreamConnection

__all__ = ("Exchange",)


class Exchange:
    """The state of one request/response exchange; plain slots, no behaviour of its own."""

    __slots__ = (
        "authority",
        "body_pending",
        "body_pending_size",
        "chunked",
        "client",
        "client_keep_alive",
        "close_delimited",
        "connection_names",
        "content_length",
        "end_reason",
        "first_byte",
        "head",
        "head_only",
        "host",
        "http10",
        "keep_alive",
        "local",
        "method",
        "parts",
        "pipe",
        "request_body_bytes",
        "request_bytes",
        "request_chunks",
        "request_done",
        "retried",
        "started",
        "status",
        "target",
        "transfer_encoding",
        "upgrade",
        "upstream",
        "upstream_status",
        "xff",
    )

    def __init__(self, client: ProxyProtocol) -> None:
        self.client = client
        # request head, filled by the client parser's callbacks
        self.parts: list[bytes] | None = [b""]  # parts[0] becomes the request line
        self.target = b""
        self.method = b""
        self.host: bytes | None = None
        self.authority: bytes | None = None  # from an absolute-form target; becomes the Host
        self.xff: bytes | None = None
        self.connection_names: list[bytes] | None = None
        self.transfer_encoding: bytes | None = None
        self.content_length = -1
        self.upgrade = False
        self.http10 = False
        self.keep_alive = True
        self.head_only = False
        self.chunked = False
        self.head = b""  # the request head as sent upstream
        self.local: bytes | None = None  # a response the proxy gives itself (health check): no upstream
        # request body
        self.body_pending: list[bytes] | None = None  # framed pieces waiting for an upstream
        self.body_pending_size = 0
        self.request_body_bytes = 0  # as received from the client (for max_body_size)
        self.request_bytes = 0  # as written upstream
        self.request_chunks = 0
        self.request_done = False
        # upstream side
        self.upstream: UpstreamConnection | None = None
        self.retried = False
        self.upstream_status: int | None = None
        self.pipe: Any = None
        # response to the client
        self.status: int | None = None
        self.client_keep_alive = True
        self.close_delimited = False  # the client learns the end of the body from the close
        # record
        self.started = 0.0
        self.first_byte = 0.0
        self.end_reason: str | None = None

    def abandon_upstream(self) -> None:
        """Let go of the upstream connection mid-exchange: it can never serve another request."""
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.abandon()

    def __repr__(self) -> str:
        return f"<Exchange {self.method.decode('latin-1')} {self.target.decode('latin-1')} status={self.status}>"
