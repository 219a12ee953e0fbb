# The compiled build of read_gate.py (Cython's pure-Python mode; see upstream.pxd): the client connection's
# read gate is an extension type, its reasons a C int.

cdef class ReadGate:
    cdef public object _transport
    cdef public int _reasons
    cdef public bint input_ended

    cpdef pause(self, int reason)
    cpdef resume(self, int reason)
    cpdef bint paused_for(self, int reason)
