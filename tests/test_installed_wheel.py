"""The package as users get it: an sdist built from this checkout (as ``python -m build --sdist`` does), a wheel built
from that sdist (as ``python -m build`` does), installed into a folder of its own and used from another directory,
with no compiler on PATH. The sdist must hold the C sources, README and LICENSE and no build output; the wheel must
carry the compiled kernel (loaded without building anything), the Triton sources, py.typed and the entry point; the
loss from it must be torch's. Installed from the sdist without a C compiler (CC=/bin/false), the package installs
without kernels and computes the same losses through its fallbacks. Slow: the wheel compiles every kernel variant
(about a minute). Built without build isolation, so without network: the test extra brings setuptools >= 77."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

_USE = r"""
import json, os, sys
import numpy as np
import softmargin
from softmargin.kernels import cpu
import softmargin.numpy as snp
report = {"file": softmargin.__file__, "version": softmargin.__version__, "kernel": None}
kernel = cpu.kernel()
report["kernel"] = None if kernel is None else kernel._name
report["fastcall"] = cpu.fastcall() is not None
x = np.random.default_rng(0).normal(size=(64, 300)) * 3
y = (np.random.default_rng(1).random((64, 300)) < 0.2).astype(np.float64)
report["numpy"] = float(snp.multilabel_soft_margin_loss(x, y))
import torch
import softmargin.torch as st
xt = torch.tensor(x, requires_grad=True)
ours = st.multilabel_soft_margin_loss(xt, torch.tensor(y))
ours.backward()
xr = torch.tensor(x, requires_grad=True)
theirs = torch.nn.functional.multilabel_soft_margin_loss(xr, torch.tensor(y))
theirs.backward()
report["torch"] = [ours.item(), theirs.item(), float((xt.grad - xr.grad).abs().max())]
report["path"] = type(ours.grad_fn).__name__
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The sdist of this checkout, built in it as ``python -m build --sdist`` does (setuptools' PEP 517 backend)."""
    out = tmp_path_factory.mktemp("sdist")
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    build = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if build.returncode != 0:
        pytest.fail(f"building the sdist failed:\n{build.stderr[-3000:]}")
    return out / build.stdout.strip().splitlines()[-1]


def _sdist_files(sdist: Path) -> set[str]:
    """The sdist's files, relative to its top folder (softmargin-<version>/)."""
    with tarfile.open(sdist) as archive:
        return {m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()}


def test_sdist_holds_the_sources_and_no_build_output(sdist):
    names = _sdist_files(sdist)
    csrc = {str(p.relative_to(ROOT)) for p in (ROOT / "src/softmargin/kernels/csrc").iterdir() if p.suffix in (".c", ".h")}
    needed = {"README.md", "LICENSE", "pyproject.toml", "setup.py", "PKG-INFO", "src/softmargin/py.typed",
              "src/softmargin/kernels/fastcall/_fastcall.c", "src/softmargin/kernels/build.py", *csrc,
              "tests/conftest.py", "tests/helpers.py"}  # fmt: skip
    assert needed <= names, sorted(needed - names)
    built = sorted(n for n in names if n.endswith((".so", ".pyd", ".dylib", ".o", ".pyc")) or "__pycache__" in n
                   or n.startswith(("build/", "dist/", "runs/", "benchmarks/results/")))  # fmt: skip
    assert built == []
    # the rest are sources: nothing git ignores (a built library, what a stale egg-info's file list names)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], capture_output=True,
                            text=True, cwd=ROOT)  # fmt: skip
    if listed.returncode != 0:
        pytest.skip("not a git checkout: which files are sources is not known")
    sources = set(listed.stdout.splitlines())
    generated = {"PKG-INFO", "setup.cfg"}
    ignored = sorted(n for n in names - sources - generated if not n.startswith("src/softmargin.egg-info/"))
    assert ignored == []
    in_package = {n for n in sources if n.startswith(("src/", "tests/"))}
    assert in_package <= names, sorted(in_package - names)


@pytest.fixture(scope="module")
def installed(tmp_path_factory, sdist):
    if os.environ.get("SOFTMARGIN_NATIVE") == "0":
        pytest.skip("SOFTMARGIN_NATIVE=0: the kernel is off")
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(sdist)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{build.stderr[-3000:]}")
    (wheel,) = (tmp / "dist").glob("softmargin-*.whl")
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return wheel, target, tmp


def test_wheel_carries_the_kernel_and_the_sources(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("softmargin/kernels/_cpu_") and n.endswith(".so") for n in names), names
    for needed in ("softmargin/py.typed", "softmargin/kernels/_triton_rows.py", "softmargin/kernels/csrc/softmargin.h",
                   "softmargin/app/cli.py"):  # fmt: skip
        assert needed in names, f"{needed} missing from the wheel"
    assert not any(n.startswith("tests/") for n in names)


def test_installed_package_runs_from_elsewhere_without_a_compiler(installed):
    """Imported from the install (not the checkout), with an empty PATH (no compiler) and no usable HOME: the
    compiled kernel loads from the install, and the losses (NumPy and torch) are torch's."""
    _, target, tmp = installed
    (tmp / "empty-bin").mkdir(exist_ok=True)
    env = {"PATH": str(tmp / "empty-bin"), "PYTHONPATH": str(target), "HOME": str(tmp / "no-home")}
    result = subprocess.run([sys.executable, "-c", _USE], capture_output=True, text=True, cwd=tmp, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).is_relative_to(target), f"imported from {report['file']}, not the installed wheel"
    assert report["kernel"] is not None and Path(report["kernel"]).is_relative_to(target), report["kernel"]
    ours, theirs, grad_diff = report["torch"]
    assert abs(ours - theirs) <= 1e-12 * abs(theirs) and grad_diff <= 1e-15
    assert abs(report["numpy"] - theirs) <= 1e-12 * abs(theirs)
    if (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():  # the small-call path's extension is built
        assert report["fastcall"] and report["path"] == "_PlainLossBackward", report


def test_installed_entry_point_answers(installed):
    _, target, tmp = installed
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-m", "softmargin", "--version"], capture_output=True, text=True, cwd=tmp,
                            env=env, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()


_FALLBACK = r"""
import json, warnings
import numpy as np
warnings.simplefilter("error")  # no kernel is the documented fallback: no warning either
import softmargin, softmargin.numpy as snp
from softmargin.kernels import cpu
x = np.random.default_rng(0).normal(size=(64, 300)) * 3
y = (np.random.default_rng(1).random((64, 300)) < 0.2).astype(np.float64)
report = {"file": softmargin.__file__, "variant": cpu.variant(), "fastcall": cpu.fastcall() is not None}
report["numpy"] = [float(v) for v in snp.multilabel_soft_margin_loss(x.astype(np.float32), y.astype(np.float32), reduction="none")]
import torch, softmargin.torch as st
xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
st.multilabel_soft_margin_loss(xt, torch.tensor(y, dtype=torch.float32)).backward()
xr = xt.detach().clone().requires_grad_()
torch.nn.functional.multilabel_soft_margin_loss(xr, torch.tensor(y, dtype=torch.float32)).backward()
report["grad_diff"] = float((xt.grad - xr.grad).abs().max() / xr.grad.abs().max())
print(json.dumps(report))
"""


def test_sdist_installs_without_a_compiler(sdist, tmp_path):
    """CC=/bin/false: every kernel variant and the fastcall extension fail to compile; the install succeeds (a
    warning per variant), ships no library, and the losses come from the chunked NumPy and torch code."""
    site = tmp_path / "site"
    env = {**os.environ, "CC": "/bin/false"}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-v", "--target", str(site), str(sdist)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    from softmargin.kernels import build

    log = install.stdout + install.stderr
    for variant in build.variants():
        assert f"warning: softmargin kernel variant {variant} not built (the library falls back)" in log
    assert sorted(p.name for p in (site / "softmargin" / "kernels").glob("*.so")) == []
    result = subprocess.run([sys.executable, "-c", _FALLBACK], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(site)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).is_relative_to(site)
    assert report["variant"] is None and report["fastcall"] is False
    import numpy as np

    x = np.random.default_rng(0).normal(size=(64, 300)) * 3
    y = (np.random.default_rng(1).random((64, 300)) < 0.2).astype(np.float64)
    x32 = x.astype(np.float32).astype(np.float64)  # the float32 logits, exactly
    expected = (y * np.logaddexp(0.0, -x32) + (1 - y) * np.logaddexp(0.0, x32)).mean(axis=-1)
    np.testing.assert_allclose(report["numpy"], expected, rtol=1e-6)
    assert report["grad_diff"] <= 1e-6


def test_a_variant_that_no_longer_builds_leaves_no_earlier_library(sdist, tmp_path):
    """build/lib/ outlives a build, and setup.py compiled each variant into it again but left the earlier library
    when compiling failed: a wheel built with CC=/bin/false after a good build shipped the good build's libraries."""
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (source,) = tmp_path.glob("softmargin-*")
    kernels = tmp_path / "lib" / "softmargin" / "kernels"
    kernels.mkdir(parents=True)
    from softmargin.kernels import build

    for variant in build.variants():
        (kernels / f"_cpu_{variant}.so").write_bytes(b"an earlier build")
    result = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib")],
                            capture_output=True, text=True, cwd=source, timeout=300, env={**os.environ, "CC": "/bin/false"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in kernels.glob("_cpu_*.so")) == []


def test_setup_py_names_the_setuptools_it_needs():
    """With --no-build-isolation the environment's setuptools builds; a fresh venv's (65.5.0 here) failed first on a
    relative __file__ in setup.py, then on pyproject.toml's SPDX license, saying neither the version nor the fix."""
    code = "import runpy, setuptools; setuptools.__version__ = '65.5.0'; runpy.run_path('setup.py', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "softmargin needs setuptools >= 77 to build, found 65.5.0: pip install -U 'setuptools>=77' "
        "(or build without --no-build-isolation)"
    )
