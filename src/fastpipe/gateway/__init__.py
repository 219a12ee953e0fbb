"""The gateway's groundwork: its configuration file, route matching and upstream balancing.

Pure and separately testable: no I/O but reading the file, no asyncio. From ``fastpipe.http`` it uses only
``Limits`` and ``parse_upstream``; the proxy builds on it, never the other way round.
"""

from .balance import Server, UpstreamGroup
from .config import (
    ConfigError,
    GatewayConfig,
    ListenAddress,
    Problem,
    RouteConfig,
    ServerConfig,
    UpstreamGroupConfig,
    config_from_dict,
    load_config,
    load_config_text,
)
from .env import Secret
from .routes import Route, RouteTable, not_found_body

__all__ = (
    "ConfigError",
    "GatewayConfig",
    "ListenAddress",
    "Problem",
    "Route",
    "RouteConfig",
    "RouteTable",
    "Secret",
    "Server",
    "ServerConfig",
    "UpstreamGroup",
    "UpstreamGroupConfig",
    "config_from_dict",
    "load_config",
    "load_config_text",
    "not_found_body",
)
