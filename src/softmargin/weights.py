"""Per-class weights computed from a label matrix, for imbalanced multi-label data.

Both functions take a label matrix of shape (N, C) with values in [0, 1] (soft labels count fractionally) as a NumPy
array, a torch tensor (dense, or sparse: COO, CSR, CSC) or a scipy.sparse matrix (a cell stored twice holds the sum,
as scipy reads it), and never densify a sparse one; anything else NumPy reads (a JAX array, bfloat16 included, a list,
a DataFrame) is counted as a NumPy array. They return a NumPy float64 array of
shape (C,), or a float32 torch tensor on the labels' device when given a tensor. A label with no positive example
gets a warning and is counted as having exactly one (``n_pos = 1``; for ``pos_weight`` that is ``N / 1``, one more
than a label with one positive gets, its ``n_neg`` being ``N``, not ``N - 1``): never inf or NaN. Labels
outside [0, 1] (a {-1, +1} matrix, counts, NaN) and a matrix without rows (nothing to count) are refused with a
ValueError naming ``targets``, whatever the input family.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["class_weights", "pos_weight"]

#: Elements per block of rows when a dense torch label matrix is counted in float64.
_BLOCK = 1 << 22

Method = Literal["inverse", "sqrt_inverse", "effective_number"]
METHODS = ("inverse", "sqrt_inverse", "effective_number")


def _check_labels(name: str, shape: tuple[int, ...], low: float, high: float) -> None:
    """Refuse a label matrix without rows, or whose values (smallest ``low``, largest ``high``; NaN if any is) leave
    [0, 1]: the counts would be meaningless (a {-1, +1} matrix counts its negatives as -1 positives) or the weights
    NaN."""
    if shape[0] == 0:
        raise ValueError(f"{name}.shape == {shape}: expected at least one sample (row) to count the labels of")
    expected = "expected labels in [0, 1] (0/1, booleans or soft labels)"
    if math.isnan(low) or math.isnan(high):
        raise ValueError(f"{name} holds NaN: {expected}")
    if not (0 <= low and high <= 1):
        raise ValueError(f"{name} has values from {low:g} to {high:g}: {expected}")


def _is_number(value: object) -> bool:
    """A real Python or NumPy scalar, not a bool (``max_weight=True`` would be a cap of 1) nor an array or tensor (an
    array's comparison is ambiguous, a tensor's turns the result into a tensor)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _counts(targets: Any, name: str = "targets") -> tuple[NDArray[np.float64], int, Any]:
    """(positives per class, number of samples, a function returning a result in the input's array family), after
    :func:`_check_labels`."""
    if type(targets).__module__.split(".")[0] == "torch":
        import torch

        device = targets.device
        array = targets.detach()
        if array.dim() != 2:
            raise ValueError(f"{name}.shape == {tuple(array.shape)}: expected a 2-D label matrix (N, C)")
        if array.dtype.is_complex:
            raise TypeError(f"{name} has dtype {array.dtype}: expected numbers or booleans")
        if array.layout != torch.strided:  # sparse (COO, CSR, CSC, ...): its stored values by column, never densified
            coo = array.to_sparse_coo().coalesce()  # CSR -> COO keeps the nonzeros only; duplicates summed
            if coo.sparse_dim() != 2:
                raise TypeError(f"{name} is a hybrid sparse tensor ({coo.sparse_dim()} sparse, {coo.dense_dim()} dense "
                                "dimension): expected a label matrix (N, C) whose two dimensions are sparse, or a dense one")  # fmt: skip
            stored = coo.values().double()
            low, high = (float(v) for v in stored.aminmax()) if stored.numel() else (0.0, 0.0)
            if stored.numel() < array.shape[0] * array.shape[1] and not math.isnan(low):
                low = min(low, 0.0)  # the implicit zeros
            _check_labels(name, tuple(array.shape), low, high)
            columns = coo.indices()[1]
            counts = torch.zeros(array.shape[1], dtype=torch.float64, device=stored.device)
            n_pos = counts.index_add_(0, columns, stored).cpu().numpy()
        else:
            # amin/amax read the labels in their own dtype (NaN propagates); the float64 sums go a block of rows at a
            # time: a float64 copy of the whole matrix (sum(dtype=float64) makes one too) is 8x a bool one, on the GPU
            low, high = (float(array.amin()), float(array.amax())) if array.numel() else (0.0, 0.0)
            _check_labels(name, tuple(array.shape), low, high)
            rows = max(1, _BLOCK // max(1, array.shape[1]))
            sums = torch.zeros(array.shape[1], dtype=torch.float64, device=device)
            for block in array.split(rows):
                sums += block.sum(0, dtype=torch.float64)
            n_pos = sums.cpu().numpy()

        def wrap(result: NDArray[np.float64]) -> Any:
            return torch.as_tensor(result, dtype=torch.float32, device=device)

        return n_pos, int(array.shape[0]), wrap
    if hasattr(targets, "tocsr") and hasattr(targets, "nnz"):  # scipy.sparse: column sums without densifying
        if len(targets.shape) != 2:
            raise ValueError(f"{name}.shape == {targets.shape}: expected a 2-D label matrix (N, C)")
        csr = targets.tocsr()
        if not csr.has_canonical_format:  # a cell stored twice holds the sum (scipy's toarray, tocoo): check and count that
            csr = csr.copy()  # tocsr() of a CSR matrix is the caller's own matrix: never summed in place
            csr.sum_duplicates()
        stored = np.asarray(csr.data)  # the explicit values; the implicit ones are 0
        if stored.dtype.kind not in "biuf":
            raise TypeError(f"{name} has dtype {stored.dtype}: expected numbers or booleans")
        low, high = (float(stored.min()), float(stored.max())) if stored.size else (0.0, 0.0)
        if stored.size < targets.shape[0] * targets.shape[1] and not math.isnan(low):
            low = min(low, 0.0)  # the implicit zeros
        _check_labels(name, tuple(targets.shape), low, high)
        # bincount sums in float64: scipy's sum(axis=0) accumulates in the matrix's dtype, even with dtype=float64
        # (float32 soft labels, 0.1 in each of 4e6 rows: 4.5 % off); duplicates are summed, as scipy sums them
        n_pos = np.bincount(csr.indices, weights=stored.astype(np.float64, copy=False), minlength=int(targets.shape[1]))
        return n_pos.astype(np.float64, copy=False), int(targets.shape[0]), lambda r: r
    array = np.asarray(targets)
    if array.dtype.type.__module__ == "ml_dtypes":  # bfloat16, float8 (JAX's): numbers NumPy does not class as floats
        array = array.astype(np.float32)  # exact: float32 holds every one of their values
    if array.ndim != 2:
        raise ValueError(f"{name}.shape == {array.shape}: expected a 2-D label matrix (N, C)")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {array.dtype}: expected numbers or booleans")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    _check_labels(name, array.shape, low, high)
    return array.sum(axis=0, dtype=np.float64), int(array.shape[0]), lambda r: r


def _at_least_one(n_pos: NDArray[np.float64], what: str) -> NDArray[np.float64]:
    empty = np.flatnonzero(n_pos <= 0)
    if empty.size:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if empty.size > 10 else "")
        warnings.warn(
            f"{empty.size} label{'s have' if empty.size > 1 else ' has'} no positive example (columns {shown}); "
            f"{what} counts {'them' if empty.size > 1 else 'it'} as having one positive (n_pos = 1)",
            UserWarning,
            stacklevel=3,
        )
    return np.where(n_pos > 0, n_pos, 1.0)  # a soft count below 1 counts as it is; only an empty label is raised


def class_weights(targets: Any, method: Method = "inverse", beta: float = 0.999, normalize: bool = True) -> Any:
    r"""Per-class weights that grow as a label gets rarer.

    With :math:`n_c` the number of positives of class :math:`c`, :math:`N` samples and :math:`C` classes:

    - ``"inverse"``: :math:`w_c = N / (C\,n_c)`, scikit-learn's "balanced" scale
      (``sklearn.utils.class_weight.compute_class_weight``), King & Zeng (2001);
    - ``"sqrt_inverse"``: :math:`w_c = \sqrt{N / (C\,n_c)}`, a milder version (Mikolov et al., 2013, use the
      square root of frequencies for the same purpose);
    - ``"effective_number"``: :math:`w_c = (1 - \beta) / (1 - \beta^{n_c})`, the inverse "effective number of
      samples" of Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019. ``beta`` in
      [0, 1): 0 gives equal weights, ``beta -> 1`` approaches ``1 / n_c``, hence
      ``"inverse"`` up to a common factor (the same weights once normalized).

    Args:
        targets: label matrix (N, C) with values in [0, 1]: NumPy array, torch tensor or scipy.sparse matrix.
        method: one of ``"inverse"``, ``"sqrt_inverse"``, ``"effective_number"``.
        beta: the hyper-parameter of ``"effective_number"``.
        normalize: scale the weights to mean 1 over the classes (then only their ratios matter, and the loss
            keeps its scale).

    Returns:
        Weights of shape (C,), to pass as ``weight=`` to the loss.

    Example:
        >>> import numpy as np
        >>> class_weights(np.array([[1, 0], [1, 1], [1, 0], [1, 0]]), normalize=False)
        array([0.5, 2. ])
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid: expected one of {', '.join(map(repr, METHODS))}")
    if not _is_number(beta):
        raise TypeError(f"beta={beta!r} is a {type(beta).__name__}: expected a number in [0, 1)")
    if not 0 <= beta < 1:
        raise ValueError(f"beta={beta!r} is outside [0, 1): expected 0 <= beta < 1")
    n_pos, num_samples, wrap = _counts(targets)
    n_pos = _at_least_one(n_pos, "class_weights")
    num_classes = n_pos.size
    if method == "inverse":
        weights = num_samples / (num_classes * n_pos)
    elif method == "sqrt_inverse":
        weights = np.sqrt(num_samples / (num_classes * n_pos))
    else:
        weights = (1 - beta) / -np.expm1(n_pos * np.log(beta)) if beta > 0 else np.ones_like(n_pos)  # 1 - beta^n
    if normalize and weights.size:
        weights = weights / weights.mean()
    return wrap(weights)


def pos_weight(targets: Any, max_weight: float | None = None) -> Any:
    r"""Per-class ``pos_weight`` = :math:`n_{neg} / n_{pos}`, as ``torch.nn.BCEWithLogitsLoss`` documents it.

    It multiplies the positive term of each class so that positives and negatives carry equal total weight.

    Args:
        targets: label matrix (N, C) with values in [0, 1]: NumPy array, torch tensor or scipy.sparse matrix.
        max_weight: an upper bound for the weights (rare labels can otherwise get weights in the thousands).

    Returns:
        Weights > 0 of shape (C,), to pass as ``pos_weight=`` to the loss. A class whose every example is positive
        gets a tiny positive weight (``n_neg`` is taken as at least 1e-3) rather than 0, which the loss rejects.
    """
    if max_weight is not None and not _is_number(max_weight):
        raise TypeError(f"max_weight={max_weight!r} is a {type(max_weight).__name__}: expected a number > 0, or None for no bound")
    if max_weight is not None and not max_weight > 0:
        raise ValueError(f"max_weight={max_weight!r}: expected a number > 0, or None for no bound")
    n_pos, num_samples, wrap = _counts(targets)
    n_neg = np.maximum(num_samples - n_pos, 1e-3)
    weights = n_neg / _at_least_one(n_pos, "pos_weight")
    if max_weight is not None:
        weights = np.minimum(weights, max_weight)
    return wrap(weights)
