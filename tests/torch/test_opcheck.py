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
