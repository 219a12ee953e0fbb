# The compiled build of server.py (Cython's pure-Python mode; the .py stays the one source and runs as it is
# when FASTPIPE_NO_EXTENSIONS is set). The client connection's protocol becomes an extension type: its state
# C fields, and the steps of each request C calls. See docs/architecture.md.

cimport cython

from fastpipe.http cimport clock, head_scan, joining

from fastpipe._pipe cimport Pipe as CompiledPipe
from fastpipe.gateway.balance cimport Server
from fastpipe.http.deadlines cimport ConnectionDeadlines
from fastpipe.http.exchange cimport Exchange
from fastpipe.http.read_gate cimport ReadGate
from fastpipe.http.request_head cimport RequestHead
from fastpipe.http.routing cimport ProxyRoute, ServerLink
from fastpipe.http.upstream cimport UpstreamConnection, UpstreamPool

cdef class ProxyProtocol:
    cdef public object _proxy, _limits, _max_body, _loop, _parser, _transport, _peer, _forwarding
    cdef public object _routing, _queue, _pipe, _pending_head, _read, _line_read, _lean, _full
    cdef public Py_ssize_t _fed_at
    cdef public Exchange _parsing, _active, _upgrading
    cdef public RequestHead _head
    cdef public ReadGate _gate
    cdef public ConnectionDeadlines deadlines
    cdef public object _upgrade_held, _tunnel, _drain_timer, _deferred_reject, _write, _writelines
    cdef public Py_ssize_t _drain_left, _head_bytes
    cdef public object _health_path
    cdef public bint _recording, _observes_responses
    cdef public object _on_request
    cdef public ProxyRoute _only_route
    cdef public bint _write_paused, _lost, _draining, _in_head, _head_began, _message_ended, _lingering
    cdef public bint _plain_body, _field_runs
    cdef object __weakref__

    @cython.locals(route=ProxyRoute)
    cpdef _route(self, Exchange exchange, RequestHead head, method, http10, chunked)
    cpdef _send_body(self, Exchange exchange, piece)
    @cython.locals(size=Py_ssize_t, at=Py_ssize_t, end=Py_ssize_t, left=Py_ssize_t, head=RequestHead, exchange=Exchange, plain=tuple)
    cpdef _feed(self, bytes data)
    cpdef on_message_begin(self)
    cpdef on_body(self, bytes body)
    cpdef on_message_complete(self)
    @cython.locals(exchange=Exchange)
    cpdef _plain_message(self, bytes method, bint keep_alive)
    cpdef _lean_body(self, bytes piece, bint last)
    @cython.locals(exchange=Exchange, head=RequestHead)
    cpdef _head_complete(self, bytes method, bint keep_alive, bint lean, bint runs)
    @cython.locals(data=bytes, version=int)
    cpdef str _request_version(self, bytes method, bytes target)
    cpdef _start(self, Exchange exchange)
    @cython.locals(route=ProxyRoute, pool=UpstreamPool)
    cpdef _attempt(self, Exchange exchange, ServerLink link)
    cpdef _begin(self, Exchange exchange, UpstreamConnection connection)
    @cython.locals(link=ServerLink)
    cpdef _end_attempt(self, Exchange exchange)
    cpdef _await_head(self, Exchange exchange)
    cpdef _finish(self, Exchange exchange, reason)
    @cython.locals(server=Server)
    cpdef start_response(self, Exchange exchange, CompiledPipe pipe, list parts, bint close_delimited)
