"""fastpipe: stream an upstream body through a Python server without letting its owner go early."""

from ._backend import EXTENSION, Pipe, wrap
from ._errors import PipeError
from .disconnect import DisconnectPolicy
from .end_reason import EndReason
from .http import ExchangeRecord, Limits, ProxyProtocol, shutdown_proxy, start_proxy
from .pump import FlowProtocol, pump
from .sources import from_aiohttp, from_httpx, from_stream_reader
from .sse import Event, EventTap, EventTooLarge
from .tee import BranchError, BranchOverflow, SourceCancelled, tee
from .usage import Usage, capture_usage

__version__ = "0.1.0"

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
    "Limits",
    "Pipe",
    "PipeError",
    "ProxyProtocol",
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
