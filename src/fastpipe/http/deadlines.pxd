# The compiled build of deadlines.py (Cython's pure-Python mode; see upstream.pxd): a connection's deadlines
# are C fields that the compiled protocol arms with C calls on every request.

from fastpipe.http cimport clock

cdef class ConnectionDeadlines:
    cdef public tuple timeouts
    cdef public object _on_stage_expired, _on_send_expired
    cdef public double deadline, stage, send
    cdef public int kind

    cpdef arm(self, int kind, double now=*)
