"""The test suite's own layout: its folders are named like the packages they test (tests/torch, tests/jax,
tests/kernels, tests/numpy), so none of them, nor tests/ itself, may be on sys.path. There, where torch was not
installed, ``import torch`` found tests/torch as a namespace package (conftest.py's ``torch.cuda`` then failed with
AttributeError before any test ran), and ``importlib.util.find_spec("kernels")``, which transformers asks to learn
whether the Hugging Face ``kernels`` package is installed, found tests/kernels."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _inside_tests(location: str) -> bool:
    path = Path(location or os.getcwd()).resolve()
    return path == TESTS or TESTS in path.parents


def test_no_test_folder_is_on_sys_path():
    assert [entry for entry in sys.path if _inside_tests(entry)] == []


@pytest.mark.parametrize("name", sorted(p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))))
def test_a_test_folder_never_stands_in_for_a_package(name):
    spec = importlib.util.find_spec(name)
    locations = [] if spec is None else [*(spec.submodule_search_locations or []), spec.origin or ""]
    assert not any(_inside_tests(location) for location in locations if location), (name, locations)


def test_the_shared_helpers_are_importable_by_name():
    import cli_helpers
    import helpers

    assert Path(helpers.__file__).resolve() == TESTS / "helpers.py"
    assert Path(cli_helpers.__file__).resolve() == TESTS / "cli_helpers.py"
