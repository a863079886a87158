"""JAX API: the multi-label soft-margin loss as a ``jax.custom_vjp`` (gradient computed in the forward pass), with the
NumPy and PyTorch backends' options, semantics and error messages; and the fused linear head.

Works under ``jax.jit``, ``grad``, ``value_and_grad``, ``vmap`` and ``shard_map``, and for second derivatives (grad
of grad, ``jax.hessian``, ``jax.jvp`` of ``jax.grad``; ``jax.jvp`` of the loss itself is a ``custom_vjp``'s limit);
float16, bfloat16, float32 and (with ``jax_enable_x64``) float64. The operator and its two implementations are in
:mod:`softmargin.jax._ops`.

Value checks (target in [0, 1], weights finite and non-negative) raise ``ValueError`` on concrete arrays. Under a
transformation the values are not known at trace time, so with ``validate=True`` the checks are staged as
``jax.experimental.checkify`` checks: wrap the jitted function in ``checkify.checkify`` to get them (as an error
value, ``err.throw()`` raises), or pass ``validate=False`` to leave them out. A staged check outside ``checkify``
fails at trace time (JAX's "Cannot abstractly evaluate a checkify.check which was not functionalized"): the checks
are never silently dropped. With the callback implementation the fused kernel checks a traced target's range as it
reads it, so under ``checkify`` the target check costs no pass of its own (XLA's takes one).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from .._extras import needed

with needed("jax", by="softmargin.jax"):
    import jax
    import jax.numpy as jnp
    from jax.experimental import checkify

from .. import _validation as V
from .._options import LossOptions, resolve
from .._sparse import as_sparse_targets
from . import _ops
from ._linear_head import linear_multilabel_soft_margin_loss
from ._ops import IMPLS, SparseRows

__all__ = ["multilabel_soft_margin_loss", "linear_multilabel_soft_margin_loss", "IMPLS"]

Reduction = Literal["none", "mean", "sum"]


def _kind(dtype: Any) -> str:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "bool"
    for kind, family in (("float", jnp.floating), ("int", jnp.integer), ("complex", jnp.complexfloating)):
        if jnp.issubdtype(dtype, family):
            return kind
    return "other"


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _as_array(name: str, value: Any) -> Any:
    if not _is_array(value):
        raise TypeError(f"{name} is a {type(value).__name__}: expected a jax.Array (or a NumPy array)")
    return value if isinstance(value, jax.Array) else jnp.asarray(value)


def _traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _is_bcoo(target: Any) -> bool:
    return type(target).__name__ == "BCOO" and hasattr(target, "indices") and hasattr(target, "data")


def _is_sparse(target: Any) -> bool:
    """Label lists, ``(indptr, indices[, values])``, a scipy.sparse matrix or a ``jax.experimental.sparse.BCOO``."""
    if _is_bcoo(target) or isinstance(target, (list, tuple)):
        return True
    return hasattr(target, "tocsr") and hasattr(target, "nnz")


def _sparse_rows(target: Any, shape: tuple[int, ...], validate: bool) -> SparseRows:
    """Any sparse form as :class:`SparseRows` over the input's (rows, classes), checked like the other backends'."""
    num_rows, num_classes = math.prod(shape[:-1]), shape[-1]
    if not _is_bcoo(target):
        csr = as_sparse_targets(target, (num_rows, num_classes), np, api="jax")  # checks shape, indices, duplicates
        if validate:
            V.check_sparse_target_values(csr)
        rows = np.repeat(np.arange(num_rows, dtype=np.int32), np.diff(csr.indptr))
        values = None if csr.values is None else jnp.asarray(csr.values)
        return SparseRows(jnp.asarray(rows), jnp.asarray(csr.indices, dtype=jnp.int32), values)
    if tuple(target.shape) != tuple(shape) or target.n_batch or target.n_dense:
        raise ValueError(
            f"sparse target has shape {tuple(target.shape)} (n_batch={target.n_batch}, n_dense={target.n_dense}), "
            f"expected input.shape == {tuple(shape)} with n_batch=0 and n_dense=0: targets are never broadcast"
        )
    if not target.unique_indices:  # BCOO sums duplicates; so do we (then the value check sees the sums)
        target = target.sum_duplicates(nse=target.nse)
    if validate:
        _check_range("target", target.data, "[0, 1]", lambda a: (a >= 0) & (a <= 1))
    coords = target.indices
    strides = np.cumprod((shape[:-1] + (1,))[::-1])[::-1][1:] if len(shape) > 1 else np.zeros(0, np.int64)
    flat = (coords[:, :-1] * jnp.asarray(strides, coords.dtype)).sum(1) if len(shape) > 1 else jnp.zeros_like(coords[:, 0])
    return SparseRows(flat.astype(jnp.int32), coords[:, -1].astype(jnp.int32), target.data)


def _check_range(name: str, array: Any, expected: str, ok: Any) -> None:
    """Host check (ValueError naming the first bad value) on a concrete array, a checkify check on a traced one."""
    if _traced(array):
        checkify.check(
            jnp.all(ok(array)),
            f"{name} has values outside {expected} or NaN (min {{}}, max {{}}: a NaN may not show there); expected every "
            f"{name} value in {expected}",
            array.min(), array.max(),
        )  # fmt: skip
        return
    host = np.asarray(array)
    if host.dtype.name == "bfloat16":
        host = host.astype(np.float32)
    if name == "target" or name.startswith("sparse"):
        V.check_target_values(host)
    else:
        V.check_weight_values(name, host, positive=name == "pos_weight")


def _operand(name: str, value: Any, shape: tuple[int, ...]) -> Any:
    if value is None:
        return None
    array = _as_array(name, value)
    if name == "mask":
        V.check_mask_kind(_kind(array.dtype), array.dtype)
    else:
        V.check_target_kind(_kind(array.dtype), array.dtype, name)
    V.check_broadcastable(name, array.shape, shape)
    return array


def multilabel_soft_margin_loss(
    input: Any,
    target: Any,
    weight: Any = None,
    reduction: Reduction = "mean",
    *,
    pos_weight: Any = None,
    mask: Any = None,
    label_smoothing: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    options: LossOptions | None = None,
    validate: bool = True,
    impl: str = "auto",
) -> jax.Array:
    r"""Multi-label soft-margin loss of logits against targets in [0, 1], differentiable with one fused pass.

    .. math::
        \ell_n = \frac{1}{C}\sum_{c=1}^{C} w_{nc}\,\bigl(\operatorname{softplus}(x_{nc}) - y_{nc}\,x_{nc}\bigr)

    Args:
        input: logits of shape ``(C,)`` or ``(N, ..., C)``; float16, bfloat16, float32 or float64 (x64).
        target: same shape as ``input`` (never broadcast), values in [0, 1] (soft targets allowed); or the positives
            only: a ``jax.experimental.sparse.BCOO`` of the input's shape, a list of label-index lists (one per
            sample, samples = ``input.shape[:-1]`` flattened), ``(indptr, indices[, values])`` or a scipy.sparse
            matrix. A sparse target is never made dense; it is not differentiable.
        weight: non-negative weights broadcastable to ``input``, usually one per class, shape ``(C,)``.
        reduction: ``"none"`` (shape ``input.shape[:-1]``), ``"mean"`` or ``"sum"``.
        pos_weight: weights > 0 of the positive term, broadcastable to ``input`` (``BCEWithLogitsLoss``'s).
        mask: boolean, broadcastable to ``input``: True where a label is observed. Missing labels contribute
            nothing; each sample's loss is the mean over its observed labels; samples with none are left out of
            the batch mean (their ``"none"`` loss is 0; a batch with nothing observed has loss 0).
        label_smoothing: ``eps`` in [0, 1): targets become ``y * (1 - eps) + eps / 2``.
        gamma_pos, gamma_neg, clip: asymmetric focusing (Ridnik et al., ICCV 2021): a positive's term is weighted
            by ``(1 - p)^gamma_pos``, a negative's by ``p_m^gamma_neg`` with ``p_m = max(p - clip, 0)`` used in its
            log term too; ``gamma_pos = gamma_neg = g, clip = 0`` is the focal loss. See docs/imbalance.md.
        options: the four options above as one :class:`softmargin.LossOptions` (then leave them at their defaults).
        validate: check the target range and the weights: on concrete arrays at once (``ValueError``); on traced
            ones as ``jax.experimental.checkify`` checks (wrap the jitted function in ``checkify.checkify``, or pass
            ``validate=False`` under ``jit``). Shape and dtype checks always run, at trace time.
        impl: ``"xla"`` (fused jax.numpy, any device), ``"callback"`` (the NumPy backend's fused C kernel on the
            host through ``jax.experimental.buffer_callback``, writing into XLA's result buffers; CPU) or
            ``"auto"`` (the callback on the CPU for float16/float32/float64 from 32Ki logits where the kernel is built,
            else XLA).

    Returns:
        The loss in ``input``'s dtype (half precision is computed in float32): a scalar, or ``input.shape[:-1]``
        for ``"none"``. Infinite logits give 0 for a right prediction and ``inf`` for a wrong one, with finite
        gradients, except a negative's term with ``clip > 0``: its probability margin keeps ``p_m <= 1 - clip``, so
        ``x = inf`` gives the finite ``-p_m^gamma_neg log(1 - p_m)`` at ``p_m = 1 - clip`` (2.44 for
        ``y = 0, gamma_neg=4, clip=0.05``) and gradient 0. NaN logits give NaN; an element the loss drops (weight
        exactly 0, or masked out) contributes 0 to the loss even there, and to the target's and pos_weight's
        gradients, but its input gradient stays NaN, as torch's and the NumPy backend's do.

    The gradient w.r.t. ``input`` is made in the forward pass and only scaled in the backward pass; ``target``,
    ``weight`` and ``pos_weight`` have exact gradients too, computed only when asked for. Second and higher
    derivatives (grad of grad, ``jax.hessian``, ``jax.jvp`` of ``jax.grad``) work with either implementation: the
    callback's forward pass then takes its tangents from the XLA implementation, which first-order use never runs.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from softmargin.jax import multilabel_soft_margin_loss
        >>> x = jnp.array([[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]])
        >>> y = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> round(float(multilabel_soft_margin_loss(x, y, weight=jnp.array([0.5, 2.0, 1.5]))), 5)
        1.18012
        >>> grad = jax.jit(jax.grad(lambda x: multilabel_soft_margin_loss(x, y, validate=False)))(x)
    """
    reduction = V.check_reduction(reduction)  # type: ignore[assignment]
    resolved = resolve(options, label_smoothing, gamma_pos, gamma_neg, clip, api="jax")
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not valid: expected one of {', '.join(repr(i) for i in IMPLS)}")
    x = _as_array("input", input)
    V.check_input_kind("input", _kind(x.dtype), x.dtype)
    V.check_input_ndim(x.shape)
    shape = tuple(int(s) for s in x.shape)
    y: Any
    if _is_sparse(target):
        y = _sparse_rows(target, shape, validate)
    else:
        y = _as_array("target", target)
        V.check_target_kind(_kind(y.dtype), y.dtype)
        V.check_same_shape("target", y.shape, shape)
    w = _operand("weight", weight, shape)
    pw = _operand("pos_weight", pos_weight, shape)
    m = _operand("mask", mask, shape)
    axes = _ops.varying_axes(x, y, w, pw, m)  # inside shard_map: the mesh axes the operands vary over
    resolved_impl = _ops.resolve_impl(impl, x, axes)
    dense = not isinstance(y, SparseRows)
    # a traced target going to the callback: the kernel checks its range as it reads it (no extra pass)
    report_target = dense and validate and y.size > 0 and _traced(y) and resolved_impl == "callback"
    if dense and validate and y.size and not report_target:
        _check_range("target", y, "[0, 1]", lambda a: (a >= 0) & (a <= 1))
    if validate:
        finite = lambda a: jnp.isfinite(a)
        if w is not None and w.size:
            _check_range("weight", w, "the finite range [0, inf)", lambda a: finite(a) & (a >= 0))
        if pw is not None and pw.size:
            _check_range("pos_weight", pw, "the finite range (0, inf)", lambda a: finite(a) & (a > 0))
    # a replicated weight (or target) in shard_map: cast to vary like the rest, so its cotangent is psum'ed
    x, y, w, pw, m = _ops.match_varying(axes, x, y, w, pw, m)
    config = _ops.Config(reduction, resolved, resolved_impl, report_target)
    result: jax.Array = _ops.loss(config, x, y, w, pw, m)
    if report_target:
        result, flag = result
        _check_reported_target(flag, y)
    return result


def _check_reported_target(flag: Any, y: Any) -> None:
    """The checkify check of a traced target whose range the kernel reported (``flag`` 1: a value outside [0, 1]
    or NaN); its min and max, for the message, are computed only then."""
    bad = flag != 0
    low, high = jax.lax.cond(
        bad, lambda a: (a.min(), a.max()), lambda a: (jnp.zeros((), a.dtype), jnp.zeros((), a.dtype)), y
    )  # fmt: skip
    checkify.check(
        ~bad, "target has values outside [0, 1] (min {}, max {}); expected every target value in [0, 1]", low, high
    )
