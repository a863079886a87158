"""Argument checks shared by every backend, with one message each whatever the backend.

Shape and dtype checks run once, at the public entry points. Value checks (target range, weights) run where the
values are read: the torch operator calls them inside its CPU implementation (the C kernel checks a dense target
as it reads it and these functions then name the first bad value), the NumPy backend alike; on a GPU
they are device-side assertions instead (``softmargin.torch._backends``).

The checks are written against the small part of the array interface that NumPy arrays and torch tensors share
(``shape``, comparisons, ``min``/``max``, ``reshape``, ``sum``), so one message serves both backends. Shape and
dtype checks are always on; value checks (target range, weights) cost one or two reductions and are switched off
with ``validate=False``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

REDUCTIONS = ("none", "mean", "sum")


def _shape(shape: Sequence[int]) -> tuple[int, ...]:
    # no int(): a traced (symbolic) size must stay symbolic, or torch.export would fix the batch size
    return tuple(shape)


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"reduction={reduction!r} is not valid: expected one of {', '.join(repr(r) for r in REDUCTIONS)}"
        )
    return reduction


def check_input_kind(name: str, kind: str, dtype: object) -> None:
    """``kind`` is 'float', 'int', 'bool', 'complex' or 'other' (the caller maps its dtype system onto these)."""
    if kind != "float":
        raise TypeError(
            f"{name} has dtype {dtype}: expected a floating-point dtype (float16, bfloat16, float32 or float64) "
            f"holding logits; convert it with .astype/.to(float32) if these really are logits"
        )


def check_target_kind(kind: str, dtype: object, name: str = "target") -> None:
    """A real dtype for the target, or for the weights (``name``: the argument named in the message)."""
    if kind in ("complex", "other"):
        raise TypeError(f"{name} has dtype {dtype}: expected a real (floating, integer or boolean) dtype")


def check_input_ndim(shape: Sequence[int]) -> None:
    if len(shape) == 0:
        raise ValueError(
            "input is a 0-d scalar: expected shape (C,) for one sample or (N, ..., C) for a batch, "
            "with the classes along the last dimension"
        )


def check_same_shape(name: str, shape: Sequence[int], input_shape: Sequence[int]) -> None:
    if _shape(shape) != _shape(input_shape):
        raise ValueError(
            f"{name}.shape == {_shape(shape)}, expected input.shape == {_shape(input_shape)}: "
            f"{name}s are never broadcast (a broadcast {name} is almost always a bug); reshape it explicitly"
        )


def check_per_class_shape(name: str, shape: Sequence[int]) -> None:
    """A per-class ``weight`` / ``pos_weight`` given once for every call (the Keras loss, the Trainer hook): ``(C,)``
    or a scalar."""
    if len(shape) > 1:
        raise ValueError(
            f"{name}.shape == {_shape(shape)}: expected shape (C,), one {name} per class (or a scalar for every class)"
        )


def check_broadcastable(name: str, shape: Sequence[int], input_shape: Sequence[int]) -> None:
    """``shape`` must broadcast to ``input_shape`` without changing it."""
    shape, input_shape = _shape(shape), _shape(input_shape)
    ok = len(shape) <= len(input_shape) and all(
        s == 1 or s == t for s, t in zip(reversed(shape), reversed(input_shape))  # not "in (1, t)": dynamo misreads it on symbolic sizes
    )
    if not ok:
        raise ValueError(
            f"{name}.shape == {shape} does not broadcast to input.shape == {input_shape}: expected ({input_shape[-1]},) "
            f"for one {name} per class, or a shape broadcastable to the input"
        )


def _min_max(array: Any) -> tuple[float, float]:
    if hasattr(array, "aminmax"):  # torch: one pass instead of two
        low, high = array.aminmax()
        return float(low), float(high)
    return float(array.min()), float(array.max())


def _size(array: Any) -> int:
    return int(array.numel()) if hasattr(array, "numel") else int(array.size)


def _first_position(mask: Any, shape: Sequence[int]) -> tuple[int, ...]:
    # NumPy's nonzero gives a tuple of index arrays, torch's a (k, 1) tensor: [0][0] is the first hit in both.
    flat = int(mask.reshape(-1).nonzero()[0][0])
    position = []
    for size in reversed(_shape(shape)):
        position.append(flat % size)
        flat //= size
    return tuple(reversed(position))


def _describe_bad(name: str, bad: Any, array: Any, expected: str) -> str:
    count = int(bad.sum())
    position = _first_position(bad, array.shape)
    value = float(array[position]) if position else float(array)
    return (
        f"{name} has {count} value{'s' if count != 1 else ''} outside {expected} "
        f"(the first at position {position}: {value!r}); expected every {name} value in {expected}"
    )


def check_target_values(target: Any) -> None:
    """Targets must lie in [0, 1]; a NaN target is out of range too. Cheap path: one min and one max."""
    if _size(target) == 0:
        return
    low, high = _min_max(target)
    if low >= 0 and high <= 1:  # False for NaN
        return
    bad = (target < 0) | (target > 1) | (target != target)
    raise ValueError(_describe_bad("target", bad, target, "[0, 1]"))


def check_weight_values(name: str, weight: Any, *, positive: bool = False) -> None:
    """Weights must be finite and non-negative (``positive``: strictly positive)."""
    if _size(weight) == 0:
        return
    low, high = _min_max(weight)
    if (low > 0 if positive else low >= 0) and math.isfinite(high):
        return
    bad = ((weight <= 0) if positive else (weight < 0)) | (weight != weight) | (abs(weight) == math.inf)
    expected = "(0, inf)" if positive else "[0, inf)"
    raise ValueError(_describe_bad(name, bad, weight, expected).replace("outside", "outside the finite range"))


#: The largest float32, ``float(np.finfo(np.float32).max)`` (the kernels read the loss options in float32 for
#: float16/float32 logits; the trainer's features and learning rate are float32 too).
FLOAT32_MAX = 3.4028234663852886e38


def check_options(label_smoothing: float, gamma_pos: float, gamma_neg: float, clip: float) -> None:
    """The scalar loss options: label_smoothing and clip in [0, 1), gammas finite and >= 0."""
    for name, value in (("label_smoothing", label_smoothing), ("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg), ("clip", clip)):
        # NumPy's scalars are numbers.Real too; a Python float (every LossOptions field) is one without the ABC's
        # isinstance, which costs a microsecond per call
        if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"{name}={value!r} is a {type(value).__name__}: expected a float")
    for name, value in (("label_smoothing", label_smoothing), ("clip", clip)):
        if not 0 <= value < 1:
            raise ValueError(f"{name}={value!r} is outside [0, 1): expected 0 <= {name} < 1")
    for name, value in (("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg)):
        # at most float32's largest: the kernels read the option in float32 for float16/float32 logits, where a
        # larger one became inf and every gradient NaN
        if not (0 <= value <= FLOAT32_MAX):
            raise ValueError(f"{name}={value!r}: expected a finite {name} >= 0, at most {FLOAT32_MAX:.4g} (float32's "
                             "largest; 0 switches focusing off)")  # fmt: skip


def check_mask_kind(kind: str, dtype: object) -> None:
    if kind != "bool":
        raise TypeError(
            f"mask has dtype {dtype}: expected bool, True where a label is observed and False where it is missing"
        )


def check_sparse_target_values(target: Any) -> None:
    """A sparse target's values (its positives') must lie in [0, 1]."""
    low, high = target.value_range()
    if not (0 <= low and high <= 1):
        raise ValueError(f"sparse target has values in [{low}, {high}]: expected every target value in [0, 1]")
