"""Send a pulled Pipe to one client and apply the disconnect policy when the client leaves first.

Shared by the server adapters (ASGI, aiohttp, ``pump``). The body is sent by a task of its own, so that
the client leaving can interrupt a pull that waits on a slow upstream: cancelling that task cancels the
pull, and the Pipe releases its owner at once (``aclose()`` from another task would only release it when
the pending read completes, which for an idle stream may be never).
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any, Awaitable, Callable

from ._backend import Pipe
from ._chunks import chunk_nbytes
from .disconnect import DisconnectPolicy, check_policy
from .end_reason import EndReason

__all__ = ("deliver", "sink_policy")

Write = Callable[[Any], Awaitable[object]]

# Drains that outlive the handler that started them (the server cancelled it): kept until they end,
# each bounded by its policy's timeout.
_DETACHED: set[asyncio.Task[bool]] = set()


def sink_policy(sink: str, on_disconnect: DisconnectPolicy | None) -> DisconnectPolicy | None:
    """The deprecated per-sink ``on_disconnect``: checked, and a DeprecationWarning when it is given."""
    if on_disconnect is None:
        return None
    check_policy(on_disconnect)
    warnings.warn(
        f"{sink}(on_disconnect=...) is deprecated: the policy belongs to the pipe "
        "(Pipe(..., on_disconnect=...) or pipe.on_disconnect = ...), and every sink honours it",
        DeprecationWarning,
        stacklevel=3,
    )
    return on_disconnect


async def deliver(
    pipe: Pipe, write: Write, client_gone: Awaitable[object], policy: DisconnectPolicy | None = None
) -> bool:
    """Write every chunk of ``pipe`` with ``await write(chunk)`` until the body ends or the client leaves.

    The client has left when ``client_gone`` completes (in any way) or ``write`` raises ``OSError``.
    Returns True when the whole body was written, False when the client left first (the policy was
    applied: the pipe is cancelled at once, or drained within its bounds, then cancelled). An upstream
    error while the client is there propagates (the response must not end cleanly); the pipe is
    finished on every path, and its ``end_reason`` says how. ``policy`` defaults to ``pipe.on_disconnect``.
    """
    delivery = _Delivery(pipe, write, pipe.on_disconnect if policy is None else policy)
    sender = delivery.start()
    watcher: asyncio.Future[object] = asyncio.ensure_future(client_gone)
    try:
        await asyncio.wait((sender, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not sender.done():
            delivery.client_left()
            await asyncio.wait((sender,))
    except asyncio.CancelledError:
        # The server cancelled this handler (its client is gone): apply the policy; a drain goes on alone.
        delivery.client_left()
        if not sender.done():
            _DETACHED.add(sender)
            sender.add_done_callback(_DETACHED.discard)
        raise
    finally:
        if not watcher.done():
            watcher.cancel()
        elif not watcher.cancelled():
            watcher.exception()  # how the client left does not matter; do not let it be reported
    if sender.cancelled():
        return False
    return sender.result()


class _Delivery:
    __slots__ = ("_deadline", "_drained", "_gone", "_pipe", "_policy", "_pulling", "_reason", "_sender", "_write")

    def __init__(self, pipe: Pipe, write: Write, policy: DisconnectPolicy) -> None:
        self._pipe = pipe
        self._write = write
        self._policy = policy
        self._sender: asyncio.Task[bool] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._gone = False
        self._drained = 0
        self._pulling = False  # the sender awaits a pull (not a write)
        self._reason = EndReason.CANCELLED  # why the sender stops early, for the pipe's end_reason

    def start(self) -> asyncio.Task[bool]:
        sender = self._sender = asyncio.get_running_loop().create_task(self._send())
        sender.add_done_callback(self._sent)
        return sender

    async def _send(self) -> bool:
        pipe = self._pipe
        pull = pipe.__anext__
        try:
            while True:
                self._pulling = True
                try:
                    chunk = await pull()
                except StopAsyncIteration:
                    return not self._gone
                finally:
                    self._pulling = False
                if self._gone:
                    self._drained += chunk_nbytes(chunk)
                    if self._drained > self._policy.max_bytes:
                        self._reason = EndReason.DRAIN_CUT_BYTES  # the taps saw this chunk; reading stops here
                        return False
                    continue
                try:
                    await self._write(chunk)
                except OSError:
                    self.client_left()
                    if not self._policy.drains:
                        return False
        except Exception:
            if self._gone:
                return False  # an upstream failure during a drain is nobody's response any more
            raise
        finally:
            await pipe.aclose(self._reason)  # closes the source; a no-op on a finished pipe

    def client_left(self) -> None:
        if self._gone:
            return
        self._gone = True
        sender = self._sender
        if sender is None or sender.done():
            return
        if not self._policy.drains:
            self._stop(sender, EndReason.CLIENT_GONE)
            return
        self._pipe.start_draining()
        self._deadline = asyncio.get_running_loop().call_later(
            self._policy.timeout, self._stop, sender, EndReason.DRAIN_CUT_TIMEOUT
        )

    def _stop(self, sender: asyncio.Task[bool], reason: EndReason) -> None:
        self._reason = reason  # the sender's aclose() gives it
        if self._pulling:
            # Cancelling a pending pull would only say "cancelled": the reason goes first. The pull,
            # cancelled next, still closes the source.
            self._pipe.cancel(reason)
        if sender is not _current_task():
            sender.cancel()

    def _sent(self, sender: asyncio.Task[bool]) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if not sender.cancelled():
            sender.exception()  # retrieved here; deliver() re-raises it when someone still waits


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
