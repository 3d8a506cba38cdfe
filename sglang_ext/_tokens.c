/* Token ids <-> packed native uint32 bytes, at C speed.
 *
 * The global mirror keeps cached token runs packed (4 bytes per token) and compares a
 * request's prompt with them on the dispatch path. Touching each id of the prompt is the
 * only per-token step of a match, so it is done here: `common_prefix` reads the ids in
 * place (no copy, no allocation) and stops at the first difference; `pack_u32` packs a
 * range (a child key, an event's pages, a prompt inserted into the mirror).
 *
 * The ids are read in place in either form they arrive in:
 * - a list or tuple of ints (tests, the simulator, KV events' `token_ids`);
 * - any one-dimensional C-contiguous buffer of native integers (`array('q')`, numpy
 *   int arrays): SGLang 0.5.23 hands the controller `TokenizedGenerateReqInput.input_ids`
 *   as `array('q')` (its `srt/managers/tokenizer_manager.py` builds
 *   `array("q", input_ids)`), and turning that into a list first cost ~50 us per
 *   8K-token prompt per call, more than the whole match. A buffer is read as machine
 *   integers, without making an int object per token.
 * Anything else (other sequences, byte-swapped or strided buffers, floats) goes through
 * `PySequence_Fast`, so results never depend on the form, only the speed does.
 * `sglang_ext/core/token_bytes.py` has pure-Python equivalents for builds without a C
 * compiler.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
/* One token id; -1 with an exception set for anything else. */
static inline int64_t token_id(PyObject *item) {
    unsigned long v;
#if PY_VERSION_HEX < 0x030C0000
    /* CPython <= 3.11 layout: an int below 2**30 is one 30-bit digit (ob_size 1; 0 for
     * zero). Reading it directly halves the cost of packing a list of ids; everything
     * else takes the API path below. */
    if (PyLong_CheckExact(item)) {
        Py_ssize_t size = Py_SIZE(item);
        if (size == 1) return (int64_t)((PyLongObject *)item)->ob_digit[0];
        if (size == 0) return 0;
    }
#endif
    if (PyLong_Check(item)) {
        v = PyLong_AsUnsignedLong(item); /* OverflowError if < 0 */
    } else {
        /* numpy integer scalars and other `__index__` types; TypeError for floats */
        PyObject *index = PyNumber_Index(item);
        if (index == NULL) return -1;
        v = PyLong_AsUnsignedLong(index);
        Py_DECREF(index);
    }
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (v > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_OverflowError, "token id does not fit in 32 bits");
        return -1;
    }
    return (int64_t)v;
}

static void out_of_range(void) {
    PyErr_SetString(PyExc_OverflowError, "token id outside [0, 2**32)");
}

/* Token ids as handed to us: a list/tuple (or anything PySequence_Fast takes), or a
 * buffer of native integers read in place. */
typedef struct {
    PyObject *seq;     /* PySequence_Fast result; NULL when `buf` is used */
    PyObject **items;
    Py_buffer buf;
    int is_signed;
    Py_ssize_t itemsize;
    Py_ssize_t n;
} ids_t;

/* The integer kind of a buffer format ("q", "@l", "<I", ...); 0 if not a native integer. */
static int int_format(const char *fmt, int *is_signed) {
    if (fmt == NULL) return 0;
    if (*fmt == '@' || *fmt == '=') {
        fmt++;
    } else if (*fmt == '<' || *fmt == '>' || *fmt == '!') {
        const uint16_t probe = 1;
        int little = *(const unsigned char *)&probe == 1;
        if ((*fmt == '<') != little) return 0; /* byte-swapped: the slow path */
        fmt++;
    }
    if (fmt[0] == '\0' || fmt[1] != '\0' || strchr("bBhHiIlLqQnN", fmt[0]) == NULL) return 0;
    *is_signed = fmt[0] >= 'a';
    return 1;
}

static int ids_open(PyObject *obj, ids_t *ids) {
    ids->seq = NULL;
    if (!PyList_Check(obj) && !PyTuple_Check(obj) && PyObject_CheckBuffer(obj)) {
        if (PyObject_GetBuffer(obj, &ids->buf, PyBUF_FORMAT | PyBUF_ND) == 0) {
            Py_ssize_t size = ids->buf.itemsize;
            if (ids->buf.ndim == 1 && int_format(ids->buf.format, &ids->is_signed)
                && (size == 1 || size == 2 || size == 4 || size == 8)) {
                ids->itemsize = size;
                ids->n = ids->buf.shape[0];
                return 0;
            }
            PyBuffer_Release(&ids->buf);
        } else {
            PyErr_Clear(); /* not contiguous, or no format: read it as a sequence */
        }
    }
    ids->seq = PySequence_Fast(obj, "token ids must be a sequence of ints");
    if (ids->seq == NULL) return -1;
    ids->items = PySequence_Fast_ITEMS(ids->seq);
    ids->n = PySequence_Fast_GET_SIZE(ids->seq);
    return 0;
}

static void ids_close(ids_t *ids) {
    if (ids->seq != NULL) {
        Py_DECREF(ids->seq);
    } else {
        PyBuffer_Release(&ids->buf);
    }
}

/* Buffer loops, one per integer type: a switch per token would cost as much as the
 * compare. `BODY` sees `v`, the id as int64_t / uint64_t, already range-checked. */
#define FOR_BUFFER_IDS(ids, start, stop, i, BODY)                                         \
    do {                                                                                \
        const void *base_ = (ids)->buf.buf;                                             \
        switch ((ids)->itemsize * ((ids)->is_signed ? -1 : 1)) {                        \
        case -8: BUFFER_LOOP(int64_t, 1, base_, start, stop, i, BODY); break;           \
        case 8: BUFFER_LOOP(uint64_t, 0, base_, start, stop, i, BODY); break;           \
        case -4: BUFFER_LOOP(int32_t, 1, base_, start, stop, i, BODY); break;           \
        case 4: BUFFER_LOOP(uint32_t, 0, base_, start, stop, i, BODY); break;           \
        case -2: BUFFER_LOOP(int16_t, 1, base_, start, stop, i, BODY); break;           \
        case 2: BUFFER_LOOP(uint16_t, 0, base_, start, stop, i, BODY); break;           \
        case -1: BUFFER_LOOP(int8_t, 1, base_, start, stop, i, BODY); break;            \
        default: BUFFER_LOOP(uint8_t, 0, base_, start, stop, i, BODY); break;           \
        }                                                                               \
    } while (0)

#define BUFFER_LOOP(T, SIGNED, base, start, stop, i, BODY)                                \
    for (i = (start); i < (stop); i++) {                                                \
        T raw_ = ((const T *)(base))[i];                                                \
        if ((SIGNED && (int64_t)raw_ < 0) || (uint64_t)raw_ > 0xFFFFFFFFULL) {          \
            out_of_range();                                                             \
            break;                                                                      \
        }                                                                               \
        uint32_t v = (uint32_t)raw_;                                                    \
        BODY                                                                            \
    }

/* Pack buffer ids [start, stop) into dst in one pass that converts each id and ORs them
 * together, then checks the range once (no branch per id, so the compiler vectorises it;
 * dst holds garbage on error, and the caller drops it). One pass, not a range pass and
 * then a copy: an 8K-token array('q') packs in ~1.5 us instead of ~5-7 when it is in cache
 * (a request just unpickled), ~5.5 instead of ~6-7 when not. -1 with OverflowError set if
 * any id is outside [0, 2**32). */
#define PACK_CASE(T, SIGNED)                                                              \
    {                                                                                   \
        const T *src = (const T *)ids->buf.buf + start;                                 \
        Py_ssize_t n = stop - start;                                                    \
        uint64_t high = 0;                                                              \
        for (Py_ssize_t k = 0; k < n; k++) {                                            \
            uint64_t v_ = (uint64_t)(int64_t)src[k];                                    \
            high |= v_;                                                                 \
            dst[k] = (uint32_t)v_;                                                      \
        }                                                                               \
        if ((SIGNED && (int64_t)high < 0) || (high >> 32) != 0) {                       \
            out_of_range();                                                             \
            return -1;                                                                  \
        }                                                                               \
        return 0;                                                                       \
    }

static int pack_buffer(const ids_t *ids, Py_ssize_t start, Py_ssize_t stop, uint32_t *dst) {
    switch (ids->itemsize * (ids->is_signed ? -1 : 1)) {
    case -8: PACK_CASE(int64_t, 1)
    case 8: PACK_CASE(uint64_t, 0)
    case -4: PACK_CASE(int32_t, 1)
    case 4:
        memcpy(dst, (const uint32_t *)ids->buf.buf + start, (size_t)(stop - start) * 4);
        return 0;
    case -2: PACK_CASE(int16_t, 1)
    case 2: PACK_CASE(uint16_t, 0)
    case -1: PACK_CASE(int8_t, 1)
    default: PACK_CASE(uint8_t, 0)
    }
}

/* Clamp [start, stop) to [0, n]. */
static int range_of(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t first, Py_ssize_t n,
                    Py_ssize_t *start, Py_ssize_t *stop) {
    *start = 0;
    *stop = n;
    if (nargs > first && (*start = PyLong_AsSsize_t(args[first])) == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (nargs > first + 1 && (*stop = PyLong_AsSsize_t(args[first + 1])) == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (*start < 0 || *stop < 0) {
        PyErr_SetString(PyExc_ValueError, "start and stop must not be negative");
        return -1;
    }
    if (*stop > n) *stop = n;
    if (*start > *stop) *start = *stop;
    return 0;
}

/* pack_u32(ids, start=0, stop=len(ids)) -> bytes */
static PyObject *pack_u32(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "pack_u32(ids, start=0, stop=len(ids))");
        return NULL;
    }
    ids_t ids;
    if (ids_open(args[0], &ids) < 0) {
        return NULL;
    }
    Py_ssize_t start, stop, i;
    PyObject *out = NULL;
    if (range_of(args, nargs, 1, ids.n, &start, &stop) < 0) {
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, (stop - start) * (Py_ssize_t)sizeof(uint32_t));
    if (out == NULL) {
        goto done;
    }
    uint32_t *dst = (uint32_t *)PyBytes_AS_STRING(out);
    if (ids.seq == NULL) {
        pack_buffer(&ids, start, stop, dst);
    } else {
        for (i = start; i < stop; i++) {
            int64_t v = token_id(ids.items[i]);
            if (v < 0) break;
            dst[i - start] = (uint32_t)v;
        }
    }
    if (PyErr_Occurred()) {
        Py_CLEAR(out);
    }
done:
    ids_close(&ids);
    return out;
}

/* common_prefix(ids, start, packed) -> how many of ids[start:] equal packed's tokens,
 * counted from the start up to the first difference. */
static PyObject *common_prefix(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "common_prefix(ids, start, packed)");
        return NULL;
    }
    ids_t ids;
    if (ids_open(args[0], &ids) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_buffer buf;
    Py_ssize_t start, stop, i = 0;
    if (range_of(args, 2, 1, ids.n, &start, &stop) < 0) {
        goto done;
    }
    if (PyObject_GetBuffer(args[2], &buf, PyBUF_SIMPLE) < 0) {
        goto done;
    }
    const uint32_t *packed = (const uint32_t *)buf.buf;
    Py_ssize_t n = buf.len / (Py_ssize_t)sizeof(uint32_t);
    if (n > stop - start) n = stop - start;
    if (ids.seq == NULL) {
        Py_ssize_t j = 0;
        FOR_BUFFER_IDS(&ids, start, start + n, j, { if (v != packed[j - start]) break; });
        i = j - start;
    } else {
        PyObject **items = ids.items + start;
        for (; i < n; i++) {
            int64_t v = token_id(items[i]);
            if (v < 0 || (uint32_t)v != packed[i]) break;
        }
    }
    PyBuffer_Release(&buf);
    if (!PyErr_Occurred()) {
        result = PyLong_FromSsize_t(i);
    }
done:
    ids_close(&ids);
    return result;
}

/* packed_common_prefix(a, start, b) -> how many tokens of packed a[start:] (start in
 * tokens) equal packed b's, counted from the start up to the first difference. Both are
 * packed already (a prompt packed once per request, a node's tokens), so this is a
 * memcmp plus, on a mismatch, a scan for the first unequal word: ~0.1 ns per token,
 * where reading an int64 prompt in place costs ~1 ns per token per tree. */
static PyObject *packed_common_prefix(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "packed_common_prefix(a, start, b)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "start must not be negative");
        return NULL;
    }
    Py_buffer a, b;
    if (PyObject_GetBuffer(args[0], &a, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[2], &b, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    Py_ssize_t na = a.len / (Py_ssize_t)sizeof(uint32_t) - start;
    Py_ssize_t n = b.len / (Py_ssize_t)sizeof(uint32_t);
    if (na < 0) na = 0;
    if (n > na) n = na;
    const uint32_t *x = (const uint32_t *)a.buf + start, *y = (const uint32_t *)b.buf;
    Py_ssize_t i = n;
    if (n > 0 && memcmp(x, y, (size_t)n * sizeof(uint32_t)) != 0) {
        for (i = 0; i < n && x[i] == y[i]; i++) {
        }
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return PyLong_FromSsize_t(i);
}

/* A worker bitmask (a non-negative Python int) as `nbytes` little-endian bytes; -1 with
 * an exception set if it is negative or has bits at or above nbytes * 8 (bits from n up
 * to the byte's end are caught by the caller). */
static int mask_bytes(PyObject *mask, unsigned char *bits, Py_ssize_t nbytes) {
    if (!PyLong_Check(mask)) {
        PyErr_SetString(PyExc_TypeError, "a level's mask must be an int");
        return -1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t need = PyLong_AsNativeBytes(mask, bits, nbytes,
                                           Py_ASNATIVEBYTES_LITTLE_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER
                                               | Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (need < 0) return -1;
    if (need > nbytes) {
        PyErr_SetString(PyExc_OverflowError, "a level's mask names a worker >= n");
        return -1;
    }
    return 0;
#else
    return _PyLong_AsByteArray((PyLongObject *)mask, bits, (size_t)nbytes, 1, 0);
#endif
}

/* spread(levels, n, floor=None) -> list of n ints. `levels` holds disjoint (mask, value)
 * pairs, each mask an int bitmask of workers (bit w: worker w); item w of the result is
 * the value of the level whose mask has bit w, else 0; with a `floor` list, the larger of
 * that and floor[w] (the router merges its two trees' matches so, where a Python
 * `map(max, ...)` over 128 workers cost ~13 us). (A Python loop over set bits costs ~0.1 us
 * per worker, which at 128 workers was the largest part of a match.) The masks are read
 * here, not turned into bytes in Python (`int.to_bytes` per level cost more than the
 * spread), and int values are compared as C integers. */
static PyObject *spread(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "spread(levels: list, n: int, floor: list | None = None)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "n must not be negative");
        return NULL;
    }
    PyObject *floor = nargs == 3 && args[2] != Py_None ? args[2] : NULL;
    if (floor != NULL && (!PyList_Check(floor) || PyList_GET_SIZE(floor) != n)) {
        PyErr_SetString(PyExc_TypeError, "floor must be a list of n ints");
        return NULL;
    }
    Py_ssize_t nbytes = (n + 7) / 8;
    unsigned char stack_bits[64];
    unsigned char *bits = nbytes <= (Py_ssize_t)sizeof(stack_bits) ? stack_bits : PyMem_Malloc(nbytes ? nbytes : 1);
    if (bits == NULL) return PyErr_NoMemory();
    PyObject *out = NULL;
    if (floor != NULL) {
        out = PyList_GetSlice(floor, 0, n); /* a copy: the floor list itself is left alone */
    } else {
        PyObject *zero = PyLong_FromLong(0);
        out = zero ? PyList_New(n) : NULL;
        for (Py_ssize_t w = 0; out != NULL && w < n; w++) {
            Py_INCREF(zero);
            PyList_SET_ITEM(out, w, zero);
        }
        Py_XDECREF(zero);
    }
    if (out == NULL) goto fail;
    PyObject *levels = args[0];
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(levels); k++) {
        PyObject *level = PyList_GET_ITEM(levels, k);
        if (!PyTuple_Check(level) || PyTuple_GET_SIZE(level) != 2) {
            PyErr_SetString(PyExc_TypeError, "each level must be a (mask, value) tuple");
            goto fail;
        }
        PyObject *value = PyTuple_GET_ITEM(level, 1);
        if (mask_bytes(PyTuple_GET_ITEM(level, 0), bits, nbytes) < 0) goto fail;
        /* An int value is compared with int floor items as C integers; anything else
         * (a huge int, another type) through Python's comparison. */
        int overflow = 1;
        long long v = PyLong_Check(value) ? PyLong_AsLongLongAndOverflow(value, &overflow) : 0;
        if (v == -1 && PyErr_Occurred()) goto fail;
        for (Py_ssize_t b = 0; b < nbytes; b++) {
            for (unsigned int byte = bits[b], j = 0; byte; byte >>= 1, j++) {
                if (!(byte & 1)) continue;
                Py_ssize_t w = b * 8 + (Py_ssize_t)j;
                if (w >= n) {
                    PyErr_SetString(PyExc_OverflowError, "a level's mask names a worker >= n");
                    goto fail;
                }
                if (floor != NULL) {
                    PyObject *current = PyList_GET_ITEM(out, w);
                    int above, item_overflow = 1;
                    long long f = (!overflow && PyLong_CheckExact(current))
                                      ? PyLong_AsLongLongAndOverflow(current, &item_overflow) : 0;
                    if (!item_overflow) {
                        above = v > f;
                    } else if ((above = PyObject_RichCompareBool(value, current, Py_GT)) < 0) {
                        goto fail;
                    }
                    if (!above) continue;
                }
                Py_INCREF(value);
                PyList_SetItem(out, w, value); /* steals `value`, releases the old item */
            }
        }
    }
    if (bits != stack_bits) PyMem_Free(bits);
    return out;
fail:
    if (bits != stack_bits) PyMem_Free(bits);
    Py_XDECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"pack_u32", (PyCFunction)(void (*)(void))pack_u32, METH_FASTCALL,
     "pack_u32(ids, start=0, stop=len(ids)) -> bytes of native uint32, 4 per id"},
    {"common_prefix", (PyCFunction)(void (*)(void))common_prefix, METH_FASTCALL,
     "common_prefix(ids, start, packed) -> leading tokens of ids[start:] equal to packed"},
    {"packed_common_prefix", (PyCFunction)(void (*)(void))packed_common_prefix, METH_FASTCALL,
     "packed_common_prefix(a, start, b) -> leading tokens of packed a[start:] equal to packed b"},
    {"spread", (PyCFunction)(void (*)(void))spread, METH_FASTCALL,
     "spread(levels: list[(int_mask, value)], n, floor=None) -> per-worker values "
     "(each at least floor[w] when a floor list is given)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tokens", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tokens(void) { return PyModule_Create(&module); }
