"""The Triton kernels, run by Triton's interpreter on the CPU (TRITON_INTERPRET=1), against the float64 formula
(``_formula.element_loss_and_grad_options``), the CPU path of the public API, mpmath and themselves (sparse against
dense, run against run).

The interpreter has neither bfloat16 nor libdevice (NumPy's float32 functions stand in), so float16, float32 and
float64 are tested here; the compiled kernel, bfloat16, sync-freedom and CUDA graphs are in tests/torch/test_gpu.py.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is imported: its @triton.jit reads it
pytest.importorskip("triton")

from helpers import (
    OPTION_CASES,
    assert_close,
    exact_element_loss,
    formula_rows,
    long_rows_with_exact_sums,
    option_operands,
)

import softmargin.torch as st
from softmargin.kernels import triton_kernels as tk

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = [
    # the interpreter evaluates both sides of tl.where in NumPy, which warns on the 0 * inf the kernel then discards
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support"),
]
interpreted = pytest.mark.skipif(not INTERPRETED, reason="interpreter tests need TRITON_INTERPRET=1")

DTYPES = [torch.float16, torch.float32, torch.float64]
#: against the float64 formula: float32 plain and pos_weight within a few roundings; focusing raises exp(-g * s)
#: with |g * s| up to ~40, so its argument's rounding grows by as much; float16's gradient is rounded to float16
RTOL_PLAIN = {torch.float16: 1e-3, torch.float32: 2e-6, torch.float64: 1e-12}
RTOL_FOCUS = {torch.float16: 1e-3, torch.float32: 1e-5, torch.float64: 1e-12}

N, C = 5, 300  # with block 64 and span 128: three tiles per row, the last one short, and a short last block


def _data(dtype, target="hard", seed=0, num_rows=N, num_classes=C):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(num_rows, num_classes, generator=gen, dtype=torch.float64) * 6).to(dtype)
    hard = torch.rand(num_rows, num_classes, generator=gen) < 0.3
    y = {
        "hard": hard.to(dtype),
        "soft": torch.rand(num_rows, num_classes, generator=gen, dtype=torch.float64).to(dtype),
        "bool": hard,
        "uint8": hard.to(torch.uint8),
    }[target]
    return x, y


def _check_rows(sums, grad, ref_sums, ref_grad, rtol, what=""):
    finite = torch.isfinite(ref_sums)
    assert torch.equal(torch.isinf(sums), torch.isinf(ref_sums)), what
    assert_close(sums[finite].double().numpy(), ref_sums[finite].numpy(), rtol, f"{what} row sums")
    assert_close(grad.double().numpy(), ref_grad.numpy(), rtol, f"{what} grad")


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_each_option_matches_the_float64_formula(name, dtype):
    x, y = _data(dtype, "soft" if name in ("smoothing", "everything") else "hard")
    x[0, 0], x[1, 5], x[2, 7] = float("inf"), -float("inf"), float("inf")
    y[0, 0], y[1, 5] = 1, 0  # right predictions at infinity; x[2, 7] is wrong at +inf unless y is 1
    opts = option_operands(OPTION_CASES[name], dtype, N, C)
    row_scale = torch.rand(N, dtype=torch.float64) + 0.5
    sums, grad = tk.fused_rows(x, y, **opts, scale=0.01, row_scale=row_scale, need_grad=True, block=64, span=128)
    assert sums.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and sums.shape == (N,)
    assert grad.dtype == dtype and grad.shape == x.shape
    assert torch.isfinite(grad).all()
    rtol = (RTOL_FOCUS if "gamma_neg" in OPTION_CASES[name] else RTOL_PLAIN)[dtype]
    _check_rows(sums, grad, *formula_rows(x, y, opts, 0.01, row_scale), rtol, name)


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["plain", "full weight", "pos_weight", "full mask", "smoothing", "everything"])
def test_each_option_matches_the_cpu_path_of_the_public_api(name, dtype):
    """The per-sample losses and the input gradient of ``softmargin.torch.multilabel_soft_margin_loss`` (reduction
    "none", gradient of their sum) on CPU tensors, from the kernel's row sums: divided by C, or with a mask by each
    row's observed labels (``row_scale`` carries that divisor into the gradient)."""
    x, y = _data(dtype, "soft" if name in ("smoothing", "everything") else "hard", seed=2)
    opts = option_operands(OPTION_CASES[name], dtype, N, C, seed=3)
    mask = opts.get("mask")
    divisor = torch.full((N,), float(C), dtype=torch.float64) if mask is None else mask.expand(N, C).sum(1).double()
    sums, grad = tk.fused_rows(x, y, **opts, scale=1.0, row_scale=1 / divisor, need_grad=True, block=64, span=128)
    xr = x.clone().requires_grad_(True)
    per_sample = st.multilabel_soft_margin_loss(xr, y, reduction="none", **opts)
    per_sample.sum().backward()
    rtol = (RTOL_FOCUS if "gamma_neg" in OPTION_CASES[name] else RTOL_PLAIN)[dtype]
    assert_close((sums.double() / divisor).numpy(), per_sample.detach().double().numpy(), rtol, "per-sample loss")
    assert_close(grad.double().numpy(), xr.grad.double().numpy(), rtol, "grad")


@interpreted
@pytest.mark.parametrize("target", ["soft", "bool", "uint8"])
def test_target_dtypes_and_strided_rows(target):
    x, y = _data(torch.float32, target, seed=4)
    ref = formula_rows(x, y.to(torch.float64), {}, 0.5)
    _check_rows(*tk.fused_rows(x, y, scale=0.5, need_grad=True, block=64), *ref, 2e-6, target)
    wide = torch.zeros(N, C + 13, dtype=y.dtype)
    wide[:, 7 : 7 + C] = y
    strided = wide[:, 7 : 7 + C]  # rows 313 elements apart, like a chunk target[r0:r1, c0:c1]
    assert not strided.is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip(tk.fused_rows(x, strided, scale=0.5, need_grad=True, block=64),
                                                  tk.fused_rows(x, y, scale=0.5, need_grad=True, block=64)))  # fmt: skip


@interpreted
def test_strided_row_scale_is_read_as_its_values():
    """A row_scale that is a view with a stride (a column of per-sample weights, an expanded incoming gradient) scales
    each row by its own value: the kernel read row_scale[row] at offset row, so the second column of an (N, 2) table
    scaled rows 1.. by elements of the first column (here 40 % of the gradient's largest element off)."""
    x, y = _data(torch.float32, seed=4)
    table = torch.rand(N, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.5
    row_scale = table[:, 1]
    assert not row_scale.is_contiguous()
    ref = formula_rows(x, y, {}, 0.5, row_scale.clone())
    _check_rows(*tk.fused_rows(x, y, scale=0.5, row_scale=row_scale, need_grad=True, block=64), *ref, 2e-6, "strided")
    one = torch.tensor([2.0], dtype=torch.float64).expand(N)  # stride 0
    ref = formula_rows(x, y, {}, 0.5, one.clone())
    _check_rows(*tk.fused_rows(x, y, scale=0.5, row_scale=one, need_grad=True, block=64), *ref, 2e-6, "expanded")


def _csr(y):
    csr = y.to_sparse_csr()
    return csr.crow_indices(), csr.col_indices(), csr.values()


@interpreted
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", [False, True])
@pytest.mark.parametrize("name", ["plain", "everything"])
def test_sparse_targets_give_bitwise_the_dense_result(name, values, dtype):
    x, y = _data(dtype, "soft" if values else "hard", seed=5, num_rows=4, num_classes=450)
    y = y * (torch.rand(4, 450, generator=torch.Generator().manual_seed(6)) < 0.05)  # about 5 % positives
    y[1] = 0  # a row without positives
    y[2, 50:250] = 1  # a dense run across blocks and tiles
    y[3, 420:] = 1  # the last block
    opts = option_operands(OPTION_CASES[name], dtype, num_rows=4, num_classes=450)
    indptr, indices, vals = _csr(y)
    dense = tk.fused_rows(x, y, **opts, scale=0.1, need_grad=True, block=64, span=192)
    sparse = tk.fused_rows(x, None, **opts, sparse=(indptr, indices, vals if values else None), scale=0.1,
                           need_grad=True, block=64, span=192)  # fmt: skip
    assert torch.equal(dense[0], sparse[0]) and torch.equal(dense[1], sparse[1])


@interpreted
def test_sparse_chunk_of_a_larger_target_needs_no_slicing():
    """``sparse_origin``: a block of rows and columns of the CSR target, as the linear head walks it."""
    x, y = _data(torch.float32, seed=7, num_rows=6, num_classes=700)
    y = (y * (torch.rand(6, 700, generator=torch.Generator().manual_seed(8)) < 0.1)).to(torch.int32)
    indptr, indices, _ = _csr(y)
    indices = indices.to(torch.int32)  # torch's CSR may carry int32 indices
    chunk = x[2:5, 130:450].contiguous()
    sparse = tk.fused_rows(chunk, None, sparse=(indptr, indices, None), sparse_origin=(2, 130), scale=1.0,
                           need_grad=True, block=64)  # fmt: skip
    dense = tk.fused_rows(chunk, y[2:5, 130:450].float(), scale=1.0, need_grad=True, block=64)
    assert torch.equal(dense[0], sparse[0]) and torch.equal(dense[1], sparse[1])


@interpreted
@pytest.mark.parametrize("bad", [1.5, -0.25, float("nan")])
@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_target_check_is_a_device_assertion(form, bad):
    x, y = _data(torch.float32, "soft", seed=9)
    y[3, 200] = bad
    target = y if form == "dense" else None
    sparse = _csr(y) if form == "sparse" else None
    with pytest.raises(Exception, match=r"target value lies outside \[0, 1\] or is NaN"):
        tk.fused_rows(x, target, sparse=sparse, scale=1.0, need_grad=False, check_target=True, block=64)
    sums, _ = tk.fused_rows(x, target, sparse=sparse, scale=1.0, need_grad=False, block=64)  # unchecked: computes
    assert sums.shape == (N,)
    y[3, 200] = 1.0
    tk.fused_rows(x, y, scale=1.0, need_grad=True, check_target=True, block=64)  # a valid target passes


@interpreted
@pytest.mark.slow  # the interpreter: about 1.5 s a case
@pytest.mark.parametrize(
    "name, bad, shape", [("weight", -0.5, "class"), ("weight", float("nan"), "full"), ("weight", float("inf"), "class"),
                         ("pos_weight", 0.0, "full"), ("pos_weight", float("inf"), "class")],
)  # fmt: skip
def test_weight_check_is_a_device_assertion(name, bad, shape):
    """``check_weights``: the kernel marks the weights it reads (weight in [0, inf), pos_weight in (0, inf)); a bad
    one fails the assertion, the same call unchecked computes, good weights pass."""
    x, y = _data(torch.float32, "soft", seed=12, num_rows=4, num_classes=300)
    size = (x.shape[1],) if shape == "class" else x.shape
    weights = {"weight": torch.rand(size) + 0.5, "pos_weight": torch.rand(size) + 0.5}
    tk.fused_rows(x, y, **weights, scale=1.0, need_grad=True, check_weights=True, block=64)  # valid: passes
    weights[name].reshape(-1)[weights[name].numel() // 2] = bad
    with pytest.raises(Exception, match="a weight is negative, infinite or NaN, or a pos_weight is not positive"):
        tk.fused_rows(x, y, **weights, scale=1.0, need_grad=True, check_weights=True, block=64)
    with pytest.raises(Exception, match=r"outside \[0, 1\].*; or a weight is negative"):
        tk.fused_rows(x, y, **weights, scale=1.0, need_grad=True, check_target=True, check_weights=True, block=64)
    sums, _ = tk.fused_rows(x, y, **weights, scale=1.0, need_grad=False, block=64)  # unchecked: computes
    assert sums.shape == (x.shape[0],)


@interpreted
def test_uint8_target_above_one_fails_the_check():
    x, y = _data(torch.float32, "uint8", seed=10)
    y[0, 0] = 2
    with pytest.raises(Exception, match="outside"):
        tk.fused_rows(x, y, scale=1.0, need_grad=True, check_target=True)


@interpreted
@pytest.mark.parametrize("name", ["plain", "everything"])
def test_bitwise_deterministic_and_needs_no_grad(name):
    x, y = _data(torch.float32, "soft", seed=11, num_rows=3, num_classes=450)
    opts = option_operands(OPTION_CASES[name], torch.float32, num_rows=3, num_classes=450)
    runs = [tk.fused_rows(x, y, **opts, scale=0.5, need_grad=True, block=64, span=192) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    sums, grad = tk.fused_rows(x, y, **opts, scale=0.5, need_grad=False, block=64, span=192)
    assert grad is None and torch.equal(sums, runs[0][0])


@interpreted
def test_gradient_written_over_the_input_and_linear_chunk():
    gen = torch.Generator().manual_seed(12)
    hidden, head = torch.randn(6, 16, generator=gen), torch.randn(90, 16, generator=gen)
    bias = torch.randn(90, generator=gen)
    y = (torch.rand(6, 90, generator=gen) < 0.2).float()
    logits = torch.nn.functional.linear(hidden, head, bias)
    expected = tk.fused_rows(logits, y, scale=0.25, need_grad=True)
    in_place = logits.clone()
    sums, grad = tk.fused_rows(in_place, y, scale=0.25, need_grad=True, grad_out=in_place)
    assert grad.data_ptr() == in_place.data_ptr()
    assert torch.equal(sums, expected[0]) and torch.equal(grad, expected[1])
    sums, grad = tk.linear_logits_chunk(hidden, head, bias, y, scale=0.25, need_grad=True)
    assert_close(sums.numpy(), expected[0].numpy(), 1e-6)
    assert_close(grad.numpy(), expected[1].numpy(), 1e-6)


@interpreted
def test_legacy_positional_call():
    x, y = _data(torch.float32, seed=13)
    w = torch.rand(1, C) + 0.5
    old = tk.fused_rows(x.reshape(N, 1, C), y.reshape(N, 1, C), w, N, C, 0.01, True)
    new = tk.fused_rows(x, y, weight=w, scale=0.01, need_grad=True)
    assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])


@interpreted
def test_runs_inside_a_triton_op():
    """The launcher inside ``torch.library.triton_op`` (the way the torch backend registers it), called eagerly and
    traced by make_fx. Under the interpreter ``wrap_triton`` runs the kernel directly; FakeTensor tracing into the
    kernel (opcheck, torch.compile) needs a GPU: tests/torch/test_gpu.py."""
    from torch.fx.experimental.proxy_tensor import make_fx

    @torch.library.triton_op("softmargin_test::interpreted_rows", mutates_args={})
    def rows(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        sums, grad = tk.fused_rows(x, y, weight=weight, gamma_neg=2.0, scale=scale, need_grad=True, check_target=True)
        return sums, grad

    x, y = _data(torch.float32, seed=14)
    w = torch.rand(C) + 0.5
    ours = torch.ops.softmargin_test.interpreted_rows(x, y, w, 0.5)
    direct = tk.fused_rows(x, y, weight=w, gamma_neg=2.0, scale=0.5, need_grad=True)
    assert torch.equal(ours[0], direct[0]) and torch.equal(ours[1], direct[1])
    graph = make_fx(lambda a, b, c: torch.ops.softmargin_test.interpreted_rows(a, b, c, 0.5))(x, y, w)
    assert "softmargin_test.interpreted_rows" in graph.code


def test_launches_run_on_the_logits_device():
    """Triton launches on the current CUDA device, not on the tensors': logits on cuda:1 while cuda:0 is current need
    ``torch.cuda.device(cuda:1)`` around the launch (without it, a crash or garbage read from the other GPU; run for
    real by tests/torch/test_gpu.py with two GPUs). A fake tensor on cuda:1 stands in for one here; while a dispatch
    mode traces, the device is left to the generated code."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    with mode:
        logits = torch.empty(3, 4, device="cuda:1")
        assert isinstance(tk._launch_device(logits), contextlib.nullcontext)
    guard = tk._launch_device(logits)
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(tk._launch_device(torch.zeros(3, 4)), contextlib.nullcontext)


@interpreted
def test_every_launch_is_inside_the_device_guard(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def guard(x):
        entered.append(x.device)
        yield
        entered.append(None)

    launched = []
    launcher = tk._launcher

    def recording(kernel, x):
        launched.append(entered[-1:] == [x.device])  # inside the guard of x's device
        return launcher(kernel, x)

    monkeypatch.setattr(tk, "_launch_device", guard)
    monkeypatch.setattr(tk, "_launcher", recording)
    x, y = _data(torch.float32, seed=15)
    tk.fused_rows(x, y, scale=1.0, need_grad=True, block=64, span=128)  # three tiles: both kernels
    assert launched == [True, True] and entered == [x.device, None]


def test_bad_shapes_name_the_argument():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"y.shape == \(3, 5\), expected x.shape == \(3, 4\)"):
        tk.fused_rows(x, torch.zeros(3, 5), scale=1.0, need_grad=False)
    with pytest.raises(ValueError, match=r"weight.shape == \(2, 4\), expected \(4,\), \(1, 4\) or \(3, 4\)"):
        tk.fused_rows(x, torch.zeros(3, 4), weight=torch.ones(2, 4), scale=1.0, need_grad=False)
    with pytest.raises(ValueError, match="exactly one of"):
        tk.fused_rows(x, None, scale=1.0, need_grad=False)
    with pytest.raises(TypeError, match="x.dtype == torch.int64"):
        tk.fused_rows(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4), scale=1.0, need_grad=False)
    with pytest.raises(TypeError, match="scale and need_grad"):
        tk.fused_rows(x, torch.zeros(3, 4))


def test_cpu_tensors_without_the_interpreter_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(tk, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        tk.fused_rows(torch.zeros(3, 4), torch.zeros(3, 4), scale=1.0, need_grad=False)


@interpreted
def test_empty_shapes_launch_nothing():
    sums, grad = tk.fused_rows(torch.zeros(0, 5), torch.zeros(0, 5), scale=1.0, need_grad=True)
    assert sums.shape == (0,) and grad.shape == (0, 5)
    sums, grad = tk.fused_rows(torch.zeros(3, 0), torch.zeros(3, 0), scale=1.0, need_grad=True)
    assert torch.equal(sums, torch.zeros(3)) and grad.shape == (3, 0)


@pytest.mark.parametrize("multiprocessors", [4, 132])
@pytest.mark.parametrize(
    "num_rows,num_classes", [(4096, 2000), (256, 100_000), (2, 100_000), (1, 10**7), (32, 10), (1, 1), (0, 5)]
)
def test_tiling_covers_every_column_once(num_rows, num_classes, multiprocessors):
    block, span, tiles = tk.tiling(num_rows, num_classes, multiprocessors)
    assert span % block == 0 and span >= block
    assert (tiles - 1) * span < num_classes <= tiles * span  # every column in exactly one tile, none empty
    assert tiles <= 1024  # one block of the combining kernel
    if tiles > 1:  # split only to fill the GPU, never into tiles shorter than four blocks
        assert span >= 4 * block and num_rows * (tiles - 1) < 8 * multiprocessors


# ---- accuracy against mpmath (float32: per-sample loss within 2e-7 relative) ----


@interpreted
@pytest.mark.parametrize("target", [0.0, 1.0])
def test_float32_element_accuracy_against_mpmath(target):
    """One class per row: a row sum is one element's loss, computed in float32 (NumPy's exp and log here)."""
    magnitudes = np.logspace(-5, np.log10(80), 60)
    x = np.concatenate([-magnitudes, magnitudes, [0.0]]).astype(np.float32)
    xt = torch.from_numpy(x).reshape(-1, 1)
    sums, grad = tk.fused_rows(xt, torch.full_like(xt, target), scale=1.0, need_grad=True)
    exact = np.array([exact_element_loss(float(v), target) for v in x])
    rel = np.abs(sums.double().numpy() - exact) / exact
    assert rel.max() <= 4e-7, f"worst element loss error {rel.max():.2e} at x={x[rel.argmax()]}"
    x64 = x.astype(np.float64)
    exact_grad = 1 / (1 + np.exp(-x64)) if target == 0.0 else -1 / (1 + np.exp(x64))  # sigmoid(x) - y, no cancelling
    grad_rel = np.abs(grad.double().numpy().ravel() - exact_grad) / np.abs(exact_grad)
    assert grad_rel.max() <= 4e-7, f"worst gradient error {grad_rel.max():.2e} at x={x[grad_rel.argmax()]}"


def _assert_rows_accurate(num_rows, num_classes, seed):
    x, y, w, exact = long_rows_with_exact_sums(num_rows, num_classes, seed)
    sums, _ = tk.fused_rows(x, y, weight=w, scale=1.0, need_grad=False)
    assert sums.dtype == torch.float32
    rel = np.abs(sums.double().numpy() - exact) / exact
    assert rel.max() <= 2e-7, f"row sums off by {rel.max():.2e} relative"
    # the per-sample loss the backend reports: the float32 row sum over C, returned in float32
    per_sample = (sums / num_classes).numpy().astype(np.float64)
    assert np.all(np.abs(per_sample - exact / num_classes) <= 2e-7 * exact / num_classes)


@interpreted
def test_float32_row_sums_of_many_classes_against_mpmath():
    _assert_rows_accurate(2, 20_000, seed=15)  # five tiles per row: the tile sums are combined too


@interpreted
@pytest.mark.slow
def test_float32_row_sums_of_a_million_classes_against_mpmath():
    _assert_rows_accurate(2, 10**6, seed=16)


# ---- the compiled kernel, without a GPU: Triton's ahead-of-time compiler for a CUDA target ----

_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from softmargin.kernels._triton_rows import _combine_tiles_kernel, _rows_kernel

names = list(_rows_kernel.arg_names)
flags = [n for n in names if n.isupper() and n not in ("BLOCK", "ACCURATE")]
aligned = [n for n in names if n.endswith("_ptr")] + ["num_classes", "span", "y_stride", "w_stride"]


def signature(xdt, ydt):
    types = {"x_ptr": xdt, "g_ptr": xdt, "val_ptr": xdt, "y_ptr": ydt, "m_ptr": "u8", "ok_ptr": "u8",
             "indptr_ptr": "i64", "idx_ptr": "i64", "out_ptr": "fp64" if xdt == "fp64" else "fp32"}
    out = {}
    for n in names:
        if n.isupper():
            out[n] = "constexpr"
        elif n.endswith("_ptr"):
            out[n] = "*" + types.get(n, "fp32")
        else:
            out[n] = "fp32" if n.endswith(("_hi", "_lo")) else "i32"
    return out


for xdt, ydt, on in [("fp32", "fp32", ["HAS_W", "HAS_GRAD"]), ("bf16", "u8", ["HAS_W", "HAS_GRAD", "SPLIT"]),
                     ("fp16", "fp16", flags), ("bf16", "bf16", flags), ("fp32", "fp32", flags), ("fp64", "fp64", flags)]:
    constants = {n: n in on for n in flags} | {"BLOCK": 1024, "ACCURATE": True}
    source = ASTSource(fn=_rows_kernel, signature=signature(xdt, ydt),
                       constexprs={(names.index(k),): v for k, v in constants.items()},
                       attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned})
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
    lines = [line.strip() for line in ptx.splitlines() if not line.strip().startswith("//")]
    print("RESULT", xdt, len(on), sum(".f64" in line for line in lines),
          any("ld.global.v4" in line for line in lines), flush=True)
source = ASTSource(fn=_combine_tiles_kernel, signature={"partial_ptr": "*fp32", "out_ptr": "*fp32", "num_tiles": "i32",
                                                        "BLOCK": "constexpr"}, constexprs={(3,): 64})
triton.compile(source, target=GPUTarget("cuda", 90, 32))
print("RESULT combine", flush=True)
"""


@pytest.mark.slow
def test_kernels_compile_for_a_gpu_and_float32_paths_have_no_float64():
    """Every option compiled to PTX for sm_90 by Triton's own compiler (no GPU needed, only Triton's CUDA backend):
    what the interpreter cannot check (types, control flow the compiler takes), no float64 instruction in the
    float16/bfloat16/float32 paths, and vector loads where rows are aligned."""
    import subprocess
    import sys

    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("Triton's CUDA backend is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert len(rows) == 7 and rows[-1] == ["combine"]
    for xdt, _, f64_lines, vector_loads in rows[:-1]:
        assert vector_loads == "True", xdt
        assert (int(f64_lines) == 0) == (xdt != "fp64"), f"{xdt}: {f64_lines} float64 instructions"
