"""fastpipe's HTTP/1.1 reverse proxy on uvloop and httptools, serving response bodies through Pipes."""

from .limits import Limits
from .proxy import Proxy, proxy_of, shutdown_proxy, start_proxy
from .record import ExchangeRecord
from .server import ProxyProtocol

__all__ = ("ExchangeRecord", "Limits", "Proxy", "ProxyProtocol", "proxy_of", "shutdown_proxy", "start_proxy")
