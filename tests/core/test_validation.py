"""Every validation error, in both backends, pinned by its message."""

from __future__ import annotations

import numpy as np
import pytest

import softmargin
import softmargin.numpy as snp

torch = pytest.importorskip("torch")
import softmargin.torch as st


def _np(fn_input, target, **kw):
    return snp.multilabel_soft_margin_loss(fn_input, target, **kw)


def _torch(fn_input, target, **kw):
    as_tensor = lambda a: a if a is None else torch.as_tensor(a)
    if "weight" in kw:
        kw["weight"] = as_tensor(kw["weight"])
    return st.multilabel_soft_margin_loss(as_tensor(fn_input), as_tensor(target), **kw)


BACKENDS = pytest.mark.parametrize("loss", [_np, _torch], ids=["numpy", "torch"])
X = np.zeros((4, 3), dtype=np.float32)
Y = np.zeros((4, 3), dtype=np.float32)


@BACKENDS
@pytest.mark.parametrize("target_shape", [(4, 1), (3,), (1, 3), (4, 3, 1)])
def test_target_is_never_broadcast(loss, target_shape):
    with pytest.raises(ValueError, match=r"target\.shape == .* expected input\.shape == \(4, 3\).*never broadcast"):
        loss(X, np.zeros(target_shape, dtype=np.float32))


@BACKENDS
@pytest.mark.parametrize("weight_shape", [(4,), (2, 3), (1, 4, 3), (3, 1)])
def test_weight_must_broadcast_to_input(loss, weight_shape):
    with pytest.raises(ValueError, match=r"weight\.shape == .* does not broadcast to input\.shape == \(4, 3\)"):
        loss(X, Y, weight=np.ones(weight_shape, dtype=np.float32))


@BACKENDS
def test_unknown_reduction_lists_valid_ones(loss):
    with pytest.raises(ValueError, match=r"reduction='avg' is not valid: expected one of 'none', 'mean', 'sum'"):
        loss(X, Y, reduction="avg")


@BACKENDS
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_integer_or_boolean_logits_are_a_type_error(loss, dtype):
    with pytest.raises(TypeError, match=r"input has dtype .*expected a floating-point dtype"):
        loss(X.astype(dtype), Y)


@BACKENDS
def test_target_out_of_range_says_how_many_and_where(loss):
    target = Y.copy()
    target[1, 2] = 1.5
    target[3, 0] = -1
    with pytest.raises(ValueError, match=r"target has 2 values outside \[0, 1\] \(the first at position \(1, 2\): 1\.5\)"):
        loss(X, target)
    target = Y.copy()
    target[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"target has 1 value outside \[0, 1\] \(the first at position \(2, 1\): nan\)"):
        loss(X, target)


@BACKENDS
@pytest.mark.parametrize("bad", [-0.5, np.inf, np.nan])
def test_negative_or_non_finite_weights(loss, bad):
    weight = np.ones(3, dtype=np.float32)
    weight[1] = bad
    with pytest.raises(ValueError, match=r"weight has 1 value outside the finite range \[0, inf\) \(the first at position \(1,\)"):
        loss(X, Y, weight=weight)


@BACKENDS
def test_scalar_input_is_rejected(loss):
    with pytest.raises(ValueError, match=r"input is a 0-d scalar: expected shape \(C,\)"):
        loss(np.float32(1.0), np.float32(1.0))


@BACKENDS
def test_validate_false_skips_value_checks_only(loss):
    target = Y.copy()
    target[0, 0] = 2.0
    loss(X, target, validate=False)  # no value check ...
    with pytest.raises(ValueError, match="never broadcast"):  # ... but shapes are always checked
        loss(X, Y[:, :1], validate=False)


def test_torch_rejects_non_tensors():
    with pytest.raises(TypeError, match="target is a ndarray: expected a torch.Tensor"):
        st.multilabel_soft_margin_loss(torch.zeros(2, 3), np.zeros((2, 3)))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support", "ignore:The PyTorch API of nested tensors")
def test_torch_rejects_sparse_and_nested_operands_by_name():
    """A sparse or nested input, weight or mask failed deep inside with torch's "unsupported memory format option
    Contiguous" (naming neither the operand nor a way out); only the target may be sparse."""
    x, y = torch.randn(4, 5), (torch.rand(4, 5) < 0.3).float()
    cases = {
        "input": dict(input=x.to_sparse(), target=y),
        "weight": dict(input=x, target=y, weight=torch.ones(5).to_sparse()),
        "pos_weight": dict(input=x, target=y, pos_weight=torch.ones(5).to_sparse()),
        "mask": dict(input=x, target=y, mask=torch.ones(4, 5, dtype=torch.bool).to_sparse()),
    }
    for name, kwargs in cases.items():
        with pytest.raises(TypeError, match=rf"^{name} is a sparse_coo tensor: expected a dense \(strided\) tensor"):
            st.multilabel_soft_margin_loss(**kwargs)
    with pytest.raises(TypeError, match=r"^input is a sparse_csr tensor"):
        st.multilabel_soft_margin_loss(x.to_sparse_csr(), y)
    nested = torch.nested.nested_tensor([torch.randn(2, 5), torch.randn(3, 5)], layout=torch.jagged)
    with pytest.raises(TypeError, match=r"^input is a nested tensor: .*to_padded_tensor\(0\)"):
        st.multilabel_soft_margin_loss(nested, nested)
    with pytest.raises(TypeError, match=r"^hidden is a sparse_coo tensor"):
        st.linear_multilabel_soft_margin_loss(x.to_sparse(), torch.randn(3, 5), None, [[0], [], [1], [2]])
    assert torch.isfinite(st.multilabel_soft_margin_loss(x, y.to_sparse()))  # the target may be sparse


def test_torch_module_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction='elementwise' is not valid"):
        st.MultiLabelSoftMarginLoss(reduction="elementwise")


def test_loss_options_are_accepted_wherever_the_four_keywords_are():
    """One LossOptions value gives what its four keywords give, in every backend; both at once is an error."""
    import numpy as np
    import torch

    import softmargin.numpy as snp
    import softmargin.torch as st
    from softmargin import LossOptions

    gen = np.random.default_rng(0)
    x = gen.standard_normal((5, 7)).astype(np.float64)
    y = (gen.random((5, 7)) < 0.4).astype(np.float64)
    keywords = dict(label_smoothing=0.1, gamma_pos=1.0, gamma_neg=3.0, clip=0.05)
    options = LossOptions(**keywords)
    assert snp.multilabel_soft_margin_loss(x, y, options=options) == snp.multilabel_soft_margin_loss(x, y, **keywords)
    np.testing.assert_array_equal(snp.multilabel_soft_margin_loss_grad(x, y, options=options),
                                  snp.multilabel_soft_margin_loss_grad(x, y, **keywords))
    tx, ty = torch.tensor(x), torch.tensor(y)
    assert torch.equal(st.multilabel_soft_margin_loss(tx, ty, options=options), st.multilabel_soft_margin_loss(tx, ty, **keywords))
    assert torch.equal(st.MultiLabelSoftMarginLoss(options=options)(tx, ty), st.MultiLabelSoftMarginLoss(**keywords)(tx, ty))
    with pytest.raises(ValueError, match="options= and label_smoothing/gamma_pos/gamma_neg/clip were both given"):
        st.multilabel_soft_margin_loss(tx, ty, options=options, gamma_neg=1.0)
    with pytest.raises(TypeError, match="options is a dict: expected softmargin.LossOptions"):
        snp.multilabel_soft_margin_loss(x, y, options=keywords)
    with pytest.raises(ValueError, match=r"clip=1.5 is outside \[0, 1\)"):
        LossOptions(clip=1.5)


def test_a_weight_of_a_wrong_dtype_is_named_as_the_weight():
    with pytest.raises(TypeError, match=r"^weight has dtype <U1: expected a real"):
        snp.multilabel_soft_margin_loss(X, Y, np.array(["a", "b", "c"]))
    with pytest.raises(TypeError, match=r"^pos_weight has dtype complex128: expected a real"):
        snp.multilabel_soft_margin_loss(X, Y, pos_weight=np.ones(3, dtype=complex))
    with pytest.raises(TypeError, match=r"^weight has dtype torch.complex64: expected a real"):
        st.multilabel_soft_margin_loss(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(3, dtype=torch.complex64))


@BACKENDS
@pytest.mark.parametrize("scalar", [np.float32(0.1), np.float64(0.1), np.int64(0)])
def test_numpy_scalars_are_accepted_as_options(loss, scalar):
    x = np.array([[0.5, -1.0, 3.0]], np.float32)
    y = np.array([[1.0, 0.0, 1.0]], np.float32)
    got = loss(x, y, label_smoothing=scalar, gamma_neg=np.int64(2))
    expected = loss(x, y, label_smoothing=float(scalar), gamma_neg=2.0)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    options = softmargin.LossOptions(label_smoothing=scalar)
    assert type(options.label_smoothing) is float  # stored as a Python float: it travels into schemas and JSON
    for bad in (np.bool_(True), True, "0.1", np.array([0.1])):
        with pytest.raises(TypeError, match=r"label_smoothing=.* expected a float"):
            loss(x, y, label_smoothing=bad)


@pytest.mark.parametrize("name", ["input", "target"])
def test_a_ragged_nested_list_is_named(name):
    good, ragged = [[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0]]
    arguments = {"input": good, "target": [[1, 0], [1, 0]], name: ragged}
    with pytest.raises(ValueError, match=rf"^{name} could not be read as an array \(.*inhomogeneous"):
        snp.multilabel_soft_margin_loss(arguments["input"], arguments["target"])
