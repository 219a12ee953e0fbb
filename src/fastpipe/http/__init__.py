"""fastpipe's HTTP/1.1 reverse proxy on uvloop and httptools, serving response bodies through Pipes.

``await start_proxy("http://127.0.0.1:8000", port=8080, **limits)`` serves it in the running loop;
``ProxyProtocol.factory(upstream, **limits)`` gives the protocol factory for your own ``create_server``;
:class:`Limits` documents every limit and timeout. Documented behaviour beyond plain relaying:

* Every response body is a pushed :class:`fastpipe.Pipe` whose owner is the upstream exchange; a complete
  keep-alive message returns the upstream connection to the pool, anything else closes it.
* Hop-by-hop headers (Connection and the headers it names, Keep-Alive, Proxy-Connection, TE, Trailer,
  Transfer-Encoding, Upgrade) stay on their hop; X-Forwarded-For gets the peer appended, X-Forwarded-Proto
  and X-Forwarded-Host are set; Host is forwarded as sent (``rewrite_host=True`` sends the upstream's).
* Upgrade requests and CONNECT are refused with 501, as are transfer codings other than chunked.
* An HTTP/1.0 client's request goes upstream as HTTP/1.0 (with keep-alive asked), so the upstream never
  answers it chunked; an upstream that does anyway gets a 502.
* A body the upstream ends by closing is re-framed as chunked for HTTP/1.1 clients, so a reset upstream
  shows as a truncated message, never as a clean end.
* Errors the proxy answers itself (400, 408, 413, 431, 501, 502, 503, 504) close the connection after a
  short lingering close, so the answer is not lost to a reset while the client is still sending.
"""

from .limits import Limits
from .proxy import Proxy, proxy_of, shutdown_proxy, start_proxy
from .record import ExchangeRecord
from .server import ProxyProtocol

__all__ = ("ExchangeRecord", "Limits", "Proxy", "ProxyProtocol", "proxy_of", "shutdown_proxy", "start_proxy")
