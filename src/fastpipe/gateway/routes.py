"""Which route a request takes: host and path prefix matching, prepared once so each request is cheap.

The rules, exactly:

* a route matches when its host matches and its ``path_prefix`` is a plain string prefix of the path
  (``/v1`` matches ``/v1/models`` and ``/v1x``; ``/v1/`` does not match ``/v1``);
* host names compare case-insensitively, without the port the client put in Host (``[::1]:8080`` is
  ``::1``) and without a trailing dot; ``*.example.com`` matches names ending in ``.example.com`` (one
  label or more) but not ``example.com``; a route without a host matches every host;
* among the matching routes the longest ``path_prefix`` wins, whatever the hosts; on equal length the
  route listed first wins.

For each host the candidate routes are computed at build time, already in that order; a Host value seen
before costs one dict lookup, a new one a few more (one per dot in its name when wildcards exist); then a
``startswith`` per candidate until one matches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .config import RouteConfig

__all__ = ("Route", "RouteTable", "host_key", "not_found_body")


class Route:
    """A configured route, with its match prepared as bytes. ``config`` has everything else."""

    __slots__ = ("config", "host", "name", "order", "prefix", "strip_prefix")

    def __init__(self, config: RouteConfig, order: int) -> None:
        self.config = config
        self.name = config.name
        self.order = order  # its place in the file: the tie-break between equal prefixes
        self.prefix = config.path_prefix.encode("ascii")
        self.strip_prefix = config.strip_prefix
        self.host: bytes | None = None if config.host is None else _name_key(config.host)

    def __repr__(self) -> str:
        return f"<Route {self.name!r}>"

    def upstream_target(self, target: bytes) -> bytes:
        """The request target to send upstream: with ``strip_prefix``, the prefix removed and a leading
        slash kept (``/api/users?x=1`` → ``/users?x=1``, ``/api/`` → ``/``); else ``target`` itself."""
        if not self.strip_prefix or not target.startswith(self.prefix):
            return target  # (a hook may send a request to a route whose prefix it does not have)
        rest = target[len(self.prefix) :]
        return rest if rest.startswith(b"/") else b"/" + rest


def host_key(host: bytes) -> bytes:
    """A Host header value (or a configured name) as routes compare it: lower case, no port, no trailing
    dot, an IPv6 literal without its brackets."""
    if host.startswith(b"["):
        end = host.find(b"]")
        host = host[1:end] if end > 0 else host
    else:
        colon = host.find(b":")
        if colon >= 0:
            host = host[:colon]
    host = host.lower()
    return host[:-1] if host.endswith(b".") else host


def _name_key(name: str) -> bytes:
    """A configured host name as :func:`host_key` makes a request's (a configured name has no port)."""
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = name.lower().removesuffix(".")
    return name.encode("ascii") if name.isascii() else name.encode("idna")


def not_found_body(host_header: bytes, target: bytes) -> bytes:
    """The body of the 404 for a request no route matches: the Host as the client sent it (port
    included) and the path without its query. Serve it as text/plain with nosniff: it echoes the client."""
    return b"no route for " + host_header + b" " + target.partition(b"?")[0]


_Candidates = tuple[tuple[bytes, Route], ...]
_SEEN_HOSTS = 1024


class RouteTable:
    """All routes, ready to match; build it once per configuration."""

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        self.routes: tuple[Route, ...] = tuple(Route(config, order) for order, config in enumerate(routes))
        any_host = [route for route in self.routes if route.host is None]
        wildcards: dict[bytes, list[Route]] = {}  # ".example.com" -> its routes
        exact: dict[bytes, list[Route]] = {}
        for route in self.routes:
            if route.host is None:
                continue
            if route.host.startswith(b"*."):
                wildcards.setdefault(route.host[1:], []).append(route)
            else:
                exact.setdefault(route.host, []).append(route)

        def covering(host: bytes) -> list[Route]:
            # The wildcard routes that take ``host``: at least one label before their suffix.
            return [
                route
                for suffix, routes in wildcards.items()
                if host.endswith(suffix) and len(host) > len(suffix)
                for route in routes
            ]

        self._any_host = _ordered(any_host)
        # Keyed by the longest wildcard suffix a host ends with: every shorter one it ends with is a suffix
        # of that one, so the suffix alone decides the candidates.
        self._by_wildcard = {suffix: _ordered([*any_host, *covering(b"x" + suffix)]) for suffix in wildcards}
        self._by_host = {host: _ordered([*routes, *any_host, *covering(host)]) for host, routes in exact.items()}
        self._has_wildcards = bool(wildcards)
        # Host header values as sent -> their candidates: most traffic names a few hosts, so most requests
        # skip the normalisation and lookups above.
        self._seen: dict[bytes, _Candidates] = {}

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, host_header: bytes, path: bytes) -> Route | None:
        """The route for a request, or None (then answer 404 with :func:`not_found_body`). ``path`` may
        be the whole origin-form target: a prefix never holds ``?``, so the query cannot change the result."""
        candidates = self._seen.get(host_header)
        if candidates is None:
            candidates = self._candidates(host_key(host_header))
            if len(self._seen) >= _SEEN_HOSTS:  # bounded: clients choose what they send as Host
                self._seen.clear()
            self._seen[host_header] = candidates
        for prefix, route in candidates:
            if path.startswith(prefix):
                return route
        return None

    def _candidates(self, host: bytes) -> _Candidates:
        """The routes that may take requests for ``host``, in the order they win."""
        candidates = self._by_host.get(host)
        if candidates is not None:
            return candidates
        if self._has_wildcards:
            dot = host.find(b".", 1)  # at least one label before the suffix
            while dot > 0:
                found = self._by_wildcard.get(host[dot:])
                if found is not None:
                    return found
                dot = host.find(b".", dot + 1)
        return self._any_host


def _ordered(routes: Sequence[Route]) -> _Candidates:
    """Longest prefix first, then the order of the file."""
    ranked = sorted(set(routes), key=lambda route: (-len(route.prefix), route.order))
    return tuple((route.prefix, route) for route in ranked)
