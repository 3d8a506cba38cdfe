/* Token ids <-> packed native uint32 bytes, at C speed.
 *
 * The global mirror keeps cached token runs packed (4 bytes per token) and compares a
 * request's prompt with them on the dispatch path. The prompt arrives as a Python list
 * of ints; touching each of those ints is the only per-token step of a match, so it is
 * done here: `common_prefix` reads the list in place (no copy, no allocation) and stops
 * at the first difference; `pack_u32` packs a range (a child key, an event's pages).
 * On our 2-core host array('I', ids) packs at ~13 ns per token; these loops run at a few
 * ns. `sglang_ext/token_bytes.py` has pure-Python equivalents for builds without a C
 * compiler.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* One token id; -1 with an exception set for anything else. */
static inline int64_t token_id(PyObject *item) {
    unsigned long v = PyLong_AsUnsignedLong(item); /* TypeError, or OverflowError if < 0 */
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (v > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_OverflowError, "token id does not fit in 32 bits");
        return -1;
    }
    return (int64_t)v;
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
    PyObject *seq = PySequence_Fast(args[0], "token ids must be a sequence of ints");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t start, stop;
    PyObject *out = NULL;
    if (range_of(args, nargs, 1, PySequence_Fast_GET_SIZE(seq), &start, &stop) < 0) {
        goto done;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    out = PyBytes_FromStringAndSize(NULL, (stop - start) * (Py_ssize_t)sizeof(uint32_t));
    if (out == NULL) {
        goto done;
    }
    uint32_t *dst = (uint32_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = start; i < stop; i++) {
        int64_t v = token_id(items[i]);
        if (v < 0) {
            Py_CLEAR(out);
            goto done;
        }
        *dst++ = (uint32_t)v;
    }
done:
    Py_DECREF(seq);
    return out;
}

/* common_prefix(ids, start, packed) -> how many of ids[start:] equal packed's tokens,
 * counted from the start up to the first difference. */
static PyObject *common_prefix(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "common_prefix(ids, start, packed)");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "token ids must be a sequence of ints");
    if (seq == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_buffer buf;
    Py_ssize_t start, stop;
    if (range_of(args, 2, 1, PySequence_Fast_GET_SIZE(seq), &start, &stop) < 0) {
        goto done;
    }
    if (PyObject_GetBuffer(args[2], &buf, PyBUF_SIMPLE) < 0) {
        goto done;
    }
    const uint32_t *packed = (const uint32_t *)buf.buf;
    Py_ssize_t n = buf.len / (Py_ssize_t)sizeof(uint32_t);
    if (n > stop - start) n = stop - start;
    PyObject **items = PySequence_Fast_ITEMS(seq) + start;
    Py_ssize_t i = 0;
    for (; i < n; i++) {
        int64_t v = token_id(items[i]);
        if (v < 0) {
            break;
        }
        if ((uint32_t)v != packed[i]) {
            break;
        }
    }
    PyBuffer_Release(&buf);
    if (!PyErr_Occurred()) {
        result = PyLong_FromSsize_t(i);
    }
done:
    Py_DECREF(seq);
    return result;
}

/* spread(levels, n) -> list of n ints. `levels` holds disjoint (mask, value) pairs, each
 * mask a little-endian bytes bitmap of workers; item w of the result is the value of
 * the level whose mask has bit w, else 0. (A Python loop over set bits costs ~0.1 us
 * per worker, which at 128 workers was the largest part of a match.) */
static PyObject *spread(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "spread(levels: list, n: int)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "n must not be negative");
        return NULL;
    }
    PyObject *zero = PyLong_FromLong(0);
    PyObject *out = zero ? PyList_New(n) : NULL;
    if (out == NULL) {
        Py_XDECREF(zero);
        return NULL;
    }
    for (Py_ssize_t w = 0; w < n; w++) {
        Py_INCREF(zero);
        PyList_SET_ITEM(out, w, zero);
    }
    Py_DECREF(zero);
    PyObject *levels = args[0];
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(levels); k++) {
        PyObject *level = PyList_GET_ITEM(levels, k);
        if (!PyTuple_Check(level) || PyTuple_GET_SIZE(level) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(level, 0))) {
            PyErr_SetString(PyExc_TypeError, "each level must be a (bytes, value) tuple");
            Py_DECREF(out);
            return NULL;
        }
        PyObject *mask = PyTuple_GET_ITEM(level, 0);
        PyObject *value = PyTuple_GET_ITEM(level, 1);
        const unsigned char *bits = (const unsigned char *)PyBytes_AS_STRING(mask);
        Py_ssize_t nbytes = PyBytes_GET_SIZE(mask);
        for (Py_ssize_t b = 0; b < nbytes; b++) {
            for (unsigned int byte = bits[b], j = 0; byte; byte >>= 1, j++) {
                Py_ssize_t w = b * 8 + (Py_ssize_t)j;
                if ((byte & 1) && w < n) {
                    Py_INCREF(value);
                    PyList_SetItem(out, w, value); /* steals `value`, releases the old item */
                }
            }
        }
    }
    return out;
}

static PyMethodDef methods[] = {
    {"pack_u32", (PyCFunction)(void (*)(void))pack_u32, METH_FASTCALL,
     "pack_u32(ids, start=0, stop=len(ids)) -> bytes of native uint32, 4 per id"},
    {"common_prefix", (PyCFunction)(void (*)(void))common_prefix, METH_FASTCALL,
     "common_prefix(ids, start, packed) -> leading tokens of ids[start:] equal to packed"},
    {"spread", (PyCFunction)(void (*)(void))spread, METH_FASTCALL,
     "spread(levels: list[(mask_bytes_le, value)], n) -> per-worker values"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tokens", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tokens(void) { return PyModule_Create(&module); }
