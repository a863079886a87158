"""Shared fixtures; the references and the tolerance table are in helpers.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import use_backend
from hypothesis import settings

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
