"""TLS on both sides of the proxy, with the standard library's ``ssl`` (the event loop does the rest).

Upstream: an ``https://`` upstream is reached over TLS, verified against the system trust store unless
told otherwise, offering ALPN ``http/1.1`` only; SNI is the upstream's host name (Python sends none for an
IP address and verifies it against the certificate's IP entries instead), or the name given as
``upstream_sni``, which is then also the name verified (as nginx's ``proxy_ssl_name``).
Clients: ``certfile``/``keyfile`` (or a ready context) serve the proxy over HTTPS.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any

__all__ = ("UpstreamTLS", "forget_transport", "handshake_failure", "listener_context")

logger = logging.getLogger("fastpipe")


@dataclass(frozen=True)
class UpstreamTLS:
    """How to reach an ``https://`` upstream: the context to handshake with and the name to send and verify."""

    context: ssl.SSLContext
    server_hostname: str

    @classmethod
    def build(
        cls,
        host: str,
        *,
        ca: str | None = None,
        insecure: bool = False,
        cert: str | None = None,
        key: str | None = None,
        sni: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> UpstreamTLS:
        """From the ``upstream_*`` options; ``context`` (a ready ``ssl.SSLContext``) excludes the others."""
        if context is not None:
            if not isinstance(context, ssl.SSLContext):
                raise TypeError(f"upstream_ssl must be an ssl.SSLContext, got {type(context).__name__}")
            if ca is not None or insecure or cert is not None or key is not None:
                raise ValueError("upstream_ssl is a complete context: give it or the upstream_* options, not both")
            return cls(context, sni or host)
        if key is not None and cert is None:
            raise ValueError("upstream_key needs upstream_cert (the client certificate it belongs to)")
        if insecure and ca is not None:
            raise ValueError("upstream_insecure verifies nothing: upstream_ca would be ignored, give one of them")
        made = ssl.create_default_context(cafile=ca)
        if insecure:
            made.check_hostname = False
            made.verify_mode = ssl.CERT_NONE
            logger.warning("upstream TLS certificates are NOT verified (upstream_insecure): anyone can pose as it")
        if cert is not None:
            made.load_cert_chain(cert, key)
        made.set_alpn_protocols(["http/1.1"])
        return cls(made, sni or host)


def listener_context(
    context: ssl.SSLContext | None, certfile: str | None, keyfile: str | None
) -> ssl.SSLContext | None:
    """The context of the proxy's own listener: ``context`` as given, or one made from ``certfile`` and
    ``keyfile`` offering ALPN ``http/1.1`` only; None serves plaintext."""
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext, got {type(context).__name__}")
        if certfile is not None or keyfile is not None:
            raise ValueError("ssl is a complete context: give it or certfile/keyfile, not both")
        return context
    if certfile is None:
        if keyfile is not None:
            raise ValueError("keyfile needs certfile (the certificate it belongs to)")
        return None
    made = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    made.load_cert_chain(certfile, keyfile)
    made.set_alpn_protocols(["http/1.1"])
    return made


def forget_transport(transport: Any) -> None:
    """From ``connection_lost``: close the transport if it does not know it is closed. A TLS transport of
    Python 3.10's asyncio only learns it from ``close()``, and warns when collected otherwise."""
    if transport is not None and not transport.is_closing():
        transport.close()


def handshake_failure(exc: OSError) -> str:
    """Why a TLS handshake with the upstream failed, in the words of the verification where there are any."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"TLS handshake failed: {exc.strerror or exc}"
