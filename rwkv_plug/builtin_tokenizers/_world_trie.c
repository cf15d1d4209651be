/* Native greedy longest-prefix byte trie for the RWKV world tokenizer.
 *
 * The math is the same as rwkv_plug/builtin_tokenizers/world.py's pure-Python
 * fallback (which is the executable spec): UTF-8 encode, then repeatedly emit
 * the id of the longest vocab entry that is a prefix of the remaining bytes.
 *
 * Layout: a flattened trie. Each node's children are contiguous in the edge
 * arrays, sorted by byte; nodes with many children also get a 256-entry dense
 * table so the hot top levels are one load per byte. The GIL is released
 * while walking, and encode_batch spreads texts over pthreads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#define DENSE_MIN 6 /* nodes with more children than this get a dense table */
#define PARALLEL_MIN_BYTES (1 << 16)
#define SMALL_TEXT 2048 /* bytes; encode() handles texts up to this on the stack */

typedef struct {
    int32_t tok;      /* token id ending here, or -1 */
    uint32_t first;   /* index of first edge */
    uint32_t n;       /* number of children */
    int32_t dense;    /* offset into dense pool / 256, or -1 */
} Node;

typedef struct {
    PyObject_HEAD
    Node *nodes;
    uint8_t *edge_byte; /* edge e leads to node e: children are numbered contiguously */
    uint32_t *dense; /* 256 per dense node; 0 = no child (root is never a child) */
    uint32_t n_nodes;
    PyObject **ints; /* ints[id]: one shared int object per id, so lists need no allocation per token */
    Py_ssize_t n_ints;
} TrieObject;

/* ---- building ---------------------------------------------------------- */

typedef struct {
    int32_t tok;
    uint32_t first_child, next_sibling;
    uint8_t byte;
} TmpNode;

typedef struct {
    TmpNode *v;
    uint32_t n, cap;
} TmpTrie;

static int tmp_new(TmpTrie *t, uint8_t byte) {
    if (t->n == t->cap) {
        uint32_t cap = t->cap ? t->cap * 2 : 1024;
        TmpNode *v = realloc(t->v, (size_t)cap * sizeof(TmpNode));
        if (!v) return -1;
        t->v = v;
        t->cap = cap;
    }
    TmpNode *x = &t->v[t->n];
    x->tok = -1;
    x->first_child = x->next_sibling = 0;
    x->byte = byte;
    return (int)t->n++;
}

static int tmp_insert(TmpTrie *t, const uint8_t *s, Py_ssize_t len, int32_t tok) {
    uint32_t node = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        uint32_t c = t->v[node].first_child;
        while (c && t->v[c].byte != s[i]) c = t->v[c].next_sibling;
        if (!c) {
            int made = tmp_new(t, s[i]);
            if (made < 0) return -1;
            c = (uint32_t)made;
            /* children kept sorted by byte: insert in order */
            uint32_t *link = &t->v[node].first_child;
            while (*link && t->v[*link].byte < s[i]) link = &t->v[*link].next_sibling;
            t->v[c].next_sibling = *link;
            *link = c;
        }
        node = c;
    }
    t->v[node].tok = tok;
    return 0;
}

/* Flatten breadth-first so each node's children are contiguous. */
static int flatten(TrieObject *self, TmpTrie *t) {
    uint32_t n = t->n;
    uint32_t *order = malloc((size_t)n * sizeof(uint32_t));     /* new -> old */
    self->nodes = calloc(n, sizeof(Node));
    self->edge_byte = malloc(n);
    if (!order || !self->nodes || !self->edge_byte) {
        free(order);
        return -1;
    }
    uint32_t head = 0, tail = 1, n_dense = 0;
    order[0] = 0;
    while (head < tail) {
        uint32_t old = order[head];
        Node *nd = &self->nodes[head];
        nd->tok = t->v[old].tok;
        nd->first = tail; /* edge index == new node index of the child */
        nd->n = 0;
        nd->dense = -1;
        for (uint32_t c = t->v[old].first_child; c; c = t->v[c].next_sibling) {
            self->edge_byte[tail] = t->v[c].byte;
            order[tail++] = c;
            nd->n++;
        }
        if (nd->n > DENSE_MIN) nd->dense = (int32_t)n_dense++;
        head++;
    }
    self->dense = calloc((size_t)(n_dense ? n_dense : 1) * 256, sizeof(uint32_t));
    if (!self->dense) {
        free(order);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        Node *nd = &self->nodes[i];
        if (nd->dense < 0) continue;
        uint32_t *tab = self->dense + (size_t)nd->dense * 256;
        for (uint32_t e = nd->first; e < nd->first + nd->n; e++) tab[self->edge_byte[e]] = e;
    }
    self->n_nodes = n;
    free(order);
    return 0;
}

/* ---- encoding (no Python API: runs without the GIL) ------------------- */

static inline uint32_t child_of(const TrieObject *t, const Node *nd, uint8_t c) {
    if (nd->dense >= 0) return t->dense[(size_t)nd->dense * 256 + c];
    const uint8_t *b = t->edge_byte + nd->first;
    for (uint32_t i = 0; i < nd->n; i++) {
        if (b[i] == c) return nd->first + i;
        if (b[i] > c) return 0;
    }
    return 0;
}

/* Encodes s[*pos..len) into out[0..cap): returns the number of ids written
 * and advances *pos (stopping early when out is full), or -1 if some byte
 * has no token (impossible with the world vocab, which has all 256). */
static Py_ssize_t encode_span(const TrieObject *t, const uint8_t *s, Py_ssize_t len, Py_ssize_t *at,
                              int32_t *out, Py_ssize_t cap) {
    Py_ssize_t pos = *at, n = 0;
    while (pos < len && n < cap) {
        const Node *nd = &t->nodes[0];
        Py_ssize_t i = pos, best_end = pos;
        int32_t best = -1;
        while (i < len) {
            uint32_t c = child_of(t, nd, s[i]);
            if (!c) break;
            nd = &t->nodes[c];
            i++;
            if (nd->tok >= 0) {
                best = nd->tok;
                best_end = i;
            }
        }
        if (best < 0) return -1;
        out[n++] = best;
        pos = best_end;
    }
    *at = pos;
    return n;
}

/* Whole text into out, which holds len ids (there are never more ids than bytes). */
static Py_ssize_t encode_bytes(const TrieObject *t, const uint8_t *s, Py_ssize_t len, int32_t *out) {
    Py_ssize_t at = 0;
    return encode_span(t, s, len, &at, out, len);
}

/* ---- Python type --------------------------------------------------------- */

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
    TmpTrie t = {0};
    if (tmp_new(&t, 0) < 0) goto nomem;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (item == Py_None) continue;
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) == 0) {
            PyErr_Format(PyExc_ValueError, "token %zd must be non-empty bytes or None", i);
            goto fail;
        }
        if (tmp_insert(&t, (const uint8_t *)PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item), (int32_t)i) < 0)
            goto nomem;
    }
    if (flatten(self, &t) < 0) goto nomem;
    self->ints = calloc((size_t)(n ? n : 1), sizeof(PyObject *));
    if (!self->ints) goto nomem;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(self->ints[i] = PyLong_FromSsize_t(i))) goto fail;
        self->n_ints = i + 1;
    }
    free(t.v);
    Py_DECREF(seq);
    return 0;
nomem:
    PyErr_NoMemory();
fail:
    free(t.v);
    Py_DECREF(seq);
    return -1;
}

static int as_bytes(PyObject *obj, const char **s, Py_ssize_t *len) {
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

static PyObject *to_list(const TrieObject *t, const int32_t *ids, Py_ssize_t n) {
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

typedef struct {
    const TrieObject *trie;
    const char **texts;
    const Py_ssize_t *lens, *offsets;
    Py_ssize_t *counts;
    int32_t *out;
    Py_ssize_t n_texts;
    Py_ssize_t next; /* shared work counter, taken atomically */
} Batch;

static void *batch_worker(void *arg) {
    Batch *b = arg;
    for (;;) {
        Py_ssize_t i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (i >= b->n_texts) break;
        b->counts[i] = encode_bytes(b->trie, (const uint8_t *)b->texts[i], b->lens[i], b->out + b->offsets[i]);
    }
    return NULL;
}

/* Tokenise the n byte strings ptrs[i] (lens[i] bytes) on `threads` threads;
 * lens holds 3n slots (lens, offsets, counts). On success *out holds each
 * text's ids at offsets[i] (its byte offset), counts[i] of them; returns 0,
 * or -1 with an exception set. Frees ptrs; the caller frees *out and lens.
 * Called with the GIL held; the byte strings must stay alive. */
static int run_core(TrieObject *self, const char **ptrs, Py_ssize_t *lens, Py_ssize_t n, int threads,
                    int32_t **out_p) {
    Py_ssize_t *offsets = lens + n, *counts = lens + 2 * n, total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        offsets[i] = total;
        total += lens[i];
    }
    int32_t *out = malloc((size_t)(total ? total : 1) * sizeof(int32_t));
    *out_p = out;
    if (!out) {
        free(ptrs);
        PyErr_NoMemory();
        return -1;
    }
    Batch b = {self, ptrs, lens, offsets, counts, out, n, 0};
    if (threads > n) threads = (int)n;
    if (total < PARALLEL_MIN_BYTES) threads = 1;
    Py_BEGIN_ALLOW_THREADS
    pthread_t tids[64];
    int started = 0;
    if (threads > 64) threads = 64;
    for (int k = 1; k < threads; k++)
        if (pthread_create(&tids[started], NULL, batch_worker, &b) == 0) started++;
    batch_worker(&b);
    for (int k = 0; k < started; k++) pthread_join(tids[k], NULL);
    Py_END_ALLOW_THREADS
    free(ptrs);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (counts[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "byte not in vocab");
            return -1;
        }
    }
    return 0;
}

/* run_core over the str/bytes items of the tuple seq. */
static int run_batch(TrieObject *self, PyObject *seq, int threads, int32_t **out_p, Py_ssize_t **lens_p) {
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    const char **ptrs = malloc((size_t)(n ? n : 1) * sizeof(char *));
    Py_ssize_t *lens = malloc((size_t)(n ? n : 1) * sizeof(Py_ssize_t) * 3);
    *out_p = NULL;
    *lens_p = lens;
    if (!ptrs || !lens) {
        free(ptrs);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (as_bytes(PyTuple_GET_ITEM(seq, i), &ptrs[i], &lens[i]) < 0) {
            free(ptrs);
            return -1;
        }
    }
    return run_core(self, ptrs, lens, n, threads, out_p);
}

/* (bytes of int32 ids back to back, bytes of n+1 int64 offsets) from run_core's
 * result; frees out and lens. */
static PyObject *pack_flat(int32_t *out, Py_ssize_t *lens, Py_ssize_t n) {
    Py_ssize_t *offsets = lens + n, *counts = lens + 2 * n, total = 0;
    PyObject *ids, *offs, *res = NULL;
    for (Py_ssize_t i = 0; i < n; i++) total += counts[i];
    ids = PyBytes_FromStringAndSize(NULL, total * (Py_ssize_t)sizeof(int32_t));
    offs = PyBytes_FromStringAndSize(NULL, (n + 1) * (Py_ssize_t)sizeof(int64_t));
    if (ids && offs) {
        int32_t *dst = (int32_t *)PyBytes_AS_STRING(ids);
        int64_t *pos = (int64_t *)PyBytes_AS_STRING(offs);
        int64_t at = 0;
        for (Py_ssize_t i = 0; i < n; i++) { /* compact: each text's ids sat at its byte offset */
            pos[i] = at;
            memcpy(dst + at, out + offsets[i], (size_t)counts[i] * sizeof(int32_t));
            at += counts[i];
        }
        pos[n] = at;
        res = PyTuple_Pack(2, ids, offs);
    }
    Py_XDECREF(ids);
    Py_XDECREF(offs);
    free(out);
    free(lens);
    return res;
}

/* encode_flat(texts, threads=1) -> (ids, offsets): ids is the bytes of every
 * text's int32 ids back to back, offsets the bytes of n+1 int64 positions
 * (text i is ids[offsets[i]:offsets[i+1]]). No Python int is made per token. */
static PyObject *Trie_encode_flat(TrieObject *self, PyObject *args) {
    PyObject *texts, *seq, *res = NULL;
    int threads = 1;
    int32_t *out = NULL;
    Py_ssize_t *lens = NULL;
    if (!PyArg_ParseTuple(args, "O|i", &texts, &threads)) return NULL;
    seq = PySequence_Tuple(texts); /* private: see encode_batch */
    if (!seq) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (run_batch(self, seq, threads, &out, &lens) < 0) {
        free(out);
        free(lens);
    } else {
        res = pack_flat(out, lens, n);
    }
    Py_DECREF(seq);
    return res;
}

/* encode_spans(data, starts, lens, threads=1) -> like encode_flat, for the n
 * texts data[starts[i]:starts[i]+lens[i]] of one buffer (starts and lens are
 * buffers of n int64), e.g. an Arrow string column's bytes: no str per text. */
static PyObject *Trie_encode_spans(TrieObject *self, PyObject *args) {
    Py_buffer data, starts, sizes;
    int threads = 1;
    PyObject *res = NULL;
    int32_t *out = NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*|i", &data, &starts, &sizes, &threads)) return NULL;
    Py_ssize_t n = starts.len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *st = starts.buf, *sz = sizes.buf;
    const char **ptrs = malloc((size_t)(n ? n : 1) * sizeof(char *));
    Py_ssize_t *lens = malloc((size_t)(n ? n : 1) * sizeof(Py_ssize_t) * 3);
    if (!ptrs || !lens || sizes.len != starts.len) {
        free(ptrs);
        free(lens);
        if (sizes.len != starts.len) PyErr_SetString(PyExc_ValueError, "starts and lens differ in size");
        else PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (st[i] < 0 || sz[i] < 0 || st[i] + sz[i] > data.len) {
            free(ptrs);
            free(lens);
            PyErr_SetString(PyExc_ValueError, "span outside the data buffer");
            goto done;
        }
        ptrs[i] = (const char *)data.buf + st[i];
        lens[i] = (Py_ssize_t)sz[i];
    }
    if (run_core(self, ptrs, lens, n, threads, &out) < 0) {
        free(out);
        free(lens);
    } else {
        res = pack_flat(out, lens, n);
    }
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&sizes);
    return res;
}

static PyObject *Trie_encode_batch(TrieObject *self, PyObject *args) {
    PyObject *texts, *seq, *res = NULL;
    int threads = 1;
    int32_t *out = NULL;
    Py_ssize_t *lens = NULL;
    if (!PyArg_ParseTuple(args, "O|i", &texts, &threads)) return NULL;
    /* A private tuple: another thread cannot drop the strings from under us
     * while the GIL is released (a list passed in could be mutated). */
    seq = PySequence_Tuple(texts);
    if (!seq) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (run_batch(self, seq, threads, &out, &lens) < 0) goto done;
    Py_ssize_t *offsets = lens + n, *counts = lens + 2 * n;
    if (!(res = PyList_New(n))) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ids = to_list(self, out + offsets[i], counts[i]);
        if (!ids) {
            Py_CLEAR(res);
            goto done;
        }
        PyList_SET_ITEM(res, i, ids);
    }
done:
    free(out);
    free(lens);
    Py_DECREF(seq);
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
