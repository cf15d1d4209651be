/* The world trie itself: built from the vocab's token bytes, then walked by
 * greedy longest-prefix match. Same rule as world.py's _PyTrie, which is the
 * executable spec; the walk touches no Python object, so it runs without the GIL. */
#include "_world_trie.h"
#include <stdlib.h>

#define DENSE_MIN 6 /* nodes with more children than this get a dense table */

/* ---- building ---------------------------------------------------------- */

/* A linked trie, easy to insert into; flatten() turns it into the Node arrays. */
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

/* Builds self's arrays from seq (a PySequence_Fast): item i is the bytes of
 * id i, or None. Returns 0, or -1 with an exception set. */
int trie_build(TrieObject *self, PyObject *seq) {
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
    free(t.v);
    return 0;
nomem:
    PyErr_NoMemory();
fail:
    free(t.v);
    return -1;
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
Py_ssize_t encode_span(const TrieObject *t, const uint8_t *s, Py_ssize_t len, Py_ssize_t *at,
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
