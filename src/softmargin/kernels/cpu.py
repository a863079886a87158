"""Build (once, on this machine) and load the fused CPU kernel ``cpu_kernel.c`` through ctypes.

The kernel is compiled at first use with the system's C compiler and cached under ``$SOFTMARGIN_CACHE`` (default
``~/.cache/softmargin``), keyed by the source, the compiler and the CPU, so a rebuild happens only when one of them
changes. With no compiler, no glibc vector math, or ``SOFTMARGIN_NATIVE=0``, :func:`kernel` returns ``None`` and the
callers fall back, correctly, to chunked torch operations: nothing here is a requirement on a user's machine.
``$SOFTMARGIN_CFLAGS`` adds compiler flags to every attempt (part of the cache key); the tests build with
``-DSOFTMARGIN_PORTABLE`` that way, to check the loops a CPU without AVX-512 runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_kernel.c")
FLAG_SETS = (
    # glibc's libmvec vector expf/log1pf (x86-64, glibc >= 2.35); -ffast-math deliberately absent (inf/NaN).
    # OpenMP: beside torch the kernel shares torch's libgomp thread pool (see cpu_kernel.c).
    # -falign-loops=64: the hot loops' speed otherwise depends on where they happen to land (measured 2.2-2.6 ns
    # per element unaligned, 2.0 aligned).
    # GCC's first scheduling pass, off by default on x86: 1.5 % (float16/bfloat16) to 4 % (float32) faster here.
    ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-falign-loops=64", "-fschedule-insns", "-fsched-pressure",
     "-lmvec"],
    ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-falign-loops=64", "-lmvec"],
    ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-falign-loops=64", "-lmvec"],
    ["-O3", "-march=native", "-fno-math-errno", "-DSOFTMARGIN_SCALAR_MATH"],
    ["-O2", "-DSOFTMARGIN_SCALAR_MATH"],
)
DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3, "uint8": 4}


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if candidate:
            path = shutil.which(candidate.split()[0])
            if path:
                return path
    return None


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    return Path(os.environ.get("SOFTMARGIN_CACHE") or Path.home() / ".cache" / "softmargin")


def _build(compiler: str, flags: list[str], target: Path) -> str | None:
    """Compile to a temporary file and move it into place atomically; returns an error text or None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    libs = [f for f in flags if f.startswith("-l")]
    options = [f for f in flags if not f.startswith("-l")]
    cmd = [compiler, *options, "-shared", "-fPIC", str(SOURCE), "-o", tmp, *libs, "-lm", "-lpthread"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            return result.stderr.strip()[-500:] or f"{compiler} exited with {result.returncode}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


#: Input dtypes whose plain-loss row functions check the target's range as they read it (the options' row functions
#: check it in every dtype).
TARGET_CHECKED = frozenset({"float32", "float16", "bfloat16"})


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, or None where it cannot be built or loaded here (then callers fall back)."""
    if os.environ.get("SOFTMARGIN_NATIVE", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    source = SOURCE.read_bytes()
    errors = []
    extra = os.environ.get("SOFTMARGIN_CFLAGS", "").split()
    for flags in FLAG_SETS:
        flags = [*flags, *extra]
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(), _cpu_id().encode()]))
        target = _cache_dir() / f"cpu_kernel-{key.hexdigest()[:16]}.so"
        if not target.exists():
            error = _build(compiler, flags, target)
            if error:
                errors.append(error)
                continue
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as exc:
            errors.append(str(exc))
            continue
        fn = lib.softmargin_fused
        fn.restype = ctypes.c_int
        i64, dbl, ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ptr, ptr, ptr, i64, ptr, i64, ptr, i64, i64, i64, dbl, ptr]
        fn.argtypes += [ctypes.c_int, dbl, dbl, dbl, dbl, ptr, ptr, ctypes.c_int, ptr, ptr, ptr]
        lib.softmargin_features.restype = ctypes.c_int
        lib.softmargin_count_rows.argtypes = [ptr, i64, i64, ptr, ctypes.c_int]
        lib.softmargin_count_rows.restype = None
        for name in ("softmargin_f16_from_f32", "softmargin_f16_to_f32"):  # the tests' view of the conversions
            getattr(lib, name).argtypes = [ptr, ptr, i64]
            getattr(lib, name).restype = None
        lib.flags = flags  # type: ignore[attr-defined]
        return lib
    warnings.warn(
        "softmargin: the fused CPU kernel could not be built, using the slower chunked torch path "
        f"(set SOFTMARGIN_NATIVE=0 to silence this). Last error: {errors[-1] if errors else 'unknown'}",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


def avx512_loops() -> bool:
    """Whether the plain loss takes the AVX-512 loops here (``DEFINE_AVX512`` in cpu_kernel.c, for float32, float16
    and bfloat16 inputs) rather than the portable ones."""
    lib = kernel()
    return lib is not None and bool(lib.softmargin_features() & 1)


def count_rows(mask: int, num_rows: int, num_classes: int, out: int, num_threads: int) -> None:
    """The nonzero bytes of each row of a contiguous (N, C) uint8 mask, as int32 into ``out`` (N)."""
    lib = kernel()
    assert lib is not None, "count_rows() called without a kernel; check kernel() first"
    lib.softmargin_count_rows(mask, num_rows, num_classes, out, num_threads)


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
    """Run the kernel on raw pointers; the caller owns the layout (contiguous; see cpu_kernel.c). Returns True when
    a row function saw a target outside [0, 1] (the options in every dtype and the plain loss in ``TARGET_CHECKED``
    check as they read; float64's plain loss does not look).

    ``sparse`` = (indptr, indices, values or None) replaces ``y`` (then None) with CSR positives.

    ``weight``, ``pos_weight`` and ``mask`` are (pointer, row step) pairs; ``options`` is None for the plain loss
    or (label_smoothing, gamma_pos, gamma_neg, clip).
    """
    lib = kernel()
    assert lib is not None, "fused() called without a kernel; check kernel() first"
    eps, gamma_pos, gamma_neg, clip = options or (0.0, 0.0, 0.0, 0.0)
    status = lib.softmargin_fused(
        DTYPE_CODES[xtype], DTYPE_CODES[ytype], x, y, weight[0], weight[1], pos_weight[0], pos_weight[1],
        mask[0], mask[1], num_rows, num_classes, scale, row_scale, int(options is not None), eps, gamma_pos,
        gamma_neg, clip, out, grad, num_threads, *(sparse or (None, None, None)),
    )  # fmt: skip
    if status < 0:
        raise RuntimeError(f"softmargin CPU kernel rejected dtypes input={xtype}, target={ytype}")
    return status == 1
