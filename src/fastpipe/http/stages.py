"""The stages a client connection can wait in, and how long each may last.

A connection has one stage deadline at a time (``ProxyProtocol._arm(kind)``); the send deadline runs beside
it. The request and tunnel timeouts may differ per route, so each route carries its own table, indexed by
kind: arming a deadline is one tuple lookup.
"""

from __future__ import annotations

from typing import Final

from .limits import Limits

__all__ = ("BODY", "HEADER", "IDLE", "LINGER", "LINGER_SECONDS", "NO_DEADLINE", "TUNNEL", "UPSTREAM", "stage_timeouts")

NO_DEADLINE: Final = 0
HEADER: Final = 1  # a request head must complete
IDLE: Final = 2  # a keep-alive connection waits for its next request
UPSTREAM: Final = 3  # the upstream must send its response head (or the on_request hook finish)
LINGER: Final = 4  # after an error response, input is discarded for a moment before the close
BODY: Final = 5  # the request body must keep arriving (idle_timeout between reads)
TUNNEL: Final = 6  # an upgraded connection must carry a byte, either way, within tunnel_idle_timeout

LINGER_SECONDS: Final = 1.0


def stage_timeouts(connection: Limits, route: Limits | None = None) -> tuple[float, ...]:
    """Seconds per stage kind: the connection's own timeouts, the upstream and tunnel ones of ``route``."""
    route = route or connection
    return (
        0.0,
        connection.header_timeout,
        connection.idle_timeout,
        route.upstream_timeout,
        LINGER_SECONDS,
        connection.idle_timeout,
        route.tunnel_idle_timeout,
    )
