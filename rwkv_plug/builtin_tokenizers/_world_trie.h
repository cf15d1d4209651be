/* Internal header of the native world-tokenizer trie: the flattened trie
 * layout and the functions that _world_trie.c, _world_trie_core.c and
 * _world_trie_batch.c share. Not a public API. */
#ifndef RWKV_PLUG_WORLD_TRIE_H
#define RWKV_PLUG_WORLD_TRIE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Shared between our files only: keep them out of the .so's exported symbols. */
#if defined(__GNUC__) && !defined(_WIN32)
#define WT_INTERNAL __attribute__((visibility("hidden")))
#else
#define WT_INTERNAL
#endif

/* A flattened trie. Each node's children are contiguous in the edge arrays,
 * sorted by byte; nodes with many children also get a 256-entry dense table
 * so the hot top levels are one load per byte. */
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

/* _world_trie_core.c: building and walking (the walk needs no GIL). */
WT_INTERNAL int trie_build(TrieObject *self, PyObject *seq);
WT_INTERNAL Py_ssize_t encode_span(const TrieObject *t, const uint8_t *s, Py_ssize_t len, Py_ssize_t *at,
                                   int32_t *out, Py_ssize_t cap);

/* Whole text into out, which holds len ids (there are never more ids than bytes).
 * Inline so each per-text caller goes straight to encode_span. */
static inline Py_ssize_t encode_bytes(const TrieObject *t, const uint8_t *s, Py_ssize_t len, int32_t *out) {
    Py_ssize_t at = 0;
    return encode_span(t, s, len, &at, out, len);
}

/* _world_trie.c: helpers for the Python-facing methods. */
WT_INTERNAL int as_bytes(PyObject *obj, const char **s, Py_ssize_t *len);
WT_INTERNAL PyObject *to_list(const TrieObject *t, const int32_t *ids, Py_ssize_t n);

/* _world_trie_batch.c: the threaded many-text methods. */
WT_INTERNAL PyObject *Trie_encode_batch(TrieObject *self, PyObject *args);
WT_INTERNAL PyObject *Trie_encode_flat(TrieObject *self, PyObject *args);
WT_INTERNAL PyObject *Trie_encode_spans(TrieObject *self, PyObject *args);

#endif
