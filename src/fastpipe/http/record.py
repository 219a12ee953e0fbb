"""The record of one exchange, made when it ends, and the access log line written from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Final

if TYPE_CHECKING:
    from ..usage import Usage

__all__ = (
    "CLIENT_GONE",
    "COMPLETE",
    "DRAINED",
    "REJECTED",
    "SHUTDOWN",
    "TIMEOUT",
    "UPGRADED",
    "UPSTREAM_ERROR",
    "ExchangeHook",
    "ExchangeRecord",
    "access_logger",
    "format_access_line",
)

# Why an exchange ended.
COMPLETE: Final = "complete"  # the whole response reached the client's transport
CLIENT_GONE: Final = "client gone"  # the client disconnected first
UPSTREAM_ERROR: Final = "upstream error"  # refused, reset, malformed or cut mid-body
TIMEOUT: Final = "timeout"  # connect or response-head timeout
SHUTDOWN: Final = "shutdown"  # cut at the graceful-shutdown deadline
REJECTED: Final = "rejected"  # the proxy answered itself (bad request, body too large)
UPGRADED: Final = "upgraded"  # a tunnel (WebSocket) that both sides ended
DRAINED: Final = "drained"  # the client left; the upstream was read on (for usage capture) and ended or was cut


@dataclass(slots=True)  # not frozen: a frozen dataclass pays a setattr call per field, 4x the cost of this
class ExchangeRecord:
    """What happened to one request/response exchange; times in seconds. Made once per exchange and handed
    to every reader (hook, access log, metrics): treat it as read-only.

    ``ttfb`` is from the end of the request head to the first response byte handed to the client's
    transport (None if none was); ``status`` is what the client got (None if nothing), and
    ``upstream_status`` what the upstream said (None if it never answered).
    """

    client: str
    method: str
    target: str
    status: int | None
    upstream_status: int | None
    ttfb: float | None
    duration: float
    request_bytes: int
    request_chunks: int
    response_bytes: int
    response_chunks: int
    end: str
    detail: str | None = None  # why the proxy answered itself or gave up (e.g. a failed TLS handshake)
    route: str | None = None  # the route's name (None: the request never got one, e.g. a bad request)
    upstream: str | None = None  # the upstream group's name
    server: str | None = None  # the URL of the server that answered (or was tried last)
    attempts: int = 0  # servers tried: 1 normally, more after retries, 0 when none was
    usage: Usage | None = None  # token usage read from the response, on a route with ``usage``
    tag: object = None  # what on_request set as ``request.tag`` (a team, an API key id, a budget)


ExchangeHook = Callable[[ExchangeRecord], object]

access_logger: Final = logging.getLogger("fastpipe.access")


def format_access_line(record: ExchangeRecord) -> str:
    """One line per exchange, in a shape close to the common log format plus the stream facts."""
    ttfb = "-" if record.ttfb is None else f"{record.ttfb * 1000:.2f}ms"
    status = "-" if record.status is None else str(record.status)
    upstream = "-" if record.upstream_status is None else str(record.upstream_status)
    return (
        f'{record.client} "{record.method} {record.target}" {status} upstream={upstream} '
        f"in={record.request_bytes}B/{record.request_chunks} out={record.response_bytes}B/{record.response_chunks} "
        f"ttfb={ttfb} dur={record.duration * 1000:.2f}ms end={record.end}"
        f" route={record.route or '-'} upstream={record.upstream or '-'} server={record.server or '-'}"
        f" attempts={record.attempts}"
        + (_usage_fields(record.usage) if record.usage is not None else "")
        + (f' detail="{record.detail}"' if record.detail else "")
    )


def _usage_fields(usage: Usage) -> str:
    def shown(count: int | None) -> str:
        return "-" if count is None else str(count)

    return f" usage_in={shown(usage.input_tokens)} usage_out={shown(usage.output_tokens)}"
