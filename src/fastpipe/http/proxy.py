"""One reverse proxy: what its client connections share, and ``start_proxy`` to serve it.

A :class:`Proxy` holds the limits, the upstream address and connection pool, the deadline sweep, the
live client connections and the exchange hook. Calling it makes a :class:`ProxyProtocol`, so it is the
protocol factory handed to ``loop.create_server``. It binds to the running loop on first use and installs
no signal handlers: the CLI does that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import ssl as _ssl
import weakref
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, cast

from ..gateway.config import GatewayConfig, ListenAddress, config_from_dict, load_config
from ..usage import Usage, capture_usage
from .address import UpstreamAddress, parse_upstream
from .deadlines import DeadlineSweep
from .dechunk import PayloadTaps
from .exchange import Exchange
from .hooks import Headers, Request, ResponseInfo, headers_of
from .limits import Limits
from .record import ExchangeHook, ExchangeRecord, access_logger, format_access_line
from .routing import Routing, ServerLink, TLSOptions, single_route_config
from .server import ProxyProtocol
from .tls import listener_context
from .upstream import UpstreamPool

if TYPE_CHECKING:
    from ..gateway.metrics import GatewayMetrics

__all__ = ("Proxy", "proxy_of", "shutdown_proxy", "start_proxy")


class Proxy:
    """The shared state of one reverse proxy; call it to make a client protocol.

    ``Proxy("http://127.0.0.1:8000")`` is one route to one server; ``Proxy(config=...)`` serves a gateway
    configuration (a :class:`~fastpipe.gateway.GatewayConfig`, the dict of one, or a TOML file's path).
    """

    def __init__(
        self,
        upstream: str | None = None,
        *,
        config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        limits: Limits | None = None,
        on_exchange: ExchangeHook | None = None,
        access_log: bool = False,
        health_path: str | None = None,
        upstream_ssl: _ssl.SSLContext | None = None,
        upstream_ca: str | None = None,
        upstream_insecure: bool = False,
        upstream_cert: str | None = None,
        upstream_key: str | None = None,
        upstream_sni: str | None = None,
        on_request: Callable[[Request], Any] | None = None,
        on_response: Callable[[ResponseInfo, Any], Any] | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        for name, hook in (("on_exchange", on_exchange), ("on_request", on_request), ("on_response", on_response)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, got {type(hook).__name__}")
        gateway = _gateway_config(upstream, config, limits)
        self.config = gateway
        self.limits = limits if limits is not None else Limits.from_options(dict(gateway.limits))
        tls = TLSOptions(upstream_ssl, upstream_ca, upstream_insecure, upstream_cert, upstream_key, upstream_sni)
        self.routing = Routing(gateway, self.limits, tls)
        first = self.routing.links[0]
        self.address: UpstreamAddress = first.address  # the first server's (the only one with ``upstream``)
        self.on_exchange = on_exchange
        self.on_request = on_request
        self.on_response = on_response
        self.observes_responses = on_response is not None
        self.metrics = metrics
        self.access_log = access_log
        self.health_path = _health_target(health_path)
        self.recording = on_exchange is not None or access_log or metrics is not None
        self.connections: set[ProxyProtocol] = set()
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep: DeadlineSweep | None = None
        self._health_timer: asyncio.TimerHandle | None = None
        self.servers: list[asyncio.Server] = []  # what start_proxy listens with
        self.metrics_server: Any = None  # the /metrics endpoint start_proxy serves, if any

    @classmethod
    def from_options(cls, upstream: str | None = None, **options: Any) -> Proxy:
        """From one set of keyword arguments: this class's own (see ``__init__``), the rest :class:`Limits`'.

        With ``config``, the given limits override the file's ``[limits]`` (a route's own still win).
        """
        own = {name: options.pop(name) for name in _OWN_OPTIONS if name in options}
        config = own.get("config")
        if config is None:
            return cls(upstream, limits=Limits.from_options(options), **own)
        if options:
            own["config"] = _with_limits(_loaded(config), options)
        return cls(upstream, **own)  # the file's [limits] are the connections' limits

    def __call__(self) -> asyncio.Protocol:
        # A ProxyProtocol, which is an asyncio protocol by its methods (see its docstring).
        return cast(asyncio.Protocol, ProxyProtocol(self))

    def __repr__(self) -> str:
        routes = len(self.routing.routes)
        return (
            f"<Proxy routes={routes} upstream={self.address.host}:{self.address.port}"
            f" connections={len(self.connections)}{' draining' if self.draining else ''}>"
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self.routing.bind(loop, self.limits)
            self._sweep = DeadlineSweep(loop, min(self.limits.shortest_timeout, *self._route_timeouts()))
            if self.metrics is not None:
                self._report_health()
        return loop

    def _route_timeouts(self) -> list[float]:
        return [min(route.limits.upstream_timeout, route.limits.connect_timeout) for route in self.routing.routes]

    @property
    def pool(self) -> UpstreamPool:
        """The connection pool of the first server (the only one of a proxy made with ``upstream``)."""
        self.loop  # noqa: B018 - binds the pools to the running loop
        pool = self.routing.links[0].pool
        assert pool is not None
        return pool

    def register(self, connection: ProxyProtocol) -> None:
        self.connections.add(connection)
        assert self._sweep is not None
        self._sweep.add(connection.deadlines)
        if self.metrics is not None:
            self.metrics.connection_opened()

    def unregister(self, connection: ProxyProtocol) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            if self.metrics is not None:
                self.metrics.connection_closed()
        if self._sweep is not None:
            self._sweep.discard(connection.deadlines)

    def tunnel_changed(self, opened: bool) -> None:
        metrics = self.metrics
        if metrics is not None:
            if opened:
                metrics.tunnel_opened()
            else:
                metrics.tunnel_closed()

    def server_failed(self, link: ServerLink) -> None:
        """Count a failed attempt against ``link``'s server; say so when that ejects it."""
        group = link.group
        was_up = group.is_up(link.server)
        group.failed(link.server)
        if was_up and not group.is_up(link.server):
            logger.warning(
                "fastpipe: upstream %s server %s ejected for %g s after failing",
                group.name,
                link.url,
                group.fail_timeout,
            )
        if self.metrics is not None:
            self.metrics.upstream_health(group.name, link.url, group.is_up(link.server))

    def _report_health(self) -> None:
        """Refresh ``fastpipe_upstream_up`` each second: an ejection ends by time passing, not by an event."""
        metrics = self.metrics
        assert metrics is not None and self._loop is not None
        for link in self.routing.links:
            metrics.upstream_health(link.group.name, link.url, link.group.is_up(link.server))
        self._health_timer = self._loop.call_later(1.0, self._report_health)

    def observe_response(self, exchange: Exchange, pipe: Any, parts: list[bytes], peer: str) -> None:
        """A response head arrived: the route's usage capture and the on_response hook see its Pipe
        before the first byte goes out. A hook that raises is logged; the stream goes on."""
        route = exchange.route
        if exchange.chunked_body:
            pipe = PayloadTaps(pipe)  # observers see the payload, not the chunked framing it travels in
        if route.usage is not None:
            capture_usage(pipe, route.usage, partial(_usage_seen, exchange))
            pipe.on_disconnect = route.drain
        hook = self.on_response
        if hook is None:
            return
        link = exchange.link
        info = ResponseInfo(
            exchange.method.decode("latin-1"),
            exchange.target.decode("latin-1"),
            peer,
            route.name,
            link.group.name,
            link.url,
            exchange.upstream_status or 0,
            Headers._trusted(headers_of(parts)),
        )
        try:
            result = hook(info, pipe)
        except Exception as exc:
            logger.error("fastpipe: the on_response hook raised for %r; the stream goes on", exchange, exc_info=exc)
            return
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            logger.error("fastpipe: on_response must be a plain function (it runs before the first byte); ignored")

    def record(self, exchange: Exchange, reason: str, now: float, client: str, pipe: Any) -> None:
        """Make the exchange's record and hand it to the hook, the access log and the metrics."""
        route = exchange.route
        link = exchange.link
        record = ExchangeRecord(
            client=client,
            method=exchange.method.decode("latin-1"),
            target=exchange.target.decode("latin-1"),
            status=exchange.status,
            upstream_status=exchange.upstream_status,
            ttfb=exchange.first_byte - exchange.started if exchange.first_byte else None,
            duration=now - exchange.started,
            request_bytes=exchange.request_bytes,
            request_chunks=exchange.request_chunks,
            response_bytes=pipe.nbytes if pipe is not None else 0,
            response_chunks=pipe.chunks if pipe is not None else 0,
            end=reason,
            detail=exchange.detail,
            route=None if route is None else route.name,
            upstream=None if route is None else route.group.name,
            server=None if link is None else link.url,
            attempts=exchange.attempts,
            usage=exchange.usage,
            tag=exchange.tag,
        )
        hook = self.on_exchange
        if hook is not None:
            try:
                hook(record)
            except Exception as exc:
                self.loop.call_exception_handler(
                    {"message": "fastpipe: on_exchange hook failed", "exception": exc, "record": record}
                )
        if self.access_log:
            access_logger.info(format_access_line(record))
        if self.metrics is not None:
            self.metrics.exchange_ended(record)

    async def shutdown(self, grace: float | None = None) -> None:
        """Close idle connections now, let in-flight responses finish for ``grace`` seconds, cut the rest."""
        if grace is None:
            grace = self.limits.shutdown_grace
        loop = self.loop
        self.draining = True
        for connection in list(self.connections):
            connection.drain()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        for connection in list(self.connections):
            connection.cut()
        pools = self.routing.pools
        for pool in pools:
            pool.close()
        # Let the transports deliver connection_lost before the caller closes the loop.
        for _ in range(100):
            if not self.connections and not any(pool.open for pool in pools):
                break
            await asyncio.sleep(0.01)
        if self._sweep is not None:
            self._sweep.close()
        if self._health_timer is not None:
            self._health_timer.cancel()


def _usage_seen(exchange: Exchange, usage: Usage, reason: object) -> None:
    exchange.usage = usage


def _loaded(config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str]) -> GatewayConfig:
    if isinstance(config, GatewayConfig):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise TypeError(f"config must be a GatewayConfig, a dict or a file path, got {type(config).__name__}")


def _gateway_config(
    upstream: str | None,
    config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None,
    limits: Limits | None,
) -> GatewayConfig:
    if config is None:
        if upstream is None:
            raise TypeError("a Proxy needs an upstream URL or a config")
        parse_upstream(upstream)  # its own clear error for a bad URL
        return single_route_config(upstream, limits if limits is not None else Limits())
    if upstream is not None:
        raise ValueError("give an upstream URL (one route) or a config with routes, not both")
    return _loaded(config)


def _with_limits(config: GatewayConfig, given: Mapping[str, Any]) -> GatewayConfig:
    """``config`` with the limits given in code or on the command line over its ``[limits]`` table."""
    merged = {**config.limits, **given}
    Limits.from_options(dict(merged))  # a bad name or value is refused here, with Limits' own message
    routes = tuple(
        dataclasses.replace(route, limits=Limits.from_options({**merged, **route.limit_overrides}))
        for route in config.routes
    )
    return dataclasses.replace(config, limits=merged, routes=routes)


def _health_target(path: str | None) -> bytes | None:
    if path is None:
        return None
    if not isinstance(path, str) or not path.startswith("/") or "?" in path or not path.isascii() or " " in path:
        raise ValueError(f"health_path must be an absolute path like '/healthz', got {path!r}")
    return path.encode("ascii")


# The keyword arguments of Proxy besides ``limits``; start_proxy passes them on and the rest to Limits.
_OWN_OPTIONS = (
    "config",
    "on_request",
    "on_response",
    "metrics",
    "on_exchange",
    "access_log",
    "health_path",
    "upstream_ssl",
    "upstream_ca",
    "upstream_insecure",
    "upstream_cert",
    "upstream_key",
    "upstream_sni",
)

_DETACH_SECONDS = 2.0
logger = logging.getLogger("fastpipe")

_PROXIES: weakref.WeakKeyDictionary[Any, Proxy] = weakref.WeakKeyDictionary()


async def start_proxy(
    upstream: str | None = None,
    *,
    config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
    ssl: _ssl.SSLContext | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    metrics_listen: ListenAddress | None = None,
    **options: Any,
) -> asyncio.Server:
    """Serve a reverse proxy to ``upstream`` (``http://HOST:PORT``), or a gateway ``config`` (a
    :class:`~fastpipe.gateway.GatewayConfig`, its dict, or a TOML file's path), in the running loop.

    It listens on ``host:port`` (default ``127.0.0.1:8080``; with ``config``, its ``[server] listen``
    addresses unless ``host``/``port`` are given); ``port=0`` picks a free port
    (``server.sockets[0].getsockname()[1]``). With several listen addresses the first server is returned
    and :func:`shutdown_proxy` stops them all. ``options`` are those of :class:`Proxy` (below) and the
    keyword arguments of :class:`~fastpipe.http.limits.Limits` (timeouts, sizes, pool size, write marks),
    which override the file's ``[limits]``.
    ``on_exchange(record)`` is called with an :class:`ExchangeRecord` as each exchange ends;
    ``access_log=True`` writes one line per exchange to the ``fastpipe.access`` logger. Works in any
    running loop, in any thread; installs no signal handlers. Stop it with :func:`shutdown_proxy`.
    ``health_path="/healthz"`` makes the proxy answer GET/HEAD of that path itself (query ignored):
    200 ``ok`` while serving, 503 ``draining`` (and close) once a graceful shutdown began.

    Hooks: ``on_request(request)`` (sync or async) sees each :class:`~fastpipe.Request` before an
    upstream is chosen and may answer with a :class:`~fastpipe.Response`; ``on_response(exchange, pipe)``
    sees the response head and the body's Pipe before the first byte goes out (``pipe.tap(observer)``,
    ``pipe.on_disconnect = DisconnectPolicy.drain(...)``). ``metrics=GatewayMetrics()`` counts into your
    own object; a config's ``metrics = "HOST:PORT"`` (or ``metrics_listen``, over it) serves them at
    ``/metrics`` (in a worker of ``--workers N`` the supervisor serves the sum instead).

    TLS: ``ssl=context`` or ``certfile``/``keyfile`` serve clients over HTTPS. An ``https://`` upstream is
    verified against the system trust store, or ``upstream_ca`` (a PEM bundle); ``upstream_insecure``
    verifies nothing; ``upstream_cert``/``upstream_key`` present a client certificate; ``upstream_sni`` is
    the name sent and verified; ``upstream_ssl`` is a ready context instead of those.
    """
    if config is not None:
        options["config"] = _loaded(config)
        options.setdefault("access_log", options["config"].server.access_log)
    served_metrics = None
    gateway = options.get("config")
    if metrics_listen is None and gateway is not None:
        metrics_listen = gateway.server.metrics
    if metrics_listen is not None and options.get("metrics") is None:
        from ..gateway.metrics import GatewayMetrics, serve_metrics
        from .workers import worker_of_supervisor

        options["metrics"] = GatewayMetrics()
        if not worker_of_supervisor():  # a --workers supervisor serves the sum of its workers itself
            served_metrics = serve_metrics(metrics_listen.host, metrics_listen.port, options["metrics"])
    proxy = Proxy.from_options(upstream, **options)
    listener_tls = listener_context(ssl, certfile, keyfile)
    if gateway is not None and host is None and port is None:
        addresses = [(address.host, address.port) for address in gateway.server.listen]
    else:
        addresses = [(host or "127.0.0.1", 8080 if port is None else port)]
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        for listen_host, listen_port in addresses:
            servers.append(
                await loop.create_server(
                    proxy,
                    listen_host,
                    listen_port,
                    reuse_port=reuse_port or None,
                    ssl=listener_tls,
                    ssl_handshake_timeout=proxy.limits.header_timeout if listener_tls is not None else None,
                )
            )
    except BaseException:
        for server in servers:
            server.close()
        if served_metrics is not None:
            served_metrics.close()
        raise
    proxy.servers = servers
    proxy.metrics_server = served_metrics
    for server in servers:
        _PROXIES[server] = proxy
    return servers[0]


def proxy_of(server: asyncio.AbstractServer) -> Proxy:
    """The :class:`Proxy` behind a server made by :func:`start_proxy`."""
    try:
        return _PROXIES[server]
    except KeyError:
        raise ValueError(f"{server!r} was not made by start_proxy()") from None


async def shutdown_proxy(server: asyncio.AbstractServer, grace: float | None = None) -> None:
    """Graceful shutdown: stop accepting, close idle keep-alive connections, let in-flight responses
    finish for ``grace`` seconds (default: the ``shutdown_grace`` limit), cut the rest, close the pool."""
    proxy = proxy_of(server)
    for listening in proxy.servers or [server]:  # type: ignore[list-item]
        listening.close()
    await proxy.shutdown(grace)
    if proxy.metrics_server is not None:
        proxy.metrics_server.close()
    # Every connection was closed or reset above; since Python 3.12 wait_closed() also waits for their
    # transports to detach, which a loop that delivers connection_lost late must not turn into a hang.
    try:
        await asyncio.wait_for(server.wait_closed(), _DETACH_SECONDS)
    except asyncio.TimeoutError:
        logging.getLogger("fastpipe").warning(
            "fastpipe: connections still attached %.1f s after shutdown", _DETACH_SECONDS
        )
