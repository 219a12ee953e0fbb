# The compiled build of upstream.py (Cython's pure-Python mode; the .py stays the one source and runs as it
# is when FASTPIPE_NO_EXTENSIONS is set). The connection becomes an extension type: its state C fields,
# read and written without a dictionary, and the steps of each response C calls. See docs/architecture.md.

cimport cython

from fastpipe.http cimport head_scan, joining

from fastpipe._pipe cimport Pipe as CompiledPipe
from fastpipe.http.exchange cimport Exchange

cdef int HEAD, LENGTH, CHUNKED, EMPTY, UNTIL_CLOSE, ENCODE, TUNNEL
cdef Py_ssize_t _SLICE_COPY_LIMIT
cdef dict _KINDS, _KINDS_BY_SPELLING, _STATUS_LINES
cdef tuple _SPECIALS

cdef class UpstreamPool

cpdef tuple plain_response(bytes data)
cpdef bint whole_chunks(bytes data, Py_ssize_t start) except -1

cdef class UpstreamConnection:
    cdef public UpstreamPool _pool
    cdef public object _parser, _transport, _released_callback
    cdef public CompiledPipe _pipe
    cdef public Exchange _exchange
    cdef public object _head_buf, _held_head, _parts, _transfer_encoding, _upgrade, _drop_names, _writelines
    cdef public int _mode, _spare_fd
    cdef public Py_ssize_t _scan, _content_length, _interim_bytes, _remaining
    cdef public bint _interim, _message_done, _desync, _keep_alive, _reusable, _body_unwanted, _write_paused
    cdef public bint closed, got_bytes, reused, _between_chunks, _tls
    cdef object __weakref__

    cpdef begin(self, Exchange exchange)
    cpdef on_message_begin(self)
    @cython.locals(parts=list, kind=int, length=Py_ssize_t)
    cdef _add_field(self, bytes name, bytes value)
    @cython.locals(fields=list, index=Py_ssize_t)
    cdef Py_ssize_t _read_head(self) except -1
    cpdef bint _feed_parser(self, data) except -1
    cpdef _head_complete(self, int status, bint keep_alive)
    cpdef bint _plain_head(self, int status, bint keep_alive) except -1
    @cython.locals(buf=bytes, scan=Py_ssize_t, rest=Py_ssize_t, plain=tuple)
    cpdef _head_piece(self, data)
    cpdef _head_unfinished(self)
    @cython.locals(pipe=CompiledPipe)
    cpdef _body_piece(self, piece)
    @cython.locals(pipe=CompiledPipe)
    cpdef _complete(self)
    cpdef _drop_spare(self)


cdef class UpstreamPool:
    cdef public object host, tls, limits, loop, _factory, _idle, _all, _connecting
    cdef public int port
    cdef public bint closing

    @cython.locals(connection=UpstreamConnection)
    cpdef acquire(self)
    cpdef release(self, UpstreamConnection connection)
