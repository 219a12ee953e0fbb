"""The gateway's Prometheus metrics: what the proxy counts, and the ``/metrics`` listener that shows it.

The proxy holds one ``GatewayMetrics`` per process and calls it: ``exchange_ended(record)`` once per
finished exchange, ``connection_opened``/``connection_closed`` per client connection,
``tunnel_opened``/``tunnel_closed`` per WebSocket tunnel, and ``upstream_health(group, server_url, up)``
when a server is ejected or back. ``serve_metrics(host, port, registry)`` answers ``GET /metrics`` in the
Prometheus text format from a daemon thread.

==============================================  ====================================================
``fastpipe_requests_total``                     exchanges by ``route``, ``upstream``, ``status_class``
                                                (``1xx``..``5xx`` as the client got it; ``none``: it got
                                                no status)
``fastpipe_request_duration_seconds``           histogram by ``route``: request head to the end
``fastpipe_ttfb_seconds``                       histogram by ``route``: request head to the first response
                                                byte (exchanges that sent none are not observed)
``fastpipe_bytes_total``                        body bytes by ``route``, ``direction`` (``in``: request,
                                                ``out``: response)
``fastpipe_exchanges_ended_total``              exchanges by ``route``, ``reason`` (the record's ``end``)
``fastpipe_usage_tokens_total``                 tokens by ``route``, ``kind`` (``input``/``output``), as the
                                                provider reported them on a route with ``usage``
``fastpipe_open_connections``                   client connections open now
``fastpipe_open_tunnels``                       WebSocket tunnels open now
``fastpipe_upstream_up``                        by ``upstream``, ``server``: 1 in service, 0 ejected
==============================================  ====================================================

An exchange that never got a route (a bad request, no route matched) has route ``-`` and upstream ``-``.
Both histograms share buckets from 5 ms to 5 minutes, for LLM streams as much as for quick calls.

**Cost.** The per-exchange path looks its label children up once per (route, upstream, status, end) and
keeps their bound methods, so after the first exchange of a kind it makes no ``labels()`` call; what is
left is prometheus_client's own ``inc``/``observe`` (a lock each, and a bucket scan per histogram).

**Several workers** (``fastpipe proxy --workers N``) use prometheus_client's multiprocess mode:

1. The supervisor calls ``prepare_multiprocess()`` before it starts any worker: a fresh directory (or the
   one given, emptied of old ``*.db`` files).
2. Each worker starts with ``PROMETHEUS_MULTIPROC_DIR`` (``MULTIPROC_ENV``) naming it in its environment,
   so prometheus_client, when imported, writes every value to that worker's own files there.
3. The supervisor serves ``serve_metrics(host, port, multiprocess_dir=directory)``: each scrape reads every
   worker's files and reports counters and histograms summed over the workers, dead ones included (a
   total does not drop when a worker is replaced).
4. When a worker exits, the supervisor calls ``worker_exited(pid)``, which removes its live gauges.

The gauges are "live": only workers still running count. ``fastpipe_open_connections`` and
``fastpipe_open_tunnels`` are summed (``livesum``). ``fastpipe_upstream_up`` is the **minimum**
(``livemin``) over the workers that reported the server: each worker keeps its own health record, and one
may have ejected a server that another has not yet tried. The minimum stays a readable 0 or 1, and 0 means
"ejected by at least one worker", the earliest sign that a server fails; a sum would count workers and
change meaning with N, and a maximum would hide a failing server until every worker had hit it.

In that mode a process holds one ``GatewayMetrics`` (two would write the same entries of the same files).
Alone (no variable), each ``GatewayMetrics`` has its own ``CollectorRegistry``, so tests may make several.
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import AF_INET, AF_INET6
from socketserver import TCPServer
from typing import TYPE_CHECKING, Any, Final, Union

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

if TYPE_CHECKING:
    from ..http.record import ExchangeRecord

__all__ = (
    "BUCKETS",
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "GatewayMetrics",
    "MetricsServer",
    "metrics_exposition",
    "prepare_multiprocess",
    "serve_metrics",
    "worker_exited",
)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
NO_LABEL: Final = "-"  # the route and upstream of an exchange that never got a route

# Seconds, for both histograms: a quick call (5 ms) to a long LLM stream (5 minutes).
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

_log = logging.getLogger("fastpipe.metrics")

# The bound methods one exchange ends with, for one (route, upstream, status, end): requests, ended,
# duration, ttfb, bytes in, bytes out.
_Children = tuple[
    Callable[[], None],
    Callable[[], None],
    Callable[[float], None],
    Callable[[float], None],
    Callable[[float], None],
    Callable[[float], None],
]
_Key = tuple[Union[str, None], Union[str, None], Union[int, None], str]


def _status_class(status: int | None) -> str:
    return "none" if status is None else f"{status // 100}xx"


class GatewayMetrics:
    """The proxy's counters, histograms and gauges; one per process, called from the event loop's thread."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if MULTIPROC_ENV in os.environ and values.ValueClass is values.MutexValue:
            raise RuntimeError(
                f"{MULTIPROC_ENV} was set after prometheus_client was imported: this process's metrics would "
                "be missing from the workers' sum; set it in the environment the process starts with"
            )
        self.registry = CollectorRegistry() if registry is None else registry
        made = self.registry
        self.requests = Counter(
            "fastpipe_requests",
            "Exchanges ended, by the status class the client got",
            ("route", "upstream", "status_class"),
            registry=made,
        )
        self.duration = Histogram(
            "fastpipe_request_duration_seconds",
            "From the end of the request head to the end of the exchange",
            ("route",),
            registry=made,
            buckets=BUCKETS,
        )
        self.ttfb = Histogram(
            "fastpipe_ttfb_seconds",
            "From the end of the request head to the first response byte sent",
            ("route",),
            registry=made,
            buckets=BUCKETS,
        )
        self.bytes = Counter(
            "fastpipe_bytes", "Body bytes: in from the client, out to it", ("route", "direction"), registry=made
        )
        self.ended = Counter(
            "fastpipe_exchanges_ended", "Exchanges ended, by why they ended", ("route", "reason"), registry=made
        )
        self.tokens = Counter(
            "fastpipe_usage_tokens", "Tokens the providers reported", ("route", "kind"), registry=made
        )
        self.open_connections = Gauge(
            "fastpipe_open_connections", "Client connections open", registry=made, multiprocess_mode="livesum"
        )
        self.open_tunnels = Gauge(
            "fastpipe_open_tunnels", "WebSocket tunnels open", registry=made, multiprocess_mode="livesum"
        )
        self.upstream_up = Gauge(
            "fastpipe_upstream_up",
            "1 when the server is in service, 0 when ejected (the minimum over workers)",
            ("upstream", "server"),
            registry=made,
            multiprocess_mode="livemin",
        )
        self._children: dict[_Key, _Children] = {}
        self._tokens: dict[str | None, tuple[Callable[[float], None], Callable[[float], None]]] = {}
        self._health: dict[tuple[str, str], Callable[[float], None]] = {}
        self.connection_opened: Callable[[], None] = self.open_connections.inc
        self.connection_closed: Callable[[], None] = self.open_connections.dec
        self.tunnel_opened: Callable[[], None] = self.open_tunnels.inc
        self.tunnel_closed: Callable[[], None] = self.open_tunnels.dec

    @property
    def multiprocess(self) -> bool:
        """Whether the values go to the files of ``PROMETHEUS_MULTIPROC_DIR`` (several workers)."""
        return values.ValueClass is not values.MutexValue

    def exchange_ended(self, record: ExchangeRecord) -> None:
        key = (record.route, record.upstream, record.status, record.end)
        children = self._children.get(key)
        if children is None:
            children = self._children_of(key)
        requests, ended, duration, ttfb, bytes_in, bytes_out = children
        requests()
        ended()
        duration(record.duration)
        if record.ttfb is not None:
            ttfb(record.ttfb)
        if record.request_bytes:
            bytes_in(record.request_bytes)
        if record.response_bytes:
            bytes_out(record.response_bytes)
        usage = record.usage
        if usage is not None:
            # Looked up apart, so a route without usage capture shows no token series at all.
            tokens = self._tokens.get(record.route)
            if tokens is None:
                route = NO_LABEL if record.route is None else record.route
                tokens = self._tokens[record.route] = (
                    self.tokens.labels(route, "input").inc,
                    self.tokens.labels(route, "output").inc,
                )
            tokens_in, tokens_out = tokens
            if usage.input_tokens is not None:
                tokens_in(usage.input_tokens)
            if usage.output_tokens is not None:
                tokens_out(usage.output_tokens)

    def _children_of(self, key: _Key) -> _Children:
        route_name, upstream_name, status, end = key
        route = NO_LABEL if route_name is None else route_name
        upstream = NO_LABEL if upstream_name is None or route_name is None else upstream_name
        children: _Children = (
            self.requests.labels(route, upstream, _status_class(status)).inc,
            self.ended.labels(route, end).inc,
            self.duration.labels(route).observe,
            self.ttfb.labels(route).observe,
            self.bytes.labels(route, "in").inc,
            self.bytes.labels(route, "out").inc,
        )
        self._children[key] = children
        return children

    # connection_opened, connection_closed, tunnel_opened, tunnel_closed: the gauges' own bound methods,
    # set in __init__ (no call of ours in between).

    def upstream_health(self, upstream: str, server: str, up: bool) -> None:
        """Report a server in service (``up``) or ejected; ``server`` is its URL as configured."""
        key = (upstream, server)
        setter = self._health.get(key)
        if setter is None:
            setter = self._health[key] = self.upstream_up.labels(upstream, server).set
        setter(1.0 if up else 0.0)


def metrics_exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format (``CONTENT_TYPE``)."""
    return generate_latest(registry)


# --- Several workers ---------------------------------------------------------------------------------

_prepared: list[str] = []  # the directory prepare_multiprocess made or emptied last, for worker_exited


def prepare_multiprocess(directory: str | None = None) -> str:
    """The directory the workers write their metrics in: a new temporary one, or ``directory`` (created if
    missing) emptied of the ``*.db`` files an earlier run left. Call it before starting any worker, and start
    them with ``PROMETHEUS_MULTIPROC_DIR`` set to the path returned (the caller removes it when done)."""
    if directory is None:
        directory = tempfile.mkdtemp(prefix="fastpipe-metrics-")
    else:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(directory), "*.db")):
            os.remove(stale)
    directory = os.path.abspath(directory)
    _prepared[:] = [directory]
    return directory


def worker_exited(pid: int, directory: str | None = None) -> None:
    """Forget the live gauges of a worker that exited (its counters stay in the sums).

    ``directory`` defaults to the one ``prepare_multiprocess`` returned last, then to
    ``PROMETHEUS_MULTIPROC_DIR``; with neither there is nothing to forget.
    """
    if directory is None:
        directory = _prepared[0] if _prepared else os.environ.get(MULTIPROC_ENV)
    if directory:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


# --- The listener ------------------------------------------------------------------------------------


class MetricsServer:
    """A ``/metrics`` listener on a daemon thread; ``port`` is the port bound, ``close()`` stops it."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False
        self.host = str(server.server_address[0])
        self.port = int(server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop listening and wait (a second at most) for the thread; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(1.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve_metrics(
    host: str, port: int, registry: CollectorRegistry | None = None, *, multiprocess_dir: str | None = None
) -> MetricsServer:
    """Answer ``GET /metrics`` on ``host:port`` (port 0: any free port) from a daemon thread.

    It shows ``registry`` (one process: ``GatewayMetrics.registry``), or with ``multiprocess_dir`` the sum
    of the workers writing there (read afresh at each scrape). Any other path is 404.
    """
    if multiprocess_dir is not None:
        if registry is not None:
            raise ValueError("serve_metrics shows a registry or a multiprocess directory, not both")
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    elif registry is None:
        raise ValueError("serve_metrics needs a registry or a multiprocess directory")
    host = host.removeprefix("[").removesuffix("]")

    class Server(ThreadingHTTPServer):
        address_family = AF_INET6 if ":" in host else AF_INET
        daemon_threads = True

        def server_bind(self) -> None:
            TCPServer.server_bind(self)  # without HTTPServer's reverse DNS lookup of the host
            self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    server = Server((host, port), _handler(registry))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="fastpipe-metrics", daemon=True
    )
    thread.start()
    return MetricsServer(server, thread)


def _handler(registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        server_version = "fastpipe-metrics"
        timeout = 30  # seconds a connection may take to send its request

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, *, body: bool) -> None:
            if self.path.partition("?")[0] != "/metrics":
                self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics\n", body)
                return
            try:
                text = generate_latest(registry)
            except Exception:
                _log.exception("metrics: the exposition failed")
                self._send(500, "text/plain; charset=utf-8", b"metrics failed; see the log\n", body)
                return
            self._send(200, CONTENT_TYPE, text, body)

        def _send(self, status: int, content_type: str, payload: bytes, body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("metrics: %s %s", self.address_string(), format % args)

    return MetricsHandler
