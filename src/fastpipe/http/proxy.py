"""One reverse proxy: what its client connections share, and ``start_proxy`` to serve it.

A :class:`Proxy` holds the limits, the upstream address and connection pool, the deadline sweep, the
live client connections and the exchange hook. Calling it makes a :class:`ProxyProtocol`, so it is the
protocol factory handed to ``loop.create_server``. It binds to the running loop on first use and installs
no signal handlers: the CLI does that.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import weakref
from typing import Any

from .address import UpstreamAddress, parse_upstream
from .deadlines import DeadlineSweep
from .exchange import Exchange
from .limits import Limits
from .record import ExchangeHook, ExchangeRecord, access_logger, format_access_line
from .server import ProxyProtocol
from .tls import UpstreamTLS, listener_context
from .upstream import UpstreamPool

__all__ = ("Proxy", "proxy_of", "shutdown_proxy", "start_proxy")


class Proxy:
    """The shared state of one reverse proxy; call it to make a client protocol."""

    def __init__(
        self,
        upstream: str,
        *,
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
    ) -> None:
        self.address: UpstreamAddress = parse_upstream(upstream)
        tls_options = (upstream_ssl, upstream_ca, upstream_cert, upstream_key, upstream_sni)
        if self.address.tls:
            self.upstream_tls: UpstreamTLS | None = UpstreamTLS.build(
                self.address.host,
                ca=upstream_ca,
                insecure=upstream_insecure,
                cert=upstream_cert,
                key=upstream_key,
                sni=upstream_sni,
                context=upstream_ssl,
            )
        elif upstream_insecure or any(option is not None for option in tls_options):
            raise ValueError(f"upstream TLS options need an https:// upstream, got {upstream!r}")
        else:
            self.upstream_tls = None
        self.limits = limits if limits is not None else Limits()
        if on_exchange is not None and not callable(on_exchange):
            raise TypeError(f"on_exchange must be callable, got {type(on_exchange).__name__}")
        self.on_exchange = on_exchange
        self.access_log = access_log
        self.health_path = _health_target(health_path)
        self.recording = on_exchange is not None or access_log
        self.host_line = b"Host: " + self.address.host_header + b"\r\n"
        self.connections: set[ProxyProtocol] = set()
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: UpstreamPool | None = None
        self._sweep: DeadlineSweep | None = None

    @classmethod
    def from_options(cls, upstream: str, **options: Any) -> Proxy:
        """From one set of keyword arguments: this class's own (see ``__init__``), the rest :class:`Limits`'."""
        own = {name: options.pop(name) for name in _OWN_OPTIONS if name in options}
        return cls(upstream, limits=Limits.from_options(options), **own)

    def __call__(self) -> ProxyProtocol:
        return ProxyProtocol(self)

    def __repr__(self) -> str:
        return (
            f"<Proxy upstream={self.address.host}:{self.address.port} connections={len(self.connections)}"
            f"{' draining' if self.draining else ''}>"
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self._pool = UpstreamPool(self.address.host, self.address.port, self.limits, loop, self.upstream_tls)
            self._sweep = DeadlineSweep(loop, self.limits.shortest_timeout)
        return loop

    @property
    def pool(self) -> UpstreamPool:
        if self._pool is None:
            self.loop  # noqa: B018 - binds the pool to the running loop
        assert self._pool is not None
        return self._pool

    def register(self, connection: ProxyProtocol) -> None:
        self.connections.add(connection)
        assert self._sweep is not None
        self._sweep.add(connection)

    def unregister(self, connection: ProxyProtocol) -> None:
        self.connections.discard(connection)
        if self._sweep is not None:
            self._sweep.discard(connection)

    def record(self, exchange: Exchange, reason: str, now: float, client: str, pipe: Any) -> None:
        """Make the exchange's record and hand it to the hook and the access log."""
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
        self.pool.close()
        # Let the transports deliver connection_lost before the caller closes the loop.
        for _ in range(100):
            if not self.connections and not self.pool.open:
                break
            await asyncio.sleep(0.01)
        if self._sweep is not None:
            self._sweep.close()


def _health_target(path: str | None) -> bytes | None:
    if path is None:
        return None
    if not isinstance(path, str) or not path.startswith("/") or "?" in path or not path.isascii() or " " in path:
        raise ValueError(f"health_path must be an absolute path like '/healthz', got {path!r}")
    return path.encode("ascii")


# The keyword arguments of Proxy besides ``limits``; start_proxy passes them on and the rest to Limits.
_OWN_OPTIONS = (
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
    upstream: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    reuse_port: bool = False,
    ssl: _ssl.SSLContext | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    **options: Any,
) -> asyncio.Server:
    """Serve a reverse proxy to ``upstream`` (``http://HOST:PORT``) on ``host:port`` in the running loop.

    ``port=0`` picks a free port (``server.sockets[0].getsockname()[1]``). ``options`` are those of
    :class:`Proxy` (below) and the keyword arguments of :class:`~fastpipe.http.limits.Limits` (timeouts,
    sizes, pool size, write marks).
    ``on_exchange(record)`` is called with an :class:`ExchangeRecord` as each exchange ends;
    ``access_log=True`` writes one line per exchange to the ``fastpipe.access`` logger. Works in any
    running loop, in any thread; installs no signal handlers. Stop it with :func:`shutdown_proxy`.
    ``health_path="/healthz"`` makes the proxy answer GET/HEAD of that path itself (query ignored):
    200 ``ok`` while serving, 503 ``draining`` (and close) once a graceful shutdown began.

    TLS: ``ssl=context`` or ``certfile``/``keyfile`` serve clients over HTTPS. An ``https://`` upstream is
    verified against the system trust store, or ``upstream_ca`` (a PEM bundle); ``upstream_insecure``
    verifies nothing; ``upstream_cert``/``upstream_key`` present a client certificate; ``upstream_sni`` is
    the name sent and verified; ``upstream_ssl`` is a ready context instead of those.
    """
    proxy = Proxy.from_options(upstream, **options)
    listener_tls = listener_context(ssl, certfile, keyfile)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        proxy,
        host,
        port,
        reuse_port=reuse_port or None,
        ssl=listener_tls,
        ssl_handshake_timeout=proxy.limits.header_timeout if listener_tls is not None else None,
    )
    _PROXIES[server] = proxy
    return server


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
    server.close()
    await proxy.shutdown(grace)
    # Every connection was closed or reset above; since Python 3.12 wait_closed() also waits for their
    # transports to detach, which a loop that delivers connection_lost late must not turn into a hang.
    try:
        await asyncio.wait_for(server.wait_closed(), _DETACH_SECONDS)
    except asyncio.TimeoutError:
        logging.getLogger("fastpipe").warning(
            "fastpipe: connections still attached %.1f s after shutdown", _DETACH_SECONDS
        )
