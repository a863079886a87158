"""The JAX operator: a ``jax.custom_vjp`` whose forward pass computes the loss and the gradient together.

Two implementations of the forward pass, chosen explicitly (``impl``) or by :func:`resolve_impl`:

- ``"xla"``: :mod:`softmargin._formula` written against ``jax.numpy``; XLA fuses the element-wise work and the
  row sums into one pass over the logits, on any device.
- ``"callback"``: a ``jax.experimental.buffer_callback`` into the NumPy backend's
  :func:`softmargin.numpy.multilabel_soft_margin_loss_and_grad` (CPU only), so JAX gets whatever the NumPy backend
  runs (the fused C kernel where it uses one). The host function receives XLA's buffers as NumPy arrays and the
  NumPy backend writes the loss and the gradient into XLA's result buffers (``out=``): one pass, no temporary.
  Under ``checkify`` (``validate=True`` on a traced target) it also returns the kernel's verdict on the target's
  range, read as it reads the target (``Config.report_target``), so the check costs no pass of its own.

Either way the residual saved for backward is the gradient itself (input-sized, input dtype), and backward only
scales it by the incoming cotangent, as the torch operator does. A second derivative differentiates the forward
pass's outputs (the loss and that residual): XLA's are ordinary JAX operations; the callback's have a
``jax.custom_jvp`` (:func:`_callback_op`) whose tangents are the JVP of :func:`xla_forward`, so grad of grad,
``jax.hessian`` and forward-over-reverse work on either path, and first-order use runs the callback alone. The
cotangents of ``target``, ``weight`` and ``pos_weight`` are exact too, computed only when JAX asks for them
(``CustomVJPPrimal.perturbed``): the loss is linear in each, so they follow from the element loss at ``y = 1`` and
``y = 0``. No validation happens here: the public entry point (:mod:`softmargin.jax`) validates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from .._formula import _linear, element_loss_and_grad, element_loss_and_grad_options
from .._options import LossOptions

IMPLS = ("auto", "xla", "callback")

#: Below this many logits ``"auto"`` takes XLA on the CPU too: a host callback's fixed cost (about 0.1 ms) is more
#: than XLA's whole step there (bench-jax.csv: 32 x 10 and 64 x 80 faster with XLA; 256 x 1000 with the callback).
CALLBACK_MIN_ELEMENTS = 1 << 15


class SparseRows(NamedTuple):
    """The positives of an (N, C) target as coordinates: ``rows`` and ``cols`` (nnz,) int32, ``values`` (nnz,) or
    None (all ones). A pytree, so it passes through ``jit`` (nnz is static, as in ``jax.experimental.sparse``)."""

    rows: Any
    cols: Any
    values: Any


@dataclass(frozen=True)
class Config:
    """What the operator needs to know at trace time (hashable: a ``nondiff_argnums`` argument)."""

    reduction: str
    options: LossOptions
    impl: str  # "xla" or "callback" (resolved)
    #: the callback also returns whether a dense target lies outside [0, 1] (int32 0/1; the operator then returns
    #: (loss, flag)), as the kernel sees while reading it: the public function's checkify check with no extra pass
    report_target: bool = False


def compute_dtype(dtype: Any) -> Any:
    """float64 stays float64; float16, bfloat16 and float32 are computed in float32."""
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def numpy_backend_is_fused() -> bool:
    """Whether :mod:`softmargin.numpy` runs on the fused C kernel here: it then holds ``softmargin.kernels.cpu`` as
    ``cpu`` and the kernel loads. (Before the NumPy backend moved onto the kernel it computed in float64 chunks,
    about 7x slower than XLA's fusion.)"""
    from .. import numpy as backend

    cpu = getattr(backend, "cpu", None)
    return cpu is not None and cpu.kernel() is not None


def varying_axes(*operands: Any) -> frozenset[str]:
    """The mesh axes of an enclosing ``shard_map`` over which any of ``operands`` (arrays, pytrees, None) varies:
    their types' varying manual axes (``manual_axis_type.varying`` in JAX 0.10, ``vma`` in earlier releases);
    empty outside ``shard_map``."""
    axes: set[str] = set()
    for leaf in jax.tree_util.tree_leaves(operands):
        try:
            aval = jax.typeof(leaf)
        except (AttributeError, TypeError):
            continue
        manual = getattr(aval, "manual_axis_type", None)
        axes.update(getattr(manual, "varying", ()) or getattr(aval, "vma", ()) or ())
    return frozenset(axes)


def match_varying(axes: frozenset[str], *operands: Any) -> tuple[Any, ...]:
    """Each operand made to vary over ``axes`` (``lax.pcast(..., to="varying")``) where it does not already.

    Inside ``shard_map`` the custom_vjp's backward pass returns, for a replicated operand (a weight given with
    ``P()``), a cotangent computed from the shard's rows: it varies over the mesh axis, and JAX refuses it as the
    cotangent of an operand that does not. Cast first, the operator sees operands of one type, and the transpose of
    the cast is the ``psum`` over the mesh axis that turns the shards' cotangents into the replicated operand's."""
    pcast: Any = getattr(lax, "pcast", None)  # JAX >= 0.8; lax.pvary(a, axes) before (removed in 0.10)
    if pcast is None and hasattr(lax, "pvary"):
        pcast = lambda a, missing, to: lax.pvary(a, missing)
    if not axes or pcast is None:
        return operands

    def cast(leaf: Any) -> Any:
        missing = tuple(sorted(axes - varying_axes(leaf)))
        return pcast(leaf, missing, to="varying") if missing else leaf

    return tuple(jax.tree_util.tree_map(cast, a) for a in operands)


def _sharded(x: Any) -> bool:
    """Whether ``x`` is known to be split over several devices: a concrete array's sharding, or a traced one's
    Explicit-axes type. (Under ``jit`` with Auto axes nothing says so at trace time.) The callback would have XLA
    gather it onto one host."""
    try:
        sharding = x.sharding if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) else jax.typeof(x).sharding
    except (AttributeError, TypeError):
        return False
    spec = getattr(sharding, "spec", None)  # a NamedSharding's: an axis named on some dimension
    return spec is not None and any(axis is not None for axis in tuple(spec))


def resolve_impl(impl: str, x: Any, axes: frozenset[str] = frozenset()) -> str:
    """``"auto"``: the callback on the CPU for the dtypes the NumPy backend's fused kernel takes (float16, float32,
    float64), where that kernel is there, from :data:`CALLBACK_MIN_ELEMENTS` logits; XLA otherwise (on accelerators
    it is the one that stays on the device; bfloat16 would cost the callback two conversions; small calls are
    faster without a trip to the host). ``softmargin bench --backend jax`` times both.

    ``axes`` are the mesh axes the operands vary over (:func:`varying_axes`; inside ``shard_map``): a host
    callback's results carry no per-device axes, so its loss would be typed as replicated and its gradients come
    out wrong (the target's ``mesh size`` times too big, the input's refused by JAX). ``"auto"`` takes XLA there,
    whose own operations keep the axes, and an explicit ``"callback"`` is refused."""
    if impl == "callback" and axes:
        raise ValueError(
            f"impl='callback' cannot run inside shard_map (the operands vary over mesh axes {sorted(axes)}): a host "
            "callback's results carry no per-device axes, so its gradients would be wrong; expected impl='xla' or "
            "impl='auto' (which takes XLA there)"
        )
    if impl != "auto":
        return impl
    if math.prod(x.shape) < CALLBACK_MIN_ELEMENTS or axes or _sharded(x):
        return "xla"
    fused_cpu = jax.default_backend() == "cpu" and np.dtype(x.dtype).name in ("float16", "float32", "float64")
    return "callback" if fused_cpu and numpy_backend_is_fused() else "xla"


def _plain(options: LossOptions, pos_weight: Any) -> bool:
    return not options.focusing and pos_weight is None


def _element(x: Any, y: Any, pos_weight: Any, options: LossOptions, need_grad: bool) -> tuple[Any, Any]:
    """Element loss and dl/dx from the one formula (``y`` already smoothed), in ``x``'s (compute) dtype."""
    if _plain(options, pos_weight):
        return element_loss_and_grad(x, y, jnp, need_grad=need_grad)
    return element_loss_and_grad_options(
        x, y, jnp, pos_weight=pos_weight, gamma_pos=options.gamma_pos, gamma_neg=options.gamma_neg,
        clip=options.clip, need_grad=need_grad,
    )  # fmt: skip


def _smooth(y: Any, options: LossOptions) -> Any:
    eps = options.label_smoothing
    return y * (1 - eps) + eps / 2 if eps else y


def _weights(w: Any, m: Any, shape: tuple[int, ...], cdt: Any) -> Any:
    """The element weight w * mask broadcast to ``shape`` (None when neither is given)."""
    if m is not None:
        mf = jnp.broadcast_to(m, shape).astype(cdt)
        return mf if w is None else mf * w.astype(cdt)
    return None if w is None else jnp.broadcast_to(w.astype(cdt), shape)


def weight_dtype(cdt: Any, w: Any, pw: Any) -> Any:
    """The dtype the weights multiply in: the compute dtype, or float64 for a float64 ``weight`` or ``pos_weight``
    (under ``jax_enable_x64``) with float16/bfloat16/float32 logits. Such a weight beyond float32's range (1e39)
    became inf when narrowed; as in the NumPy and torch backends it is used as given, and the weighted terms, row
    sums and gradient are float64 until the result is cast to the input's dtype."""
    wide = any(a is not None and a.dtype == jnp.float64 for a in (w, pw))
    return jnp.float64 if wide else cdt


def bookkeeping(m: Any, shape: tuple[int, ...], reduction: str, cdt: Any) -> tuple[Any, Any, Any]:
    """(divisor of each sample's loss, gradient scale of each sample, number of samples in the batch mean).

    The same rules as :func:`softmargin._chunks.row_bookkeeping`, traceable: without a mask every sample is divided
    by C and counts; with one, by its number of observed labels, and a sample with none gives 0 and is left out of
    the mean (a batch with nothing observed has loss 0; an empty batch's mean is NaN, as torch's)."""
    num_rows, num_classes = math.prod(shape[:-1]), shape[-1]
    if m is None:
        divisor: Any = jnp.asarray(float(num_classes), cdt)
        counted: Any = jnp.asarray(float(num_rows), cdt)
        scale: Any = jnp.asarray(1.0 / num_classes if num_classes else math.nan, cdt)
        if reduction == "mean":
            scale = scale / num_rows if num_rows else scale * math.nan
        return divisor, scale, counted
    divisor = jnp.broadcast_to(m, shape).sum(-1, dtype=cdt)
    observed = divisor > 0
    counted = observed.sum(dtype=cdt)
    scale = jnp.where(observed, 1 / jnp.where(observed, divisor, 1), 0)
    if reduction == "mean":
        scale = jnp.where(counted > 0, scale / jnp.maximum(counted, 1), 0)
    return divisor, scale, counted


def element_rows(x: Any, y: Any, pos_weight: Any, options: LossOptions, need_grad: bool) -> tuple[Any, Any]:
    """Element loss and dl/dx of logits ``x`` against targets ``y`` (smoothed here), both in the compute dtype."""
    return _element(x, _smooth(y, options), pos_weight, options, need_grad)


def _reduce(per_sample: Any, reduction: str, counted: Any, masked: bool) -> Any:
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    if masked and per_sample.size:  # only a mask leaves samples uncounted: a batch with nothing observed has loss 0
        return jnp.where(counted > 0, total / jnp.maximum(counted, 1), 0)
    return total / counted  # an empty batch (masked or not): 0 / 0 = NaN, as torch's mean


def _sparse_parts(x: Any, y: SparseRows, shape: tuple[int, ...], cdt: Any) -> tuple[Any, Any, Any]:
    """(flat x as (N, C), the positives' logits, their target values) for a sparse target."""
    x2 = x.reshape(-1, shape[-1]).astype(cdt)
    xs = x2[y.rows, y.cols]
    values = jnp.ones_like(xs) if y.values is None else y.values.astype(cdt)
    return x2, xs, values


def xla_forward(
    config: Config, x: Any, y: Any, w: Any, pw: Any, m: Any, need_grad: bool
) -> tuple[Any, Any]:
    """The loss (reduced, in ``x.dtype``) and the gradient of the reduced loss (``x.dtype``; for "none" of the sum
    of the per-sample losses), or None, from XLA-fused jax.numpy operations."""
    shape, options, cdt = tuple(x.shape), config.options, compute_dtype(x.dtype)
    wdt = weight_dtype(cdt, w, pw)
    pwc = None if pw is None else jnp.broadcast_to(pw.astype(wdt), shape)
    weight = _weights(w, m, shape, wdt)
    divisor, scale, counted = bookkeeping(m, shape, config.reduction, wdt)
    if isinstance(y, SparseRows):
        loss, grad = _sparse_element(x, y, pwc, options, need_grad, shape, cdt)
    elif need_grad and jax.default_backend() == "cpu":
        # XLA's CPU compiler would keep exp(-|x|), shared by the loss and the gradient, as an N x C temporary
        # between two passes; behind an optimization barrier each pass computes its own (measured at 4096 x 2000
        # float32: 2x faster, a third less temporary memory). GPUs fuse the shared form into one kernel.
        loss, _ = _element(x.astype(cdt), _smooth(y.astype(cdt), options), pwc, options, False)
        xb, yb, pwb = lax.optimization_barrier((x, y, pwc))
        _, grad = _element(xb.astype(cdt), _smooth(yb.astype(cdt), options), pwb, options, True)
    else:
        loss, grad = _element(x.astype(cdt), _smooth(y.astype(cdt), options), pwc, options, need_grad)
    # each element is divided by its sample's divisor (C, or its observed labels) before the weight multiplies it
    # and the row sums it: sum_c(l * w) / C overflows float32 where the sample's loss does not (x = 3e38, w = 10,
    # C = 100: the loss is 3e37), and so does sum_c(l) / C of two logits near float32's largest
    inverse = 1 / divisor if m is None else jnp.where(divisor > 0, 1 / jnp.where(divisor > 0, divisor, 1), 0)
    loss = loss * (inverse[..., None] if jnp.ndim(inverse) else inverse)
    if weight is not None:
        # a zero weight (or a missing label) removes the element from the loss, even where its loss is inf (0 * inf);
        # the input's gradient is not masked: at a NaN logit it stays NaN, as torch's and the other backends' do
        loss = jnp.where(weight == 0, 0, loss * weight)
        grad = None if grad is None else grad * weight
    per_sample = loss.sum(-1)
    if m is None and shape[-1] == 0:  # no class: the mean over none is 0 / 0, NaN, as torch's (and NumPy's) loss
        per_sample = jnp.full_like(per_sample, jnp.nan)
    out = _reduce(per_sample, config.reduction, counted, m is not None).astype(x.dtype)
    if grad is not None:
        grad = (grad * (scale[..., None] if jnp.ndim(scale) else scale)).astype(x.dtype)
    return out, grad


def _sparse_element(
    x: Any, y: SparseRows, pwc: Any, options: LossOptions, need_grad: bool, shape: tuple[int, ...], cdt: Any
) -> tuple[Any, Any]:
    """Element loss and gradient for sparse positives: every element as a negative (``y = 0``) in one dense pass
    over the logits, then the positives' elements replaced by their own (the target itself is never dense)."""
    x2, xs, values = _sparse_parts(x, y, shape, cdt)
    pw2 = None if pwc is None else pwc.reshape(x2.shape)
    loss, grad = _element(x2, jnp.full((), _smooth(0.0, options), cdt), pw2, options, need_grad)
    pws = None if pw2 is None else pw2[y.rows, y.cols]
    loss_pos, grad_pos = _element(xs, _smooth(values, options), pws, options, need_grad)
    loss = loss.at[y.rows, y.cols].set(loss_pos, unique_indices=True)
    if grad is not None:
        grad = grad.at[y.rows, y.cols].set(grad_pos, unique_indices=True).reshape(shape)
    return loss.reshape(shape), grad


# ----------------------------------------------------------------------------------------------------------------
# The callback implementation


def _host_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """bfloat16 (an ml_dtypes extension type the NumPy backend does not know) goes to the host as float32."""
    return np.dtype(np.float32) if dtype.name == "bfloat16" else dtype


def _host_call(config: Config, need_grad: bool) -> Any:
    """The host function: reads the operands (NumPy views of XLA's buffers) and writes the loss (and the gradient),
    and with ``config.report_target`` the target's range flag, into XLA's result buffers. Where the input's dtype
    is one the NumPy backend takes, the NumPy backend writes into them itself (``out=``: no gradient-sized
    temporary, no copy); bfloat16 is computed in float32 and converted."""
    from .. import numpy as backend

    options = config.options
    reduction: Any = config.reduction  # one of the NumPy backend's Literal reductions, checked at the entry point

    def call(x: Any, y: Any, w: Any, pw: Any, m: Any, loss_out: Any, grad_out: Any, flag_out: Any) -> None:
        x = np.asarray(x)
        arrays = [None if a is None else np.asarray(a) for a in (y, w, pw)]
        y, w, pw = (None if a is None else a.astype(_host_dtype(a.dtype), copy=False) for a in arrays)
        m = None if m is None else np.asarray(m)
        xh = x.astype(_host_dtype(x.dtype), copy=False)
        direct = xh.dtype == loss_out.dtype and (grad_out is None or grad_out.flags.c_contiguous)
        outs = (loss_out, grad_out) if direct else (
            np.empty(loss_out.shape, xh.dtype), None if grad_out is None else np.empty(grad_out.shape, xh.dtype)
        )  # fmt: skip
        if config.report_target:
            flag_out[...] = backend.loss_and_grad_reporting_target(
                xh, y, w, reduction, pos_weight=pw, mask=m, options=options, need_grad=need_grad, out=outs
            )  # fmt: skip
        else:
            kwargs = dict(pos_weight=pw, mask=m, options=options, validate=False)
            if need_grad:
                backend.multilabel_soft_margin_loss_and_grad(xh, y, w, reduction, **kwargs, out=outs)
            else:
                outs[0][...] = backend.multilabel_soft_margin_loss(xh, y, w, reduction, **kwargs)
        if not direct:
            loss_out[...] = outs[0]
            if grad_out is not None:
                grad_out[...] = outs[1]

    return call


def callback_forward(
    config: Config, x: Any, y: Any, w: Any, pw: Any, m: Any, need_grad: bool
) -> tuple[Any, Any, Any]:
    """As :func:`xla_forward`, computed on the host by the NumPy backend, and the target's range flag (None unless
    ``config.report_target``). Through ``jax.experimental.buffer_callback`` the host function reads XLA's input
    buffers in place and the NumPy backend writes the loss and the gradient into XLA's result buffers (``out=``);
    ``jax.pure_callback`` would copy both ways (measured: 2 extra passes), and a gradient made apart and copied in
    costs one more pass and a temporary."""
    from jax.experimental.buffer_callback import buffer_callback

    loss_shape = x.shape[:-1] if config.reduction == "none" else ()
    result_type = [jax.ShapeDtypeStruct(loss_shape, x.dtype)]
    if need_grad:
        result_type.append(jax.ShapeDtypeStruct(x.shape, x.dtype))
    if config.report_target:
        result_type.append(jax.ShapeDtypeStruct((), jnp.int32))
    host = _host_call(config, need_grad)
    operands = [x, y] + [a for a in (w, pw, m) if a is not None]
    present = [a is not None for a in (w, pw, m)]

    def call(ctx: Any, out: Any, *arrays: Any) -> None:
        it = iter(arrays[2:])
        w_, pw_, m_ = (next(it) if p else None for p in present)
        results = iter(np.asarray(o) for o in out)
        loss_out = next(results)
        grad_out = next(results) if need_grad else None
        host(arrays[0], arrays[1], w_, pw_, m_, loss_out, grad_out, next(results, None))

    # "sequential": under vmap each mapped slice is its own problem (its own mean)
    result = iter(buffer_callback(call, tuple(result_type), vmap_method="sequential")(*operands))
    loss = next(result)
    return loss, (_sharded_like(next(result), x) if need_grad else None), next(result, None)


def _sharded_like(value: Any, like: Any) -> Any:
    """``value`` resharded as ``like`` where ``like``'s type names an Explicit mesh axis. A host callback's results
    are typed replicated; as the gradient of logits sharded over an Explicit axis JAX refused it ("Custom VJP bwd
    rule must produce an output with the same type"); with Auto axes (or none) types carry no sharding."""
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    try:
        sharding = jax.typeof(like).sharding
    except (AttributeError, TypeError):
        return value
    if explicit is None or explicit not in tuple(getattr(getattr(sharding, "mesh", None), "axis_types", ())):
        return value
    if tuple(jax.typeof(value).sharding.spec) == tuple(sharding.spec):
        return value
    return jax.sharding.reshard(value, sharding)


@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _callback_op(config: Config, need_grad: bool, x: Any, y: Any, w: Any, pw: Any, m: Any) -> tuple[Any, Any, Any]:
    """:func:`callback_forward`, differentiable. First-order AD never differentiates the forward pass (its gradient
    is the residual, only scaled in backward), so this rule runs only for second and higher derivatives (grad of
    grad, ``jax.hessian``, ``jax.jvp`` of ``jax.grad``), where JAX differentiates the forward pass's outputs: the
    callback's values stay the primal outputs, their tangents are the JVP of :func:`xla_forward` (a host callback
    has no derivative of its own). First-order use keeps the callback alone."""
    return callback_forward(config, x, y, w, pw, m, need_grad)


def _callback_jvp(
    config: Config, need_grad: bool, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[tuple[Any, Any, Any], tuple[Any, Any, Any]]:
    x, y, w, pw, m = primals
    out = callback_forward(config, x, y, w, pw, m, need_grad)
    xla = replace(config, impl="xla", report_target=False)
    # the floating operands JAX perturbs (the mask, integer targets and symbolic zeros have no tangent)
    moved = [
        i for i in range(4)
        if primals[i] is not None and not isinstance(tangents[i], SymbolicZero)
        and jnp.issubdtype(primals[i].dtype, jnp.inexact)
    ]  # fmt: skip

    def forward(*values: Any) -> tuple[Any, Any]:
        operands = [x, y, w, pw]
        for i, value in zip(moved, values):
            operands[i] = value
        return xla_forward(xla, operands[0], operands[1], operands[2], operands[3], m, need_grad)

    if moved:
        _, (dloss, dgrad) = jax.jvp(forward, tuple(primals[i] for i in moved), tuple(tangents[i] for i in moved))
    else:
        dloss, dgrad = jnp.zeros_like(out[0]), None if out[1] is None else jnp.zeros_like(out[1])
    dflag = None if out[2] is None else np.zeros(out[2].shape, jax.dtypes.float0)
    return out, (dloss, dgrad, dflag)


_callback_op.defjvp(_callback_jvp, symbolic_zeros=True)


def _forward(config: Config, x: Any, y: Any, w: Any, pw: Any, m: Any, need_grad: bool) -> tuple[Any, Any, Any]:
    """(loss, gradient or None, the target's range flag or None)."""
    if config.impl == "callback" and not isinstance(y, SparseRows):
        return _callback_op(config, need_grad, x, y, w, pw, m)
    if config.report_target:  # only the callback reports (the public function asks it only of the callback)
        raise ValueError("report_target needs impl='callback' and a dense target")
    return (*xla_forward(config, x, y, w, pw, m, need_grad), None)


def _primal_out(config: Config, loss: Any, flag: Any) -> Any:
    return (loss, flag) if config.report_target else loss


# ----------------------------------------------------------------------------------------------------------------
# The custom_vjp


def _loss_value(config: Config, x: Any, y: Any, w: Any, pw: Any, m: Any) -> Any:
    loss, _, flag = _forward(config, x, y, w, pw, m, need_grad=False)
    return _primal_out(config, loss, flag)


_loss_op = partial(jax.custom_vjp, nondiff_argnums=(0,))(_loss_value)


def _fwd(config: Config, x: Any, y: Any, w: Any, pw: Any, m: Any) -> tuple[Any, Any]:
    # symbolic_zeros=True: each array argument is a CustomVJPPrimal telling whether JAX differentiates with respect
    # to it (torch's needs_input_grad): the other cotangents cost nothing unless asked for
    values = tuple(_value(a) for a in (x, y, w, pw, m))
    if isinstance(values[1], SparseRows) and _perturbed(y):
        raise ValueError("target is sparse: a sparse target is not differentiable; pass the positives as constants")
    loss, grad, flag = _forward(config, values[0], values[1], values[2], values[3], values[4], need_grad=_perturbed(x))
    others = (_perturbed(y), _perturbed(w), _perturbed(pw))
    kept = values if any(others) else None
    return _primal_out(config, loss, flag), (grad, kept, others)


def _is_primal(leaf: Any) -> bool:
    return isinstance(leaf, CustomVJPPrimal)


def _value(tree: Any) -> Any:
    # jnp.asarray: a Python float differentiated (jax.grad(lambda w: loss(x, y, w))(2.0)) arrives as a bare scalar
    plain = lambda v: v if v is None or isinstance(v, (SparseRows, jax.Array, np.ndarray)) else jnp.asarray(v)
    return jax.tree_util.tree_map(lambda p: plain(p.value), tree, is_leaf=_is_primal)


def _perturbed(tree: Any) -> bool:
    return any(bool(p.perturbed) for p in jax.tree_util.tree_leaves(tree, is_leaf=_is_primal))


def _bwd(config: Config, residuals: Any, g: Any) -> tuple[Any, ...]:
    grad, kept, (need_y, need_w, need_pw) = residuals
    zeros = kept is None
    if config.report_target:
        g = g[0]  # the flag's cotangent is a zero (float0)
    if isinstance(g, SymbolicZero):
        return (None, None, None, None, None)
    if config.reduction == "none":
        gx = None if grad is None else (grad * g[..., None].astype(grad.dtype)).astype(grad.dtype)
    else:
        gx = None if grad is None else (grad * g.astype(grad.dtype)).astype(grad.dtype)
    gy = gw = gpw = None
    if not zeros:
        gy, gw, gpw = _other_cotangents(config, kept, g, need_y, need_w, need_pw)
    return (gx, gy, gw, gpw, None)


def _sum_to(value: Any, like: Any) -> Any:
    """Sum a broadcast cotangent back to the shape of the operand it came from."""
    shape = tuple(like.shape)
    lead = value.ndim - len(shape)
    value = value.sum(axis=tuple(range(lead))) if lead else value
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and value.shape[i] != 1)
    return (value.sum(axis=axes, keepdims=True) if axes else value).astype(like.dtype)


def _other_cotangents(
    config: Config, kept: tuple[Any, ...], g: Any, need_y: bool, need_w: bool, need_pw: bool
) -> tuple[Any, Any, Any]:
    """Cotangents of target, weight and pos_weight. Each element's loss is linear in the (smoothed) target, in the
    weight and in pos_weight: ``l = y * pw * P(x) + (1 - y) * Q(x)`` with ``P``, ``Q`` the element loss at
    ``y = 1`` (unit pos_weight) and ``y = 0``, so ``dl/dy = (pw * P - Q) * (1 - eps)``, ``dl/dw = l``,
    ``dl/dpw = y * P``; each times the sample's scale and the incoming cotangent."""
    x, y, w, pw, m = kept
    shape, options, cdt = tuple(x.shape), config.options, compute_dtype(x.dtype)
    wdt = weight_dtype(cdt, w, pw)
    xc = x.astype(cdt)
    _, scale, _ = bookkeeping(m, shape, config.reduction, wdt)
    row = g.astype(wdt) * scale
    row = row[..., None] if jnp.ndim(row) else row
    weight = _weights(w, m, shape, wdt)
    pwc = None if pw is None else jnp.broadcast_to(pw.astype(wdt), shape)
    sparse = isinstance(y, SparseRows)  # then only weight and pos_weight are differentiated (_fwd refuses y)
    ys = None if sparse else _smooth(y.astype(cdt), options)
    positive, _ = _element(xc, jnp.ones((), cdt), None, options, False)  # P: unit pos_weight
    negative, _ = _element(xc, jnp.zeros((), cdt), None, options, False)
    element_weight = row if weight is None else row * weight
    # an element with zero weight (or a missing label) is not in the loss: no cotangent, even at a NaN logit
    only_kept: Any = (lambda a: a) if weight is None else (lambda a: jnp.where(weight == 0, 0, a))
    gy = gw = gpw = None
    if need_y:
        weighted_pos = positive if pwc is None else positive * pwc
        gy = _sum_to(only_kept(element_weight * (weighted_pos - negative) * (1 - options.label_smoothing)), y)
    if need_w:
        full = (_sparse_element(x, y, pwc, options, False, shape, cdt) if sparse else _element(xc, ys, pwc, options, False))[0]
        mf = 1 if m is None else jnp.broadcast_to(m, shape).astype(cdt)
        gw = _sum_to(jnp.where(row * mf == 0, 0, row * mf * full), w)
    if need_pw:
        target_times_positive = _sparse_times(y, positive, options) if sparse else _linear(ys, positive, jnp)
        gpw = _sum_to(only_kept(element_weight * target_times_positive), pw)
    return gy, gw, gpw


def _sparse_times(y: SparseRows, a: Any, options: LossOptions) -> Any:
    """The smoothed sparse target times ``a`` (an element-wise array of the input's shape), without making the
    target dense: every element as a negative's (smoothed 0), the positives' elements replaced by their own."""
    flat = a.reshape(-1, a.shape[-1])
    values = jnp.ones((), a.dtype) if y.values is None else y.values.astype(a.dtype)
    out = _linear(jnp.asarray(_smooth(0.0, options), a.dtype), flat, jnp)
    out = out.at[y.rows, y.cols].set(_linear(_smooth(values, options), flat[y.rows, y.cols], jnp), unique_indices=True)
    return out.reshape(a.shape)


_loss_op.defvjp(_fwd, _bwd, symbolic_zeros=True)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _loss_op_all(config: Config, x: Any, y: Any, w: Any, pw: Any, m: Any) -> Any:
    """:func:`_loss_op` without ``symbolic_zeros``, for ``shard_map`` (JAX 0.10 does not implement a custom_vjp with
    symbolic zeros under an un-jitted ``shard_map``): every floating operand counts as perturbed, so backward makes
    each cotangent; under ``jit`` the ones nobody uses are dead code, which XLA drops."""
    return _loss_value(config, x, y, w, pw, m)


def _fwd_all(config: Config, x: Any, y: Any, w: Any, pw: Any, m: Any) -> tuple[Any, Any]:
    def primal(a: Any) -> Any:
        moved = a is not None and not isinstance(a, SparseRows) and jnp.issubdtype(a.dtype, jnp.inexact)
        return CustomVJPPrimal(a, moved)

    return _fwd(config, *(primal(a) for a in (x, y, w, pw, m)))


def _bwd_all(config: Config, residuals: Any, g: Any) -> tuple[Any, ...]:
    return _bwd(config, residuals, g)


_loss_op_all.defvjp(_fwd_all, _bwd_all)


def loss(config: Config, x: Any, y: Any, w: Any, pw: Any, m: Any) -> Any:
    """The loss with the fused custom_vjp (see the module docstring); arguments already validated and converted.
    With ``config.report_target``: (loss, int32 flag, 1 where the target has a value outside [0, 1] or NaN)."""
    op = _loss_op_all if varying_axes(x) else _loss_op  # inside shard_map
    return op(config, x, y, w, pw, m)
