# What the compiled request-path modules get for `joining.join_parts` when they cimport this module: a C
# function (this module's .py is never compiled; it is the pure-Python build's and the documentation).
# Every part is exact bytes in the proxy's heads; anything else goes to bytes.join, which says what is wrong.

cdef extern from *:
    """
    static inline PyObject *fastpipe_join_parts(PyObject *parts) {
        Py_ssize_t count = PyList_GET_SIZE(parts), total = 0, index;
        for (index = 0; index < count; index++) {
            PyObject *part = PyList_GET_ITEM(parts, index);
            if (!PyBytes_CheckExact(part)) {
                PyObject *empty = PyBytes_FromStringAndSize(NULL, 0), *joined;
                if (empty == NULL) {
                    return NULL;
                }
                joined = PyObject_CallMethod(empty, "join", "O", parts);
                Py_DECREF(empty);
                return joined;
            }
            total += PyBytes_GET_SIZE(part);
        }
        PyObject *joined = PyBytes_FromStringAndSize(NULL, total);
        if (joined == NULL) {
            return NULL;
        }
        char *at = PyBytes_AS_STRING(joined);
        for (index = 0; index < count; index++) {
            PyObject *part = PyList_GET_ITEM(parts, index);
            memcpy(at, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part));
            at += PyBytes_GET_SIZE(part);
        }
        return joined;
    }
    """
    bytes join_parts "fastpipe_join_parts"(list parts)
