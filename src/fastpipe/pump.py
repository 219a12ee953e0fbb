"""pump: write a Pipe to a plain asyncio transport, at the pace the transport's flow control allows.

``await pump(pipe, transport)`` writes every chunk with ``transport.write(chunk)`` (the chunk object
itself) and returns True when the body ended, False when the client went away first (then the pipe's
``on_disconnect`` policy was applied). An upstream error propagates: the caller should ``abort()`` the transport
so the client never mistakes a short body for a whole one. pump() writes bytes, not HTTP framing.

Flow control lives in the protocol (asyncio calls ``protocol.pause_writing()`` above the transport's high
water), so the transport's protocol must derive from ``FlowProtocol``, which tells pump() about pauses,
resumes and the connection's loss. An ``asyncio.StreamWriter`` works too (its ``drain()`` is the flow
control; asyncio streams keep a half-closed connection open, so there a client's FIN is noticed at the
next write and only a reset or a write error is noticed at once). Two faces:

* a **pushed** pipe nothing consumes yet (``Pipe.pushed``) is connected to the transport: no coroutine
  per chunk; the transport's pause/resume pause and resume the pipe's producer (the upstream reader);
* any other pipe is pulled by a task of pump()'s own, waiting for the transport to drain when paused.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, Union

from ._backend import Pipe
from ._chunks import chunk_nbytes
from ._delivery import deliver, sink_policy
from .disconnect import DisconnectPolicy
from .end_reason import EndReason

__all__ = ("FlowProtocol", "pump")


class _Listener(Protocol):
    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def connection_lost(self) -> None: ...


class FlowProtocol(asyncio.Protocol):
    """An ``asyncio.Protocol`` that remembers its transport's write flow control, for ``pump()``.

    A subclass that overrides ``pause_writing``, ``resume_writing`` or ``connection_lost`` must call the
    base method. No ``__init__`` to call: the state starts from class defaults.
    """

    _flow_paused = False
    _flow_lost = False
    _flow_listener: _Listener | None = None

    @property
    def writing_paused(self) -> bool:
        """Whether the transport asked us to stop writing."""
        return self._flow_paused

    def pause_writing(self) -> None:
        self._flow_paused = True
        if self._flow_listener is not None:
            self._flow_listener.pause_writing()

    def resume_writing(self) -> None:
        self._flow_paused = False
        if self._flow_listener is not None:
            self._flow_listener.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._flow_lost = True
        self._flow_paused = False
        if self._flow_listener is not None:
            self._flow_listener.connection_lost()


async def pump(
    pipe: Pipe,
    transport: Union[asyncio.WriteTransport, asyncio.StreamWriter],
    *,
    on_disconnect: DisconnectPolicy | None = None,
) -> bool:
    """Write ``pipe`` to ``transport``; True when the whole body was written, False when the client left.

    ``on_disconnect`` is deprecated: set the policy on the pipe (``pipe.on_disconnect``).
    """
    on_disconnect = sink_policy("pump", on_disconnect) or pipe.on_disconnect
    if isinstance(transport, asyncio.StreamWriter):
        return await deliver(pipe, _StreamWrite(transport), transport.wait_closed(), on_disconnect)
    protocol = transport.get_protocol()
    if not isinstance(protocol, FlowProtocol):
        raise TypeError(
            f"pump() needs a transport whose protocol derives from fastpipe.pump.FlowProtocol, "
            f"got {type(protocol).__name__} (or pass an asyncio.StreamWriter)"
        )
    if protocol._flow_listener is not None:
        raise RuntimeError("another pump() is already writing to this transport")
    sink = _PushSink(pipe, transport, protocol, on_disconnect)
    protocol._flow_listener = sink
    try:
        pipe.connect(sink)
    except RuntimeError:
        # Not a pushed pipe (or one that is already pulled): pull it instead.
        protocol._flow_listener = None
        return await _pump_pulled(pipe, transport, protocol, on_disconnect)
    return await sink.wait()


# -- the push face -------------------------------------------------------------------------------------------


class _PushSink:
    """Connected to a pushed pipe: writes each chunk, maps the transport's flow control onto the producer."""

    def __init__(
        self, pipe: Pipe, transport: asyncio.WriteTransport, protocol: FlowProtocol, policy: DisconnectPolicy
    ) -> None:
        self._pipe = pipe
        self._transport = transport
        self._protocol = protocol
        self._policy = policy
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gone = False
        self._drained = 0
        self._deadline: asyncio.TimerHandle | None = None

    async def wait(self) -> bool:
        pipe = self._pipe
        protocol = self._protocol
        if protocol._flow_lost or self._transport.is_closing():
            self.connection_lost()
        elif protocol._flow_paused:
            pipe.pause_producing()
        try:
            await asyncio.wait((self._done,))  # never cancels _done itself
        except asyncio.CancelledError:
            # The caller's task was cancelled: as if the client left; a drain goes on without a task.
            self.connection_lost()
            raise
        if pipe.state == "errored" and not self._gone:
            assert pipe.exception is not None
            raise pipe.exception
        return pipe.state == "closed" and not self._gone

    # Sink: called by the pipe.

    def write(self, chunk: Any) -> None:
        if not self._gone:
            self._transport.write(chunk)
            return
        self._drained += chunk_nbytes(chunk)
        if self._drained > self._policy.max_bytes:
            self._pipe.cancel(EndReason.DRAIN_CUT_BYTES)

    def end(self, pipe: Pipe) -> None:
        if self._protocol._flow_listener is self:
            self._protocol._flow_listener = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if not self._done.done():
            self._done.set_result(None)

    # Listener: called by the protocol.

    def pause_writing(self) -> None:
        if not self._gone:
            self._pipe.pause_producing()

    def resume_writing(self) -> None:
        if not self._gone:
            self._pipe.resume_producing()

    def connection_lost(self) -> None:
        if self._gone:
            return
        self._gone = True
        pipe = self._pipe
        if not self._policy.drains:
            pipe.cancel(EndReason.CLIENT_GONE)
            return
        pipe.start_draining()
        pipe.resume_producing()  # the client's flow control no longer applies
        if pipe.state in ("idle", "open"):
            self._deadline = asyncio.get_running_loop().call_later(
                self._policy.timeout, pipe.cancel, EndReason.DRAIN_CUT_TIMEOUT
            )


# -- the pull face -------------------------------------------------------------------------------------------


async def _pump_pulled(
    pipe: Pipe, transport: asyncio.WriteTransport, protocol: FlowProtocol, policy: DisconnectPolicy
) -> bool:
    flow = _PullFlow(transport, protocol)
    protocol._flow_listener = flow
    try:
        return await deliver(pipe, flow.write, flow.lost, policy)
    finally:
        if protocol._flow_listener is flow:
            protocol._flow_listener = None


class _PullFlow:
    """Write, and wait while the transport is paused; ``lost`` completes when the connection is gone."""

    def __init__(self, transport: asyncio.WriteTransport, protocol: FlowProtocol) -> None:
        loop = asyncio.get_running_loop()
        self._transport = transport
        self._protocol = protocol
        self._drained: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = loop.create_future()
        if protocol._flow_lost or transport.is_closing():
            self.lost.set_result(None)

    async def write(self, chunk: Any) -> None:
        if self.lost.done():
            raise ConnectionResetError("the client's connection is gone")
        self._transport.write(chunk)
        if self._protocol._flow_paused:
            drained = self._drained = asyncio.get_running_loop().create_future()
            try:
                await drained
            finally:
                self._drained = None

    def pause_writing(self) -> None:
        pass  # write() looks at the protocol after each chunk

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def connection_lost(self) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("the client's connection is gone"))


class _StreamWrite:
    __slots__ = ("_writer",)

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def __call__(self, chunk: Any) -> None:
        self._writer.write(chunk)
        await self._writer.drain()
