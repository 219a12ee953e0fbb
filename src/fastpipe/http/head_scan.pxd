# What the compiled request-path modules get for `head_scan`'s functions when they cimport it: C
# functions over the bytes (this module's .py is never compiled; it is the pure-Python build's, and says
# what each returns). No byte past the end of the bytes object is ever read.

cdef extern from *:
    """
    #include <strings.h>

    static inline Py_ssize_t fastpipe_lean_head_end(PyObject *data, Py_ssize_t start) {
        const char *base = PyBytes_AS_STRING(data), *stop = base + PyBytes_GET_SIZE(data);
        const char *line = base + start, *cr;
        int first = 1;
        if (start < 0 || line >= stop || *line == '\\r' || *line == '\\n') {
            return -1;
        }
        for (;;) {
            cr = memchr(line, '\\r', stop - line);
            if (cr == NULL || cr + 1 >= stop || cr[1] != '\\n') {
                return -1;  /* not all here, or a CR without its LF */
            }
            if (!first) {
                if (cr == line) {
                    return cr + 2 - base;  /* the blank line */
                }
                if (cr - line >= 18 && (line[0] | 0x20) == 't' && strncasecmp(line, "transfer-encoding:", 18) == 0) {
                    return -1;
                }
            }
            first = 0;
            line = cr + 2;
        }
    }

    static inline int fastpipe_append_span(PyObject *fields, const char *at, Py_ssize_t size) {
        PyObject *span = PyBytes_FromStringAndSize(at, size);
        int failed;
        if (span == NULL) {
            return -1;
        }
        failed = PyList_Append(fields, span);
        Py_DECREF(span);
        return failed;
    }

    /* A name the proxy forwards unread: letters, digits and '-' (one letter or digit at least), and not
       one of the lower-case specials in any case. */
    static inline int fastpipe_forwarded_unread(const char *name, Py_ssize_t size, PyObject *specials) {
        Py_ssize_t index;
        int alnum = 0;
        PyObject *special;
        for (index = 0; index < size; index++) {
            char c = name[index];
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
                alnum = 1;
            } else if (c != '-') {
                return 0;
            }
        }
        if (!alnum) {
            return 0;
        }
        for (index = 0; index < PyTuple_GET_SIZE(specials); index++) {
            special = PyTuple_GET_ITEM(specials, index);
            if (PyBytes_GET_SIZE(special) == size && strncasecmp(PyBytes_AS_STRING(special), name, size) == 0) {
                return 0;
            }
        }
        return 1;
    }

    static inline PyObject *fastpipe_read_head(PyObject *data, Py_ssize_t start, PyObject *parts, PyObject *specials, int request, int runs) {
        const char *base = PyBytes_AS_STRING(data), *stop = base + PyBytes_GET_SIZE(data);
        const char *at, *space, *colon, *cr, *value, *run = NULL;
        Py_ssize_t count = 0, size = 0, index;
        PyObject *fields, *item;
        static PyObject *colon_space = NULL, *crlf = NULL;  /* made once, kept for the process's life */
        if (colon_space == NULL && (colon_space = PyBytes_FromString(": ")) == NULL) {
            return NULL;
        }
        if (crlf == NULL && (crlf = PyBytes_FromString("\\r\\n")) == NULL) {
            return NULL;
        }
        if (start < 0 || start > stop - base) {
            PyErr_SetString(PyExc_ValueError, "start outside the bytes");
            return NULL;
        }
        if ((fields = PyList_New(4)) == NULL) {
            return NULL;
        }
        for (index = 0; index < 4; index++) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(fields, index, Py_None);
        }
        for (at = base + start; at < stop && (*at == '\\r' || *at == '\\n'); at++) {
        }
        cr = memchr(at, '\\r', stop - at);  /* the start line's end */
        if (cr == NULL) {
            goto malformed;
        }
        if (request) {
            space = memchr(at, ' ', cr - at);  /* after the method */
            if (space == NULL) {
                goto malformed;
            }
            for (at = space; at < cr && *at == ' '; at++) {
            }
            space = memchr(at, ' ', cr - at);  /* after the target, if a version follows */
            if ((item = PyBytes_FromStringAndSize(at, (space == NULL ? cr : space) - at)) == NULL) {
                goto failed;
            }
            PyList_SetItem(fields, 0, item);
        }
        for (at = cr + 2; at < stop && *at != '\\r'; at = cr + 2) {
            cr = memchr(at, '\\r', stop - at);
            colon = cr == NULL ? NULL : memchr(at, ':', cr - at);  /* within this line only */
            if (colon == NULL) {
                goto malformed;
            }
            for (value = colon + 1; value < cr && (*value == ' ' || *value == '\\t'); value++) {
            }
            if (fastpipe_forwarded_unread(at, colon - at, specials)) {
                if (runs) {
                    run = run == NULL ? at : run;  /* its line joins the run of lines forwarded as they came */
                } else if (fastpipe_append_span(parts, at, colon - at) < 0
                    || PyList_Append(parts, colon_space) < 0
                    || fastpipe_append_span(parts, value, cr - value) < 0
                    || PyList_Append(parts, crlf) < 0) {
                    goto failed;
                }
                count += 1;
                size += (colon - at) + (cr - value) + 4;
                continue;
            }
            if (run != NULL) {
                if (fastpipe_append_span(parts, run, at - run) < 0) {
                    goto failed;
                }
                run = NULL;
            }
            if (fastpipe_append_span(fields, at, colon - at) < 0 || fastpipe_append_span(fields, value, cr - value) < 0) {
                goto failed;
            }
        }
        if (run != NULL && fastpipe_append_span(parts, run, at - run) < 0) {
            goto failed;
        }
        if (at + 1 >= stop || at[1] != '\\n') {
            goto malformed;  /* no blank line */
        }
        if ((item = PyLong_FromSsize_t(count)) == NULL) {
            goto failed;
        }
        PyList_SetItem(fields, 1, item);
        if ((item = PyLong_FromSsize_t(size)) == NULL) {
            goto failed;
        }
        PyList_SetItem(fields, 2, item);
        if ((item = PyLong_FromSsize_t(at + 2 - base)) == NULL) {
            goto failed;
        }
        PyList_SetItem(fields, 3, item);
        return fields;
    malformed:
        PyErr_SetString(PyExc_ValueError, "not a head llhttp accepted");
    failed:
        Py_DECREF(fields);
        return NULL;
    }

    /* A Content-Length value llhttp accepted (digits, perhaps whitespace after them) as a number; -1 when
       it is more than a Py_ssize_t holds (llhttp takes up to 2**64 - 1) or, which llhttp prevents, not that. */
    static inline Py_ssize_t fastpipe_content_length(PyObject *value) {
        const char *at = PyBytes_AS_STRING(value), *stop = at + PyBytes_GET_SIZE(value), *digits = at;
        Py_ssize_t length = 0;
        for (; at < stop && *at >= '0' && *at <= '9'; at++) {
            if (length > (PY_SSIZE_T_MAX - (*at - '0')) / 10) {
                return -1;
            }
            length = length * 10 + (*at - '0');
        }
        if (at == digits) {
            return -1;
        }
        for (; at < stop && (*at == ' ' || *at == '\\t'); at++) {
        }
        return at == stop ? length : -1;
    }

    /* 11 or 10 when data begins with the request line "method SP target SP HTTP/1.1 CRLF" (or 1.0); else 0. */
    static inline int fastpipe_request_line_version(PyObject *data, PyObject *method, PyObject *target) {
        const char *at = PyBytes_AS_STRING(data);
        Py_ssize_t size = PyBytes_GET_SIZE(data), length = PyBytes_GET_SIZE(method);
        Py_ssize_t version = length + 1 + PyBytes_GET_SIZE(target);  /* where " HTTP/1.x" would begin */
        if (version + 11 > size || memcmp(at, PyBytes_AS_STRING(method), length) != 0) {
            return 0;
        }
        at += version;
        if (memcmp(at, " HTTP/1.", 8) != 0 || at[9] != '\\r' || at[10] != '\\n') {
            return 0;
        }
        return at[8] == '1' ? 11 : at[8] == '0' ? 10 : 0;
    }

    /* Plain heads: every byte in a conservative subset of what llhttp accepts, and none of the fields
       llhttp acts on itself (beyond a response's one Content-Length and a simple Connection), so reading
       them needs no llhttp. Anything else goes to llhttp, which decides; the tests hold these functions to
       httptools over the fuzz corpus. */
    #define FASTPIPE_IN_TARGET 1
    #define FASTPIPE_IN_NAME 2
    #define FASTPIPE_IN_VALUE 4
    static unsigned char fastpipe_plain_bytes[256];

    static inline void fastpipe_plain_bytes_init(void) {
        const char *extra = "-._~!$&'()*+,;=:@/?%";
        int c;
        if (fastpipe_plain_bytes['a']) {
            return;
        }
        for (c = 0x20; c <= 0x7e; c++) {
            fastpipe_plain_bytes[c] = FASTPIPE_IN_VALUE;
        }
        fastpipe_plain_bytes['\\t'] = FASTPIPE_IN_VALUE;
        for (c = 0; c < 256; c++) {
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
                fastpipe_plain_bytes[c] |= FASTPIPE_IN_TARGET | FASTPIPE_IN_NAME;
            }
        }
        for (; *extra; extra++) {
            fastpipe_plain_bytes[(unsigned char)*extra] |= FASTPIPE_IN_TARGET;
        }
        fastpipe_plain_bytes['-'] |= FASTPIPE_IN_NAME;
        fastpipe_plain_bytes['_'] |= FASTPIPE_IN_NAME;
    }

    /* Whether the bytes from at to stop are the lower-case literal, in any case (its size is known here). */
    #define fastpipe_is(at, stop, literal) ((stop) - (at) == (Py_ssize_t)sizeof(literal) - 1 && strncasecmp((const char *)(at), (literal), sizeof(literal) - 1) == 0)

    /* The field line "name: value CRLF" at *at of a plain head: its name's end and its value's span (less
       the whitespace before it), *at moved past it; 0 when the line is not plain. */
    static inline int fastpipe_plain_field(const unsigned char **at, const unsigned char *stop,
                                           const unsigned char **name_end, const unsigned char **value,
                                           const unsigned char **value_end) {
        const unsigned char *cursor = *at;
        while (cursor < stop && (fastpipe_plain_bytes[*cursor] & FASTPIPE_IN_NAME)) {
            cursor++;
        }
        if (cursor == *at || cursor >= stop || *cursor != ':') {
            return 0;
        }
        *name_end = cursor++;
        while (cursor < stop && (*cursor == ' ' || *cursor == '\\t')) {
            cursor++;
        }
        *value = cursor;
        while (cursor < stop && (fastpipe_plain_bytes[*cursor] & FASTPIPE_IN_VALUE)) {
            cursor++;
        }
        *value_end = cursor;
        if (stop - cursor < 2 || cursor[0] != '\\r' || cursor[1] != '\\n') {
            return 0;
        }
        *at = cursor + 2;
        return 1;
    }

    /* (first, second): takes first's reference (NULL passes an error on), borrows second. */
    static inline PyObject *fastpipe_pair(PyObject *first, PyObject *second) {
        PyObject *pair;
        if (first == NULL || (pair = PyTuple_New(2)) == NULL) {
            Py_XDECREF(first);
            return NULL;
        }
        Py_INCREF(second);
        PyTuple_SET_ITEM(pair, 0, first);
        PyTuple_SET_ITEM(pair, 1, second);
        return pair;
    }

    /* A plain Content-Length value (1 to 18 digits, nothing else), and the first of its head. */
    static inline int fastpipe_plain_length(const unsigned char *value, const unsigned char *value_end, int *lengths) {
        const unsigned char *digit;
        if (++*lengths > 1 || value_end == value || value_end - value > 18) {
            return 0;
        }
        for (digit = value; digit < value_end; digit++) {
            if (*digit < '0' || *digit > '9') {
                return 0;
            }
        }
        return 1;
    }

    /* The field lines of a plain head from *at to its blank line (*at left on it): each plain, and none of
       the fields llhttp acts on itself but at most one plain Content-Length (*lengths counts them) and, in a
       response, a Connection of only "close" (which clears *keep_alive) or "keep-alive"; 0 when any is not. */
    static inline int fastpipe_plain_fields(const unsigned char **at, const unsigned char *stop, int response,
                                            int *lengths, int *keep_alive) {
        const unsigned char *name, *name_end, *value, *value_end;
        while (!(stop - *at >= 2 && (*at)[0] == '\\r' && (*at)[1] == '\\n')) {
            name = *at;
            if (!fastpipe_plain_field(at, stop, &name_end, &value, &value_end)
                || fastpipe_is(name, name_end, "transfer-encoding") || fastpipe_is(name, name_end, "proxy-connection")
                || fastpipe_is(name, name_end, "upgrade")) {
                return 0;
            }
            if (fastpipe_is(name, name_end, "content-length")) {
                if (!fastpipe_plain_length(value, value_end, lengths)) {
                    return 0;
                }
            } else if (fastpipe_is(name, name_end, "connection")) {
                if (!response) {
                    return 0;  /* a request's keep-alive is then llhttp's to say */
                }
                if (fastpipe_is(value, value_end, "close")) {
                    *keep_alive = 0;
                } else if (!fastpipe_is(value, value_end, "keep-alive")) {
                    return 0;
                }
            }
        }
        return 1;
    }

    static const char *fastpipe_plain_methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};
    #define FASTPIPE_PLAIN_METHODS 7
    static PyObject *fastpipe_plain_requests[FASTPIPE_PLAIN_METHODS][2];  /* (method, keep_alive), made once */

    static inline PyObject *fastpipe_plain_request_of(int method, int keep_alive) {
        PyObject **plain = &fastpipe_plain_requests[method][keep_alive];
        if (*plain == NULL) {
            *plain = fastpipe_pair(PyBytes_FromString(fastpipe_plain_methods[method]), keep_alive ? Py_True : Py_False);
            if (*plain == NULL) {
                return NULL;
            }
        }
        Py_INCREF(*plain);
        return *plain;
    }

    /* (method, keep_alive) of the request head from start to end (just past its blank line, as
       fastpipe_lean_head_end found it) when it is plain: a method of the list, an origin-form target,
       HTTP/1.1 or 1.0, at most one Content-Length, of at most 18 digits, and no Transfer-Encoding,
       Connection, Proxy-Connection or Upgrade field (so no upgrade, and the version alone says
       keep-alive); else None. */
    static inline PyObject *fastpipe_plain_request(PyObject *data, Py_ssize_t start, Py_ssize_t end) {
        const unsigned char *base = (const unsigned char *)PyBytes_AS_STRING(data);
        const unsigned char *at = base + start, *stop = base + end;
        Py_ssize_t length = 0;
        int method, keep_alive, lengths = 0;
        fastpipe_plain_bytes_init();
        if (start < 0 || end > PyBytes_GET_SIZE(data) || start >= end) {
            Py_RETURN_NONE;
        }
        for (method = 0; method < FASTPIPE_PLAIN_METHODS; method++) {
            length = (Py_ssize_t)strlen(fastpipe_plain_methods[method]);
            if (stop - at > length && memcmp(at, fastpipe_plain_methods[method], length) == 0 && at[length] == ' ') {
                break;
            }
        }
        if (method == FASTPIPE_PLAIN_METHODS) {
            Py_RETURN_NONE;
        }
        at += length + 1;
        if (at >= stop || *at != '/') {
            Py_RETURN_NONE;
        }
        while (at < stop && (fastpipe_plain_bytes[*at] & FASTPIPE_IN_TARGET)) {
            at++;
        }
        if (stop - at < 11 || memcmp(at, " HTTP/1.", 8) != 0 || (at[8] != '1' && at[8] != '0') || at[9] != '\\r' || at[10] != '\\n') {
            Py_RETURN_NONE;
        }
        keep_alive = at[8] == '1';
        at += 11;
        if (!fastpipe_plain_fields(&at, stop, 0, &lengths, &keep_alive) || stop - at != 2) {
            Py_RETURN_NONE;  /* (and the blank line fastpipe_lean_head_end found is the first) */
        }
        return fastpipe_plain_request_of(method, keep_alive);
    }

    /* (status, keep_alive) of the response head at the start of data when it is plain and all there:
       HTTP/1.1, a status of 200-599, exactly one Content-Length of at most 18 digits, a Connection of only
       "close" or "keep-alive" if any, and no Transfer-Encoding, Proxy-Connection or Upgrade field; else
       None. */
    static inline PyObject *fastpipe_plain_response(PyObject *data) {
        const unsigned char *at = (const unsigned char *)PyBytes_AS_STRING(data);
        const unsigned char *stop = at + PyBytes_GET_SIZE(data), *digit;
        int status, lengths = 0, keep_alive = 1;
        fastpipe_plain_bytes_init();
        if (stop - at < 13 || memcmp(at, "HTTP/1.1 ", 9) != 0 || at[12] != ' ') {
            Py_RETURN_NONE;
        }
        for (status = 0, digit = at + 9; digit < at + 12; digit++) {
            if (*digit < '0' || *digit > '9') {
                Py_RETURN_NONE;
            }
            status = status * 10 + (*digit - '0');
        }
        if (status < 200 || status > 599) {
            Py_RETURN_NONE;
        }
        for (at += 13; at < stop && (fastpipe_plain_bytes[*at] & FASTPIPE_IN_VALUE); at++) {
        }
        if (stop - at < 2 || at[0] != '\\r' || at[1] != '\\n') {
            Py_RETURN_NONE;
        }
        at += 2;
        if (!fastpipe_plain_fields(&at, stop, 1, &lengths, &keep_alive) || lengths != 1) {
            Py_RETURN_NONE;
        }
        return fastpipe_pair(PyLong_FromLong(status), keep_alive ? Py_True : Py_False);
    }

    /* Whether data from start on is one or more whole chunks of a chunked body, each "SIZE CRLF data CRLF"
       with SIZE 1 to 15 hex digits and no extension (so not the last chunk): a parser between chunks before
       them is between chunks after them, and llhttp need not read them. */
    static inline int fastpipe_whole_chunks(PyObject *data, Py_ssize_t start) {
        const unsigned char *base = (const unsigned char *)PyBytes_AS_STRING(data), *at = base + start, *digits;
        const unsigned char *stop = base + PyBytes_GET_SIZE(data);
        Py_ssize_t length;
        int digit;
        if (start < 0 || at >= stop) {
            return 0;
        }
        while (at < stop) {
            for (length = 0, digits = at; at < stop && at - digits <= 15; at++) {
                digit = *at >= '0' && *at <= '9' ? *at - '0' : (*at | 0x20) >= 'a' && (*at | 0x20) <= 'f' ? (*at | 0x20) - 'a' + 10 : -1;
                if (digit < 0) {
                    break;
                }
                length = length * 16 + digit;
            }
            if (at == digits || at - digits > 15 || length == 0 || stop - at < 2 || at[0] != '\\r' || at[1] != '\\n') {
                return 0;
            }
            at += 2;
            if (stop - at < length + 2 || at[length] != '\\r' || at[length + 1] != '\\n') {
                return 0;
            }
            at += length + 2;
        }
        return 1;
    }
    """
    Py_ssize_t lean_head_end "fastpipe_lean_head_end"(bytes data, Py_ssize_t start)
    int request_line_version "fastpipe_request_line_version"(bytes data, bytes method, bytes target)
    Py_ssize_t content_length "fastpipe_content_length"(bytes value)
    list read_head "fastpipe_read_head"(bytes data, Py_ssize_t start, list parts, tuple specials, bint request, bint runs)
    tuple plain_request "fastpipe_plain_request"(bytes data, Py_ssize_t start, Py_ssize_t end)
    tuple plain_response "fastpipe_plain_response"(bytes data)
    bint whole_chunks "fastpipe_whole_chunks"(bytes data, Py_ssize_t start)
