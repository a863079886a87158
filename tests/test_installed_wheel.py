"""The package as users get it: a wheel built from this checkout, installed into a folder of its own and used from
another directory, with no compiler on PATH. The wheel must carry the compiled kernel (loaded without building
anything), the Triton sources, py.typed and the entry point; the loss from it must be torch's. Slow: the wheel
compiles every kernel variant (about a minute). Built without build isolation, so without network: the test extra
brings setuptools >= 77."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
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
def installed(tmp_path_factory):
    if os.environ.get("SOFTMARGIN_NATIVE") == "0":
        pytest.skip("SOFTMARGIN_NATIVE=0: the kernel is off")
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(ROOT)],
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
