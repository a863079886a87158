"""FakeTensorMode, the meta device, wrapper subclasses (TwoTensor), DTensor and __torch_function__ overrides:
right shapes and dtypes or right values, never a crash, and eager still right afterwards."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import softmargin.torch as st


def _eager_still_right():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, generator=gen, requires_grad=True)
    y = (torch.rand(6, 4, generator=gen) < 0.5).float()
    w = torch.rand(4, generator=gen) + 0.5
    loss = st.multilabel_soft_margin_loss(x, y, w)
    loss.backward()
    reference = x.detach().clone().requires_grad_()
    expected = F.multilabel_soft_margin_loss(reference, y, w)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(x.grad, reference.grad)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", [{}, {"pos_weight": "yes", "mask": "yes", "gamma_neg": 2.0}])
def test_fake_tensor_mode(reduction, options):
    with FakeTensorMode():
        x = torch.randn(6, 4, requires_grad=True)
        y = torch.ones(6, 4)
        kwargs = {k: v for k, v in options.items() if v != "yes"}
        if "pos_weight" in options:
            kwargs["pos_weight"] = torch.ones(4)
        if "mask" in options:
            kwargs["mask"] = torch.ones(6, 4, dtype=torch.bool)
        loss = st.multilabel_soft_margin_loss(x, y, torch.ones(4), reduction=reduction, **kwargs)
        assert loss.shape == ((6,) if reduction == "none" else ())
        assert loss.dtype == torch.float32
        loss.sum().backward()
        assert x.grad.shape == (6, 4) and x.grad.dtype == torch.float32
    _eager_still_right()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_meta_device(dtype):
    x = torch.empty(3, 7, 5, device="meta", dtype=dtype, requires_grad=True)
    loss = st.multilabel_soft_margin_loss(x, torch.empty(3, 7, 5, device="meta", dtype=dtype), reduction="none")
    assert loss.device.type == "meta" and loss.shape == (3, 7) and loss.dtype == dtype
    loss.sum().backward()
    assert x.grad.shape == x.shape and x.grad.device.type == "meta"
    _eager_still_right()


def test_two_tensor_subclass():
    from torch.testing._internal.two_tensor import TwoTensor

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    y = (torch.rand(5, 3, generator=gen) < 0.5).float()
    x = TwoTensor(a, b).requires_grad_()
    loss = st.multilabel_soft_margin_loss(x, TwoTensor(y, y))
    assert isinstance(loss, TwoTensor)
    torch.testing.assert_close(loss.a, F.multilabel_soft_margin_loss(a, y))
    torch.testing.assert_close(loss.b, F.multilabel_soft_margin_loss(b, y))
    loss.backward()
    ra = a.clone().requires_grad_()
    F.multilabel_soft_margin_loss(ra, y).backward()
    torch.testing.assert_close(x.grad.a, ra.grad)
    _eager_still_right()


def test_dtensor_rows_sharded():
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(6, 4, generator=gen)
        y = (torch.rand(6, 4, generator=gen) < 0.5).float()
        dx = distribute_tensor(x, mesh, [Shard(0)]).requires_grad_()
        loss = st.multilabel_soft_margin_loss(dx, distribute_tensor(y, mesh, [Shard(0)]))
        torch.testing.assert_close(loss.full_tensor(), F.multilabel_soft_margin_loss(x, y))
        loss.backward()
        rx = x.clone().requires_grad_()
        F.multilabel_soft_margin_loss(rx, y).backward()
        torch.testing.assert_close(dx.grad.full_tensor(), rx.grad)
    finally:
        if initialised_here:
            dist.destroy_process_group()
    _eager_still_right()


def test_torch_function_override_is_honoured():
    calls = []

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func is st.multilabel_soft_margin_loss:
                calls.append(func)
                return "overridden"
            return super().__torch_function__(func, types, args, kwargs or {})

    assert st.multilabel_soft_margin_loss(torch.randn(2, 3).as_subclass(Logged), torch.ones(2, 3)) == "overridden"
    assert calls == [st.multilabel_soft_margin_loss]


@pytest.mark.parametrize(
    "dtypes", [(torch.float32, torch.float64, None), (torch.bfloat16, torch.float32, None), (torch.float16, torch.bool, None),
               (torch.bfloat16, torch.bfloat16, torch.float32), (torch.float32, torch.uint8, torch.float64)],
)
def test_result_dtype_follows_torch(dtypes):
    x_dtype, y_dtype, w_dtype = dtypes
    x = torch.randn(3, 4).to(x_dtype)
    y = (torch.rand(3, 4) < 0.5).to(y_dtype)
    w = None if w_dtype is None else torch.rand(4).to(w_dtype)
    y_torch = y if y_dtype.is_floating_point else y.to(x_dtype)  # torch's loss needs a float target; the dtype is the same
    assert st.multilabel_soft_margin_loss(x, y, w).dtype == F.multilabel_soft_margin_loss(x, y_torch, w).dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_autocast_dtype_as_torch(dtype):
    x = torch.randn(4, 5).to(dtype)
    y = (torch.rand(4, 5) < 0.5).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = st.multilabel_soft_margin_loss(x, y)
        theirs = F.multilabel_soft_margin_loss(x, y)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-2, atol=1e-3)


_OPERANDS = {
    "target": lambda device: torch.ones(3, 4, device=device),
    "weight": lambda device: torch.ones(4, device=device),
    "pos_weight": lambda device: torch.ones(4, device=device),
    "mask": lambda device: torch.ones(3, 4, dtype=torch.bool, device=device),
}


def _other_devices():
    return ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("other", _other_devices())
@pytest.mark.parametrize("name", list(_OPERANDS))
def test_an_operand_on_another_device_is_refused_by_name(name, other):
    """The CPU kernel read an operand on another device through its data pointer: a meta weight gave a loss of
    -3.5e37 (garbage memory), a meta target 0. Refused by name, through the functional, the module and the operator,
    as torch refuses a (C,) weight on another device."""
    x = torch.randn(3, 4)
    operands = {name: make("cpu") for name, make in _OPERANDS.items()}
    operands[name] = _OPERANDS[name](other)
    message = rf"{name}\.device == {other}(:0)?, expected input\.device == cpu: every operand must be on the input's device"
    with pytest.raises(ValueError, match=message):
        st.multilabel_soft_margin_loss(x, operands["target"], operands["weight"], pos_weight=operands["pos_weight"], mask=operands["mask"])
    if name == "weight":  # the plain loss's fast path too
        with pytest.raises(ValueError, match=message):
            st.multilabel_soft_margin_loss(x, operands["target"], operands["weight"])
    if name in ("weight", "pos_weight"):  # a module's buffer left behind
        module = st.MultiLabelSoftMarginLoss(weight=operands["weight"], pos_weight=operands["pos_weight"])
        with pytest.raises(ValueError, match=message + r".*module\.to\(device\)"):
            module(x, operands["target"])
    with pytest.raises(ValueError, match=message):
        torch.ops.softmargin.loss_rows(
            x, operands["target"], operands["weight"], operands["pos_weight"], operands["mask"], None, None, None,
            0.0, 0.0, 0.0, 0.0, True, True,
        )  # fmt: skip
    _eager_still_right()


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
def test_a_0d_cpu_weight_goes_with_any_device_as_in_torch(name):
    """torch's loss functions take a 0-d CPU weight with a tensor on another device (and refuse a (C,) one): so do
    these, on meta tensors, where torch's own loss gives the shape to compare with."""
    x, y = torch.empty(3, 4, device="meta", requires_grad=True), torch.empty(3, 4, device="meta")
    theirs = {"weight": F.multilabel_soft_margin_loss, "pos_weight": F.binary_cross_entropy_with_logits}[name]
    for reduction in ("none", "mean"):
        expected = theirs(x, y, **{name: torch.tensor(2.0)}, reduction=reduction)
        ours = st.multilabel_soft_margin_loss(x, y, **{name: torch.tensor(2.0)}, reduction=reduction, validate=False)
        if name == "pos_weight":  # BCE's "none" is per element, ours per sample
            expected = expected.mean(-1) if reduction == "none" else expected
        assert ours.device == expected.device and ours.shape == expected.shape
        ours.sum().backward()
        assert x.grad.device.type == "meta"
    with pytest.raises(RuntimeError):
        theirs(x, y, **{name: torch.ones(4)})
    with pytest.raises(ValueError, match=rf"{name}\.device == cpu, expected input\.device == meta"):
        st.multilabel_soft_margin_loss(x, y, **{name: torch.ones(4)}, validate=False)
