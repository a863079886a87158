"""softmargin.torch against torch.nn.functional.multilabel_soft_margin_loss itself, and gradcheck."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from helpers import (
    OPTION_CASES,
    RTOL,
    SEED_LABELS,
    SEED_LOGITS,
    SEED_WEIGHTS,
    assert_close,
    formula_rows,
    option_operands,
    reference_loss,
)

from softmargin.torch import MultiLabelSoftMarginLoss, multilabel_soft_margin_loss

pytestmark = pytest.mark.usefixtures("torch_path")

SHAPES = [(3,), (1, 1), (5, 7), (2, 3, 4), (4, 1, 3, 2), (64, 1000)]
DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _weight(kind, shape, gen):
    if kind is None:
        return None
    if kind == "class":
        return torch.rand(shape[-1], generator=gen, dtype=torch.float64) * 2
    if kind == "full":
        return torch.rand(shape, generator=gen, dtype=torch.float64) * 2
    if kind == "scalar":
        return torch.tensor(0.7, dtype=torch.float64)
    # "rows": one weight per sample, broadcast over the classes
    return torch.rand(*shape[:-1], 1, generator=gen, dtype=torch.float64) * 2


def _loss_and_grad(fn, x, y, w, reduction):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, y, weight=w, reduction=reduction)
    loss.sum().backward()
    return loss.detach(), x.grad


def test_seed_example():
    loss_fn = MultiLabelSoftMarginLoss(weight=torch.tensor(SEED_WEIGHTS))
    loss = loss_fn(torch.tensor(SEED_LOGITS), torch.tensor(SEED_LABELS, dtype=torch.float))
    assert abs(loss.item() - 1.18012) < 1e-5
    loss64 = loss_fn.double()(torch.tensor(SEED_LOGITS, dtype=torch.float64), torch.tensor(SEED_LABELS).double())
    assert abs(loss64.item() - 1.1801210) < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [None, "class", "full", "rows", "scalar"])
def test_matches_torch(shape, reduction, dtype, weighted):
    if weighted == "rows" and len(shape) == 1:
        pytest.skip("no sample dimension")
    gen = torch.Generator().manual_seed(hash((shape, reduction, weighted)) % 2**31)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 5).to(dtype)
    y = (torch.rand(shape, generator=gen) < 0.4).to(dtype)
    w = _weight(weighted, shape, gen)
    w = None if w is None else w.to(dtype)
    ours = _loss_and_grad(multilabel_soft_margin_loss, x, y, w, reduction)
    theirs = _loss_and_grad(F.multilabel_soft_margin_loss, x, y, w, reduction)
    assert ours[0].dtype == dtype and ours[0].shape == theirs[0].shape
    rtol = RTOL[DTYPES[dtype]]
    assert_close(ours[0].numpy(), theirs[0].numpy(), rtol, "loss")
    assert_close(ours[1].numpy(), theirs[1].numpy(), rtol, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_targets_match_torch(dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(50, 40, generator=gen, dtype=torch.float64) * 8).to(dtype)
    y = torch.rand(50, 40, generator=gen, dtype=torch.float64).to(dtype)
    ours = _loss_and_grad(multilabel_soft_margin_loss, x, y, None, "none")
    theirs = _loss_and_grad(F.multilabel_soft_margin_loss, x, y, None, "none")
    rtol = RTOL[DTYPES[dtype]]
    assert_close(ours[0].numpy(), theirs[0].numpy(), rtol, "loss")
    assert_close(ours[1].numpy(), theirs[1].numpy(), rtol, "grad")


def test_legacy_size_average_and_reduce():
    x, y = torch.randn(4, 5), (torch.rand(4, 5) > 0.5).float()
    for size_average, reduce in [(False, None), (None, False), (True, True), (False, True)]:
        with pytest.warns(UserWarning):
            ours = multilabel_soft_margin_loss(x, y, size_average=size_average, reduce=reduce)
        with pytest.warns(UserWarning):
            theirs = F.multilabel_soft_margin_loss(x, y, size_average=size_average, reduce=reduce)
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_half_precision_against_float64_on_rounded_inputs(dtype, reduction):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(8, 3000, generator=gen) * 3).to(dtype)
    y = (torch.rand(8, 3000, generator=gen) < 0.2).to(dtype)
    w = (torch.rand(3000, generator=gen) + 0.5).to(dtype)
    xr = x.detach().clone().requires_grad_(True)
    loss = multilabel_soft_margin_loss(xr, y, w, reduction=reduction)
    loss.sum().backward()
    assert loss.dtype == dtype and xr.grad.dtype == dtype
    ref = reference_loss(x.double().numpy(), y.double().numpy(), w.double().numpy(), reduction)
    assert_close(loss.detach().double().numpy(), ref, RTOL[str(dtype).split(".")[1]], "loss")
    ref_grad = torch.func.grad(
        lambda t: F.multilabel_soft_margin_loss(t, y.double(), w.double(), reduction=reduction).sum()
    )(x.double())
    assert_close(xr.grad.double().numpy(), ref_grad.numpy(), RTOL[str(dtype).split(".")[1]], "grad")


MIXED_CASES = ["plain", "class weight", "pos_weight", "full mask", "smoothing", "focal"]


def _distilled(dtype, seed=0):
    """Half-precision student logits near a teacher's: the soft target is the teacher's sigmoid in float32. Where
    sigmoid(x) is near y the gradient sigmoid(x) - y is small, and y rounded to the logits' 8 (bfloat16) or 11
    (float16) bits moves it by more than itself; near y = 1 the rounding moves the small loss too."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(32, 520, generator=gen, dtype=torch.float64) * 4  # a block of 512 and a tail
    x = (teacher + 0.3 * torch.randn(32, 520, generator=gen, dtype=torch.float64)).to(dtype)
    return x, torch.sigmoid(teacher).float()


def _float64_reference(x, y, opts, reduction):
    """The reduced loss and its gradient w.r.t. x (for "none": of the per-sample losses' sum) from the formula in
    float64 on x.double() and y.double() (every row observes a label: option_operands)."""
    num_rows, num_classes = x.shape
    mask = opts.get("mask")
    count = torch.full((num_rows,), float(num_classes), dtype=torch.float64)
    if mask is not None:
        count = mask.expand(num_rows, num_classes).double().sum(1)
    sums, grad = formula_rows(x, y, opts, 1.0, row_scale=1 / count)
    per_sample = sums / count
    if reduction == "none":
        return per_sample, grad
    return (per_sample.sum(), grad) if reduction == "sum" else (per_sample.mean(), grad / num_rows)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("case", MIXED_CASES)
def test_half_logits_read_a_float32_soft_target_as_it_is(dtype, reduction, case):
    """A float32 soft target with float16/bfloat16 logits keeps its precision: the loss (float32, torch's result
    type) within 1e-6 of the float64 formula, each gradient element within one unit in its last place plus
    float32's own rounding of sigmoid(x) - y. Rounded to the logits' dtype first (as before), the loss was off by
    up to 1e-3 (bfloat16) or 2e-4 (float16), and most gradient elements by more than one unit."""
    x, y = _distilled(dtype)
    opts = option_operands(OPTION_CASES[case], torch.float32, *x.shape)
    xr = x.clone().requires_grad_(True)
    loss = multilabel_soft_margin_loss(xr, y, reduction=reduction, **opts)
    loss.sum().backward()
    ref_loss, ref_grad = _float64_reference(x, y, opts, reduction)
    assert loss.dtype == torch.float32 and xr.grad.dtype == dtype
    relative = ((loss.double() - ref_loss) / ref_loss).abs()
    assert relative.max() <= 1e-6, f"loss {relative.max():.3g} off"
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    bound = eps * ref_grad.abs() + 16 * 2.0**-24 * ref_grad.abs().max() + eps * tiny  # the last: a subnormal step
    excess = (xr.grad.double() - ref_grad).abs() / bound
    assert excess.max() <= 1, f"gradient {excess.max():.3g} times its bound"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", MIXED_CASES)
def test_half_logits_with_a_hard_float32_target_give_the_half_targets_bits(dtype, case):
    """Binary targets are exact in every dtype: in float32 they give bitwise the results of the same target in the
    logits' dtype (a float32 weight makes both results float32)."""
    x, soft = _distilled(dtype)
    y = (soft > 0.5).float()
    opts = option_operands(OPTION_CASES[case], torch.float32, *x.shape)
    opts.setdefault("weight", torch.ones(x.shape[-1]))
    results = []
    for target in (y, y.to(dtype)):
        for reduction in ("none", "mean"):
            xr = x.clone().requires_grad_(True)
            loss = multilabel_soft_margin_loss(xr, target, reduction=reduction, **opts)
            loss.sum().backward()
            results.append((loss.detach(), xr.grad))
    for (loss, grad), (half_loss, half_grad) in zip(results[:2], results[2:]):
        assert loss.dtype == half_loss.dtype == torch.float32
        assert torch.equal(loss, half_loss) and torch.equal(grad, half_grad)


def test_gradcheck_input_target_weight():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.rand(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(4, generator=gen, dtype=torch.float64) + 0.1).requires_grad_(True)
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda a, b, c: multilabel_soft_margin_loss(a, b, c, reduction=reduction), (x, y, w)
        )
    wf = (torch.rand(3, 4, generator=gen, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, c: multilabel_soft_margin_loss(a, y.detach(), c), (x, wf))


def test_target_and_weight_gradients_match_torch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    y = torch.rand(6, 5, generator=gen, dtype=torch.float64)
    w = torch.rand(5, generator=gen, dtype=torch.float64) + 0.1
    grads = []
    for fn in (multilabel_soft_margin_loss, F.multilabel_soft_margin_loss):
        args = [t.clone().requires_grad_(True) for t in (x, y, w)]
        fn(*args, reduction="none").pow(2).sum().backward()  # a non-uniform incoming gradient
        grads.append([a.grad for a in args])
    for ours, theirs in zip(*grads):
        assert_close(ours.numpy(), theirs.numpy(), 1e-12, "grad")


def test_module_weight_is_a_buffer():
    w = torch.tensor(SEED_WEIGHTS)
    module = MultiLabelSoftMarginLoss(weight=w, reduction="sum")
    assert "weight" in dict(module.named_buffers())
    assert torch.equal(module.state_dict()["weight"], w)
    assert module.to(torch.float64).weight.dtype == torch.float64
    reference = torch.nn.MultiLabelSoftMarginLoss(weight=w, reduction="sum")
    assert module.state_dict().keys() == reference.state_dict().keys()
    fresh = MultiLabelSoftMarginLoss(weight=torch.zeros(3))
    fresh.load_state_dict(reference.state_dict())
    assert torch.equal(fresh.weight, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_changed_in_place_is_seen(dtype):
    """Weights are checked (and, for the kernel, converted) once per version: an in-place change is a new version."""
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 9, generator=gen).to(dtype), (torch.rand(6, 9, generator=gen) < 0.4).to(dtype)
    w = (torch.rand(9, generator=gen) + 0.5).to(dtype)
    first = multilabel_soft_margin_loss(x, y, weight=w)
    w.mul_(3)
    assert_close(multilabel_soft_margin_loss(x, y, weight=w).double().item(), 3 * first.double().item(), 1e-2)
    w[0] = -1.0
    with pytest.raises(ValueError, match="weight"):
        multilabel_soft_margin_loss(x, y, weight=w)


@pytest.mark.parametrize("how", [".data", "no_grad", "module buffer .data"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_changed_behind_autograd_is_seen(dtype, how):
    """An EMA or a schedule writes a weight through ``.data`` or under ``torch.no_grad()`` (``.data`` writes do not
    bump the version counter): nothing may serve the old weight, and a negative one must still be refused."""
    gen = torch.Generator().manual_seed(6)
    x, y = torch.randn(6, 9, generator=gen).to(dtype), (torch.rand(6, 9, generator=gen) < 0.4).to(dtype)
    w = (torch.rand(9, generator=gen) + 0.5).to(dtype)
    module = MultiLabelSoftMarginLoss(weight=w.clone())
    target_weight = module.weight if how == "module buffer .data" else w
    call = (lambda: module(x, y)) if how == "module buffer .data" else (lambda: multilabel_soft_margin_loss(x, y, weight=w))
    call()
    if how == "no_grad":
        with torch.no_grad():
            target_weight.mul_(3)
    else:
        target_weight.data.mul_(3)
    expected = F.multilabel_soft_margin_loss(x.float(), y.float(), weight=target_weight.float())
    assert_close(call().double().item(), expected.item(), 1e-2)
    target_weight.data[0] = -1.0
    with pytest.raises(ValueError, match="weight"):
        call()


def test_inference_mode_tensors():
    """Inference tensors have no version counter: they are checked and converted every time, not cached."""
    with torch.inference_mode():
        x = torch.randn(5, 8).to(torch.bfloat16)
        y = (torch.rand(5, 8) < 0.5).to(torch.bfloat16)
        w = (torch.rand(8) + 0.5).to(torch.bfloat16)
        first = multilabel_soft_margin_loss(x, y, weight=w)
        w.mul_(2)  # in place, unseen by any version counter
        second = multilabel_soft_margin_loss(x, y, weight=w)
        assert_close(second.double().item(), 2 * first.double().item(), 1e-2)
        w[1] = float("nan")
        with pytest.raises(ValueError, match="weight"):
            multilabel_soft_margin_loss(x, y, weight=w)
    assert_close(multilabel_soft_margin_loss(x.clone(), y, weight=w.nan_to_num(1.0)).double().item(),
                 F.multilabel_soft_margin_loss(x.float(), y.float(), weight=w.nan_to_num(1.0).float()).item(), 1e-2)


def test_backward_twice_with_retain_graph_and_scaled_grad_output():
    x = torch.randn(4, 3, requires_grad=True)
    y = (torch.rand(4, 3) > 0.5).float()
    loss = multilabel_soft_margin_loss(x, y)
    (3.0 * loss).backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, first * (4 / 3))
    x2 = x.detach().clone().requires_grad_(True)
    (3.0 * F.multilabel_soft_margin_loss(x2, y)).backward()
    torch.testing.assert_close(first, x2.grad)


def test_gradgradcheck():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    w = torch.rand(4, generator=gen, dtype=torch.float64) + 0.1
    for reduction in ("none", "mean"):
        assert torch.autograd.gradgradcheck(lambda a: multilabel_soft_margin_loss(a, y, w, reduction=reduction), (x,))


def test_second_derivatives_through_a_zero_weight_are_torchs():
    # d(dL/dx)/dw and d(dL/dy)/dw at w == 0 are the element's gradient, not 0 (a class switched off is still a point
    # where the weight's derivative exists)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    ours = lambda a, b, c: multilabel_soft_margin_loss(a, b, c, validate=False)  # gradcheck steps w below 0
    assert torch.autograd.gradgradcheck(ours, (x, y, w))
    for wrt in (x, y):
        got, expected = (torch.autograd.grad(torch.autograd.grad(f(x, y, w), wrt, create_graph=True)[0].sum(), w)[0]
                         for f in (ours, F.multilabel_soft_margin_loss))  # fmt: skip
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
        assert got[0] != 0


@pytest.mark.parametrize("value", [1e39, 1e-50])
def test_a_float64_weight_beyond_float32_is_read_as_torch_reads_it(value):
    # torch computes in float64 from the weighting on; read in float32 this weight would be inf (or 0)
    x = torch.tensor([[2.0, -1.0, 0.5], [0.3, 4.0, -2.0]], requires_grad=True)
    y = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    w = torch.tensor([value, 1.0, 1.0], dtype=torch.float64)
    for reduction in ("mean", "none"):
        ours, theirs = multilabel_soft_margin_loss(x, y, w, reduction=reduction), F.multilabel_soft_margin_loss(x, y, w, reduction=reduction)
        assert ours.dtype == theirs.dtype == torch.float64
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
        (got,), (expected,) = (torch.autograd.grad(loss.sum(), x) for loss in (ours, theirs))
        assert got.dtype == torch.float32 and bool(got.isfinite().all())
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_a_narrower_weights_gradient_is_rounded_once():
    # float32 logits, a float16 weight: each term l / (N C) is subnormal in float16, so summing in the weight's dtype
    # biased the gradient by 20 %; it is summed in float32 and rounded once, as torch does
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4000, generator=gen)
    y = (torch.rand(64, 4000, generator=gen) < 0.01).float()
    w = torch.rand(4000, generator=gen).half().requires_grad_()
    (got,) = torch.autograd.grad(multilabel_soft_margin_loss(x, y, weight=w), w)
    w64 = w.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(F.multilabel_soft_margin_loss(x.double(), y.double(), weight=w64), w64)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.double(), exact, rtol=2**-10, atol=0)  # float16's rounding, no more
    # float64 logits and a float32 weight: the gradient 3.3e38 is finite in float32, its terms in float32 are not
    x = torch.tensor([[1e39, -2.0, 3.0]], dtype=torch.float64)
    w = torch.ones(3, requires_grad=True)
    (got,) = torch.autograd.grad(multilabel_soft_margin_loss(x, torch.tensor([[0.0, 1.0, 0.0]]), weight=w), w)
    (expected,) = torch.autograd.grad(F.multilabel_soft_margin_loss(x, torch.tensor([[0.0, 1.0, 0.0]]), weight=w), w)
    assert got.dtype == torch.float32 and bool(got.isfinite().all())
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_a_narrower_weights_forward_derivative_is_exact():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4000, generator=gen)
    y = (torch.rand(64, 4000, generator=gen) < 0.01).float()
    w, w_t = torch.rand(4000, generator=gen).half(), torch.rand(4000, generator=gen).half()
    _, got = torch.func.jvp(lambda v: multilabel_soft_margin_loss(x, y, weight=v), (w,), (w_t,))
    _, exact = torch.func.jvp(lambda v: F.multilabel_soft_margin_loss(x.double(), y.double(), weight=v), (w.double(),), (w_t.double(),))
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "input_dtype,target_dtype,weight",
    [
        (torch.float32, torch.float32, torch.tensor(2.0, dtype=torch.float64)),  # 0-d: no promotion
        (torch.float16, torch.float16, torch.tensor(2.0)),
        (torch.float32, torch.float32, torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)),  # 1-d: promotes
        (torch.float32, torch.float64, None),
        (torch.bfloat16, torch.bfloat16, torch.tensor(3, dtype=torch.int64)),
    ],
)
def test_result_dtype_is_torchs(input_dtype, target_dtype, weight):
    x = torch.randn(2, 3).to(input_dtype)
    y = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=target_dtype)
    for reduction in ("mean", "none"):
        ours = multilabel_soft_margin_loss(x, y, weight, reduction=reduction)
        theirs = F.multilabel_soft_margin_loss(x, y, weight, reduction=reduction)
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs)


def test_empty_batch_like_torch():
    for shape in [(0, 3), (2, 0)]:
        x = torch.zeros(shape, requires_grad=True)
        for reduction in ("none", "mean", "sum"):
            ours = multilabel_soft_margin_loss(x, torch.zeros(shape), reduction=reduction)
            theirs = F.multilabel_soft_margin_loss(x, torch.zeros(shape), reduction=reduction)
            torch.testing.assert_close(ours, theirs, equal_nan=True)
        multilabel_soft_margin_loss(x, torch.zeros(shape)).backward()
        assert x.grad.shape == shape


def test_nan_logit_propagates_for_grad_scaler():
    x = torch.tensor([[float("nan"), 1.0]], requires_grad=True)
    loss = multilabel_soft_margin_loss(x, torch.tensor([[1.0, 0.0]]))
    assert torch.isnan(loss)
    loss.backward()
    assert torch.isnan(x.grad[0, 0]) and torch.isfinite(x.grad[0, 1])


def test_no_input_grad_needed():
    y = (torch.rand(3, 4) > 0.5).float()
    with torch.no_grad():
        loss = multilabel_soft_margin_loss(torch.randn(3, 4), y)
    assert loss.grad_fn is None


def test_numpy_and_torch_backends_agree(rng):
    import softmargin.numpy as snp

    x = rng.standard_normal((20, 30)) * 10
    y = rng.random((20, 30))
    w = rng.random(30)
    xt = torch.tensor(x, requires_grad=True)
    loss = multilabel_soft_margin_loss(xt, torch.tensor(y), torch.tensor(w))
    loss.backward()
    assert_close(loss.item(), snp.multilabel_soft_margin_loss(x, y, w), 1e-13, "loss")
    assert_close(xt.grad.numpy(), snp.multilabel_soft_margin_loss_grad(x, y, w), 1e-13, "grad")


def test_pos_weight_assigned_after_construction_is_a_buffer():
    loss = MultiLabelSoftMarginLoss()
    loss.pos_weight = torch.tensor([1.0, 2.0, 3.0])
    loss.weight = torch.tensor([0.5, 1.0, 1.5])
    assert set(loss.state_dict()) == {"weight", "pos_weight"}
    loss.double()
    assert loss.pos_weight.dtype == loss.weight.dtype == torch.float64
    fresh = MultiLabelSoftMarginLoss(pos_weight=torch.ones(3), weight=torch.ones(3, dtype=torch.float64))
    fresh.load_state_dict(loss.state_dict())
    torch.testing.assert_close(fresh.pos_weight, loss.pos_weight.float())


def test_repr_shows_the_settings_that_differ_from_the_defaults():
    assert repr(MultiLabelSoftMarginLoss()) == "MultiLabelSoftMarginLoss()"
    assert repr(MultiLabelSoftMarginLoss(reduction="sum", gamma_neg=4.0, clip=0.05)) == (
        "MultiLabelSoftMarginLoss(reduction='sum', gamma_neg=4.0, clip=0.05)"
    )
    from softmargin.torch import LinearMultiLabelSoftMarginLoss

    # the head showed nothing at all: "LinearMultiLabelSoftMarginLoss()" whatever its size and options
    assert repr(LinearMultiLabelSoftMarginLoss(8, 5)) == "LinearMultiLabelSoftMarginLoss(in_features=8, num_labels=5, bias=True)"
    head = LinearMultiLabelSoftMarginLoss(8, 5, bias=False, reduction="sum", clip=0.05, chunk_size=2)
    head.label_smoothing = 0.1
    assert repr(head) == (
        "LinearMultiLabelSoftMarginLoss(in_features=8, num_labels=5, bias=False, reduction='sum', label_smoothing=0.1, "
        "clip=0.05, chunk_size=2)"
    )


def _smoothed_reference(x, y, eps):
    """torch's own BCE on the smoothed targets, averaged over the classes then the batch, in float64."""
    return F.binary_cross_entropy_with_logits(x.double(), y.double() * (1 - eps) + eps / 2, reduction="none").mean(-1).mean()


def test_options_assigned_after_construction_are_checked_and_used():
    """``loss_fn.label_smoothing = 0.1`` raised AttributeError (a property without a setter) and ``loss_fn.options =
    "x"`` was taken until the next call: now each is checked as the constructor checks it and used by forward."""
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(5, 4, generator=gen, dtype=torch.float64), (torch.rand(5, 4, generator=gen) < 0.5).double()
    loss_fn = MultiLabelSoftMarginLoss()
    loss_fn.label_smoothing = 0.1
    assert_close(loss_fn(x, y).item(), _smoothed_reference(x, y, 0.1).item(), 1e-13, "smoothed")
    assert loss_fn.options.label_smoothing == 0.1 and repr(loss_fn) == "MultiLabelSoftMarginLoss(label_smoothing=0.1)"
    loss_fn.gamma_neg, loss_fn.clip = 2.0, 0.05
    constructed = MultiLabelSoftMarginLoss(label_smoothing=0.1, gamma_neg=2.0, clip=0.05)
    assert loss_fn.options == constructed.options and repr(loss_fn) == repr(constructed)
    torch.testing.assert_close(loss_fn(x, y), constructed(x, y))
    for name, value, error, message in [
        ("label_smoothing", 1.0, ValueError, r"label_smoothing=1\.0 is outside \[0, 1\)"),
        ("gamma_pos", -1.0, ValueError, r"gamma_pos=-1\.0: expected a finite gamma_pos >= 0"),
        ("clip", "0.1", TypeError, r"clip='0\.1' is a str: expected a float"),
        ("gamma_neg", torch.tensor(2.0), TypeError, r"gamma_neg is a Tensor of shape \(\): expected a Python float"),
        ("options", "focal", TypeError, r"options is a str: expected softmargin.LossOptions or None"),
    ]:
        with pytest.raises(error, match=message):
            setattr(loss_fn, name, value)
        assert loss_fn.options == constructed.options  # a refused value changes nothing
    loss_fn.options = None
    assert loss_fn.options.plain and loss_fn.label_smoothing == 0.0
    torch.testing.assert_close(loss_fn(x, y), F.multilabel_soft_margin_loss(x, y))


def test_a_module_pickled_when_options_was_an_attribute_still_loads():
    import pickle

    loss_fn = MultiLabelSoftMarginLoss(gamma_neg=2.0)
    state = loss_fn.__getstate__()
    state["options"] = state.pop("_options")  # the attribute's old name
    restored = MultiLabelSoftMarginLoss.__new__(MultiLabelSoftMarginLoss)
    restored.__setstate__(state)
    assert restored.options == loss_fn.options and restored.gamma_neg == 2.0
    assert pickle.loads(pickle.dumps(loss_fn)).options == loss_fn.options
