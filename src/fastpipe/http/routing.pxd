# The compiled build of routing.py (Cython's pure-Python mode; see upstream.pxd): a route and a server
# link become extension types, so the compiled protocols read what they need per request as C fields.

cdef class ServerLink:
    cdef public object address, group, host_line, pool, server, tls, url


cdef class ProxyRoute:
    cdef public object config, drain, group, host_line, limits, links, max_body, name, route
    cdef public object set_lines, set_names, timeouts, usage
    cdef public ServerLink only_link
    cdef public bint rewrite_host, strip_prefix
