"""One request and its response: the owner of the response body's Pipe, and the two sides that serve it.

An exchange is made when a request starts arriving and lives until its response has ended. Its Pipe
holds it as owner, so the upstream connection and the response head it refers to stay reachable for as
long as the body streams, however the client side drops its own references.

Two objects serve an exchange and call each other through it: the client side (the protocol of the
client's connection, ``server.ProxyProtocol``) and the upstream side (one pooled connection to the
origin, ``upstream.UpstreamConnection``). Each is declared here as the interface the other relies on, so
neither module imports the other.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ("BodyPipe", "ClientSide", "Exchange", "UpstreamSide")


class BodyPipe(Protocol):
    """The push face of :class:`fastpipe.Pipe` that carries a response body (see docs/architecture.md)."""

    @property
    def state(self) -> str: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def chunks(self) -> int: ...
    def feed(self, chunk: Any) -> bool: ...
    def feed_eof(self) -> None: ...
    def feed_error(self, exc: BaseException) -> None: ...
    def connect(self, sink: Any) -> None: ...
    def pause_producing(self) -> None: ...
    def resume_producing(self) -> None: ...
    def cancel(self, reason: Any = None) -> None: ...
    def start_draining(self) -> None: ...
    @property
    def on_disconnect(self) -> Any: ...


class UpstreamSide(Protocol):
    """What the client side asks of the upstream connection serving its exchange."""

    def send(self, piece: bytes) -> None:
        """Write one piece of request body, framed for this hop."""

    def pause_reading(self) -> None:
        """Stop reading responses (the client is not taking the interim heads relayed to it)."""

    def resume_reading(self) -> None: ...

    def abandon(self) -> None:
        """Give up on the connection mid-exchange: it closes and reports nothing more."""

    def half_close(self) -> bool:
        """Pass the client's end of a tunnel on (FIN); False where the transport cannot (TLS)."""

    def end_tunnel(self) -> None:
        """Both directions of the tunnel ended: end the body's pipe, which closes the connection."""


class ClientSide(Protocol):
    """What the upstream side tells the client side about an exchange, in the order it can happen."""

    def upstream_write_paused(self) -> None:
        """The upstream's write buffer is over its high-water mark: stop reading the request body."""

    def upstream_write_resumed(self) -> None: ...

    def upstream_body_flushed(self) -> None:
        """The request body buffered before the connection was ready has been written."""

    def write_interim(self, head: bytes) -> None:
        """Relay a 1xx head at once."""

    def start_response(self, exchange: Exchange, pipe: BodyPipe, parts: list[bytes], close_delimited: bool) -> None:
        """The final response head arrived: ``parts`` is its start line and headers, less the closing CRLF."""

    def flush_head(self, exchange: Exchange) -> None:
        """Send a response head that no body chunk carried out."""

    def upstream_ready(self, exchange: Exchange, connection: Any) -> None:
        """A new upstream connection for ``exchange`` is open: ``connection.begin(exchange)`` or release it."""

    def upstream_lost(self, exchange: Exchange, connection: Any) -> None:
        """The connection closed before any response head (``connection.reused``/``.got_bytes`` say how)."""

    def upstream_connect_failed(self, exchange: Exchange, status: int, reason: str, detail: str) -> None:
        """No connection could be opened for ``exchange`` (refused, timed out, TLS): nothing was written."""

    def upstream_unavailable(self, exchange: Exchange, status: int, reason: str, detail: str) -> None:
        """No response head will come: answer ``status`` on the proxy's behalf."""

    def tunnel_upstream_ended(self, exchange: Exchange) -> bool:
        """The upstream half-closed a tunnel: pass it on; False if that cannot be (the tunnel then ends)."""


class Exchange:
    """The state of one request/response exchange; plain slots, no behaviour of its own."""

    __slots__ = (
        "attempts",
        "body_pending",
        "body_pending_size",
        "chunked",
        "chunked_body",
        "client",
        "client_keep_alive",
        "close_delimited",
        "content_length",
        "detail",
        "end_reason",
        "first_byte",
        "head",
        "head_only",
        "hook_task",
        "http10",
        "in_flight",
        "interim_sent",
        "keep_alive",
        "link",
        "local",
        "method",
        "pipe",
        "replay",
        "request",
        "request_body_bytes",
        "request_bytes",
        "request_chunks",
        "request_done",
        "retried",
        "route",
        "started",
        "status",
        "tag",
        "target",
        "tried",
        "upgrade",
        "upstream",
        "upstream_status",
        "usage",
    )

    def __init__(self, client: ClientSide) -> None:
        self.client = client
        # request head, set once it is complete (RequestHead collects it while it is parsed)
        self.target = b""
        self.method = b""
        self.content_length = -1
        self.http10 = False
        self.keep_alive = True
        self.head_only = False
        self.chunked = False
        self.upgrade: bytes | None = None  # the protocol a tunnel was asked for (Connection: upgrade)
        self.head = b""  # the request head as sent upstream
        self.local: bytes | None = None  # a response the proxy gives itself (health check): no upstream
        # request body
        self.body_pending: list[bytes] | None = None  # framed pieces waiting for an upstream
        self.body_pending_size = 0
        self.request_body_bytes = 0  # as received from the client (for max_body_size)
        self.request_bytes = 0  # as written upstream
        self.request_chunks = 0
        self.request_done = False
        # where it goes: the route, the server of the current attempt, and the servers tried before
        self.route: Any = None  # routing.ProxyRoute (None: answered locally, e.g. no route matched)
        self.request: Any = None  # hooks.Request, while an on_request hook may still change it
        self.hook_task: Any = None  # an async on_request hook's task
        self.link: Any = None  # routing.ServerLink of the attempt in flight (or the last one)
        self.attempts = 0
        self.in_flight = False  # counted in its server's in-flight exchanges (least-connections)
        self.tried: list[Any] | None = None  # gateway Servers that failed this exchange
        self.replay: list[bytes] | None = None  # a fully buffered request body, kept to send again
        # upstream side
        self.upstream: UpstreamSide | None = None
        self.retried = False
        self.interim_sent = False  # a 1xx went to the client: no other server may answer now
        self.upstream_status: int | None = None
        self.pipe: BodyPipe | None = None
        self.chunked_body = False  # the body goes to the client chunked (as it came, or re-framed)
        # response to the client
        self.status: int | None = None
        self.client_keep_alive = True
        self.close_delimited = False  # the client learns the end of the body from the close
        # record
        self.started = 0.0
        self.first_byte = 0.0
        self.end_reason: str | None = None
        self.detail: str | None = None  # why the proxy answered itself, for the record
        self.usage: Any = None  # fastpipe.usage.Usage, on a route with usage capture
        self.tag: Any = None  # what an on_request hook set as request.tag

    def abandon_upstream(self) -> None:
        """Let go of the upstream connection mid-exchange: it can never serve another request."""
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.abandon()

    def __repr__(self) -> str:
        return f"<Exchange {self.method.decode('latin-1')} {self.target.decode('latin-1')} status={self.status}>"
