"""The fused linear head: ``loss(hidden @ weight.T + bias, target)`` and its gradients without the N x C logits.

Labels are walked in chunks (and rows too, when one chunk of rows would not fit the memory budget): each chunk's
logits are formed, passed through the fused loss kernel (``torch_ops.loss_and_grad``), and turned at once into their
contributions to the gradients w.r.t. ``hidden``, ``weight`` and ``bias``; only one chunk of logits and of their
gradient ever exists. For "mean" and "sum" every gradient is computed in forward and backward only scales it; for
"none" backward walks the chunks again with the incoming per-sample gradient.

Label-parallel training: with a ``process_group``, each process holds a shard of the labels (rows of ``weight``);
the per-sample loss sums and the gradient w.r.t. ``hidden`` are combined with one all-reduce each, and each shard's
weight and bias gradients stay local.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from .._options import LossOptions
from .._sparse import SparseTargets
from ._backends import choose_backend, compute_dtype, triton_module
from ._ops import loss_rows

#: Largest default memory budget for one chunk's temporaries (logits, their gradient, the target chunk).
DEFAULT_BUDGET = 256 << 20


def auto_budget(num_rows: int, num_labels: int) -> int:
    """The default budget: 1/32 of what the full float32 logits would take, within [4 MiB, 256 MiB], so the
    temporaries stay a few per cent of the plain path's memory at any size, and the chunks large enough for fast
    matrix products."""
    return int(min(DEFAULT_BUDGET, max(4 << 20, num_rows * num_labels * 4 // 32)))


def chunk_shape(num_rows: int, num_labels: int, budget_bytes: int, label_chunk: int | None = None) -> tuple[int, int]:
    """(rows, labels) per chunk so that about four float32 (rows x labels) temporaries fit ``budget_bytes``."""
    per_element = 16  # logits, their gradient, a target chunk and slack, 4 bytes each
    if label_chunk is None:
        label_chunk = max(1, min(num_labels, budget_bytes // max(1, per_element * max(num_rows, 1))))
        label_chunk = max(label_chunk, min(num_labels, 1024))  # keep the matrix products efficient
    label_chunk = max(1, min(label_chunk, num_labels))
    row_chunk = max(1, min(num_rows, budget_bytes // (per_element * label_chunk)))
    return row_chunk, label_chunk


def _target_block(target: Any, r0: int, r1: int, c0: int, c1: int) -> Any:
    """Rows r0:r1, labels c0:c1 of the target: a dense slice, or a SparseTargets restricted to the block."""
    if not isinstance(target, SparseTargets):
        return target[r0:r1, c0:c1]
    lo, hi = int(target.indptr[r0]), int(target.indptr[r1])
    indices = target.indices[lo:hi]
    rows = torch.repeat_interleave(torch.arange(r1 - r0, device=indices.device), target.indptr[r0 + 1:r1 + 1] - target.indptr[r0:r1])
    keep = (indices >= c0) & (indices < c1)
    counts = torch.bincount(rows[keep], minlength=r1 - r0)
    indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    values = None if target.values is None else target.values[lo:hi][keep]
    return SparseTargets(indptr, indices[keep] - c0, values, (r1 - r0, c1 - c0), torch)


def _all_reduce(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    """Sum over the label shards. A process that died or never arrives makes this fail after the process group's
    timeout (``init_process_group(timeout=...)``) instead of hanging; the error says so."""
    if group is not None:
        try:
            torch.distributed.all_reduce(tensor, group=group)
        except RuntimeError as exc:
            raise RuntimeError(
                "softmargin: the label-parallel all-reduce failed; another process of the group has probably failed "
                f"or stopped (the wait is bounded by the process group's timeout): {exc}"
            ) from exc
    return tensor


def walk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: Any,
    class_weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    options: LossOptions,
    row_scale: torch.Tensor | None,
    scale: float,
    need: tuple[bool, bool, bool],
    chunks: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One pass over the chunks: local per-row loss sums (float64) and the gradients of ``sum_n row_scale[n] *
    scale * row_loss_n`` (``row_scale`` None: all ones) w.r.t. hidden, weight and bias, as asked by ``need``."""
    num_rows, num_labels = hidden.shape[0], weight.shape[0]
    row_chunk, label_chunk = chunks
    need_hidden, need_weight, need_bias = need
    any_grad = any(need)
    acc = compute_dtype(hidden.dtype)  # gradients accumulate in float32 (float64 for float64 inputs)
    row_sums = torch.zeros(num_rows, dtype=torch.float64, device=hidden.device)
    grad_hidden = torch.zeros_like(hidden, dtype=acc) if need_hidden else None
    grad_weight = torch.zeros_like(weight, dtype=acc) if need_weight else None
    grad_bias = torch.zeros(num_labels, dtype=acc, device=weight.device) if need_bias and bias is not None else None
    # On the Triton backend a chunk is one launch over logits made by cuBLAS, the gradient written over them, and
    # sparse positives read from the whole CSR target in device memory (no slicing, no host round trip)
    on_triton = choose_backend(hidden) == "triton"
    for c0 in range(0, num_labels, label_chunk):
        c1 = min(c0 + label_chunk, num_labels)
        w_chunk = weight[c0:c1]
        cw = None if class_weight is None else class_weight[c0:c1]
        pw = None if pos_weight is None else pos_weight[c0:c1]
        for r0 in range(0, num_rows, row_chunk):
            r1 = min(r0 + row_chunk, num_rows)
            h = hidden[r0:r1]
            if on_triton:
                per_row, grad = _triton_chunk(h, w_chunk, None if bias is None else bias[c0:c1], target, cw, pw,
                                              options, any_grad, r0, r1, c0, c1)  # fmt: skip
                row_sums[r0:r1] += per_row.to(torch.float64) * (c1 - c0)
                if grad is not None:
                    _accumulate(grad, h, w_chunk, row_scale, scale, c1 - c0, (r0, r1, c0, c1), acc,
                                grad_hidden, grad_weight, grad_bias)  # fmt: skip
                continue
            logits = torch.nn.functional.linear(h, w_chunk, None if bias is None else bias[c0:c1])
            y = _target_block(target, r0, r1, c0, c1)
            # per-sample losses divide each row by the chunk's label count: undone below
            sparse = y if isinstance(y, SparseTargets) else None
            per_row, grad, _ = loss_rows(
                logits, None if sparse is not None else y, cw, pw, None,
                *((None, None, None) if sparse is None else (sparse.indptr, sparse.indices, sparse.values)),
                options.label_smoothing, options.gamma_pos, options.gamma_neg, options.clip, any_grad, False,
            )  # fmt: skip
            # in float64: in float32 a chunk mean times its width overflowed (100 labels weighted 1e37: inf)
            row_sums[r0:r1] += per_row.to(torch.float64) * (c1 - c0)
            if any_grad:
                _accumulate(grad, h, w_chunk, row_scale, scale, c1 - c0, (r0, r1, c0, c1), acc,
                            grad_hidden, grad_weight, grad_bias)  # fmt: skip
            del logits, grad
    return row_sums, grad_hidden, grad_weight, grad_bias


def _accumulate(
    grad: torch.Tensor,
    h: torch.Tensor,
    w_chunk: torch.Tensor,
    row_scale: torch.Tensor | None,
    scale: float,
    width: int,
    block: tuple[int, int, int, int],
    acc: torch.dtype,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
) -> None:
    """A chunk's logit gradient (of its per-row means over ``width`` labels) into the parameters' gradients."""
    r0, r1, c0, c1 = block
    factor = scale * width
    grad = grad.to(acc) * (factor if row_scale is None else row_scale[r0:r1, None].to(acc) * factor)
    if grad_hidden is not None:
        grad_hidden[r0:r1] += grad @ w_chunk.to(acc)
    if grad_weight is not None:
        grad_weight[c0:c1] += grad.T @ h.to(acc)
    if grad_bias is not None:
        grad_bias[c0:c1] += grad.sum(0)


def _triton_chunk(
    h: torch.Tensor,
    w_chunk: torch.Tensor,
    b_chunk: torch.Tensor | None,
    target: Any,
    cw: torch.Tensor | None,
    pw: torch.Tensor | None,
    options: LossOptions,
    need_grad: bool,
    r0: int,
    r1: int,
    c0: int,
    c1: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk through the Triton kernel: per-row losses (means over the chunk's labels) and their gradient."""
    keywords: dict[str, Any] = dict(
        weight=cw, pos_weight=pw, label_smoothing=options.label_smoothing, gamma_pos=options.gamma_pos,
        gamma_neg=options.gamma_neg, clip=options.clip, scale=1.0 / (c1 - c0), need_grad=need_grad,
    )  # fmt: skip
    if isinstance(target, SparseTargets):
        # in the compute dtype, as _backends.loss_rows passes them: in h's, float32 soft values were rounded to
        # bfloat16's 8 bits, though the kernel computes in float32
        values = None if target.values is None else target.values.to(compute_dtype(h.dtype))
        keywords.update(sparse=(target.indptr, target.indices, values), sparse_origin=(r0, c0))
        y = None
    else:
        y = target[r0:r1, c0:c1]
    row_sums, grad = triton_module().linear_logits_chunk(h, w_chunk, b_chunk, y, **keywords)
    return row_sums / (c1 - c0), grad


def autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of ``torch.autocast`` for ``device_type`` now (disabled for a device autocast does not know,
    such as "meta")."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        try:
            return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
        except RuntimeError:  # "unknown device type for autocast"
            return False, torch.float32
    if device_type == "cpu":
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


class LinearMultiLabelSoftMarginLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        target: Any,
        class_weight: torch.Tensor | None,
        pos_weight: torch.Tensor | None,
        reduction: str,
        options: LossOptions,
        chunks: tuple[int, int],
        group: Any,
        total_labels: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        num_rows = hidden.shape[0]
        scale = 1.0 / (total_labels * (num_rows if reduction == "mean" else 1)) if total_labels and num_rows else math.nan
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        eager = reduction != "none"  # "none": the incoming gradient differs per sample; walk again in backward
        row_sums, g_hidden, g_weight, g_bias = walk(
            hidden, weight, bias, target, class_weight, pos_weight, options, None, scale,
            need if eager else (False, False, False), chunks,
        )  # fmt: skip
        _all_reduce(row_sums, group)  # the per-sample loss sums over every shard's labels
        if g_hidden is not None:
            _all_reduce(g_hidden, group)  # every shard's labels contribute to d loss / d hidden
        ctx.grads = (g_hidden, g_weight, g_bias)
        ctx.setup = (target, class_weight, pos_weight, options, scale, need, chunks, group, reduction)
        # backward runs outside the forward's autocast region: a walk there (for "none", or a second backward) is
        # put back under it, so that its chunk products see the dtypes forward's did (a bfloat16 hidden from an
        # autocast encoder and float32 weights failed there with "mat1 and mat2 must have the same dtype")
        ctx.autocast = (hidden.device.type, *autocast_state(hidden.device.type))
        ctx.save_for_backward(hidden, weight, bias)
        per_sample = row_sums / total_labels if total_labels else row_sums * math.nan
        if reduction == "none":
            return per_sample.to(dtype)
        total = per_sample.sum()
        return (total / num_rows if reduction == "mean" else total).to(dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: a graph of this backward, for second derivatives
            raise RuntimeError(
                "softmargin: second derivatives through the fused linear head are not available (its backward is a "
                "walk over label chunks, not a graph); compute the logits (hidden @ weight.T + bias) and call "
                "multilabel_soft_margin_loss for them"
            )
        hidden, weight, bias = ctx.saved_tensors
        target, class_weight, pos_weight, options, scale, need, chunks, group, reduction = ctx.setup
        consumed = ctx.grads is None  # a second backward through the same graph (retain_graph=True, gradcheck)
        if reduction == "none" or consumed:  # walk again; "none" folds the per-sample gradient into the walk
            row_scale = grad_output.to(torch.float64) if reduction == "none" else None
            device_type, autocast, autocast_dtype = ctx.autocast
            with torch.autocast(device_type, dtype=autocast_dtype) if autocast else contextlib.nullcontext():
                _, g_hidden, g_weight, g_bias = walk(
                    hidden, weight, bias, target, class_weight, pos_weight, options, row_scale, scale, need, chunks,
                )  # fmt: skip
            if g_hidden is not None:
                _all_reduce(g_hidden, group)
        else:
            # ctx drops its references, so that (for the usual loss.backward(), with no scaling below) autograd
            # makes these very tensors the parameters' .grad: the head's weight gradient is allocated once
            g_hidden, g_weight, g_bias = ctx.grads
            ctx.grads = None
        if reduction != "none":  # scaled in place (the tensors are ours alone) and handed over: no copies
            g_hidden, g_weight, g_bias = (None if g is None else g.mul_(grad_output) for g in (g_hidden, g_weight, g_bias))
        cast = lambda g, like: None if g is None else g.to(like.dtype)
        return (
            cast(g_hidden, hidden), cast(g_weight, weight), None if bias is None else cast(g_bias, bias),
            None, None, None, None, None, None, None, None, None,
        )  # fmt: skip
