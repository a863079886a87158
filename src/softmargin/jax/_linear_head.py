"""The fused linear head in JAX: ``loss(hidden @ weight.T + bias, target)`` and its gradients without the N x C logits.

The labels are walked in chunks with ``lax.scan``: each chunk's logits are formed, passed through the one formula
(:func:`softmargin.jax._ops.element_rows`) and turned at once into their contributions to the gradients w.r.t.
``hidden`` (carried), ``weight`` and ``bias`` (stacked per chunk); only one chunk of logits and of their gradient
ever exists. A ``jax.custom_vjp``: for "mean" and "sum" the gradients are made in the forward walk and backward only
scales them (residuals: the parameters' and the features' sizes); for "none" backward walks again with the
incoming per-sample cotangent. Labels are padded to a multiple of the chunk; padded labels carry zero weight.
"""

from __future__ import annotations

import operator
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.sharding import PartitionSpec as P

from .. import _validation as V
from .._options import LossOptions, resolve
from . import _ops


def _walk(
    config: tuple[str, LossOptions, int, int], hidden: Any, weight: Any, bias: Any, target: Any, class_weight: Any,
    pos_weight: Any, row_scale: Any, need_grad: bool,
) -> tuple[Any, Any, Any, Any]:
    """Per-row losses (the weighted sums over the labels divided by C; in the weights' dtype, :func:`_weight_dtype`)
    and, if ``need_grad``, the gradients of ``sum_n row_scale[n] * C * loss_n`` w.r.t. hidden, weight and bias (None
    for those not made)."""
    reduction, options, num_labels, chunk = config
    cdt = _ops.compute_dtype(_logits_dtype(hidden, weight, bias))
    wdt = _weight_dtype(hidden, weight, bias, class_weight, pos_weight)
    num_rows, width = hidden.shape
    chunks = -(-num_labels // chunk)
    padded = chunks * chunk
    pad: Any = lambda a, fill=0: None if a is None else jnp.pad(a, [(0, padded - num_labels)] + [(0, 0)] * (a.ndim - 1), constant_values=fill)
    valid = jnp.arange(padded) < num_labels
    cw = valid.astype(wdt) if class_weight is None else pad(class_weight.astype(wdt))
    w_chunks = pad(weight).reshape(chunks, chunk, width)
    b_chunks = None if bias is None else pad(bias).reshape(chunks, chunk)
    per_chunk = {
        # each label's loss divided by C before its weight multiplies it and the row sums it, as the loss's XLA path:
        # the sum over the labels of the weighted losses overflows float32 where the sample's loss does not
        "w": w_chunks, "cw": cw.reshape(chunks, chunk), "share": (cw / num_labels).reshape(chunks, chunk),
        "b": b_chunks, "pw": None if pos_weight is None else pad(pos_weight.astype(wdt), 1).reshape(chunks, chunk),
        "start": jnp.arange(chunks) * chunk, "valid": valid.reshape(chunks, chunk),
    }  # fmt: skip
    sparse = isinstance(target, _ops.SparseRows)
    if not sparse:  # sliced per chunk in the scan; padded (a copy) only when C is not a multiple of the chunk
        target = target if padded == num_labels else jnp.pad(target, [(0, 0), (0, padded - num_labels)])
    h = hidden.astype(cdt)

    def step(carry: Any, c: Any) -> Any:
        row_sums, grad_hidden = carry
        logits = h @ c["w"].astype(cdt).T + (0 if c["b"] is None else c["b"].astype(cdt))
        if sparse:
            inside = (target.cols >= c["start"]) & (target.cols < c["start"] + chunk)
            cols = jnp.where(inside, target.cols - c["start"], chunk)  # outside the chunk: dropped
            values = jnp.ones(target.cols.shape, cdt) if target.values is None else target.values.astype(cdt)
            y = jnp.zeros((num_rows, chunk), cdt).at[target.rows, cols].set(values, mode="drop")
        else:
            y = lax.dynamic_slice_in_dim(target, c["start"], chunk, axis=1).astype(cdt)
        loss, grad = _ops.element_rows(logits, y, c["pw"], options, need_grad)
        loss = jnp.where(c["cw"] == 0, 0, loss * c["share"])
        row_sums = row_sums + loss.sum(-1)
        if not need_grad:
            return (row_sums, grad_hidden), None
        grad = grad * c["cw"]
        if padded != num_labels:  # a padded label's logit is h @ 0, NaN for an infinite feature: kept from hidden's
            grad = jnp.where(c["valid"], grad, 0)
        grad = (grad * row_scale[:, None]).astype(cdt)
        grad_hidden = grad_hidden + grad @ c["w"].astype(cdt)
        return (row_sums, grad_hidden), (grad.T @ h, grad.sum(0))

    init = (jnp.zeros(num_rows, wdt), jnp.zeros((num_rows, width), cdt))
    (init,) = _ops.match_varying(_ops.varying_axes(h, weight), init)  # inside shard_map: the carry varies like h
    (row_sums, grad_hidden), stacked = lax.scan(step, init, per_chunk)
    if not need_grad:
        return row_sums, None, None, None
    grad_weight = stacked[0].reshape(padded, width)[:num_labels].astype(weight.dtype)
    grad_bias = None if bias is None else stacked[1].reshape(padded)[:num_labels].astype(bias.dtype)
    return row_sums, grad_hidden.astype(hidden.dtype), grad_weight, grad_bias


def _logits_dtype(hidden: Any, weight: Any, bias: Any) -> Any:
    """The dtype of ``hidden @ weight.T + bias`` (JAX's promotion), the loss's on the full logits: bfloat16 features
    with a float32 head give float32, float32 features with a float64 head (x64) float64."""
    return jnp.result_type(*(a.dtype for a in (hidden, weight, bias) if a is not None))


def _weight_dtype(hidden: Any, weight: Any, bias: Any, class_weight: Any, pos_weight: Any) -> Any:
    """The dtype the per-label weights multiply in: the compute dtype, or float64 for a float64 ``class_weight`` or
    ``pos_weight`` (x64) with float32 logits, as the loss's (:func:`softmargin.jax._ops.weight_dtype`): narrowed,
    a weight beyond float32's range (1e39) became inf."""
    return _ops.weight_dtype(_ops.compute_dtype(_logits_dtype(hidden, weight, bias)), class_weight, pos_weight)


def _reduce(config: Any, per_sample: Any, dtype: Any) -> Any:
    reduction = config[0]
    if reduction == "none":
        return per_sample.astype(dtype)
    total = per_sample.sum()
    return (total / per_sample.shape[0] if reduction == "mean" else total).astype(dtype)


def _row_scale(config: Any, num_rows: int, cdt: Any) -> Any:
    reduction, _, num_labels, _ = config
    return jnp.full(num_rows, 1.0 / (num_labels * (num_rows if reduction == "mean" else 1)), cdt)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _head(config: Any, hidden: Any, weight: Any, bias: Any, target: Any, class_weight: Any, pos_weight: Any) -> Any:
    row_sums, *_ = _walk(config, hidden, weight, bias, target, class_weight, pos_weight, None, False)
    return _reduce(config, row_sums, _logits_dtype(hidden, weight, bias))


def _head_fwd(config: Any, hidden: Any, weight: Any, bias: Any, target: Any, class_weight: Any, pos_weight: Any) -> Any:
    # symbolic_zeros=True: each argument is a CustomVJPPrimal, whose ``perturbed`` says whether JAX differentiates
    # with respect to it. The head makes gradients for hidden, weight and bias only: asked for another, it refuses
    # (a zero cotangent would be a silently wrong gradient)
    for name, operand in (("target", target), ("class_weight", class_weight), ("pos_weight", pos_weight)):
        if _ops._perturbed(operand):
            raise ValueError(
                f"{name} is differentiated, but the fused linear head makes gradients for hidden, weight and bias "
                f"only ({name} is a constant to it): pass jax.lax.stop_gradient({name}), or take {name}'s gradient "
                f"from multilabel_soft_margin_loss(hidden @ weight.T + bias, ...)"
            )
    return _head_fwd_values(config, *(_ops._value(a) for a in (hidden, weight, bias, target, class_weight, pos_weight)))


def _head_fwd_values(config: Any, hidden: Any, weight: Any, bias: Any, target: Any, class_weight: Any, pos_weight: Any) -> Any:
    eager = config[0] != "none"  # "none": the cotangent differs per sample; walk again in backward
    dtype = _logits_dtype(hidden, weight, bias)
    scale = _row_scale(config, hidden.shape[0], _weight_dtype(hidden, weight, bias, class_weight, pos_weight))
    row_sums, *grads = _walk(config, hidden, weight, bias, target, class_weight, pos_weight, scale, eager)
    kept = (hidden, weight, bias, target, class_weight, pos_weight)
    return _reduce(config, row_sums, dtype), (tuple(grads) if eager else None, kept)


def _head_bwd(config: Any, residuals: Any, g: Any) -> tuple[Any, ...]:
    if isinstance(g, SymbolicZero):
        return (None, None, None, None, None, None)
    grads, kept = residuals
    hidden, weight, bias, target, class_weight, pos_weight = kept
    if grads is None:
        scale = _row_scale(config, hidden.shape[0], _weight_dtype(hidden, weight, bias, class_weight, pos_weight)) * g
        _, *grads = _walk(config, hidden, weight, bias, target, class_weight, pos_weight, scale, True)
    else:
        grads = [None if a is None else (a * g).astype(a.dtype) for a in grads]
    g_hidden, g_weight, g_bias = grads
    return (g_hidden, g_weight, g_bias, None, None, None)


_head.defvjp(_head_fwd, _head_bwd, symbolic_zeros=True)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _head_all(config: Any, hidden: Any, weight: Any, bias: Any, target: Any, class_weight: Any, pos_weight: Any) -> Any:
    """:func:`_head` without ``symbolic_zeros``, for ``shard_map`` (JAX 0.10 does not implement a custom_vjp with
    symbolic zeros under an un-jitted ``shard_map``): it cannot tell which operands JAX differentiates, so the
    constants' cotangents are NaN, never a silently wrong zero (under ``jit`` unused ones are dead code)."""
    row_sums, *_ = _walk(config, hidden, weight, bias, target, class_weight, pos_weight, None, False)
    return _reduce(config, row_sums, _logits_dtype(hidden, weight, bias))


def _head_all_fwd(config: Any, hidden: Any, weight: Any, bias: Any, target: Any, class_weight: Any, pos_weight: Any) -> Any:
    return _head_fwd_values(config, hidden, weight, bias, target, class_weight, pos_weight)


def _nan_like(a: Any) -> Any:
    floating = a is not None and not isinstance(a, _ops.SparseRows) and jnp.issubdtype(a.dtype, jnp.inexact)
    return jnp.full_like(a, jnp.nan) if floating else None


def _head_all_bwd(config: Any, residuals: Any, g: Any) -> tuple[Any, ...]:
    g_hidden, g_weight, g_bias, *_ = _head_bwd(config, residuals, g)
    _, kept = residuals
    return (g_hidden, g_weight, g_bias, *(_nan_like(a) for a in kept[3:]))


_head_all.defvjp(_head_all_fwd, _head_all_bwd)


def linear_multilabel_soft_margin_loss(
    hidden: Any,
    weight: Any,
    bias: Any,
    target: Any,
    *,
    class_weight: Any = None,
    pos_weight: Any = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    chunk_size: int = 4096,
    options: LossOptions | None = None,
    validate: bool = True,
) -> jax.Array:
    r"""``multilabel_soft_margin_loss(hidden @ weight.T + bias, target)`` without ever holding the N x C logits.

    Args:
        hidden: (N, H) features, float32 / bfloat16 / float64.
        weight, bias: the head's parameters, (C, H) and (C,) (``bias`` may be None).
        target: (N, C) dense array, or sparse positives (a ``BCOO`` or label lists; see
            :func:`softmargin.jax.multilabel_soft_margin_loss`), the way to go for very many labels.
        class_weight, pos_weight: (C,) per-label weights (the loss's ``weight`` and ``pos_weight``; a float64 one
            (x64) is applied in float64 with float32 logits, as the loss applies it).
        reduction, label_smoothing, gamma_pos, gamma_neg, clip, options, validate: as in the loss.
        chunk_size: labels per chunk; the temporaries are a few (N, chunk_size) arrays.

    Returns:
        The loss, as :func:`softmargin.jax.multilabel_soft_margin_loss` would give on the full logits (in their
        dtype: ``hidden``'s, ``weight``'s and ``bias``'s promoted, computed in float32 or float64); gradients
        w.r.t. ``hidden``, ``weight`` and ``bias`` (the target and the per-label weights are constants).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from softmargin.jax import linear_multilabel_soft_margin_loss
        >>> h, W, b = jnp.ones((2, 4)), jnp.zeros((100_000, 4)), jnp.zeros(100_000)
        >>> loss = linear_multilabel_soft_margin_loss(h, W, b, [[3, 17], [99_999]])
        >>> round(float(loss), 4)
        0.6931
    """
    from . import _as_array, _check_range, _is_sparse, _kind, _sparse_rows

    V.check_reduction(reduction)
    resolved = resolve(options, label_smoothing, gamma_pos, gamma_neg, clip, api="jax")
    hidden, weight = _as_array("hidden", hidden), _as_array("weight", weight)
    for name, value in (("hidden", hidden), ("weight", weight)):
        V.check_input_kind(name, _kind(value.dtype), value.dtype)
    if hidden.ndim != 2 or weight.ndim != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"hidden.shape == {tuple(hidden.shape)}, weight.shape == {tuple(weight.shape)}: expected (N, H) and (C, H)"
        )
    chunk = None if isinstance(chunk_size, (bool, float)) else _index(chunk_size)  # NumPy ints too, as torch's head
    if chunk is None or chunk < 1:
        raise ValueError(f"chunk_size={chunk_size!r}: expected a positive integer")
    num_rows, num_labels = int(hidden.shape[0]), int(weight.shape[0])
    arrays = {}
    for name, value in (("bias", bias), ("class_weight", class_weight), ("pos_weight", pos_weight)):
        if value is not None:
            value = _as_array(name, value)
            if tuple(value.shape) != (num_labels,):
                raise ValueError(f"{name}.shape == {tuple(value.shape)}, expected ({num_labels},): one per label")
        arrays[name] = value
    if _is_sparse(target):
        y: Any = _sparse_rows(target, (num_rows, num_labels), validate)
    else:
        y = _as_array("target", target)
        V.check_target_kind(_kind(y.dtype), y.dtype)
        V.check_same_shape("target", y.shape, (num_rows, num_labels))
        if validate and y.size:
            _check_range("target", y, "[0, 1]", lambda a: (a >= 0) & (a <= 1))
    if validate:
        if arrays["class_weight"] is not None:
            _check_range("class_weight", arrays["class_weight"], "the finite range [0, inf)", lambda a: jnp.isfinite(a) & (a >= 0))
        if arrays["pos_weight"] is not None:
            _check_range("pos_weight", arrays["pos_weight"], "the finite range (0, inf)", lambda a: jnp.isfinite(a) & (a > 0))
    if num_rows == 0 or num_labels == 0:  # nothing to walk (it divided by zero): the loss of the empty logits, whose
        # value is torch's (NaN for the mean of no sample, or over no label)
        from . import multilabel_soft_margin_loss

        logits = hidden @ weight.T + (0 if arrays["bias"] is None else arrays["bias"])
        dense = jnp.zeros(logits.shape, logits.dtype) if isinstance(y, _ops.SparseRows) else y
        return multilabel_soft_margin_loss(logits, dense, arrays["class_weight"], pos_weight=arrays["pos_weight"],
                                           reduction=reduction, options=resolved, validate=False)  # type: ignore[arg-type]  # fmt: skip
    # inside shard_map, an operand given replicated (P(): the weight of a data-parallel head, or the hidden
    # features of a label-parallel one) is cast to vary like the rest, so that its cotangent is psum'ed
    operands = (hidden, weight, arrays["bias"], y, arrays["class_weight"], arrays["pos_weight"])
    operands = _ops.match_varying(_ops.varying_axes(*operands), *operands)
    config = (reduction, resolved, num_labels, min(chunk, max(num_labels, 1)))
    op = _head_all if _ops.varying_axes(*operands) else _head  # inside shard_map: no symbolic zeros
    mesh = _explicit_mesh(*operands)
    if mesh is None:
        result: jax.Array = op(config, *operands)
        return result
    # arrays sharded over Explicit axes (jax.make_mesh's default): the walk's products over the rows would be
    # refused as ambiguous ("Contracting dimensions are sharded"); it runs with those axes Auto, its result sharded
    # as the loss of the rows is (a scalar: replicated; "none": as hidden's rows)
    spec = tuple(jax.typeof(operands[0]).sharding.spec)
    out = P() if reduction != "none" else P(spec[0] if spec else None)
    with jax.sharding.use_abstract_mesh(mesh):
        result = jax.sharding.auto_axes(lambda *a: op(config, *a), out_sharding=out)(*operands)
    return result


def _index(value: Any) -> int | None:
    """``value`` as an int if it is one (a Python or NumPy integer), else None."""
    try:
        return operator.index(value)
    except TypeError:
        return None


def _explicit_mesh(*operands: Any) -> Any:
    """The (abstract) mesh of an operand sharded over an Explicit axis, else None."""
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    for leaf in jax.tree_util.tree_leaves(operands):
        try:
            mesh = jax.typeof(leaf).sharding.mesh
        except (AttributeError, TypeError):
            continue
        if explicit is not None and explicit in tuple(getattr(mesh, "axis_types", ())):
            return mesh
    return None
