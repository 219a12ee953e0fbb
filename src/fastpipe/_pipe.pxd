# cython: language_level=3
# The state of a compiled Pipe, declared in one place: read this file to learn the state machine.

cimport cython
from cpython.object cimport PyObject

cdef enum PipeState:
    # idle -> open on the first pull (or feed); open -> one of the three ends; the ends are final.
    STATE_IDLE
    STATE_OPEN
    STATE_CLOSED
    STATE_ERRORED
    STATE_CANCELLED


@cython.final
cdef class Pipe:
    # Held strongly until _release(), the single exit (EOF, error, cancellation, or a dropped pipe).
    cdef object _source             # the async iterable; untouched until the first pull
    cdef object _iterator           # source.__aiter__(), from the first pull on
    cdef object _owner              # what must outlive the body: the upstream response or exchange
    cdef object _on_release         # called once with the pipe, after the owner is dropped
    cdef list _taps                 # synchronous observers per chunk, or None (the common case); replaced,
                                    # never changed in place (_observe iterates the list a chunk arrived with)
    cdef list _done_callbacks       # called once with the pipe after on_release, or None
    cdef bint _released

    cdef PipeState _state
    cdef bint _pulling              # a pull's read is in flight (a second concurrent pull is an error)
    cdef object _exception          # what an errored pipe met; later pulls raise PipeError from it
    cdef object _end_reason         # the EndReason whoever finished the pipe gave; None: derived from state
    cdef bint _draining             # read on after its client left: a clean end is "drained"
    cdef object _on_disconnect      # the DisconnectPolicy sinks apply when the client leaves
    cdef readonly long long chunks
    cdef readonly long long nbytes

    cdef _Pull _spare_pull          # reused awaitable: no allocation per chunk

    # push face: fed by a protocol's callbacks, delivered to a sink or to `async for`
    cdef bint _pushed
    cdef bint _paused
    cdef bint _flushing             # connect() is writing the queued chunks to its sink ...
    cdef bint _paused_in_flush      # ... and the sink asked to pause meanwhile: that pause is the sink's
    cdef object _producer           # has pause_reading()/resume_reading(); an asyncio transport fits
    cdef object _sink               # has write(chunk) and end(pipe)
    cdef object _sink_write         # bound sink.write, set once connect() has flushed the queue
    cdef object _queue              # deque of chunks waiting for an `async for` consumer (sized again in C
                                    # when taken: cheaper than queueing (chunk, size) tuples, measured);
                                    # None until a chunk must wait or a pull begins
    cdef Py_ssize_t _queued_bytes
    cdef Py_ssize_t _high_water
    cdef Py_ssize_t _low_water
    cdef object _pending_end        # _EOF or the fed exception, delivered after the queued chunks
    cdef object _waiter             # the future a pull of a pushed pipe waits on

    cdef object __weakref__

    cdef int _setup(self, object source, object owner, object on_release, object on_disconnect) except -1
    # the push face's per-chunk calls, C calls from the compiled request path (http/upstream.pxd)
    cpdef feed(self, chunk)
    cpdef feed_eof(self)
    cpdef connect(self, sink)
    cdef int _release(self) except -1
    cdef int _observe(self, object chunk) except -1
    cdef bint _still_attached(self, object observer, list dropped) except -1
    cdef list _detach(self, object observer, object exc, list dropped)
    cdef int _raise_finished(self) except -1
    cdef int _feed_end(self, object end) except -1
    cdef int _finish_pushed(self, object end) except -1
    cdef int _cancel_pushed(self) except -1
    cdef int _end_pushed(self) except -1
    cdef int _wake_puller(self) except -1
    cdef bint _write_to_sink(self, object write, object chunk, Py_ssize_t size) except -1


@cython.final
cdef class _Pull:
    # The awaitable of one pull. Its am_send slot is filled at import (see _pull_am_send), so a chunk is
    # returned by value instead of by raising StopIteration. One spare per pipe is reused while nobody
    # else holds it.
    cdef Pipe _pipe                 # the pipe being pulled; None once this pull is over (or unused)
    cdef object _driver             # iterator that drives the awaited read, or the iterator's aclose()
    cdef bint _closing              # _driver is the aclose() that finishes a deferred cancellation

    cdef int _begin(self, Pipe pipe) except -1
    cdef int _outcome(self, int status, PyObject* result, PyObject** presult) except -1
    cdef int _read_failed(self, object error) except -1
    cdef int _start_closing(self) except -1
    cdef int _closing_done(self, int status, PyObject* result) except -1

