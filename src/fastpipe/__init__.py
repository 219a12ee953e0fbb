"""fastpipe: stream an upstream body through a Python server without letting its owner go early.

The proxy's names (``start_proxy`` and the rest, and ``fastpipe.http``) load on first use, so a user of the
Pipe and the adapters alone never imports httptools.
"""

from typing import TYPE_CHECKING, Any

from ._backend import EXTENSION, Pipe, wrap
from ._errors import PipeError
from .disconnect import DisconnectPolicy
from .end_reason import EndReason
from .pump import FlowProtocol, pump
from .sources import from_aiohttp, from_httpx, from_stream_reader
from .sse import Event, EventTap, EventTooLarge
from .tee import BranchError, BranchOverflow, SourceCancelled, tee
from .usage import Usage, capture_usage

if TYPE_CHECKING:
    from . import http as http
    from .http import (
        ExchangeRecord,
        Headers,
        Limits,
        ProxyProtocol,
        Request,
        Response,
        ResponseInfo,
        shutdown_proxy,
        start_proxy,
    )

__version__ = "0.1.0"

_PROXY_NAMES = frozenset(
    {
        "ExchangeRecord",
        "Headers",
        "Limits",
        "ProxyProtocol",
        "Request",
        "Response",
        "ResponseInfo",
        "shutdown_proxy",
        "start_proxy",
    }
)


def __getattr__(name: str) -> Any:
    if name == "http" or name in _PROXY_NAMES:
        import importlib

        proxy_package = importlib.import_module(".http", __name__)
        return proxy_package if name == "http" else getattr(proxy_package, name)
    raise AttributeError(f"module 'fastpipe' has no attribute {name!r}")


__all__ = (
    "EXTENSION",
    "BranchError",
    "BranchOverflow",
    "DisconnectPolicy",
    "EndReason",
    "Event",
    "EventTap",
    "EventTooLarge",
    "ExchangeRecord",
    "FlowProtocol",
    "Headers",
    "Limits",
    "Pipe",
    "PipeError",
    "ProxyProtocol",
    "Request",
    "Response",
    "ResponseInfo",
    "SourceCancelled",
    "Usage",
    "__version__",
    "capture_usage",
    "from_aiohttp",
    "from_httpx",
    "from_stream_reader",
    "pump",
    "shutdown_proxy",
    "start_proxy",
    "tee",
    "wrap",
)
