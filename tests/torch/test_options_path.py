"""The eager fast path of the loss with options (``_ops._OptionsLoss``: pos_weight, a mask, label smoothing,
asymmetric focusing; one kernel call reduces over the batch, backward scales the gradient in place) against the
operator's path, bitwise, against torch's loss and a float64 formula; the calls it must decline."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from helpers import incoming_gradient, passthrough_mode

import softmargin.torch as st
from softmargin.kernels import cpu

pytestmark = pytest.mark.skipif(cpu.kernel() is None, reason="no CPU kernel library here")

CASES = {
    "pos_weight": {"pos_weight": True},
    "row mask": {"mask": "rows"},
    "one-row mask": {"mask": "classes"},
    "smoothing": {"label_smoothing": 0.1},
    "focal": {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.05},
    "weights and mask": {"weight": True, "pos_weight": True, "mask": "rows"},
    "everything": {"weight": True, "pos_weight": True, "mask": "rows", "label_smoothing": 0.2, "gamma_pos": 1.0,
                   "gamma_neg": 3.0, "clip": 0.1},
}  # fmt: skip


def _problem(n, c, dtype, target, case, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=torch.float64) * torch.exp(torch.randn(n, c, generator=gen, dtype=torch.float64))
    hard = torch.rand(n, c, generator=gen) < 0.3
    soft = torch.rand(n, c, generator=gen)
    y = {"same": hard.to(dtype), "bool": hard, "uint8": hard.to(torch.uint8), "soft": soft.to(dtype),
         "float32": hard.float(), "soft float32": soft}[target]  # fmt: skip
    spec = CASES[case]
    kwargs = {name: spec[name] for name in ("label_smoothing", "gamma_pos", "gamma_neg", "clip") if name in spec}
    if spec.get("weight"):
        kwargs["weight"] = (torch.rand(c, generator=gen) * 2).to(dtype)
        kwargs["weight"][0] = 0.0
    if spec.get("pos_weight"):
        kwargs["pos_weight"] = (torch.rand(c, generator=gen) * 3 + 0.1).to(dtype)
    if spec.get("mask") == "rows":
        mask = torch.rand(n, c, generator=gen) < 0.6
        mask[0] = False  # a sample with nothing observed: left out of the mean
        kwargs["mask"] = mask
    elif spec.get("mask") == "classes":
        kwargs["mask"] = torch.rand(c, generator=gen) < 0.7
        kwargs["mask"][0] = True
    return x.to(dtype), y, kwargs


def _run(x, y, kwargs, reduction, grad_output, through_operator):
    xi = x.clone().requires_grad_()
    if through_operator:
        with passthrough_mode() as mode:
            loss = st.multilabel_soft_margin_loss(xi, y, reduction=reduction, **kwargs)
            (grad,) = torch.autograd.grad(loss, xi, incoming_gradient(grad_output, loss))
        assert "softmargin.loss_rows.default" in mode.seen
    else:
        loss = st.multilabel_soft_margin_loss(xi, y, reduction=reduction, **kwargs)
        assert type(loss.grad_fn).__name__ == "_OptionsLossBackward"
        (grad,) = torch.autograd.grad(loss, xi, incoming_gradient(grad_output, loss))
    return loss.detach(), grad


def _reference(x, y, kwargs, reduction):
    """The loss from its definition in float64 (torch operations, not the code under test)."""
    x, y = x.double(), y.double()
    eps = kwargs.get("label_smoothing", 0.0)
    y = y * (1 - eps) + eps / 2
    p = torch.sigmoid(x)
    pw = kwargs["pos_weight"].double() if "pos_weight" in kwargs else 1.0
    gamma_pos, gamma_neg, clip = (kwargs.get(k, 0.0) for k in ("gamma_pos", "gamma_neg", "clip"))
    p_m = (p - clip).clamp_min(0.0)
    log_p_m = torch.where(p_m < 1, torch.log1p(-p_m), -torch.inf) if clip else torch.nn.functional.logsigmoid(-x)
    element = -(y * pw * (1 - p) ** gamma_pos * torch.nn.functional.logsigmoid(x) + (1 - y) * p_m**gamma_neg * log_p_m)
    if "weight" in kwargs:
        element = element * kwargs["weight"].double()
    mask = kwargs.get("mask")
    if mask is None:
        per_sample = element.mean(-1)
        count = x.shape[0]
    else:
        mask = mask.expand(x.shape)
        observed = mask.sum(-1)
        per_sample = torch.where(observed > 0, (element * mask).sum(-1) / observed.clamp_min(1), 0.0)
        count = max(int((observed > 0).sum()), 1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.sum() / count


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(1, 1), (32, 10), (64, 80), *(pytest.param(s, marks=pytest.mark.slow) for s in [(3, 300), (300, 3), (5, 2000)])]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    ("dtype", "target"),
    [*((dtype, target) for dtype in DTYPES for target in ("same", "bool", "soft")),
     (torch.float32, "uint8"), (torch.bfloat16, "soft float32"), (torch.float16, "float32")],
)  # fmt: skip
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_options_path_and_operator_agree_bitwise(shape, case, dtype, target, reduction):
    x, y, kwargs = _problem(*shape, dtype, target, case, seed=sum(shape) + len(case))
    for grad_output in (1.0, -2.7182818):
        go = torch.tensor(grad_output, dtype=torch.promote_types(dtype, y.dtype if y.is_floating_point() else dtype))
        fast = _run(x, y, kwargs, reduction, go, through_operator=False)
        general = _run(x, y, kwargs, reduction, go, through_operator=True)
        assert fast[0].dtype == general[0].dtype == go.dtype
        assert torch.equal(fast[0], general[0]), (fast[0], general[0])
        assert torch.equal(fast[1], general[1])
    expected = _reference(x, y, kwargs, reduction)
    rtol = {torch.float32: 1e-5, torch.float64: 1e-10}.get(dtype, 2e-2)
    if target in ("float32", "soft float32"):
        rtol = 1e-5
    torch.testing.assert_close(fast[0].double(), expected, rtol=rtol, atol=1e-6 if dtype != torch.float64 else 1e-12)


@pytest.mark.parametrize("case", ["pos_weight", "row mask", "one-row mask", "smoothing", "weights and mask"])
def test_the_cases_torch_computes_match_torch(case):
    """torch's own losses as the reference where they compute the case: BCEWithLogitsLoss (pos_weight, a mask as an
    elementwise weight over the observed count) and MultiLabelSoftMarginLoss on smoothed targets."""
    x, y, kwargs = _problem(16, 7, torch.float64, "same", case, seed=3)
    loss, grad = _run(x, y, kwargs, "mean", torch.tensor(1.0, dtype=torch.float64), through_operator=False)
    xr = x.clone().requires_grad_()
    eps = kwargs.get("label_smoothing", 0.0)
    element = torch.nn.functional.binary_cross_entropy_with_logits(
        xr, y * (1 - eps) + eps / 2, weight=kwargs.get("weight"), pos_weight=kwargs.get("pos_weight"), reduction="none"
    )
    mask = kwargs.get("mask")
    if mask is None:
        expected = element.mean()
    else:
        mask = mask.expand(x.shape).double()
        observed = mask.sum(-1)
        per_sample = torch.where(observed > 0, (element * mask).sum(-1) / observed.clamp_min(1), 0.0)
        expected = per_sample.sum() / (observed > 0).sum().clamp_min(1)
    (expected_grad,) = torch.autograd.grad(expected, xr)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_a_batch_with_nothing_observed_has_loss_and_gradient_zero():
    x = torch.randn(4, 3, requires_grad=True)
    loss = st.multilabel_soft_margin_loss(x, torch.ones(4, 3), mask=torch.zeros(4, 3, dtype=torch.bool))
    assert type(loss.grad_fn).__name__ == "_OptionsLossBackward"
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros(4, 3))
    one_row = st.multilabel_soft_margin_loss(x, torch.ones(4, 3), mask=torch.zeros(3, dtype=torch.bool))
    assert one_row.item() == 0.0


def test_a_pos_weight_term_beyond_float32_is_left_to_the_general_path():
    """pw * softplus(-x) past float32's range: the general path redoes such rows in float64; the fast path declines
    (its kernel says so) and the result is the operator's, finite."""
    x = torch.zeros(2, 100)
    x[0, 0] = -3e38  # 10 * 3e38 overflows float32; the row's mean, 3e37, does not
    x.requires_grad_()
    y = torch.zeros(2, 100)
    y[:, 0] = 1.0
    pw = torch.full((100,), 10.0)
    loss = st.multilabel_soft_margin_loss(x, y, pos_weight=pw)
    assert type(loss.grad_fn).__name__ != "_OptionsLossBackward"
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx((10 * 3e38 / 100 + 10 * math.log(2) / 100 + 99 * math.log(2) / 100 * 2) / 2, rel=1e-6)
    general = _run(x.detach(), y, {"pos_weight": pw}, "mean", torch.tensor(1.0), through_operator=True)
    assert torch.equal(loss.detach(), general[0])


def test_bad_values_raise_the_general_message():
    x = torch.randn(4, 3)
    y = torch.ones(4, 3)
    with pytest.raises(ValueError, match="pos_weight"):
        st.multilabel_soft_margin_loss(x, y, pos_weight=torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="pos_weight"):
        st.multilabel_soft_margin_loss(x, y, pos_weight=torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="weight"):
        st.multilabel_soft_margin_loss(x, y, torch.tensor([1.0, -1.0, 1.0]), mask=torch.ones(4, 3, dtype=torch.bool))
    for dtype in DTYPES:
        with pytest.raises(ValueError, match="target"):
            st.multilabel_soft_margin_loss(x.to(dtype), torch.full((4, 3), 1.5, dtype=dtype), label_smoothing=0.1)
    # validate=False: not checked, on this path too (as the operator's path computes it)
    bad = torch.full((4, 3), 1.5)
    unchecked = st.multilabel_soft_margin_loss(x.requires_grad_(), bad, label_smoothing=0.1, validate=False)
    assert type(unchecked.grad_fn).__name__ == "_OptionsLossBackward"
    with passthrough_mode():
        expected = st.multilabel_soft_margin_loss(x, bad, label_smoothing=0.1, validate=False)
    assert torch.equal(unchecked.detach(), expected.detach())


@pytest.mark.parametrize(
    "case",
    ["3-d", "non-contiguous mask", "float mask", "(N, 1) mask", "pos_weight (1, C)", "float64 pos_weight",
     "pos_weight needs grad", "sparse target"],
)  # fmt: skip
def test_other_calls_take_the_general_path_and_stay_right(case):
    x, y, kwargs = _problem(6, 5, torch.float32, "same", "weights and mask", seed=1)
    reduction = "mean"
    if case == "3-d":
        x, y, kwargs["mask"] = x.reshape(2, 3, 5), y.reshape(2, 3, 5), kwargs["mask"].reshape(2, 3, 5)
    elif case == "non-contiguous mask":
        kwargs["mask"] = kwargs["mask"].t().contiguous().t()
    elif case == "float mask":
        kwargs["mask"] = kwargs["mask"].float()
    elif case == "(N, 1) mask":
        kwargs["mask"] = kwargs["mask"][:, :1]
    elif case == "pos_weight (1, C)":
        kwargs["pos_weight"] = kwargs["pos_weight"][None]
    elif case == "float64 pos_weight":
        kwargs["pos_weight"] = kwargs["pos_weight"].double()
    elif case == "pos_weight needs grad":
        kwargs["pos_weight"] = kwargs["pos_weight"].clone().requires_grad_()
    try:
        if case == "sparse target":
            y = y.to_sparse_csr()
        loss = st.multilabel_soft_margin_loss(x.clone().requires_grad_(), y, reduction=reduction, **kwargs)
    except (ValueError, TypeError) as error:  # the general path's own refusal (a float mask, pos_weight's grad)
        assert case in ("float mask", "pos_weight needs grad"), error
        return
    assert type(loss.grad_fn).__name__ != "_OptionsLossBackward"
    dense = y.to_dense() if case == "sparse target" else y
    with passthrough_mode():
        expected = st.multilabel_soft_margin_loss(x, dense, reduction=reduction, **kwargs)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-6, atol=1e-7)


def test_second_backward_and_second_order_take_the_general_backward():
    x, y, kwargs = _problem(5, 4, torch.float64, "same", "everything", seed=2)
    xi = x.clone().requires_grad_()
    loss = st.multilabel_soft_margin_loss(xi, y, **kwargs)
    assert type(loss.grad_fn).__name__ == "_OptionsLossBackward"
    (first,) = torch.autograd.grad(loss, xi, retain_graph=True)
    (second,) = torch.autograd.grad(loss, xi)  # the gradient was handed over: recomputed
    assert torch.equal(first, second)
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(st.multilabel_soft_margin_loss(xg, y, **kwargs), xg, create_graph=True)
    (hvp,) = torch.autograd.grad(g.sum(), xg)
    with passthrough_mode():
        xo = x.clone().requires_grad_()
        (go,) = torch.autograd.grad(st.multilabel_soft_margin_loss(xo, y, **kwargs), xo, create_graph=True)
        (hvp_operator,) = torch.autograd.grad(go.sum(), xo)
    torch.testing.assert_close(g, go, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(hvp, hvp_operator, rtol=1e-12, atol=1e-15)
    assert torch.autograd.gradcheck(lambda t: st.multilabel_soft_margin_loss(t, y, **kwargs), (x.clone().requires_grad_(),))


@pytest.mark.parametrize("mask", ["rows", "classes", "rows all False", "classes all False"])
def test_a_masked_forward_makes_no_tensor_for_the_general_backward(mask, monkeypatch):
    """The number of rows in a masked mean was made a 0-d tensor in every forward (torch.tensor: 2.8 us of a 14 us
    8x5 call) for the general backward, which only a second backward or a second order takes; it is kept as a float,
    and that backward still gives the operator's bits (with nothing observed too: divided by 1)."""
    x, y, kwargs = _problem(6, 5, torch.float32, "same", "row mask" if mask.startswith("rows") else "one-row mask", 12)
    if mask.endswith("all False"):
        kwargs["mask"] = torch.zeros_like(kwargs["mask"])
    made = []
    tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *args, **kw: made.append(args) or tensor(*args, **kw))
    xi = x.clone().requires_grad_()
    loss = st.multilabel_soft_margin_loss(xi, y, **kwargs)
    monkeypatch.undo()
    assert type(loss.grad_fn).__name__ == "_OptionsLossBackward"
    assert made == []
    go = torch.tensor(-1.5)
    (first,) = torch.autograd.grad(loss, xi, go, retain_graph=True)
    (second,) = torch.autograd.grad(loss, xi, go)  # the general backward, from the kept count
    general = _run(x, y, kwargs, "mean", go, through_operator=True)
    assert torch.equal(loss.detach(), general[0])
    assert torch.equal(first, general[1]) and torch.equal(second, general[1])


def test_module_with_buffers_takes_the_path_and_sees_in_place_updates():
    x, y, kwargs = _problem(8, 6, torch.float32, "same", "weights and mask", seed=4)
    module = st.MultiLabelSoftMarginLoss(weight=kwargs["weight"].clone(), pos_weight=kwargs["pos_weight"].clone())
    loss = module(x.clone().requires_grad_(), y, kwargs["mask"])
    assert type(loss.grad_fn).__name__ == "_OptionsLossBackward"
    module.pos_weight.mul_(3.0)  # updated in place: no cache between calls
    kwargs["pos_weight"] = kwargs["pos_weight"] * 3.0
    with passthrough_mode():
        expected = st.multilabel_soft_margin_loss(x, y, **kwargs)
    assert torch.equal(module(x, y, kwargs["mask"]), expected)



def test_the_reduced_options_call_rejects_bad_arguments_by_name():
    x, y = torch.randn(3, 4), torch.ones(3, 4)
    out, grad = torch.empty(()), torch.empty(3, 4)
    mask = torch.ones(3, 4, dtype=torch.uint8)
    good = (0, 0, x.data_ptr(), y.data_ptr(), None, None, (mask.data_ptr(), 4), 3, 4, (0.1, 0.0, 0.0, 0.0),
            grad.data_ptr(), 1, 0, 0, 1, True, out.data_ptr())  # fmt: skip
    assert cpu.reduced_options(*good) == (0, 3.0)
    for index, value, message in [
        (2, None, "x is NULL"), (7, 0, "positive"), (8, -1, "positive"), (12, 2, "per_sample_type"),
        (13, 4, "result_type"), (14, 3, "reduction"), (16, None, "result"), (0, 4, "xtype"), (7, 2**62, "overflows"),
        (6, (mask.data_ptr(), 3), "mask_row_step"), (3, None, "y is NULL"),
    ]:
        bad = list(good)
        bad[index] = value
        with pytest.raises(cpu.KernelArgumentError, match=message):
            cpu.reduced_options(*bad)


@pytest.mark.parametrize(("backend", "fast"), [("auto", True), ("cpu", True), ("torch", False)])
def test_backend_override_is_honoured(backend, fast, monkeypatch):
    monkeypatch.setenv("SOFTMARGIN_BACKEND", backend)
    x, y, kwargs = _problem(5, 4, torch.float32, "same", "weights and mask", seed=6)
    loss = st.multilabel_soft_margin_loss(x.requires_grad_(), y, **kwargs)
    assert (type(loss.grad_fn).__name__ == "_OptionsLossBackward") is fast
    torch.testing.assert_close(loss, _reference(x, y, kwargs, "mean").float(), rtol=1e-5, atol=1e-7)
