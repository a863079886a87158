"""torch.func transforms against torch's own loss: grad, vjp, vmap, jacrev, jacfwd, jvp, hessian."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import softmargin.torch as st

TRANSFORMS = {"grad": grad, "jacrev": jacrev, "jacfwd": jacfwd, "hessian": hessian}


def _data(seed=0, shape=(4, 5)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    y = (torch.rand(shape, generator=gen) < 0.5).double()
    w = torch.rand(shape[-1], generator=gen, dtype=torch.float64) + 0.2
    return x, y, w


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_transform_matches_torch(transform, reduction):
    x, y, w = _data()
    ours = TRANSFORMS[transform](lambda a: st.multilabel_soft_margin_loss(a, y, w, reduction=reduction))(x)
    theirs = TRANSFORMS[transform](lambda a: F.multilabel_soft_margin_loss(a, y, w, reduction=reduction))(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_jacrev_of_per_sample_losses():
    x, y, w = _data()
    ours = jacrev(lambda a: st.multilabel_soft_margin_loss(a, y, w, reduction="none"))(x)
    theirs = jacrev(lambda a: F.multilabel_soft_margin_loss(a, y, w, reduction="none"))(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_jvp_and_vjp():
    x, y, w = _data()
    tangent = torch.randn_like(x)
    ours = jvp(lambda a: st.multilabel_soft_margin_loss(a, y, w, reduction="none"), (x,), (tangent,))
    theirs = jvp(lambda a: F.multilabel_soft_margin_loss(a, y, w, reduction="none"), (x,), (tangent,))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    cotangent = torch.randn(4, dtype=torch.float64)
    out, pullback = vjp(lambda a, b: st.multilabel_soft_margin_loss(a, y, b, reduction="none"), x, w)
    out_ref, pullback_ref = vjp(lambda a, b: F.multilabel_soft_margin_loss(a, y, b, reduction="none"), x, w)
    torch.testing.assert_close(out, out_ref)
    for ours_grad, theirs_grad in zip(pullback(cotangent), pullback_ref(cotangent)):
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-10, atol=1e-12)


def test_jvp_wrt_target_and_weight():
    x, y, w = _data()
    ty, tw = torch.randn_like(y), torch.randn_like(w)
    ours = jvp(lambda b, c: st.multilabel_soft_margin_loss(x, b, c), (y, w), (ty, tw))
    theirs = jvp(lambda b, c: F.multilabel_soft_margin_loss(x, b, c), (y, w), (ty, tw))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("extra", ["mask", "pos_weight", "label_smoothing"])
def test_forward_mode_wrt_target_or_weight_with_extras_is_refused(extra):
    """The forward-mode formulas for target and weight are the plain loss's: with a mask or pos_weight they gave
    the unmasked, unweighted derivative (jacfwd w.r.t. weight with a mask: [0.206, 0.169, 0.192, 0.167] against
    [0.259, 0.166, 0.054, 0.276]). Refused now, as reverse mode refuses them; input's tangent stays right."""
    import torch.autograd.forward_ad as fwAD

    x, y, w = _data(3)
    kwargs = {"mask": torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.6,
              "pos_weight": torch.rand(x.shape[-1], dtype=torch.float64) + 0.5,
              "label_smoothing": 0.1}  # fmt: skip
    options = {extra: kwargs[extra]}
    with pytest.raises(ValueError, match=r"weight has a forward-mode tangent.*pass weight\.detach\(\)"):
        jacfwd(lambda c: st.multilabel_soft_margin_loss(x, y, c, **options))(w)
    with pytest.raises(ValueError, match=r"target has a forward-mode tangent"):
        jacfwd(lambda b: st.multilabel_soft_margin_loss(x, b, **options))(y)
    with pytest.raises(ValueError, match=r"pos_weight has a forward-mode tangent"), fwAD.dual_level():
        # before: an internal assert of PyTorch's autograd
        st.multilabel_soft_margin_loss(x, y, pos_weight=fwAD.make_dual(kwargs["pos_weight"], torch.ones(x.shape[-1], dtype=torch.float64)))
    forward = jacfwd(lambda a: st.multilabel_soft_margin_loss(a, y, w, **options))(x)
    torch.testing.assert_close(forward, jacrev(lambda a: st.multilabel_soft_margin_loss(a, y, w, **options))(x), rtol=1e-10, atol=1e-14)


def test_a_weight_requiring_grad_is_fine_under_no_grad():
    """Evaluation with a learned class weight and pos_weight: nothing is differentiated, nothing to refuse."""
    x, y, w = _data(3)
    learned = torch.nn.Parameter(w.clone())
    pos_weight = torch.full((x.shape[-1],), 2.0, dtype=torch.float64)
    with torch.no_grad():
        value = st.multilabel_soft_margin_loss(x, y, learned, pos_weight=pos_weight)
    torch.testing.assert_close(value, st.multilabel_soft_margin_loss(x, y, w, pos_weight=pos_weight))
    with pytest.raises(ValueError, match=r"weight requires grad, but with pos_weight"):
        st.multilabel_soft_margin_loss(x, y, learned, pos_weight=pos_weight)


@pytest.mark.parametrize("batched", ["input", "input+target", "input+target+weight"])
def test_vmap(batched):
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    ys = (torch.rand(3, 4, 5, generator=gen) < 0.5).double()
    ws = torch.rand(3, 5, generator=gen, dtype=torch.float64) + 0.1
    in_dims = (0, 0 if "target" in batched else None, 0 if "weight" in batched else None)
    y_arg = ys if "target" in batched else ys[0]
    w_arg = ws if "weight" in batched else ws[0]
    for reduction in ("none", "mean", "sum"):
        ours = vmap(lambda a, b, c: st.multilabel_soft_margin_loss(a, b, c, reduction=reduction), in_dims)(xs, y_arg, w_arg)
        theirs = vmap(lambda a, b, c: F.multilabel_soft_margin_loss(a, b, c, reduction=reduction), in_dims)(xs, y_arg, w_arg)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    ours = vmap(grad(lambda a, b, c: st.multilabel_soft_margin_loss(a, b, c)), in_dims)(xs, y_arg, w_arg)
    theirs = vmap(grad(lambda a, b, c: F.multilabel_soft_margin_loss(a, b, c)), in_dims)(xs, y_arg, w_arg)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_vmap_with_a_batched_mask_counts_each_batch_alone():
    """A sample with no observed label is left out of its own batch's mean; vmap must not pool the batches."""
    gen = torch.Generator().manual_seed(2)
    xs = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    ys = (torch.rand(3, 4, 5, generator=gen) < 0.5).double()
    masks = torch.rand(3, 4, 5, generator=gen) < 0.6
    masks[0, :2] = False  # two samples of the first batch have nothing observed
    ours = vmap(lambda a, b, m: st.multilabel_soft_margin_loss(a, b, mask=m))(xs, ys, masks)
    expected = torch.stack([st.multilabel_soft_margin_loss(xs[i], ys[i], mask=masks[i]) for i in range(3)])
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("options", [dict(pos_weight=torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)),
                                     dict(gamma_pos=1.0, gamma_neg=3.0, clip=0.05), dict(label_smoothing=0.1)])
def test_grad_and_hessian_with_options_match_eager_and_finite_differences(options):
    x, y, _ = _data(3)
    g = grad(lambda a: st.multilabel_soft_margin_loss(a, y, **options))(x)
    eager_x = x.clone().requires_grad_()
    st.multilabel_soft_margin_loss(eager_x, y, **options).backward()
    torch.testing.assert_close(g, eager_x.grad, rtol=1e-10, atol=1e-14)
    h = hessian(lambda a: st.multilabel_soft_margin_loss(a, y, **options))(x)
    # second derivatives against central differences of the (fused) first derivative
    step = 1e-6
    direction = torch.randn_like(x)
    fd = (grad(lambda a: st.multilabel_soft_margin_loss(a, y, **options))(x + step * direction)
          - grad(lambda a: st.multilabel_soft_margin_loss(a, y, **options))(x - step * direction)) / (2 * step)
    torch.testing.assert_close((h.reshape(x.numel(), x.numel()) @ direction.reshape(-1)).reshape(x.shape), fd, rtol=1e-5, atol=1e-9)


def test_vmap_over_sparse_targets_is_a_clear_error():
    xs = torch.randn(2, 3, 4)
    with pytest.raises(Exception, match="sparse"):
        vmap(lambda a: st.multilabel_soft_margin_loss(a, [[0], [1, 2], []]))(xs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [{}, {"pos_weight": True}, {"gamma_neg": 2.0, "clip": 0.05}])
def test_batched_backward_equals_one_backward_per_vector(reduction, options, dtype):
    # torch.autograd.grad(..., is_grads_batched=True) and jacobian(vectorize=True) run the backward under vmap
    x, y, w = (t.to(dtype) for t in _data())
    options = dict(options)
    if options.pop("pos_weight", False):
        options["pos_weight"] = w + 0.5
    loss = lambda a: st.multilabel_soft_margin_loss(a, y, w, reduction=reduction, **options)
    x = x.requires_grad_()
    out = loss(x)
    vectors = torch.randn(3, *out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    (batched,) = torch.autograd.grad(out, x, vectors, is_grads_batched=True)
    one_by_one = torch.stack([torch.autograd.grad(loss(x), x, v)[0] for v in vectors])
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=0)
    if reduction == "none":
        jacobian = torch.autograd.functional.jacobian(loss, x.detach(), vectorize=True)
        looped = torch.autograd.functional.jacobian(loss, x.detach())
        torch.testing.assert_close(jacobian, looped, rtol=0, atol=0)


@pytest.mark.parametrize("options", [{}, dict(pos_weight=torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)),
                                     dict(gamma_pos=1.0, gamma_neg=3.0, clip=0.05), dict(gamma_neg=2.0), dict(label_smoothing=0.1)])
def test_second_derivatives_at_zero_and_infinite_logits(options):
    # autodiff of |x| and relu takes the derivative 0 at x = 0, which mixed the two branches of the stable formula:
    # the second derivative at an exactly zero logit (a zero-initialised head) came out 0 instead of sigmoid'(0) / C
    x = torch.tensor([[0.0, -0.0, 1.5, -2.0, 0.0], [0.3, 0.0, -0.0, 4.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.3], [0.0, 1.0, 0.7, 1.0, 0.0]], dtype=torch.float64)
    f = lambda a: st.multilabel_soft_margin_loss(a, y, **options)
    h = hessian(f)(x).reshape(x.numel(), x.numel())
    step = 1e-5
    for i in range(x.numel()):  # column i against central differences of the first derivative along e_i
        e = torch.zeros(x.numel(), dtype=torch.float64)
        e[i] = step
        fd = (grad(f)(x + e.reshape(x.shape)) - grad(f)(x - e.reshape(x.shape))) / (2 * step)
        torch.testing.assert_close(h[:, i], fd.reshape(-1), rtol=1e-6, atol=1e-10)
    if not options:  # and torch's own, where torch is right (finite logits)
        torch.testing.assert_close(h, hessian(lambda a: F.multilabel_soft_margin_loss(a, y))(x).reshape(h.shape), rtol=1e-12, atol=1e-15)
    big = x.clone()
    big[0, 2], big[1, 3] = float("inf"), -float("inf")
    h = hessian(f)(big).reshape(x.numel(), x.numel())
    assert bool(h.isfinite().all())
    assert h[2, 2] == 0 and h[8, 8] == 0  # sigmoid'(+-inf) = 0


@pytest.mark.parametrize("options", [dict(pos_weight=torch.tensor([2.0, 0.5, 3.0, 1.0], dtype=torch.float64)),
                                     dict(gamma_pos=2.0, gamma_neg=2.0), dict(clip=0.05),
                                     dict(gamma_pos=1.0, gamma_neg=4.0, clip=0.05, label_smoothing=0.1)])
def test_double_backward_at_infinite_logits(options):
    """autograd.grad(create_graph=True) twice at +-inf: 0 at the infinite logits (sigmoid' vanishes; the
    unselected branch of the formula's 0 * inf guard gave 0 * inf = NaN), central differences of the gradient at
    the finite ones (the Hessian is diagonal, so the gradient of the summed gradient is its diagonal)."""
    inf = float("inf")
    x = torch.tensor([[inf, 0.5, -inf, 2.0], [-inf, -1.0, inf, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.3]], dtype=torch.float64)
    (g,) = torch.autograd.grad(st.multilabel_soft_margin_loss(x, y, **options), x, create_graph=True)
    (diagonal,) = torch.autograd.grad(g.sum(), x)
    finite = x.detach().isfinite()
    assert bool((diagonal[~finite] == 0).all()), diagonal
    gradient = grad(lambda a: st.multilabel_soft_margin_loss(a, y, **options))
    step = 1e-5
    for i, j in finite.nonzero().tolist():
        e = torch.zeros_like(x.detach())
        e[i, j] = step
        fd = (gradient(x.detach() + e)[i, j] - gradient(x.detach() - e)[i, j]) / (2 * step)
        torch.testing.assert_close(diagonal[i, j], fd, rtol=1e-6, atol=1e-10)
