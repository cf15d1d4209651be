/* A one-pass reader for the commonest JSON Lines source: every line an object with
 * one key, the same on every line, whose value is a string ({"text": "..."}).
 *
 * It gives the column as Arrow lays out a string array (int32 offsets, then the
 * unescaped UTF-8 bytes back to back), in one copy and without the GIL. Any line
 * outside that shape, and anything the general reader might treat differently
 * (a blank line, "\r", a bad or lone-surrogate escape, "\u0000", a control byte,
 * invalid UTF-8), gives None: the caller then parses the batch with pyarrow's
 * reader, so the result is always the one pyarrow gives (tests/data/test_data_jsonl.py
 * compares them). So does a batch whose every value might be a date and time:
 * pyarrow reads a column of ISO 8601 strings as timestamps. The scan looks at 8 bytes at a time for the few bytes that
 * need a look of their own ('"', '\\', controls, non-ASCII). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether any byte of w is zero (exact as an any-test). */
static inline uint64_t has_zero(uint64_t w) { return (w - ONES) & ~w & HIGHS; }

/* Whether any byte of w is '"', '\\', below 0x20 or above 0x7f. */
static inline uint64_t needs_look(uint64_t w) {
    return has_zero(w ^ (ONES * '"')) | has_zero(w ^ (ONES * '\\')) | ((w - ONES * 0x20) & ~w & HIGHS)
           | (w & HIGHS);
}

static int hex4(const uint8_t *p, uint32_t *cp) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return -1;
    }
    *cp = v;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (its lead byte >= 0x80), or 0. */
static Py_ssize_t utf8_len(const uint8_t *p, const uint8_t *end) {
    uint8_t c = p[0];
    Py_ssize_t n;
    uint8_t lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (end - p < n || p[1] < lo || p[1] > hi) return 0;
    for (Py_ssize_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

static uint8_t *put_utf8(uint8_t *o, uint32_t cp) {
    if (cp < 0x80) *o++ = (uint8_t)cp;
    else if (cp < 0x800) {
        *o++ = (uint8_t)(0xC0 | (cp >> 6));
        *o++ = (uint8_t)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (uint8_t)(0xE0 | (cp >> 12));
        *o++ = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (uint8_t)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (uint8_t)(0xF0 | (cp >> 18));
        *o++ = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (uint8_t)(0x80 | (cp & 0x3F));
    }
    return o;
}

/* The string whose opening quote is just before *pp, unescaped to *op; on success
 * both move past it (and past the closing quote). Returns -1 for anything else. */
static int read_string(const uint8_t **pp, const uint8_t *end, uint8_t **op) {
    const uint8_t *p = *pp;
    uint8_t *o = *op;
    for (;;) {
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (needs_look(w)) break;
            memcpy(o, p, 8);
            p += 8;
            o += 8;
        }
        if (p >= end) return -1;
        uint8_t c = *p;
        if (c == '"') {
            *pp = p + 1;
            *op = o;
            return 0;
        }
        if (c < 0x20) return -1;
        if (c >= 0x80) {
            Py_ssize_t n = utf8_len(p, end);
            if (!n) return -1;
            memcpy(o, p, (size_t)n);
            p += n;
            o += n;
        } else if (c != '\\') {
            *o++ = c;
            p++;
        } else {
            if (end - p < 2) return -1;
            uint8_t e = p[1];
            p += 2;
            switch (e) {
                case '"': case '\\': case '/': *o++ = e; break;
                case 'b': *o++ = '\b'; break;
                case 'f': *o++ = '\f'; break;
                case 'n': *o++ = '\n'; break;
                case 'r': *o++ = '\r'; break;
                case 't': *o++ = '\t'; break;
                case 'u': {
                    uint32_t cp, lo;
                    if (end - p < 4 || hex4(p, &cp) < 0 || cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) return -1;
                    p += 4;
                    if (cp >= 0xD800 && cp <= 0xDBFF) { /* a pair, or the general reader decides */
                        if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) < 0
                            || lo < 0xDC00 || lo > 0xDFFF)
                            return -1;
                        p += 6;
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    }
                    o = put_utf8(o, cp);
                    break;
                }
                default: return -1;
            }
        }
    }
}

/* Whether the string s[0:n] might be an ISO 8601 date and time that pyarrow reads as a
 * timestamp (a superset: 4 digits, '-', and a length it could have). */
static int maybe_timestamp(const uint8_t *s, Py_ssize_t n) {
    if (n < 10 || n > 64 || s[4] != '-') return 0;
    for (int i = 0; i < 4; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

static const uint8_t *skip_blanks(const uint8_t *p, const uint8_t *end) {
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    return p;
}

/* The scan of buf[0:len]; fills data and offs (rows + 1 slots), sets *key / *key_len
 * (pointing into buf), *rows and *used. Returns 0, or -1 when the batch is not of the shape. */
static int scan(const uint8_t *buf, Py_ssize_t len, uint8_t *data, int32_t *offs, Py_ssize_t max_rows,
                const uint8_t **key, Py_ssize_t *key_len, Py_ssize_t *rows, Py_ssize_t *used) {
    const uint8_t *p = buf, *end = buf + len;
    uint8_t *o = data;
    Py_ssize_t n = 0;
    int all_times = 1; /* every value so far might be a timestamp */
    *key = NULL;
    offs[0] = 0;
    while (p < end) {
        p = skip_blanks(p, end);
        if (p >= end || *p != '{') return -1; /* a blank line too: the general reader decides */
        p = skip_blanks(p + 1, end);
        if (p >= end || *p != '"') return -1;
        const uint8_t *k = ++p;
        while (p < end && *p != '"' && *p != '\\' && *p >= 0x20) p++;
        if (p >= end || *p != '"') return -1;
        if (*key == NULL) {
            if (p == k) return -1; /* an empty key: the general reader decides */
            *key = k;
            *key_len = p - k;
        } else if (p - k != *key_len || memcmp(k, *key, (size_t)*key_len) != 0) {
            return -1;
        }
        p = skip_blanks(p + 1, end);
        if (p >= end || *p != ':') return -1;
        p = skip_blanks(p + 1, end);
        if (p >= end || *p != '"') return -1;
        p++;
        uint8_t *value = o;
        if (read_string(&p, end, &o) < 0) return -1;
        if (all_times && !maybe_timestamp(value, o - value)) all_times = 0;
        p = skip_blanks(p, end);
        if (p >= end || *p != '}') return -1;
        p = skip_blanks(p + 1, end);
        if (p < end) {
            if (*p != '\n') return -1;
            p++;
        }
        if (++n > max_rows || o - data > INT32_MAX) return -1;
        offs[n] = (int32_t)(o - data);
    }
    if (n == 0 || all_times) return -1; /* all_times: pyarrow may read a timestamp column */
    *rows = n;
    *used = o - data;
    return 0;
}

/* one_string_column(buf) -> (key, rows, offsets, data) or None: see the top of the file.
 * key is the bytes of the key as written, offsets the bytes of rows + 1 int32. */
static PyObject *one_string_column(PyObject *self, PyObject *args) {
    Py_buffer in;
    if (!PyArg_ParseTuple(args, "y*", &in)) return NULL;
    PyObject *res = NULL, *data = NULL, *offs = NULL;
    /* the shortest line, {"":""} and its newline, is 8 bytes: at most len / 8 + 1 rows */
    Py_ssize_t max_rows = in.len / 8 + 1, rows = 0, used = 0, key_len = 0;
    const uint8_t *key = NULL;
    data = PyBytes_FromStringAndSize(NULL, in.len ? in.len : 1);
    offs = PyBytes_FromStringAndSize(NULL, (max_rows + 1) * (Py_ssize_t)sizeof(int32_t));
    if (!data || !offs) goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = scan(in.buf, in.len, (uint8_t *)PyBytes_AS_STRING(data), (int32_t *)PyBytes_AS_STRING(offs),
                  max_rows, &key, &key_len, &rows, &used);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        Py_INCREF(Py_None);
        res = Py_None;
        goto done;
    }
    if (_PyBytes_Resize(&data, used) < 0 || _PyBytes_Resize(&offs, (rows + 1) * (Py_ssize_t)sizeof(int32_t)) < 0)
        goto done;
    res = Py_BuildValue("(y#nOO)", (const char *)key, key_len, rows, offs, data);
done:
    Py_XDECREF(data);
    Py_XDECREF(offs);
    PyBuffer_Release(&in);
    return res;
}

static PyMethodDef methods[] = {
    {"one_string_column", one_string_column, METH_VARARGS,
     "one_string_column(buf) -> (key, rows, offsets, data) for JSON Lines whose every line is "
     "{key: string} with one key, else None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jsonl", NULL, -1, methods};

PyMODINIT_FUNC PyInit__jsonl(void) { return PyModule_Create(&module); }
