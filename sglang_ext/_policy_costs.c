/* `prefix_length_aware`'s per-worker cost and choice in one pass, at C speed.
 *
 * Why C: the rule is a dozen arithmetic steps per worker. As numpy vector operations over
 * 128 workers it cost ~15 us per decision (each small-array operation ~0.5-1 us, plus
 * ~3 us to turn the cached-token list into an array), as a Python loop ~50 us; one C
 * loop over the same columns costs ~1-2 us. The formula, its reasons and its numpy form
 * (the reference, and the fallback without a compiler) are in
 * `sglang_ext/core/policies/prefix_length_aware.py`; this file repeats its arithmetic
 * in the same order and types, so the costs are bit-for-bit those of the numpy form
 * (int64 steps, then each term converted to double, multiplied and added in the numpy
 * order; setup.py builds this file with -ffp-contract=off so no multiply-add is fused)
 * and so is the choice (`tests/test_policy_prefix_length_aware.py` checks both on
 * random views).
 *
 * choose(cached, prompt_tokens, output_tokens, b1, b2, requests, queued_prefill,
 *        pending_decode, committed, capacity, alive, costs_out=None) -> int
 *
 * `cached`: a list or tuple of ints (the view's cached tokens per worker); the load
 * columns: 1-D int64 buffers (`LoadColumns`), `alive` a bool buffer, all of one length.
 * Returns the alive worker of lowest cost, ties to fewer requests, then the lowest index
 * (dead workers cost +inf, as in the numpy form). `costs_out`: a writable float64 buffer
 * of the same length that receives every worker's cost (for tests and reports).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { N_COLUMNS = 5 };

/* A 1-D C-contiguous buffer of `itemsize`-byte items whose format is one of `formats`. */
static int open_column(PyObject *obj, const char *formats, Py_ssize_t itemsize, int writable,
                       Py_buffer *view, const char *what) {
    int flags = PyBUF_FORMAT | PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '@' || *fmt == '=') fmt++;
    if (view->ndim != 1 || view->itemsize != itemsize || fmt[0] == '\0' || fmt[1] != '\0'
        || strchr(formats, fmt[0]) == NULL) {
        PyErr_Format(PyExc_TypeError, "%s must be a 1-D contiguous array of %zd-byte items", what, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *choose(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *names[N_COLUMNS] = {"requests", "queued_prefill", "pending_decode", "committed",
                                           "capacity"};
    if (nargs != 11 && nargs != 12) {
        PyErr_SetString(PyExc_TypeError,
                        "choose(cached, prompt_tokens, output_tokens, b1, b2, requests, queued_prefill, "
                        "pending_decode, committed, capacity, alive, costs_out=None)");
        return NULL;
    }
    long long prompt = PyLong_AsLongLong(args[1]);
    if (prompt == -1 && PyErr_Occurred()) return NULL;
    long long out_tokens = PyLong_AsLongLong(args[2]);
    if (out_tokens == -1 && PyErr_Occurred()) return NULL;
    double b1 = PyFloat_AsDouble(args[3]);
    if (b1 == -1.0 && PyErr_Occurred()) return NULL;
    double b2 = PyFloat_AsDouble(args[4]);
    if (b2 == -1.0 && PyErr_Occurred()) return NULL;

    PyObject *cached = PySequence_Fast(args[0], "cached must be a sequence of ints");
    if (cached == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(cached);
    PyObject **cached_items = PySequence_Fast_ITEMS(cached);

    Py_buffer cols[N_COLUMNS], alive_view, costs_view;
    int opened = 0, have_alive = 0, have_costs = 0;
    PyObject *result = NULL;
    for (; opened < N_COLUMNS; opened++) {
        if (open_column(args[5 + opened], "lq", 8, 0, &cols[opened], names[opened]) < 0) goto done;
        if (cols[opened].shape[0] != n) {
            PyErr_Format(PyExc_ValueError, "%s has %zd workers, cached has %zd", names[opened],
                         cols[opened].shape[0], n);
            opened++;
            goto done;
        }
    }
    if (open_column(args[10], "?", 1, 0, &alive_view, "alive") < 0) goto done;
    have_alive = 1;
    if (alive_view.shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "alive has %zd workers, cached has %zd", alive_view.shape[0], n);
        goto done;
    }
    if (nargs == 12 && args[11] != Py_None) {
        if (open_column(args[11], "d", 8, 1, &costs_view, "costs_out") < 0) goto done;
        have_costs = 1;
        if (costs_view.shape[0] != n) {
            PyErr_Format(PyExc_ValueError, "costs_out has %zd workers, cached has %zd", costs_view.shape[0], n);
            goto done;
        }
    }
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "no workers to choose from");
        goto done;
    }
    {
        const int64_t *requests = cols[0].buf, *queued = cols[1].buf, *pending = cols[2].buf,
                      *committed = cols[3].buf, *capacity = cols[4].buf;
        const unsigned char *alive = alive_view.buf;
        double *costs = have_costs ? costs_view.buf : NULL;
        const double decode_weight = 2.0 * b2; /* as the numpy form's `2.0 * b2` */
        Py_ssize_t best = 0;
        double best_cost = 0.0;
        int64_t best_requests = 0;
        for (Py_ssize_t w = 0; w < n; w++) {
            long long c = PyLong_AsLongLong(cached_items[w]);
            if (c == -1 && PyErr_Occurred()) goto done;
            int64_t uncached = (int64_t)prompt - (int64_t)c;
            /* prefill = b1 * (queued + uncached * (1 + requests)) */
            int64_t work = (requests[w] + 1) * uncached + queued[w];
            double cost = (double)work * b1;
            /* decode = 2 b2 * min(pending decode, requests * L) */
            int64_t overlap = requests[w] * (int64_t)out_tokens;
            if (pending[w] < overlap) overlap = pending[w];
            cost += (double)overlap * decode_weight;
            /* eviction = b1 * max(0, committed + uncached + L - capacity) */
            int64_t overflow = committed[w] - capacity[w] + uncached + (int64_t)out_tokens;
            if (overflow < 0) overflow = 0;
            cost += (double)overflow * b1;
            if (!alive[w]) cost = INFINITY;
            if (costs != NULL) costs[w] = cost;
            if (w == 0 || cost < best_cost || (cost == best_cost && requests[w] < best_requests)) {
                best = w;
                best_cost = cost;
                best_requests = requests[w];
            }
        }
        result = PyLong_FromSsize_t(best);
    }
done:
    if (have_costs) PyBuffer_Release(&costs_view);
    if (have_alive) PyBuffer_Release(&alive_view);
    while (opened > 0) PyBuffer_Release(&cols[--opened]);
    Py_DECREF(cached);
    return result;
}

static PyMethodDef methods[] = {
    {"choose", (PyCFunction)(void (*)(void))choose, METH_FASTCALL,
     "choose(cached, prompt_tokens, output_tokens, b1, b2, requests, queued_prefill, pending_decode, "
     "committed, capacity, alive, costs_out=None) -> prefix_length_aware's worker"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_policy_costs", NULL, -1, methods};

PyMODINIT_FUNC PyInit__policy_costs(void) { return PyModule_Create(&module); }
