# The compiled build of routing.py (Cython's pure-Python mode; see upstream.pxd): a route and a server
# link become extension types, so the compiled protocols read what they need per request as C fields.

from fastpipe.gateway.balance cimport Server, UpstreamGroup

cdef class ServerLink:
    cdef public object address, host_line, pool, tls, url
    cdef public Server server
    cdef public UpstreamGroup group


cdef class ProxyRoute:
    cdef public UpstreamGroup group
    cdef public object config, drain, host_line, limits, links, max_body, name, route
    cdef public object set_lines, set_names, timeouts, usage
    cdef public ServerLink only_link
    cdef public bint rewrite_host, strip_prefix
