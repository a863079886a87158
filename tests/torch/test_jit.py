"""TorchScript: ``torch.jit.script`` of the loss module, alone or inside a scripted model, and ``torch.jit.trace`` of
a model that ends in it give eager softmargin's values and gradients bitwise and torch's within the float tolerance,
save and load with ``torch.jit.save``/``load``, and refuse what only eager calls take with a message that says so.

Before, scripting failed with ``ValueError: Unknown type annotation: 'str'``, and a trace recorded the eager path's
``autograd.Function`` as a Python call: ``torch.jit.save`` refused it, and the fast path's checks were frozen in, so a
non-contiguous input or a float64 target later gave a wrong loss (0.7838 for torch's 0.8075; 0.6814 for 0.8176).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from helpers import OPTION_CASES, RTOL, option_operands

import softmargin.torch as st

DTYPES = [torch.float32, torch.float64]
_OPTION_NAMES = ("label_smoothing", "gamma_pos", "gamma_neg", "clip")


def _batch(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    y = (torch.rand(shape, generator=gen) < 0.4).to(dtype)
    return x, y


def _loss_and_grad(loss_fn, x, y, *extra):
    """The loss and d(sum of loss * fixed upstream weights)/dx: the upstream gradient is not all ones, so the
    reduction's backward is exercised (for ``"none"``, one weight per sample)."""
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(x, y, *extra)
    upstream = torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    (grad,) = torch.autograd.grad((loss * upstream).sum(), x)
    return loss.detach(), grad


def _module(case, dtype, reduction, num_rows=6, num_classes=5):
    """A loss module for an ``OPTION_CASES`` entry (weight and pos_weight as buffers) and its forward's mask."""
    operands = option_operands(OPTION_CASES[case], dtype, num_rows, num_classes)
    options = {name: operands[name] for name in _OPTION_NAMES if name in operands}
    module = st.MultiLabelSoftMarginLoss(
        weight=operands.get("weight"), pos_weight=operands.get("pos_weight"), reduction=reduction, **options
    )
    return module, operands.get("mask")


def _torch_applies(case):
    """Whether torch's own loss computes the case (no pos_weight, mask or option)."""
    return set(OPTION_CASES[case]) <= {"weight"}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_scripted_module_gives_eager_results_bitwise_and_torchs(case, dtype, reduction):
    module, mask = _module(case, dtype, reduction)
    scripted = torch.jit.script(module)
    x, y = _batch((6, 5), dtype)
    extra = () if mask is None else (mask,)
    loss, grad = _loss_and_grad(scripted, x, y, *extra)
    eager_loss, eager_grad = _loss_and_grad(module, x, y, *extra)
    assert loss.dtype == eager_loss.dtype == dtype
    assert torch.equal(loss, eager_loss)
    assert torch.equal(grad, eager_grad)
    if _torch_applies(case):
        reference = torch.nn.MultiLabelSoftMarginLoss(weight=module.weight, reduction=reduction)
        torch_loss, torch_grad = _loss_and_grad(reference, x, y)
        rtol = RTOL[str(dtype).removeprefix("torch.")]
        torch.testing.assert_close(loss, torch_loss, rtol=rtol, atol=0.0)
        torch.testing.assert_close(grad, torch_grad, rtol=rtol, atol=1e-12 if dtype == torch.float64 else 1e-7)


class _Model(torch.nn.Module):
    """A training module whose loss is a submodule: scripted whole."""

    def __init__(self, loss):
        super().__init__()
        self.linear = torch.nn.Linear(4, 5)
        self.loss = loss

    def forward(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(self.linear(features), target)


def test_a_model_scripted_whole_with_the_loss_as_a_submodule():
    torch.manual_seed(0)
    weight = torch.tensor([0.5, 2.0, 1.5, 1.0, 0.25])
    model = _Model(st.MultiLabelSoftMarginLoss(weight=weight))
    reference = _Model(torch.nn.MultiLabelSoftMarginLoss(weight=weight))
    reference.linear.load_state_dict(model.linear.state_dict())
    scripted = torch.jit.script(model)
    features = torch.randn(7, 4)
    _, target = _batch((7, 5), torch.float32, seed=1)
    results = []
    for candidate in (scripted, model, reference):
        candidate.zero_grad()
        loss = candidate(features, target)
        loss.backward()
        results.append((loss.detach(), candidate.linear.weight.grad.clone(), candidate.linear.bias.grad.clone()))
    for got, eager, torchs in zip(*results, strict=True):
        assert torch.equal(got, eager)
        torch.testing.assert_close(got, torchs, rtol=1e-6, atol=1e-7)


def test_a_scripted_module_saves_and_loads(tmp_path):
    """torch.jit.save / torch.jit.load in the same process (the operator is registered by importing
    softmargin.torch); the loaded module takes another batch size and more dimensions."""
    module = st.MultiLabelSoftMarginLoss(
        weight=torch.tensor([0.5, 2.0, 0.0, 1.0, 0.25], dtype=torch.float64),
        pos_weight=torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0], dtype=torch.float64),
        reduction="sum", label_smoothing=0.1, gamma_neg=2.0, clip=0.05,
    )  # fmt: skip
    path = tmp_path / "loss.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    loaded = torch.jit.load(str(path))
    assert "softmargin::loss_rows" in str(loaded.inlined_graph)
    for shape in ((3, 5), (2, 4, 5)):
        x, y = _batch(shape, torch.float64, seed=2)
        mask = torch.rand(shape, generator=torch.Generator().manual_seed(3)) < 0.7
        loss, grad = _loss_and_grad(loaded, x, y, mask)
        eager_loss, eager_grad = _loss_and_grad(module, x, y, mask)
        assert torch.equal(loss, eager_loss)
        assert torch.equal(grad, eager_grad)


def test_a_scripted_module_sees_its_weight_updated_in_place_and_moves_to_another_dtype():
    weight = torch.tensor([0.5, 2.0, 1.5, 1.0, 0.25])
    module = st.MultiLabelSoftMarginLoss(weight=weight.clone())
    scripted = torch.jit.script(module)
    x, y = _batch((6, 5), torch.float32)
    with torch.no_grad():
        scripted.weight.mul_(3.0)  # the buffer is shared with the eager module, as torch's
    assert torch.equal(module.weight, weight * 3.0)
    expected = torch.nn.MultiLabelSoftMarginLoss(weight=weight * 3.0)(x, y)
    torch.testing.assert_close(scripted(x, y), expected, rtol=1e-6, atol=0.0)
    assert torch.equal(scripted(x, y), module(x, y))
    scripted.to(torch.float64)
    assert scripted.weight.dtype == torch.float64
    x64, y64 = x.double(), y.double()
    loss = scripted(x64, y64)
    assert loss.dtype == torch.float64
    expected = torch.nn.MultiLabelSoftMarginLoss(weight=weight.double() * 3.0)(x64, y64)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0.0)


def test_the_options_a_module_had_when_scripted_are_the_scripted_modules():
    """A scripted module keeps the options it was scripted with (as a scripted torch loss keeps its reduction); an
    assignment to the eager module afterwards changes the eager module only."""
    module = st.MultiLabelSoftMarginLoss(label_smoothing=0.2)
    scripted = torch.jit.script(module)
    module.label_smoothing = 0.0
    x, y = _batch((6, 5), torch.float64)
    assert torch.equal(scripted(x, y), st.MultiLabelSoftMarginLoss(label_smoothing=0.2)(x, y))
    assert not torch.equal(scripted(x, y), module(x, y))


@pytest.mark.parametrize("option, value", [("label_smoothing", 0.2), ("gamma_pos", 1.0), ("gamma_neg", 3.0), ("clip", 0.05)])
def test_an_option_assigned_to_the_scripted_module_takes_effect_there(option, value, tmp_path):
    """``scripted.gamma_neg = 3.0`` changes what the scripted module computes, as the assignment does on the eager
    module and as ``scripted.reduction = "sum"`` does, also on a module saved and loaded; a bad value is refused at the
    next call, naming the option. (Before, the options reached the compiled code as one tuple attribute: the
    assignment set a Python attribute that read back 3.0 while the loss stayed the plain one, silently.)"""
    x, y = _batch((6, 5), torch.float64)
    weight = torch.tensor([0.5, 2.0, 1.5, 1.0, 0.25], dtype=torch.float64)
    expected = st.MultiLabelSoftMarginLoss(weight=weight, **{option: value})
    scripted = torch.jit.script(st.MultiLabelSoftMarginLoss(weight=weight))
    torch.jit.save(scripted, str(tmp_path / "loss.pt"))
    for candidate in (scripted, torch.jit.load(str(tmp_path / "loss.pt"))):
        setattr(candidate, option, value)
        assert getattr(candidate, option) == value
        loss, grad = _loss_and_grad(candidate, x, y)
        expected_loss, expected_grad = _loss_and_grad(expected, x, y)
        assert torch.equal(loss, expected_loss)
        assert torch.equal(grad, expected_grad)
        assert not torch.equal(loss, _loss_and_grad(st.MultiLabelSoftMarginLoss(weight=weight), x, y)[0])
        setattr(candidate, option, 1.5 if option in ("label_smoothing", "clip") else -1.0)
        with _raises(rf"ValueError: {option}=(1.5|-1.0)"):
            candidate(x, y)


def test_options_assigned_before_scripting_or_pickled_before_this_change_are_scripted():
    """An option assigned to the module (``loss_fn.gamma_neg = 3.0``, ``loss_fn.options = ...``) is what the scripted
    module computes; so is a module unpickled from before scripting was supported (its state holds ``_options``
    alone) or from when the scripted module read the options as one tuple, ``_option_values``."""
    x, y = _batch((6, 5), torch.float64)
    expected = st.MultiLabelSoftMarginLoss(gamma_neg=3.0, clip=0.05)
    assigned = st.MultiLabelSoftMarginLoss(gamma_neg=1.0)
    assigned.gamma_neg = 3.0
    assigned.clip = 0.05
    replaced = st.MultiLabelSoftMarginLoss()
    replaced.options = st.LossOptions(gamma_neg=3.0, clip=0.05)
    unpickled = []
    for stale in ({}, {"_option_values": (0.0, 0.0, 3.0, 0.05)}):
        state = {key: value for key, value in expected.__getstate__().items() if key not in _OPTION_NAMES}
        module = st.MultiLabelSoftMarginLoss.__new__(st.MultiLabelSoftMarginLoss)
        module.__setstate__({**state, **stale})
        assert "_option_values" not in vars(module)
        unpickled.append(module)
    for module in (assigned, replaced, *unpickled):
        assert torch.equal(torch.jit.script(module)(x, y), expected(x, y))


def _raises(match):
    """A scripted call's error: its own raise arrives as torch.jit.Error, the operator's as a RuntimeError that
    carries the Python error's type and message."""
    return pytest.raises((RuntimeError, torch.jit.Error), match=match)


def test_a_scripted_module_refuses_what_needs_python_and_checks_as_eager():
    scripted = torch.jit.script(st.MultiLabelSoftMarginLoss())
    x, y = _batch((4, 3), torch.float32)
    with _raises(r"TypeError: target: expected a dense tensor.*torch.jit.script.*sparse target or label lists"):
        scripted(x, y.to_sparse_csr())
    with _raises(r"TypeError: target: expected a dense tensor"):
        scripted(x, [[0], [1, 2], [2], [0]])
    # the operator's own checks, with the public API's messages
    with _raises(r"ValueError: target.shape == \(4, 2\), expected input.shape == \(4, 3\)"):
        scripted(x, y[:, :2])
    with _raises(r"ValueError: target has 1 value outside \[0, 1\]"):
        scripted(x, torch.where(torch.arange(12).reshape(4, 3) == 5, 2.0, y))
    with _raises(r"TypeError: input has dtype torch.int64: expected a floating-point dtype"):
        scripted(x.long(), y)
    with _raises(r"ValueError: weight has 1 value outside the finite range \[0, inf\)"):
        torch.jit.script(st.MultiLabelSoftMarginLoss(weight=torch.tensor([1.0, -1.0, 1.0])))(x, y)
    unchecked = torch.jit.script(st.MultiLabelSoftMarginLoss(weight=torch.tensor([1.0, -1.0, 1.0]), validate=False))
    assert torch.isfinite(unchecked(x, y))
    scripted.reduction = "average"
    with _raises(r"ValueError: reduction='average' is not valid: expected one of 'none', 'mean', 'sum'"):
        scripted(x, y)


@pytest.mark.parametrize("case", ["plain", "class weight", "everything"])
def test_traced_module_keeps_shapes_and_layouts_free_and_saves(case, tmp_path):
    """A traced module records one call of the TorchScript function: another batch size, a non-contiguous input or
    a float64 target give the eager results (before, the fast path's checks were frozen into the trace: wrong losses),
    and the trace saves and loads (before, torch.jit.save refused the recorded Python call)."""
    module, mask = _module(case, torch.float32, "mean")
    extra = () if mask is None else (mask,)
    x, y = _batch((6, 5), torch.float32)
    traced = torch.jit.trace(module, (x, y, *extra))
    assert "^" not in str(traced.graph)  # no Python call (PythonOp) recorded
    torch.jit.save(traced, str(tmp_path / "traced.pt"))
    loaded = torch.jit.load(str(tmp_path / "traced.pt"))
    gen = torch.Generator().manual_seed(4)
    calls = {
        "same": (x, y),
        "non-contiguous input": (torch.randn(5, 6, generator=gen).t(), y),
        "float64 target": (x, y.double()),
    }
    if mask is None:
        calls["another batch size"] = _batch((9, 5), torch.float32, seed=5)
        calls["3-d"] = _batch((2, 3, 5), torch.float32, seed=6)
    for what, (xi, yi) in calls.items():
        expected = _loss_and_grad(module, xi, yi, *extra)
        for candidate in (traced, loaded):
            got = _loss_and_grad(candidate, xi, yi, *extra)
            assert torch.equal(got[0], expected[0]), what
            assert torch.equal(got[1], expected[1]), what
        if _torch_applies(case):
            torch_loss = torch.nn.MultiLabelSoftMarginLoss(weight=module.weight)(xi, yi)
            torch.testing.assert_close(expected[0], torch_loss.to(expected[0].dtype), rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("kwargs", [{}, {"reduction": "sum", "label_smoothing": 0.1}], ids=["plain", "options"])
def test_traced_functional_call(kwargs, tmp_path):
    def loss_fn(x, y, weight):
        return st.multilabel_soft_margin_loss(x, y, weight, **kwargs)

    weight = torch.tensor([0.5, 2.0, 1.5, 1.0, 0.25])
    x, y = _batch((6, 5), torch.float32)
    traced = torch.jit.trace(loss_fn, (x, y, weight))
    torch.jit.save(traced, str(tmp_path / "traced.pt"))
    loaded = torch.jit.load(str(tmp_path / "traced.pt"))
    x2 = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)).t()  # another batch size, not contiguous
    y2 = _batch((3, 5), torch.float32, seed=2)[1]
    for candidate in (traced, loaded):
        assert torch.equal(candidate(x2, y2, weight), loss_fn(x2, y2, weight))


def test_the_functional_in_scripted_code_is_refused_with_what_to_use():
    """TorchScript compiles no keyword-only arguments, so the functional cannot be scripted; its error shows the
    source line that says what scripted code calls instead (before, it pointed at the argument alone)."""

    def loss_fn(x, y):
        return st.multilabel_soft_margin_loss(x, y)

    refused = pytest.raises(torch.jit.frontend.NotSupportedError, match=r"(?s)keyword-only.*MultiLabelSoftMarginLoss submodule")
    with refused:
        torch.jit.script(loss_fn)


def test_the_fused_linear_head_is_refused_with_a_reason():
    with pytest.raises(torch.jit.frontend.NotSupportedError, match=r"(?s)keyword-only.*the head runs eagerly"):
        torch.jit.script(st.LinearMultiLabelSoftMarginLoss(4, 3))
