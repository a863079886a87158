"""Build the fused CPU kernel with the package: one shared library per CPU variant (see
src/softmargin/kernels/build.py, which does the compiling; the metadata is all in pyproject.toml).

The libraries are plain C (loaded through ctypes, no Python ABI), declared as extensions only so that setuptools
puts them where the package goes: into the wheel, the install, or the source tree for an editable install. One small
CPython extension (``_fastcall``) makes the eager fast path's two kernel calls cheaper than ctypes can. A variant
that does not compile (no compiler, no OpenMP, an old assembler) is left out with a warning and never fails the
install: without a kernel the library runs its torch/NumPy fallback.
"""

import importlib.util
import os
from pathlib import Path

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# pyproject.toml asks for setuptools >= 77 (its SPDX `license` string), which pip installs in an isolated build; with
# --no-build-isolation the environment's own is used, and an older one failed on the metadata with a schema error
# (or, before that, in this file) that said neither the version nor the fix.
if int(setuptools.__version__.split(".")[0]) < 77:
    raise SystemExit(
        f"softmargin needs setuptools >= 77 to build, found {setuptools.__version__}: "
        "pip install -U 'setuptools>=77' (or build without --no-build-isolation)"
    )

#: The project root, resolved: older setuptools (65 here) ran this file with ``__file__ == "setup.py"``, whose parent,
#: ".", then did not contain the absolute paths of kernels/build.py (relative_to raised ValueError).
ROOT = Path(__file__).resolve().parent

_spec = importlib.util.spec_from_file_location("softmargin_kernel_build", ROOT / "src" / "softmargin" / "kernels" / "build.py")
kernel_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_build)

# relative to the root, as setuptools wants an extension's sources (it runs this file from there)
_SOURCES = sorted(str(p.resolve().relative_to(ROOT)) for p in kernel_build.CSRC.iterdir())


class KernelLibrary(Extension):
    """One variant of the kernel: a plain shared library, compiled by kernel_build.build_variant."""

    def __init__(self, variant: str) -> None:
        super().__init__(f"softmargin.kernels._cpu_{variant}", sources=[s for s in _SOURCES if s.endswith(".c")],
                         depends=_SOURCES, optional=True)
        self.variant = variant


class BuildKernels(build_ext):
    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:  # the kernel variants are independent compiler runs: one per CPU (pip gives no -j)
            self.parallel = os.cpu_count() or 1

    def get_ext_filename(self, fullname: str) -> str:
        ext = self.ext_map.get(fullname) if hasattr(self, "ext_map") else None
        if isinstance(ext, KernelLibrary) or fullname.startswith("softmargin.kernels._cpu_"):
            return str(Path(*fullname.split("."))) + ".so"  # no Python ABI tag: plain C, loaded by ctypes
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        # A library that does not build now leaves no earlier build's in its place (build/lib/ outlives a build: a
        # wheel built with CC=/bin/false after a good build carried the good build's libraries).
        target = Path(self.get_ext_fullpath(ext.name))
        if not isinstance(ext, KernelLibrary):
            try:
                super().build_extension(ext)
            except Exception:
                target.unlink(missing_ok=True)
                raise
            return
        error = kernel_build.build_variant(ext.variant, target)
        if error is not None:
            target.unlink(missing_ok=True)
            print(f"warning: softmargin kernel variant {ext.variant} not built (the library falls back): {error}")


#: The eager fast path's two kernel calls as CPython functions (kernels/fastcall/_fastcall.c): optional too; without it
#: kernels/cpu.py makes the same calls through ctypes.
FASTCALL = Extension(
    "softmargin.kernels._fastcall", sources=["src/softmargin/kernels/fastcall/_fastcall.c"],
    depends=[*_SOURCES], optional=True,
)

setup(
    ext_modules=[*(KernelLibrary(v) for v in kernel_build.variants()), FASTCALL],
    cmdclass={"build_ext": BuildKernels},
)
