"""A client connection switched to another protocol (WebSocket, after a 101): raw bytes both ways.

The response Pipe carries the upstream's bytes to the client as for any body; this object carries the
client's bytes upstream, passes each side's half-close on where the transports allow it (not over TLS:
there the end of either side ends the tunnel), and keeps the count behind the idle check.
"""

from __future__ import annotations

from .exchange import Exchange, UpstreamSide

__all__ = ("Tunnel",)


class Tunnel:
    """The client-to-upstream half of one tunnel, and how far each side got."""

    __slots__ = ("client_ended", "exchange", "seen", "upstream", "upstream_ended")

    def __init__(self, exchange: Exchange, upstream: UpstreamSide) -> None:
        self.exchange = exchange
        self.upstream = upstream
        self.seen = 0  # bytes both ways at the last idle check
        self.client_ended = False
        self.upstream_ended = False

    def from_client(self, data: bytes) -> None:
        self.exchange.request_bytes += len(data)
        self.upstream.send(data)

    def client_half_closed(self, can_write_eof: bool) -> bool:
        """The client sent FIN: half-close the upstream side too (True), or end the tunnel (False)."""
        self.client_ended = True
        if not self.upstream_ended and can_write_eof and self.upstream.half_close():
            return True
        self.upstream.end_tunnel()
        return False

    def upstream_half_closed(self) -> bool:
        """The upstream sent FIN: whether the client's side may be half-closed in turn (it still sends)."""
        self.upstream_ended = True
        return not self.client_ended

    def idle(self, response_bytes: int) -> bool:
        """The idle check: True when no byte moved either way since the last check."""
        moved = self.exchange.request_bytes + response_bytes
        if moved != self.seen:
            self.seen = moved
            return False
        return True
