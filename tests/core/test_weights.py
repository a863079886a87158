"""softmargin.class_weights and softmargin.pos_weight against their formulas, for every input family."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import softmargin

LABELS = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=np.float32)
N_POS = np.array([5.0, 1.0, 2.0, 0.0])


def test_inverse_is_sklearns_balanced_scale():
    compute_class_weight = pytest.importorskip("sklearn.utils.class_weight").compute_class_weight

    labels = LABELS[:, :3]
    with _no_warning():
        weights = softmargin.class_weights(labels, "inverse", normalize=False)
    np.testing.assert_allclose(weights, 5 / (3 * N_POS[:3]))
    # scikit-learn's "balanced" scale for one binary column is N / (2 * n_pos): ours divides by C instead of 2
    sk = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels[:, 2])
    np.testing.assert_allclose(weights[2] * 3 / 2, sk[1])


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


@pytest.mark.parametrize("method", ["inverse", "sqrt_inverse", "effective_number"])
def test_methods_follow_their_formulas_and_normalise_to_mean_one(method):
    with pytest.warns(UserWarning, match=r"1 label has no positive example \(columns 3\)"):
        raw = softmargin.class_weights(LABELS, method, beta=0.9, normalize=False)
    counts = np.maximum(N_POS, 1)  # the documented stand-in for a label without positives
    expected = {
        "inverse": 5 / (4 * counts),
        "sqrt_inverse": np.sqrt(5 / (4 * counts)),
        "effective_number": (1 - 0.9) / (1 - 0.9**counts),
    }[method]
    np.testing.assert_allclose(raw, expected, rtol=1e-12)
    assert np.isfinite(raw).all()
    with pytest.warns(UserWarning):
        normalized = softmargin.class_weights(LABELS, method, beta=0.9)
    np.testing.assert_allclose(normalized.mean(), 1.0)
    np.testing.assert_allclose(normalized / normalized[0], raw / raw[0])


def test_effective_number_tends_to_inverse_and_to_uniform():
    labels = LABELS[:, :3]
    uniform = softmargin.class_weights(labels, "effective_number", beta=0.0)
    np.testing.assert_allclose(uniform, 1.0)
    near_inverse = softmargin.class_weights(labels, "effective_number", beta=1 - 1e-9)
    np.testing.assert_allclose(near_inverse, softmargin.class_weights(labels, "inverse"), rtol=1e-6)


def test_pos_weight_is_neg_over_pos_with_cap():
    # the empty column counts as one positive, its n_neg staying 5: 5 / 1, one more than the one-positive column's 4 / 1
    with pytest.warns(UserWarning, match=r"no positive example \(columns 3\); pos_weight counts it as having one positive \(n_pos = 1\)"):
        weights = softmargin.pos_weight(LABELS)
    np.testing.assert_allclose(weights, [1e-3 / 5, 4 / 1, 3 / 2, 5 / 1])  # all-positive column: n_neg taken as 1e-3
    with pytest.warns(UserWarning):
        np.testing.assert_allclose(softmargin.pos_weight(LABELS, max_weight=2.0), [2e-4, 2.0, 1.5, 2.0])


@pytest.mark.parametrize("family", ["numpy", "sparse", "torch", "bool"])
def test_every_input_family_gives_the_same_weights(family):
    labels = LABELS[:, :3]
    expected = softmargin.class_weights(labels)
    if family == "sparse":
        given = _family("sparse")(labels)
    elif family == "bool":
        given = labels.astype(bool)
    elif family == "torch":
        torch = pytest.importorskip("torch")
        given = torch.tensor(labels)
    else:
        given = labels
    result = softmargin.class_weights(given)
    if family == "torch":
        assert result.dtype == torch.float32
        result = result.numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    pw = softmargin.pos_weight(given)
    np.testing.assert_allclose(np.asarray(pw), softmargin.pos_weight(labels), rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"method='balanced' is not valid: expected one of 'inverse', 'sqrt_inverse', 'effective_number'"):
        softmargin.class_weights(LABELS, "balanced")
    with pytest.raises(ValueError, match=r"beta=1\.0 is outside \[0, 1\)"):
        softmargin.class_weights(LABELS, "effective_number", beta=1.0)
    with pytest.raises(ValueError, match=r"targets\.shape == \(5,\): expected a 2-D label matrix"):
        softmargin.class_weights(LABELS[:, 0])
    with pytest.raises(ValueError, match=r"max_weight=0: expected a number > 0"):
        softmargin.pos_weight(LABELS, max_weight=0)


def test_weights_plug_into_the_loss():
    torch = pytest.importorskip("torch")
    from softmargin.torch import multilabel_soft_margin_loss

    labels = torch.tensor(LABELS[:, :3])
    x = torch.randn(5, 3)
    loss = multilabel_soft_margin_loss(x, labels, weight=softmargin.class_weights(labels), pos_weight=softmargin.pos_weight(labels))
    assert torch.isfinite(loss)


def _family(name):
    """The function making an input of family ``name`` ("numpy", "sparse": scipy.sparse, "torch") from a NumPy array;
    the test is skipped where the family's package is not installed (the weights themselves need NumPy only)."""
    if name == "sparse":
        return pytest.importorskip("scipy.sparse").csr_matrix
    if name == "torch":
        return pytest.importorskip("torch").as_tensor
    return np.asarray


@pytest.mark.parametrize("family", ["numpy", "sparse", "torch"])
@pytest.mark.parametrize(("labels", "message"), [
    (np.array([[1, -1], [-1, 1], [1, -1]]), r"targets has values from -1 to 1: expected labels in \[0, 1\]"),  # {-1, +1}
    (np.array([[2, 0], [0, 1]]), r"targets has values from 0 to 2: expected labels in \[0, 1\]"),  # counts
    (np.array([[np.nan, 1.0], [0.0, 1.0]]), r"targets holds NaN: expected labels in \[0, 1\]"),
    (np.array([[np.inf, 1.0], [0.0, 1.0]]), r"targets has values from 0 to inf: expected labels in \[0, 1\]"),
    (np.zeros((0, 3)), r"targets\.shape == \(0, 3\): expected at least one sample \(row\)"),
])  # fmt: skip
@pytest.mark.parametrize("function", [softmargin.class_weights, softmargin.pos_weight])
def test_labels_outside_0_1_and_an_empty_matrix_are_refused_in_every_family(family, labels, message, function):
    make = _family(family)
    with pytest.raises(ValueError, match=message):
        function(make(labels))


def test_soft_labels_in_0_1_are_still_counted_fractionally():
    soft = np.array([[0.5, 1.0], [0.25, 0.0], [0.25, 1.0]])
    np.testing.assert_allclose(softmargin.class_weights(soft, normalize=False), 3 / (2 * np.array([1.0, 2.0])))
    np.testing.assert_allclose(softmargin.pos_weight(soft), [2.0, 0.5])


@pytest.mark.parametrize("family", ["numpy", "sparse", "torch"])
def test_a_soft_count_below_one_is_not_raised_to_one(family):
    # column 0 has 0.2 + 0.0 = 0.2 positives, column 1 has 0.8: neither is empty, so neither may be floored at 1
    soft = np.array([[0.2, 0.8], [0.0, 0.0]])
    n_pos, n = soft.sum(0), len(soft)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no positive example" warning either
        weights = softmargin.class_weights(_family(family)(soft), normalize=False)
        positive = softmargin.pos_weight(_family(family)(soft))
    np.testing.assert_allclose(np.asarray(weights), n / (2 * n_pos))
    np.testing.assert_allclose(np.asarray(positive), (n - n_pos) / n_pos)


@pytest.mark.parametrize("layout", ["coo", "coo uncoalesced", "csr", "csc"])
def test_a_torch_sparse_tensor_is_counted_without_densifying(layout, monkeypatch):
    """A torch sparse tensor (the docstring promised torch tensors, and never densifying a sparse one) was a raw
    NotImplementedError ('aten::aminmax' on SparseCPU): its stored values are counted by column, as scipy's are."""
    torch = pytest.importorskip("torch")
    soft = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 1.0], [1.0, 0.25, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    dense = torch.tensor(soft)
    if layout == "coo uncoalesced":  # 0.5 stored as 0.25 + 0.25 at [0, 2]: duplicates add up
        rows, cols = np.nonzero(soft)
        values = soft[rows, cols].copy()
        first = int(np.flatnonzero((rows == 0) & (cols == 2))[0])
        values[first] = 0.25
        given = torch.sparse_coo_tensor(np.vstack([np.r_[rows, 0], np.r_[cols, 2]]), np.r_[values, 0.25], soft.shape,
                                        check_invariants=True)
        assert not given.is_coalesced()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR tensor support is in beta"
            given = {"coo": dense.to_sparse, "csr": dense.to_sparse_csr, "csc": dense.to_sparse_csc}[layout]()
    monkeypatch.setattr(torch.Tensor, "to_dense", lambda self, *a, **k: pytest.fail("densified"))
    for method in ("inverse", "sqrt_inverse", "effective_number"):
        result = softmargin.class_weights(given, method)
        assert result.dtype == torch.float32 and result.layout == torch.strided
        np.testing.assert_allclose(result.numpy(), softmargin.class_weights(soft, method), rtol=1e-6)
    np.testing.assert_allclose(softmargin.pos_weight(given, max_weight=3.0).numpy(), softmargin.pos_weight(soft, max_weight=3.0), rtol=1e-6)
    n_pos = soft.sum(0)  # an independent reference: N / (C n_c), and n_neg / n_pos
    np.testing.assert_allclose(softmargin.class_weights(given, normalize=False).numpy(), 5 / (3 * n_pos), rtol=1e-6)
    np.testing.assert_allclose(softmargin.pos_weight(given).numpy(), (5 - n_pos) / n_pos, rtol=1e-6)


@pytest.mark.parametrize(("labels", "message"), [
    (np.array([[1.0, -1.0], [0.0, 1.0]]), r"targets has values from -1 to 1: expected labels in \[0, 1\]"),
    (np.array([[2.0, 0.0], [0.0, 1.0]]), r"targets has values from 0 to 2: expected labels in \[0, 1\]"),
    (np.array([[np.nan, 1.0], [0.0, 1.0]]), r"targets holds NaN: expected labels in \[0, 1\]"),
    (np.zeros((0, 3)), r"targets\.shape == \(0, 3\): expected at least one sample \(row\)"),
])  # fmt: skip
def test_a_torch_sparse_tensor_outside_0_1_is_refused_as_a_dense_one(labels, message):
    torch = pytest.importorskip("torch")
    for given in (torch.tensor(labels).to_sparse(), torch.tensor(labels).to_sparse_csr()):
        with pytest.raises(ValueError, match=message):
            softmargin.class_weights(given)
        with pytest.raises(ValueError, match=message):
            softmargin.pos_weight(given)
    hybrid = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).to_sparse(1)  # rows sparse, columns dense
    with pytest.raises(TypeError, match=r"targets is a hybrid sparse tensor \(1 sparse, 1 dense dimension\): expected"):
        softmargin.class_weights(hybrid)


def test_a_float32_scipy_sparse_matrix_is_counted_in_float64():
    """scipy's sum(axis=0) accumulates a float32 matrix in float32 (dtype=np.float64 changes only the result's type):
    0.1 in each of 300,000 rows counted 29,920.4 positives instead of 30,000.0, and pos_weight came out 0.27 % off
    (4.5 % at 4e6 rows), where the dense NumPy and torch paths count in float64."""
    sp = pytest.importorskip("scipy.sparse")
    n = 300_000
    value = np.float32(0.1)
    soft = sp.csr_matrix((np.full(n, value), np.zeros(n, dtype=np.int64), np.arange(n + 1)), shape=(n, 2))
    n_pos = np.array([float(value) * n, 0.0])  # float64, from the float32 value itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # column 1 has no positive
        np.testing.assert_allclose(softmargin.pos_weight(soft)[0], (n - n_pos[0]) / n_pos[0], rtol=1e-12)
        np.testing.assert_allclose(softmargin.class_weights(soft, normalize=False)[0], n / (2 * n_pos[0]), rtol=1e-12)


def test_a_scipy_csr_matrix_with_duplicate_entries_is_checked_as_summed():
    """A CSR matrix built from (data, indices, indptr) may store one cell twice; scipy (toarray, tocoo, sum) adds the
    two up. 0.6 stored twice in a cell is 1.2, refused as a COO matrix, a torch tensor and the dense matrix are; it was
    counted as 1.2 positives without a word (pos_weight 0.667 where no 0/1 or soft label matrix gives it)."""
    sp = pytest.importorskip("scipy.sparse")
    data, indices, indptr = np.array([0.6, 0.6, 1.0]), np.array([0, 0, 1]), np.array([0, 2, 3])
    duplicated = sp.csr_matrix((data, indices, indptr), shape=(2, 2))
    assert not duplicated.has_canonical_format and duplicated.toarray()[0, 0] == pytest.approx(1.2)
    for function in (softmargin.class_weights, softmargin.pos_weight):
        with pytest.raises(ValueError, match=r"targets has values from 0 to 1\.2: expected labels in \[0, 1\]"):
            function(duplicated)
    assert duplicated.data.tolist() == [0.6, 0.6, 1.0]  # the caller's matrix is left as it was
    # duplicates within [0, 1] are counted once summed: 0.25 + 0.25 is one half positive, as in the dense matrix
    halves = sp.csr_matrix((np.array([0.25, 0.25, 1.0]), indices, indptr), shape=(2, 2))
    dense = halves.toarray()
    n_pos, n = dense.sum(0), len(dense)
    np.testing.assert_allclose(softmargin.pos_weight(halves), (n - n_pos) / n_pos, rtol=1e-12)
    np.testing.assert_allclose(softmargin.class_weights(halves, normalize=False), n / (2 * n_pos), rtol=1e-12)
    assert halves.data.tolist() == [0.25, 0.25, 1.0]
    # a boolean matrix's duplicates are one True, as scipy's toarray() has them (not two positives)
    flags = sp.csr_matrix((np.array([True, True, True]), indices, indptr), shape=(2, 2))
    np.testing.assert_allclose(softmargin.pos_weight(flags), [1.0, 1.0])  # one positive, one negative per column


@pytest.mark.parametrize(("argument", "value"), [
    ("max_weight", "10"), ("max_weight", True), ("max_weight", np.array([1.0, 2.0])), ("max_weight", "torch"),
    ("beta", "0.9"), ("beta", None), ("beta", np.array([0.9])),
])  # fmt: skip
def test_options_that_are_not_numbers_are_refused_by_name(argument, value):
    """max_weight="10" and beta="0.9" were raw "'>' not supported between 'str' and 'int'", an array max_weight
    numpy's "truth value ... is ambiguous", max_weight=True a cap of 1, and a 0-d torch tensor max_weight turned the
    NumPy result into a float64 torch tensor."""
    if isinstance(value, str) and value == "torch":
        value = pytest.importorskip("torch").tensor(2.0)
    labels = LABELS[:, :3]
    expected = {"max_weight": "expected a number > 0, or None for no bound", "beta": r"expected a number in \[0, 1\)"}
    with pytest.raises(TypeError, match=rf"{argument}=.* is a \w+: {expected[argument]}"):
        if argument == "max_weight":
            softmargin.pos_weight(labels, max_weight=value)
        else:
            softmargin.class_weights(labels, "effective_number", beta=value)
    # NumPy scalars are numbers (columns 1 and 2: one and two positives of five)
    reference = (5 - N_POS[1:3]) / N_POS[1:3]
    np.testing.assert_allclose(softmargin.pos_weight(LABELS[:, 1:3], max_weight=np.float32(2.0)), np.minimum(reference, 2.0))
    assert type(softmargin.pos_weight(LABELS[:, 1:3], max_weight=np.int64(2))) is np.ndarray


@pytest.mark.parametrize("dtype", ["bool", "float16", "float32", "int64"])
def test_a_dense_torch_matrix_is_counted_in_float64_blocks_without_a_float64_copy(dtype, monkeypatch):
    """The torch path made a float64 copy of the whole label matrix (8x a bool matrix: 1.5 GB of extra peak memory
    for a 20,000 x 10,000 bool one, on the labels' device); it now reads them in their own dtype and sums blocks of
    rows in float64, as precise as before: 0.1 in float16 in each of 70,000 rows is 7,000 positives (x 0.0999755859375)."""
    torch = pytest.importorskip("torch")
    import softmargin.weights as W

    monkeypatch.setattr(W, "_BLOCK", 64)  # blocks of 21 rows of 3 columns: the sum crosses many blocks
    rng = np.random.default_rng(0)
    labels = (rng.random((1000, 3)) < [0.5, 0.1, 0.01]).astype(dtype)
    reference = labels.astype(np.float64).sum(0)
    given = torch.as_tensor(labels)
    monkeypatch.setattr(torch.Tensor, "double", lambda self: pytest.fail("a float64 copy of the label matrix"))
    np.testing.assert_allclose(softmargin.pos_weight(given).numpy(), (1000 - reference) / reference, rtol=1e-6)
    np.testing.assert_allclose(softmargin.class_weights(given, normalize=False).numpy(), 1000 / (3 * reference), rtol=1e-6)
    monkeypatch.setattr(W, "_BLOCK", 1 << 22)
    tenth = torch.full((70_000, 1), 0.1, dtype=torch.float16)
    n_pos = 70_000 * float(np.float16(0.1))
    np.testing.assert_allclose(softmargin.pos_weight(tenth).numpy(), (70_000 - n_pos) / n_pos, rtol=1e-6)


def test_a_jax_bfloat16_label_matrix_is_counted():
    """A JAX (ml_dtypes) bfloat16 label matrix was refused with "targets has dtype bfloat16: expected numbers or
    booleans": NumPy does not class bfloat16 as a float. Its values are exact in float32."""
    jnp = pytest.importorskip("jax.numpy")
    labels = LABELS[:, :3]
    n_pos = N_POS[:3]
    given = jnp.asarray(labels, dtype=jnp.bfloat16)
    np.testing.assert_allclose(softmargin.class_weights(given, normalize=False), 5 / (3 * n_pos), rtol=1e-12)
    np.testing.assert_allclose(softmargin.pos_weight(given)[1:], (5 - n_pos[1:]) / n_pos[1:], rtol=1e-12)
    with pytest.raises(ValueError, match=r"targets has values from 0 to 2: expected labels in \[0, 1\]"):
        softmargin.pos_weight(jnp.asarray(2 * labels, dtype=jnp.bfloat16))
