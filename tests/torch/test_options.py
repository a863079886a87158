"""The imbalance options (pos_weight, mask, label smoothing, asymmetric focusing), both backends, against naive
float64 references written here, with gradients."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, with_triton_path

import softmargin.numpy as snp

torch = pytest.importorskip("torch")
import softmargin.torch as st

torch_path = with_triton_path  # this module's matrix runs through the Triton kernel too

pytestmark = pytest.mark.usefixtures("torch_path")


def naive_loss(x, y, weight=None, pos_weight=None, mask=None, smoothing=0.0, gamma_pos=0.0, gamma_neg=0.0, clip=0.0, reduction="mean"):
    """The textbook formulas in float64, straight from the papers: only for moderate logits."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    y = y * (1 - smoothing) + smoothing / 2
    p = 1 / (1 + np.exp(-x))
    p_m = np.maximum(p - clip, 0)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
    element = -(pw * y * (1 - p) ** gamma_pos * np.log(p) + (1 - y) * p_m**gamma_neg * np.log(1 - p_m))
    if weight is not None:
        element = element * weight
    m = np.ones_like(x) if mask is None else np.broadcast_to(np.asarray(mask, np.float64), x.shape)
    observed = m.sum(-1)
    per_sample = np.where(observed > 0, (element * m).sum(-1) / np.maximum(observed, 1), 0.0)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    kept = (observed > 0).sum()
    return per_sample.sum() / kept if kept else 0.0


def _both(x, y, reduction="mean", **kw):
    """[(loss, grad)] from NumPy and torch, float64."""
    out = [snp.multilabel_soft_margin_loss_and_grad(x, y, reduction=reduction, **kw)]
    tkw = {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    xt = torch.tensor(x, requires_grad=True)
    loss = st.multilabel_soft_margin_loss(xt, torch.tensor(y), reduction=reduction, **tkw)
    loss.sum().backward()
    out.append((loss.detach().numpy(), xt.grad.numpy()))
    return [(np.asarray(a, np.float64), np.asarray(b, np.float64)) for a, b in out]


def _numeric_grad(x, y, reduction, kw, eps=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (np.sum(naive_loss(x + step, y, reduction=reduction, **kw)) - np.sum(naive_loss(x - step, y, reduction=reduction, **kw))) / (2 * eps)
    return grad


CASES = {
    "pos_weight": dict(pos_weight=np.array([0.5, 3.0, 1.0, 10.0, 2.0])),
    "pos_weight full": dict(pos_weight=np.linspace(0.2, 5, 20).reshape(4, 5)),
    "mask": dict(mask=np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], dtype=bool)),
    "mask per class": dict(mask=np.array([True, False, True, True, False])),
    "smoothing": dict(smoothing=0.1),
    "focal": dict(gamma_pos=2.0, gamma_neg=2.0),
    "asymmetric": dict(gamma_pos=1.0, gamma_neg=4.0, clip=0.05),
    "clip only": dict(clip=0.2),
    "fractional gammas": dict(gamma_pos=0.5, gamma_neg=0.3, clip=0.1),
    "everything": dict(
        weight=np.array([1.0, 2.0, 0.5, 1.5, 1.0]), pos_weight=np.array([2.0, 1.0, 3.0, 1.0, 0.5]),
        mask=np.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=bool),
        smoothing=0.05, gamma_pos=1.0, gamma_neg=2.0, clip=0.05,
    ),
}


def _api_kwargs(kw):
    kw = dict(kw)
    if "smoothing" in kw:
        kw["label_smoothing"] = kw.pop("smoothing")
    return kw


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("soft", [False, True])
def test_option_against_naive_reference(case, reduction, soft, rng):
    x = rng.standard_normal((4, 5)) * 3
    y = rng.random((4, 5)) if soft else (rng.random((4, 5)) < 0.5).astype(np.float64)
    kw = CASES[case]
    expected = naive_loss(x, y, reduction=reduction, **kw)
    expected_grad = _numeric_grad(x, y, reduction, kw)
    for loss, grad in _both(x, y, reduction, **_api_kwargs(kw)):
        assert_close(loss, expected, 1e-12, f"{case} loss")
        assert_close(grad, expected_grad, 1e-7, f"{case} grad")


@pytest.mark.parametrize("case", ["pos_weight", "mask", "smoothing", "focal", "asymmetric", "fractional gammas"])
def test_gradcheck(case, rng, torch_path):
    x = torch.tensor(rng.standard_normal((4, 5)) * 2, requires_grad=True)
    y = torch.tensor(rng.random((4, 5)))
    kw = {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in _api_kwargs(CASES[case]).items()}
    # Triton's interpreter takes 0.1 s a call: its full Jacobian (40 calls) took 3.5 s a case, gradcheck's fast mode
    # (a random projection of it) a few calls; the element-wise check of its gradient is the formula tests' job
    fast = torch_path == "triton"
    loss = lambda a: st.multilabel_soft_margin_loss(a, y, reduction="none", **kw)
    assert torch.autograd.gradcheck(loss, (x,), fast_mode=fast)


def test_focal_matches_torchvision_formula(rng):
    # torchvision.ops.sigmoid_focal_loss (alpha=-1, reduction="none"), transcribed: torchvision does not import beside
    # torch 2.13 here. ce = BCE-with-logits; p_t = p y + (1 - p)(1 - y); loss = ce * (1 - p_t)^gamma
    x = torch.tensor(rng.standard_normal((6, 7)) * 3)
    y = torch.tensor((rng.random((6, 7)) < 0.3).astype(np.float64))
    p = torch.sigmoid(x)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    torchvision_focal = (ce * (1 - p_t) ** 2.0).sum(-1) / 7
    ours = st.multilabel_soft_margin_loss(x, y, reduction="none", gamma_pos=2.0, gamma_neg=2.0)
    assert_close(ours.numpy(), torchvision_focal.numpy(), 1e-12, "focal")


@pytest.mark.parametrize(
    "neutral",
    [
        dict(mask=np.ones((4, 5), dtype=bool)),
        dict(pos_weight=np.ones(5)),
        dict(label_smoothing=0.0, gamma_pos=0.0, gamma_neg=0.0, clip=0.0),
    ],
)
def test_neutral_options_equal_the_plain_loss(neutral, rng):
    x = rng.standard_normal((4, 5)) * 5
    y = rng.random((4, 5))
    plain = _both(x, y, "none")
    for (loss, grad), (ref_loss, ref_grad) in zip(_both(x, y, "none", **neutral), plain):
        assert_close(loss, ref_loss, 1e-14, "loss")
        assert_close(grad, ref_grad, 1e-14, "grad")


def test_mask_with_nothing_observed_gives_zero_not_nan():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    nothing = np.zeros((2, 2), dtype=bool)
    for reduction in ("mean", "sum", "none"):
        for loss, grad in _both(x, y, reduction, mask=nothing):
            assert not np.isnan(loss).any() and (loss == 0).all() and (grad == 0).all()


def test_mask_drops_missing_labels_even_with_infinite_logits():
    x = np.array([[np.inf, 1.0]])
    y = np.array([[0.0, 1.0]])  # a wrong prediction at infinity, but its label is missing
    for loss, grad in _both(x, y, "sum", mask=np.array([[False, True]])):
        assert np.isfinite(loss) and grad[0, 0] == 0


@pytest.mark.parametrize("options", [dict(gamma_pos=2.0, gamma_neg=3.0), dict(gamma_neg=2.0, clip=0.1), dict(label_smoothing=0.2)])
def test_options_stay_finite_at_infinite_logits(options):
    x = np.array([[np.inf, -np.inf, np.inf, -np.inf, 0.0]])
    y = np.array([[1.0, 0.0, 0.0, 1.0, 0.5]])
    for loss, grad in _both(x, y, "none", **options):
        assert not np.isnan(loss).any() and np.isfinite(grad).all()


BAD = [
    (dict(gamma_pos=-1.0), ValueError, r"gamma_pos=-1\.0: expected a finite gamma_pos >= 0"),
    (dict(gamma_neg=float("inf")), ValueError, r"gamma_neg=inf: expected a finite gamma_neg >= 0"),
    # beyond float32's largest the kernels read inf, and every gradient of float32 logits was NaN
    (dict(gamma_pos=1e39), ValueError, r"gamma_pos=1e\+39: expected a finite gamma_pos >= 0, at most 3\.403e\+38"),
    (dict(clip=1.0), ValueError, r"clip=1\.0 is outside \[0, 1\)"),
    (dict(clip=-0.1), ValueError, r"clip=-0\.1 is outside \[0, 1\)"),
    (dict(label_smoothing=1.0), ValueError, r"label_smoothing=1\.0 is outside \[0, 1\)"),
    (dict(label_smoothing="0.1"), TypeError, r"label_smoothing='0\.1' is a str: expected a float"),
    (dict(pos_weight=np.array([1.0, 0.0, 1.0])), ValueError, r"pos_weight has 1 value outside the finite range \(0, inf\)"),
    (dict(pos_weight=np.array([1.0, -2.0, 1.0])), ValueError, r"pos_weight has 1 value outside"),
    (dict(pos_weight=np.ones(4)), ValueError, r"pos_weight\.shape == \(4,\) does not broadcast to input\.shape == \(2, 3\)"),
    (dict(mask=np.ones((2, 3))), TypeError, r"mask has dtype (torch\.)?float64: expected bool"),
    (dict(mask=np.ones((3, 2), dtype=bool)), ValueError, r"mask\.shape == \(3, 2\) does not broadcast"),
]


@pytest.mark.parametrize("kw,error,message", BAD)
def test_bad_option_values(kw, error, message):
    x, y = np.zeros((2, 3)), np.zeros((2, 3))
    with pytest.raises(error, match=message):
        snp.multilabel_soft_margin_loss(x, y, **kw)
    tkw = {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    with pytest.raises(error, match=message):
        st.multilabel_soft_margin_loss(torch.tensor(x), torch.tensor(y), **tkw)


def test_target_gradient_with_options_is_a_clear_error():
    x = torch.zeros(2, 3, requires_grad=True)
    y = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"target requires grad, but with pos_weight, mask.*only input is differentiable"):
        st.multilabel_soft_margin_loss(x, y, gamma_pos=1.0)


def test_module_keeps_pos_weight_as_buffer_and_takes_a_mask():
    module = st.MultiLabelSoftMarginLoss(pos_weight=torch.tensor([1.0, 2.0]), gamma_neg=1.0)
    assert "pos_weight" in module.state_dict()
    x = torch.randn(3, 2)
    y = (torch.rand(3, 2) > 0.5).float()
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    expected = naive_loss(x.numpy(), y.numpy(), pos_weight=np.array([1.0, 2.0]), mask=mask.numpy(), gamma_neg=1.0)
    assert_close(module(x, y, mask).item(), expected, 1e-6)


def test_a_tensor_option_gets_torch_advice_not_jaxs():
    """A tensor given for an option was told to "mark it static with static_argnums" under jax.jit."""
    x, y = torch.zeros(2, 3), torch.zeros(2, 3)
    expected = r"label_smoothing is a Tensor of shape \(\): expected a Python float \(an option decides which formula is computed and is not differentiated\): pass a number, e\.g\. t\.item\(\)"
    for call in (
        lambda: st.multilabel_soft_margin_loss(x, y, label_smoothing=torch.tensor(0.1)),
        lambda: st.MultiLabelSoftMarginLoss(label_smoothing=torch.tensor(0.1)),
        lambda: st.linear_multilabel_soft_margin_loss(x, torch.zeros(3, 3), None, torch.zeros(2, 3), label_smoothing=torch.tensor(0.1)),
    ):
        with pytest.raises(TypeError, match=expected) as caught:
            call()
        assert "jax" not in str(caught.value) and "static_arg" not in str(caught.value)
    with pytest.raises(TypeError, match=r"gamma_pos is a Tensor of shape \(3,\): expected a Python float .*: pass a number, e\.g\. float\(a\)"):
        snp.multilabel_soft_margin_loss(np.zeros((2, 3)), np.zeros((2, 3)), gamma_pos=torch.ones(3))


def test_a_learned_weight_with_pos_weight_is_refused_in_the_modules_terms():
    """A module user was told to "pass weight.detach()", but passes no weight to forward: the module says how to
    construct it instead; the functional keeps its advice."""
    x, y = torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3)
    learned = torch.nn.Parameter(torch.ones(3))
    module = st.MultiLabelSoftMarginLoss(weight=learned, pos_weight=torch.full((3,), 2.0))
    with pytest.raises(ValueError, match=r"weight requires grad, but with pos_weight, mask.*only input is differentiable.*"
                                         r"; construct the MultiLabelSoftMarginLoss with weight=weight\.detach\(\)$"):
        module(x, y)
    smoothing = st.MultiLabelSoftMarginLoss(weight=learned, label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"construct the MultiLabelSoftMarginLoss with weight=weight\.detach\(\)$"):
        smoothing(x, y)
    with pytest.raises(ValueError, match=r"pass weight\.detach\(\)$"):
        st.multilabel_soft_margin_loss(x, y, learned, pos_weight=torch.full((3,), 2.0))
    # the plain module differentiates its weight: nothing refused, the gradient is torch's
    plain = st.MultiLabelSoftMarginLoss(weight=learned)
    plain(x, y).backward()
    expected = torch.nn.Parameter(torch.ones(3))
    torch.nn.functional.multilabel_soft_margin_loss(x, y, expected).backward()
    torch.testing.assert_close(learned.grad, expected.grad)
    head = st.LinearMultiLabelSoftMarginLoss(3, 3, class_weight=learned)
    with pytest.raises(ValueError, match=r"class_weight requires grad, but the fused linear head differentiates hidden, "
                                         r"weight and bias only.*; construct the LinearMultiLabelSoftMarginLoss with "
                                         r"class_weight=class_weight\.detach\(\)$"):
        head(torch.zeros(2, 3), y)
