"""fastpipe: stream an upstream body through a Python server without letting its owner go early."""

from ._backend import EXTENSION, Pipe, wrap
from ._errors import PipeError
from .http import ExchangeRecord, Limits, ProxyProtocol, shutdown_proxy, start_proxy
from .pump import FlowProtocol, pump
from .sources import from_aiohttp, from_httpx, from_stream_reader
from .sse import Event, EventTap, EventTooLarge
from .tee import BranchError, BranchOverflow, DisconnectPolicy, SourceCancelled, tee

__version__ = "0.1.0"

__all__ = (
    "EXTENSION",
    "BranchError",
    "BranchOverflow",
    "DisconnectPolicy",
    "Event",
    "EventTap",
    "EventTooLarge",
    "ExchangeRecord",
    "FlowProtocol",
    "Limits",
    "Pipe",
    "PipeError",
    "ProxyProtocol",
    "SourceCancelled",
    "__version__",
    "from_aiohttp",
    "from_httpx",
    "from_stream_reader",
    "pump",
    "shutdown_proxy",
    "start_proxy",
    "tee",
    "wrap",
)
