"""The Triton kernel, run by Triton's interpreter on the CPU (TRITON_INTERPRET=1), against the chunked formula.

The interpreter has no bfloat16, so float16 and float32 are tested here; tests marked ``gpu`` run the compiled
kernel on a CUDA device and are skipped without one.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is imported: its @triton.jit reads it
pytest.importorskip("triton")

from helpers import assert_close

from softmargin._chunks import PLAIN
from softmargin.kernels import triton_kernels as triton_ops
from softmargin.torch import _backends as torch_ops

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# the interpreter evaluates both sides of tl.where in NumPy, which warns on the 0 * inf the kernel then discards
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


def _compare(x, y, w, rtol, block=None, span=None):
    num_rows, num_classes = x.numel() // x.shape[-1], x.shape[-1]
    w_rows = torch_ops._weight_rows(w, x.shape, torch.float32)
    sums, grad = triton_ops.fused_rows(x, y, w_rows, num_rows, num_classes, 0.01, True, block=block, span=span)
    per_sample, ref_grad, _ = torch_ops._chunked(x.cpu(), y.cpu(), None if w is None else w.cpu(), None, None, PLAIN, "sum", True)
    ref_sums, ref_grad = per_sample.reshape(-1) * num_classes, ref_grad.reshape(num_rows, num_classes) * (0.01 * num_classes)
    assert grad.dtype == x.dtype
    finite = torch.isfinite(ref_sums)
    assert torch.equal(torch.isinf(sums.cpu()), torch.isinf(ref_sums))
    assert_close(sums.cpu()[finite].numpy(), ref_sums[finite].numpy(), rtol, "row sums")
    assert_close(grad.cpu().double().numpy(), ref_grad.double().numpy(), rtol, "grad")


@pytest.mark.skipif(not INTERPRETED, reason="interpreter tests need TRITON_INTERPRET=1")
@pytest.mark.parametrize(
    "num_classes,block,span", [(1, None, None), (37, 16, None), (300, 64, None), (300, 64, 128), (1000, None, None), (1000, 64, 64)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_interpreted_kernel_matches_formula(num_classes, block, span, dtype):
    gen = torch.Generator().manual_seed(num_classes)
    x = (torch.randn(5, num_classes, generator=gen) * 8).to(dtype)
    x[0, 0] = float("inf")
    x[1, -1] = -float("inf")
    y = (torch.rand(5, num_classes, generator=gen) < 0.4).to(dtype)
    y[0, 0] = 1  # a right prediction at +inf
    w = torch.rand(num_classes, generator=gen) + 0.1
    _compare(x, y, w, {torch.float32: 2e-6, torch.float16: 1e-3, torch.float64: 1e-13}[dtype], block, span)


@pytest.mark.skipif(not INTERPRETED, reason="interpreter tests need TRITON_INTERPRET=1")
def test_interpreted_soft_targets_full_weights_and_uint8():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 50, generator=gen) * 3
    _compare(x, torch.rand(4, 50, generator=gen), torch.rand(4, 50, generator=gen), 2e-6, 32)
    hard = torch.rand(4, 50, generator=gen) < 0.5
    _compare(x, hard, None, 2e-6, 32)


@pytest.mark.parametrize("multiprocessors", [4, 132])
@pytest.mark.parametrize("num_rows,num_classes", [(4096, 2000), (256, 100_000), (2, 100_000), (32, 10), (1, 1), (0, 5)])
def test_tiling_covers_every_column_once(num_rows, num_classes, multiprocessors):
    block, span, tiles = triton_ops.tiling(num_rows, num_classes, multiprocessors)
    assert span % block == 0 and span >= block
    assert (tiles - 1) * span < num_classes <= tiles * span  # every column in exactly one tile, none empty
    if tiles > 1:  # split only to fill the GPU, never into tiles shorter than four blocks
        assert span >= 4 * block and num_rows * (tiles - 1) < 8 * multiprocessors


@pytest.mark.skipif(not INTERPRETED, reason="interpreter tests need TRITON_INTERPRET=1")
def test_interpreted_kernel_is_deterministic_and_takes_bool_targets_without_copy():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 700, generator=gen) * 4
    y = torch.rand(3, 700, generator=gen) < 0.3
    first = triton_ops.fused_rows(x, y, None, 3, 700, 0.5, True, block=64, span=192)
    second = triton_ops.fused_rows(x, y, None, 3, 700, 0.5, True, block=64, span=192)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    _compare(x, y, None, 2e-6, 64, 192)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_kernel_matches_formula(dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 5000, generator=gen) * 8).to(dtype).cuda()
    y = (torch.rand(64, 5000, generator=gen) < 0.1).to(dtype).cuda()
    w = (torch.rand(5000, generator=gen) + 0.1).cuda()
    _compare(x, y, w, {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype])


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_end_to_end_against_torch():
    from softmargin.torch import multilabel_soft_margin_loss

    x = torch.randn(128, 1000, device="cuda", dtype=torch.float64, requires_grad=True)
    y = (torch.rand(128, 1000, device="cuda") < 0.2).double()
    loss = multilabel_soft_margin_loss(x, y)
    loss.backward()
    x2 = x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.multilabel_soft_margin_loss(x2, y)
    ref.backward()
    assert_close(loss.item(), ref.item(), 1e-12)
    assert_close(x.grad.cpu().numpy(), x2.grad.cpu().numpy(), 1e-12)
