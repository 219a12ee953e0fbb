# cython: language_level=3, embedsignature=True, freethreading_compatible=True
# cython: auto_pickle=False, binding=False
#
# Directives, on purpose: language_level=3 (Python 3 semantics), embedsignature (help() shows real
# signatures), freethreading_compatible (nothing here relies on the GIL beyond what a single event loop
# thread gives), auto_pickle=False (a pipe holds live streams: pickling one is always a bug), binding=False
# (plain C methods; nothing introspects them). No boundscheck/wraparound switches: we index nothing.
"""The compiled Pipe: the same contract as ``_pipe_py``, with a pull path that costs no exception per chunk.

How it is fast, in three moves (docs/architecture.md, "Measured facts"):

1. ``__anext__`` hands out a reused ``_Pull`` awaitable instead of creating a coroutine per chunk.
2. ``_Pull`` fills the ``am_send`` slot: CPython's ``await`` (3.10, 3.11) drives it with ``PyIter_Send`` and
   gets the chunk back as a return value. On 3.12+, where ``await`` calls ``tp_iternext`` instead, that slot
   is a C function too. ``send``/``throw``/``close`` remain for every other driver.
3. The source's read is driven with ``PyIter_Send`` and inspected in C; Python-level work happens only on the
   cold paths (first pull, end, error, cancellation, taps).
"""

cimport cython
from cpython.object cimport PyObject

import asyncio
import warnings
from collections import deque

from ._errors import PipeError, report_callback_error
from ._pipe_common import END_OF_BODY, wrap_for
from .disconnect import CANCEL, check_policy
from .end_reason import EndReason, as_end_reason

__all__ = ("Pipe", "PipeError", "wrap")

cdef object CancelledError = asyncio.CancelledError
cdef object _get_running_loop = asyncio.get_running_loop
cdef object _STATE_NAMES = ("idle", "open", "closed", "errored", "cancelled")
cdef object _COMPLETE = EndReason.COMPLETE
cdef object _DRAINED = EndReason.DRAINED
cdef object _UPSTREAM_ERROR = EndReason.UPSTREAM_ERROR
cdef object _CANCELLED = EndReason.CANCELLED
cdef Py_ssize_t DEFAULT_HIGH_WATER = 64 * 1024

cdef enum:
    # PySendResult values, plus one of ours.
    PYGEN_RETURN = 0
    PYGEN_ERROR = -1
    PYGEN_NEXT = 1
    CONTINUE = 2  # internal: the driver was replaced (by the iterator's aclose()); drive it on with None

cdef extern from "_pipe_helpers.h":
    # C helpers, in a header beside this file (each reports failure as NULL / -1 with the error set)
    PyObject* fastpipe_read_driver(PyObject* iterator)
    Py_ssize_t fastpipe_chunk_size(PyObject* chunk)
    int fastpipe_install_pull_slots(PyObject* type, void* send) except -1
    int fastpipe_raise_pending() except -1
    int fastpipe_throw_into(PyObject* driver, PyObject* args, PyObject** presult)

cdef extern from *:
    # From Python.h
    PyObject* PyObject_GetAIter(PyObject* obj)
    int PyIter_Send(PyObject* iterator, PyObject* arg, PyObject** presult)
    void Py_DECREF_PTR "Py_DECREF"(PyObject* obj)
    Py_ssize_t Py_REFCNT(object obj)
    void PyErr_Clear()
    PyObject* Py_None

cdef object _EOF = END_OF_BODY


cdef Py_ssize_t _chunk_size(object chunk) except -1:
    cdef Py_ssize_t size = fastpipe_chunk_size(<PyObject*>chunk)
    if size == -2:
        raise TypeError(f"Pipe chunks must be bytes-like, got {type(chunk).__name__}")
    if size == -1:
        fastpipe_raise_pending()
    return size


@cython.final
cdef class Pipe:
    """A lazy, zero-copy passthrough that keeps the owner of a stream alive until the stream is over."""

    def __init__(self, source, owner=None, *, on_release=None, on_disconnect=CANCEL):
        # Lazy: nothing here may touch `source`, not even an attribute lookup.
        self._setup(source, owner, on_release, on_disconnect)

    cdef int _setup(self, object source, object owner, object on_release, object on_disconnect) except -1:
        self._on_disconnect = on_disconnect if on_disconnect is CANCEL else check_policy(on_disconnect)
        self._source = source
        self._owner = owner
        self._on_release = on_release
        self._state = STATE_IDLE
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_HIGH_WATER // 4
        return 0

    @classmethod
    def pushed(cls, owner=None, *, producer=None, on_release=None, Py_ssize_t high_water=DEFAULT_HIGH_WATER,
               low_water=None, on_disconnect=CANCEL):
        """A pipe fed by a protocol instead of pulled from an async iterable (see ``_pipe_py.Pipe.pushed``)."""
        cdef Py_ssize_t low = high_water // 4 if low_water is None else low_water
        if not 0 <= low <= high_water:
            raise ValueError(f"need 0 <= low_water <= high_water, got {low} and {high_water}")
        # One per response in the proxy: made without a call through the type and its keywords, and its
        # queue made only when a chunk must wait in it (a pipe connected at once never queues).
        cdef Pipe pipe = Pipe.__new__(Pipe)
        pipe._setup(None, owner, on_release, on_disconnect)
        pipe._pushed = True
        pipe._producer = producer
        pipe._high_water = high_water
        pipe._low_water = low
        return pipe

    # -- what anyone may read ---------------------------------------------------------------------------

    @property
    def state(self):
        """'idle', 'open', 'closed' (clean end), 'errored' or 'cancelled'."""
        return _STATE_NAMES[<int>self._state]

    @property
    def owner(self):
        """The retained owner; None once released."""
        return self._owner

    @property
    def exception(self):
        """The error an errored pipe met; None otherwise."""
        return self._exception

    @property
    def paused(self):
        """Whether this pipe has paused its producer (push face)."""
        return self._paused

    @property
    def on_disconnect(self):
        """What a sink does with this pipe when its client leaves (default: cancel)."""
        return self._on_disconnect

    @on_disconnect.setter
    def on_disconnect(self, policy):
        self._on_disconnect = check_policy(policy)

    @property
    def end_reason(self):
        """Why the pipe ended (an ``EndReason``); None while it runs."""
        if self._state == STATE_IDLE or self._state == STATE_OPEN:
            return None
        if self._end_reason is not None:
            return self._end_reason
        if self._state == STATE_CLOSED:
            return _DRAINED if self._draining else _COMPLETE
        if self._state == STATE_ERRORED:
            return _UPSTREAM_ERROR
        return _CANCELLED

    def start_draining(self):
        """Its client left, and the pipe is read on without it: a clean end will be ``DRAINED``."""
        self._draining = True

    def add_done_callback(self, callback):
        """Call ``callback(pipe)`` once the pipe is finished, after ``on_release`` (at once if it is)."""
        if not callable(callback):
            raise TypeError(f"add_done_callback() needs a callable, got {type(callback).__name__}")
        if self._released:
            _call_done(self, callback)
        elif self._done_callbacks is None:
            self._done_callbacks = [callback]
        else:
            self._done_callbacks.append(callback)

    def __repr__(self):
        return f"<Pipe state={self.state} chunks={self.chunks} nbytes={self.nbytes}>"

    def tap(self, observer):
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
        # Replaced, never changed in place: _observe iterates the list a chunk arrived with.
        if self._taps is None:
            self._taps = [observer]
        else:
            self._taps = self._taps + [observer]
        return self

    # -- the single exit ---------------------------------------------------------------------------------

    cdef int _release(self) except -1:
        if self._released:
            return 0
        self._released = True
        callback = self._on_release
        producer = self._producer
        self._owner = None
        self._source = None
        self._iterator = None
        self._on_release = None
        self._taps = None
        self._producer = None
        if self._paused and producer is not None:
            # The pause was this pipe's: the producer goes back reading.
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
        done = self._done_callbacks
        self._done_callbacks = None
        if done is not None:
            for callback in done:
                _call_done(self, callback)
        return 0

    cdef int _observe(self, object chunk) except -1:
        # Callers check that _taps is not None. ``taps`` is never changed in place (tap and _detach replace
        # it), so this loop sees the observers the chunk arrived with, whatever happens meanwhile. While
        # _taps is still that list, nothing was added or detached: one pointer comparison per observer.
        cdef list taps = self._taps
        cdef list dropped = None
        for observer in taps:
            if self._taps is not taps and not self._still_attached(observer, dropped):
                continue
            try:
                observer(chunk)
            except Exception as exc:
                dropped = self._detach(observer, exc, dropped)
        return 0

    cdef bint _still_attached(self, object observer, list dropped) except -1:
        # Whether ``observer``, of this chunk's list, is still to be called (the list was replaced meanwhile).
        if dropped is not None:
            for gone in dropped:
                if gone is observer:
                    return False  # raised for this chunk (tapped twice: at an earlier place)
        current = self._taps
        if current is None:
            # Every observer detached, or the pipe finished (an observer cancelled it): this chunk is
            # still passed on, so the observers it arrived with see it unless they were detached.
            return self._released
        for attached in current:
            if attached is observer:
                return True
        return False

    cdef list _detach(self, object observer, object exc, list dropped):
        # Detach every entry of ``observer``, then report why; returns the observers dropped for this chunk.
        current = self._taps
        if current is not None:
            remaining = [attached for attached in current if attached is not observer]
            self._taps = remaining if remaining else None
        report_callback_error("fastpipe: tap observer failed and was detached", exc, self)
        if dropped is None:
            return [observer]
        return dropped + [observer]

    cdef int _raise_finished(self) except -1:
        if self._state == STATE_ERRORED:
            raise PipeError(f"pipe already failed: {self._exception!r}") from self._exception
        raise StopAsyncIteration

    # -- the pull face -----------------------------------------------------------------------------------

    def __aiter__(self):
        return self

    def __anext__(self):
        cdef _Pull pull
        if self._pushed:
            return self._pull_pushed()
        pull = self._spare_pull
        # The spare is free when only this pipe's slot and our local hold it.
        if pull is None or Py_REFCNT(pull) > 2:
            pull = _Pull.__new__(_Pull)
            if self._spare_pull is None:
                self._spare_pull = pull
        pull._pipe = self
        if pull._driver is not None:  # a pull abandoned mid-read: start clean
            pull._driver = None
            pull._closing = False
        return pull

    async def aclose(self, reason=None):
        """Cancel the stream and release the owner; idempotent, and a no-op on a finished pipe.

        ``reason`` (an ``EndReason``) becomes ``end_reason`` if this call is the one that cancels.
        """
        checked = None if reason is None else as_end_reason(reason)
        cdef PipeState state = self._state
        if state != STATE_IDLE and state != STATE_OPEN:
            return
        self._state = STATE_CANCELLED
        self._end_reason = checked
        if self._pushed:
            self._cancel_pushed()
            return
        if self._pulling:
            return  # the pending pull closes the iterator and releases when its read completes
        try:
            target = self._source if state == STATE_IDLE else self._iterator
            close = getattr(target, "aclose", None)
            target = None
            if close is not None:
                await close()
        finally:
            self._release()

    def cancel(self, reason=None):
        """Cancel synchronously, for callers that cannot await (see ``_pipe_py.Pipe.cancel``).

        The owner is released at once, and the source of a pulled pipe is not closed; with a pull pending,
        that pull finishes the job when its read completes, closing the iterator as after ``aclose()``.
        ``reason`` as for ``aclose()``.
        """
        checked = None if reason is None else as_end_reason(reason)
        cdef PipeState state = self._state
        if state != STATE_IDLE and state != STATE_OPEN:
            return
        self._state = STATE_CANCELLED
        self._end_reason = checked
        if self._pushed:
            self._cancel_pushed()
        elif not self._pulling:
            self._release()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.aclose()

    def __del__(self):
        if self._released:
            return
        if self._state == STATE_OPEN:
            warnings.warn(f"unfinished {self!r} was dropped; aclose() it", ResourceWarning, source=self)
        if self._state == STATE_IDLE or self._state == STATE_OPEN:
            self._state = STATE_CANCELLED
        self._release()

    # -- the push face -----------------------------------------------------------------------------------

    cpdef feed(self, chunk):
        """Pass one chunk on; returns False (and drops it) when the pipe was cancelled."""
        cdef Py_ssize_t size
        if not self._pushed:
            raise RuntimeError("feed() is for pipes made by Pipe.pushed()")
        if self._state != STATE_OPEN and self._state != STATE_IDLE:
            if self._state == STATE_CANCELLED:
                return False
            raise RuntimeError(f"feed() on a {self.state} pipe")
        if self._pending_end is not None:
            raise RuntimeError("feed() after feed_eof() or feed_error()")
        size = _chunk_size(chunk)  # a bad chunk is refused before the pipe opens
        self._state = STATE_OPEN
        if self._sink_write is not None:
            return self._write_to_sink(self._sink_write, chunk, size)
        self._queued_bytes += size
        if self._queue is None:
            self._queue = deque()
        self._queue.append(chunk)
        if self._queued_bytes > self._high_water:
            self.pause_producing()
        self._wake_puller()
        return True

    cpdef feed_eof(self):
        """The producer's body ended cleanly."""
        self._feed_end(_EOF)

    def feed_error(self, exc, reason=None):
        """The producer failed: the consumer gets ``exc`` after the queued chunks, never a clean end.

        ``reason`` (default ``UPSTREAM_ERROR``) becomes ``end_reason``: a tee cutting a branch says why.
        """
        if not isinstance(exc, BaseException):
            raise TypeError(f"feed_error() needs an exception, got {type(exc).__name__}")
        checked = None if reason is None else as_end_reason(reason)
        if (self._state == STATE_IDLE or self._state == STATE_OPEN) and self._pending_end is None:
            self._end_reason = checked
        self._feed_end(exc)

    cdef int _feed_end(self, object end) except -1:
        if not self._pushed:
            raise RuntimeError(f"{'feed_eof' if end is _EOF else 'feed_error'}() is for pipes made by Pipe.pushed()")
        if self._state == STATE_CANCELLED:
            return 0
        if self._state == STATE_IDLE:
            self._state = STATE_OPEN
        elif self._state != STATE_OPEN or self._pending_end is not None:
            raise RuntimeError("the pipe's end was already fed")
        if self._sink_write is not None:
            self._finish_pushed(end)
        else:
            self._pending_end = end
            self._wake_puller()
        return 0

    cpdef connect(self, sink):
        """Deliver to ``sink`` from now on: ``sink.write(chunk)`` per chunk, ``sink.end(pipe)`` once."""
        cdef Py_ssize_t size
        if not self._pushed:
            raise RuntimeError("connect() is for pipes made by Pipe.pushed()")
        if self._sink is not None or self._waiter is not None or self.chunks:
            raise RuntimeError("connect() needs a pushed pipe that nothing consumes yet")
        if self._state != STATE_IDLE and self._state != STATE_OPEN:
            sink.end(self)
            return
        self._sink = sink  # attached (no other consumer may come) but not yet written to directly
        queue = self._queue
        self._flushing = True
        try:
            while queue:
                chunk = queue.popleft()
                size = _chunk_size(chunk)  # a C call on the object: cheaper than queueing (chunk, size) tuples
                self._queued_bytes -= size
                if not self._write_to_sink(sink.write, chunk, size) or self._state == STATE_CANCELLED:
                    return
        finally:
            self._flushing = False
        sink_paused = self._paused_in_flush
        self._paused_in_flush = False
        self._sink_write = sink.write
        if self._pending_end is not None:
            self._finish_pushed(self._pending_end)
        elif self._paused and self._queued_bytes <= self._low_water and not sink_paused:
            self.resume_producing()  # the queue's pause ends with the flush

    def pause_producing(self):
        """Ask the producer to stop reading; safe to repeat."""
        if self._flushing:
            self._paused_in_flush = True
        if not self._paused:
            self._paused = True
            if self._producer is not None:
                self._producer.pause_reading()

    def resume_producing(self):
        """Let the producer read again; safe to repeat."""
        if self._paused:
            self._paused = False
            if self._producer is not None:
                self._producer.resume_reading()

    cdef bint _write_to_sink(self, object write, object chunk, Py_ssize_t size) except -1:
        # Count, show to the taps, write; a sink that fails is a client gone: cancel, and report why.
        self.chunks += 1
        self.nbytes += size
        if self._taps is not None:
            self._observe(chunk)
        try:
            write(chunk)
        except Exception as exc:
            self.cancel()
            report_callback_error("fastpipe: sink.write failed; pipe cancelled", exc, self)
            return False
        return True

    cdef int _wake_puller(self) except -1:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return 0

    cdef int _finish_pushed(self, object end) except -1:
        if end is _EOF:
            self._state = STATE_CLOSED
        else:
            self._state = STATE_ERRORED
            self._exception = end
        return self._end_pushed()

    cdef int _cancel_pushed(self) except -1:
        if self._queue is not None:
            self._queue.clear()
        self._queued_bytes = 0
        self._pending_end = None
        self._wake_puller()
        return self._end_pushed()

    cdef int _end_pushed(self) except -1:
        sink = self._sink
        self._sink = None
        self._sink_write = None
        self._release()
        if sink is not None:
            try:
                sink.end(self)
            except Exception as exc:
                report_callback_error("fastpipe: sink.end failed", exc, self)
        return 0

    async def _pull_pushed(self):
        cdef Py_ssize_t size
        if self._pulling:
            if self._state == STATE_OPEN:
                raise RuntimeError("anext(): Pipe is already being pulled")
            self._raise_finished()  # cancelled while another pull waits: this one ends
        if self._sink is not None:
            raise RuntimeError("a pipe connected to a sink cannot be pulled")
        if self._state == STATE_IDLE:
            self._state = STATE_OPEN
        if self._queue is None:
            self._queue = deque()  # made now, so the feeds to come append to the one this pull reads
        queue = self._queue
        while True:  # a few rounds at most: a resume or a wake-up brings a chunk or the end
            if queue:
                chunk = queue.popleft()
                size = _chunk_size(chunk)
                self._queued_bytes -= size
                if self._paused and self._queued_bytes <= self._low_water:
                    self.resume_producing()
                self.chunks += 1
                self.nbytes += size
                if self._taps is not None:
                    self._observe(chunk)
                return chunk
            if self._state != STATE_OPEN:
                self._raise_finished()
            end = self._pending_end
            if end is not None:
                self._finish_pushed(end)
                if end is _EOF:
                    raise StopAsyncIteration
                raise end
            if self._paused:
                # A consumer waits on an empty queue: that is demand, whoever paused the producer.
                self.resume_producing()
                if queue or self._state != STATE_OPEN or self._pending_end is not None:
                    continue
            waiter = self._waiter = _get_running_loop().create_future()
            self._pulling = True
            try:
                await waiter
            except (CancelledError, GeneratorExit):
                self._state = STATE_CANCELLED
                self._cancel_pushed()
                raise
            finally:
                self._waiter = None
                self._pulling = False


@cython.final
cdef class _Pull:
    """The awaitable of one pull of a Pipe."""

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, value):
        cdef PyObject* result = NULL
        cdef int status = _pull_am_send(self, <PyObject*>value, &result)
        out = <object>result
        Py_DECREF_PTR(result)
        if status == PYGEN_NEXT:
            return out
        raise StopIteration(out)

    def throw(self, typ, val=None, tb=None):
        cdef PyObject* result = NULL
        cdef int status
        if self._pipe is None or self._driver is None:
            # Nothing in flight: the exception belongs to whoever awaits us.
            if val is None:
                raise typ
            if isinstance(val, BaseException):
                raise val.with_traceback(tb)
            raise typ(val)
        args = (typ,) if val is None and tb is None else (typ, val, tb)
        status = fastpipe_throw_into(<PyObject*>self._driver, <PyObject*>args, &result)
        status = self._outcome(status, result, &result)
        out = <object>result
        Py_DECREF_PTR(result)
        if status == PYGEN_NEXT:
            return out
        raise StopIteration(out)

    def close(self):
        # The consumer coroutine is being closed while it awaits us: a cancellation.
        pipe = self._pipe
        driver = self._driver
        self._pipe = None
        self._driver = None
        if pipe is None or driver is None:
            return
        pipe._pulling = False
        try:
            closer = getattr(driver, "close", None)
            if closer is not None:
                closer()
        finally:
            if pipe._state == STATE_OPEN or pipe._state == STATE_CANCELLED:
                pipe._state = STATE_CANCELLED
                pipe._release()

    cdef int _begin(self, Pipe pipe) except -1:
        # The cold start of a pull: end a finished pipe (also while another pull is pending: a pull after
        # aclose() ends), refuse a concurrent one, open an idle one.
        cdef PyObject* iterator
        if pipe._state != STATE_OPEN and pipe._state != STATE_IDLE:
            self._pipe = None
            pipe._raise_finished()
        if pipe._pulling:
            self._pipe = None
            raise RuntimeError("anext(): Pipe is already being pulled")
        if pipe._state == STATE_IDLE:
            pipe._state = STATE_OPEN
        if pipe._iterator is None:
            pipe._pulling = True
            iterator = PyObject_GetAIter(<PyObject*>pipe._source)
            if iterator == NULL:
                return self._read_failed(None)
            pipe._iterator = <object>iterator
            Py_DECREF_PTR(iterator)
            pipe._pulling = False
        return 0

    cdef int _outcome(self, int status, PyObject* result, PyObject** presult) except -1:
        # What one step of the driver produced: pass a yielded future through, hand back a chunk, or end.
        cdef Pipe pipe
        cdef Py_ssize_t size
        while True:
            if status == PYGEN_NEXT:
                presult[0] = result
                return PYGEN_NEXT
            if self._closing:
                return self._closing_done(status, result)
            if status == PYGEN_RETURN:
                pipe = self._pipe
                self._driver = None
                pipe._pulling = False
                if pipe._state != STATE_OPEN:
                    Py_DECREF_PTR(result)  # aclose() came while the read was pending: discard the chunk
                    status = self._start_closing()
                else:
                    size = fastpipe_chunk_size(result)
                    if size >= 0:
                        pipe.chunks += 1
                        pipe.nbytes += size
                        self._pipe = None
                        if pipe._taps is not None:
                            pipe._observe(<object>result)
                        presult[0] = result
                        return PYGEN_RETURN
                    error = None
                    if size == -2:
                        error = TypeError(f"Pipe chunks must be bytes-like, got {type(<object>result).__name__}")
                    Py_DECREF_PTR(result)
                    status = self._read_failed(error)
            else:
                status = self._read_failed(None)
            if status != CONTINUE:
                return status
            status = PyIter_Send(<PyObject*>self._driver, Py_None, &result)

    cdef int _read_failed(self, object error) except -1:
        # The read raised (`error`, or None when it is pending): EOF, cancellation or error, each released
        # before it propagates; after a deferred aclose() the outcome is discarded and the iterator closed.
        pipe = self._pipe
        self._driver = None
        pipe._pulling = False
        if error is None:
            try:
                fastpipe_raise_pending()
            except BaseException as exc:
                error = exc
        if isinstance(error, (CancelledError, GeneratorExit)):
            self._pipe = None
            pipe._state = STATE_CANCELLED
            pipe._release()
            raise error
        if pipe._state != STATE_OPEN:
            return self._start_closing()
        self._pipe = None
        if isinstance(error, StopAsyncIteration):
            pipe._state = STATE_CLOSED
        else:
            pipe._state = STATE_ERRORED
            pipe._exception = error
        pipe._release()
        raise error

    cdef int _start_closing(self) except -1:
        # Finish a cancellation that aclose() could not wait for: await the iterator's aclose(), if any.
        pipe = self._pipe
        try:
            close = getattr(pipe._iterator, "aclose", None)
            if close is not None:
                aw = close()
                self._driver = aw.__await__()
                self._closing = True
                return CONTINUE
        except Exception as exc:
            report_callback_error("fastpipe: closing the source after cancellation failed", exc, pipe)
        self._pipe = None
        pipe._release()
        raise StopAsyncIteration

    cdef int _closing_done(self, int status, PyObject* result) except -1:
        pipe = self._pipe
        self._pipe = None
        self._driver = None
        self._closing = False
        if status == PYGEN_RETURN:
            Py_DECREF_PTR(result)
        else:
            try:
                fastpipe_raise_pending()
            except Exception as exc:
                report_callback_error("fastpipe: closing the source after cancellation failed", exc, pipe)
            except BaseException:
                pipe._release()
                raise
        pipe._release()
        raise StopAsyncIteration


cdef int _pull_am_send(_Pull pull, PyObject* arg, PyObject** presult) except -1:
    # The am_send slot. It returns PYGEN_RETURN (0), PYGEN_NEXT (1) or PYGEN_ERROR (-1 with the error set):
    # exactly the return convention of a Cython `except -1` function, so the slot points straight here.
    # The hot path is inline: an open pipe whose source answers at once never stores the read's driver.
    cdef PyObject* result = NULL
    cdef PyObject* driver
    cdef int status
    cdef Py_ssize_t size
    cdef Pipe pipe
    if pull._driver is not None:  # resuming a read that was waiting on a future
        status = PyIter_Send(<PyObject*>pull._driver, arg, &result)
        return pull._outcome(status, result, presult)
    pipe = pull._pipe
    if pipe is None:
        raise RuntimeError("cannot reuse already awaited coroutine")
    if pipe._pulling or pipe._state != STATE_OPEN or pipe._iterator is None:
        pull._begin(pipe)
    pipe._pulling = True
    driver = fastpipe_read_driver(<PyObject*>pipe._iterator)
    if driver == NULL:
        return pull._read_failed(None)
    status = PyIter_Send(driver, Py_None, &result)
    if status == PYGEN_RETURN and pipe._state == STATE_OPEN:
        size = fastpipe_chunk_size(result)
        if size >= 0:
            Py_DECREF_PTR(driver)
            pipe._pulling = False
            pipe.chunks += 1
            pipe.nbytes += size
            pull._pipe = None
            if pipe._taps is not None:
                pipe._observe(<object>result)
            presult[0] = result
            return PYGEN_RETURN
        if size == -1:
            PyErr_Clear()  # _outcome measures it again and meets the same error
    pull._driver = <object>driver
    Py_DECREF_PTR(driver)
    return pull._outcome(status, result, presult)


fastpipe_install_pull_slots(<PyObject*>_Pull, <void*>_pull_am_send)


cdef _call_done(Pipe pipe, callback):
    try:
        callback(pipe)
    except Exception as exc:
        report_callback_error("fastpipe: done callback failed", exc, pipe)


wrap = wrap_for(Pipe)
