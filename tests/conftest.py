"""Shared fixtures; the references and the tolerance table are in helpers.py.

The test folders are named like the packages they test (``tests/torch``, ``tests/jax``, ``tests/kernels``), so no
test folder is ever put on ``sys.path``: where a package is not installed, ``import torch`` would find ``tests/torch``
as a namespace package instead of failing (and ``importlib.util.find_spec("kernels")``, which transformers asks,
would find ``tests/kernels``). Test modules are imported by path (``--import-mode=importlib`` in pyproject.toml), and
the two shared modules, ``helpers`` and ``cli_helpers``, are registered here by path so that test modules can still
``from helpers import ...``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings


def _load_by_path(name: str) -> None:
    """Import ``tests/<name>.py`` as the top-level module ``name`` without putting tests/ on sys.path."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None  # a .py file: always a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load_by_path("helpers")
_load_by_path("cli_helpers")

from helpers import use_backend  # registered just above

settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=["native", "chunked"])
def torch_path(request, monkeypatch):
    """Run a torch test through the compiled CPU kernel and through the chunked torch fallback (modules with the
    option and sparse-target matrices add the Triton kernel: ``with_triton_path``)."""
    return use_backend(request.param, monkeypatch)


def pytest_configure(config):
    """Triton's interpreter for the Triton tests on a machine without a CUDA device, set before anything imports
    Triton (torch.compile does, and Triton reads the setting once)."""

    if "TRITON_INTERPRET" not in os.environ:
        try:
            import torch
        except ImportError:
            return
        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"


#: Integration suites, run by CI (``pytest``) but not by the everyday ``pytest -m "not slow"``: each compiles, starts
#: processes, trains models or runs Triton's interpreter, and together they take minutes. The unit tests of every
#: module stay in the everyday run.
INTEGRATION = (
    "tests/jax/",
    "tests/integrations/",
    "tests/kernels/test_triton_kernel.py",
    "tests/torch/test_compile.py",
    "tests/torch/test_export.py",
    "tests/app/test_runs.py",
    "tests/app/test_train.py",
    "tests/app/test_bench.py",
    "tests/app/test_bench_jax.py",
    "tests/app/test_bench_numpy.py",
    "tests/app/test_sklearn.py",
    "tests/app/test_cli.py",  # end-to-end commands: trains models, writes run folders
    "tests/core/test_architecture.py",  # the import graph, each case in a fresh interpreter
    "tests/torch/test_opcheck.py",  # torch.library.opcheck's many traces, the Triton operator in its interpreter
)


def pytest_collection_modifyitems(config, items):
    root = str(config.rootpath)
    for item in items:
        path = str(item.path)[len(root) + 1 :] if str(item.path).startswith(root) else str(item.path)
        if path.startswith(INTEGRATION):
            item.add_marker(pytest.mark.slow)
