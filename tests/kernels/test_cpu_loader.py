"""The kernel library's loader and ABI (kernels/cpu.py, csrc/softmargin.h): the checked argument struct, the C entry
point's rejection of bad arguments, the fallback where no library was built, no writes at run time."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

from softmargin.kernels import build, cpu

pytestmark = pytest.mark.skipif(cpu.kernel() is None, reason="no CPU kernel built here")


def _args(**changes):
    """A valid call on 2 x 3 float32 zeros (all arrays kept alive on the returned object), changed by ``changes``."""
    arrays = dict(x=np.zeros((2, 3), np.float32), y=np.zeros((2, 3), np.float32), w=np.ones(3, np.float32),
                  out=np.empty(2), grad=np.empty((2, 3), np.float32))  # fmt: skip
    args = cpu.FusedArgs(xtype=0, ytype=0, x=arrays["x"].ctypes.data, y=arrays["y"].ctypes.data,
                         weight=arrays["w"].ctypes.data, num_rows=2, num_classes=3, scale=1.0,
                         out=arrays["out"].ctypes.data, grad=arrays["grad"].ctypes.data, num_threads=1)  # fmt: skip
    for name, value in changes.items():
        setattr(args, name, value)
    args.keep = arrays
    return args


def _call(args):
    message = ctypes.create_string_buffer(200)
    status = cpu.kernel().softmargin_fused(ctypes.byref(args), message, len(message))
    return status, message.value.decode()


def test_a_valid_call_computes_the_loss():
    args = _args()
    assert _call(args) == (0, "")
    np.testing.assert_allclose(args.keep["out"], 3 * np.log(2.0), rtol=1e-7)  # l(0, 0) = log 2 per element
    np.testing.assert_allclose(args.keep["grad"], 0.5, rtol=1e-7)  # sigmoid(0) - 0


@pytest.mark.parametrize(
    "changes, status, message",
    [
        (dict(x=None), -1, "x is NULL"),
        (dict(weight=None), -1, "weight is NULL"),
        (dict(out=None), -1, "out is NULL"),
        (dict(y=None), -1, "y and sparse_indptr are both NULL"),
        (dict(options=1), -1, "pos_weight or mask is NULL"),
        (dict(num_rows=-1), -2, "negative"),
        (dict(num_classes=-5), -2, "negative"),
        (dict(weight_row_step=-3), -2, "row step is negative"),
        (dict(num_rows=2**40, num_classes=2**40), -2, "overflows"),
        (dict(num_rows=2**62, num_classes=1), -2, "overflows"),
        (dict(xtype=7), -3, "xtype"),
        (dict(xtype=-1), -3, "xtype"),
        (dict(xtype=4, ytype=4), -3, "xtype"),  # uint8 logits: no loop for them
        (dict(ytype=1), -3, "ytype"),  # float32 logits with float64 targets
        (dict(xtype=1, ytype=0), -3, "ytype"),  # float64 logits with float32 targets (only half logits take them)
        (dict(xtype=2, ytype=3), -3, "ytype"),  # float16 logits with bfloat16 targets
        (dict(options=2), -4, "options"),
    ],
)
def test_c_entry_point_rejects_bad_arguments(changes, status, message):
    args = _args()
    before = args.keep["out"].copy()
    got_status, got_message = _call(_args(**changes) if changes else args)
    assert got_status == status and message in got_message
    np.testing.assert_array_equal(args.keep["out"], before)  # nothing written


def test_null_args_and_bad_sparse_offsets_are_rejected():
    lib = cpu.kernel()
    assert lib.softmargin_fused(None, None, 0) == -1
    indptr = np.array([0, 2, 1], np.int64)
    args = _args(y=None, sparse_indptr=indptr.ctypes.data)
    assert _call(args) == (-4, "sparse_indptr is not non-decreasing")
    assert lib.softmargin_count_rows(None, 2, 3, None, 1) == -1
    assert lib.softmargin_count_rows(None, -2, 3, None, 1) == -2


def test_python_wrapper_turns_rejections_into_clear_errors():
    x = np.zeros((2, 3), np.float32)
    out = np.empty(2)
    with pytest.raises(cpu.KernelArgumentError, match="num_rows or num_classes is negative"):
        cpu.fused("float32", "float32", x.ctypes.data, x.ctypes.data, (x.ctypes.data, 0), (None, 0), (None, 0),
                  -2, 3, 1.0, None, None, out.ctypes.data, None, 1)  # fmt: skip
    with pytest.raises(cpu.KernelArgumentError, match="x is NULL"):
        cpu.fused("float32", "float32", 0, x.ctypes.data, (x.ctypes.data, 0), (None, 0), (None, 0),
                  2, 3, 1.0, None, None, out.ctypes.data, None, 1)  # fmt: skip
    with pytest.raises(cpu.KernelArgumentError, match="unknown dtype 'int8'"):
        cpu.fused("int8", "float32", x.ctypes.data, x.ctypes.data, (x.ctypes.data, 0), (None, 0), (None, 0),
                  2, 3, 1.0, None, None, out.ctypes.data, None, 1)  # fmt: skip
    assert issubclass(cpu.KernelArgumentError, ValueError)


def test_abi_is_checked_against_the_header():
    lib = cpu.kernel()
    assert cpu._abi_mismatch(lib) is None
    assert lib.softmargin_abi_version() == cpu.ABI_VERSION

    class Swapped(ctypes.Structure):  # two fields of one size swapped: the names tell
        _fields_ = [cpu.FusedArgs._fields_[1], cpu.FusedArgs._fields_[0], *cpu.FusedArgs._fields_[2:]]

    class Narrow(ctypes.Structure):  # num_rows as 32 bits: the offsets tell
        _fields_ = [(n, ctypes.c_int32 if n == "num_rows" else t) for n, t in cpu.FusedArgs._fields_]

    original = cpu.FusedArgs
    try:
        for wrong, expected in ((Swapped, "fields"), (Narrow, "num_rows")):
            cpu.FusedArgs = wrong
            assert expected in cpu._abi_mismatch(lib)
    finally:
        cpu.FusedArgs = original


def test_variant_is_one_this_cpu_supports():
    lib = cpu.kernel()
    assert cpu.variant() in build.automatic_variants()
    assert lib.softmargin_cpu_supports(cpu.variant().encode()) == 1
    assert lib.softmargin_cpu_supports(b"no such variant") == 0
    assert cpu.avx512_loops() == cpu.variant().startswith("avx512")


def test_no_library_means_no_kernel_and_no_warning(tmp_path, monkeypatch, recwarn):
    monkeypatch.setenv("SOFTMARGIN_KERNEL_DIR", str(tmp_path))
    assert cpu.kernel.__wrapped__() is None
    assert not recwarn.list


def test_unknown_forced_variant_warns_and_falls_back(monkeypatch):
    monkeypatch.setenv("SOFTMARGIN_CPU_VARIANT", "sse9")
    with pytest.warns(RuntimeWarning, match="sse9"):
        assert cpu.kernel.__wrapped__() is None


def test_runs_without_compiler_cache_or_writable_home(tmp_path):
    """Nothing is compiled or written at run time: no compiler on PATH, HOME unwritable, a read-only cwd."""
    env = dict(os.environ, PATH=str(tmp_path), HOME="/nonexistent", CC="/nonexistent/cc")
    env.pop("SOFTMARGIN_KERNEL_DIR", None)
    code = (
        "import numpy as np; from softmargin.kernels import cpu; assert cpu.kernel() is not None, 'no kernel';"
        "import softmargin.numpy as snp; snp.multilabel_soft_margin_loss(np.zeros((2, 3), np.float32), np.zeros((2, 3)))"
    )
    subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], env=env, check=True, cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_library_built_from_other_sources_is_reported(monkeypatch, recwarn):
    """An editable install whose csrc/ changed after the build: the loader says to rebuild."""
    path = build.library_path(cpu.variant())
    cpu._load(path)
    assert not recwarn.list  # built from the sources beside it
    monkeypatch.setattr(build, "source_hash", lambda: "0123456789abcdef")
    with pytest.warns(RuntimeWarning, match="other kernel sources.*python -m softmargin.kernels.build"):
        cpu._load(path)
