"""Build the fused CPU kernel (``csrc/``) into one shared library per CPU variant.

Run by ``setup.py`` when the package is built or installed (``pip install .``, ``pip install -e .``, a wheel), and
by hand to rebuild in place (a developer switch: no compiler is needed at run time)::

    python -m softmargin.kernels.build [--variant avx2] [--cflags=-DSOFTMARGIN_PORTABLE] [--out DIR]

Variants (x86-64: all four; other architectures: ``baseline``), chosen at load time by ``kernels/cpu.py`` from what
the CPU supports, best first: ``avx512bf16`` and ``avx512`` (``-march=x86-64-v4``, with and without AVX512-BF16:
the hand-written AVX-512 loops), ``avx2`` (``-march=x86-64-v3``: the portable loops with AVX2, FMA and F16C) and
``baseline`` (the architecture's default instruction set). Never ``-march=native``: a wheel built on one machine
must run on another. Each variant tries :data:`FLAG_SETS` in turn, from OpenMP with glibc's vector math (libmvec)
down to plain C with scalar libm, so that a compiler without OpenMP or a libc without libmvec still gets a kernel.
``$SOFTMARGIN_CFLAGS`` adds flags to every attempt. This module imports nothing from softmargin (``setup.py`` loads
it by path).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path

CSRC = Path(__file__).with_name("csrc")
SOURCE = CSRC / "kernel.c"
#: Where the libraries go and where the loader looks by default: beside this file.
PACKAGE_DIR = Path(__file__).parent

#: Each variant's own flags (all but ``baseline`` x86-64 only; ``baseline`` is the compiler's default target).
#: -fno-trapping-math where vectors have no masks (AVX2, SSE, NEON): GCC then if-converts the portable loops'
#: selects, which it must otherwise keep as branches (they may raise floating-point exceptions nobody reads), and
#: the loops vectorise: the avx2 plain float32 loop went from 155 to 24 ms (one thread, 4096x2000). Not with AVX-512,
#: whose masked operations need no such licence: there it made the clipped focusing loop 1.3x slower for float16.
VARIANT_FLAGS = {
    "avx512bf16": ["-march=x86-64-v4", "-mavx512bf16"],
    "avx512": ["-march=x86-64-v4", "-mno-avx512bf16"],
    "avx2": ["-march=x86-64-v3", "-fno-trapping-math"],
    "baseline": ["-fno-trapping-math"],
}

FLAG_SETS = (
    # glibc's libmvec vector expf/log1pf (x86-64, glibc >= 2.35); -ffast-math deliberately absent (inf/NaN).
    # OpenMP: beside torch the kernel shares torch's libgomp thread pool (see csrc/threads.h).
    # -falign-loops=64: the hot loops' speed otherwise depends on where they happen to land (measured 2.2-2.6 ns
    # per element unaligned, 2.0 aligned).
    # GCC's first scheduling pass, off by default on x86: 1.5 % (float16/bfloat16) to 4 % (float32) faster here.
    ["-O3", "-fopenmp", "-fno-math-errno", "-falign-loops=64", "-fschedule-insns", "-fsched-pressure", "-lmvec"],
    ["-O3", "-fopenmp", "-fno-math-errno", "-falign-loops=64", "-lmvec"],
    ["-O3", "-fopenmp-simd", "-fno-math-errno", "-lmvec"],
    ["-O3", "-fopenmp", "-fno-math-errno", "-DSOFTMARGIN_SCALAR_MATH"],
    ["-O3", "-fno-math-errno", "-DSOFTMARGIN_SCALAR_MATH"],
    ["-O2", "-DSOFTMARGIN_SCALAR_MATH"],
)


def variants() -> list[str]:
    """The variants worth building on this machine's architecture, best first."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return list(VARIANT_FLAGS)
    return ["baseline"]


def source_hash() -> str:
    """A digest of the C sources, compiled into each library (``softmargin_source_hash``) so that the loader can
    tell a library built from other sources (an editable install whose csrc/ changed since: rebuild)."""
    digest = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.suffix in (".c", ".h"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def automatic_variants() -> list[str]:
    """The variants the loader picks from by itself, best first. On x86-64 not ``baseline``: x86-64 before AVX2 has
    no fused multiply-add, which the kernel's exp/log1p need exactly, and the software ``fmaf`` makes that build
    slower than the torch/NumPy fallback (it stays built: the oracle for ``softmargin_cpu_supports``, and tested)."""
    names = variants()
    return [v for v in names if v != "baseline"] if len(names) > 1 else names


def library_path(variant: str, directory: Path = PACKAGE_DIR) -> Path:
    """Where ``variant``'s library lives in ``directory``."""
    return directory / f"_cpu_{variant}.so"


def compiler() -> list[str] | None:
    """The C compiler command to use (with its arguments, as in ``CC="ccache gcc"``): ``$CC``, Python's own,
    ``cc``, ``gcc`` or ``clang``; None when there is none."""
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if candidate and candidate.split():
            path = shutil.which(candidate.split()[0])
            if path:
                return [path, *candidate.split()[1:]]
    return None


def _compile(cc: list[str], flags: list[str], target: Path) -> str | None:
    """Compile to a temporary file and move it into place atomically; returns an error text or None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    libs = [f for f in flags if f.startswith("-l")]
    options = [f for f in flags if not f.startswith("-l")]
    cmd = [*cc, *options, "-shared", "-fPIC", f"-I{CSRC}", str(SOURCE), "-o", tmp, *libs, "-lm", "-lpthread"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            return result.stderr.strip()[-800:] or f"{cc[0]} exited with {result.returncode}"
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_variant(
    variant: str, target: Path, extra: list[str] | None = None, cc: list[str] | None = None
) -> str | None:
    """Build ``variant`` into ``target`` with the first flag set that compiles; returns None, or the last error."""
    cc = cc or compiler()
    if cc is None:
        return "no C compiler found (set CC)"
    isa = VARIANT_FLAGS[variant] if variant in variants() else None
    if isa is None:
        return f"variant {variant!r} is not built on {platform.machine()}"
    extra = [*(extra or []), *os.environ.get("SOFTMARGIN_CFLAGS", "").split()]
    error = None
    for flags in FLAG_SETS:
        defines = [f'-DSOFTMARGIN_VARIANT="{variant}"', f'-DSOFTMARGIN_SOURCE_HASH="{source_hash()}"']
        error = _compile(cc, [*flags, *isa, *defines, *extra], target)
        if error is None:
            return None
    return error


def build_all(directory: Path = PACKAGE_DIR, extra: list[str] | None = None, only: list[str] | None = None,
              log: Callable[[str], object] = print) -> dict[str, str | None]:
    """Build every variant (or ``only`` those) into ``directory``, one compiler per CPU at a time (each variant is a
    compiler run of its own); returns each variant's error or None."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = list(only or variants())
    with ThreadPoolExecutor(max_workers=max(1, min(len(wanted), os.cpu_count() or 1))) as pool:
        jobs = [pool.submit(build_variant, variant, library_path(variant, directory), extra) for variant in wanted]
        errors: dict[str, str | None] = {}
        for variant, job in zip(wanted, jobs):
            errors[variant] = job.result()
            log(f"softmargin kernel {variant}: " + ("built" if errors[variant] is None else f"not built: {errors[variant]}"))
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", choices=list(VARIANT_FLAGS), help="default: all for this CPU")
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR, help="default: the package (a rebuild in place)")
    parser.add_argument("--cflags", default="", help="extra compiler flags, e.g. --cflags=-DSOFTMARGIN_PORTABLE")
    args = parser.parse_args(argv)
    errors = build_all(args.out, args.cflags.split(), args.variant)
    return 0 if any(e is None for e in errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
