# What the compiled request-path modules get for `clock.monotonic` when they cimport this module: a C
# function (this module's .py is never compiled; it is the pure-Python build's and says why).

cdef extern from *:
    """
    #include <time.h>

    static inline double fastpipe_monotonic(void) {
    #if defined(__linux__) && defined(CLOCK_MONOTONIC)
        struct timespec now;
        if (clock_gettime(CLOCK_MONOTONIC, &now) == 0) {
            return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
        }
    #endif
        {
            static PyObject *monotonic = NULL;  /* time.monotonic, looked up once */
            PyObject *reading;
            double seconds;
            if (monotonic == NULL) {
                PyObject *time = PyImport_ImportModule("time");
                if (time == NULL) {
                    return -1.0;
                }
                monotonic = PyObject_GetAttrString(time, "monotonic");
                Py_DECREF(time);
                if (monotonic == NULL) {
                    return -1.0;
                }
            }
            reading = PyObject_CallNoArgs(monotonic);
            if (reading == NULL) {
                return -1.0;
            }
            seconds = PyFloat_AsDouble(reading);
            Py_DECREF(reading);
            return seconds;
        }
    }
    """
    double monotonic "fastpipe_monotonic"() except? -1.0
