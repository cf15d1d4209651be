/* The Python module: the Trie type (construction, encode of one text) and
 * the module init. The trie lives in _world_trie_core.c, the threaded
 * many-text methods in _world_trie_batch.c; _world_trie.h ties them together. */
#include "_world_trie.h"
#include <stdlib.h>

#define SMALL_TEXT 2048 /* bytes; encode() handles texts up to this on the stack */

static void Trie_dealloc(TrieObject *self) {
    free(self->nodes);
    free(self->edge_byte);
    free(self->dense);
    for (Py_ssize_t i = 0; i < self->n_ints; i++) Py_XDECREF(self->ints[i]);
    free(self->ints);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Trie_init(TrieObject *self, PyObject *args, PyObject *kwds) {
    PyObject *tokens;
    static char *kwlist[] = {"tokens", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &tokens)) return -1;
    if (self->nodes) {
        PyErr_SetString(PyExc_RuntimeError, "Trie is already built");
        return -1;
    }
    PyObject *seq = PySequence_Fast(tokens, "tokens must be a sequence of bytes or None");
    if (!seq) return -1;
    if (trie_build(self, seq) < 0) goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    self->ints = calloc((size_t)(n ? n : 1), sizeof(PyObject *));
    if (!self->ints) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(self->ints[i] = PyLong_FromSsize_t(i))) goto fail;
        self->n_ints = i + 1;
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

int as_bytes(PyObject *obj, const char **s, Py_ssize_t *len) {
    if (PyUnicode_Check(obj)) {
        *s = PyUnicode_AsUTF8AndSize(obj, len); /* cached on the str object */
        return *s ? 0 : -1;
    }
    if (PyBytes_Check(obj)) {
        *s = PyBytes_AS_STRING(obj);
        *len = PyBytes_GET_SIZE(obj);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "expected str or bytes, got %.100s", Py_TYPE(obj)->tp_name);
    return -1;
}

PyObject *to_list(const TrieObject *t, const int32_t *ids, Py_ssize_t n) {
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = t->ints[ids[i]]; /* ids come from the trie, so always < n_ints */
        Py_INCREF(v);
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

static PyObject *Trie_encode(TrieObject *self, PyObject *obj) {
    const char *s;
    Py_ssize_t len, n = 0, at = 0, got;
    if (as_bytes(obj, &s, &len) < 0) return NULL;
    if (len <= SMALL_TEXT) { /* short text: no heap buffer, and not worth releasing the GIL */
        int32_t small[SMALL_TEXT];
        got = encode_bytes(self, (const uint8_t *)s, len, small);
        return got < 0 ? (PyErr_SetString(PyExc_ValueError, "byte not in vocab"), NULL) : to_list(self, small, got);
    }
    /* Start near the usual ~4 bytes per id and grow, so a huge text does not
     * need 4 bytes of ids for every byte up front. */
    Py_ssize_t cap = len / 3 + 64;
    int32_t *out = malloc((size_t)cap * sizeof(int32_t)), *grown;
    if (!out) return PyErr_NoMemory();
    Py_INCREF(obj); /* keep the buffer alive while the GIL is released */
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        got = encode_span(self, (const uint8_t *)s, len, &at, out + n, cap - n);
        Py_END_ALLOW_THREADS
        if (got < 0 || at >= len) break;
        n += got;
        cap += cap / 2 + 64;
        if (!(grown = realloc(out, (size_t)cap * sizeof(int32_t)))) {
            free(out);
            Py_DECREF(obj);
            return PyErr_NoMemory();
        }
        out = grown;
    }
    Py_DECREF(obj);
    PyObject *res = got < 0 ? (PyErr_SetString(PyExc_ValueError, "byte not in vocab"), NULL)
                            : to_list(self, out, n + got);
    free(out);
    return res;
}

static PyObject *Trie_node_count(TrieObject *self, PyObject *unused) {
    return PyLong_FromUnsignedLong(self->n_nodes);
}

static PyMethodDef Trie_methods[] = {
    {"encode", (PyCFunction)Trie_encode, METH_O, "encode(text: str | bytes) -> list[int]"},
    {"encode_batch", (PyCFunction)Trie_encode_batch, METH_VARARGS,
     "encode_batch(texts: list[str | bytes], threads: int = 1) -> list[list[int]]"},
    {"encode_flat", (PyCFunction)Trie_encode_flat, METH_VARARGS,
     "encode_flat(texts: list[str | bytes], threads: int = 1) -> (bytes of int32 ids, bytes of int64 offsets)"},
    {"encode_spans", (PyCFunction)Trie_encode_spans, METH_VARARGS,
     "encode_spans(data, starts, lens, threads: int = 1) -> encode_flat of data[starts[i]:starts[i]+lens[i]]"},
    {"node_count", (PyCFunction)Trie_node_count, METH_NOARGS, "number of trie nodes"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TrieType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rwkv_plug.builtin_tokenizers._world_trie.Trie",
    .tp_doc = "Trie(tokens): tokens[i] is the bytes of id i, or None.",
    .tp_basicsize = sizeof(TrieObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Trie_init,
    .tp_dealloc = (destructor)Trie_dealloc,
    .tp_methods = Trie_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_world_trie", "Native byte trie for the RWKV world tokenizer.", -1, NULL,
};

PyMODINIT_FUNC PyInit__world_trie(void) {
    if (PyType_Ready(&TrieType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&TrieType);
    if (PyModule_AddObject(m, "Trie", (PyObject *)&TrieType) < 0) {
        Py_DECREF(&TrieType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
