"""Where each request goes: the proxy's routes, bound to upstream groups and their connection pools.

Built once from a :class:`~fastpipe.gateway.GatewayConfig` (``--upstream URL`` is one route to a group of
one server). The gateway package decides *which*: route matching (:class:`~fastpipe.gateway.RouteTable`)
and balancing and ejection (:class:`~fastpipe.gateway.UpstreamGroup`); this module adds what the proxy
needs to *go* there: one :class:`UpstreamPool` per server (shared by every route using the group), each
route's head rewriting prepared as bytes, its timeouts table and its usage capture.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..disconnect import DisconnectPolicy
from ..gateway.balance import Server, UpstreamGroup
from ..gateway.config import GatewayConfig, RouteConfig, UpstreamGroupConfig
from ..gateway.routes import Route, RouteTable, not_found_body
from .address import UpstreamAddress
from .limits import Limits
from .stages import stage_timeouts
from .tls import UpstreamTLS
from .upstream import UpstreamPool

if TYPE_CHECKING:
    import ssl

    from .exchange import Exchange

__all__ = ("IDEMPOTENT", "ProxyRoute", "Routing", "ServerLink", "TLSOptions", "retry_link", "single_route_config")

DEFAULT_NAME = "default"


class TLSOptions:
    """The ``upstream_*`` TLS options, applied to every ``https://`` server."""

    __slots__ = ("ca", "cert", "context", "insecure", "key", "sni")

    def __init__(
        self,
        context: ssl.SSLContext | None = None,
        ca: str | None = None,
        insecure: bool = False,
        cert: str | None = None,
        key: str | None = None,
        sni: str | None = None,
    ) -> None:
        self.context = context
        self.ca = ca
        self.insecure = insecure
        self.cert = cert
        self.key = key
        self.sni = sni

    @property
    def given(self) -> bool:
        return self.insecure or any(
            option is not None for option in (self.context, self.ca, self.cert, self.key, self.sni)
        )

    def for_server(self, address: UpstreamAddress) -> UpstreamTLS:
        return UpstreamTLS.build(
            address.host,
            ca=self.ca,
            insecure=self.insecure,
            cert=self.cert,
            key=self.key,
            sni=self.sni,
            context=self.context,
        )


class ServerLink:
    """One server of a group as the proxy reaches it: its health record (``server``) and its pool."""

    __slots__ = ("address", "group", "host_line", "pool", "server", "tls", "url")

    def __init__(self, server: Server, group: UpstreamGroup, tls: UpstreamTLS | None) -> None:
        self.server = server
        self.group = group
        self.url = server.url
        self.address = server.address
        self.tls = tls
        self.host_line = b"Host: " + server.address.host_header + b"\r\n"
        self.pool: UpstreamPool | None = None  # made when the proxy binds to its loop

    def __repr__(self) -> str:
        return f"<ServerLink {self.url}>"


class ProxyRoute:
    """A route ready to serve: its match (``route``), group, limits and what it changes in a request."""

    __slots__ = (
        "config",
        "drain",
        "group",
        "host_line",
        "limits",
        "links",
        "max_body",
        "name",
        "only_link",
        "rewrite_host",
        "route",
        "set_lines",
        "set_names",
        "strip_prefix",
        "timeouts",
        "usage",
    )

    def __init__(
        self, route: Route, group: UpstreamGroup, links: dict[Server, ServerLink], connection_limits: Limits
    ) -> None:
        config: RouteConfig = route.config
        self.route = route
        self.config = config
        self.name = config.name
        self.group = group
        self.links = links  # by server: every route of a group shares the group's links
        self.only_link = next(iter(links.values())) if len(links) == 1 else None
        self.limits = config.limits
        self.max_body = config.limits.max_body_size
        self.rewrite_host = config.limits.rewrite_host
        self.timeouts = stage_timeouts(connection_limits, config.limits)
        # rewrite_host (and an HTTP/1.0 request without Host) send the first server's host: the servers of
        # a group serve the same site
        self.host_line = links[group.servers[0]].host_line
        self.strip_prefix = config.strip_prefix
        self.set_names = [name.lower().encode("latin-1") for name, _ in config.set_request_headers] or None
        self.set_lines = b"".join(
            f"{name}: {str.__str__(value)}\r\n".encode("latin-1") for name, value in config.set_request_headers
        )
        self.usage = config.usage
        self.drain = (
            DisconnectPolicy.drain(max_bytes=config.usage_drain_bytes, timeout=config.usage_drain_seconds)
            if config.usage is not None
            else None
        )

    def upstream_target(self, target: bytes) -> bytes:
        """The target to send upstream: with ``strip_prefix``, the prefix removed (a leading slash kept)."""
        return self.route.upstream_target(target) if self.strip_prefix else target

    def link(self, server: Server) -> ServerLink:
        return self.links[server]

    def __repr__(self) -> str:
        return f"<ProxyRoute {self.name!r} -> {self.group.name}>"


class Routing:
    """Every route of one proxy, its groups and their servers' pools."""

    def __init__(self, config: GatewayConfig, connection_limits: Limits, tls: TLSOptions) -> None:
        self.config = config
        self._connection_limits = connection_limits
        self._redirected: dict[tuple[str, str], ProxyRoute] = {}
        self.groups: dict[str, UpstreamGroup] = {}
        self.links: list[ServerLink] = []
        links_of: dict[str, dict[Server, ServerLink]] = {}
        for name, group_config in config.upstreams.items():
            group = UpstreamGroup.from_config(group_config)
            self.groups[name] = group
            links: dict[Server, ServerLink] = {}
            for server in group.servers:
                if server.address.tls:
                    link_tls: UpstreamTLS | None = tls.for_server(server.address)
                else:
                    link_tls = None
                links[server] = ServerLink(server, group, link_tls)
            links_of[name] = links
            self.links.extend(links.values())
        if tls.given and not any(link.tls is not None for link in self.links):
            raise ValueError("upstream TLS options need an https:// upstream")
        self.table = RouteTable(config.routes)
        self.routes = tuple(
            ProxyRoute(route, self.groups[route.config.upstream], links_of[route.config.upstream], connection_limits)
            for route in self.table.routes
        )
        self._by_route = {route.route: route for route in self.routes}
        self.by_name = {route.name: route for route in self.routes}
        self.links_of = links_of
        # whether a route sets request headers (and so drops the client's of those names from the parts)
        self.sets_request_headers = any(route.set_names is not None for route in self.routes)
        # one catch-all route: every request takes it without matching
        self.only: ProxyRoute | None = None
        if len(self.routes) == 1 and self.routes[0].route.host is None and self.routes[0].route.prefix == b"/":
            self.only = self.routes[0]

    def match(self, host: bytes, target: bytes) -> ProxyRoute | None:
        only = self.only
        if only is not None:
            return only
        found = self.table.match(host, target)
        return None if found is None else self._by_route[found]

    not_found_body = staticmethod(not_found_body)  # the 404's body for a request no route takes

    def rerouted(self, route: ProxyRoute | None, route_name: str | None, group_name: str | None) -> ProxyRoute | None:
        """The route an ``on_request`` hook chose: ``route_name`` (if another), to ``group_name`` if the hook
        set one other than the matched route's; None if the request still has no route (a 404);
        ValueError for a name that is not configured."""
        if route_name is None:
            if route is not None:
                raise ValueError("on_request set request.route to None: there is no route to take")
            if group_name is not None:
                raise ValueError("on_request chose an upstream but no route: set request.route too")
            return None
        matched_group = None if route is None else route.group.name
        if route is None or route_name != route.name:
            chosen = self.by_name.get(route_name)
            if chosen is None:
                raise ValueError(f"on_request chose route {route_name!r}, which is not configured")
            route = chosen
        if group_name is not None and group_name != matched_group and group_name != route.group.name:
            if group_name not in self.groups:
                raise ValueError(f"on_request chose upstream {group_name!r}, which is not configured")
            route = self.with_group(route, group_name)
        return route

    def with_group(self, route: ProxyRoute, group_name: str) -> ProxyRoute:
        """``route`` sending to another group (an ``on_request`` hook chose it); KeyError if unknown."""
        group = self.groups[group_name]
        if group is route.group:
            return route
        key = (route.name, group_name)
        made = self._redirected.get(key)
        if made is None:
            made = self._redirected[key] = ProxyRoute(
                route.route, group, self.links_of[group_name], self._connection_limits
            )
        return made

    def bind(self, loop: asyncio.AbstractEventLoop, limits: Limits) -> None:
        """Make each server's connection pool in ``loop``."""
        for link in self.links:
            address = link.address
            link.pool = UpstreamPool(address.host, address.port, limits, loop, link.tls)

    @property
    def pools(self) -> list[UpstreamPool]:
        return [link.pool for link in self.links if link.pool is not None]


# Methods a request may be sent again with after a connection failed under it (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


def retry_link(exchange: Exchange, written: bool) -> ServerLink | None:
    """Where a request goes after its attempt's server failed before a response head, or None.

    Not past the group's ``retries``. A request none of which was ``written`` may go anywhere; one that
    was (perhaps in part) only if it may run twice (an idempotent method), the proxy still has its whole
    body, and the client has seen nothing of a response (RFC 9110 §9.2.2). Never to a server tried before.
    """
    link: ServerLink = exchange.link
    group = link.group
    if exchange.attempts > group.retries:
        return None
    if written:
        if exchange.method not in IDEMPOTENT or exchange.interim_sent or not exchange.request_done:
            return None
        if exchange.content_length > 0 or exchange.chunked:
            if exchange.replay is None:
                return None
            exchange.body_pending = list(exchange.replay)
    tried = exchange.tried
    if tried is None:
        tried = exchange.tried = []
    tried.append(link.server)
    server = group.choose(tried)
    route: ProxyRoute = exchange.route
    return None if server is None else route.links[server]


def single_route_config(upstream: str, limits: Limits) -> GatewayConfig:
    """``--upstream URL``: one route for every request, to a group of that one server."""
    from ..gateway.config import ServerConfig

    group = UpstreamGroupConfig(name=DEFAULT_NAME, servers=(upstream,))
    route = RouteConfig(name=DEFAULT_NAME, upstream=DEFAULT_NAME, limits=limits)
    return GatewayConfig(server=ServerConfig(), limits={}, upstreams={DEFAULT_NAME: group}, routes=(route,))
