"""Sparse targets (positives only) give the same loss and gradient as the dense target, in every form and path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import assert_close, reference_grad, with_triton_path

import softmargin.numpy as snp

torch = pytest.importorskip("torch")
import softmargin.torch as st

torch_path = with_triton_path  # this module's matrix runs through the Triton kernel too

pytestmark = [pytest.mark.usefixtures("torch_path"), pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")]


def _problem(seed=0, rows=7, classes=1200, soft=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, classes)) * 4
    dense = (rng.random((rows, classes)) < 0.01).astype(np.float64)
    dense[0, [0, classes - 1]] = 1  # the edges of a row
    dense[1] = 0  # a row without positives
    if soft:
        dense[dense > 0] = rng.uniform(0.2, 1.0, int((dense > 0).sum()))
    return x, dense


def _forms(dense):
    csr = sp.csr_matrix(dense)
    forms = {
        "scipy": csr,
        "indptr/indices": (csr.indptr, csr.indices) if np.all(csr.data == 1) else (csr.indptr, csr.indices, csr.data),
        "torch csr": torch.tensor(dense).to_sparse_csr(),
        "torch coo": torch.tensor(dense).to_sparse(),
    }
    if np.all(csr.data == 1):
        forms["label lists"] = [list(np.flatnonzero(r)) for r in dense]
    return forms


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [{}, {"weight": "class"}, {"gamma_neg": 2.0, "clip": 0.05, "pos_weight": "class"}])
def test_torch_sparse_equals_dense(soft, dtype, options, torch_path):
    # Triton's interpreter adds each row's block up element by element in Python: 100 classes there (one block of
    # 128, as 300 classes were one of 512, at a quarter of the time; tests/kernels/test_triton_kernel.py walks
    # several blocks and tiles per row)
    x, dense = _problem(soft=soft, classes=100 if torch_path == "triton" else 1200)
    kw = {k: (torch.rand(x.shape[1], dtype=torch.float64) + 0.5 if v == "class" else v) for k, v in options.items()}
    reference = None
    forms = _forms(dense)
    if torch_path == "triton":  # every form becomes the same CSR before any backend: the other paths test them all
        forms = {name: forms[name] for name in ("scipy", "torch coo")}
    for name, target in forms.items():
        xt = torch.tensor(x, dtype=dtype, requires_grad=True)
        loss = st.multilabel_soft_margin_loss(xt, target, reduction="none", **kw)
        loss.sum().backward()
        if reference is None:
            xr = torch.tensor(x, dtype=dtype, requires_grad=True)
            # the dense target in the compute dtype: soft values keep float32's precision with half logits, sparse
            # or dense (rounded to bfloat16 they moved a gradient sigmoid(x) - y by more than itself where it is small)
            ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
            ref = st.multilabel_soft_margin_loss(xr, torch.tensor(dense, dtype=ref_dtype), reduction="none", **kw)
            ref.sum().backward()
            reference = (ref.detach().to(loss.dtype).double().numpy(), xr.grad.double().numpy())  # loss: x's dtype
        rtol = 1e-13 if dtype == torch.float64 else 1e-6  # the same arithmetic on the same values
        assert_close(loss.detach().double().numpy(), reference[0], rtol, f"{name} loss")
        assert_close(xt.grad.double().numpy(), reference[1], rtol, f"{name} grad")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_logits_read_float32_sparse_values_unrounded(dtype, torch_path):
    """float32 soft values of a sparse target with half logits are not rounded to the logits' dtype (every kernel
    reads them in float32): each gradient element within one unit in its last place of the float64 formula's, plus
    float32's own rounding of sigmoid(x) - y (rounded to the logits' dtype first, as before, they were not)."""
    x, dense = _problem(soft=True, classes=100 if torch_path == "triton" else 1200)
    x = torch.tensor(x).to(dtype)
    dense[dense > 0] = 1 / (1 + np.exp(-x.double().numpy()[dense > 0] + 0.02))  # the positives' own sigmoid, nearly
    target = torch.tensor(dense, dtype=torch.float32)
    xt = x.clone().requires_grad_(True)
    st.multilabel_soft_margin_loss(xt, target.to_sparse_csr(), reduction="sum").backward()
    exact = reference_grad(x.double().numpy(), target.double().numpy(), None, "sum")
    eps = torch.finfo(dtype).eps
    bound = eps * np.abs(exact) + 16 * 2.0**-24 * np.abs(exact).max() + eps * torch.finfo(dtype).tiny
    excess = np.abs(xt.grad.double().numpy() - exact) / bound
    assert excess.max() <= 1, f"gradient {excess.max():.3g} times its bound"


def test_numpy_sparse_equals_dense():
    x, dense = _problem(soft=True)
    expected = snp.multilabel_soft_margin_loss_and_grad(x, dense)
    for target in (sp.csr_matrix(dense), (sp.csr_matrix(dense).indptr, sp.csr_matrix(dense).indices, sp.csr_matrix(dense).data)):
        loss, grad = snp.multilabel_soft_margin_loss_and_grad(x, target)
        assert_close(loss, expected[0], 1e-14)
        assert_close(grad, expected[1], 1e-14)


def test_unsorted_indices_are_sorted():
    x = torch.randn(2, 10)
    target = (np.array([0, 2, 3]), np.array([7, 1, 4]))
    dense = torch.zeros(2, 10)
    dense[0, [7, 1]] = 1
    dense[1, 4] = 1
    torch.testing.assert_close(st.multilabel_soft_margin_loss(x, target), st.multilabel_soft_margin_loss(x, dense))


@pytest.mark.parametrize(
    "target,message",
    [
        ((np.array([0, 1]), np.array([3])), r"sparse target has shape \(1, 10\), expected \(2, 10\)"),
        ((np.array([0, 1, 2]), np.array([3, 10])), r"label index 10 outside \[0, 10\)"),
        ((np.array([0, 2, 2]), np.array([3, 3])), r"repeats label 3 in row 0"),
        ((np.array([0, 1, 2]), np.array([3, 4]), np.array([0.5, 1.5])), r"values in \[0\.5, 1\.5\]: expected every target value in \[0, 1\]"),
        ([[1], [2], [3]], r"expected \(2, 10\)"),
    ],
)
def test_bad_sparse_targets(target, message):
    with pytest.raises(ValueError, match=message):
        st.multilabel_soft_margin_loss(torch.zeros(2, 10), target)


@pytest.mark.parametrize(
    "shape,target,error,message",
    [
        # rows of C entries: label lists (every label) or a dense 0/1 target (the identity)? refused, not guessed
        ((2, 2), [[1, 0], [0, 1]], ValueError, r"list of 2 rows of 2 entries, as many as the input's classes"),
        ((2, 1), [[0], [0]], ValueError, r"rows of 1 entries"),
        # a tuple of label tuples would read as (indptr, indices): rows [3] and [4], not {0, 1, 2} and {3, 4}
        ((2, 5), ((0, 1, 2), (3, 4)), TypeError, r"tuple holding a tuple: \(indptr, indices\[, values\]\) takes arrays"),
        ((2, 5), [[0.7, 3.2], [4.9]], TypeError, r"label list holds 0\.7 \(float\): expected integer class indices"),
        ((2, 5), [[True], []], TypeError, r"label list holds True"),
        ((2, 5), (np.array([0.0, 1.0, 2.0]), np.array([3, 4])), TypeError, r"indptr has dtype float64: expected integers"),
        ((2, 5), (np.array([0, 1, 2]), torch.tensor([3.0, 4.0])), TypeError, r"indices has dtype float32: expected integers"),
    ],
)
def test_ambiguous_or_non_integer_label_lists_are_refused(shape, target, error, message):
    with pytest.raises(error, match=message):
        st.multilabel_soft_margin_loss(torch.zeros(shape), target)


def test_label_lists_of_integer_kinds_equal_the_dense_target():
    x = torch.randn(3, 5, dtype=torch.float64)
    dense = torch.zeros(3, 5, dtype=torch.float64)
    dense[0, [1, 3]] = dense[2, 4] = 1
    expected = st.multilabel_soft_margin_loss(x, dense)
    for lists in ([[1, 3], [], [4]], [np.array([1, 3]), [], [np.int64(4)]], [torch.tensor([1, 3]), torch.tensor([], dtype=torch.long), [4]]):
        torch.testing.assert_close(st.multilabel_soft_margin_loss(x, lists), expected)


def test_no_positive_at_all():
    x = torch.randn(3, 50, requires_grad=True)
    loss = st.multilabel_soft_margin_loss(x, [[], [], []])
    loss.backward()
    x2 = x.detach().clone().requires_grad_(True)
    st.multilabel_soft_margin_loss(x2, torch.zeros(3, 50)).backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_strided_index_arrays_are_read_as_given():
    """(indptr, indices[, values]) given as strided views (np.nonzero(dense)[1] is one, in NumPy 2: a column of an
    (nnz, 2) array) were handed to the CPU kernel by address, which read their underlying buffer: label 9 of 4 and a
    loss of 1.545 instead of 0.795."""
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0], [-1.0, 0.5, 2.0, -3.0]], dtype=torch.float64, requires_grad=True)
    dense = torch.tensor([[0.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    expected = st.multilabel_soft_margin_loss(x, dense, reduction="none")
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    indptr, indices, values = np.array([0, 9, 2, 9, 3])[::2], np.array([1, 9, 3, 9, 0, 9])[::2], np.array([1.0, 7, 0.5, 7, 1, 7])[::2]
    for target in ((indptr, indices, values), tuple(torch.from_numpy(a) for a in (indptr, indices, values))):
        loss = st.multilabel_soft_margin_loss(x, target, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(grad, expected_grad)
    nonzero = np.nonzero(dense.numpy())  # NumPy's own strided columns
    target = (np.concatenate([[0], np.cumsum(np.bincount(nonzero[0], minlength=2))]), nonzero[1], dense.numpy()[nonzero])
    torch.testing.assert_close(st.multilabel_soft_margin_loss(x, target, reduction="none"), expected)


def test_every_torch_sparse_layout_is_a_sparse_target():
    """CSC, BSR and BSC targets (torch.sparse makes them as readily as CSR) failed deep in the dense path with
    "Sparse CSC tensors do not have is_contiguous"; the fused head refused them as not strided."""
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    dense = (torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) < 0.4).double()
    dense[1] = 0
    expected = st.multilabel_soft_margin_loss(x, dense, reduction="none")
    hidden, weight = torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    expected_head = st.linear_multilabel_soft_margin_loss(hidden, weight, None, dense)
    for target in (dense.to_sparse_csc(), dense.to_sparse_bsr((2, 2)), dense.to_sparse_bsc((2, 2))):
        torch.testing.assert_close(st.multilabel_soft_margin_loss(x, target, reduction="none"), expected, msg=str(target.layout))
        torch.testing.assert_close(st.linear_multilabel_soft_margin_loss(hidden, weight, None, target), expected_head)


def test_sparse_target_values_that_require_grad_are_refused():
    """A sparse target is read as labels: values that required grad (a sparse COO/CSR tensor, or the values of
    ``(indptr, indices, values)``) got a gradient of None, silently. Refused by name, in the loss and the fused head;
    under no_grad, or detached, they are taken."""
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    dense = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0.5, 0, 0, 1]], dtype=torch.float64)
    values = torch.tensor([1.0, 1.0, 0.5, 1.0], dtype=torch.float64)
    parts = (torch.tensor([0, 2, 2, 4]), torch.tensor([0, 3, 1, 4]))
    hidden, weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True), torch.randn(5, 4, dtype=torch.float64)
    expected = st.multilabel_soft_margin_loss(x, dense)
    for make in (lambda: dense.to_sparse(), lambda: dense.to_sparse_csr(), lambda: (*parts, values.clone())):
        target = make()
        taken = st.multilabel_soft_margin_loss(x, target)  # not requiring grad: taken
        torch.testing.assert_close(taken, expected)
        (target if isinstance(target, torch.Tensor) else target[2]).requires_grad_()
        with pytest.raises(ValueError, match=r"target's values require grad, but a sparse target is read as labels"):
            st.multilabel_soft_margin_loss(x, target)
        with pytest.raises(ValueError, match=r"target's values require grad"):
            st.linear_multilabel_soft_margin_loss(hidden, weight, None, target)
        with torch.no_grad():
            torch.testing.assert_close(st.multilabel_soft_margin_loss(x, target), expected)
