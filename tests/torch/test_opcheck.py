"""torch.library.opcheck on every registered operator, over a representative set of sample inputs; and the eager
path against the operator, bitwise."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from helpers import passthrough_mode

import softmargin.torch as st

_GEN = torch.Generator().manual_seed(0)


def _sample(shape=(6, 5), dtype=torch.float32, target="same", weight=None, pos_weight=None, mask=None,
            sparse=False, options=(0.0, 0.0, 0.0, 0.0), need_grad=True, check=True, requires_grad=None):
    x = (torch.randn(shape, generator=_GEN) * 3).to(dtype).requires_grad_(need_grad if requires_grad is None else requires_grad)
    hard = torch.rand(shape, generator=_GEN) < 0.4
    y = {"same": hard.to(dtype), "bool": hard, "uint8": hard.to(torch.uint8), "soft": torch.rand(shape, generator=_GEN).to(dtype)}[target]
    rows = {"class": (shape[-1],), "full": shape}
    w = None if weight is None else torch.rand(rows[weight], generator=_GEN).to(dtype) + 0.5
    pw = None if pos_weight is None else torch.rand(rows[pos_weight], generator=_GEN).to(dtype) + 0.5
    m = None if mask is None else torch.rand(rows[mask], generator=_GEN) < 0.7
    indptr = indices = None
    if sparse:
        flat = hard.reshape(-1, shape[-1])
        indptr = torch.cat([torch.zeros(1, dtype=torch.int64), flat.sum(1).cumsum(0)])
        indices = flat.nonzero()[:, 1].contiguous()
        y = None
    return (x, y, w, pw, m, indptr, indices, None, *options, need_grad, check)


SAMPLES = {
    "float32": _sample(),
    "float64 weight": _sample(dtype=torch.float64, weight="class"),
    "bfloat16": _sample(dtype=torch.bfloat16, weight="class"),
    "float16 soft": _sample(dtype=torch.float16, target="soft"),
    "3-d": _sample(shape=(2, 3, 4), weight="full"),
    "bool target": _sample(target="bool"),
    "uint8 target": _sample(target="uint8", weight="class"),
    "options": _sample(pos_weight="class", mask="full", options=(0.1, 1.0, 4.0, 0.05)),
    "mask row": _sample(mask="class", options=(0.0, 2.0, 2.0, 0.0)),
    "no grad": _sample(need_grad=False, weight="class"),
    # the forward skipped the gradient that a backward then needs: recomputed through the operator (under tracing
    # the kernels' data pointers are not there: aot_dispatch failed with "Cannot access data pointer of Tensor")
    "grad recomputed": _sample(dtype=torch.bfloat16, target="bool", need_grad=False, requires_grad=True),
    "grad recomputed, sparse": _sample(sparse=True, weight="class", need_grad=False, requires_grad=True),
    "unchecked": _sample(check=False),
    "sparse": _sample(sparse=True),
    "empty batch": _sample(shape=(0, 5)),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_opcheck(name):
    torch.library.opcheck(torch.ops.softmargin.loss_rows.default, SAMPLES[name])




@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    "kwargs", [{}, {"weight": "w"}, {"pos_weight": "w", "gamma_neg": 2.0, "label_smoothing": 0.1}, {"mask": "m"}]
)
def test_eager_path_and_operator_agree_bitwise(dtype, kwargs, reduction):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(33, 17, generator=gen) * 4).to(dtype)
    y = (torch.rand(33, 17, generator=gen) < 0.4).to(dtype)
    operands = {"w": lambda: torch.rand(17, generator=gen).to(dtype) + 0.5, "m": lambda: torch.rand(33, 17, generator=gen) < 0.3}
    kwargs = {k: (operands[v]() if v in operands else v) for k, v in kwargs.items()}
    kwargs["reduction"] = reduction
    results = []
    for through_operator in (False, True):
        xi = x.clone().requires_grad_()
        if through_operator:
            with passthrough_mode() as mode:
                loss = st.multilabel_soft_margin_loss(xi, y, **kwargs)
                (3.0 * loss).sum().backward()
            assert "softmargin.loss_rows.default" in mode.seen
        else:
            loss = st.multilabel_soft_margin_loss(xi, y, **kwargs)
            (3.0 * loss).sum().backward()
        results.append((loss.detach(), xi.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("name", ["float32", "float64 weight", "options", "sparse"])
def test_triton_operator_is_the_operator(name, monkeypatch):
    """``softmargin::loss_rows_triton`` (the ``triton_op`` that CUDA tensors take under torch.compile) gives bitwise
    the results of ``loss_rows`` on the same backend, and its autograd registration passes opcheck. Here the kernel
    runs through Triton's interpreter on CPU tensors (its fake implementation launches the kernel through
    ``wrap_triton``, which the interpreter cannot trace: the fake and compile checks run on a GPU, in test_gpu.py)."""
    pytest.importorskip("triton")
    from helpers import use_backend

    from softmargin.torch import _ops

    use_backend("triton", monkeypatch)
    op = _ops.ensure_triton_op()
    args = SAMPLES[name]
    triton_out = op(*args)
    plain_out = torch.ops.softmargin.loss_rows(*args)
    for got, expected in zip(triton_out, plain_out, strict=True):
        assert torch.equal(got, expected)
    if args[0].requires_grad:
        grads = [torch.autograd.grad(out[0].sum(), args[0])[0] for out in (op(*args), torch.ops.softmargin.loss_rows(*args))]
        assert torch.equal(grads[0], grads[1])
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration"))


def test_triton_operator_vmap_rule(monkeypatch):
    """The Triton operator's vmap rule (the batch folded into the rows), through the interpreter on CPU tensors."""
    pytest.importorskip("triton")
    from helpers import use_backend

    from softmargin.torch import _ops

    use_backend("triton", monkeypatch)
    op = _ops.ensure_triton_op()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    y = (torch.rand(3, 4, 6, generator=gen) < 0.4).double()

    def per_sample(xb, yb):
        return op(xb, yb, None, None, None, None, None, None, 0.0, 0.0, 0.0, 0.0, True, False)[0]

    batched = torch.func.vmap(per_sample)(x, y)
    looped = torch.stack([per_sample(x[i], y[i]) for i in range(3)])
    assert torch.equal(batched, looped)


def _op_call(x, y, w, pw=None, mask=None, options=(0.0, 0.0, 0.0, 0.0), csr=(None, None, None)):
    return torch.ops.softmargin.loss_rows(x, y, w, pw, mask, *csr, *options, True, True)


@pytest.mark.parametrize("options", [
    dict(options=(0.1, 0.0, 0.0, 0.0)), dict(options=(0.0, 1.0, 2.0, 0.05)), dict(pw="yes"), dict(mask="yes"),
])  # fmt: skip
@pytest.mark.parametrize("name", ["target", "weight"])
def test_operator_refuses_a_target_or_weight_it_would_differentiate_wrongly(name, options):
    """Called directly, the operator differentiated target and weight with the plain loss's formulas whatever the
    options: with label smoothing 0.1 the target's gradient was off by 0.043, the weight's by 0.022 (float64, against
    autograd through the smoothed BCE). Refused by name, as the public API refuses it."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    operands = {"target": torch.rand(4, 3, generator=gen, dtype=torch.float64), "weight": torch.rand(3, generator=gen, dtype=torch.float64) + 0.5}
    operands[name].requires_grad_()
    pw = torch.full((3,), 2.0, dtype=torch.float64) if "pw" in options else None
    mask = torch.ones(4, 3, dtype=torch.bool) if "mask" in options else None
    call = lambda: _op_call(x, operands["target"], operands["weight"], pw, mask, options.get("options", (0.0,) * 4))
    with pytest.raises(ValueError, match=rf"{name} requires grad, but torch.ops.softmargin.loss_rows differentiates {name} only for the plain loss"):
        call()
    with torch.no_grad():  # nothing differentiated: nothing to refuse
        call()
    with pytest.raises(ValueError, match=rf"{name} requires grad, but with pos_weight, mask"):  # the public API's rule
        st.multilabel_soft_margin_loss(x, operands["target"], operands["weight"], pos_weight=pw, mask=mask,
                                       options=st.LossOptions(*options.get("options", (0.0,) * 4)))  # fmt: skip


def test_operator_refuses_a_pos_weight_or_sparse_values_requiring_grad():
    """Their gradients came back None, silently."""
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"pos_weight requires grad, but torch.ops.softmargin.loss_rows never differentiates pos_weight"):
        _op_call(x, y, None, torch.ones(3, dtype=torch.float64, requires_grad=True))
    csr = (torch.tensor([0, 1, 2]), torch.tensor([0, 2]), torch.ones(2, dtype=torch.float64, requires_grad=True))
    with pytest.raises(ValueError, match=r"values requires grad, but torch.ops.softmargin.loss_rows never differentiates a sparse target"):
        _op_call(x, None, None, csr=csr)


def test_operator_still_differentiates_the_plain_losss_target_and_weight():
    """Without options the operator's gradients w.r.t. target and weight are torch's (per sample, reduction none)."""
    gen = torch.Generator().manual_seed(4)
    tensors = [torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.rand(5, 3, generator=gen, dtype=torch.float64),
               torch.rand(3, generator=gen, dtype=torch.float64) + 0.5]  # fmt: skip
    ours = [t.clone().requires_grad_() for t in tensors]
    theirs = [t.clone().requires_grad_() for t in tensors]
    for got, expected in zip(
        torch.autograd.grad(_op_call(*ours)[0].sum(), ours),
        torch.autograd.grad(torch.nn.functional.multilabel_soft_margin_loss(*theirs, reduction="none").sum(), theirs),
    ):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("operands, error, message", [
    ({"y": torch.ones(4, 2)}, ValueError, r"target.shape == \(4, 2\), expected input.shape == \(4, 3\): targets are never broadcast"),
    ({"y": torch.ones(3)}, ValueError, r"target.shape == \(3,\), expected input.shape == \(4, 3\)"),
    ({"x": torch.zeros(4, 3, dtype=torch.int64)}, TypeError, r"input has dtype torch.int64: expected a floating-point dtype"),
    ({"x": torch.tensor(0.5), "y": torch.tensor(1.0)}, ValueError, r"input is a 0-d scalar"),
    ({"y": torch.ones(4, 3, dtype=torch.complex64)}, TypeError, r"target has dtype torch.complex64: expected a real"),
    ({"w": torch.ones(2)}, ValueError, r"weight.shape == \(2,\) does not broadcast to input.shape == \(4, 3\)"),
    ({"pw": torch.ones(5)}, ValueError, r"pos_weight.shape == \(5,\) does not broadcast"),
    ({"mask": torch.ones(4, 3)}, TypeError, r"mask has dtype torch.float32: expected bool"),
], ids=["narrow target", "broadcast target", "int input", "0-d input", "complex target", "weight", "pos_weight", "float mask"])  # fmt: skip
def test_operator_checks_its_operands_dtypes_and_shapes(operands, error, message):
    """Called directly, without the public API in front, the operator read a (4, 2) target for (4, 3) logits past its
    end (a finite loss from whatever followed it in memory), broadcast a (3,) target, took integer logits, and failed
    on the rest with torch's messages from deep inside (a 0-d input: IndexError, a complex target: '"aminmax_cpu" not
    implemented'). Checked as the public API checks them."""
    args = {"x": torch.randn(4, 3), "y": torch.ones(4, 3), "w": None, "pw": None, "mask": None, **operands}
    with pytest.raises(error, match=message):
        _op_call(args["x"], args["y"], args["w"], args["pw"], args["mask"])
    if operands.keys() <= {"y", "w", "pw", "mask"}:  # the public API, for the same operands, says the same
        with pytest.raises(error, match=message):
            st.multilabel_soft_margin_loss(args["x"], args["y"], args["w"], pos_weight=args["pw"], mask=args["mask"])


def test_triton_operator_forward_mode_and_func_grad(monkeypatch):
    """The Triton operator has the operator's own Autograd kernel too: forward-mode tangents and torch.func.grad of a
    direct call, equal to ``loss_rows``'s (through the interpreter on CPU tensors)."""
    pytest.importorskip("triton")
    from helpers import use_backend

    from softmargin.torch import _ops

    use_backend("triton", monkeypatch)
    op = _ops.ensure_triton_op()
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    y = (torch.rand(4, 6, generator=gen) < 0.4).double()
    tangent = torch.randn(4, 6, generator=gen, dtype=torch.float64)

    def per_sample(operator):
        return lambda a: operator(a, y, None, None, None, None, None, None, 0.1, 0.0, 2.0, 0.05, False, False)[0]

    triton_jvp = torch.func.jvp(per_sample(op), (x,), (tangent,))
    plain_jvp = torch.func.jvp(per_sample(torch.ops.softmargin.loss_rows), (x,), (tangent,))
    torch.testing.assert_close(triton_jvp, plain_jvp, rtol=1e-12, atol=1e-14)
    assert triton_jvp[1].abs().max() > 1e-3
    grads = [torch.func.grad(lambda a, f=f: per_sample(f)(a).sum())(x) for f in (op, torch.ops.softmargin.loss_rows)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)
