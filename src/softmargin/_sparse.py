"""Sparse targets: each sample's positive labels (and, optionally, their soft values), never a dense N x C matrix.

Accepted forms (``as_sparse_targets``): a torch sparse CSR (or COO, CSC, BSR, BSC) tensor, a scipy.sparse matrix, a tuple
``(indptr, indices)`` or ``(indptr, indices, values)``, or a list of label-index lists. They become one
:class:`SparseTargets` in CSR form with the indices of every row ascending and unique. Its rows can be made dense a
chunk at a time (``targets[start:stop]``), which is how the chunked paths use it; the CPU kernel reads the CSR
arrays directly and densifies one block of one row at a time.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class SparseTargets:
    """CSR positives of an (N, C) target: ``indptr`` (N + 1), ``indices`` and ``values`` (None: all ones), as NumPy
    arrays or torch tensors (``xp`` says which)."""

    indptr: Any
    indices: Any
    values: Any
    shape: tuple[int, int]
    xp: Any

    @property
    def dtype(self) -> Any:
        return self.xp.uint8 if self.values is None else self.values.dtype

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, rows: slice) -> Any:
        """Rows ``start:stop`` as a dense chunk (float64 for NumPy, the values' dtype or uint8 for torch)."""
        start, stop, _ = rows.indices(self.shape[0])
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        counts = self.indptr[start + 1:stop + 1] - self.indptr[start:stop]
        if self.xp.__name__ == "numpy":
            dense = np.zeros((stop - start, self.shape[1]), dtype=np.float64)
            row_ids = np.repeat(np.arange(stop - start), counts)
            dense[row_ids, self.indices[lo:hi]] = 1.0 if self.values is None else self.values[lo:hi]
            return dense
        torch = self.xp
        dense = torch.zeros((stop - start, self.shape[1]), dtype=self.dtype, device=self.indices.device)
        row_ids = torch.repeat_interleave(torch.arange(stop - start, device=self.indices.device), counts)
        dense[row_ids, self.indices[lo:hi]] = 1 if self.values is None else self.values[lo:hi]
        return dense

    def value_range(self) -> tuple[float, float]:
        if self.values is None or self.nnz == 0:
            return 1.0, 1.0
        return float(self.values.min()), float(self.values.max())


def is_sparse_target(target: Any, lists: bool) -> bool:
    """Whether ``target`` is one of the sparse forms. ``lists``: a list means label lists (the torch API, whose dense
    targets are tensors); the NumPy API takes nested lists as dense targets, so there a list is not sparse."""
    if isinstance(target, SparseTargets) or isinstance(target, tuple):
        return True
    if isinstance(target, list):
        return lists
    if hasattr(target, "tocsr") and hasattr(target, "nnz"):  # scipy.sparse
        return True
    layout = getattr(target, "layout", None)
    return layout is not None and str(layout) in ("torch.sparse_csr", "torch.sparse_coo", "torch.sparse_csc", "torch.sparse_bsr", "torch.sparse_bsc")


def _label_id(value: Any) -> int:
    """A label id from a label list: an integer (a Python or NumPy int, a 0-d integer tensor), never a float or bool,
    which ``int()`` would truncate or take as 0 and 1."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"target: a label list holds {value!r} ({type(value).__name__}): expected integer class indices")


#: how each API that reads a list as label lists says to pass a dense target and an all-positive one instead
_DENSE_ADVICE = {
    "torch": "pass a dense target as a tensor (torch.tensor(target)), and every label positive as torch.ones",
    "jax": "pass a dense target as an array (jnp.asarray(target)), and every label positive as jnp.ones",
}


def as_sparse_targets(
    target: Any, shape: tuple[int, int], xp: Any, device: Any = None, api: str = "torch"
) -> SparseTargets:
    """Normalise any accepted form to :class:`SparseTargets` of ``shape`` = (rows, classes) in namespace ``xp``;
    ``api`` (``"torch"`` or ``"jax"``) is the caller's, for the advice in the error messages."""
    num_rows, num_classes = shape
    values: np.ndarray | None = None
    if isinstance(target, SparseTargets):
        indptr, indices, values = _to_numpy(target.indptr), _to_numpy(target.indices), _maybe(target.values)
        given = target.shape
    elif hasattr(target, "tocsr") and hasattr(target, "nnz"):
        csr = target.tocsr()
        indptr, indices, values, given = csr.indptr, csr.indices, csr.data, tuple(csr.shape)
    elif getattr(target, "layout", None) is not None:
        # CSC, BSR and BSC (which torch.sparse makes as readily) through COO: they failed deep in the dense path
        # ("Sparse CSC tensors do not have is_contiguous")
        layout = str(target.layout)
        csr = target.detach()
        csr = csr if layout == "torch.sparse_csr" else (csr if layout == "torch.sparse_coo" else csr.to_sparse_coo()).to_sparse_csr()
        indptr, indices = _to_numpy(csr.crow_indices()), _to_numpy(csr.col_indices())
        values, given = _to_numpy(csr.values()), tuple(csr.shape)
    elif isinstance(target, tuple):
        if len(target) not in (2, 3):
            raise ValueError(f"target is a tuple of {len(target)}: expected (indptr, indices) or (indptr, indices, values)")
        kinds = [type(part).__name__ for part in target if isinstance(part, (list, tuple))]
        if kinds:  # ((0, 1, 2), (3, 4)) would read as indptr (0, 1, 2) and indices (3, 4): two rows, not two label lists
            raise TypeError(
                f"target is a tuple holding a {kinds[0]}: (indptr, indices[, values]) takes arrays or tensors; "
                "pass label lists as a list of lists"
            )
        indptr, indices = np.asarray(_to_numpy(target[0])), np.asarray(_to_numpy(target[1]))
        for name, part in (("indptr", indptr), ("indices", indices)):
            if part.dtype.kind not in "iu":
                raise TypeError(f"sparse target: {name} has dtype {part.dtype}: expected integers")
        values = None if len(target) == 2 else np.asarray(_to_numpy(target[2]))
        shapes = {"indices": indices.shape, "values": None if values is None else values.shape}
        for name, part_shape in shapes.items():
            if part_shape is not None and len(part_shape) != 1:  # the kernel would read an (nnz, 1) column, the chunked path fail
                raise ValueError(f"sparse target: {name} has shape {part_shape}: expected one dimension, one entry per positive")
        given = (len(indptr) - 1, num_classes)
    elif isinstance(target, list):
        try:
            lengths = [len(labels) for labels in target]
        except TypeError:  # [0, 3] for one sample failed here as "object of type 'int' has no len()"
            flat = next((labels for labels in target if not hasattr(labels, "__len__") or np.ndim(labels) == 0), None)
            if flat is None:  # a len() that failed for another reason: its own error
                raise
            raise TypeError(
                f"target is a list holding a {type(flat).__name__} ({flat!r}): expected label lists, one list per "
                f"sample ([[0, 3]] for one sample with labels 0 and 3)"
            ) from None
        if num_classes and lengths and all(length == num_classes for length in lengths):
            raise ValueError(
                f"target is a list of {len(target)} rows of {num_classes} entries, as many as the input's classes: "
                f"read as label lists it gives every sample every label, read as a dense 0/1 target it does not; "
                f"{_DENSE_ADVICE[api]}"
            )
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.fromiter((_label_id(i) for labels in target for i in labels), dtype=np.int64, count=int(indptr[-1]))
        given = (len(target), num_classes)
    else:
        raise TypeError(f"target is a {type(target).__name__}: expected a tensor, a sparse matrix, (indptr, indices) or a list of label lists")
    if len(given) != 2 or tuple(int(v) for v in given) != (num_rows, num_classes):
        raise ValueError(
            f"sparse target has shape {tuple(given)}, expected ({num_rows}, {num_classes}) = input.shape as (rows, classes): "
            f"targets are never broadcast"
        )
    # contiguous: the CPU kernel reads the arrays by address, and a strided view (a column of np.nonzero's result,
    # a[::2]) would be read as its underlying buffer, indices that are not the given ones (or out of range)
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    if indptr.shape != (num_rows + 1,) or indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] != len(indices):
        raise ValueError(f"sparse target: indptr must be {num_rows + 1} non-decreasing offsets from 0 to {len(indices)}")
    if len(indices) and (indices.min() < 0 or indices.max() >= num_classes):
        bad = int(indices[(indices < 0) | (indices >= num_classes)][0])
        raise ValueError(f"sparse target has a label index {bad} outside [0, {num_classes}): expected class indices")
    if values is not None and np.asarray(values).dtype.kind not in "biuf":
        # a complex matrix lost its imaginary parts to the float64 conversion below (a dense one is refused)
        raise TypeError(f"sparse target has values of dtype {np.asarray(values).dtype}: expected a real (floating, integer or boolean) dtype")
    rows = np.repeat(np.arange(num_rows), np.diff(indptr))
    order = np.lexsort((indices, rows))
    if (order != np.arange(len(order))).any():  # sort each row's labels, as the kernel walks them in order
        indices = indices[order]
        values = None if values is None else np.asarray(values)[order]
    duplicate = (np.diff(indices) == 0) & (np.diff(rows) == 0)
    if duplicate.any():
        at = int(np.flatnonzero(duplicate)[0])
        raise ValueError(f"sparse target repeats label {int(indices[at])} in row {int(rows[at])}: expected each label once")
    if values is not None:
        values = np.ascontiguousarray(values, dtype=np.float64)
        if len(values) != len(indices):
            raise ValueError(f"sparse target has {len(values)} values for {len(indices)} indices")
        if np.all(values == 1):
            values = None  # hard labels: the fast path
    if xp.__name__ == "numpy":
        return SparseTargets(indptr, indices, values, (num_rows, num_classes), xp)
    torch = xp
    to = lambda a, dtype: torch.as_tensor(a, dtype=dtype, device=device)
    return SparseTargets(
        to(indptr, torch.int64), to(indices, torch.int64), None if values is None else to(values, torch.float64),
        (num_rows, num_classes), xp,
    )  # fmt: skip


def _to_numpy(a: Any) -> Any:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return a


def _maybe(a: Any) -> Any:
    return None if a is None else _to_numpy(a)
