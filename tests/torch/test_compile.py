"""softmargin under torch.compile: the same values and gradients as eager and as torch's own loss, zero graph breaks
with fullgraph=True for dense targets with every option, and eager calls still right afterwards.

Inductor compiles take seconds each on two cores: the full backend x mode matrix is marked slow; the everyday run
keeps one inductor case and the cheap backends.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F

import softmargin.torch as st

OPTIONS = {
    "plain": {},
    "weight": {"weight": "class"},
    "pos_weight": {"pos_weight": "class"},
    "mask": {"mask": True},
    "label_smoothing": {"label_smoothing": 0.1},
    "focal": {"gamma_pos": 2.0, "gamma_neg": 2.0},
    "asymmetric": {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.05},
    "everything": {"weight": "class", "pos_weight": "class", "mask": True, "label_smoothing": 0.1, "gamma_neg": 2.0, "clip": 0.05},
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _problem(spec, shape=(8, 5), seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    y = (torch.rand(shape, generator=gen) < 0.4).to(dtype)
    kwargs = {}
    for key, value in spec.items():
        if value == "class":
            kwargs[key] = (torch.rand(shape[-1], generator=gen) + 0.25).to(dtype)
        elif key == "mask":
            kwargs[key] = torch.rand(shape, generator=gen) < 0.7
        else:
            kwargs[key] = value
    return x, y, kwargs


def _value_and_grad(fn, x, y, kwargs):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, y, **kwargs)
    loss.backward()
    return loss.detach(), x.grad


def _assert_matches(ours, theirs, rtol=1e-5, atol=1e-7):
    torch.testing.assert_close(ours[0], theirs[0], rtol=rtol, atol=atol)
    torch.testing.assert_close(ours[1], theirs[1], rtol=rtol, atol=atol)


CHEAP = [
    dict(backend="eager"),
    dict(backend="aot_eager"),
    dict(backend="aot_eager", fullgraph=True),
    dict(backend="aot_eager", dynamic=True),
    dict(backend="aot_eager", fullgraph=True, dynamic=True),
    dict(backend="inductor", fullgraph=True),
]
EXPENSIVE = [
    dict(backend="inductor"),
    dict(backend="inductor", dynamic=True),
    dict(backend="eager", fullgraph=True),
    dict(backend="inductor", mode="max-autotune-no-cudagraphs"),
]


def _compile_cases():
    return [pytest.param(c, id="-".join(f"{k}={v}" for k, v in c.items())) for c in CHEAP] + [
        pytest.param(c, id="-".join(f"{k}={v}" for k, v in c.items()), marks=pytest.mark.slow) for c in EXPENSIVE
    ]


@pytest.mark.parametrize("compile_kwargs", _compile_cases())
def test_functional_matches_torch(compile_kwargs):
    x, y, kwargs = _problem({"weight": "class"})
    compiled = torch.compile(st.multilabel_soft_margin_loss, **compile_kwargs)
    _assert_matches(_value_and_grad(compiled, x, y, kwargs), _value_and_grad(F.multilabel_soft_margin_loss, x, y, kwargs))
    # a second shape: a recompile (or the dynamic graph) must be right too
    x2, y2, kwargs2 = _problem({"weight": "class"}, shape=(13, 5), seed=1)
    _assert_matches(_value_and_grad(compiled, x2, y2, kwargs2), _value_and_grad(F.multilabel_soft_margin_loss, x2, y2, kwargs2))
    # and eager afterwards
    _assert_matches(_value_and_grad(st.multilabel_soft_margin_loss, x, y, kwargs), _value_and_grad(F.multilabel_soft_margin_loss, x, y, kwargs))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_matches_torch(reduction):
    x, y, _ = _problem({})
    weight = torch.rand(5) + 0.5
    ours = torch.compile(st.MultiLabelSoftMarginLoss(weight=weight, reduction=reduction), backend="aot_eager", fullgraph=True)
    theirs = torch.nn.MultiLabelSoftMarginLoss(weight=weight, reduction=reduction)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    lo, lt = ours(xo, y), theirs(xt, y)
    torch.testing.assert_close(lo, lt, rtol=1e-5, atol=1e-7)
    lo.sum().backward()
    lt.sum().backward()
    torch.testing.assert_close(xo.grad, xt.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_fullgraph_matches_eager(option):
    x, y, kwargs = _problem(OPTIONS[option])
    compiled = torch.compile(st.multilabel_soft_margin_loss, backend="aot_eager", fullgraph=True)
    _assert_matches(_value_and_grad(compiled, x, y, kwargs), _value_and_grad(st.multilabel_soft_margin_loss, x, y, kwargs))


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_fullgraph_dynamic_matches_eager(option):
    """dynamic=True makes the option floats symbolic too: resolving them once asked hasattr of a symbolic float,
    which dynamo cannot trace, so fullgraph=True failed even for the plain call."""
    compiled = torch.compile(st.multilabel_soft_margin_loss, backend="aot_eager", fullgraph=True, dynamic=True)
    for shape, seed in (((8, 5), 0), ((13, 7), 1)):
        x, y, kwargs = _problem(OPTIONS[option], shape=shape, seed=seed)
        _assert_matches(_value_and_grad(compiled, x, y, kwargs), _value_and_grad(st.multilabel_soft_margin_loss, x, y, kwargs))


def test_options_as_changing_python_floats_fullgraph():
    """An option passed as a Python float that changes between calls: dynamo makes it symbolic at the second value."""

    def loss(x, y, smoothing, gamma, clip):
        return st.multilabel_soft_margin_loss(x, y, label_smoothing=smoothing, gamma_neg=gamma, clip=clip)

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    x, y, _ = _problem({})
    for values in ((0.1, 1.0, 0.05), (0.2, 2.0, 0.1), (0.3, 3.5, 0.02)):
        _assert_matches(_value_and_grad(lambda x, y: compiled(x, y, *values), x, y, {}),
                        _value_and_grad(lambda x, y: loss(x, y, *values), x, y, {}))  # fmt: skip


def test_module_with_a_weight_fullgraph_dynamic():
    weight = torch.rand(5) + 0.5
    compiled = torch.compile(st.MultiLabelSoftMarginLoss(weight=weight), backend="aot_eager", fullgraph=True, dynamic=True)
    for shape in ((8, 5), (3, 5)):
        x, y, _ = _problem({}, shape=shape)
        torch.testing.assert_close(compiled(x, y), F.multilabel_soft_margin_loss(x, y, weight=weight), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_zero_graph_breaks_for_dense_targets(option):
    x, y, kwargs = _problem(OPTIONS[option])
    explanation = torch._dynamo.explain(st.multilabel_soft_margin_loss)(x.requires_grad_(), y, **kwargs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_every_option_under_inductor():
    """One inductor compile of a function computing every option's loss, against eager."""
    specs = {name: _problem(spec, seed=i) for i, (name, spec) in enumerate(OPTIONS.items())}

    def all_losses(xs):
        return [st.multilabel_soft_margin_loss(xs[name], specs[name][1], **specs[name][2]) for name in specs]

    xs = {name: p[0].clone().requires_grad_() for name, p in specs.items()}
    compiled = torch.compile(all_losses, backend="inductor", fullgraph=True)(xs)
    torch.stack(compiled).sum().backward()
    for name, (x, y, kwargs) in specs.items():
        expected = _value_and_grad(st.multilabel_soft_margin_loss, x, y, kwargs)
        _assert_matches((compiled[specs_index(specs, name)].detach(), xs[name].grad), expected)


def specs_index(specs, name):
    return list(specs).index(name)


@pytest.mark.parametrize("target_kind", ["soft", "bool", "uint8"])
def test_target_dtypes(target_kind):
    x, _, _ = _problem({})
    gen = torch.Generator().manual_seed(3)
    soft = torch.rand(x.shape, generator=gen)
    y = {"soft": soft, "bool": soft < 0.5, "uint8": (soft < 0.5).to(torch.uint8)}[target_kind]
    compiled = torch.compile(st.multilabel_soft_margin_loss, backend="aot_eager", fullgraph=True)
    ours = _value_and_grad(compiled, x, y, {})
    theirs = _value_and_grad(F.multilabel_soft_margin_loss, x, y.float(), {})
    _assert_matches(ours, theirs)


@pytest.mark.parametrize("form", ["lists", "csr"])
def test_sparse_targets(form):
    """Sparse targets are normalised on the host (a graph break), then the operator runs: values right."""
    x, y, _ = _problem({})
    target = [row.nonzero().flatten().tolist() for row in y] if form == "lists" else y.to_sparse_csr()
    compiled = torch.compile(st.multilabel_soft_margin_loss, backend="aot_eager")
    _assert_matches(_value_and_grad(compiled, x, target, {}), _value_and_grad(F.multilabel_soft_margin_loss, x, y, {}))


def test_linear_head():
    gen = torch.Generator().manual_seed(0)
    head = st.LinearMultiLabelSoftMarginLoss(6, 5)
    hidden = torch.randn(8, 6, generator=gen)
    y = (torch.rand(8, 5, generator=gen) < 0.4).float()
    expected = F.multilabel_soft_margin_loss(F.linear(hidden, head.weight, head.bias), y)
    compiled = torch.compile(head, backend="aot_eager")
    loss = compiled(hidden, y)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    loss.backward()
    reference = head.weight.detach().clone().requires_grad_()
    F.multilabel_soft_margin_loss(F.linear(hidden, reference, head.bias.detach()), y).backward()
    torch.testing.assert_close(head.weight.grad, reference.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(head(hidden, y), expected, rtol=1e-5, atol=1e-7)  # eager afterwards


def test_a_func_transform_inside_compile_gives_the_eager_gradient():
    # torch traces torch.func.grad into the operator's Autograd kernel; torch's own kernel for a custom operator
    # (register_autograd) refused it ("... must override the setup_context staticmethod"); the operator's own kernel
    # takes it (more transforms, and forward mode, in test_operator_autodiff.py)
    from torch.func import grad

    x = torch.randn(4, 5, dtype=torch.float64)
    y = (torch.rand(4, 5) < 0.5).double()
    expected = grad(lambda a: F.multilabel_soft_margin_loss(a, y))(x)
    compiled = torch.compile(grad(lambda a: st.multilabel_soft_margin_loss(a, y)), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=1e-12, atol=1e-15)
    # the same gradient taken with torch.autograd inside the compiled function
    def autograd_grad(a):
        a = a.detach().requires_grad_()
        return torch.autograd.grad(st.multilabel_soft_margin_loss(a, y), a)[0]

    torch.testing.assert_close(torch.compile(autograd_grad, backend="aot_eager")(x), expected, rtol=1e-12, atol=1e-15)


def _trajectory(loss_fn, backend, steps=50):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(32, 12, generator=gen)
    labels = (data[:, :6] + 0.3 * torch.randn(32, 6, generator=gen) > 0).float()

    def step(x, y):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step = torch.compile(step, backend=backend)
    return torch.stack([step(data, labels) for _ in range(steps)])


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_training_step_trajectory_equals_torch(backend):
    ours = _trajectory(st.MultiLabelSoftMarginLoss(), backend)
    theirs = _trajectory(torch.nn.MultiLabelSoftMarginLoss(), backend)
    assert ours[-1] < 0.7 * ours[0]  # it trained
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_value_check_still_raises_under_compile():
    x, y, _ = _problem({})
    compiled = torch.compile(st.multilabel_soft_margin_loss, backend="aot_eager", fullgraph=True)
    compiled(x, y)
    with pytest.raises(ValueError, match=r"target has 1 value outside \[0, 1\]"):
        compiled(x, torch.where(torch.arange(40).reshape(8, 5) == 7, 2.0, y))
