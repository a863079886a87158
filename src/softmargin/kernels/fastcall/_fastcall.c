/* softmargin.kernels._fastcall: the eager fast path's two kernel calls (softmargin_reduced, softmargin_scale) as
 * CPython functions (METH_FASTCALL), to save what ctypes costs per call (building the argument struct and converting
 * a dozen arguments: about 3 microseconds, a tenth of a small call).
 *
 * It links nothing: kernels/cpu.py loads the kernel library of the best CPU variant through ctypes as always, and
 * hands this module the two functions' addresses (bind). It is built with the package when the Python headers are
 * there; where it is not, cpu.py calls the same functions through ctypes. The argument struct comes from the ABI
 * header itself, so nothing is restated here. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../csrc/softmargin.h"

typedef int (*reduced_fn)(const softmargin_args *, int32_t, int32_t, int32_t, int32_t, int32_t, void *, char *, int64_t);
typedef int (*scale_fn)(void *, int32_t, int64_t, const void *, int32_t, double, int32_t);

static reduced_fn reduced_ptr;
static scale_fn scale_ptr;

/* An int argument, or a pointer (None: NULL); -1 with an exception set on failure (checked by the caller). */
static int64_t as_int(PyObject *o) { return PyLong_AsLongLong(o); }
static void *as_ptr(PyObject *o) { return o == Py_None ? NULL : PyLong_AsVoidPtr(o); }

static PyObject *bind(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 2) return PyErr_Format(PyExc_TypeError, "bind() takes 2 addresses, %zd given", n);
    void *r = PyLong_AsVoidPtr(args[0]), *s = PyLong_AsVoidPtr(args[1]);
    if (PyErr_Occurred()) return NULL;
    if (!r || !s) return PyErr_Format(PyExc_ValueError, "bind(): a NULL function address");
    reduced_ptr = (reduced_fn)r;
    scale_ptr = (scale_fn)s;
    Py_RETURN_NONE;
}

/* reduced(xtype, ytype, x, y, weight, weight_type, num_rows, num_classes, grad, num_threads, per_sample_type,
 * result_type, reduction, check, result) -> status, as kernels/cpu.py's reduced() (which raises on a negative status with the
 * kernel's message). */
static PyObject *reduced(PyObject *self, PyObject *const *a, Py_ssize_t n) {
    if (n != 15) return PyErr_Format(PyExc_TypeError, "reduced() takes 15 arguments, %zd given", n);
    if (!reduced_ptr) return PyErr_Format(PyExc_RuntimeError, "reduced(): bind() was not called");
    softmargin_args s = {0};
    s.xtype = (int32_t)as_int(a[0]);
    s.ytype = (int32_t)as_int(a[1]);
    s.x = as_ptr(a[2]);
    s.y = as_ptr(a[3]);
    s.weight = as_ptr(a[4]);
    const int32_t weight_type = (int32_t)as_int(a[5]);
    s.num_rows = as_int(a[6]);
    s.num_classes = as_int(a[7]);
    s.grad = as_ptr(a[8]);
    s.num_threads = (int32_t)as_int(a[9]);
    const int32_t per_sample_type = (int32_t)as_int(a[10]), result_type = (int32_t)as_int(a[11]);
    const int32_t reduction = (int32_t)as_int(a[12]);
    const int check = PyObject_IsTrue(a[13]);
    void *result = as_ptr(a[14]);
    if (PyErr_Occurred()) return NULL;
    s.scale = s.num_classes > 0 ? 1.0 / (double)s.num_classes : 0.0;
    int status;
    /* without the GIL, as ctypes and torch's operators run: holding it, a large call stalled every other Python thread
       for its whole length (measured: 450 ms beside a loop of 8192 x 2000 losses) */
    Py_BEGIN_ALLOW_THREADS
    status = reduced_ptr(&s, weight_type, per_sample_type, result_type, reduction, check, result, NULL, 0);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(status);
}

/* scale(grad, dtype, n, factor, factor_type, divisor, num_threads) -> status. */
static PyObject *scale(PyObject *self, PyObject *const *a, Py_ssize_t n) {
    if (n != 7) return PyErr_Format(PyExc_TypeError, "scale() takes 7 arguments, %zd given", n);
    if (!scale_ptr) return PyErr_Format(PyExc_RuntimeError, "scale(): bind() was not called");
    void *grad = as_ptr(a[0]);
    const int32_t dtype = (int32_t)as_int(a[1]);
    const int64_t count = as_int(a[2]);
    const void *factor = as_ptr(a[3]);
    const int32_t factor_type = (int32_t)as_int(a[4]);
    const double divisor = PyFloat_AsDouble(a[5]);
    const int32_t threads = (int32_t)as_int(a[6]);
    if (PyErr_Occurred()) return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = scale_ptr(grad, dtype, count, factor, factor_type, divisor, threads);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(status);
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL, "bind(reduced_address, scale_address)"},
    {"reduced", (PyCFunction)(void (*)(void))reduced, METH_FASTCALL, "softmargin_reduced (see kernels/cpu.py)"},
    {"scale", (PyCFunction)(void (*)(void))scale, METH_FASTCALL, "softmargin_scale (see kernels/cpu.py)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastcall", "The eager fast path's kernel calls.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__fastcall(void) { return PyModule_Create(&module); }
