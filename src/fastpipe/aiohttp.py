"""aiohttp: serve a Pipe as the body of a ``web.StreamResponse`` from an aiohttp handler.

``return await stream_response(request, pipe)`` prepares the response, writes the chunks with
``StreamResponse.write()`` (which waits for the transport to drain above its buffer limit: the upstream
is read no faster than the client takes it), and ends it when the pipe ends.

aiohttp does not tell a handler that its client left (unless the app runs with
``handler_cancellation=True``, which cancels the handler: that is handled too). So the transport is
looked at every ``disconnect_poll`` seconds while the body streams, and a write to a closed transport
counts as a disconnect; then the pipe's ``on_disconnect`` policy applies (default: cancel the pipe,
releasing its owner).
An upstream error after the response started is raised to aiohttp, which drops the connection: the client
sees a broken response, never a short one that ends cleanly.
"""

from __future__ import annotations

import asyncio
import math

from aiohttp import web
from aiohttp.typedefs import LooseHeaders

from ._backend import Pipe
from ._delivery import deliver, sink_policy
from .disconnect import DisconnectPolicy

__all__ = ("stream_response",)


async def stream_response(
    request: web.BaseRequest,
    pipe: Pipe | None,
    *,
    status: int = 200,
    headers: LooseHeaders | None = None,
    on_disconnect: DisconnectPolicy | None = None,
    disconnect_poll: float = 0.1,
) -> web.StreamResponse:
    """Stream ``pipe`` (None: no body) to the client of ``request``; returns the finished response.

    ``on_disconnect`` is deprecated: set the policy on the pipe (``pipe.on_disconnect``).
    """
    on_disconnect = sink_policy("stream_response", on_disconnect)
    if isinstance(disconnect_poll, bool) or not 0 < disconnect_poll < math.inf:
        raise ValueError(f"disconnect_poll must be a finite number of seconds > 0, got {disconnect_poll!r}")
    response = web.StreamResponse(status=status, headers=headers)
    delivering = False
    try:
        await response.prepare(request)
        if pipe is None or request.method == "HEAD":
            complete = True
        else:
            delivering = True  # from here on deliver() finishes the pipe, also in a drain that outlives us
            complete = await deliver(pipe, response.write, _disconnected(request, disconnect_poll), on_disconnect)
    finally:
        if pipe is not None and not delivering:
            await pipe.aclose()  # HEAD, or prepare() failed: nobody will read it
    if complete:
        await response.write_eof()
    return response


async def _disconnected(request: web.BaseRequest, poll: float) -> None:
    """Return once the client's transport is gone or closing."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(poll)
