/* Many texts at once: encode_batch, encode_flat and encode_spans share one
 * core that releases the GIL and spreads the texts over pthreads, each text
 * encoded by the trie walk in _world_trie_core.c. */
#include "_world_trie.h"
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#define PARALLEL_MIN_BYTES (1 << 16) /* smaller batches stay on the calling thread */
/* The texts are handed out in runs of about this many bytes (a longer text is a run of its
 * own): many short texts (an Arrow column's spans) then cost one grab of the shared counter
 * per run, not per text, so the threads do not contend for its cache line. */
#define RUN_BYTES (1 << 14)

typedef struct {
    const TrieObject *trie;
    const char **texts;
    const Py_ssize_t *lens, *offsets;
    Py_ssize_t *counts;
    int32_t *out;
    const Py_ssize_t *runs; /* run r is texts runs[r] .. runs[r + 1] - 1 */
    Py_ssize_t n_runs;
    Py_ssize_t next; /* shared run counter, taken atomically */
} Batch;

static void *batch_worker(void *arg) {
    Batch *b = arg;
    for (;;) {
        Py_ssize_t r = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (r >= b->n_runs) break;
        for (Py_ssize_t i = b->runs[r]; i < b->runs[r + 1]; i++)
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
    Py_ssize_t *offsets = lens + n, *counts = lens + 2 * n, total = 0, n_runs = 0, run_end = 0;
    Py_ssize_t *runs = malloc((size_t)(n + 1) * sizeof(Py_ssize_t));
    int32_t *out = NULL;
    if (runs) {
        for (Py_ssize_t i = 0; i < n; i++) {
            offsets[i] = total;
            if (i == 0 || total >= run_end) { /* a new run starts at text i */
                runs[n_runs++] = i;
                run_end = total + RUN_BYTES;
            }
            total += lens[i];
        }
        runs[n_runs] = n;
        out = malloc((size_t)(total ? total : 1) * sizeof(int32_t));
    }
    *out_p = out;
    if (!out) {
        free(runs);
        free(ptrs);
        PyErr_NoMemory();
        return -1;
    }
    Batch b = {self, ptrs, lens, offsets, counts, out, runs, n_runs, 0};
    if (threads > n_runs) threads = (int)n_runs;
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
    free(runs);
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
PyObject *Trie_encode_flat(TrieObject *self, PyObject *args) {
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
PyObject *Trie_encode_spans(TrieObject *self, PyObject *args) {
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

/* encode_batch(texts, threads=1) -> one list of ids per text. */
PyObject *Trie_encode_batch(TrieObject *self, PyObject *args) {
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
