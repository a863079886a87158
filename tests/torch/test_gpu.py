"""The public PyTorch API on a CUDA device: the compiled Triton kernel for the plain loss, the chunked path for the
options, sparse targets and the fused linear head. Every test here is marked ``gpu`` and skipped without a CUDA
device (as in CI); ``scripts/gpu_check.sh`` runs them on a lent GPU."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import RTOL, assert_close, reference_grad, reference_loss

import softmargin.torch as st

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1", reason="needs a CUDA device"
    ),
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support"),
]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _data(shape, dtype, seed=0, scale=4.0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    y = (torch.rand(*shape, generator=gen) < 0.2).to(dtype)
    return x, y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight_kind", [None, "class", "full"])
@pytest.mark.parametrize("shape", [(64, 300), (8, 40_000), (3, 5, 17)])
def test_cuda_loss_and_grad_against_float64_reference(dtype, reduction, weight_kind, shape):
    x, y = _data(shape, dtype)
    w = None if weight_kind is None else (torch.rand(shape[-1] if weight_kind == "class" else shape, dtype=torch.float64) + 0.5).to(dtype)
    xc = x.cuda().requires_grad_(True)
    loss = st.multilabel_soft_margin_loss(xc, y.cuda(), weight=None if w is None else w.cuda(), reduction=reduction)
    grad_output = torch.rand(loss.shape, dtype=torch.float64) + 0.5
    loss.backward(grad_output.to(dtype).cuda())
    assert loss.dtype == dtype and xc.grad.dtype == dtype and xc.grad.is_cuda
    # the reference sees the same (rounded) inputs, in float64
    args = (x.double().numpy(), y.double().numpy(), None if w is None else w.double().numpy(), reduction)
    rtol = RTOL[str(dtype).removeprefix("torch.")]
    assert_close(loss.detach().double().cpu().numpy(), reference_loss(*args), rtol, "loss")
    go = grad_output.to(dtype).double().numpy()
    expected = reference_grad(*args) * (go[..., None] if reduction == "none" else go)
    # float16's gradients of a mean over many elements are subnormal (spacing 2^-24): rounded once when made and once
    # more when scaled by grad_output in float16
    atol = 2.0**-24 * (1.0 + go.max()) if dtype == torch.float16 else 0.0
    assert_close(xc.grad.double().cpu().numpy(), expected, rtol, "grad", atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_torch_itself(dtype):
    x, y = _data((256, 3000), dtype, seed=1)
    w = torch.rand(3000, dtype=dtype) + 0.5
    xa = x.cuda().requires_grad_(True)
    xb = x.cuda().requires_grad_(True)
    ours = st.MultiLabelSoftMarginLoss(weight=w).cuda()(xa, y.cuda())
    ref = torch.nn.MultiLabelSoftMarginLoss(weight=w).cuda()(xb, y.cuda())
    ours.backward()
    ref.backward()
    rtol = RTOL[str(dtype).removeprefix("torch.")]
    assert_close(ours.item(), ref.item(), rtol, "loss")
    assert_close(xa.grad.cpu().numpy(), xb.grad.cpu().numpy(), rtol, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_infinite_logits_give_finite_gradients(dtype):
    x = torch.tensor([[float("inf"), -float("inf"), 0.0, float("inf")]], dtype=dtype, device="cuda", requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=dtype, device="cuda")
    per_sample = st.multilabel_soft_margin_loss(x, y, reduction="none")
    per_sample.sum().backward()
    assert torch.isinf(per_sample).all()  # the last element is wrong at infinity
    assert torch.isfinite(x.grad).all()
    x2 = x.detach()[:, :3].clone().requires_grad_(True)
    loss = st.multilabel_soft_margin_loss(x2, y[:, :3])
    loss.backward()
    assert_close(loss.item(), np.log(2.0) / 3, RTOL[str(dtype).removeprefix("torch.")])
    assert_close(x2.grad.double().cpu().numpy(), [[0.0, 0.0, -0.5 / 3]], 1e-3)


def test_cuda_float16_many_classes_stays_finite():
    x, y = _data((4, 100_000), torch.float16, seed=2)
    loss = st.multilabel_soft_margin_loss(x.cuda(), y.cuda())
    assert torch.isfinite(loss)
    assert_close(loss.item(), reference_loss(x.double().numpy(), y.double().numpy()), 1e-3)


def test_cuda_is_bitwise_deterministic_with_split_rows():
    x, y = _data((2, 300_000), torch.float32, seed=3)  # few wide rows: each cut into several tiles
    results = []
    for _ in range(3):
        xc = x.cuda().requires_grad_(True)
        loss = st.multilabel_soft_margin_loss(xc, y.cuda(), reduction="none")
        loss.sum().backward()
        results.append((loss.detach().cpu(), xc.grad.cpu()))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])
    assert_close(results[0][0].double().numpy(), reference_loss(x.double().numpy(), y.double().numpy(), reduction="none"), 1e-6)


def test_cuda_bool_and_uint8_targets():
    x, y = _data((32, 500), torch.float32, seed=4)
    ref = st.multilabel_soft_margin_loss(x.cuda(), y.cuda())
    for target in (y.bool(), y.to(torch.uint8)):
        assert_close(st.multilabel_soft_margin_loss(x.cuda(), target.cuda()).item(), ref.item(), 1e-7)


@pytest.mark.parametrize(
    "options",
    [dict(pos_weight="c"), dict(mask="m"), dict(label_smoothing=0.1), dict(gamma_pos=1.0, gamma_neg=4.0, clip=0.05)],
)
def test_cuda_options_match_cpu(options):
    x, y = _data((64, 700), torch.float64, seed=5)
    gen = torch.Generator().manual_seed(6)
    extra = {"c": torch.rand(700, generator=gen, dtype=torch.float64) + 0.5, "m": torch.rand(64, 700, generator=gen) < 0.8}
    results = []
    for device in ("cpu", "cuda"):
        kw = {k: (extra[v].to(device) if isinstance(v, str) else v) for k, v in options.items()}
        xd = x.detach().clone().to(device).requires_grad_(True)
        loss = st.multilabel_soft_margin_loss(xd, y.to(device), **kw)
        loss.backward()
        results.append((loss.item(), xd.grad.cpu().numpy()))
    assert_close(results[1][0], results[0][0], 1e-12, "loss")
    assert_close(results[1][1], results[0][1], 1e-12, "grad")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_kernel_runs_on_the_logits_device_not_the_current_one():
    """Logits on cuda:1 while cuda:0 is current (a model spread over GPUs, no set_device): Triton launches on the
    current device, so the launcher enters the logits' device first (without it, a crash or garbage)."""
    x, y = _data((64, 700), torch.float32, seed=5)
    results = []
    for device in ("cpu", "cuda:1"):
        with torch.cuda.device(0):
            xd = x.detach().clone().to(device).requires_grad_(True)
            loss = st.multilabel_soft_margin_loss(xd, y.to(device), gamma_neg=2.0, clip=0.05)
            loss.backward()
            torch.cuda.synchronize(1)
        results.append((loss.item(), xd.grad.cpu().numpy()))
    assert_close(results[1][0], results[0][0], 1e-6, "loss")
    assert_close(results[1][1], results[0][1], 1e-6, "grad")


def test_cuda_sparse_targets_match_dense():
    x, y = _data((16, 5000), torch.float32, seed=7)
    dense = st.multilabel_soft_margin_loss(x.cuda(), y.cuda())
    sparse = st.multilabel_soft_margin_loss(x.cuda(), y.cuda().to_sparse_csr())
    assert_close(sparse.item(), dense.item(), 1e-6)


def test_cuda_gradcheck():
    x = torch.randn(3, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    y = torch.rand(3, 7, dtype=torch.float64, device="cuda")
    w = torch.rand(7, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: st.multilabel_soft_margin_loss(a, y, weight=b), (x, w))
    assert torch.autograd.gradgradcheck(lambda a: st.multilabel_soft_margin_loss(a, y), (x,))


def test_cuda_linear_head_matches_linear_plus_loss():
    gen = torch.Generator().manual_seed(8)
    hidden = torch.randn(32, 16, generator=gen, dtype=torch.float64)
    weight = torch.randn(20_000, 16, generator=gen, dtype=torch.float64) * 0.3
    bias = torch.randn(20_000, generator=gen, dtype=torch.float64)
    target = (torch.rand(32, 20_000, generator=gen) < 0.001).double()
    grads = []
    for fused in (True, False):
        h, w, b = (t.cuda().requires_grad_(True) for t in (hidden, weight, bias))
        if fused:
            loss = st.linear_multilabel_soft_margin_loss(h, w, b, target.cuda(), chunk_size=3000)
        else:
            loss = st.multilabel_soft_margin_loss(h @ w.T + b, target.cuda())
        loss.backward()
        grads.append([loss.item()] + [t.grad.cpu().numpy() for t in (h, w, b)])
    assert_close(grads[0][0], grads[1][0], 1e-12, "loss")
    for a, b in zip(grads[0][1:], grads[1][1:]):
        assert_close(a, b, 1e-11)


def test_cuda_forward_and_backward_allocate_one_gradient():
    x, y = _data((4096, 2000), torch.float32, seed=9)
    x, y = x.cuda().requires_grad_(True), y.cuda()
    st.multilabel_soft_margin_loss(x, y).backward()  # warm-up: compile, caches
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    st.multilabel_soft_margin_loss(x, y).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra <= 1.05 * x.numel() * x.element_size() + (1 << 20)


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_cuda_float32_element_accuracy_against_mpmath(target):
    from helpers import exact_element_loss
    from scipy.special import expit

    magnitudes = np.logspace(-6, 4, 600)
    x = np.concatenate([-magnitudes, magnitudes]).astype(np.float32)
    xc = torch.from_numpy(x).reshape(-1, 1).cuda().requires_grad_(True)  # one class: a sample's loss is its element's
    y = torch.full_like(xc, target)
    loss = st.multilabel_soft_margin_loss(xc, y, reduction="none")
    loss.sum().backward()
    exact = np.array([exact_element_loss(float(v), target) for v in x])
    ours = loss.detach().double().cpu().numpy()
    # libdevice flushes exp's subnormal results (|x| > 87) to zero: losses under 1e-30 are compared absolutely
    small = exact < 1e-30
    assert np.all(np.abs(ours[small] - exact[small]) <= 1e-30)
    rel = np.abs(ours[~small] - exact[~small]) / exact[~small]
    assert rel.max() <= 4e-7, f"worst loss error {rel.max():.2e} at x={x[~small][rel.argmax()]}"
    grad = xc.grad.double().cpu().numpy().ravel()
    x64 = x.astype(np.float64)
    exact_grad = expit(x64) if target == 0.0 else -expit(-x64)  # sigmoid(x) - y without cancellation
    nonzero = np.abs(exact_grad) > 1e-30
    grad_rel = np.abs(grad[nonzero] - exact_grad[nonzero]) / np.abs(exact_grad[nonzero])
    assert grad_rel.max() <= 4e-7, f"worst gradient error {grad_rel.max():.2e}"


# ---- the Triton kernels themselves (softmargin.kernels.triton_kernels), compiled: every option, bfloat16, no host
# synchronisation, CUDA graphs, torch.library.triton_op. The interpreter runs the same cases on the CPU
# (tests/kernels/test_triton_kernel.py). ----

KERNEL_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
KERNEL_RTOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 2e-6, torch.float64: 1e-12}
FOCUS_RTOL = {**KERNEL_RTOL, torch.float32: 1e-5}  # exp(-g * s) for |g * s| up to ~40: its argument's rounding grows


def _kernels():
    pytest.importorskip("triton")
    from softmargin.kernels import triton_kernels

    return triton_kernels


def _kernel_case(dtype, name, num_rows=64, num_classes=5000, seed=20, soft=None):
    from helpers import OPTION_CASES, option_operands

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(num_rows, num_classes, generator=gen, dtype=torch.float64) * 6).to(dtype)
    x[0, 0], x[1, 1], x[2, 2] = float("inf"), -float("inf"), float("inf")
    y = (torch.rand(num_rows, num_classes, generator=gen) < 0.05).to(dtype)
    if soft if soft is not None else "label_smoothing" in OPTION_CASES[name]:
        y = y * torch.rand(num_rows, num_classes, generator=gen, dtype=torch.float64).to(dtype)
    y[0, 0], y[1, 1] = 1, 0  # right predictions at infinity
    opts = option_operands(OPTION_CASES[name], dtype, num_rows, num_classes, seed=seed + 1)
    return x, y, opts


def _csr(y):
    csr = y.float().to_sparse_csr()  # on the device: a synchronising call, made before any check for one
    return csr.crow_indices(), csr.col_indices(), csr.values().to(y.dtype)


def _on(device, opts):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize(
    "name", ["plain", "class weight", "full weight", "pos_weight", "class mask", "full mask", "smoothing", "focal",
             "asymmetric", "everything"],
)  # fmt: skip
def test_kernel_every_option_against_the_float64_formula(name, dtype):
    from helpers import formula_rows

    tk = _kernels()
    x, y, opts = _kernel_case(dtype, name)
    row_scale = torch.rand(x.shape[0], dtype=torch.float64) + 0.5
    sums, grad = tk.fused_rows(x.cuda(), y.cuda(), **_on("cuda", opts), scale=1e-3, row_scale=row_scale.cuda(), need_grad=True)
    assert sums.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and grad.dtype == dtype
    ref_sums, ref_grad = formula_rows(x, y, opts, 1e-3, row_scale)
    rtol = (FOCUS_RTOL if "gamma_neg" in opts else KERNEL_RTOL)[dtype]
    sums = sums.cpu()
    assert torch.equal(torch.isinf(sums), torch.isinf(ref_sums))
    finite = torch.isfinite(ref_sums)
    assert_close(sums[finite].double().numpy(), ref_sums[finite].numpy(), rtol, f"{name} row sums")
    assert_close(grad.cpu().double().numpy(), ref_grad.numpy(), rtol, f"{name} grad")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("values", [False, True])
def test_kernel_sparse_targets_give_bitwise_the_dense_result(values, dtype):
    tk = _kernels()
    x, y, opts = _kernel_case(dtype, "everything", soft=values)
    x, y, opts = x.cuda(), y.cuda(), _on("cuda", opts)
    indptr, indices, vals = _csr(y)
    dense = tk.fused_rows(x, y, **opts, scale=0.1, need_grad=True)
    sparse = tk.fused_rows(x, None, **opts, sparse=(indptr, indices, vals if values else None), scale=0.1, need_grad=True)
    assert torch.equal(dense[0], sparse[0]) and torch.equal(dense[1], sparse[1])


class _KernelMeanLoss(torch.autograd.Function):
    """The kernel as a mean loss with the gradient made in forward (how the backend uses it), for the tests below."""

    @staticmethod
    def forward(ctx, x, y, sparse, opts, divisor):
        sums, grad = _kernels().fused_rows(
            x, y, sparse=sparse, **opts, scale=1.0 / x.shape[0], row_scale=1.0 / divisor, need_grad=True,
            check_target=True,
        )  # fmt: skip
        ctx.grad = grad
        return (sums / divisor).sum() / x.shape[0]

    @staticmethod
    def backward(ctx, grad_output):
        return ctx.grad * grad_output.to(ctx.grad.dtype), None, None, None, None


def _divisor(x, opts):
    mask = opts.get("mask")
    if mask is None:
        return torch.full((x.shape[0],), float(x.shape[1]), device=x.device)
    return mask.expand(x.shape).sum(1).float()


def test_kernel_forward_and_backward_never_synchronise():
    """Every option at once (and none), dense and sparse targets, the target check on: forward and backward launch
    kernels and never wait for the device."""
    cases = []
    for dtype, name in ((torch.float32, "plain"), (torch.float32, "everything"), (torch.bfloat16, "everything")):
        x, y, opts = _kernel_case(dtype, name, num_rows=32, num_classes=3000, soft=True)
        x, y, opts = x.cuda().requires_grad_(True), y.cuda(), _on("cuda", opts)
        cases.append((x, y, opts, _csr(y)))
    for x, y, opts, sparse in cases:  # compiled, and the device's properties read, before the check
        _KernelMeanLoss.apply(x, y, None, opts, _divisor(x, opts)).backward()
        _KernelMeanLoss.apply(x, None, sparse, opts, _divisor(x, opts)).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y, opts, sparse in cases:
            for target, csr in ((y, None), (None, sparse)):
                x.grad = None
                _KernelMeanLoss.apply(x, target, csr, opts, _divisor(x, opts)).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(torch.isfinite(x.grad).all() for x, *_ in cases)


@pytest.mark.parametrize("name", ["plain", "everything"])
@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_kernel_runs_in_a_cuda_graph(form, name):
    tk = _kernels()
    x, y, opts = _kernel_case(torch.float32, name, num_rows=32, num_classes=3000)
    x, y, opts = x.cuda(), y.cuda(), _on("cuda", opts)
    target, sparse = (y, None) if form == "dense" else (None, _csr(y))
    static_x = x.clone()
    run = lambda: tk.fused_rows(static_x, target, sparse=sparse, **opts, scale=0.5, need_grad=True, check_target=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compilation) outside the capture
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sums, grad = run()
    new_x = x * 0.5 - 1.0
    static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    expected = tk.fused_rows(new_x, target, sparse=sparse, **opts, scale=0.5, need_grad=True)
    assert torch.equal(sums, expected[0]) and torch.equal(grad, expected[1])


def test_kernel_in_a_triton_op_passes_opcheck_and_compiles():
    tk = _kernels()

    @torch.library.triton_op("softmargin_test::gpu_rows", mutates_args={})
    def rows(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, pos_weight: torch.Tensor, gamma_neg: float) -> tuple[torch.Tensor, torch.Tensor]:
        sums, grad = tk.fused_rows(x, y, weight=weight, pos_weight=pos_weight, gamma_neg=gamma_neg, clip=0.05,
                                   scale=1.0 / x.shape[1], need_grad=True, check_target=True)  # fmt: skip
        return sums, grad

    x, y, opts = _kernel_case(torch.float32, "everything", num_rows=16, num_classes=1000)
    args = (x.cuda(), y.cuda(), opts["weight"].cuda(), opts["pos_weight"].cuda(), 3.0)
    torch.library.opcheck(torch.ops.softmargin_test.gpu_rows, args, test_utils=("test_schema", "test_faketensor"))
    eager = torch.ops.softmargin_test.gpu_rows(*args)
    compiled = torch.compile(lambda *a: torch.ops.softmargin_test.gpu_rows(*a), fullgraph=True, dynamic=False)(*args)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])


def _fails_a_device_assertion(script, message):
    """Run ``script`` in a child process (a failed device-side assertion ends the CUDA context): it must print
    'unchecked: fine' (the unchecked call computes), then fail with ``message`` or CUDA's device-side assert."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert "unchecked: fine" in result.stdout
    assert result.returncode != 0
    assert message in result.stderr or "device-side assert" in result.stderr, result.stderr[-2000:]


def test_kernel_target_check_is_a_device_assertion():
    script = (
        "import torch\n"
        "from softmargin.kernels.triton_kernels import fused_rows\n"
        "x = torch.zeros(4, 100, device='cuda')\n"
        "y = torch.zeros(4, 100, device='cuda'); y[2, 7] = 1.5\n"
        "fused_rows(x, y, scale=1.0, need_grad=False)\n"
        "torch.cuda.synchronize(); print('unchecked: fine', flush=True)\n"
        "fused_rows(x, y, scale=1.0, need_grad=False, check_target=True)\n"
        "torch.cuda.synchronize()\n"
    )
    _fails_a_device_assertion(script, "outside [0, 1]")


def test_kernel_float32_row_sums_of_a_million_classes_against_mpmath():
    from helpers import long_rows_with_exact_sums

    x, y, w, exact = long_rows_with_exact_sums(4, 10**6, seed=21)
    sums, _ = _kernels().fused_rows(x.cuda(), y.cuda(), weight=w.cuda(), scale=1.0, need_grad=False)
    rel = np.abs(sums.cpu().double().numpy() - exact) / exact
    assert rel.max() <= 2e-7, f"row sums off by {rel.max():.2e} relative"


def test_kernel_linear_chunk_with_sparse_positives_on_the_device():
    tk = _kernels()
    gen = torch.Generator().manual_seed(22)
    hidden, head = torch.randn(64, 32, generator=gen).cuda(), torch.randn(4000, 32, generator=gen).cuda() * 0.2
    y = (torch.rand(64, 4000, generator=gen) < 0.01).float().cuda()
    sparse = _csr(y)
    torch.cuda.set_sync_debug_mode("error")
    try:
        sums, grad = tk.linear_logits_chunk(hidden[16:48], head[1000:3000], None, None, sparse=sparse,
                                            sparse_origin=(16, 1000), scale=1.0, need_grad=True)  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode(0)
    logits = hidden[16:48] @ head[1000:3000].T
    expected = tk.fused_rows(logits, y[16:48, 1000:3000], scale=1.0, need_grad=True)
    assert_close(sums.cpu().numpy(), expected[0].cpu().numpy(), 1e-5)
    assert_close(grad.cpu().numpy(), expected[1].cpu().numpy(), 1e-5)


# ---- the public API on the device, as PyTorch users run it: no host synchronisation with any option, the Triton
# operator under torch.compile (inductor sees the kernel), a training step captured in CUDA graphs, autocast ----

API_OPTIONS = ["plain", "class weight", "full weight", "pos_weight", "full mask", "smoothing", "asymmetric", "everything"]


def _api_case(name, dtype=torch.float32, num_rows=32, num_classes=3000, seed=30):
    from helpers import OPTION_CASES, option_operands

    x, y = _data((num_rows, num_classes), dtype, seed=seed)
    opts = option_operands(OPTION_CASES[name], dtype, num_rows, num_classes, seed=seed + 1, device="cuda")
    return x.cuda().requires_grad_(True), y.cuda(), opts


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_api_forward_and_backward_never_synchronise(reduction):
    """``torch.cuda.set_sync_debug_mode("error")`` around fwd+bwd of the default call (validate=True) with every
    option, a bool target and the module with a weight: nothing waits for the device."""
    cases = [_api_case(name) for name in API_OPTIONS]
    xb, yb, _ = _api_case("plain", torch.bfloat16)
    cases.append((xb, yb.bool(), {}))
    module = st.MultiLabelSoftMarginLoss(weight=torch.rand(3000).cuda(), reduction=reduction)

    def run():
        for x, y, opts in cases:
            x.grad = None
            st.multilabel_soft_margin_loss(x, y, reduction=reduction, **opts).sum().backward()
        x, y, _ = cases[0]
        module(x, y).sum().backward()

    run()  # compilation and the device's properties read before the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(torch.isfinite(x.grad).all() for x, _, _ in cases)


def test_api_options_on_the_device_match_the_cpu():
    """Every option through the public API on CUDA (the Triton kernel) against the CPU result (the C kernel or the
    torch backend), values and gradients."""
    for name in API_OPTIONS:
        x, y, opts = _api_case(name, torch.float64, num_rows=16, num_classes=700)
        loss = st.multilabel_soft_margin_loss(x, y, **opts)
        (grad,) = torch.autograd.grad(loss, x)
        xc = x.detach().cpu().requires_grad_(True)
        expected = st.multilabel_soft_margin_loss(xc, y.cpu(), **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in opts.items()})
        (expected_grad,) = torch.autograd.grad(expected, xc)
        assert_close(loss.item(), expected.item(), 1e-12, f"{name} loss")
        assert_close(grad.cpu().numpy(), expected_grad.numpy(), 1e-12, f"{name} grad", atol=1e-300)


@pytest.mark.parametrize("name", ["plain", "everything"])
def test_compile_runs_the_triton_operator_and_inductor_sees_the_kernel(name):
    """Under torch.compile (inductor, fullgraph) CUDA tensors take ``softmargin::loss_rows_triton``, a
    ``torch.library.triton_op``: the generated code launches the kernel itself, and the result is torch's (plain)
    or the eager result (options)."""
    from torch._inductor.utils import run_and_get_code

    from softmargin.torch import _ops

    assert _ops.loss_rows_triton is not None, "the Triton operator is registered at import on a CUDA machine"
    x, y, opts = _api_case(name, num_rows=64, num_classes=2000)

    compiled = torch.compile(lambda x, y: st.multilabel_soft_margin_loss(x, y, **opts), fullgraph=True)

    def step():
        loss = compiled(x, y)
        return loss, torch.autograd.grad(loss, x)[0]

    torch._dynamo.reset()
    (loss, grad), codes = run_and_get_code(step)
    assert any("_rows_kernel" in code for code in codes), "inductor did not see the Triton kernel"
    if name == "plain":
        expected = torch.nn.functional.multilabel_soft_margin_loss(x, y)
    else:
        expected = st.multilabel_soft_margin_loss(x, y, **opts)
    (expected_grad,) = torch.autograd.grad(expected, x)
    assert_close(loss.item(), expected.item(), 1e-5, "loss")
    assert_close(grad.cpu().numpy(), expected_grad.cpu().numpy(), 1e-5, "grad", atol=1e-9)


def test_triton_operator_passes_opcheck():
    from softmargin.torch import _ops

    op = _ops.ensure_triton_op()
    samples = []
    for name in ("plain", "class weight", "everything"):
        x, y, opts = _api_case(name, num_rows=8, num_classes=300)
        samples.append((x, y, opts.get("weight"), opts.get("pos_weight"), opts.get("mask"), None, None, None,
                        opts.get("label_smoothing", 0.0), opts.get("gamma_pos", 0.0), opts.get("gamma_neg", 0.0),
                        opts.get("clip", 0.0), True, True))  # fmt: skip
    for args in samples:
        torch.library.opcheck(op, args)


def test_compiled_training_step_runs_in_cuda_graphs():
    """``torch.compile(mode="reduce-overhead")`` of model + loss (forward and AOT backward captured in CUDA
    graphs, no cudagraph skips), SGD after: the 30-step loss trajectory is torch's loss's."""
    from torch._dynamo.utils import counters

    gen = torch.Generator().manual_seed(31)
    features = torch.randn(256, 64, generator=gen).cuda()
    labels = (torch.rand(256, 500, generator=gen) < 0.1).float().cuda()
    class_weight = (torch.rand(500, generator=gen) + 0.5).cuda()

    def train(loss_fn, compiled):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 500)).cuda()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        forward = lambda x, y: loss_fn(model(x), y, weight=class_weight)
        if compiled:
            forward = torch.compile(forward, mode="reduce-overhead", fullgraph=True)
        losses = []
        for step in range(30):
            rows = slice(step % 4 * 64, step % 4 * 64 + 64)
            loss = forward(features[rows], labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    torch._dynamo.reset()
    counters.clear()
    ours = train(st.multilabel_soft_margin_loss, compiled=True)
    skips = dict(counters["inductor"]).get("cudagraph_skips", 0)
    assert skips == 0, f"cudagraph skips: {dict(counters['inductor'])}"
    reference = train(torch.nn.functional.multilabel_soft_margin_loss, compiled=False)
    assert_close(np.array(ours), np.array(reference), 1e-4, "loss trajectory")


def test_autocast_on_the_device_computes_and_returns_float32_as_torch():
    x, y, _ = _api_case("plain", num_rows=16, num_classes=400)
    weight = torch.rand(400).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = torch.nn.functional.linear(x, torch.eye(400, device="cuda"))  # bfloat16 under autocast
        ours = st.multilabel_soft_margin_loss(logits, y, weight=weight)
        theirs = torch.nn.functional.multilabel_soft_margin_loss(logits, y, weight=weight)
    assert logits.dtype == torch.bfloat16
    assert ours.dtype == theirs.dtype == torch.float32
    # torch's log-sigmoid rounds to bfloat16 on the way; ours is the float64 value of the bfloat16 logits, to float32
    assert_close(ours.item(), theirs.item(), 1e-2, "loss against torch")
    args = (logits.detach().double().cpu().numpy(), y.double().cpu().numpy(), weight.double().cpu().numpy(), "mean")
    assert_close(ours.item(), reference_loss(*args), 1e-6, "loss against float64")


def test_api_weight_check_is_a_device_assertion():
    """On CUDA the kernel checks the weights as it reads them (no separate check kernels): a negative weight fails a
    device-side assertion (fatal to the CUDA context, hence a child process); the same call with validate=False
    computes."""
    script = (
        "import torch, softmargin.torch as st\n"
        "x = torch.zeros(4, 100, device='cuda'); y = torch.zeros(4, 100, device='cuda')\n"
        "w = torch.ones(100, device='cuda'); w[7] = -1.0\n"
        "st.multilabel_soft_margin_loss(x, y, w, validate=False); torch.cuda.synchronize()\n"
        "print('unchecked: fine', flush=True)\n"
        "st.multilabel_soft_margin_loss(x, y, w); torch.cuda.synchronize()\n"
    )
    _fails_a_device_assertion(script, "a weight is negative")


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
def test_a_0d_cpu_weight_goes_with_cuda_logits_and_a_cpu_vector_is_refused(name):
    """As in torch: a 0-d CPU weight or pos_weight with CUDA logits is taken (values and gradients torch's), a (C,)
    CPU one refused by name (the kernels would have read a host pointer on the device)."""
    x, y = _data((16, 9), torch.float64, seed=4)
    theirs = {"weight": torch.nn.functional.multilabel_soft_margin_loss,
              "pos_weight": lambda a, b, **k: torch.nn.functional.binary_cross_entropy_with_logits(a, b, **k, reduction="none").mean(-1).mean()}[name]  # fmt: skip
    xc, xr = x.cuda().requires_grad_(), x.clone().requires_grad_()
    ours = st.multilabel_soft_margin_loss(xc, y.cuda(), **{name: torch.tensor(1.7, dtype=torch.float64)})
    expected = theirs(xr, y, **{name: torch.tensor(1.7, dtype=torch.float64)})
    ours.backward()
    expected.backward()
    torch.testing.assert_close(ours.cpu(), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(xc.grad.cpu(), xr.grad, rtol=1e-12, atol=1e-16)
    with pytest.raises(ValueError, match=rf"{name}\.device == cpu, expected input\.device == cuda:0"):
        st.multilabel_soft_margin_loss(xc, y.cuda(), **{name: torch.ones(9, dtype=torch.float64)})
