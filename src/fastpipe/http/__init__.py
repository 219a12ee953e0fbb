"""fastpipe's HTTP/1.1 reverse proxy on uvloop and httptools, serving response bodies through Pipes.

``await start_proxy("http://127.0.0.1:8000", port=8080, **limits)`` serves it in the running loop;
``Proxy(upstream, limits=Limits(...))`` is the protocol factory for your own ``create_server``;
:class:`Limits` documents every limit and timeout. Documented behaviour beyond plain relaying:

* Every response body is a pushed :class:`fastpipe.Pipe` whose owner is the upstream exchange; a complete
  keep-alive message returns the upstream connection to the pool, anything else closes it.
* Hop-by-hop headers (Connection and the headers it names, Keep-Alive, Proxy-Connection, TE, Trailer,
  Transfer-Encoding, Upgrade) stay on their hop; X-Forwarded-For gets the peer appended, X-Forwarded-Proto
  and X-Forwarded-Host are set; Host is forwarded as sent (``rewrite_host=True`` sends the upstream's).
* A Connection header may not name Content-Length, Transfer-Encoding, Host or a forwarding header (RFC 9110
  §7.6.1): such a request gets 400, such a response 502, so Connection never removes framing.
* Request headers with ``_`` in their name are dropped (CGI/WSGI would read ``X_Forwarded_Proto`` as the
  proxy's own header); ``underscores_in_headers=True`` keeps those that fold onto no header the proxy sets.
* A request on a pooled connection that closed under it is sent again only if its method is idempotent.
* 1xx heads are relayed without framing headers, within ``max_header_size`` in all; a status outside 100-599
  is a 502. The next pipelined request starts only once the client has taken the previous response.
* A request whose Connection lists ``upgrade`` (WebSocket, or any protocol but h2c) goes upstream with its
  Connection and Upgrade; a 101 makes the connection a tunnel of raw bytes both ways (flow control each
  way, half-closes passed on over plaintext, ``tunnel_idle_timeout``), any other answer keeps it HTTP.
  A stray Upgrade, and ``Upgrade: h2c`` with its HTTP2-Settings, are dropped as hop-by-hop headers.
* An ``https://`` upstream is reached over TLS (verified, SNI, ALPN http/1.1); ``ssl=`` or
  ``certfile``/``keyfile`` serve clients over HTTPS (X-Forwarded-Proto is then https).
* CONNECT is refused with 501, as are transfer codings other than chunked.
* An HTTP/1.0 client's request goes upstream as HTTP/1.0 (with keep-alive asked), so the upstream never
  answers it chunked; an upstream that does anyway gets a 502.
* A body the upstream ends by closing is re-framed as chunked for HTTP/1.1 clients, so a reset upstream
  shows as a truncated message, never as a clean end.
* Errors the proxy answers itself (400, 408, 413, 431, 501, 502, 503, 504) close the connection after a
  short lingering close, so the answer is not lost to a reset while the client is still sending.

How the modules fit together, an exchange's life and the hot path of one body chunk: docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hooks import Headers, Request, Response, ResponseInfo
    from .limits import Limits
    from .proxy import Proxy, proxy_of, shutdown_proxy, start_proxy
    from .record import ExchangeRecord
    from .server import ProxyProtocol

__all__ = (
    "ExchangeRecord",
    "Headers",
    "Limits",
    "Proxy",
    "ProxyProtocol",
    "Request",
    "Response",
    "ResponseInfo",
    "proxy_of",
    "shutdown_proxy",
    "start_proxy",
)

# Loaded on first use: the gateway package imports this package's leaf modules (address, limits), and
# the proxy imports the gateway, so importing the package must not pull the proxy in.
_HOMES = {
    "ExchangeRecord": "record",
    "Headers": "hooks",
    "Limits": "limits",
    "Proxy": "proxy",
    "ProxyProtocol": "server",
    "Request": "hooks",
    "Response": "hooks",
    "ResponseInfo": "hooks",
    "proxy_of": "proxy",
    "shutdown_proxy": "proxy",
    "start_proxy": "proxy",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
