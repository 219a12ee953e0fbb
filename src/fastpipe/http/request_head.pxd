# The compiled build of request_head.py (Cython's pure-Python mode; see upstream.pxd): the head under
# construction is an extension type, its per-header callback a C method.

cimport cython

from fastpipe.http cimport head_scan, joining
from fastpipe.http.routing cimport ProxyRoute

cdef dict _KINDS, _KINDS_BY_SPELLING
cdef tuple _SPECIALS

cdef class RequestHead:
    cdef public bytes target
    cdef public object parts, host, xff, connection_names, transfer_encoding, upgrade
    cdef public Py_ssize_t content_length, size, count, max_header_count, max_header_size
    cdef public bint connection_upgrade, underscores_in_headers

    cpdef reset(self)
    @cython.locals(parts=list, kind=int, length=Py_ssize_t)
    cpdef add_header(self, bytes name, bytes value)
    cpdef Py_ssize_t lean_end(self, bytes data, Py_ssize_t start)
    cpdef tuple plain_request(self, bytes data, Py_ssize_t start, Py_ssize_t end)
    @cython.locals(parts=list, fields=list, index=Py_ssize_t)
    cpdef read(self, bytes head, bint runs=*)
    cpdef tuple check(self, method, version)
    cpdef bytes upstream_bytes(self, method, http10, chunked, forwarding, route, target, tunnel=*)

cpdef bytes upstream_request_head(
    list parts, bytes method, bytes target, drop, host, xff, forwarding, ProxyRoute destination, forwarded_host,
    bint chunked, bint http10, tunnel
)
