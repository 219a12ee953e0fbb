/* C helpers of the compiled Pipe (_pipe.pyx includes this file; it ships in the sdist beside it).
   Each reports failure as NULL / -1 with the error set, so the caller chooses where it goes. */
#ifndef FASTPIPE_PIPE_HELPERS_H
#define FASTPIPE_PIPE_HELPERS_H

#include <Python.h>

static PyObject *fastpipe_read_driver(PyObject *iterator) {
    /* What drives `await anext(iterator)`: the coroutine itself, or the awaitable's __await__(). */
    PyTypeObject *type = Py_TYPE(iterator);
    PyObject *awaitable, *driver;
    if (type->tp_as_async == NULL || type->tp_as_async->am_anext == NULL) {
        PyErr_Format(PyExc_TypeError, "'%.200s' object is not an async iterator", type->tp_name);
        return NULL;
    }
    awaitable = type->tp_as_async->am_anext(iterator);
    if (awaitable == NULL || PyCoro_CheckExact(awaitable)) {
        return awaitable;
    }
    type = Py_TYPE(awaitable);
    if (type->tp_as_async == NULL || type->tp_as_async->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression", type->tp_name);
        Py_DECREF(awaitable);
        return NULL;
    }
    driver = type->tp_as_async->am_await(awaitable);
    Py_DECREF(awaitable);
    if (driver != NULL && !PyIter_Check(driver)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(driver)->tp_name);
        Py_CLEAR(driver);
    }
    return driver;
}

static Py_ssize_t fastpipe_chunk_size(PyObject *chunk) {
    /* Bytes in a chunk (a memoryview counts bytes, not items); -1 with an error set, or -2 with no
       error set when the object is not bytes-like at all. */
    Py_buffer view;
    Py_ssize_t size;
    if (PyBytes_CheckExact(chunk)) return PyBytes_GET_SIZE(chunk);
    if (PyByteArray_CheckExact(chunk)) return PyByteArray_GET_SIZE(chunk);
    if (PyObject_GetBuffer(chunk, &view, PyBUF_FULL_RO) < 0) {
        if (!PyObject_CheckBuffer(chunk)) {
            PyErr_Clear();
            return -2;
        }
        return -1;
    }
    size = view.len;
    PyBuffer_Release(&view);
    return size;
}

static sendfunc fastpipe_pull_send = NULL;

static PyObject *fastpipe_pull_iternext(PyObject *self) {
    /* tp_iternext in C, for interpreters whose `await` does not use am_send (3.12+): the chunk still
       has to travel inside StopIteration there, but with no Python-level call on the way. */
    PyObject *result = NULL, *stop;
    int status = (int)fastpipe_pull_send(self, Py_None, &result);
    if (status == 1) return result;
    if (status == -1) return NULL;
    stop = PyObject_CallOneArg(PyExc_StopIteration, result);
    Py_DECREF(result);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static int fastpipe_install_pull_slots(PyObject *type_object, void *send) {
    PyTypeObject *type = (PyTypeObject *)type_object;
    if (type->tp_as_async == NULL) {
        PyErr_SetString(PyExc_SystemError, "fastpipe: _Pull has no tp_as_async to extend");
        return -1;
    }
    fastpipe_pull_send = (sendfunc)send;
    type->tp_as_async->am_send = fastpipe_pull_send;
    type->tp_iternext = fastpipe_pull_iternext;
    PyType_Modified(type);
    return 0;
}

static int fastpipe_raise_pending(void) { return -1; }  /* the error is already set */

static int fastpipe_throw_into(PyObject *driver, PyObject *args, PyObject **presult) {
    /* driver.throw(*args) with the outcome as a PySendResult, like PyIter_Send. */
    PyObject *method, *result, *type, *value, *traceback;
    method = PyObject_GetAttrString(driver, "throw");
    if (method == NULL) return -1;
    result = PyObject_Call(method, args, NULL);
    Py_DECREF(method);
    if (result != NULL) {
        *presult = result;
        return 1;
    }
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) return -1;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    result = ((PyStopIterationObject *)value)->value;
    Py_INCREF(result);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    *presult = result;
    return 0;
}

#endif /* FASTPIPE_PIPE_HELPERS_H */
