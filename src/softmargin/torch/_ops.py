"""The loss as a PyTorch operator, ``torch.ops.softmargin.loss_rows``, and the autograd around it.

The operator is row-wise: for logits ``x`` of shape ``(*, C)`` it returns

- ``per_sample`` (shape ``x.shape[:-1]``; float32, or float64 when the logits, a dense target or the weight are
  float64): each sample's loss, the mean of its weighted element losses over its C labels (over its observed labels
  under a mask; 0 if it has none);
- ``grad`` (``x``'s shape and dtype, or an empty tensor when not asked for): ``d per_sample[n] / d x[n, c]``, computed
  in the same pass (the gradient of ``per_sample.sum()``);
- ``counted`` (0-d float64): how many samples count in a batch mean (all, or those with an observed label).

The reduction over the batch happens after it, in ordinary torch operations, so autograd, ``torch.func`` and
``vmap`` see a plain row-wise function whose Jacobian the operator already holds: backward multiplies ``grad`` by
the incoming per-sample gradient, forward-mode AD sums ``grad * tangent`` over the labels.

It is registered the way the ecosystem does it (``torch.library.custom_op``): a fake implementation (FakeTensor,
meta, ``torch.compile``, ``torch.export``), autograd (with ``setup_context``; second derivatives through a
differentiable formula; forward mode and ``torch.func`` transforms through its own Autograd kernel, as
``register_autograd`` gives reverse mode only: :func:`_register_forward_ad`), a vmap rule (the batch folded into the
rows) and an autocast rule for CUDA. Nothing in traced code touches pointers, thread counts, files or caches: the
backends (``_backends.py``) run inside the operator, on real tensors.

Eager calls on ordinary tensors take a lean path, :class:`_EagerReducedLoss`: one ``autograd.Function`` that calls the
same implementation without the dispatcher, reduces in forward and hands the precomputed gradient over without a
copy; it gives bitwise the same results as the operator (tested), which everything else uses. The commonest of them,
the plain loss of a contiguous (N, C) batch reduced to its mean or sum, takes a leaner one still,
:class:`_PlainLoss` (:func:`plain_loss` says when): one kernel call computes the gradient, the rows' losses and
their reduction, and backward scales the gradient in place, with the operator's arithmetic in the operator's order
(the rows summed in order on the CPU: :func:`_total`), so again bitwise the same (tested); calls with options
(pos_weight, a mask, label smoothing, focusing) take :class:`_OptionsLoss` (:func:`options_loss`), the same with the
rows' divisors from the mask. Forward-mode AD (dual tensors) and unusual tensors in eager mode go through
:class:`_EagerLoss`, which has ``jvp`` and ``setup_context``; ``torch.func`` transforms call the operator, whose own
Autograd kernel takes them (:func:`_register_forward_ad`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from os import environ as _environ
from typing import Any

import torch
from torch import Tensor

from .. import _validation as V
from .._formula import element_loss_and_grad, element_loss_and_grad_options
from .._options import PLAIN, LossOptions
from .._sparse import SparseTargets
from ..kernels import cpu
from . import _backends as B

__all__ = ["Problem", "compute", "loss_rows"]


def _loss_rows_impl(
    input: Tensor,
    target: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    mask: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    values: Tensor | None,
    label_smoothing: float,
    gamma_pos: float,
    gamma_neg: float,
    clip: float,
    need_grad: bool,
    check: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample losses, their gradient w.r.t. ``input`` and the count of samples in a mean (module docstring).

    ``target`` is dense (``input``'s shape; float, uint8 or bool) or None with CSR positives ``indptr``, ``indices``
    and ``values`` (None: all ones) over the rows ``input.shape[:-1]`` flattened. ``check`` checks the target's range
    and the weights: on the CPU with a ``ValueError`` naming the first bad value, on other devices as a device-side
    assertion. The operands' dtypes, shapes and devices are checked here too, as the public API checks them: a direct
    call (or a scripted module's) reaches the operator without it.
    """
    V.check_input_kind("input", dtype_kind(input.dtype), input.dtype)
    V.check_input_ndim(input.shape)
    check_operands(input, target, weight, pos_weight, mask)
    _check_operand_devices(input, target, weight, pos_weight, mask, indptr, indices, values)
    per_sample, grad, counted = _compute_rows(
        input, target, weight, pos_weight, mask, indptr, indices, values,
        LossOptions(label_smoothing, gamma_pos, gamma_neg, clip), need_grad, check,
    )  # fmt: skip
    return per_sample, grad, counted


def dtype_kind(dtype: torch.dtype) -> str:
    """``dtype`` as :mod:`softmargin._validation` names its kinds: 'float', 'int', 'bool' or 'complex'."""
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "int"


def check_operands(
    input: Tensor, target: Tensor | None, weight: Tensor | None, pos_weight: Tensor | None, mask: Tensor | None
) -> None:
    """A dense target (``input``'s shape, never broadcast), the weights and the mask (broadcastable to ``input``):
    their dtypes and shapes, for the public API and for the operator itself. A direct call of the operator with a
    (4, 2) target for (4, 3) logits read the target past its end; a (3,) target was broadcast."""
    if target is not None:
        V.check_target_kind(dtype_kind(target.dtype), target.dtype)
        V.check_same_shape("target", target.shape, input.shape)
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is not None:
            V.check_target_kind(dtype_kind(value.dtype), value.dtype, name)
            V.check_broadcastable(name, value.shape, input.shape)
    if mask is not None:
        V.check_mask_kind(dtype_kind(mask.dtype), mask.dtype)
        V.check_broadcastable("mask", mask.shape, input.shape)


def to_device(value: Tensor | None, device: torch.device) -> Tensor | None:
    """``value`` on ``device`` if it is a 0-d CPU tensor (which torch's elementwise operations take with a tensor on
    any device, as a weight of its loss functions), else ``value`` itself (:func:`check_devices` judges it). The copy
    is non-blocking: from pageable memory it is staged at once, and no stream synchronisation waits for the GPU."""
    if value is not None and value.device != device and value.dim() == 0 and value.device.type == "cpu":
        return value.to(device, non_blocking=True)
    return value


def promoted_dtype(dtype: torch.dtype, target: Any, weight: Tensor | None) -> torch.dtype:
    """The loss's dtype: ``dtype`` promoted with a dense target's and the weight's if they have at least one dimension
    (as torch.result_type does: a 0-d tensor does not promote a float; a sparse target and None do not count)."""
    if isinstance(target, Tensor) and target.dim() > 0:
        dtype = torch.promote_types(dtype, target.dtype)
    if weight is not None and weight.dim() > 0:
        dtype = torch.promote_types(dtype, weight.dtype)
    return dtype


def check_devices(reference: str, device: torch.device, operands: tuple[tuple[str, Tensor | None], ...]) -> None:
    """Every operand on ``device``, the device of ``reference`` (the input; the linear head's hidden): the CPU kernel
    reads a tensor through its data pointer, and one on another device (meta, CUDA) was read as host memory (a
    garbage loss, or a crash). Refused by name; nothing is moved between devices behind the caller's back."""
    for name, value in operands:
        if value is not None and value.device != device:
            raise ValueError(
                f"{name}.device == {value.device}, expected {reference}.device == {device}: every operand must be on "
                f"the {reference}'s device; pass {name}.to({reference}.device) (a module's parameters and buffers "
                "move with module.to(device))"
            )


def _check_operand_devices(
    input: Tensor,
    target: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    mask: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    values: Tensor | None,
) -> None:
    """The operator's operands on the input's device (the public API moves a 0-d CPU weight, as torch's elementwise
    operations accept one, before it calls the operator)."""
    check_devices("input", input.device, (
        ("target", target), ("weight", weight), ("pos_weight", pos_weight), ("mask", mask), ("indptr", indptr),
        ("indices", indices), ("values", values),
    ))  # fmt: skip


#: The operator (the implementation above, opaque to tracing); ``loss_rows_triton`` below registers the same
#: implementation with ``triton_op``.
loss_rows: torch.library.CustomOpDef = torch.library.custom_op("softmargin::loss_rows", _loss_rows_impl, mutates_args=())


def _compute_rows(
    x: Tensor,
    target: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    mask: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    values: Tensor | None,
    options: LossOptions,
    need_grad: bool,
    check: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    sparse = _sparse_of(x, indptr, indices, values)
    y: Any = target if sparse is None else sparse
    per_sample, grad, counted = B.loss_rows(x, y, weight, pos_weight, mask, options, need_grad, check)
    return per_sample, (grad if grad is not None else x.new_empty(0)), counted


@loss_rows.register_fake
def _loss_rows_fake(
    input: Tensor,
    target: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    mask: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    values: Tensor | None,
    label_smoothing: float,
    gamma_pos: float,
    gamma_neg: float,
    clip: float,
    need_grad: bool,
    check: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_operand_devices(input, target, weight, pos_weight, mask, indptr, indices, values)
    per_sample = input.new_empty(input.shape[:-1], dtype=B.per_sample_dtype(input, target, weight))
    grad = input.new_empty(input.shape) if need_grad else input.new_empty(0)
    return per_sample, grad, input.new_empty((), dtype=torch.float64)


# ---- autograd ------------------------------------------------------------------------------------------------------


def _dense_target(y: Tensor | None, sparse: SparseTargets | None, like: Tensor) -> Tensor:
    """``y``; None (forward mode saves no CSR arrays) or ``sparse`` mean a sparse target: refused."""
    if sparse is None and y is not None:
        return y
    raise RuntimeError(
        "softmargin: this derivative (second order, or w.r.t. the target or weight) is not available with sparse "
        "targets; pass a dense target"
    )


def _divisor(x: Tensor, mask: Tensor | None) -> Tensor | float:
    """Each row's number of labels: C, or its observed labels under a mask (keepdim)."""
    if mask is None:
        return float(x.shape[-1])
    return mask.expand(x.shape).sum(-1, keepdim=True, dtype=x.dtype)


def _differentiable_grad(
    x: Tensor,
    y: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    mask: Tensor | None,
    options: LossOptions,
) -> Tensor:
    """``d per_sample / d x`` from differentiable torch operations (``_formula``): used when a graph of the
    backward pass is asked for (``create_graph=True``, ``torch.func`` transforms), so that second derivatives are
    exact. Full-size temporaries; the fused pass serves every first derivative."""
    t = x if x.dtype in (torch.float32, torch.float64) else x.float()
    target = y.to(t.dtype)
    if options.label_smoothing:
        target = target * (1 - options.label_smoothing) + options.label_smoothing / 2
    if pos_weight is None and not options.focusing:
        _, grad = element_loss_and_grad(t, target, torch)
    else:
        _, grad = element_loss_and_grad_options(
            t, target, torch, pos_weight=None if pos_weight is None else pos_weight.to(t.dtype),
            gamma_pos=options.gamma_pos, gamma_neg=options.gamma_neg, clip=options.clip,
        )  # fmt: skip
    w: Tensor | None = None if weight is None else weight.to(t.dtype)
    if mask is not None:
        w = mask.to(t.dtype) if w is None else w * mask
    if w is not None:  # the element's gradient is finite for every finite or infinite logit, so a zero weight gives 0
        # and d grad / d w is the element's gradient, also at w == 0; a NaN logit keeps its NaN, as in the fused pass
        grad = grad * w
    divisor = _divisor(t, mask)
    scaled: Tensor = grad / divisor if isinstance(divisor, float) else torch.where(divisor > 0, grad / divisor.clamp_min(1), 0.0)
    return scaled.to(x.dtype)


def input_grads(
    needs: tuple[bool, bool, bool],
    x: Tensor,
    y: Tensor | None,
    sparse: SparseTargets | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    mask: Tensor | None,
    options: LossOptions,
    grad: Tensor | None,
    grad_per_sample: Tensor,
    in_place: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients w.r.t. (input, target, weight) from the incoming per-sample gradient.

    ``grad`` is the operator's precomputed Jacobian (None: recompute it); ``in_place`` scales it in place (the
    caller owns it alone), so that autograd can take it as ``input.grad`` without a second gradient-sized buffer.
    """
    need_x, need_y, need_w = needs
    g = grad_per_sample.unsqueeze(-1)
    grad_x = grad_y = grad_w = None
    if need_x:
        if torch.is_grad_enabled() or _forward_differentiated(x, y, weight, grad_per_sample):
            # a graph of this backward is wanted, or forward-mode AD differentiates it (a dual tensor, jacfwd of
            # jacrev, hessian under torch.no_grad), whatever the grad mode: second derivatives
            grad_x = _differentiable_grad(x, _dense_target(y, sparse, x), weight, pos_weight, mask, options)
            grad_x = grad_x * g.to(grad_x.dtype)
        else:
            if grad is None or (grad.numel() == 0 and x.numel() != 0):  # the forward ran with need_grad=False
                if _ordinary((x, y, weight, pos_weight, mask)):
                    target: Any = sparse if sparse is not None else y
                    grad = B.loss_rows(x, target, weight, pos_weight, mask, options, True, False)[1]
                else:  # traced (compile, export, FakeTensor): the operator, never the kernels' data pointers
                    csr = (sparse.indptr, sparse.indices, sparse.values) if sparse is not None else (None, None, None)
                    grad = loss_rows(x, y, weight, pos_weight, mask, *csr, options.label_smoothing, options.gamma_pos,
                                     options.gamma_neg, options.clip, True, False)[1]  # fmt: skip
                in_place = True
            assert grad is not None
            # (not in place under a batched backward: g then carries a batch dimension grad lacks)
            grad_x = grad.mul_(g.to(grad.dtype)) if in_place and not _batched(g) else grad * g.to(grad.dtype)
    if need_y or need_w:  # the plain loss only (the public API says so before it starts)
        dense = _dense_target(y, sparse, x)
        scale = g / x.shape[-1]
        if need_y:  # d per_sample / dy = -w x / C; a zero weight removes the element, also where x is infinite
            grad_y = -x * scale
            if weight is not None:  # as in _differentiable_grad: d grad_y / d w stays -x / C at w == 0
                grad_y = torch.where((weight == 0) & ~grad_y.isfinite(), 0.0, grad_y) * weight
            grad_y = grad_y.to(dense.dtype)
        if need_w:  # d per_sample / dw = l(x, y) / C, summed over the dimensions the weight was broadcast along
            assert weight is not None
            # in the wider of the two dtypes, at least float32, and rounded to the weight's dtype once, at the end:
            # in a narrower weight's dtype each term l / (N C) would be subnormal (float16) or overflow (x = 1e39)
            wide = _wide_dtype(x.dtype, weight.dtype)
            element_loss, _ = element_loss_and_grad(x.to(wide), dense.to(wide), torch, need_grad=False)
            grad_w = (element_loss * scale.to(wide)).sum_to_size(weight.shape).to(weight.dtype)
    return grad_x, grad_y, grad_w


def _wide_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    return torch.promote_types(torch.promote_types(a, b), torch.float32)


def _sparse_of(x: Tensor, indptr: Tensor | None, indices: Tensor | None, values: Tensor | None) -> SparseTargets | None:
    if indptr is None:
        return None
    return SparseTargets(indptr, indices, values, (math.prod(x.shape[:-1]), x.shape[-1]), torch)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, y, weight, pos_weight, mask, indptr, indices, values, eps, gamma_pos, gamma_neg, clip, _, _ = inputs
    ctx.options = LossOptions(eps, gamma_pos, gamma_neg, clip)
    plain = pos_weight is None and mask is None and ctx.options == PLAIN
    _refuse_undifferentiated(ctx.needs_input_grad, plain, indptr is not None)
    ctx.save_for_backward(x, y, weight, pos_weight, mask, indptr, indices, values, output[1])


def _refuse_undifferentiated(needs: tuple[bool, ...], plain: bool, sparse: bool) -> None:
    """A direct call of the operator with an operand that requires grad and that backward does not differentiate:
    refused by name, as the public API refuses it. Its backward differentiates target and weight with the plain
    loss's formulas, so with options (label smoothing, say) their gradients were wrong, and pos_weight's (or the
    sparse values') were None."""
    for index, name in ((1, "target"), (2, "weight"), (3, "pos_weight"), (7, "values")):
        if not needs[index]:
            continue
        if name in ("pos_weight", "values"):
            what = "never differentiates pos_weight" if name == "pos_weight" else "never differentiates a sparse target"
        elif not plain or sparse:
            what = (f"differentiates {name} only for the plain loss of a dense target (no pos_weight, mask, "
                    "label_smoothing, asymmetric focusing or sparse target)")  # fmt: skip
        else:
            continue
        raise ValueError(f"{name} requires grad, but torch.ops.softmargin.loss_rows {what}; pass {name}.detach()")


def _backward(ctx: Any, grad_per_sample: Tensor, _grad: Any, _counted: Any) -> tuple[Tensor | None, ...]:
    x, y, weight, pos_weight, mask, indptr, indices, values, grad = ctx.saved_tensors
    grads = input_grads(
        tuple(ctx.needs_input_grad[:3]), x, y, _sparse_of(x, indptr, indices, values), weight, pos_weight, mask,
        ctx.options, grad, grad_per_sample,
    )  # fmt: skip
    return (*grads, None, None, None, None, None, None, None, None, None, None, None)




# ---- vmap: the batch dimension folded into the rows ------------------------------------------------------------------


def _vmap(info: Any, in_dims: tuple[int | None, ...], *args: Any) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Any, ...]]:
    x, y, weight, pos_weight, mask, indptr, indices, values, eps, gamma_pos, gamma_neg, clip, need_grad, check = args
    if indptr is not None:
        raise NotImplementedError("softmargin: vmap over the loss with sparse targets is not supported; pass a dense target")
    size = info.batch_size
    x_dim, y_dim, w_dim, pw_dim, mask_dim = in_dims[:5]
    x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(size, *x.shape)
    y = y.movedim(y_dim, 0) if y_dim is not None else y.expand(x.shape)

    def lifted(t: Tensor | None, dim: int | None) -> Tensor | None:
        """A batched operand with singleton dimensions after the batch, so that it broadcasts against ``x``."""
        if t is None or dim is None:
            return t
        t = t.movedim(dim, 0)
        return t.reshape(size, *([1] * (x.dim() - t.dim())), *t.shape[1:])

    weight, pos_weight, mask = lifted(weight, w_dim), lifted(pos_weight, pw_dim), lifted(mask, mask_dim)
    op = _operator_for(x)
    per_sample, grad, _ = op(
        x, y, weight, pos_weight, mask, None, None, None, eps, gamma_pos, gamma_neg, clip, need_grad, check
    )
    if mask is None:
        counted = x.new_full((size,), float(math.prod(x.shape[1:-1])), dtype=torch.float64)
    else:
        counted = mask.expand(x.shape).any(-1).reshape(size, -1).sum(1, dtype=torch.float64)
    return (per_sample, grad, counted), (0, 0 if need_grad else None, 0)


def _operator_for(x: Tensor) -> Any:
    """The registration to call for ``x`` in traced code: the Triton operator for CUDA tensors once registered,
    else ``loss_rows``."""
    return loss_rows_triton if loss_rows_triton is not None and x.device.type == "cuda" else loss_rows


def _register_rules(op: Any, name: str) -> None:
    """Autograd (reverse and forward mode), vmap and CUDA autocast rules, the same for both registrations of the
    operator."""
    op.register_autograd(_backward, setup_context=_setup_context)
    _register_forward_ad(op)
    torch.library.register_vmap(name, _vmap)
    torch.library.register_autocast(name, "cuda", torch.float32)


# ---- forward mode and torch.func transforms of the operator itself -------------------------------------------------
#
# ``register_autograd`` gives a custom operator reverse mode through ``torch.autograd`` only: its Autograd kernel
# passes an operand's forward-mode tangent by, silently (torch.func.jvp of a scripted or traced module, of a direct
# call, or inside torch.compile, gave a tangent of 0; forward_ad dual tensors came back without one), and refuses
# torch.func.grad ("... must override the setup_context staticmethod"). The eager public API has its own
# autograd.Function (:class:`_EagerLoss`); the operator gets the same here: its Autograd kernel is replaced by one
# that hands such calls to an autograd.Function with ``setup_context`` and ``jvp`` and every other call to torch's
# own kernel, unchanged. It leans on torch's functorch internals; where a torch lacks them, torch's kernel stays.

try:
    _JVP, _GRAD = torch._C._functorch.TransformType.Jvp, torch._C._functorch.TransformType.Grad
    _LAYER_FRONT_BACK = torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchDynamicLayerFrontMode) | (
        torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchDynamicLayerBackMode)
    )
    #: the keys functorch excludes while a transform's layer runs an operator, given back to the layer below: every
    #: key from DynamicLayerBackMode up to DynamicLayerFrontMode but autocast's (the caller's autocast state stays)
    #: and FuncTorchVmapMode (DynamicLayer.cpp, get_all_dynlayer_keyset; autocast's keys lie between AutocastCPU and
    #: FuncTorchBatched, some of them unnamed in Python). Five keys were listed here: ZeroTensor, Conjugate, Negative,
    #: Tracer and others stayed excluded below, where a negative view lost its sign (a wrong loss under jvp)
    _full_after = torch._C._dispatch_keyset_full_after
    _AUTOCAST_KEYS = (_full_after("FuncTorchBatched") - _full_after("AutocastCPU")) | (
        torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
    )
    _LAYER_KEYS = (
        _full_after("FuncTorchDynamicLayerFrontMode") - _full_after("FuncTorchDynamicLayerBackMode") - _AUTOCAST_KEYS
        - torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchVmapMode)
    ) | torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchDynamicLayerFrontMode)
    _FUNCTORCH_INTERNALS = hasattr(torch._C, "_ForceDispatchKeyGuard") and hasattr(torch._C, "_AutoDispatchBelowAutograd")
except AttributeError:  # pragma: no cover - another torch's internals
    _FUNCTORCH_INTERNALS = False


def _has_tangent(t: Any) -> bool:
    return isinstance(t, Tensor) and _forward_ad.unpack_dual(t).tangent is not None


def _jvp_rows(ctx: Any, x_t: Tensor | None, y_t: Tensor | None, w_t: Tensor | None, pw_t: Tensor | None) -> Tensor | None:
    """The tangent of the per-sample losses from the operands' tangents. ``ctx`` holds ``options``, ``extras``
    (pos_weight, a mask or a sparse target: only the input is differentiable then) and, saved for forward,
    ``(x, y, weight, pos_weight, mask, grad)`` with ``grad`` the operator's Jacobian.

    The tangent is differentiable in turn (``jvp`` of ``jvp``, ``jacfwd`` of ``jacfwd``, ``grad`` of ``jvp``, a dual
    tensor's tangent differentiated by ``torch.autograd``) where something may differentiate it
    (:func:`_differentiated_further`): there the Jacobian is recomputed from differentiable operations
    (:func:`_differentiable_grad`), as backward does for second derivatives, and under ``torch.func`` the tangent is
    computed a level below with forward mode on (torch runs a ``jvp`` rule with forward-mode AD off for every level, so
    an outer ``jvp`` saw none of it). With ``grad``, a constant to autograd, every second derivative through the
    tangent was 0, silently."""
    x, y, weight, pos_weight, mask, grad = ctx.saved_tensors
    # as in reverse mode (the public API refuses target/weight/pos_weight requiring grad there): these formulas
    # are the plain loss's, which would silently drop the mask and pos_weight
    for name, t in (("target", y_t), ("weight", w_t), ("pos_weight", pw_t)):
        if t is not None and (name == "pos_weight" or ctx.extras or ctx.options != PLAIN or y is None):
            raise ValueError(
                f"{name} has a forward-mode tangent, but with pos_weight, mask, label_smoothing, asymmetric "
                f"focusing or sparse targets only input is differentiable; pass {name}.detach()"
            )
    if not _differentiated_further(x, y, weight, pos_weight, x_t, y_t, w_t):
        return _tangent(ctx.options, x, y, weight, pos_weight, mask, grad, x_t, y_t, w_t)
    # from here the Jacobian is recomputed (grad None)
    if torch._C._functorch.peek_interpreter_stack() is None:  # a dual tensor whose tangent autograd differentiates
        return _tangent(ctx.options, x, y, weight, pos_weight, mask, None, x_t, y_t, w_t)
    from torch._C._functorch import _unwrap_for_grad, _wrap_for_grad
    from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

    interpreter = retrieve_current_functorch_interpreter()  # the jvp transform whose rule this is
    level = interpreter.level()
    x = _unwrap_for_grad(x, level)
    y, weight, pos_weight, mask, x_t, y_t, w_t = (
        None if t is None else _unwrap_for_grad(t, level) for t in (y, weight, pos_weight, mask, x_t, y_t, w_t)
    )
    with _level_below(interpreter):
        tangent = _tangent(ctx.options, x, y, weight, pos_weight, mask, None, x_t, y_t, w_t)
    return None if tangent is None else _wrap_for_grad(tangent, level)


def _tangent(
    options: LossOptions,
    x: Tensor,
    y: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    mask: Tensor | None,
    grad: Tensor | None,
    x_t: Tensor | None,
    y_t: Tensor | None,
    w_t: Tensor | None,
) -> Tensor | None:
    """:func:`_jvp_rows`'s tangent; ``grad`` None: the Jacobian from differentiable operations."""
    tangent: Tensor | None = None
    if x_t is not None:
        if grad is None:
            grad = _differentiable_grad(x, _dense_target(y, None, x), weight, pos_weight, mask, options)
        tangent = (grad.to(B.compute_dtype(x.dtype)) * x_t).sum(-1)
    if y_t is not None or w_t is not None:
        assert y is not None
        scale = 1.0 / x.shape[-1]
        if y_t is not None:
            term = -x * y_t * scale
            term = term if weight is None else torch.where(weight == 0, 0.0, term * weight)
            tangent = term.sum(-1) if tangent is None else tangent + term.sum(-1)
        if w_t is not None:  # in the wider dtype, as the weight's gradient in input_grads
            wide = _wide_dtype(x.dtype, w_t.dtype)
            element_loss, _ = element_loss_and_grad(x.to(wide), y.to(wide), torch, need_grad=False)
            term = (element_loss * w_t.to(wide) * scale).sum(-1)
            tangent = term if tangent is None else tangent + term
    return tangent


def _forward_differentiated(*tensors: Tensor | None) -> bool:
    """Whether forward-mode AD differentiates what is computed from ``tensors``, whatever the grad mode: under a
    ``torch.func`` jvp transform (jacfwd, hessian) or with a ``torch.autograd.forward_ad`` dual tensor among them."""
    interpreters = torch._C._functorch.get_interpreter_stack()
    if interpreters:
        return any(interpreter.key() == torch._C._functorch.TransformType.Jvp for interpreter in interpreters)
    return _forward_ad._current_level >= 0 and any(_has_tangent(t) for t in tensors)


def _differentiated_further(*tensors: Tensor | None) -> bool:
    """Whether a tangent computed from ``tensors`` may be differentiated in turn: under a ``torch.func`` grad or jvp
    transform below the current one (``jvp`` of ``jvp``, ``grad`` of ``jvp``, ``hessian`` by ``jacfwd``), or with an
    operand (under functorch's wrappers) that requires grad (a dual tensor's tangent differentiated by
    ``torch.autograd``)."""
    interpreters = torch._C._functorch.get_interpreter_stack() or []
    autograd_based = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)
    if any(interpreter.key() in autograd_based for interpreter in interpreters[:-1]):
        return True
    for t in tensors:
        while t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t):
            t = torch._C._functorch.get_unwrapped(t)
        if t is not None and t.requires_grad:
            return True
    return False


def _register_forward_ad(op: Any) -> None:
    """Replace ``op``'s Autograd kernel (made by ``register_autograd``) with one that also carries forward-mode
    tangents (``torch.autograd.forward_ad`` dual tensors, ``torch.func.jvp`` / ``jacfwd`` / ``hessian``) and takes
    ``torch.func.grad`` / ``jacrev``, eager or inside ``torch.compile``."""
    import warnings

    try:
        from torch._functorch.utils import enable_single_level_autograd_function
        from torch._library.autograd import make_autograd_impl
    except ImportError:  # pragma: no cover - another torch's internals: torch's kernel stays
        return
    if not _FUNCTORCH_INTERNALS:  # pragma: no cover
        return
    reverse_only = make_autograd_impl(op._opoverload, op)
    overload = op._opoverload

    def forward(*args: Any) -> tuple[Tensor, Tensor, Tensor]:
        # the operator below autograd, with its Jacobian (the tangent is made of it) whether asked for or not
        with torch._C._AutoDispatchBelowAutograd():
            return overload(*args[:12], True, args[13])  # type: ignore[no-any-return]

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        _, grad, counted = output
        ctx.mark_non_differentiable(grad, counted)
        ctx.set_materialize_grads(False)
        _setup_context(ctx, inputs, output)  # reverse mode, as torch's kernel: refuses what backward cannot do
        x, y, weight, pos_weight, mask, indptr = inputs[:6]
        ctx.extras = pos_weight is not None or mask is not None or indptr is not None
        ctx.save_for_forward(x, y, weight, pos_weight, mask, grad)

    def backward(ctx: Any, grad_per_sample: Tensor | None, _grad: Any, _counted: Any) -> tuple[Tensor | None, ...]:
        if grad_per_sample is None:
            return (None,) * 14
        return _backward(ctx, grad_per_sample, _grad, _counted)

    def jvp(ctx: Any, x_t: Any, y_t: Any, w_t: Any, pw_t: Any, _m: Any, _ip: Any, _ix: Any, values_t: Any,
            *_: Any) -> tuple[Tensor | None, None, None]:  # fmt: skip
        if values_t is not None:
            raise ValueError(
                "values has a forward-mode tangent, but torch.ops.softmargin.loss_rows never differentiates a sparse "
                "target; pass values.detach()"
            )
        return _jvp_rows(ctx, x_t, y_t, w_t, pw_t), None, None

    rules = {"forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
             "backward": staticmethod(backward), "jvp": staticmethod(jvp)}  # fmt: skip
    function: Any = type(f"{op._name}_forward_ad", (torch.autograd.Function,), rules)
    single_level: Any = type(f"{op._name}_forward_ad_level", (torch.autograd.function._SingleLevelFunction,), {
        **rules, "forward": staticmethod(lambda *args: _at_level_below(overload, *args))
    })  # fmt: skip

    def kernel(keyset: Any, *args: Any) -> Any:
        interpreter = torch._C._functorch.peek_interpreter_stack()
        if interpreter is None:
            if _forward_ad._current_level < 0 or not any(_has_tangent(t) for t in args[:8]):
                return reverse_only(keyset, *args)
            per_sample, grad, counted = function.apply(*args)
        elif interpreter.key() == _JVP or (
            interpreter.key() == _GRAD and torch.is_grad_enabled() and torch._C._any_requires_grad(*args)
        ):  # a torch.func transform's tensors (torch's kernel refuses them: its autograd.Function has no setup_context;
            # and no operator may run here to look for a tangent): its level unwrapped, the operator run a level
            # below, as torch does for an autograd.Function
            with enable_single_level_autograd_function():
                per_sample, grad, counted = single_level.apply(*args)
        else:
            return reverse_only(keyset, *args)
        return per_sample, (grad if args[12] else grad.new_empty(0)), counted

    with warnings.catch_warnings():  # torch warns of the kernel it replaces, its own
        warnings.simplefilter("ignore")
        op._lib.impl(op._name, kernel, "Autograd", with_keyset=True)


def _at_level_below(overload: Any, *args: Any) -> Any:
    """The operator on a torch.func transform's operands unwrapped, run in the transform below (what
    ``torch._functorch.autograd_function`` does for an autograd.Function), with its Jacobian; outputs wrapped again."""
    from torch._C._functorch import _unwrap_for_grad, _wrap_for_grad
    from torch._functorch.autograd_function import wrap_outputs_maintaining_identity
    from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

    interpreter = retrieve_current_functorch_interpreter()
    level = interpreter.level()
    unwrapped = tuple(_unwrap_for_grad(a, level) if isinstance(a, Tensor) else a for a in args)
    with _level_below(interpreter):
        output = overload(*unwrapped[:12], True, unwrapped[13])
    return wrap_outputs_maintaining_identity(output, unwrapped, args, lambda t: _wrap_for_grad(t, level))


@contextlib.contextmanager
def _level_below(interpreter: Any) -> Iterator[None]:
    """Run in the ``torch.func`` transform below ``interpreter`` (the current one), with autograd and forward-mode AD
    on, as ``torch._functorch.autograd_function`` runs an autograd.Function's forward."""
    # the dispatch state of the transforms' callers, which the operator's Autograd kernel runs without (the transforms'
    # own keys excluded: functorch restores it for the layer below, as here)
    exclude = torch._C._dispatch_tls_local_exclude_set() - _LAYER_KEYS
    include = torch._C._dispatch_tls_local_include_set()
    with torch.enable_grad(), _forward_ad._set_fwd_grad_enabled(True), interpreter.lower():
        if torch._C._functorch.peek_interpreter_stack() is None:  # no transform below: none of their keys
            include = include - _LAYER_FRONT_BACK
        with torch._C._ForceDispatchKeyGuard(include, exclude):
            yield


_register_rules(loss_rows, "softmargin::loss_rows")


# ---- the same operator as a triton_op, for CUDA tensors under torch.compile ------------------------------------------

#: ``torch.ops.softmargin.loss_rows_triton`` once registered (:func:`ensure_triton_op`), else None.
loss_rows_triton: Any = None


def ensure_triton_op() -> Any:
    """Register ``softmargin::loss_rows_triton`` (once) and return it; None where Triton is not installed.

    It is :func:`loss_rows` again (same schema, implementation, autograd, vmap and autocast rules) registered with
    ``torch.library.triton_op``: its implementation launches the Triton kernel through ``wrap_triton``, so under
    ``torch.compile`` AOTAutograd traces into it and inductor sees the kernel itself (it schedules it with the
    surrounding graph and may fuse around it) instead of an opaque call. ``torch.export`` keeps it as one operator.
    :func:`compute` calls it for CUDA tensors while compiling. Registered when ``softmargin.torch`` is imported on a
    machine with a CUDA device (registration imports Triton: not done on CPU-only machines, where it would only cost
    time), or by calling this function (the tests do, to run it through Triton's interpreter on the CPU).
    """
    global loss_rows_triton
    if loss_rows_triton is not None:
        return loss_rows_triton
    if B.triton_module() is None:
        return None

    op: Any = torch.library.triton_op("softmargin::loss_rows_triton", _loss_rows_impl, mutates_args=())
    _register_rules(op, "softmargin::loss_rows_triton")
    loss_rows_triton = op
    return op


# ---- the eager path ------------------------------------------------------------------------------------------------


def _ordinary(tensors: tuple[Tensor | None, ...]) -> bool:
    """Whether every tensor is an ordinary one with data and nothing intercepts the call (no compile, export,
    torch.func transform, dispatch or function mode, subclass, meta or fake tensor): then the eager path may run the
    implementation directly."""
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return False
    return all(
        t is None or ((type(t) is Tensor or type(t) is torch.nn.Parameter) and not t.is_meta) for t in tensors
    )


class _EagerLoss(torch.autograd.Function):
    """The operator's eager path: the same implementation without the dispatcher; the precomputed gradient handed to
    autograd without a copy; ``jvp`` for forward-mode AD (``torch.autograd.forward_ad`` dual tensors). Under
    ``torch.compile``/``torch.export`` and ``torch.func`` transforms the operator itself is called instead (dynamo
    does not trace a custom ``jvp``; functorch's generated vmap rule for an autograd.Function failed on
    ``jacrev(jacfwd(loss))``)."""

    @staticmethod
    def forward(
        x: Tensor,
        y: Tensor | None,
        weight: Tensor | None,
        pos_weight: Tensor | None,
        mask: Tensor | None,
        indptr: Tensor | None,
        indices: Tensor | None,
        values: Tensor | None,
        options: LossOptions,
        need_grad: bool,
        check: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        tensors = (x, y, weight, pos_weight, mask, indptr, indices, values)
        if _ordinary(tensors):
            return _compute_rows(*tensors, options, need_grad, check)
        return loss_rows(  # type: ignore[no-any-return]
            *tensors, options.label_smoothing, options.gamma_pos, options.gamma_neg, options.clip, need_grad, check
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        x, y, weight, pos_weight, mask, indptr, indices, values, options, _, _ = inputs
        _, grad, counted = output
        ctx.mark_non_differentiable(grad, counted)
        ctx.set_materialize_grads(False)  # absent tangents (a target without one) stay None, not zeros
        ctx.options = options
        ctx.own_grad = _ordinary((x, y, weight, pos_weight, mask, grad))
        if ctx.own_grad:
            # kept on ctx, not saved: backward scales it in place and hands it over (autograd then makes this very
            # tensor input.grad); a second backward (retain_graph=True) recomputes it
            ctx.grad = grad
            ctx.save_for_backward(x, y, weight, pos_weight, mask, indptr, indices, values)
        else:
            ctx.save_for_backward(x, y, weight, pos_weight, mask, indptr, indices, values, grad)
        ctx.save_for_forward(x, y, weight, pos_weight, mask, grad)
        ctx.extras = pos_weight is not None or mask is not None  # forward mode: only input's tangent then

    @staticmethod
    def backward(ctx: Any, grad_per_sample: Tensor | None, _grad: Any, _counted: Any) -> tuple[Tensor | None, ...]:
        if grad_per_sample is None:
            return (None,) * 11
        saved = ctx.saved_tensors
        x, y, weight, pos_weight, mask, indptr, indices, values = saved[:8]
        if ctx.own_grad:
            grad, ctx.grad = ctx.grad, None
        else:
            grad = saved[8]
        grads = input_grads(
            tuple(ctx.needs_input_grad[:3]), x, y, _sparse_of(x, indptr, indices, values), weight, pos_weight,
            mask, ctx.options, grad, grad_per_sample, in_place=ctx.own_grad,
        )  # fmt: skip
        return (*grads, None, None, None, None, None, None, None, None)

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor | None, y_t: Tensor | None, w_t: Tensor | None, pw_t: Tensor | None,
            *_: Any) -> tuple[Any, ...]:  # fmt: skip
        return _jvp_rows(ctx, x_t, y_t, w_t, pw_t), None, None


class _EagerReducedLoss(torch.autograd.Function):
    """The common eager call (ordinary tensors, no transform, no forward-mode AD) in one autograd node: the
    operator's implementation and the batch reduction in forward, and in backward the per-sample gradient that
    autograd would pass through the reduction's operations, rebuilt with the same operations (so the result is
    bitwise that of the operator's path, tested), times the precomputed gradient, scaled in place and handed over.
    One node instead of four: small calls are dominated by such overheads."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor | None,
        weight: Tensor | None,
        pos_weight: Tensor | None,
        mask: Tensor | None,
        indptr: Tensor | None,
        indices: Tensor | None,
        values: Tensor | None,
        options: LossOptions,
        check: bool,
        reduction: str,
        dtype: torch.dtype,
    ) -> Tensor:
        per_sample, grad, counted = _compute_rows(
            x, y, weight, pos_weight, mask, indptr, indices, values, options, ctx.needs_input_grad[0], check
        )
        ctx.save_for_backward(x, y, weight, pos_weight, mask, indptr, indices, values)
        ctx.grad, ctx.counted, ctx.options, ctx.reduction = grad, counted, options, reduction
        ctx.per_sample = (per_sample.shape, per_sample.dtype)
        return reduce(per_sample, counted, reduction, mask is not None, dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x, y, weight, pos_weight, mask, indptr, indices, values = ctx.saved_tensors
        shape, dtype = ctx.per_sample
        if ctx.reduction == "none":  # the reduction was per_sample.to(dtype)
            grad_per_sample = grad_output.to(dtype)
        else:  # per_sample.sum(dtype=float64) [/ count].to(dtype)
            total = grad_output.to(torch.float64)
            if ctx.reduction == "mean":
                if mask is not None:  # a 0-d tensor; from _OptionsLoss a float (no tensor made for this rare path)
                    counted = ctx.counted
                    total = total / (counted.clamp_min(1.0) if isinstance(counted, Tensor) else max(counted, 1.0))
                elif math.prod(shape):
                    total = total / math.prod(shape)
                else:
                    total = total * math.nan
            grad_per_sample = total.expand(shape).to(dtype)
        grad, ctx.grad = ctx.grad, None
        grads = input_grads(
            tuple(ctx.needs_input_grad[:3]), x, y, _sparse_of(x, indptr, indices, values), weight, pos_weight, mask,
            ctx.options, grad, grad_per_sample, in_place=True,
        )  # fmt: skip
        return (*grads, None, None, None, None, None, None, None, None, None)


class _Declined(Exception):
    """The plain fast path saw a bad value (target or weight): the general path runs and raises its message."""


#: The kernel's dtype codes (``cpu.DTYPES``) of the inputs the plain fast path takes, and of its targets.
_PLAIN_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_FLOAT32 = torch.float32
_BYTE_TARGETS = (torch.uint8, torch.bool)
_HALVES = (torch.float16, torch.bfloat16)
_BOOL = torch.bool
_REDUCTIONS = {"mean": 1, "sum": 2, "none": 0}
#: A 0-dim CPU tensor per dtype code, never written: empty_like of it allocates the result (0.3 us less than
#: new_empty(())). Made here, once: no call's tensor (fake, meta, functional, a subclass) can land in it.
_SCALARS = {code: torch.zeros((), dtype=dtype) for dtype, code in _PLAIN_CODES.items()}


class _PlainLoss(torch.autograd.Function):
    """The most common eager call, the plain loss of a contiguous (N, C) batch (any float dtype) reduced to its mean
    or sum, with as little around the kernel as Python allows: small calls are dominated by overheads (a few
    microseconds per torch operation). The kernel library computes the gradient, each row's loss and their
    reduction in one call (``softmargin_reduced``), and backward scales the gradient by autograd's incoming one in
    place (``softmargin_scale``): the same arithmetic, in the same order, as the operator's path followed by
    :func:`reduce` and :func:`input_grads`, so the results are bitwise the same (tested). Anything else (second
    derivatives, a second backward, an unusual incoming gradient) goes through :class:`_EagerReducedLoss`'s
    backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, weight: Tensor | None, reduction: str, check: bool) -> Tensor:
        num_rows, num_classes = x.shape
        code = _PLAIN_CODES[x.dtype]
        # a float32 target of float16/bfloat16 logits is read as it is, and the loss is float32 (torch's promotion)
        y_code = code if y.dtype is x.dtype else 0 if y.dtype is _FLOAT32 else 4
        result_code = 0 if y_code == 0 else code
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(x) if need_grad else None
        result = _result(result_code, reduction, num_rows)
        arguments = (  # a float16/bfloat16 weight goes as it is: the kernel converts it to float32 (exactly)
            code, y_code, x.data_ptr(), y.data_ptr(),
            None if weight is None else weight.data_ptr(), code, num_rows, num_classes, None if grad is None else grad.data_ptr(), torch.get_num_threads(),
            1 if code == 1 else 0, result_code, _REDUCTIONS[reduction], check, result.data_ptr(),
        )  # fmt: skip
        status = (cpu.fastcall() or cpu).reduced(*arguments)
        if status:
            if status < 0:
                cpu.reduced(*arguments)  # raises, with the kernel's message
            raise _Declined
        if need_grad:
            ctx.save_for_backward(x, y, weight, None, None, None, None, None)
            per_sample_dtype = torch.float64 if code == 1 else _FLOAT32  # B.per_sample_dtype for these operands
            ctx.grad, ctx.options, ctx.reduction, ctx.per_sample = grad, PLAIN, reduction, ((num_rows,), per_sample_dtype)
            ctx.divisor = float(num_rows) if reduction == "mean" else 1.0
        return result

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (*_reduced_backward(ctx, grad_output), None, None)


def _result(code: int, reduction: str, num_rows: int) -> Tensor:
    """The kernel's result: a 0-d tensor of dtype ``code`` (empty_like of one made once: 0.3 us less than
    new_empty), or one per row for reduction "none"."""
    if reduction == "none":
        return _SCALARS[code].new_empty(num_rows)
    return torch.empty_like(_SCALARS[code])


def _reduced_backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
    """The backward of :class:`_PlainLoss` and :class:`_OptionsLoss`: the gradient computed in forward scaled in
    place by the incoming one over ``ctx.divisor`` (``softmargin_scale``), as :class:`_EagerReducedLoss`'s backward
    computes it with torch's operations, which anything unusual takes. Gradients of (input, target, weight)."""
    grad = ctx.grad
    code = _PLAIN_CODES.get(grad_output.dtype)
    if (
        grad is None or code is None or torch.is_grad_enabled() or ctx.needs_input_grad[1] or ctx.reduction == "none"
        or type(grad_output) is not Tensor or not grad_output.is_cpu or _batched(grad_output)
    ):  # fmt: skip
        # ("none": one incoming gradient per sample, which the general backward multiplies in with one operation)
        return _EagerReducedLoss.backward(ctx, grad_output)[:3]
    ctx.grad = None  # handed over: autograd makes this very tensor input.grad
    arguments = (
        grad.data_ptr(), _PLAIN_CODES[grad.dtype], grad.numel(), grad_output.data_ptr(), code, ctx.divisor,
        torch.get_num_threads(),
    )  # fmt: skip
    if (cpu.fastcall() or cpu).scale(*arguments):
        cpu.scale(*arguments)  # raises, with the reason
    return grad, None, None


class _OptionsLoss(torch.autograd.Function):
    """:class:`_PlainLoss` for the common eager call with options: pos_weight and the weight one row each, a mask of
    the input's shape or one row, label smoothing, asymmetric focusing. One kernel call (``softmargin_reduced_options``)
    computes the gradient, the rows' losses over their divisors and their reduction, with the operator's path's
    arithmetic in its order (:func:`_native`, ``row_bookkeeping``, :func:`reduce`), so the results are bitwise the same
    (tested); :func:`options_loss` says when. A row the general path computes otherwise (a pos_weight term beyond
    float32) or a bad value declines the call: the general path then runs (and raises its message)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor,
        weight: Tensor | None,
        pos_weight: Tensor | None,
        mask: Tensor | None,
        options: LossOptions,
        reduction: str,
        check: bool,
    ) -> Tensor:
        num_rows, num_classes = x.shape
        code = _PLAIN_CODES[x.dtype]
        y_code = 4 if y.dtype in _BYTE_TARGETS else code if y.dtype is x.dtype else 0
        result_code = 0 if y_code == 0 else code
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(x) if need_grad else None
        result = _result(result_code, reduction, num_rows)
        # the weights in the kernel's type: float32 for a float16/bfloat16 input (exactly, as the operator's path)
        w = weight if weight is None or code < 2 else weight.float()
        pw = pos_weight if pos_weight is None or code < 2 else pos_weight.float()
        status, counted = cpu.reduced_options(
            code, y_code, x.data_ptr(), y.data_ptr(), None if w is None else w.data_ptr(),
            None if pw is None else pw.data_ptr(),
            (None, 0) if mask is None else (mask.data_ptr(), 0 if mask.dim() == 1 else num_classes),
            num_rows, num_classes, (options.label_smoothing, options.gamma_pos, options.gamma_neg, options.clip),
            None if grad is None else grad.data_ptr(), torch.get_num_threads(), 1 if code == 1 else 0, result_code,
            _REDUCTIONS[reduction], check, result.data_ptr(),
        )  # fmt: skip
        if status:
            raise _Declined
        if need_grad:
            ctx.save_for_backward(x, y, weight, pos_weight, mask, None, None, None)
            per_sample_dtype = torch.float64 if code == 1 else _FLOAT32  # B.per_sample_dtype for these operands
            ctx.grad, ctx.options, ctx.reduction, ctx.per_sample = grad, options, reduction, ((num_rows,), per_sample_dtype)
            masked_mean = mask is not None and reduction == "mean"
            ctx.divisor = max(counted, 1.0) if masked_mean else float(num_rows) if reduction == "mean" else 1.0
            if mask is not None:  # for _EagerReducedLoss's backward, which anything unusual takes
                ctx.counted = counted
        return result

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (*_reduced_backward(ctx, grad_output), None, None, None, None, None)


_Parameter = torch.nn.Parameter
_is_compiling = torch.compiler.is_compiling
_interpreter = torch._C._functorch.peek_interpreter_stack
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _batched(t: Tensor) -> bool:
    """Whether ``t`` carries a batch dimension it does not show: a batched backward (``torch.autograd.grad(...,
    is_grads_batched=True)``, a vectorised jacobian: the legacy vmap) or a functorch-wrapped tensor."""
    return bool(torch._C._functorch.is_legacy_batchedtensor(t) or _wrapped(t))

_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_forward_ad = torch.autograd.forward_ad
_tracing = torch._C._is_tracing
_STRIDED = torch.strided
try:  # whether SOFTMARGIN_BACKEND is set, without os.environ.get's key encoding (a microsecond: a tenth of a small
    # call); os.environ keeps its encoded keys in _data, which setenv, monkeypatch and os.environ writes update
    _ENV_DATA, _ENV_KEY = _environ._data, _environ.encodekey("SOFTMARGIN_BACKEND")  # type: ignore[attr-defined]

    def _backend_set() -> bool:
        return _ENV_KEY in _ENV_DATA

except AttributeError:  # pragma: no cover - another Python's os.environ

    def _backend_set() -> bool:
        return "SOFTMARGIN_BACKEND" in _environ
try:  # Function.apply without its Python wrapper, whose work (functorch transforms, their escaped wrappers) the
    # checks below rule out: a small call notices its 2-3 microseconds
    _plain_apply: Any = torch._C._FunctionBase.__dict__["apply"].__get__(None, _PlainLoss)
    _options_apply: Any = torch._C._FunctionBase.__dict__["apply"].__get__(None, _OptionsLoss)
except (AttributeError, KeyError):  # pragma: no cover - another torch's internals
    _plain_apply = _PlainLoss.apply
    _options_apply = _OptionsLoss.apply


def _fast_batch(input: Tensor, target: Any, reduction: str) -> bool:
    """Whether the batch is one the kernel library reduces (:func:`plain_loss`), cheapest checks first."""
    if (
        _is_compiling() or _tracing()
        or (type(input) is not Tensor and type(input) is not _Parameter) or type(target) is not Tensor
    ):  # fmt: skip
        return False  # compiling first: dynamo folds it to a constant and traces nothing below (nor does
        # torch.jit.trace, which would freeze the checks below into the trace)
    dtype = input.dtype
    return not (
        dtype not in _PLAIN_CODES or reduction not in _REDUCTIONS
        or (
            target.dtype is not dtype and target.dtype not in _BYTE_TARGETS
            and not (target.dtype is _FLOAT32 and dtype in _HALVES)
        )
        or input.layout is not _STRIDED or target.layout is not _STRIDED
        or input.dim() != 2 or target.shape != input.shape or not input.is_cpu or not target.is_cpu
        or not input.is_contiguous() or not target.is_contiguous() or target.requires_grad or input.numel() == 0
    )  # fmt: skip


def _fast_row(value: Any, input: Tensor) -> bool:
    """Whether a weight (or pos_weight) is one row the kernel library reads: (C,), the input's dtype, no gradient."""
    return not (
        (type(value) is not Tensor and type(value) is not _Parameter) or value.dtype is not input.dtype
        or value.layout is not _STRIDED or value.shape != input.shape[1:] or not value.is_cpu
        or not value.is_contiguous() or value.requires_grad or _wrapped(value)
    )  # fmt: skip


def _untouched(input: Tensor, target: Tensor) -> bool:
    """Whether nothing traces or intercepts the call, the kernel library is loaded and SOFTMARGIN_BACKEND allows it."""
    return not (
        _interpreter() is not None or _dispatch_modes() or _function_modes()
        or _forward_ad._current_level >= 0 or _wrapped(input) or _wrapped(target) or cpu.kernel() is None
        or (_backend_set() and B.requested_backend() not in ("auto", "cpu"))
    )  # fmt: skip


def plain_loss(input: Tensor, target: Any, weight: Tensor | None, reduction: str, check: bool) -> Tensor | None:
    """The loss by :class:`_PlainLoss` when the call is one it takes (checked here, cheapest first), else None:
    ordinary contiguous CPU tensors of shape (N, C), of a float dtype, a target of the input's dtype, uint8 or
    bool (or float32 for a float16/bfloat16 input: mixed precision's usual pair) that needs no gradient, no weight or a (C,) one of the input's dtype that needs none, reduction mean, sum or none,
    nothing tracing or intercepting the call, the kernel library loaded and not overridden by SOFTMARGIN_BACKEND.
    A bad target or weight value also answers None: the general path then raises its message."""
    if not _fast_batch(input, target, reduction) or (weight is not None and not _fast_row(weight, input)):
        return None
    if not _untouched(input, target):
        return None
    try:
        loss: Tensor = _plain_apply(input, target, weight, reduction, check)
    except _Declined:
        return None
    return loss


def options_loss(
    input: Tensor,
    target: Any,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    mask: Tensor | None,
    options: LossOptions,
    reduction: str,
    check: bool,
) -> Tensor | None:
    """The loss by :class:`_OptionsLoss` when the call is one it takes, else None: what :func:`plain_loss` takes,
    with pos_weight None or a (C,) tensor like the weight, and a bool mask of the input's shape or (C,) (or neither,
    with options)."""
    if (
        not _fast_batch(input, target, reduction)
        or (weight is not None and not _fast_row(weight, input))
        or (pos_weight is not None and not _fast_row(pos_weight, input))
    ):  # fmt: skip
        return None
    if mask is not None and (
        type(mask) is not Tensor or mask.dtype is not _BOOL or mask.layout is not _STRIDED
        or (mask.shape != input.shape and mask.shape != input.shape[1:]) or not mask.is_cpu
        or not mask.is_contiguous() or _wrapped(mask)
    ):  # fmt: skip
        return None
    if not _untouched(input, target):
        return None
    try:
        loss: Tensor = _options_apply(input, target, weight, pos_weight, mask, options, reduction, check)
    except _Declined:
        return None
    return loss


def _forward_ad_active(x: Tensor) -> bool:
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))


@dataclass(frozen=True)
class Problem:
    """One loss call, validated and normalised by the public entry point: what the operator needs.

    ``target`` is dense (``input``'s shape) or None with ``sparse`` set; ``weight``, ``pos_weight`` and ``mask``
    broadcast to ``input``; ``result_dtype`` is ``torch.result_type`` of input, target and weight, as torch's loss.
    """

    input: Tensor
    target: Tensor | None
    sparse: SparseTargets | None
    weight: Tensor | None
    pos_weight: Tensor | None
    mask: Tensor | None
    options: LossOptions
    reduction: str
    check: bool
    result_dtype: torch.dtype


def compute(problem: Problem) -> Tensor:
    """The loss of a validated problem: the operator, then the reduction over the batch."""
    x = problem.input
    sparse = problem.sparse
    indptr, indices, values = (None, None, None) if sparse is None else (sparse.indptr, sparse.indices, sparse.values)
    operands = (x, problem.target, problem.weight, problem.pos_weight, problem.mask, indptr, indices, values)
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        # (under torch.func, the operator's own Autograd kernel: an autograd.Function there is run by functorch's
        # generated vmap rule, which failed on jacrev(jacfwd(loss)) and jacfwd(jacfwd(loss)))
        need_grad = x.requires_grad
        o = problem.options
        op = _operator_for(x)
        per_sample, _, counted = op(
            *operands, o.label_smoothing, o.gamma_pos, o.gamma_neg, o.clip, need_grad, problem.check
        )
    elif _ordinary(operands) and torch.autograd.forward_ad._current_level < 0:
        loss: Tensor = _EagerReducedLoss.apply(*operands, problem.options, problem.check, problem.reduction, problem.result_dtype)
        return loss
    else:
        need_grad = x.requires_grad or _forward_ad_active(x)
        per_sample, _, counted = _EagerLoss.apply(*operands, problem.options, need_grad, problem.check)
    return reduce(per_sample, counted, problem.reduction, problem.mask is not None, problem.result_dtype)


def _total(per_sample: Tensor) -> Tensor:
    """The per-sample losses summed in float64: on the CPU in order, first to last (a cumulative sum's last element),
    as the kernel library's reduced call sums them (:class:`_PlainLoss`), so that every eager path gives the same
    bits; elsewhere, and under ``torch.compile``, by ``sum``."""
    if per_sample.device.type == "cpu" and _numel(per_sample) and not torch.compiler.is_compiling():
        return per_sample.reshape(-1).cumsum(0, dtype=torch.float64)[-1]
    return per_sample.sum(dtype=torch.float64)


def reduce(per_sample: Tensor, counted: Tensor, reduction: str, masked: bool, dtype: torch.dtype) -> Tensor:
    """The batch reduction (sums in float64). An empty batch gives NaN for "mean", as torch's does; a batch whose
    labels are all missing gives 0."""
    if reduction == "none":
        return per_sample.to(dtype)
    total = _total(per_sample)
    if reduction == "sum":
        return total.to(dtype)
    if _numel(per_sample) == 0:  # NaN, by an empty mean: total * nan failed under vmap with no batch (jacfwd, hessian)
        return per_sample.mean(dtype=torch.float64).to(dtype)
    if masked:
        return (total / counted.clamp_min(1.0)).to(dtype)
    return (total / _numel(per_sample)).to(dtype)


def _numel(t: Tensor) -> int:
    """``t.numel()``; in TorchScript the product of its sizes: there ``numel`` is an operator, which ``vmap`` has no
    rule for (``torch.func.vmap`` of a scripted loss failed), where sizes are the batched tensor's own."""
    if torch.jit.is_scripting():
        count = 1
        for size in t.shape:
            count *= size
        return count
    return t.numel()


def script_loss(
    input: Tensor,
    target: Any,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    mask: Tensor | None,
    options: tuple[float, float, float, float],
    reduction: str,
    check: bool,
) -> Tensor:
    """The loss in the Python that TorchScript compiles: a scripted
    :class:`softmargin.torch.MultiLabelSoftMarginLoss` runs it, and a call under ``torch.jit.trace`` is recorded as a
    call of it (so a traced module keeps its batch size and the inputs' layout free, and saves with
    ``torch.jit.save``). The operator, which checks its operands' dtypes, shapes, devices and (``check``) values, then
    :func:`reduce`, as :func:`compute` under ``torch.compile``: the same results as an eager call. ``options`` is
    ``(label_smoothing, gamma_pos, gamma_neg, clip)``. A sparse target, label lists and ``__torch_function__``
    subclasses need Python: eager calls only."""
    if not isinstance(target, Tensor) or target.layout != torch.strided:
        raise TypeError(
            "target: expected a dense tensor of the input's shape; a TorchScript module (torch.jit.script) takes no "
            "sparse target or label lists (they are read on the host, in Python): call the module eagerly, or under "
            "torch.compile or torch.export, for them"
        )
    if reduction != "none" and reduction != "mean" and reduction != "sum":  # V.check_reduction's message (TorchScript
        # cannot call it): reduce() would take any other string for "mean"
        raise ValueError("reduction='" + reduction + "' is not valid: expected one of 'none', 'mean', 'sum'")
    device = input.device
    weight, pos_weight, mask = to_device(weight, device), to_device(pos_weight, device), to_device(mask, device)
    label_smoothing, gamma_pos, gamma_neg, clip = options
    per_sample, _, counted = torch.ops.softmargin.loss_rows(
        input, target, weight, pos_weight, mask, None, None, None, label_smoothing, gamma_pos, gamma_neg, clip,
        input.requires_grad and torch.is_grad_enabled(), check,
    )  # fmt: skip
    return reduce(per_sample, counted, reduction, mask is not None, promoted_dtype(input.dtype, target, weight))


# ---- DTensor: the operator is row-wise, so rows may be sharded -------------------------------------------------------

_SHARDING_REGISTERED = False


def ensure_dtensor_sharding() -> None:
    """Register the operator's sharding rules with DTensor (once, and only when DTensor is in use: importing it is
    not free). Rows (the leading dimension) may be sharded: per-sample losses and the gradient are sharded alike and
    the count of samples in the mean is a partial sum; anything else runs replicated."""
    global _SHARDING_REGISTERED
    if _SHARDING_REGISTERED:
        return
    from torch.distributed.tensor import Partial, Replicate, Shard
    from torch.distributed.tensor.experimental import register_sharding

    def _sharding(x: Any, y: Any, w: Any, pw: Any, mask: Any, indptr: Any, indices: Any, values: Any, *scalars: Any) -> Any:
        operands = (x, y, w, pw, mask, indptr, indices, values)
        tail = [None] * len(scalars)
        replicated = [None if t is None else Replicate() for t in operands]
        strategies: list[tuple[list[Any], list[Any]]] = [([Replicate(), Replicate(), Replicate()], replicated + tail)]
        if x.ndim >= 2 and indptr is None:

            def rows(t: Any) -> Any:  # an operand with the input's rows is sharded with them, a smaller one replicated
                if t is None:
                    return None
                return Shard(0) if t.ndim == x.ndim and t.shape[0] == x.shape[0] else Replicate()

            sharded = [Shard(0), rows(y), rows(w), rows(pw), rows(mask), None, None, None]
            strategies.append(([Shard(0), Shard(0), Partial("sum")], sharded + tail))
        return strategies

    register_sharding(torch.ops.softmargin.loss_rows.default)(_sharding)
    if loss_rows_triton is not None:  # the same rules for the operator that CUDA tensors take under torch.compile
        register_sharding(torch.ops.softmargin.loss_rows_triton.default)(_sharding)
    _SHARDING_REGISTERED = True
