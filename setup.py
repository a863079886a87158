"""Build the fused CPU kernel with the package: one shared library per CPU variant (see
src/softmargin/kernels/build.py, which does the compiling; the metadata is all in pyproject.toml).

The libraries are plain C (loaded through ctypes, no Python ABI), declared as extensions only so that setuptools
puts them where the package goes: into the wheel, the install, or the source tree for an editable install. One small
CPython extension (``_fastcall``) makes the eager fast path's two kernel calls cheaper than ctypes can. A variant
that does not compile (no compiler, no OpenMP, an old assembler) is left out with a warning and never fails the
install: without a kernel the library runs its torch/NumPy fallback.
"""

import importlib.util
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_spec = importlib.util.spec_from_file_location(
    "softmargin_kernel_build", Path(__file__).parent / "src" / "softmargin" / "kernels" / "build.py"
)
kernel_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_build)

_SOURCES = sorted(str(p.relative_to(Path(__file__).parent)) for p in kernel_build.CSRC.iterdir())


class KernelLibrary(Extension):
    """One variant of the kernel: a plain shared library, compiled by kernel_build.build_variant."""

    def __init__(self, variant: str) -> None:
        super().__init__(f"softmargin.kernels._cpu_{variant}", sources=[s for s in _SOURCES if s.endswith(".c")],
                         depends=_SOURCES, optional=True)
        self.variant = variant


class BuildKernels(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        ext = self.ext_map.get(fullname) if hasattr(self, "ext_map") else None
        if isinstance(ext, KernelLibrary) or fullname.startswith("softmargin.kernels._cpu_"):
            return str(Path(*fullname.split("."))) + ".so"  # no Python ABI tag: plain C, loaded by ctypes
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, KernelLibrary):
            super().build_extension(ext)
            return
        target = Path(self.get_ext_fullpath(ext.name))
        error = kernel_build.build_variant(ext.variant, target)
        if error is not None:
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
