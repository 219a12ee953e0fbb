"""The proxy's limits and timeouts: one frozen record, built from keyword arguments with documented defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ("Limits",)


@dataclass(frozen=True)
class Limits:
    """Every limit and timeout of a proxy; times are in seconds, sizes in bytes.

    ``connect_timeout`` (default 5.0)
        to open a new upstream connection; past it the client gets 504.
    ``upstream_timeout`` (default 60.0)
        from sending a request to receiving the upstream's response head; past it → 504.
        A response body, once started, has no timeout (SSE streams may idle for long).
    ``header_timeout`` (default 10.0)
        a client must finish its request head this long after its first byte (or after connecting);
        past it → 408 and the connection is closed.
    ``idle_timeout`` (default 75.0)
        a keep-alive client connection with no request in progress is closed after this; the same
        time bounds a request body that stops arriving (→ 408, or a cut once the response began) and
        a client that stops reading a response (the exchange is cut with a reset).
    ``tunnel_idle_timeout`` (default 300.0)
        an upgraded connection (WebSocket) with no byte in either direction for this long is ended; once
        upgraded, none of the request timeouts apply, and this one also bounds a side that stops reading.
    ``max_header_size`` (default 65536)
        bytes in a request head (request line and headers); over it → 431. Upstream heads over it → 502.
    ``max_header_count`` (default 100)
        header fields in a request head; over it → 431 (as HAProxy's and Envoy's default caps).
    ``underscores_in_headers`` (default False)
        request headers whose names contain ``_`` are dropped, because CGI/WSGI back ends read
        ``X_Forwarded_Proto`` as ``X-Forwarded-Proto`` (nginx's default, ``underscores_in_headers off``).
        True forwards them, except those that would fold onto a header the proxy reads or sets.
    ``max_body_size`` (default None: no limit)
        bytes in a request body; over it → 413.
    ``pool_size`` (default 64)
        idle keep-alive connections kept per upstream; more may be open at once, the extra ones are
        closed when their exchange ends.
    ``write_high_water`` / ``write_low_water`` (default 256 KiB / 64 KiB)
        the client (and upstream) transport write buffer marks: above high the other side stops being
        read, at or below low it is read again. This bounds memory per connection.
    ``shutdown_grace`` (default 10.0)
        on graceful shutdown, in-flight responses may finish for this long; then they are cut.
    ``rewrite_host`` (default False)
        send the upstream's own ``host:port`` as Host instead of the client's (which goes to
        X-Forwarded-Host either way).
    ``abort_on_client_eof`` (default False)
        what a client's FIN means while a response is in flight. TCP cannot tell a half-close from a full
        close, so by default the client is taken to have half-closed: it still gets the responses to the
        requests it completed, and a client that in fact left is found out at the response's next write.
        True treats the FIN as the client gone (as nginx does): the exchange ends at once with a reset and
        the upstream connection is closed, so a silent stream (SSE between events) frees its upstream.
    ``zero_copy`` (default True)
        forward the bytes objects the upstream socket delivered where framing is unchanged; False forwards
        the parser's body copies instead (kept to measure the difference).
    """

    connect_timeout: float = 5.0
    upstream_timeout: float = 60.0
    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    tunnel_idle_timeout: float = 300.0
    max_header_size: int = 65536
    max_header_count: int = 100
    max_body_size: int | None = None
    pool_size: int = 64
    write_high_water: int = 256 * 1024
    write_low_water: int = 64 * 1024
    shutdown_grace: float = 10.0
    rewrite_host: bool = False
    abort_on_client_eof: bool = False
    underscores_in_headers: bool = False
    zero_copy: bool = True

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout",
            "upstream_timeout",
            "header_timeout",
            "idle_timeout",
            "tunnel_idle_timeout",
            "shutdown_grace",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name in ("rewrite_host", "abort_on_client_eof", "underscores_in_headers", "zero_copy"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("max_header_size", "max_header_count", "write_high_water"):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("pool_size", self.pool_size, minimum=0)
        _require_int("write_low_water", self.write_low_water, minimum=0)
        if self.max_body_size is not None:
            _require_int("max_body_size", self.max_body_size, minimum=0)
        if self.write_low_water > self.write_high_water:
            raise ValueError(
                f"write_low_water ({self.write_low_water}) must not exceed write_high_water ({self.write_high_water})"
            )

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Limits:
        """Build from keyword arguments; an unknown name is a TypeError that lists the known ones."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown proxy option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)

    @property
    def shortest_timeout(self) -> float:
        """The finest deadline the sweep must honour."""
        return min(self.header_timeout, self.idle_timeout, self.upstream_timeout, self.tunnel_idle_timeout)


def _require_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
