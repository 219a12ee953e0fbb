# The compiled build of exchange.py (Cython's pure-Python mode; see upstream.pxd): the exchange becomes an
# extension type, so the compiled protocols on both sides read and write its fields as C fields.

from fastpipe.http.routing cimport ProxyRoute, ServerLink

cdef class Exchange:
    cdef public object client, target, method, upgrade, head, local, body_pending, request, hook_task
    cdef public ProxyRoute route
    cdef public ServerLink link
    cdef public object tried, replay, upstream, upstream_status, pipe, status, end_reason, detail
    cdef public object usage, tag
    cdef public Py_ssize_t content_length, body_pending_size, request_body_bytes, request_bytes, request_chunks
    cdef public Py_ssize_t attempts
    cdef public bint http10, keep_alive, head_only, chunked, request_done, in_flight, retried, interim_sent
    cdef public bint chunked_body, client_keep_alive, close_delimited
    cdef public double started, first_byte
    cdef object __weakref__
