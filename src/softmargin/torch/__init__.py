"""PyTorch API: drop-in replacements for ``torch.nn.functional.multilabel_soft_margin_loss`` and
``torch.nn.MultiLabelSoftMarginLoss`` with the same signatures, exact where torch is right and right where it is
not (infinite logits, float16 with many classes). The operator and its dispatch are in :mod:`softmargin.torch._ops`.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

from .._extras import needed

with needed("torch", by="softmargin.torch"):
    import torch
    from torch import Tensor
    from torch._subclasses.fake_tensor import is_fake
    from torch.nn import _reduction as _legacy_reduction
    from torch.nn.modules.loss import _WeightedLoss
    from torch.overrides import handle_torch_function, has_torch_function_variadic

from .. import _validation as V
from .._options import PLAIN, LossOptions, resolve
from .._sparse import SparseTargets, as_sparse_targets, is_sparse_target
from . import _backends
from ._linear_head import LinearMultiLabelSoftMarginLossFunction, auto_budget, autocast_state, chunk_shape
from ._ops import (
    Problem,
    check_devices,
    check_operands,
    compute,
    dtype_kind,
    ensure_dtensor_sharding,
    ensure_triton_op,
    options_loss,
    plain_loss,
    promoted_dtype,
    script_loss,
    to_device,
)

__all__ = [
    "LinearMultiLabelSoftMarginLoss",
    "LossOptions",
    "MultiLabelSoftMarginLoss",
    "linear_multilabel_soft_margin_loss",
    "multilabel_soft_margin_loss",
]


if torch.cuda.is_available():  # CUDA tensors compile through the Triton operator (inductor sees the kernel)
    try:
        ensure_triton_op()
    except Exception as error:  # a Triton that torch cannot trace: the opaque operator still serves every call
        import warnings

        warnings.warn(
            f"softmargin: the Triton operator could not be registered ({type(error).__name__}: {error}); "
            "torch.compile calls the opaque operator instead",
            RuntimeWarning,
            stacklevel=2,
        )


def _on_host(fn: Any) -> Any:
    """``fn`` itself in eager mode; under torch.compile the same function run eagerly, outside the graph (a graph
    break): sparse targets are normalised on the host with NumPy, the linear head walks its chunks from Python.
    (``torch.compiler.disable`` is applied at the call, not at import: it imports torch._dynamo, seconds.)"""
    return torch.compiler.disable(fn) if torch.compiler.is_compiling() else fn


def _check_strided(name: str, value: Tensor) -> None:
    """A dense operand: a sparse or nested tensor is refused by name (torch's own errors from deep inside, "unsupported
    memory format option Contiguous", said neither which operand nor what to do)."""
    if value.is_nested:
        raise TypeError(
            f"{name} is a nested tensor: expected a dense (strided) tensor; pad its rows to one length "
            f"({name}.to_padded_tensor(0)) and pass a mask that marks the padding as missing"
        )
    if value.layout != torch.strided:
        raise TypeError(
            f"{name} is a {str(value.layout).removeprefix('torch.')} tensor: expected a dense (strided) tensor "
            f"({name}.to_dense()); only the target may be sparse"
        )


#: why a target, weight or pos_weight that requires grad is refused by the loss (and what is differentiated)
_ONLY_INPUT = (
    "with pos_weight, mask, label_smoothing or asymmetric focusing only input is differentiable (the plain loss, "
    "without them, differentiates target and weight too)"
)


def _refuse_gradients(operands: tuple[tuple[str, Any], ...], reason: str, module: str | None = None) -> None:
    """A tensor among ``operands`` that requires grad, which the loss would not differentiate, refused by name
    (its gradient would silently be None); ``module``: the loss module whose buffer it is, to say how to detach it
    there. Nothing to refuse under no_grad."""
    if not torch.is_grad_enabled():
        return
    for name, value in operands:
        if isinstance(value, Tensor) and value.requires_grad:
            fix = f"construct the {module} with {name}={name}.detach()" if module else f"pass {name}.detach()"
            raise ValueError(f"{name} requires grad, but {reason}; {fix}")


def _refuse_sparse_gradient(target: Any) -> None:
    """A sparse target whose values require grad (a sparse tensor, or the values of ``(indptr, indices, values)``),
    refused: sparse targets are read as labels, and the values' gradient would silently be None."""
    values = target if isinstance(target, Tensor) else target[2] if isinstance(target, (tuple, list)) and len(target) == 3 else None
    if torch.is_grad_enabled() and isinstance(values, Tensor) and values.requires_grad:
        raise ValueError(
            "target's values require grad, but a sparse target is read as labels and not differentiated (its "
            "gradient would be None); pass a dense target (e.g. target.to_dense()) for the target's gradient, or "
            "detach the values"
        )


def _problem(
    input: Tensor,
    target: Any,
    weight: Tensor | None,
    reduction: str,
    validate: bool,
    pos_weight: Tensor | None,
    mask: Tensor | None,
    options: LossOptions,
) -> Problem:
    """Validate the arguments once (shapes and dtypes always; the sparse target's values here, the dense target's
    and the weights' inside the operator) and normalise them into the operator's :class:`Problem`."""
    V.check_reduction(reduction)
    for name, value in (("input", input), ("weight", weight), ("pos_weight", pos_weight), ("mask", mask)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{name} is a {type(value).__name__}: expected a torch.Tensor")
    for name, value in (("input", input), ("weight", weight), ("pos_weight", pos_weight), ("mask", mask)):
        if value is not None:
            _check_strided(name, value)
    weight, pos_weight, mask = (to_device(value, input.device) for value in (weight, pos_weight, mask))
    V.check_input_kind("input", dtype_kind(input.dtype), input.dtype)
    V.check_input_ndim(input.shape)
    if type(input).__name__ == "DTensor":
        ensure_dtensor_sharding()
    sparse: SparseTargets | None = None
    if is_sparse_target(target, lists=True):
        _refuse_sparse_gradient(target)
        sparse = _on_host(as_sparse_targets)(target, (math.prod(input.shape[:-1]), input.shape[-1]), torch, device=input.device)
        if validate:
            V.check_sparse_target_values(sparse)
        dense = None
    elif not isinstance(target, Tensor):
        raise TypeError(f"target is a {type(target).__name__}: expected a torch.Tensor, sparse positives or label lists")
    else:
        dense = target
    operands = (("target", dense), ("weight", weight), ("pos_weight", pos_weight), ("mask", mask))
    check_devices("input", input.device, operands)
    check_operands(input, dense, weight, pos_weight, mask)
    if not (pos_weight is None and mask is None and options == PLAIN):
        _refuse_gradients((("target", dense), ("weight", weight), ("pos_weight", pos_weight)), _ONLY_INPUT)
    return Problem(input, dense, sparse, weight, pos_weight, mask, options, reduction, validate, promoted_dtype(input.dtype, dense, weight))


def multilabel_soft_margin_loss(
    input: Tensor,
    target: Any,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,  # TorchScript compiles no keyword-only arguments: scripted code calls a MultiLabelSoftMarginLoss submodule
    pos_weight: Tensor | None = None,
    mask: Tensor | None = None,
    label_smoothing: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    options: LossOptions | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Multi-label soft-margin loss, a drop-in for ``torch.nn.functional.multilabel_soft_margin_loss``.

    .. math::
        \ell_n = \frac{1}{C}\sum_{c=1}^{C} w_{nc}\,\bigl(\operatorname{softplus}(x_{nc}) - y_{nc}\,x_{nc}\bigr)

    Args:
        input: logits of shape ``(C,)`` or ``(N, ..., C)``; float16, bfloat16, float32 or float64, any device. Every
            other tensor must be on the input's device (``ValueError`` otherwise), except that a 0-d CPU ``weight``,
            ``pos_weight`` or ``mask`` goes with any device, as in torch's loss functions.
        target: same shape as ``input`` (never broadcast), values in [0, 1] (soft targets allowed); or sparse, as
            the positives only: a sparse CSR/COO tensor, a scipy.sparse matrix, ``(indptr, indices[, values])``
            (integer arrays or tensors) or a list of label-index lists, one per sample (rows = ``input.shape[:-1]``
            flattened; integer ids). A sparse target is never made dense as a whole; it is not differentiable. A
            dense target is a tensor: a list whose every row has C entries is refused, as it reads both ways.
        weight: non-negative weights broadcastable to ``input``, usually one per class, shape ``(C,)``.
        size_average, reduce: deprecated, as in torch (use ``reduction``).
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
        validate: check the target's values (in [0, 1]) and the weights' (finite, non-negative; ``pos_weight``
            positive) on every call; ``False`` skips these value checks in hot loops. On the CPU they raise
            ``ValueError`` naming the first bad value (the C kernel checks a dense target as it reads it); on other
            devices they are device-side assertions, so nothing waits for the device. Shape and dtype checks always
            run.

    Returns:
        The loss; its dtype is ``torch.result_type`` of input, target and weight, as torch's (``input``'s for the
        usual same-dtype call). Half-precision inputs are computed and accumulated in float32. Infinite logits give
        0 for a right prediction and ``inf`` for a wrong one, with finite gradients; NaN logits give NaN.

    The gradient w.r.t. ``input`` is computed in the same pass as the loss; for the plain loss ``target`` and
    ``weight`` get gradients too when they require them. Second derivatives, ``torch.func`` transforms
    (grad, vjp, jvp, vmap, jacrev, jacfwd, hessian), ``torch.compile`` (``fullgraph=True`` included) and
    ``torch.export`` work: the computation is the operator ``torch.ops.softmargin.loss_rows``. Under
    ``torch.jit.trace`` a call with a dense target is recorded as one TorchScript call; ``torch.jit.script`` compiles
    no keyword-only arguments, so scripted code calls a :class:`MultiLabelSoftMarginLoss` submodule instead.

    Example:
        >>> import torch
        >>> from softmargin.torch import multilabel_soft_margin_loss
        >>> x = torch.tensor([[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]])
        >>> y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> round(multilabel_soft_margin_loss(x, y, weight=torch.tensor([0.5, 2.0, 1.5])).item(), 5)
        1.18012
    """
    if has_torch_function_variadic(input, target, weight, pos_weight, mask):
        return handle_torch_function(
            multilabel_soft_margin_loss, (input, target, weight, pos_weight, mask), input, target, weight,
            size_average, reduce, reduction, pos_weight=pos_weight, mask=mask, label_smoothing=label_smoothing,
            gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, options=options, validate=validate,
        )  # fmt: skip
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction.legacy_get_string(size_average, reduce)
    elif (
        pos_weight is None and mask is None and (options is None or options == PLAIN)
        and not (label_smoothing or gamma_pos or gamma_neg or clip)
    ):  # fmt: skip
        fast = plain_loss(input, target, weight, reduction, validate)
        if fast is not None:
            return fast
    resolved = resolve(options, label_smoothing, gamma_pos, gamma_neg, clip, api="torch")
    if torch.jit.is_tracing() and isinstance(target, Tensor) and target.layout == torch.strided:
        # recorded as one call of the TorchScript function, whose operator checks the operands as it runs: the traced
        # module keeps its batch size free and saves with torch.jit.save (the eager path's autograd.Functions were
        # recorded as Python calls, which torch.jit.save refused, with their checks of shapes and strides frozen)
        return torch.jit.script(script_loss)(  # type: ignore[no-any-return]
            input, target, weight, pos_weight, mask, _option_values(resolved), reduction, validate
        )
    if not torch.compiler.is_compiling() and (pos_weight is not None or mask is not None or resolved != PLAIN):
        # (not compiling first: under dynamic=True an option may be a symbolic float, which dynamo cannot compare)
        fast = options_loss(input, target, weight, pos_weight, mask, resolved, reduction, validate)
        if fast is not None:
            return fast
    return compute(_problem(input, target, weight, reduction, validate, pos_weight, mask, resolved))


_OPTION_FIELDS = ("label_smoothing", "gamma_pos", "gamma_neg", "clip")


def _option_attribute(name: str) -> Any:
    def get(self: _LossOptionAttributes) -> float:
        value: float = getattr(self._options, name)
        return value

    def set(self: _LossOptionAttributes, value: float) -> None:
        fields = {field: getattr(self._options, field) for field in _OPTION_FIELDS}
        self.options = resolve(None, **{**fields, name: value}, api="torch")

    return property(get, set, doc=f"``options.{name}``; an assignment is checked as the constructor checks it")


class _LossOptionAttributes:
    """``options`` and its four fields as attributes of a loss module, as torch-style code reads and sets them:
    ``loss_fn.label_smoothing = 0.1`` is checked as the constructor checks the argument (a bad value raises naming
    the option) and takes effect at the next call. (Before, the loss module refused the assignment with an
    AttributeError, the linear head kept the value beside the options it used, and ``options`` took anything.)"""

    if TYPE_CHECKING:  # for type checkers only: TorchScript reads a module class's annotations, and these strings
        # (from __future__ import annotations) failed torch.jit.script with "Unknown type annotation: 'str'"
        _options: LossOptions
        reduction: str

    #: not compiled by TorchScript (a LossOptions is no TorchScript type): a scripted module has the four options as
    #: float attributes of these names instead (the options setter says how)
    __jit_unused_properties__ = ["options", *_OPTION_FIELDS]

    @property
    def options(self) -> LossOptions:
        """The loss options (:class:`softmargin.LossOptions`); None assigns the defaults."""
        return self._options

    @options.setter
    def options(self, value: LossOptions | None) -> None:
        options = resolve(value, 0.0, 0.0, 0.0, 0.0, api="torch")
        self._options = options
        # the four values also in the instance's __dict__ under their own names: eager code never sees them there (the
        # properties, data descriptors, come first), but torch.jit.script makes them float attributes of the scripted
        # module, which its forward reads, so that `scripted.gamma_neg = 3.0` takes effect there as `reduction` does
        # (read from one tuple attribute, the assignment set a Python attribute that the compiled code never read)
        self.__dict__.update(zip(_OPTION_FIELDS, _option_values(options)))

    label_smoothing = _option_attribute("label_smoothing")
    gamma_pos = _option_attribute("gamma_pos")
    gamma_neg = _option_attribute("gamma_neg")
    clip = _option_attribute("clip")

    def _changed_settings(self) -> list[str]:
        """The reduction and the options that differ from the defaults, as ``extra_repr`` shows them."""
        shown = [f"reduction={self.reduction!r}"] if self.reduction != "mean" else []
        return shown + [f"{name}={getattr(self._options, name)}" for name in _OPTION_FIELDS if getattr(self._options, name)]

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "options" in state:  # pickled when options was an ordinary attribute
            state["_options"] = state.pop("options")
        state.pop("_option_values", None)  # the scripted module's options as one tuple (3 Dec 2026)
        state.update(zip(_OPTION_FIELDS, _option_values(state["_options"])))  # the scripted module's attributes
        super().__setstate__(state)  # type: ignore[misc]


def _option_values(options: LossOptions) -> tuple[float, float, float, float]:
    """The options as four floats, which TorchScript can hold (the operator's arguments), in ``_OPTION_FIELDS``' order."""
    return (options.label_smoothing, options.gamma_pos, options.gamma_neg, options.clip)


class MultiLabelSoftMarginLoss(_LossOptionAttributes, _WeightedLoss):
    r"""Drop-in for ``torch.nn.MultiLabelSoftMarginLoss``; see :func:`multilabel_soft_margin_loss`.

    ``weight`` (shape ``(C,)`` or broadcastable to the input) and ``pos_weight`` are registered buffers: they move
    with ``.to()`` and appear in ``state_dict``, as in torch. A mask, which changes with every batch, is an argument
    of ``forward``.

    ``torch.jit.script`` compiles it, alone or inside a scripted model, to the operator with the same values and
    gradients as eager, for dense targets (sparse ones and label lists are read in Python: eager calls only). The
    scripted module is a copy: it keeps the options and reduction it had when scripted, whatever the eager module is
    assigned later, and takes its own assignments (``scripted.gamma_neg = 3.0``, ``scripted.reduction = "sum"``;
    checked at its next call; ``options``, a Python object, is none of its attributes: assign the four). It saves with
    ``torch.jit.save``; ``torch.jit.load`` needs ``import softmargin.torch`` first, which registers the operator.
    ``torch.jit.trace`` records the options, reduction and ``validate`` as constants: an assignment to a traced module
    sets a Python attribute only (as for torch's traced losses); trace again. Forward-mode AD (``torch.func.jvp``,
    ``jacfwd``, ``torch.autograd.forward_ad``) needs the eager module: through the operator torch drops the tangent
    (a zero or None tangent, without an error).

    Example:
        >>> import torch
        >>> from softmargin.torch import MultiLabelSoftMarginLoss
        >>> loss_fn = MultiLabelSoftMarginLoss(weight=torch.tensor([0.5, 2.0, 1.5]))
        >>> x = torch.tensor([[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]], requires_grad=True)
        >>> loss = loss_fn(x, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
        >>> loss.backward()
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        *,
        pos_weight: Tensor | None = None,
        label_smoothing: float = 0.0,
        gamma_pos: float = 0.0,
        gamma_neg: float = 0.0,
        clip: float = 0.0,
        options: LossOptions | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        V.check_reduction(self.reduction)
        self.options = resolve(options, label_smoothing, gamma_pos, gamma_neg, clip, api="torch")
        self.pos_weight: Tensor | None
        self.register_buffer("pos_weight", pos_weight)  # also when None: a tensor assigned later is a buffer too
        self.validate = validate

    def extra_repr(self) -> str:
        """The settings that differ from the defaults (torch's module shows none)."""
        return ", ".join(self._changed_settings() + ([] if self.validate else ["validate=False"]))

    def forward(self, input: Tensor, target: Any, mask: Tensor | None = None) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch alone: the operator, the same results as below
            return script_loss(
                input, target, self.weight, self.pos_weight, mask,
                (self.label_smoothing, self.gamma_pos, self.gamma_neg, self.clip), self.reduction, self.validate,
            )
        weight, pos_weight = self.weight, self.pos_weight
        if (pos_weight is not None or (weight is not None and weight.requires_grad)) and not (
            pos_weight is None and mask is None and self.options == PLAIN
        ):  # the buffers refused here, with advice in the module's terms (the call below would say "pass ...")
            _refuse_gradients((("weight", weight), ("pos_weight", pos_weight)), _ONLY_INPUT, "MultiLabelSoftMarginLoss")
        return multilabel_soft_margin_loss(
            input, target, weight=self.weight, reduction=self.reduction, pos_weight=self.pos_weight, mask=mask,
            options=self.options, validate=self.validate,
        )  # fmt: skip


#: why the fused linear head refuses a target, class_weight or pos_weight that requires grad
_HEAD_ONLY = (
    "the fused linear head differentiates hidden, weight and bias only (for target and class_weight gradients, "
    "compute the logits, hidden @ weight.T + bias, and call multilabel_soft_margin_loss without pos_weight and "
    "options)"
)


def _check_values(target: Any, *weights: tuple[str, Tensor | None, bool]) -> None:
    """The linear head's value checks: a sparse target's values, each (name, weight, strictly positive). A dense
    target's and the weights' are checked as the loss checks them: on a GPU by an assertion on the device, without
    reading anything back (the head read two values back per checked tensor, a host synchronisation each). A
    FakeTensor has no values to check (FakeTensorMode failed with DataDependentOutputException on the read-back)."""
    if any(is_fake(t) for t in (target, *(value for _, value, _ in weights)) if isinstance(t, Tensor)):
        return
    if isinstance(target, SparseTargets):
        V.check_sparse_target_values(target)  # its indices were checked on the host already
    elif target is not None:
        _backends.check_target_values(target.detach())
    for name, value, positive in weights:
        if value is not None:
            _backends.check_weight_values(name, value.detach(), positive=positive)


def _count_device(group: Any) -> str:
    return "cuda" if torch.distributed.get_backend(group) == "nccl" else "cpu"


def _total_labels(local: int, group: Any) -> int:
    """The label count over every shard: one all-reduce (and one read-back) when the head is built, or per call of the
    functional form without ``total_labels=``. NCCL reduces only CUDA tensors: the count goes through this process's
    current CUDA device there, through the CPU on any other backend (gloo, MPI, or a group with a CPU backend)."""
    if group is None:
        return local
    count = torch.tensor([local], dtype=torch.int64, device=_count_device(group))
    torch.distributed.all_reduce(count, group=group)
    return int(count.item())


def _integer(value: Any) -> int | None:
    """``value`` as an int if it is an integer (a Python or NumPy int, not a bool or a float), else None."""
    if isinstance(value, (bool, float)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _check_chunking(chunk_size: Any, memory_budget: Any) -> None:
    """A chunk of 0 or -1 labels was silently 1 label (a million-label head walked one label at a time), a budget of
    0 or less the smallest chunks: refused by name."""
    for name, size in (("chunk_size", chunk_size), ("memory_budget", memory_budget)):
        if size is not None and (_integer(size) or 0) < 1:
            raise ValueError(f"{name}={size!r}: expected a positive integer, or None for the default")


def linear_multilabel_soft_margin_loss(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Any,
    *,  # TorchScript compiles no keyword-only arguments: the head runs eagerly (or with torch.compile's graph break)
    class_weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    process_group: Any = None,
    total_labels: int | None = None,
    options: LossOptions | None = None,
    validate: bool = True,
) -> Tensor:
    r"""``multilabel_soft_margin_loss(hidden @ weight.T + bias, target)`` without ever holding the N x C logits.

    The labels are walked in chunks of ``chunk_size`` (default: as many as fit ``memory_budget`` bytes of
    temporaries, at least 1024; the default budget is 1/32 of the full logits' size, within 4 to 256 MiB),
    computing each chunk's logits, loss and gradients at once; the gradients w.r.t.
    ``hidden`` (so autograd flows into the encoder that produced it), ``weight`` and ``bias`` are exact.

    Args:
        hidden: (N, H) features, float32 / bfloat16 / float64.
        weight, bias: the head's parameters, (C, H) and (C,) (``bias`` may be None).
        target: (N, C) dense tensor, or sparse positives (see :func:`multilabel_soft_margin_loss`), the way to go
            for millions of labels.
        class_weight, pos_weight: (C,) per-label weights (the loss's ``weight`` and ``pos_weight``).
        reduction, label_smoothing, gamma_pos, gamma_neg, clip, options: as in :func:`multilabel_soft_margin_loss`.
        process_group: label-parallel training. Each process passes its shard of the labels (``weight`` rows,
            ``bias``, ``target`` columns, ``class_weight``/``pos_weight``) and the same ``hidden``; the loss and the
            gradient w.r.t. ``hidden`` are all-reduced (one all-reduce each), the shard's parameter gradients stay
            local. ``total_labels`` (all shards together) saves one small all-reduce per call when given.

    Returns:
        The loss, as :func:`multilabel_soft_margin_loss` would give on the full logits (averaged over all labels).

    It runs eagerly (a graph break under ``torch.compile``): its walk over the chunks, sparse blocks and all-reduces
    are host-driven.
    """
    if torch.compiler.is_dynamo_compiling():  # not is_compiling(): non-strict export sets it, and disable() there
        # does not clear it, so the call below recursed until RecursionError
        return _on_host(linear_multilabel_soft_margin_loss)(  # type: ignore[no-any-return]
            hidden, weight, bias, target, class_weight=class_weight, pos_weight=pos_weight, reduction=reduction,
            label_smoothing=label_smoothing, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip,
            chunk_size=chunk_size, memory_budget=memory_budget, process_group=process_group,
            total_labels=total_labels, options=options, validate=validate,
        )  # fmt: skip
    resolved = resolve(options, label_smoothing, gamma_pos, gamma_neg, clip, api="torch")
    V.check_reduction(reduction)
    for name, value in (("hidden", hidden), ("weight", weight)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} is a {type(value).__name__}: expected a torch.Tensor")
        _check_strided(name, value)
        V.check_input_kind(name, dtype_kind(value.dtype), value.dtype)
    if hidden.dim() != 2 or weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"hidden.shape == {tuple(hidden.shape)}, weight.shape == {tuple(weight.shape)}: expected (N, H) and (C, H)"
        )
    num_rows, num_labels = hidden.shape[0], weight.shape[0]
    for name, operand in (("bias", bias), ("class_weight", class_weight), ("pos_weight", pos_weight)):
        if operand is not None and not isinstance(operand, Tensor):
            raise TypeError(f"{name} is a {type(operand).__name__}: expected a torch.Tensor of shape ({num_labels},) or None")
        if operand is not None and tuple(operand.shape) != (num_labels,):
            raise ValueError(f"{name}.shape == {tuple(operand.shape)}, expected ({num_labels},): one per label")
    if bias is not None:
        _check_strided("bias", bias)
    if not autocast_state(hidden.device.type)[0]:  # (autocast casts the chunk products' operands to one dtype)
        dtypes = {name: value.dtype for name, value in (("hidden", hidden), ("weight", weight), ("bias", bias)) if value is not None}
        if len(set(dtypes.values())) > 1:
            shown = ", ".join(f"{name} {str(dtype).removeprefix('torch.')}" for name, dtype in dtypes.items())
            raise TypeError(
                f"hidden, weight and bias have different dtypes ({shown}): expected one dtype, as "
                "torch.nn.functional.linear does; "
                "cast them (e.g. hidden.to(weight.dtype)), or call the head under torch.autocast"
            )
    _check_chunking(chunk_size, memory_budget)
    # a total_labels that is not the label count divided the loss by another number
    if total_labels is not None:
        count = _integer(total_labels)
        if count is None or count < num_labels or (process_group is None and count != num_labels):
            expected = f"{num_labels} (weight.shape[0]) without a process_group" if process_group is None else (
                f"the label count over every shard, at least this shard's {num_labels}")  # fmt: skip
            raise ValueError(f"total_labels={total_labels!r}: expected {expected}; it divides the loss")
        total_labels = count
    if is_sparse_target(target, lists=True):
        _refuse_sparse_gradient(target)
        target = as_sparse_targets(target, (num_rows, num_labels), torch, device=hidden.device)
    elif not isinstance(target, Tensor):
        raise TypeError(f"target is a {type(target).__name__}: expected a torch.Tensor, sparse positives or label lists")
    else:
        _check_strided("target", target)
        V.check_target_kind(dtype_kind(target.dtype), target.dtype)
        V.check_same_shape("target", target.shape, (num_rows, num_labels))
    check_devices("hidden", hidden.device, (
        ("weight", weight), ("bias", bias), ("target", target if isinstance(target, Tensor) else None),
        ("class_weight", class_weight), ("pos_weight", pos_weight),
    ))  # fmt: skip
    operands = (hidden, weight, bias, target, class_weight, pos_weight)
    if any(isinstance(t, Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in operands):
        raise RuntimeError(
            "softmargin: the fused linear head is differentiated by torch.autograd (loss.backward(), "
            "torch.autograd.grad), not by torch.func transforms (grad, vmap, jacrev, ...): its forward pass computes "
            "the gradients as it walks the label chunks; for a transform, compute the logits (hidden @ weight.T + "
            "bias) and call multilabel_soft_margin_loss for them"
        )
    _refuse_gradients((("target", target), ("class_weight", class_weight), ("pos_weight", pos_weight)), _HEAD_ONLY)
    if validate:
        _check_values(target, ("class_weight", class_weight, False), ("pos_weight", pos_weight, True))
    budget = memory_budget if memory_budget is not None else auto_budget(num_rows, num_labels)
    chunks = chunk_shape(num_rows, num_labels, budget, chunk_size)
    total = total_labels if total_labels is not None else _total_labels(num_labels, process_group)
    # the dtype multilabel_soft_margin_loss would give on the logits: theirs (hidden's and weight's), promoted with a
    # dense target's and a class weight's (a bfloat16 hidden and a float32 target give a float32 loss)
    dtype = promoted_dtype(torch.promote_types(hidden.dtype, weight.dtype), target, class_weight)
    loss: Tensor = LinearMultiLabelSoftMarginLossFunction.apply(
        hidden, weight, bias, target, class_weight, pos_weight, reduction, resolved, chunks, process_group, total, dtype
    )
    return loss


class LinearMultiLabelSoftMarginLoss(_LossOptionAttributes, torch.nn.Module):
    r"""A linear output layer fused with the multi-label soft-margin loss, for very many labels.

    ``forward(hidden, target)`` is ``MultiLabelSoftMarginLoss()(hidden @ weight.T + bias, target)`` computed in
    chunks of labels (see :func:`linear_multilabel_soft_margin_loss`); ``logits`` and ``topk`` serve prediction,
    also in chunks. With ``process_group`` the module holds this process's shard of ``num_labels`` labels
    (``label_offset`` tells which; ``topk`` then returns global label ids).

    Example:
        >>> head = LinearMultiLabelSoftMarginLoss(256, 1_000_000)
        >>> loss = head(encoder(x), [[3, 17], [999_999]])  # doctest: +SKIP
    """

    def __init__(
        self,
        in_features: int,
        num_labels: int,
        bias: bool = True,
        *,
        class_weight: Tensor | None = None,
        pos_weight: Tensor | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        gamma_pos: float = 0.0,
        gamma_neg: float = 0.0,
        clip: float = 0.0,
        options: LossOptions | None = None,
        chunk_size: int | None = None,
        memory_budget: int | None = None,
        process_group: Any = None,
        label_offset: int = 0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        V.check_reduction(reduction)
        _check_chunking(chunk_size, memory_budget)
        linear = torch.nn.Linear(in_features, num_labels, bias=bias, device=device, dtype=dtype)  # its init
        self.weight = linear.weight
        self.bias = linear.bias
        self.class_weight: Tensor | None
        self.pos_weight: Tensor | None
        self.register_buffer("class_weight", class_weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction
        self.options = resolve(options, label_smoothing, gamma_pos, gamma_neg, clip, api="torch")
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.process_group = process_group
        self.label_offset = label_offset
        self.total_labels = _total_labels(num_labels, process_group)

    def extra_repr(self) -> str:
        """As nn.Linear's, then the settings that differ from the defaults."""
        shown = [f"in_features={self.weight.shape[1]}", f"num_labels={self.weight.shape[0]}", f"bias={self.bias is not None}"]
        if self.total_labels != self.weight.shape[0]:
            shown += [f"total_labels={self.total_labels}", f"label_offset={self.label_offset}"]
        shown += self._changed_settings()
        shown += [f"{name}={getattr(self, name)}" for name in ("chunk_size", "memory_budget") if getattr(self, name) is not None]
        return ", ".join(shown)

    def forward(self, hidden: Tensor, target: Any) -> Tensor:
        if self.class_weight is not None or self.pos_weight is not None:  # the buffers, with advice in its terms
            _refuse_gradients((("class_weight", self.class_weight), ("pos_weight", self.pos_weight)), _HEAD_ONLY,
                              "LinearMultiLabelSoftMarginLoss")  # fmt: skip
        return linear_multilabel_soft_margin_loss(
            hidden, self.weight, self.bias, target, class_weight=self.class_weight, pos_weight=self.pos_weight,
            reduction=self.reduction, chunk_size=self.chunk_size, memory_budget=self.memory_budget,
            process_group=self.process_group, total_labels=self.total_labels, options=self.options,
        )  # fmt: skip

    def logits(self, hidden: Tensor, labels: slice | None = None) -> Tensor:
        """Logits of (a slice of) this shard's labels: (N, len(labels)). For a few labels, or few samples."""
        labels = labels or slice(0, self.weight.shape[0])
        return torch.nn.functional.linear(hidden, self.weight[labels], None if self.bias is None else self.bias[labels])

    @torch.no_grad()
    def topk(self, hidden: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores, label ids) of each sample's k highest logits, walking the labels in chunks (never N x C); fewer
        than k where the shard has fewer labels."""
        if _integer(k) is None or k < 0:
            raise ValueError(f"k={k!r}: expected a non-negative integer, the number of labels to return per sample")
        if self.weight.shape[0] == 0:  # (an AssertionError before)
            empty = hidden.new_empty((hidden.shape[0], 0), dtype=self.weight.dtype)
            return empty, torch.empty((hidden.shape[0], 0), dtype=torch.int64, device=hidden.device)
        budget = self.memory_budget or auto_budget(hidden.shape[0], self.weight.shape[0])
        _, label_chunk = chunk_shape(hidden.shape[0], self.weight.shape[0], budget, self.chunk_size)
        best_scores: Tensor | None = None
        best_ids: Tensor | None = None
        for c0 in range(0, self.weight.shape[0], label_chunk):
            scores = self.logits(hidden, slice(c0, c0 + label_chunk))
            ids = torch.arange(c0, c0 + scores.shape[1], device=scores.device).expand_as(scores) + self.label_offset
            if best_scores is not None and best_ids is not None:
                scores, ids = torch.cat([best_scores, scores], 1), torch.cat([best_ids, ids], 1)
            best_scores, order = scores.topk(min(k, scores.shape[1]), dim=1)
            best_ids = ids.gather(1, order)
        assert best_scores is not None and best_ids is not None, "topk needs at least one label"
        return best_scores, best_ids
