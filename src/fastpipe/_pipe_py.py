"""The pure-Python Pipe: the readable reference for the compiled ``fastpipe._pipe``.

Both implementations follow one contract (docs/architecture.md, "The Pipe contract") and the test suite runs every
clause against both. Read this file to learn what the Pipe does; read ``_pipe.pyx`` to learn how it is fast.

A pipe has two faces:

* the **pull face**: ``Pipe(source, owner)`` is an async iterator over ``source`` that keeps ``owner``
  alive until the stream ends, fails or is cancelled, then releases it through one exit, ``_release``;
* the **push face**: ``Pipe.pushed(owner, producer=...)`` is fed synchronously by a protocol
  (``feed``/``feed_eof``/``feed_error``) and delivers either to a connected sink (no coroutine per chunk)
  or to ``async for``; flow control pauses and resumes the producer.
"""

from __future__ import annotations

import asyncio
import warnings
from collections import deque
from typing import Any, AsyncIterable, Callable, Protocol

from ._chunks import Chunk
from ._chunks import chunk_nbytes as _chunk_size
from ._errors import PipeError, report_callback_error
from ._pipe_common import END_OF_BODY as _EOF
from ._pipe_common import wrap_for
from .disconnect import CANCEL, DisconnectPolicy, check_policy
from .end_reason import EndReason, as_end_reason

__all__ = ("Pipe", "PipeError", "Producer", "Sink", "wrap")

IDLE = "idle"
OPEN = "open"
CLOSED = "closed"
ERRORED = "errored"
CANCELLED = "cancelled"

DEFAULT_HIGH_WATER = 64 * 1024
DEFAULT_LOW_WATER = 16 * 1024


class Producer(Protocol):
    """What feeds a pushed pipe: an asyncio read transport already fits."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Sink(Protocol):
    """Where a connected pushed pipe delivers: ``write`` per chunk, ``end`` once when the pipe finishes."""

    def write(self, chunk: Any) -> None: ...

    def end(self, pipe: Any) -> None: ...


class Pipe:
    """A lazy, zero-copy passthrough that keeps the owner of a stream alive until the stream is over."""

    __slots__ = (
        "__weakref__",
        "_chunks",
        "_done_callbacks",
        "_draining",
        "_end_reason",
        "_exception",
        "_flushing",
        "_high_water",
        "_iterator",
        "_low_water",
        "_nbytes",
        "_on_disconnect",
        "_on_release",
        "_owner",
        "_paused",
        "_paused_in_flush",
        "_pending_end",
        "_producer",
        "_pulling",
        # push face
        "_pushed",
        "_queue",
        "_queued_bytes",
        "_released",
        "_sink",
        "_sink_write",
        "_source",
        "_state",
        "_taps",
        "_waiter",
    )

    def __init__(
        self,
        source: AsyncIterable[Chunk],
        owner: object = None,
        *,
        on_release: Callable[[Pipe], object] | None = None,
        on_disconnect: DisconnectPolicy = CANCEL,
    ) -> None:
        # Lazy: nothing here may touch `source`, not even an attribute lookup.
        self._source: Any = source
        self._iterator: Any = None
        self._owner: object = owner
        self._on_release = on_release
        self._done_callbacks: list[Callable[[Pipe], object]] | None = None
        self._end_reason: EndReason | None = None  # said by whoever finished the pipe; else derived
        self._draining = False
        self._released = False
        self._taps: list[Callable[[Any], object]] | None = None
        self._state = IDLE
        self._pulling = False
        self._exception: BaseException | None = None
        self._chunks = 0
        self._nbytes = 0
        self._pushed = False
        self._producer: Any = None
        self._sink: Any = None
        self._sink_write: Callable[[Any], object] | None = None
        self._queue: deque[tuple[Any, int]] | None = None  # (chunk, its size in bytes)
        self._queued_bytes = 0
        self._pending_end: object = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._flushing = False  # connect() is writing the queued chunks to its sink
        self._paused_in_flush = False  # ... and the sink asked to pause meanwhile: that pause is the sink's
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_LOW_WATER
        self._on_disconnect = CANCEL
        self._on_disconnect = check_policy(on_disconnect)  # last: a refused pipe is still a whole object

    @classmethod
    def pushed(
        cls,
        owner: object = None,
        *,
        producer: Producer | None = None,
        on_release: Callable[[Pipe], object] | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int | None = None,
        on_disconnect: DisconnectPolicy = CANCEL,
    ) -> Pipe:
        """A pipe fed by a protocol instead of pulled from an async iterable.

        ``high_water``/``low_water`` bound the bytes queued for an ``async for`` consumer: the producer is
        paused above the high mark and resumed at or below the low mark (default: a quarter of high).
        """
        if low_water is None:
            low_water = high_water // 4
        if not 0 <= low_water <= high_water:
            raise ValueError(f"need 0 <= low_water <= high_water, got {low_water} and {high_water}")
        pipe = cls(None, owner, on_release=on_release, on_disconnect=on_disconnect)  # type: ignore[arg-type]
        pipe._pushed = True
        pipe._producer = producer
        pipe._queue = deque()
        pipe._high_water = high_water
        pipe._low_water = low_water
        return pipe

    # -- what anyone may read ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """'idle', 'open', 'closed' (clean end), 'errored' or 'cancelled'."""
        return self._state

    @property
    def chunks(self) -> int:
        """Chunks passed on so far."""
        return self._chunks

    @property
    def nbytes(self) -> int:
        """Bytes passed on so far."""
        return self._nbytes

    @property
    def owner(self) -> object:
        """The retained owner; None once released."""
        return self._owner

    @property
    def exception(self) -> BaseException | None:
        """The error an errored pipe met; None otherwise."""
        return self._exception

    @property
    def paused(self) -> bool:
        """Whether this pipe has paused its producer (push face)."""
        return self._paused

    @property
    def on_disconnect(self) -> DisconnectPolicy:
        """What a sink does with this pipe when its client leaves (default: cancel)."""
        return self._on_disconnect

    @on_disconnect.setter
    def on_disconnect(self, policy: DisconnectPolicy) -> None:
        self._on_disconnect = check_policy(policy)

    @property
    def end_reason(self) -> EndReason | None:
        """Why the pipe ended (an ``EndReason``); None while it runs."""
        state = self._state
        if state is IDLE or state is OPEN:
            return None
        if self._end_reason is not None:
            return self._end_reason
        if state is CLOSED:
            return EndReason.DRAINED if self._draining else EndReason.COMPLETE
        if state is ERRORED:
            return EndReason.UPSTREAM_ERROR
        return EndReason.CANCELLED

    def start_draining(self) -> None:
        """Its client left, and the pipe is read on without it: a clean end will be ``DRAINED``."""
        self._draining = True

    def add_done_callback(self, callback: Callable[[Pipe], object]) -> None:
        """Call ``callback(pipe)`` once the pipe is finished, after ``on_release`` (at once if it is).

        ``pipe.state`` and ``pipe.end_reason`` are final then; an exception goes to the loop's handler.
        """
        if not callable(callback):
            raise TypeError(f"add_done_callback() needs a callable, got {type(callback).__name__}")
        if self._released:
            _call_done(self, callback)
        elif self._done_callbacks is None:
            self._done_callbacks = [callback]
        else:
            self._done_callbacks.append(callback)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self._state} chunks={self._chunks} nbytes={self._nbytes}>"

    def tap(self, observer: Callable[[Any], object]) -> Pipe:
        """Call ``observer(chunk)`` with each chunk before it is passed on; returns the pipe.

        Observers run in the order they were added, each with the very chunk object the consumer gets. An
        observer that raises (an ``Exception``) is reported once, with its traceback, to the event loop's
        exception handler and detached: it sees no later chunk, and neither does any other entry of that
        same object (tapped twice, it goes as one). The other observers and the stream go on unchanged.
        A chunk is shown to the observers attached when it arrived: one added from inside an observer
        starts with the next chunk.
        """
        if not callable(observer):
            raise TypeError(f"tap() needs a callable, got {type(observer).__name__}")
        # Replaced, never changed in place: _count iterates the list a chunk arrived with.
        self._taps = [observer] if self._taps is None else [*self._taps, observer]
        return self

    # -- the single exit ---------------------------------------------------------------------------------

    def _release(self) -> None:
        """Drop every strong reference and call on_release, exactly once in the pipe's life."""
        if self._released:
            return
        self._released = True
        callback = self._on_release
        producer = self._producer
        self._owner = self._source = self._iterator = None
        self._on_release = None
        self._taps = None
        self._producer = None
        if self._paused and producer is not None:
            # The pause was this pipe's: the producer goes back reading (a pooled connection left
            # paused would never see its next response).
            self._paused = False
            try:
                producer.resume_reading()
            except Exception as exc:
                report_callback_error("fastpipe: producer.resume_reading failed on release", exc, self)
        if callback is not None:
            try:
                callback(self)
            except Exception as exc:
                report_callback_error("fastpipe: on_release callback failed", exc, self)
        done, self._done_callbacks = self._done_callbacks, None
        if done is not None:
            for callback in done:
                _call_done(self, callback)

    def _deliver(self, chunk: Any) -> Any:
        """Count a chunk and show it to the taps; the chunk itself passes on untouched."""
        return self._count(chunk, _chunk_size(chunk))

    def _count(self, chunk: Any, size: int) -> Any:
        self._chunks += 1
        self._nbytes += size
        taps = self._taps
        if taps is not None:
            # ``taps`` is never changed in place (tap and _detach replace it), so this loop sees the
            # observers the chunk arrived with, whatever happens meanwhile. While ``self._taps`` is still
            # that list, nothing was added or detached: one pointer comparison per observer.
            dropped = None
            for observer in taps:
                if self._taps is not taps and not self._still_attached(observer, dropped):
                    continue
                try:
                    observer(chunk)
                except Exception as exc:
                    dropped = self._detach(observer, exc, dropped)
        return chunk

    def _still_attached(self, observer: Any, dropped: list[Any] | None) -> bool:
        """Whether ``observer``, of this chunk's list, is still to be called (the list was replaced meanwhile)."""
        if dropped is not None and any(gone is observer for gone in dropped):
            return False  # raised for this chunk (tapped twice: at an earlier place)
        current = self._taps
        if current is None:
            # Every observer detached, or the pipe finished (an observer cancelled it): this chunk is
            # still passed on, so the observers it arrived with see it unless they were detached.
            return self._released
        return any(attached is observer for attached in current)

    def _detach(self, observer: Any, exc: Exception, dropped: list[Any] | None) -> list[Any]:
        """Detach every entry of ``observer``, then report why; returns the observers dropped for this chunk."""
        current = self._taps
        if current is not None:
            self._taps = [attached for attached in current if attached is not observer] or None
        report_callback_error("fastpipe: tap observer failed and was detached", exc, self)
        return [observer] if dropped is None else [*dropped, observer]

    def _raise_finished(self) -> None:
        if self._state is ERRORED:
            raise PipeError(f"pipe already failed: {self._exception!r}") from self._exception
        raise StopAsyncIteration

    # -- the pull face -----------------------------------------------------------------------------------

    def __aiter__(self) -> Pipe:
        return self

    def __anext__(self) -> Any:
        if self._pushed:
            return self._pull_pushed()
        return self._pull()

    async def _pull(self) -> Any:
        # A finished pipe answers first: a pull after aclose() ends, also while another pull is pending.
        if self._state is not OPEN:
            if self._state is not IDLE:
                self._raise_finished()
            if self._pulling:
                raise RuntimeError("anext(): Pipe is already being pulled")
            self._state = OPEN
        elif self._pulling:
            raise RuntimeError("anext(): Pipe is already being pulled")
        self._pulling = True
        try:
            try:
                # No local names for source objects: a traceback must not keep them alive.
                if self._iterator is None:
                    self._iterator = aiter(self._source)
                chunk = await anext(self._iterator)
            finally:
                self._pulling = False
            if self._state is not CANCELLED:
                return self._deliver(chunk)
        except StopAsyncIteration:
            if self._state is not CANCELLED:
                self._state = CLOSED
                self._release()
                raise
        except (asyncio.CancelledError, GeneratorExit):
            # The consumer (or the source) was cancelled: that is a cancellation, never an error.
            self._state = CANCELLED
            self._release()
            raise
        except BaseException as exc:
            if self._state is not CANCELLED:
                self._state = ERRORED
                self._exception = exc
                self._release()
                raise
        # aclose() ran in another task while this pull was pending: whatever the read produced is
        # discarded, and this pull finishes the cancellation that aclose() could not wait for.
        await self._close_iterator_after_cancel()
        raise StopAsyncIteration

    async def _close_iterator_after_cancel(self) -> None:
        try:
            close = getattr(self._iterator, "aclose", None)
            if close is not None:
                await close()
        except Exception as exc:
            report_callback_error("fastpipe: closing the source after cancellation failed", exc, self)
        finally:
            self._release()

    async def aclose(self, reason: EndReason | str | None = None) -> None:
        """Cancel the stream and release the owner; idempotent, and a no-op on a finished pipe.

        ``reason`` (an ``EndReason``) becomes ``end_reason`` if this call is the one that cancels.
        """
        checked = None if reason is None else as_end_reason(reason)
        state = self._state
        if state is not IDLE and state is not OPEN:
            return
        self._state = CANCELLED
        self._end_reason = checked
        if self._pushed:
            self._cancel_pushed()
            return
        if self._pulling:
            return  # the pending pull closes the iterator and releases when its read completes
        try:
            target = self._source if state is IDLE else self._iterator
            close = getattr(target, "aclose", None)
            if close is not None:
                await close()
        finally:
            self._release()

    def cancel(self, reason: EndReason | str | None = None) -> None:
        """Cancel synchronously, for callers that cannot await (protocol callbacks).

        The owner is released at once, and the source of a pulled pipe is not closed; with a pull pending,
        that pull finishes the job when its read completes, closing the iterator as after ``aclose()``.
        ``reason`` as for ``aclose()``.
        """
        checked = None if reason is None else as_end_reason(reason)
        state = self._state
        if state is not IDLE and state is not OPEN:
            return
        self._state = CANCELLED
        self._end_reason = checked
        if self._pushed:
            self._cancel_pushed()
        elif not self._pulling:
            self._release()

    async def __aenter__(self) -> Pipe:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if self._released:
            return
        if self._state is OPEN:
            warnings.warn(f"unfinished {self!r} was dropped; aclose() it", ResourceWarning, stacklevel=2, source=self)
        if self._state is IDLE or self._state is OPEN:
            self._state = CANCELLED
        self._release()

    # -- the push face -----------------------------------------------------------------------------------

    def feed(self, chunk: Chunk) -> bool:
        """Pass one chunk on; returns False (and drops it) when the pipe was cancelled."""
        if not self._pushed:
            raise RuntimeError("feed() is for pipes made by Pipe.pushed()")
        state = self._state
        if state is not OPEN and state is not IDLE:
            if state is CANCELLED:
                return False
            raise RuntimeError(f"feed() on a {state} pipe")
        if self._pending_end is not None:
            raise RuntimeError("feed() after feed_eof() or feed_error()")
        size = _chunk_size(chunk)  # a bad chunk is refused before the pipe opens
        self._state = OPEN
        if self._sink_write is not None:
            return self._write_to_sink(self._sink_write, chunk, size)
        assert self._queue is not None
        self._queued_bytes += size
        self._queue.append((chunk, size))  # measured once, here
        if self._queued_bytes > self._high_water:
            self.pause_producing()
        self._wake_puller()
        return True

    def feed_eof(self) -> None:
        """The producer's body ended cleanly."""
        self._feed_end(_EOF)

    def feed_error(self, exc: BaseException, reason: EndReason | str | None = None) -> None:
        """The producer failed: the consumer gets ``exc`` after the queued chunks, never a clean end.

        ``reason`` (default ``UPSTREAM_ERROR``) becomes ``end_reason``: a tee cutting a branch says why.
        """
        if not isinstance(exc, BaseException):
            raise TypeError(f"feed_error() needs an exception, got {type(exc).__name__}")
        checked = None if reason is None else as_end_reason(reason)
        if (self._state is IDLE or self._state is OPEN) and self._pending_end is None:
            self._end_reason = checked
        self._feed_end(exc)

    def _feed_end(self, end: object) -> None:
        if not self._pushed:
            raise RuntimeError(f"{'feed_eof' if end is _EOF else 'feed_error'}() is for pipes made by Pipe.pushed()")
        state = self._state
        if state is CANCELLED:
            return
        if state is IDLE:
            self._state = OPEN
        elif state is not OPEN or self._pending_end is not None:
            raise RuntimeError("the pipe's end was already fed")
        if self._sink_write is not None:
            self._finish_pushed(end)
        else:
            self._pending_end = end
            self._wake_puller()

    def connect(self, sink: Sink) -> None:
        """Deliver to ``sink`` from now on: ``sink.write(chunk)`` per chunk, ``sink.end(pipe)`` once.

        Chunks queued before the call are written first; a chunk fed while they are being written (from
        inside ``sink.write``) queues behind them, so the order is always the order of ``feed``.
        """
        if not self._pushed:
            raise RuntimeError("connect() is for pipes made by Pipe.pushed()")
        if self._sink is not None or self._waiter is not None or self._chunks:
            raise RuntimeError("connect() needs a pushed pipe that nothing consumes yet")
        if self._state is not IDLE and self._state is not OPEN:
            sink.end(self)
            return
        self._sink = sink  # attached (no other consumer may come) but not yet written to directly
        assert self._queue is not None
        queue = self._queue
        self._flushing = True
        try:
            while queue:
                chunk, size = queue.popleft()
                self._queued_bytes -= size
                if not self._write_to_sink(sink.write, chunk, size) or self._state is CANCELLED:
                    return
        finally:
            self._flushing = False
        sink_paused, self._paused_in_flush = self._paused_in_flush, False
        self._sink_write = sink.write
        if self._pending_end is not None:
            self._finish_pushed(self._pending_end)
        elif self._paused and self._queued_bytes <= self._low_water and not sink_paused:
            self.resume_producing()  # the queue's pause ends with the flush

    def _write_to_sink(self, write: Callable[[Any], object], chunk: Any, size: int) -> bool:
        """Count, show to the taps, write; a sink that fails is a client gone: cancel, and report why."""
        self._count(chunk, size)
        try:
            write(chunk)
        except Exception as exc:
            self.cancel()
            report_callback_error("fastpipe: sink.write failed; pipe cancelled", exc, self)
            return False
        return True

    def pause_producing(self) -> None:
        """Ask the producer to stop reading; safe to repeat."""
        if self._flushing:
            self._paused_in_flush = True
        if not self._paused:
            self._paused = True
            if self._producer is not None:
                self._producer.pause_reading()

    def resume_producing(self) -> None:
        """Let the producer read again; safe to repeat."""
        if self._paused:
            self._paused = False
            if self._producer is not None:
                self._producer.resume_reading()

    def _wake_puller(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish_pushed(self, end: object) -> None:
        if end is _EOF:
            self._state = CLOSED
        else:
            self._state = ERRORED
            self._exception = end  # type: ignore[assignment]
        self._end_pushed()

    def _cancel_pushed(self) -> None:
        assert self._queue is not None
        self._queue.clear()
        self._queued_bytes = 0
        self._pending_end = None
        self._wake_puller()
        self._end_pushed()

    def _end_pushed(self) -> None:
        sink = self._sink
        self._sink = self._sink_write = None
        self._release()
        if sink is not None:
            try:
                sink.end(self)
            except Exception as exc:
                report_callback_error("fastpipe: sink.end failed", exc, self)

    async def _pull_pushed(self) -> Any:
        if self._pulling:
            if self._state is OPEN:
                raise RuntimeError("anext(): Pipe is already being pulled")
            self._raise_finished()  # cancelled while another pull waits: this one ends
        if self._sink is not None:
            raise RuntimeError("a pipe connected to a sink cannot be pulled")
        if self._state is IDLE:
            self._state = OPEN
        queue = self._queue
        assert queue is not None
        while True:  # a few rounds at most: a resume or a wake-up brings a chunk or the end
            if queue:
                chunk, size = queue.popleft()
                self._queued_bytes -= size
                if self._paused and self._queued_bytes <= self._low_water:
                    self.resume_producing()
                return self._count(chunk, size)
            if self._state is not OPEN:
                self._raise_finished()
            end = self._pending_end
            if end is not None:
                self._finish_pushed(end)
                if end is _EOF:
                    raise StopAsyncIteration
                raise end  # type: ignore[misc]
            if self._paused:
                # A consumer waits on an empty queue: that is demand, whoever paused the producer.
                self.resume_producing()
                if queue or self._state is not OPEN or self._pending_end is not None:
                    continue
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            self._pulling = True
            try:
                await waiter
            except (asyncio.CancelledError, GeneratorExit):
                self._state = CANCELLED
                self._cancel_pushed()
                raise
            finally:
                self._waiter = None
                self._pulling = False


def _call_done(pipe: Pipe, callback: Callable[[Pipe], object]) -> None:
    try:
        callback(pipe)
    except Exception as exc:
        report_callback_error("fastpipe: done callback failed", exc, pipe)


wrap = wrap_for(Pipe)
