"""``fastpipe check-config FILE``: check a gateway configuration and show the routes it resolves to.

Problems go to stderr as ``FILE:LINE: message`` (exit 1); a valid file prints one line per route, in the
order written (exit 0). A value that came from ``${VAR}`` is shown as written, never expanded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import ConfigError, GatewayConfig, RouteConfig, load_config
from .env import Secret

__all__ = ("check_config_main", "describe_route")


def check_config_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fastpipe check-config",
        description="Check a gateway configuration file; print its problems, or the routes it resolves to.",
    )
    parser.add_argument("file", metavar="FILE", help="the TOML configuration file")
    args = parser.parse_args(list(argv))
    try:
        config = load_config(args.file)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    for route in config.routes:
        print(describe_route(route, config))
    return 0


def describe_route(route: RouteConfig, config: GatewayConfig) -> str:
    """One line: the route's name, match, destination and what it changes."""
    host = "any host" if route.host is None else f"host {_shown(route.host)}"
    group = config.upstreams[route.upstream]
    servers = ", ".join(_shown(url) for url in group.servers)
    parts = [
        f"{_shown(route.name)}: {host}, path_prefix {route.path_prefix}"
        f" -> {route.upstream} ({group.balance}: {servers})"
    ]
    if route.strip_prefix:
        parts.append("strip_prefix")
    for name, value in route.set_request_headers:
        parts.append(f"set {name}: {_shown(value)}")
    if route.limit_overrides:
        parts.append("limits " + " ".join(f"{name}={value!r}" for name, value in route.limit_overrides.items()))
    if route.usage is not None:
        parts.append(f"usage {route.usage} (drain {route.usage_drain_bytes} bytes, {route.usage_drain_seconds:g} s)")
    return ", ".join(parts)


def _shown(value: str) -> str:
    """A value as it may be printed: one that came from ``${VAR}`` as it was written."""
    return value.template if isinstance(value, Secret) else value
