"""Forward- and reverse-mode AD through the operator itself, ``torch.ops.softmargin.loss_rows``: what a scripted or
traced module and a direct call reach (the eager public API has its own autograd.Function, tested in test_func.py).

``register_autograd`` gives a custom operator reverse mode only: before the operator had its own Autograd kernel,
``torch.func.jvp`` of a scripted module gave a tangent of 0 and a forward_ad dual tensor came back without a tangent,
silently; ``torch.func.grad`` / ``jacrev`` of a direct call or a scripted module raised inside torch. Each case is
checked against the eager module (itself checked against torch and finite differences) and, for ``jvp``, against
central finite differences in float64.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.autograd.forward_ad as fwAD
from helpers import OPTION_CASES, option_operands
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

import softmargin.torch as st

_OPTION_NAMES = ("label_smoothing", "gamma_pos", "gamma_neg", "clip")
SHAPE = (4, 5)


def _case(case, reduction="mean"):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(SHAPE, generator=gen, dtype=torch.float64) * 2
    y = (torch.rand(SHAPE, generator=gen) < 0.4).double()
    tangent = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    operands = option_operands(OPTION_CASES[case], torch.float64, *SHAPE)
    options = {name: operands[name] for name in _OPTION_NAMES if name in operands}
    module = st.MultiLabelSoftMarginLoss(
        weight=operands.get("weight"), pos_weight=operands.get("pos_weight"), reduction=reduction, **options
    )
    return module, operands.get("mask"), x, y, tangent


def _callers(module, mask, x, y):
    """The ways to reach the operator, each a function of the logits, with the eager module as the reference."""
    mask_args = () if mask is None else (mask,)
    scripted = torch.jit.script(module)
    traced = torch.jit.trace(module, (x, y, *mask_args))
    o = module

    def direct(a):
        per_sample, _, counted = torch.ops.softmargin.loss_rows(
            a, y, o.weight, o.pos_weight, mask, None, None, None, o.label_smoothing, o.gamma_pos, o.gamma_neg, o.clip,
            False, True,
        )  # fmt: skip
        total = per_sample.sum()
        if o.reduction == "sum":
            return total
        return per_sample if o.reduction == "none" else total / (counted.clamp_min(1.0) if mask is not None else per_sample.numel())

    return {
        "eager": lambda a: module(a, y, *mask_args),
        "scripted": lambda a: scripted(a, y, *mask_args),
        "traced": lambda a: traced(a, y, *mask_args),
        "direct": direct,
    }


CALLERS = ["scripted", "traced", "direct"]


def _close(ours, reference):
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def _finite_difference_jvp(f, x, tangent, step=1e-6):
    return (f(x + step * tangent) - f(x - step * tangent)) / (2 * step)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_jvp_and_dual_tensors_carry_the_tangent(case, caller):
    module, mask, x, y, tangent = _case(case, "none")
    callers = _callers(module, mask, x, y)
    f, eager = callers[caller], callers["eager"]
    value, tangent_out = jvp(f, (x,), (tangent,))
    reference = jvp(eager, (x,), (tangent,))
    _close(value, reference[0])
    _close(tangent_out, reference[1])
    torch.testing.assert_close(tangent_out, _finite_difference_jvp(f, x, tangent), rtol=1e-6, atol=1e-8)
    assert tangent_out.abs().max() > 1e-3  # (a tangent of 0, as before, would not pass the lines above)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(f(fwAD.make_dual(x, tangent)))
    _close(out.primal, reference[0])
    assert out.tangent is not None
    _close(out.tangent, reference[1])


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("case", ["plain", "full weight", "row pos_weight", "full mask", "everything"])
@pytest.mark.parametrize("transform", ["grad", "jacrev", "jacfwd", "hessian", "jacrev of jacrev"])
def test_transforms_match_the_eager_module(transform, case, caller):
    module, mask, x, y, _ = _case(case)
    callers = _callers(module, mask, x, y)
    apply = {"grad": grad, "jacrev": jacrev, "jacfwd": jacfwd, "hessian": hessian,
             "jacrev of jacrev": lambda f: jacrev(jacrev(f))}[transform]  # fmt: skip
    _close(apply(callers[caller])(x), apply(callers["eager"])(x))


@pytest.mark.parametrize("caller", CALLERS)
def test_vmap_vmap_of_jvp_jvp_of_grad_and_both_modes_at_once(caller):
    module, mask, x, y, tangent = _case("everything")
    callers = _callers(module, mask, x, y)
    f, eager = callers[caller], callers["eager"]
    xs, ts = torch.stack([x, x * 0.5]), torch.stack([tangent, -2 * tangent])
    _close(vmap(lambda a, t: jvp(f, (a,), (t,))[1])(xs, ts), vmap(lambda a, t: jvp(eager, (a,), (t,))[1])(xs, ts))
    _close(vmap(f)(xs), vmap(eager)(xs))  # (a scripted module failed here: TorchScript's numel has no vmap rule)
    _close(jvp(grad(f), (x,), (tangent,))[1], jvp(grad(eager), (x,), (tangent,))[1])
    leaf = x.clone().requires_grad_()
    with fwAD.dual_level():
        out = f(fwAD.make_dual(leaf, tangent))
        forward_tangent = fwAD.unpack_dual(out).tangent
        (reverse,) = torch.autograd.grad(out, leaf)
    _close(forward_tangent, jvp(eager, (x,), (tangent,))[1])
    _close(reverse, grad(eager)(x))


def test_the_operator_keeps_its_outputs_contract_under_forward_mode():
    """need_grad=False: the Jacobian is computed for the tangent but the output is empty, as without a tangent."""
    _, _, x, y, tangent = _case("plain")
    args = (y, None, None, None, None, None, None, 0.0, 0.0, 0.0, 0.0)
    with fwAD.dual_level():
        per_sample, jacobian, counted = torch.ops.softmargin.loss_rows(fwAD.make_dual(x, tangent), *args, False, True)
        assert jacobian.numel() == 0 and counted.item() == 4
        per_sample_g, jacobian_g, _ = torch.ops.softmargin.loss_rows(fwAD.make_dual(x, tangent), *args, True, True)
        assert jacobian_g.shape == x.shape
        _close(fwAD.unpack_dual(per_sample).tangent, (jacobian_g * tangent).sum(-1))
        _close(fwAD.unpack_dual(per_sample_g).tangent, fwAD.unpack_dual(per_sample).tangent)


def test_tangents_of_target_and_weight_through_the_operator_match_torch():
    _, _, x, y, _ = _case("plain")
    gen = torch.Generator().manual_seed(5)
    w = torch.rand(SHAPE[1], generator=gen, dtype=torch.float64) + 0.2
    ty, tw = torch.randn(SHAPE, generator=gen, dtype=torch.float64), torch.randn(SHAPE[1], generator=gen, dtype=torch.float64)

    def ours(b, c):
        per_sample, _, _ = torch.ops.softmargin.loss_rows(
            x, b, c, None, None, None, None, None, 0.0, 0.0, 0.0, 0.0, False, True
        )
        return per_sample

    def theirs(b, c):
        return torch.nn.functional.multilabel_soft_margin_loss(x, b, c, reduction="none")

    _close(jvp(ours, (y, w), (ty, tw))[1], jvp(theirs, (y, w), (ty, tw))[1])


@pytest.mark.parametrize("operand", ["target", "weight", "pos_weight"])
def test_tangents_the_operator_does_not_differentiate_are_refused_by_name(operand):
    _, _, x, y, _ = _case("plain")
    w, pw = torch.ones(SHAPE[1], dtype=torch.float64), torch.full((SHAPE[1],), 2.0, dtype=torch.float64)
    operands = {"target": y, "weight": w, "pos_weight": pw}

    def f(t):
        values = {**operands, operand: t}
        return torch.ops.softmargin.loss_rows(
            x, values["target"], values["weight"], values["pos_weight"], None, None, None, None, 0.0, 0.0, 0.0, 0.0,
            False, True,
        )[0]  # fmt: skip

    with pytest.raises(ValueError, match=f"{operand} has a forward-mode tangent.*{operand}.detach"):
        jvp(f, (operands[operand],), (torch.ones_like(operands[operand]),))
    with fwAD.dual_level(), pytest.raises(ValueError, match=f"{operand} has a forward-mode tangent"):
        f(fwAD.make_dual(operands[operand], torch.ones_like(operands[operand])))


def test_a_tangent_on_sparse_target_values_is_refused():
    _, _, x, _, _ = _case("plain")
    indptr = torch.tensor([0, 1, 2, 2, 3])
    indices = torch.tensor([0, 3, 1])
    values = torch.ones(3, dtype=torch.float64)
    with fwAD.dual_level(), pytest.raises(ValueError, match="values has a forward-mode tangent"):
        torch.ops.softmargin.loss_rows(
            x, None, None, None, None, indptr, indices, fwAD.make_dual(values, torch.ones(3, dtype=torch.float64)),
            0.0, 0.0, 0.0, 0.0, False, True,
        )  # fmt: skip


def _compiled_transforms():
    return {
        "grad": lambda f: (lambda a, t: grad(lambda u: f(u).sum())(a)),
        "jacrev": lambda f: (lambda a, t: jacrev(f)(a)),
        "hessian": lambda f: (lambda a, t: hessian(lambda u: f(u).sum())(a)),
        "jvp": lambda f: (lambda a, t: jvp(f, (a,), (t,))[1]),
        "jacfwd": lambda f: (lambda a, t: jacfwd(f)(a)),
        "vmap of jvp": lambda f: (lambda a, t: vmap(lambda u, v: jvp(f, (u,), (v,))[1])(torch.stack([a, a]), torch.stack([t, -t]))),
        "jvp of jvp": lambda f: (lambda a, t: jvp(lambda u: jvp(f, (u,), (t,))[1], (a,), (t,))[1]),
        "jacfwd of jacfwd": lambda f: (lambda a, t: jacfwd(jacfwd(f))(a)),
    }  # fmt: skip


@pytest.mark.parametrize("backend", ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("transform", list(_compiled_transforms()))
@pytest.mark.parametrize("case", ["plain", "everything"])
def test_func_transforms_inside_torch_compile(case, transform, backend):
    """``torch.compile(fullgraph=True)`` of a function that calls a ``torch.func`` transform on the loss traces the
    operator under the transform: with torch's Autograd kernel for the operator, jvp's tangent was 0, silently, and
    grad / jacrev / hessian raised ("... must override the setup_context staticmethod")."""
    torch._dynamo.reset()
    module, mask, x, y, tangent = _case(case, "none")
    mask_args = () if mask is None else (mask,)
    apply = _compiled_transforms()[transform]
    reference = apply(lambda a: module(a, y, *mask_args))(x, tangent)
    compiled = torch.compile(apply(lambda a: module(a, y, *mask_args)), fullgraph=True, backend=backend)
    _close(compiled(x, tangent), reference)
    assert reference.abs().max() > 1e-3
    if case == "plain":  # and torch's own loss (second derivatives through a tangent were lost, eager as compiled)
        _close(reference, apply(lambda a: torch.nn.functional.multilabel_soft_margin_loss(a, y, reduction="none"))(x, tangent))


# ---- second and higher derivatives through the tangent ---------------------------------------------------------------
#
# The tangent was computed from the operator's Jacobian, a constant to autograd, and torch runs a jvp rule with forward
# mode off: every derivative of the tangent (jvp of jvp, jacfwd of jacfwd, grad of jvp, a dual tensor's tangent
# differentiated by torch.autograd) lost the second-order term, silently (jvp of jvp gave 0), and jacrev(jacfwd(loss))
# raised inside torch for the eager module. References: torch's own loss for the plain case and, with every option,
# central differences in float64 of the first-order gradient (reverse mode, which these fixes do not touch).

_HIGHER_ORDER = {
    "jvp of jvp": lambda f, x, t: jvp(lambda a: jvp(f, (a,), (t,))[1], (x,), (t,))[1],
    "jacfwd of jacfwd": lambda f, x, t: jacfwd(jacfwd(f))(x).reshape(x.numel(), x.numel()) @ t.reshape(-1),
    "jacrev of jacfwd": lambda f, x, t: jacrev(jacfwd(f))(x).reshape(x.numel(), x.numel()) @ t.reshape(-1),
    "grad of jvp": lambda f, x, t: grad(lambda a: jvp(f, (a,), (t,))[1])(x).reshape(-1),
    "autograd of a dual tangent": lambda f, x, t: _autograd_of_dual_tangent(f, x, t).reshape(-1),
    "autograd of a jvp tangent": lambda f, x, t: _autograd_of_jvp_tangent(f, x, t).reshape(-1),
}


def _autograd_of_jvp_tangent(f, x, t):
    leaf = x.clone().requires_grad_()
    return torch.autograd.grad(jvp(f, (leaf,), (t,))[1], leaf)[0]


def _autograd_of_dual_tangent(f, x, t):
    leaf = x.clone().requires_grad_()
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(f(fwAD.make_dual(leaf, t))).tangent
    return torch.autograd.grad(tangent, leaf)[0]


def _reference_hvp(f_eager, x, t, step=1e-6):
    """The Hessian times ``t`` (or ``t . H t`` for jvp of jvp) from central differences of the reverse-mode gradient."""
    return (grad(f_eager)(x + step * t) - grad(f_eager)(x - step * t)) / (2 * step)


@pytest.mark.parametrize("caller", ["eager", *CALLERS])
@pytest.mark.parametrize("case", ["plain", "everything"])
@pytest.mark.parametrize("transform", list(_HIGHER_ORDER))
def test_second_derivatives_through_the_tangent(transform, case, caller):
    module, mask, x, y, tangent = _case(case)
    callers = _callers(module, mask, x, y)
    ours = _HIGHER_ORDER[transform](callers[caller], x, tangent)
    hvp = _reference_hvp(callers["eager"], x, tangent).reshape(-1)
    reference = hvp @ tangent.reshape(-1) if transform == "jvp of jvp" else hvp
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-8)
    assert reference.abs().max() > 1e-2  # (the second-order term lost, as before, would not pass)
    if case == "plain":
        torch_loss = lambda a: torch.nn.functional.multilabel_soft_margin_loss(a, y)
        exact = hessian(torch_loss)(x).reshape(x.numel(), x.numel()) @ tangent.reshape(-1)
        _close(ours, exact @ tangent.reshape(-1) if transform == "jvp of jvp" else exact)


@pytest.mark.parametrize("caller", ["eager", *CALLERS])
def test_third_derivative_by_jvp_of_jvp_of_jvp_matches_torch(caller):
    module, mask, x, y, tangent = _case("plain")
    f = _callers(module, mask, x, y)[caller]

    def third(g):
        return jvp(lambda a: jvp(lambda b: jvp(g, (b,), (tangent,))[1], (a,), (tangent,))[1], (x,), (tangent,))[1]

    reference = third(lambda a: torch.nn.functional.multilabel_soft_margin_loss(a, y))
    _close(third(f), reference)
    assert reference.abs() > 1e-3


@pytest.mark.parametrize("caller", ["eager", *CALLERS])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "dual through a backward"])
def test_forward_over_reverse_whatever_the_grad_mode(mode, caller):
    """Forward mode differentiates a backward pass whatever the grad mode: hessian (jacfwd of jacrev) under
    torch.no_grad, and a dual tensor through torch.autograd.grad without create_graph. The backward used the
    precomputed Jacobian, a constant, unless grad mode was on: hessian was off by 0.06 and the dual's gradient came
    back without a tangent, where torch's own loss gives both."""
    module, mask, x, y, tangent = _case("plain", "sum")
    f = _callers(module, mask, x, y)[caller]
    torch_loss = lambda a: torch.nn.functional.multilabel_soft_margin_loss(a, y, reduction="sum")
    if mode == "dual through a backward":

        def forward_over_reverse(g):
            with fwAD.dual_level():
                dual = fwAD.make_dual(x.clone().requires_grad_(), tangent)
                (gradient,) = torch.autograd.grad(g(dual), dual)
                return fwAD.unpack_dual(gradient).tangent

        reference = forward_over_reverse(torch_loss)
        ours = forward_over_reverse(f)
        assert ours is not None
    else:
        with getattr(torch, mode)():
            reference, ours = hessian(torch_loss)(x), hessian(f)(x)
    _close(ours, reference)
    assert reference.abs().max() > 1e-2


def test_the_layer_below_runs_with_the_callers_dispatch_keys(monkeypatch):
    """The operator run a transform's level below gets the dispatch keys its caller had: ZeroTensor, Conjugate,
    Negative, Tracer and others that functorch excludes while a transform's layer runs stayed excluded there, so a
    negative view (``torch._neg_view``) lost its sign under jvp (a loss off by 0.01), and torch's zero tangents
    (ZeroTensor) met there by forward-mode formulas (jvp of jvp) crashed the process."""
    import softmargin.torch._backends as backends

    seen = []
    compute = backends.loss_rows
    full = torch._C._dispatch_keyset_full()

    def spy(*args, **kwargs):  # the excluded keys' functionality bits (a key set's backend bits exclude nothing)
        seen.append((full - (full - torch._C._dispatch_tls_local_exclude_set())).raw_repr())
        return compute(*args, **kwargs)

    monkeypatch.setattr(backends, "loss_rows", spy)
    module, mask, x, y, tangent = _case("plain", "sum")
    f = _callers(module, mask, x, y)["direct"]
    seen.clear()
    f(x)
    (outside,) = seen
    for transform in (lambda: jvp(f, (x,), (tangent,)), lambda: grad(f)(x), lambda: jvp(grad(f), (x,), (tangent,)),
                      lambda: vmap(grad(f))(torch.stack([x, -x])), lambda: jacfwd(jacfwd(f))(x)):  # fmt: skip
        seen.clear()
        transform()
        assert seen and all(keys == outside for keys in seen), (seen, outside)
    monkeypatch.undo()
    negative = torch._neg_view(x)
    torch_loss = lambda a: torch.nn.functional.multilabel_soft_margin_loss(a, y, reduction="sum")
    for ours, reference in zip(jvp(f, (negative,), (tangent,)), jvp(torch_loss, (-x,), (tangent,))):
        _close(ours, reference)


@pytest.mark.parametrize("caller", ["eager", "scripted"])
@pytest.mark.parametrize("transform", ["jacfwd", "hessian"])
def test_transforms_of_an_empty_batch_as_torch(transform, caller):
    """An empty batch's mean is NaN, as torch's; its Jacobian and Hessian are empty. The eager module multiplied the
    empty sum by NaN, which torch's vmap fails on with no batch (jacfwd, hessian: 'select(): index 0 out of range')."""
    module = st.MultiLabelSoftMarginLoss()
    x, y = torch.randn(0, 5, dtype=torch.float64), torch.zeros(0, 5, dtype=torch.float64)
    f = {"eager": module, "scripted": torch.jit.script(module)}[caller]
    apply = {"jacfwd": jacfwd, "hessian": hessian}[transform]
    ours = apply(lambda a: f(a, y))(x)
    reference = apply(lambda a: torch.nn.functional.multilabel_soft_margin_loss(a, y))(x)
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    value, tangent = jvp(lambda a: f(a, y), (x,), (x,))
    assert value.isnan() and tangent.isnan()


@pytest.mark.parametrize("caller", ["eager", "direct"])
@pytest.mark.parametrize(
    "derivative", ["jvp in target of jvp in input", "jvp in input of jvp in target", "grad in weight of jvp in input",
                   "jvp in all three of jvp in input"],
)  # fmt: skip
def test_mixed_second_derivatives_in_target_and_weight_match_torch(derivative, caller):
    """The plain loss's mixed second derivatives through a tangent (input with target or weight), against torch's
    own loss: each was 0 before, silently."""
    gen = torch.Generator().manual_seed(7)
    x, t = (torch.randn(SHAPE, generator=gen, dtype=torch.float64) for _ in range(2))
    y, ty = torch.rand(SHAPE, generator=gen, dtype=torch.float64), torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    w, tw = torch.rand(SHAPE[1], generator=gen, dtype=torch.float64) + 0.2, torch.randn(SHAPE[1], generator=gen, dtype=torch.float64)

    def direct(a, b, c):
        return torch.ops.softmargin.loss_rows(a, b, c, None, None, None, None, None, 0.0, 0.0, 0.0, 0.0, False, True)[0].sum()

    ours = {"eager": lambda a, b, c: st.multilabel_soft_margin_loss(a, b, c, reduction="sum"), "direct": direct}[caller]
    derivatives = {
        "jvp in target of jvp in input":
            lambda f: jvp(lambda b: jvp(lambda a: f(a, b, w), (x,), (t,))[1], (y,), (ty,))[1],
        "jvp in input of jvp in target":
            lambda f: jvp(lambda a: jvp(lambda b: f(a, b, w), (y,), (ty,))[1], (x,), (t,))[1],
        "grad in weight of jvp in input": lambda f: grad(lambda c: jvp(lambda a: f(a, y, c), (x,), (t,))[1])(w),
        "jvp in all three of jvp in input":
            lambda f: jvp(lambda a, b, c: jvp(lambda u: f(u, b, c), (a,), (t,))[1], (x, y, w), (t, ty, tw))[1],
    }  # fmt: skip
    reference = derivatives[derivative](lambda a, b, c: torch.nn.functional.multilabel_soft_margin_loss(a, b, c, reduction="sum"))
    _close(derivatives[derivative](ours), reference)
    assert reference.abs().max() > 1e-2
