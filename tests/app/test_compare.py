"""``softmargin compare``: the table reproduces the seed and shows where each implementation breaks."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("mpmath")

from softmargin.app.cli import main
from softmargin.app.compare import Case, cases, exact_loss, implementations, relative_error


def test_exact_loss_of_the_seed_example():
    assert abs(exact_loss(cases()[0]) - 1.18012106) < 1e-8


def test_softmargin_is_within_float32_rounding_everywhere():
    ours = implementations()["softmargin"]
    for case in cases():
        assert relative_error(ours(case), exact_loss(case)) <= 2e-7, case.name


def test_the_table_shows_where_the_others_break():
    impls = implementations()
    right_inf = Case("", [[math.inf]], [[1.0]])
    assert math.isnan(impls["torch MLSML"](right_inf))
    wrong_inf = Case("", [[-math.inf]], [[1.0]])
    assert impls["sigmoid+BCELoss"](wrong_inf) == 100  # BCELoss clamps its log at -100
    right_20 = Case("", [[20.0]], [[1.0]])
    assert impls["sigmoid+BCELoss"](right_20) == 0  # sigmoid(20) rounds to 1 in float32


def test_cli_prints_the_table(capsys):
    assert main(["compare"]) == 0
    out = capsys.readouterr().out
    assert "seed example (weighted)" in out and "1.18012" in out and "sigmoid+BCELoss" in out
