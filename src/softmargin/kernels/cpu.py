"""Load the fused CPU kernel (``csrc/``), built when the package was installed, through ctypes.

``build.py`` compiles one shared library per CPU variant at install time (``avx512bf16``, ``avx512``, ``avx2`` and
``baseline`` on x86-64; ``baseline`` elsewhere). :func:`kernel` loads the best variant this CPU supports, as the
baseline library's ``softmargin_cpu_supports`` (cpuid) says (on x86-64 never ``baseline`` by itself: without FMA it
is slower than the fallback; see ``build.automatic_variants``): nothing is compiled, cached or written at run time, and
no compiler or writable HOME is needed. Where no library was built (no compiler at install time), where loading
fails, or with ``SOFTMARGIN_NATIVE=0``, :func:`kernel` returns None and the callers fall back, correctly, to their
chunked torch or NumPy code.

The C ABI is defined once, in ``csrc/softmargin.h``: the loader checks its version, the layout of the argument
struct (every field's name, offset and size, and the struct's size, as the library reports them) and the dtype
names against :class:`FusedArgs` and :data:`DTYPES` below, and refuses (with a warning) a library that differs.
The C entry point rejects null pointers, negative or overflowing sizes and unknown dtype codes;
:class:`KernelArgumentError` carries its message.

Developer switches: ``SOFTMARGIN_CPU_VARIANT=avx2`` (say) loads that variant instead of the best one (the tests
run the kernel tests against every variant this CPU can run); ``SOFTMARGIN_KERNEL_DIR`` loads the libraries from
another directory (``python -m softmargin.kernels.build --out DIR --cflags=...`` builds them there); ``python -m
softmargin.kernels.build`` rebuilds them in place.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from softmargin.kernels import build

#: The ABI this loader speaks (``SOFTMARGIN_ABI_VERSION`` in csrc/softmargin.h).
ABI_VERSION = 7
#: Element types in code order (``enum softmargin_dtype``; checked against the library's ``softmargin_dtype_names``).
DTYPES = ("float32", "float64", "float16", "bfloat16", "uint8")
#: Input dtypes whose plain-loss row functions check the target's range as they read it (the options' row functions
#: check it in every dtype); checked against the library's ``softmargin_target_checked``.
TARGET_CHECKED = frozenset({"float32", "float16", "bfloat16"})

_i32, _i64, _f64, _ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_double, ctypes.c_void_p


class FusedArgs(ctypes.Structure):
    """``softmargin_args`` of csrc/softmargin.h (its comment documents each field); checked at load time."""

    _fields_ = [
        ("xtype", _i32), ("ytype", _i32), ("x", _ptr), ("y", _ptr), ("weight", _ptr), ("weight_row_step", _i64),
        ("pos_weight", _ptr), ("pos_weight_row_step", _i64), ("mask", _ptr), ("mask_row_step", _i64),
        ("num_rows", _i64), ("num_classes", _i64), ("scale", _f64), ("row_scale", _ptr), ("options", _i32),
        ("label_smoothing", _f64), ("gamma_pos", _f64), ("gamma_neg", _f64), ("clip", _f64), ("out", _ptr),
        ("grad", _ptr), ("num_threads", _i32), ("sparse_indptr", _ptr), ("sparse_indices", _ptr),
        ("sparse_values", _ptr),
    ]  # fmt: skip


class KernelArgumentError(ValueError):
    """The C kernel rejected its arguments (a null pointer, a negative or overflowing size, an unknown dtype)."""


_STATUS_ERRORS = {-1: "a null pointer", -2: "a bad size", -3: "a bad dtype", -4: "a bad argument"}


def _abi_mismatch(lib: ctypes.CDLL) -> str | None:
    """Why ``lib`` does not speak this loader's ABI, or None when it does."""
    lib.softmargin_abi_version.restype = ctypes.c_int
    if lib.softmargin_abi_version() != ABI_VERSION:
        return f"ABI version {lib.softmargin_abi_version()}, this loader speaks {ABI_VERSION}"
    lib.softmargin_abi_fields.restype = ctypes.c_char_p
    names = lib.softmargin_abi_fields().decode().split(",")
    ours = [field[0] for field in FusedArgs._fields_]
    if names != ours:
        return f"softmargin_args fields {names}, expected {ours}"
    offsets, sizes = (_i64 * len(names))(), (_i64 * len(names))()
    lib.softmargin_abi_layout.restype = _i64
    lib.softmargin_abi_layout.argtypes = [_ptr, _ptr, _i64]
    size = lib.softmargin_abi_layout(offsets, sizes, len(names))
    for i, name in enumerate(names):
        field = getattr(FusedArgs, name)
        if (offsets[i], sizes[i]) != (field.offset, field.size):
            return f"softmargin_args.{name} at {offsets[i]} ({sizes[i]} bytes), expected {field.offset} ({field.size})"
    if size != ctypes.sizeof(FusedArgs):
        return f"sizeof(softmargin_args) {size}, expected {ctypes.sizeof(FusedArgs)}"
    lib.softmargin_dtype_names.restype = ctypes.c_char_p
    if tuple(lib.softmargin_dtype_names().decode().split(",")) != DTYPES:
        return f"dtypes {lib.softmargin_dtype_names().decode()}, expected {','.join(DTYPES)}"
    checked = lib.softmargin_target_checked()
    if frozenset(name for i, name in enumerate(DTYPES) if checked >> i & 1) != TARGET_CHECKED:
        return f"target-checked dtypes (bits {checked:#x}) differ from {sorted(TARGET_CHECKED)}"
    return None


def _declare(lib: ctypes.CDLL) -> None:
    lib.softmargin_fused.argtypes = [ctypes.POINTER(FusedArgs), ctypes.c_char_p, _i64]
    lib.softmargin_fused.restype = ctypes.c_int
    lib.softmargin_reduced.argtypes = [ctypes.POINTER(FusedArgs), _i32, _i32, _i32, _i32, _i32, _ptr, ctypes.c_char_p, _i64]
    lib.softmargin_reduced.restype = ctypes.c_int
    lib.softmargin_reduced_options.argtypes = [
        ctypes.POINTER(FusedArgs), _i32, _i32, _i32, _i32, _ptr, ctypes.POINTER(_f64), ctypes.c_char_p, _i64,
    ]
    lib.softmargin_reduced_options.restype = ctypes.c_int
    lib.softmargin_scale.argtypes = [_ptr, _i32, _i64, _ptr, _i32, _f64, _i32]
    lib.softmargin_scale.restype = ctypes.c_int
    lib.softmargin_count_rows.argtypes = [_ptr, _i64, _i64, _ptr, ctypes.c_int]
    lib.softmargin_count_rows.restype = ctypes.c_int
    lib.softmargin_features.restype = ctypes.c_int
    lib.softmargin_variant.restype = ctypes.c_char_p
    lib.softmargin_source_hash.restype = ctypes.c_char_p
    lib.softmargin_cpu_supports.argtypes = [ctypes.c_char_p]
    lib.softmargin_cpu_supports.restype = ctypes.c_int
    for name in ("softmargin_f16_from_f32", "softmargin_f16_to_f32"):  # the tests' view of the conversions
        getattr(lib, name).argtypes = [_ptr, _ptr, _i64]
        getattr(lib, name).restype = None


def _load(path: Path) -> ctypes.CDLL:
    """Load and check one library; raises OSError when it cannot be used."""
    lib = ctypes.CDLL(str(path))
    try:
        mismatch = _abi_mismatch(lib)
    except AttributeError as exc:  # a function the ABI names is missing
        mismatch = str(exc)
    if mismatch:
        raise OSError(f"{path.name} does not match this loader: {mismatch} (rebuild: pip install again)")
    try:
        _declare(lib)
    except AttributeError as exc:
        raise OSError(f"{path.name} does not match this loader: {exc} (rebuild: pip install again)") from exc
    built_from = lib.softmargin_source_hash().decode()
    if build.CSRC.is_dir() and built_from != build.source_hash():
        warnings.warn(
            f"softmargin: {path.name} was built from other kernel sources than {build.CSRC} holds now "
            "(rebuild: python -m softmargin.kernels.build, or pip install again)",
            RuntimeWarning,
            stacklevel=4,
        )
    return lib


def _warn(message: str) -> None:
    warnings.warn(
        f"softmargin: the fused CPU kernel is not used, the slower chunked path runs instead: {message} "
        "(set SOFTMARGIN_NATIVE=0 to silence this)",
        RuntimeWarning,
        stacklevel=4,
    )


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The loaded kernel library (the best variant for this CPU), or None where there is none (callers fall back)."""
    if os.environ.get("SOFTMARGIN_NATIVE", "1") == "0" or sys.platform == "win32":
        return None
    directory = Path(os.environ.get("SOFTMARGIN_KERNEL_DIR") or build.PACKAGE_DIR)
    oracle_path = build.library_path("baseline", directory)
    if not oracle_path.exists():
        return None  # not built at install time (no compiler): the documented fallback
    try:
        oracle = _load(oracle_path)
    except OSError as exc:
        _warn(str(exc))
        return None
    forced = os.environ.get("SOFTMARGIN_CPU_VARIANT")
    if forced and forced not in build.VARIANT_FLAGS:
        _warn(f"SOFTMARGIN_CPU_VARIANT={forced!r} is none of {', '.join(build.VARIANT_FLAGS)}")
        return None
    for variant in [forced] if forced else build.automatic_variants():
        path = build.library_path(variant, directory)
        if not path.exists() or not oracle.softmargin_cpu_supports(variant.encode()):
            continue
        try:
            return oracle if variant == "baseline" else _load(path)
        except OSError as exc:
            _warn(str(exc))
            return None
    if forced:
        _warn(f"SOFTMARGIN_CPU_VARIANT={forced!r}: not built in {directory} or not supported by this CPU")
    return None


def variant() -> str | None:
    """The variant :func:`kernel` loaded ("avx512bf16", "avx512", "avx2", "baseline"), or None without a kernel."""
    lib = kernel()
    return None if lib is None else str(lib.softmargin_variant().decode())


def avx512_loops() -> bool:
    """Whether the plain loss takes the AVX-512 loops here (``csrc/rows_avx512.h``, for float32, float16 and
    bfloat16 inputs) rather than the portable ones."""
    lib = kernel()
    return lib is not None and bool(lib.softmargin_features() & 1)


def _raise(status: int, message: bytes) -> None:
    text = message.decode(errors="replace") or _STATUS_ERRORS.get(status, f"status {status}")
    raise KernelArgumentError(f"softmargin CPU kernel rejected its arguments: {text}")


def count_rows(mask: int, num_rows: int, num_classes: int, out: int, num_threads: int) -> None:
    """The nonzero bytes of each row of a contiguous (N, C) uint8 mask, as int32 into ``out`` (N)."""
    lib = kernel()
    if lib is None:
        raise RuntimeError("count_rows() called without a kernel; check kernel() first")
    status = lib.softmargin_count_rows(mask, num_rows, num_classes, out, num_threads)
    if status < 0:
        _raise(status, b"")


def fused(
    xtype: str,
    ytype: str,
    x: int,
    y: int | None,
    weight: tuple[int | None, int],
    pos_weight: tuple[int | None, int],
    mask: tuple[int | None, int],
    num_rows: int,
    num_classes: int,
    scale: float,
    row_scale: int | None,
    options: tuple[float, float, float, float] | None,
    out: int,
    grad: int | None,
    num_threads: int,
    sparse: tuple[int, int, int | None] | None = None,
) -> bool:
    """Run the kernel on raw pointers; the caller owns the layout (contiguous; see ``softmargin_args`` in
    csrc/softmargin.h). Returns True when a row function saw a target outside [0, 1] (the options in every dtype
    and the plain loss in ``TARGET_CHECKED`` check as they read; float64's plain loss does not look).

    ``sparse`` = (indptr, indices, values or None) replaces ``y`` (then None) with CSR positives.
    ``weight``, ``pos_weight`` and ``mask`` are (pointer, row step) pairs; ``options`` is None for the plain loss
    or (label_smoothing, gamma_pos, gamma_neg, clip).

    Raises:
        KernelArgumentError: the kernel rejected the arguments (null pointers, bad sizes, unknown dtypes).
    """
    lib = kernel()
    if lib is None:
        raise RuntimeError("fused() called without a kernel; check kernel() first")
    if xtype not in DTYPES or ytype not in DTYPES:
        raise KernelArgumentError(f"softmargin CPU kernel: unknown dtype {xtype if xtype not in DTYPES else ytype!r}")
    eps, gamma_pos, gamma_neg, clip = options or (0.0, 0.0, 0.0, 0.0)
    indptr, indices, values = sparse or (None, None, None)
    args = FusedArgs(
        DTYPES.index(xtype), DTYPES.index(ytype), x, y, weight[0], weight[1], pos_weight[0], pos_weight[1],
        mask[0], mask[1], num_rows, num_classes, scale, row_scale, int(options is not None), eps, gamma_pos,
        gamma_neg, clip, out, grad, num_threads, indptr, indices, values,
    )  # fmt: skip
    status = lib.softmargin_fused(ctypes.byref(args), None, 0)
    if status < 0:
        message = ctypes.create_string_buffer(256)
        lib.softmargin_fused(ctypes.byref(args), message, len(message))  # rejected again, now with the reason
        _raise(status, message.value)
    return bool(status == 1)


def reduced(
    xtype: int,
    ytype: int,
    x: int,
    y: int,
    weight: int | None,
    weight_type: int,
    num_rows: int,
    num_classes: int,
    grad: int | None,
    num_threads: int,
    per_sample_type: int,
    result_type: int,
    reduction: int,
    check: bool,
    result: int,
) -> int:
    """The plain loss of a contiguous (num_rows, num_classes) problem reduced over the batch, written to ``result``,
    and its gradient (d loss / d x times 1 / num_classes: the operator's per-sample Jacobian) to ``grad``; see
    ``softmargin_reduced`` in csrc/softmargin.h. Dtypes are codes (indices into :data:`DTYPES`); ``weight_type`` is
    the weight's (float32 for a float32 input, float64 for float64, either float32 or the input's own for float16
    and bfloat16, which the kernel converts); ``reduction`` is 1 (mean), 2 (sum) or 0 (none: ``result`` holds num_rows values). Returns the status (csrc/softmargin.h): 0, or, with ``check``, a target outside [0, 1] or a
    weight not finite and >= 0 (nothing reliable computed: the caller raises). The kernel library must be loaded
    (:func:`kernel`).

    Raises:
        KernelArgumentError: the kernel rejected the arguments.
    """
    lib = kernel()
    assert lib is not None, "reduced() called without a kernel; check kernel() first"
    args = FusedArgs(
        xtype, ytype, x, y, weight, 0, None, 0, None, 0, num_rows, num_classes, 1.0 / num_classes if num_classes > 0 else 0.0, None, 0, 0.0,
        0.0, 0.0, 0.0, None, grad, num_threads, None, None, None,
    )  # fmt: skip
    status: int = lib.softmargin_reduced(ctypes.byref(args), weight_type, per_sample_type, result_type, reduction, check, result, None, 0)
    if status < 0:
        message = ctypes.create_string_buffer(256)
        lib.softmargin_reduced(ctypes.byref(args), weight_type, per_sample_type, result_type, reduction, check, result, message, len(message))
        _raise(status, message.value)
    return status


def reduced_options(
    xtype: int,
    ytype: int,
    x: int,
    y: int,
    weight: int | None,
    pos_weight: int | None,
    mask: tuple[int | None, int],
    num_rows: int,
    num_classes: int,
    options: tuple[float, float, float, float],
    grad: int | None,
    num_threads: int,
    per_sample_type: int,
    result_type: int,
    reduction: int,
    check: bool,
    result: int,
) -> tuple[int, float]:
    """The loss with options (pos_weight, a mask, label smoothing, asymmetric focusing) of a contiguous (num_rows,
    num_classes) problem reduced over the batch, written to ``result``, and its per-sample Jacobian to ``grad``; see
    ``softmargin_reduced_options`` in csrc/softmargin.h. ``weight`` and ``pos_weight`` are one row each in the
    kernel's weight type (float64 for a float64 input, else float32) or None; ``mask`` is (pointer or None, row step
    0 or num_classes); ``options`` is (label_smoothing, gamma_pos, gamma_neg, clip). Returns (status, the number of
    samples that count in a mean): the status 0, or, with ``check``, a target outside [0, 1] or a weight out of its
    range, or 3 (declined: a row the general path computes otherwise); nothing reliable is written unless it is 0.

    Raises:
        KernelArgumentError: the kernel rejected the arguments.
    """
    lib = kernel()
    assert lib is not None, "reduced_options() called without a kernel; check kernel() first"
    args = FusedArgs(
        xtype, ytype, x, y, weight, 0, pos_weight, 0, mask[0], mask[1], num_rows, num_classes, 0.0, None, 1,
        *options, None, grad, num_threads, None, None, None,
    )  # fmt: skip
    counted = _f64(0.0)
    status: int = lib.softmargin_reduced_options(
        ctypes.byref(args), per_sample_type, result_type, reduction, check, result, ctypes.byref(counted), None, 0
    )
    if status < 0:
        message = ctypes.create_string_buffer(256)
        lib.softmargin_reduced_options(
            ctypes.byref(args), per_sample_type, result_type, reduction, check, result, ctypes.byref(counted),
            message, len(message),
        )  # fmt: skip
        _raise(status, message.value)
    return status, counted.value


@functools.cache
def fastcall() -> Any:
    """The ``_fastcall`` extension bound to the loaded kernel library (its ``reduced`` and ``scale`` take the
    arguments of :func:`reduced` and :func:`scale` and return the status, for a tenth of ctypes' cost), or None where
    there is no kernel or the extension was not built (then call :func:`reduced` and :func:`scale`)."""
    lib = kernel()
    if lib is None:
        return None
    try:
        from softmargin.kernels import _fastcall  # type: ignore[attr-defined]
    except ImportError:
        return None
    address = ctypes.cast(lib.softmargin_reduced, ctypes.c_void_p).value
    _fastcall.bind(address, ctypes.cast(lib.softmargin_scale, ctypes.c_void_p).value)
    return _fastcall


def scale(grad: int, dtype: int, n: int, factor: int, factor_type: int, divisor: float, num_threads: int) -> None:
    """``grad[:n] *= (dtype)(factor / divisor)`` in place (``softmargin_scale``): the reduced loss's backward."""
    lib = kernel()
    assert lib is not None, "scale() called without a kernel; check kernel() first"
    status = lib.softmargin_scale(grad, dtype, n, factor, factor_type, divisor, num_threads)
    if status < 0:
        _raise(status, b"")
