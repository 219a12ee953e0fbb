# The compiled build of balance.py (Cython's pure-Python mode; see fastpipe/http/upstream.pxd): the proxy
# reports every attempt to its group, so the group and its servers are extension types and those reports
# C calls from the compiled request path.

cdef class Server:
    cdef public object url, address, failures, down_until
    cdef public Py_ssize_t in_flight


cdef class UpstreamGroup:
    cdef public object name, servers, balance, max_fails, fail_timeout, retries, _clock
    cdef public Py_ssize_t _next
    cdef public bint _least_connections

    cpdef started(self, Server server)
    cpdef finished(self, Server server)
