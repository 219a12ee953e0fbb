"""The gateway's configuration file: TOML (or a dict) checked whole at load into frozen records.

Everything that can be wrong is found here, before the proxy starts: unknown keys at every level, types,
negative numbers, unknown limit names, unknown upstream names, bad URLs, missing environment variables.
Each problem names its key and the line it was written on; :class:`ConfigError` carries all of them.
``${VAR}`` in any string value is expanded from the environment; such values become
:class:`~fastpipe.gateway.env.Secret` and are never printed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..http.address import UpstreamAddress, parse_upstream
from ..http.limits import Limits
from .env import Secret, expand
from .toml_lines import KeyLines, Path, key_lines

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = (
    "BALANCE_METHODS",
    "ROUTE_LIMITS",
    "USAGE_FORMATS",
    "ConfigError",
    "GatewayConfig",
    "ListenAddress",
    "Problem",
    "RouteConfig",
    "ServerConfig",
    "UpstreamGroupConfig",
    "config_from_dict",
    "load_config",
    "load_config_text",
)

BALANCE_METHODS: Final = ("round-robin", "least-connections")
USAGE_FORMATS: Final = ("openai", "anthropic")

# The limits a route may set for itself: those that act on one exchange after its route is chosen. The
# others act before a route is known (header_timeout, max_header_size, max_header_count,
# underscores_in_headers), on a whole client connection (idle_timeout, the write marks), on a pool shared
# by routes (pool_size) or on the whole proxy (shutdown_grace, zero_copy): they belong in [limits].
ROUTE_LIMITS: Final = frozenset(
    {
        "connect_timeout",
        "upstream_timeout",
        "tunnel_idle_timeout",
        "max_body_size",
        "rewrite_host",
        "abort_on_client_eof",
    }
)

# Request headers a route may not set: they frame the message or belong to one hop, and a configured
# value would make the upstream read another message than the proxy forwards.
_FORBIDDEN_HEADERS: Final = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection"}
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HOST_LABELS = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\Z")
_HEADER_VALUE_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where the proxy listens and how it runs."""

    listen: tuple[ListenAddress, ...] = (ListenAddress("127.0.0.1", 8080),)
    workers: int = 1
    access_log: bool = False
    metrics: ListenAddress | None = None  # Prometheus text format at /metrics on this address


@dataclass(frozen=True)
class UpstreamGroupConfig:
    """``[upstreams.NAME]``: servers that answer the same requests, and how to spread and retry them."""

    name: str
    servers: tuple[str, ...]  # http:// or https:// URLs, checked with parse_upstream
    balance: str = "round-robin"
    max_fails: int = 1  # failures within fail_timeout that eject a server (0: never eject)
    fail_timeout: float = 10.0  # the window for those failures, and how long the ejection lasts
    retries: int = 1  # how many other servers a failed attempt may go to


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[routes]]`` entry, resolved: its name, its match, where it goes, and its complete limits."""

    name: str
    upstream: str
    host: str | None = None  # lower case, no trailing dot; "*.example.com" for a wildcard; None: any host
    path_prefix: str = "/"
    strip_prefix: bool = False
    set_request_headers: tuple[tuple[str, str], ...] = ()  # (name, value) in the order written
    limits: Limits = field(default_factory=Limits)  # Limits() <- [limits] <- the route's own
    limit_overrides: Mapping[str, Any] = field(default_factory=dict)  # the route's own, as written
    usage: str | None = None  # "openai" or "anthropic": capture token usage from the response
    usage_drain_bytes: int = 1 << 20  # how much a usage route reads on after the client left ...
    usage_drain_seconds: float = 30.0  # ... and for how long


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig
    limits: dict[str, Any]  # the [limits] table: defaults for every route, by fastpipe.Limits name
    upstreams: dict[str, UpstreamGroupConfig]
    routes: tuple[RouteConfig, ...]
    file: str | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration, where it was written."""

    file: str | None
    line: int | None
    message: str

    def __str__(self) -> str:
        where = [part for part in (self.file, None if self.line is None else str(self.line)) if part]
        return ":".join([*where, ""]) + " " + self.message if where else self.message


class ConfigError(ValueError):
    """A configuration that cannot be served. ``file``, ``line`` and ``message`` are its first problem's;
    ``problems`` lists every one found, in line order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems = tuple(problems)
        first = self.problems[0]
        self.file = first.file
        self.line = first.line
        self.message = first.message
        super().__init__("\n".join(str(problem) for problem in self.problems))


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and check a TOML configuration file; raises :class:`ConfigError`."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as stream:
            raw = stream.read()
        text = raw.decode("utf-8-sig")  # an editor's byte order mark is not a syntax error
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(name, None, f"cannot read the file: {exc}")]) from None
    return load_config_text(text, file=name, environ=environ)


def load_config_text(text: str, *, file: str | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse and check TOML text; ``file`` is the name used in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError([Problem(file, int(found.group(1)) if found else None, message)]) from None
    return _Loader(file, key_lines(text), os.environ if environ is None else environ).load(data)


def config_from_dict(data: Mapping[str, Any], *, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Check a configuration given as nested dicts and lists (as ``tomllib`` returns); errors have no line."""
    return _Loader(None, None, os.environ if environ is None else environ).load(data)


_MISSING: Final[Any] = object()


def _dotted(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _Loader:
    """Checks one configuration and collects every problem before giving up."""

    def __init__(self, file: str | None, lines: KeyLines | None, environ: Mapping[str, str]) -> None:
        self.file = file
        self.lines = lines
        self.environ = environ
        self.problems: list[Problem] = []

    def problem(self, path: Path, message: str) -> None:
        line = self.lines.line_of(path) if self.lines is not None else None
        self.problems.append(Problem(self.file, line, f"{_dotted(path)}: {message}" if path else message))

    def load(self, data: Mapping[str, Any]) -> GatewayConfig:
        self.table((), data, ("server", "limits", "upstreams", "routes"))
        server = self.server(data.get("server", {}))
        limits = self.global_limits(data.get("limits", {}))
        written = data.get("upstreams", _MISSING)
        upstreams = self.upstreams(written)
        # Routes may name any group written, also one with problems of its own (those are reported already).
        names = set(written) if isinstance(written, Mapping) else set()
        routes = self.routes(data.get("routes", _MISSING), names, limits)
        if self.problems:
            self.problems.sort(key=lambda problem: problem.line or 0)
            raise ConfigError(self.problems)
        return GatewayConfig(server, limits or {}, upstreams, routes, self.file)

    # -- shapes and scalars; each returns None after recording a problem

    def table(self, path: Path, value: object, known: Sequence[str]) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.problem(path, f"must be a table, got {_kind(value)}")
            return None
        for key in value:
            if key not in known:
                self.problem((*path, key), f"unknown key {key!r} (known: {', '.join(known)})")
        return value

    def string(self, path: Path, value: object) -> str | None:
        if not isinstance(value, str):
            self.problem(path, f"must be a string, got {_kind(value)}")
            return None
        try:
            return expand(value, self.environ)
        except ValueError as exc:
            self.problem(path, str(exc))
            return None

    def integer(self, path: Path, value: object, minimum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.problem(path, f"must be an integer >= {minimum}, got {_shown(value)}")
            return None
        return value

    def number(self, path: Path, value: object, *, positive: bool) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
            self.problem(path, f"must be a number of seconds >= 0, got {_shown(value)}")
            return None
        if positive and value == 0:
            self.problem(path, "must be more than 0 seconds")
            return None
        return float(value)

    def boolean(self, path: Path, value: object) -> bool | None:
        if not isinstance(value, bool):
            self.problem(path, f"must be true or false, got {_shown(value)}")
            return None
        return value

    def listen_address(self, path: Path, value: object) -> ListenAddress | None:
        text = self.string(path, value)
        if text is None:
            return None
        host, colon, port = text.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        host = host[1:-1] if bracketed else host
        if not colon or not host or not port.isdigit() or int(port) > 65535 or (":" in host and not bracketed):
            self.problem(path, f"must be HOST:PORT like 127.0.0.1:8080 or [::1]:8080, got {text!r}")
            return None
        return ListenAddress(host, int(port))

    def listen_addresses(self, path: Path, value: object) -> tuple[ListenAddress, ...] | None:
        """One HOST:PORT or a list of them."""
        if not isinstance(value, list):
            address = self.listen_address(path, value)
            return None if address is None else (address,)
        if not value:
            self.problem(path, "needs at least one HOST:PORT")
            return None
        addresses = [self.listen_address((*path, index), item) for index, item in enumerate(value)]
        found = tuple(address for address in addresses if address is not None)
        return found if len(found) == len(addresses) else None

    # -- sections

    def server(self, value: object) -> ServerConfig:
        path: Path = ("server",)
        section = self.table(path, value, ("listen", "workers", "access_log", "metrics"))
        if section is None:
            return ServerConfig()
        made = ServerConfig()
        if "listen" in section:
            listen = self.listen_addresses((*path, "listen"), section["listen"])
            made = made if listen is None else dataclasses.replace(made, listen=listen)
        if "workers" in section:
            workers = self.integer((*path, "workers"), section["workers"], 1)
            made = made if workers is None else dataclasses.replace(made, workers=workers)
        if "access_log" in section:
            access_log = self.boolean((*path, "access_log"), section["access_log"])
            made = made if access_log is None else dataclasses.replace(made, access_log=access_log)
        if "metrics" in section:
            metrics = self.listen_address((*path, "metrics"), section["metrics"])
            made = made if metrics is None else dataclasses.replace(made, metrics=metrics)
        return made

    def global_limits(self, value: object) -> dict[str, Any] | None:
        """The [limits] table, checked as fastpipe.Limits checks it; None if anything is wrong with it."""
        known = [item.name for item in dataclasses.fields(Limits)]
        section = self.table(("limits",), value, known)
        if section is None:
            return None
        options = {name: option for name, option in section.items() if name in known}
        if len(options) != len(section) or not self.checked_limits({}, options, ("limits",)):
            return None
        return options

    def checked_limits(self, base: Mapping[str, Any], own: Mapping[str, Any], path: Path) -> Limits | None:
        """``Limits`` from ``base`` updated with ``own``; a rejected value is reported at its key in ``own``."""
        try:
            return Limits.from_options({**base, **own})
        except (TypeError, ValueError) as exc:
            named = re.match(r"\w+", str(exc))
            name = named.group(0) if named else ""
            self.problem((*path, name) if name in own else path, str(exc))
            return None

    def upstreams(self, value: object) -> dict[str, UpstreamGroupConfig]:
        if value is _MISSING:
            self.problem((), "no [upstreams.NAME] table: routes need an upstream group to send requests to")
            return {}
        if not isinstance(value, Mapping):
            self.problem(("upstreams",), f"must be a table of [upstreams.NAME] tables, got {_kind(value)}")
            return {}
        groups: dict[str, UpstreamGroupConfig] = {}
        for name, body in value.items():
            group = self.upstream_group(name, body)
            if group is not None:
                groups[name] = group
        return groups

    def upstream_group(self, name: str, value: object) -> UpstreamGroupConfig | None:
        path: Path = ("upstreams", name)
        keys = ("servers", "balance", "max_fails", "fail_timeout", "retries")
        section = self.table(path, value, keys)
        if section is None:
            return None
        count = len(self.problems)
        servers = self.servers((*path, "servers"), section.get("servers", _MISSING))
        balance = self.string((*path, "balance"), section.get("balance", "round-robin"))
        if balance is not None and balance not in BALANCE_METHODS:
            self.problem((*path, "balance"), f"must be one of {', '.join(BALANCE_METHODS)}, got {balance!r}")
        max_fails = self.integer((*path, "max_fails"), section.get("max_fails", 1), 0)
        fail_timeout = self.number((*path, "fail_timeout"), section.get("fail_timeout", 10.0), positive=True)
        retries = self.integer((*path, "retries"), section.get("retries", 1), 0)
        if len(self.problems) > count:
            return None
        assert balance is not None and max_fails is not None and fail_timeout is not None and retries is not None
        return UpstreamGroupConfig(name, servers, balance, max_fails, fail_timeout, retries)

    def servers(self, path: Path, value: object) -> tuple[str, ...]:
        if value is _MISSING:
            self.problem(path[:-1], "servers is required: a list of http:// or https:// URLs")
            return ()
        if not isinstance(value, list) or not value:
            self.problem(path, f"must be a non-empty list of URLs, got {_shown(value)}")
            return ()
        urls: list[str] = []
        seen: dict[tuple[str, int, bool], int] = {}
        for index, item in enumerate(value):
            url = self.string((*path, index), item)
            if url is None:
                continue
            try:
                address = upstream_address(url)
            except (TypeError, ValueError) as exc:
                self.problem((*path, index), str(exc))
                continue
            key = (address.host, address.port, address.tls)
            if key in seen:
                self.problem((*path, index), f"{url!r} is listed twice (also servers[{seen[key]}])")
                continue
            seen[key] = index
            urls.append(url)
        return tuple(urls)

    def routes(self, value: object, upstreams: set[str], limits: Mapping[str, Any] | None) -> tuple[RouteConfig, ...]:
        if value is _MISSING:
            self.problem((), "no [[routes]]: at least one route is needed (a request matching none gets 404)")
            return ()
        if not isinstance(value, list) or not value:
            self.problem(("routes",), f"must be a non-empty array of [[routes]] tables, got {_shown(value)}")
            return ()
        made: list[RouteConfig] = []
        for index, item in enumerate(value):
            route = self.route(index, item, upstreams, limits)
            if route is not None:
                self.check_reachable(index, route, made)
                made.append(route)
        return tuple(made)

    def route(
        self, index: int, value: object, upstreams: set[str], limits: Mapping[str, Any] | None
    ) -> RouteConfig | None:
        path: Path = ("routes", index)
        keys = (
            "name",
            "host",
            "path_prefix",
            "upstream",
            "strip_prefix",
            "set_request_headers",
            "limits",
            "usage",
            "usage_drain_bytes",
            "usage_drain_seconds",
        )
        section = self.table(path, value, keys)
        if section is None:
            return None
        count = len(self.problems)
        upstream: str | None = None
        if "upstream" not in section:
            self.problem(path, "upstream is required: the name of an [upstreams.NAME] table")
        else:
            upstream = self.string((*path, "upstream"), section["upstream"])
            if upstream is not None and upstream not in upstreams:
                known = f"defined: {', '.join(sorted(upstreams))}" if upstreams else "no [upstreams.NAME] is defined"
                self.problem((*path, "upstream"), f"unknown upstream {upstream!r} ({known})")
        host = self.host((*path, "host"), section.get("host", _MISSING))
        prefix = self.path_prefix((*path, "path_prefix"), section.get("path_prefix", "/"))
        strip_prefix = self.boolean((*path, "strip_prefix"), section.get("strip_prefix", False))
        headers = self.request_headers((*path, "set_request_headers"), section.get("set_request_headers", {}))
        route_limits, overrides = self.route_limits((*path, "limits"), section.get("limits", {}), limits)
        usage = self.usage(path, section)
        name = self.string((*path, "name"), section["name"]) if "name" in section else None
        if name == "":
            self.problem((*path, "name"), "must not be empty")
        if len(self.problems) > count:
            return None
        assert upstream is not None and prefix is not None and strip_prefix is not None and headers is not None
        return RouteConfig(
            name=name or f"{host or '*'} {prefix}",
            upstream=upstream,
            host=host,
            path_prefix=prefix,
            strip_prefix=strip_prefix,
            set_request_headers=headers,
            limits=route_limits or Limits(),
            limit_overrides=overrides,
            usage=usage[0],
            usage_drain_bytes=usage[1],
            usage_drain_seconds=usage[2],
        )

    def host(self, path: Path, value: object) -> str | None:
        if value is _MISSING:
            return None
        text = self.string(path, value)
        if text is None:
            return None
        wildcard = text.startswith("*.")
        name = text[2:] if wildcard else text
        name = name[1:-1] if name.startswith("[") and name.endswith("]") else name  # an IPv6 literal
        name = name.lower().removesuffix(".")
        try:
            name = name.encode("idna").decode("ascii") if not name.isascii() else name
        except UnicodeError:
            name = ""
        ipv6 = ":" in name and not wildcard and re.fullmatch(r"[0-9a-f:.]+", name) is not None
        if not (ipv6 or _HOST_LABELS.match(name)):
            self.problem(
                path, f"must be a host name like api.example.com or *.example.com, without a port; got {text!r}"
            )
            return None
        resolved = f"*.{name}" if wildcard else name
        return Secret(resolved, text.template) if isinstance(text, Secret) else resolved

    def path_prefix(self, path: Path, value: object) -> str | None:
        text = self.string(path, value)
        if text is None:
            return None
        if not text.startswith("/") or not text.isascii() or any(c in text for c in "?# \t\r\n"):
            self.problem(path, f"must be an ASCII path starting with / (no query, no spaces), got {text!r}")
            return None
        return text

    def request_headers(self, path: Path, value: object) -> tuple[tuple[str, str], ...] | None:
        if not isinstance(value, Mapping):
            self.problem(path, f"must be a table of header names and values, got {_kind(value)}")
            return None
        made: list[tuple[str, str]] = []
        seen: set[str] = set()
        for name, raw in value.items():
            where = (*path, name)
            if not _TOKEN.match(name):
                self.problem(where, f"{name!r} is not a valid header name")
                continue
            if name.lower() in _FORBIDDEN_HEADERS:
                self.problem(where, f"{name} frames the message or belongs to one hop: a route may not set it")
                continue
            if name.lower() == "host":
                self.problem(where, "Host is the client's, or the upstream's with limits rewrite_host = true")
                continue
            if name.lower() in seen:
                self.problem(where, f"{name} is set twice (header names ignore case)")
                continue
            seen.add(name.lower())
            text = self.string(where, raw)
            if text is None:
                continue
            if _HEADER_VALUE_CONTROLS.search(text) or not all(ord(c) < 256 for c in text):
                # Never show the value: it may hold a secret, and a line break in it would split the header.
                self.problem(where, "the value has a control character or one outside Latin-1")
                continue
            made.append((name, text))
        return tuple(made)

    def route_limits(
        self, path: Path, value: object, limits: Mapping[str, Any] | None
    ) -> tuple[Limits | None, Mapping[str, Any]]:
        known = [item.name for item in dataclasses.fields(Limits)]
        section = self.table(path, value, known)
        if section is None:
            return None, {}
        fine = True
        for name in section:
            if name in known and name not in ROUTE_LIMITS:
                self.problem(
                    (*path, name),
                    f"{name} cannot differ per route (it acts before a route is chosen, or on a whole connection, "
                    f"pool or proxy); set it in [limits]. Per route: {', '.join(sorted(ROUTE_LIMITS))}",
                )
                fine = False
        if not fine or len(section) != len([name for name in section if name in known]) or limits is None:
            return None, dict(section)
        return self.checked_limits(limits, section, path), dict(section)

    def usage(self, path: Path, section: Mapping[str, Any]) -> tuple[str | None, int, float]:
        usage: str | None = None
        if "usage" in section:
            usage = self.string((*path, "usage"), section["usage"])
            if usage is not None and usage not in USAGE_FORMATS:
                self.problem((*path, "usage"), f"must be one of {', '.join(USAGE_FORMATS)}, got {usage!r}")
        drain_bytes = self.integer((*path, "usage_drain_bytes"), section.get("usage_drain_bytes", 1 << 20), 0)
        drain_seconds = self.number(
            (*path, "usage_drain_seconds"), section.get("usage_drain_seconds", 30.0), positive=True
        )
        if "usage" not in section:
            for key in ("usage_drain_bytes", "usage_drain_seconds"):
                if key in section:
                    self.problem((*path, key), 'has no effect without usage = "openai" or "anthropic"')
        return usage, drain_bytes or 0, 30.0 if drain_seconds is None else drain_seconds

    def check_reachable(self, index: int, route: RouteConfig, earlier: Sequence[RouteConfig]) -> None:
        """A route that an earlier one always wins over is a mistake; so is a name used twice (metric labels)."""
        for position, other in enumerate(earlier):
            if other.name == route.name:
                self.problem(("routes", index, "name"), f"route name {route.name!r} is used twice (routes[{position}])")
                return
            if other.path_prefix == route.path_prefix and _covers(other.host, route.host):
                self.problem(
                    ("routes", index),
                    f"can never match: routes[{position}] ({other.name}) has the same path_prefix "
                    f"and takes every host this one does",
                )
                return


def _covers(earlier: str | None, later: str | None) -> bool:
    """Whether every host that ``later`` matches is matched by ``earlier``."""
    if earlier is None or earlier == later:
        return True
    if later is None or not earlier.startswith("*."):
        return False
    return later.removeprefix("*.").endswith(earlier[1:])


def upstream_address(url: str) -> UpstreamAddress:
    """``parse_upstream(url)``: the address of an http:// or https:// server URL."""
    return parse_upstream(url)


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return _shown(value)


def _shown(value: object) -> str:
    # A Secret's repr is its template; anything else is small and written by the user.
    return repr(value)
