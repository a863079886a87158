"""``softmargin compare``: the seed's example, and why logits are the better input.

It evaluates the same loss five ways — softmargin, ``torch.nn.MultiLabelSoftMarginLoss``, ``sigmoid`` +
``BCELoss``, ``BCEWithLogitsLoss`` scaled by 1/C, and an exact 50-digit mpmath value — on the seed's worked
example and on growing logits, and prints each one's relative error against the exact value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SEED_LOGITS = [[0.5, -1.0, 3.0], [1.5, -2.0, 0.0]]
SEED_LABELS = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
SEED_WEIGHTS = [0.5, 2.0, 1.5]
GROWING_LOGITS = (1.0, 10.0, 20.0, 50.0, 100.0, math.inf)


@dataclass
class Case:
    name: str
    logits: list[list[float]]
    labels: list[list[float]]
    weight: list[float] | None = None


def exact_loss(case: Case) -> float:
    """The mean loss in 50-digit arithmetic: -(1/C) sum w (y log sigmoid(x) + (1 - y) log sigmoid(-x))."""
    import mpmath

    with mpmath.workdps(50):

        def neg_log_sigmoid(t: mpmath.mpf) -> mpmath.mpf:
            if mpmath.isinf(t):
                return mpmath.mpf(0) if t > 0 else mpmath.inf
            return mpmath.log1p(mpmath.exp(-t))

        total = mpmath.mpf(0)
        for xs, ys in zip(case.logits, case.labels):
            num_classes = len(xs)
            for c, (x, y) in enumerate(zip(xs, ys)):
                w = mpmath.mpf(case.weight[c]) if case.weight else mpmath.mpf(1)
                x, y = mpmath.mpf(x), mpmath.mpf(y)
                # y = 0 or 1 exactly removes the other term, also where it is infinite
                term = (y * neg_log_sigmoid(x) if y else 0) + ((1 - y) * neg_log_sigmoid(-x) if y != 1 else 0)
                total += w * term / num_classes
        return float(total / len(case.logits))


def implementations() -> dict[str, Callable[[Case], float]]:
    import torch

    from ..torch import multilabel_soft_margin_loss

    def tensors(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        weight = torch.tensor(case.weight) if case.weight else None
        return torch.tensor(case.logits), torch.tensor(case.labels), weight

    def softmargin_loss(case: Case) -> float:
        return multilabel_soft_margin_loss(*tensors(case)).item()

    def torch_mlsml(case: Case) -> float:
        x, y, w = tensors(case)
        return torch.nn.MultiLabelSoftMarginLoss(weight=w)(x, y).item()

    def sigmoid_bce(case: Case) -> float:
        x, y, w = tensors(case)
        return torch.nn.BCELoss(weight=w)(torch.sigmoid(x), y).item()  # mean over N*C = the 1/C and the batch mean

    def bce_with_logits(case: Case) -> float:
        x, y, w = tensors(case)
        per_element = torch.nn.BCEWithLogitsLoss(weight=w, reduction="none")(x, y)
        return (per_element.sum(dim=-1) / x.shape[-1]).mean().item()

    return {
        "softmargin": softmargin_loss,
        "torch MLSML": torch_mlsml,
        "sigmoid+BCELoss": sigmoid_bce,
        "BCEWithLogits/C": bce_with_logits,
    }


def cases() -> list[Case]:
    out = [Case("seed example (weighted)", SEED_LOGITS, SEED_LABELS, SEED_WEIGHTS)]
    for v in GROWING_LOGITS:
        out.append(Case(f"right, x=+{v:g}, y=1", [[v]], [[1.0]]))
        out.append(Case(f"wrong, x=-{v:g}, y=1", [[-v]], [[1.0]]))
    return out


FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32: below it only absolute accuracy is possible


def relative_error(value: float, exact: float) -> float:
    """|value - exact| / max(|exact|, float32's smallest normal); inf if one is infinite and the other not."""
    if math.isnan(value):
        return math.nan
    if value == exact:
        return 0.0
    if math.isinf(exact) or math.isinf(value):
        return math.inf
    return abs(value - exact) / max(abs(exact), FLOAT32_TINY)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def run() -> str:
    impls = implementations()
    header = ["case (float32)", "exact", *impls]
    rows = []
    worst = {name: 0.0 for name in impls}
    for case in cases():
        exact = exact_loss(case)
        row = [case.name, f"{exact:.6g}"]
        for name, fn in impls.items():
            value = fn(case)
            err = relative_error(value, exact)
            worst[name] = max(worst[name], err) if not math.isnan(err) else math.nan
            row.append(f"{value:.6g} ({err:.1e})")
        rows.append(row)
    lines = [
        "Multi-label soft-margin loss, four implementations against an exact 50-digit value.",
        "Each cell: the loss (its relative error against the exact value; below float32's smallest normal",
        "number, 1.2e-38, the error is taken relative to that number, as float32 holds nothing finer there).",
        "",
        format_table(header, rows),
        "",
        "Worst relative error: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()),
        "",
        "Why logits: sigmoid rounds to exactly 1.0 in float32 from x ~ 17, so sigmoid+BCELoss returns 0 for a",
        "right prediction (relative error 1) and clamps log(0) at -100, so a wrong prediction's loss stops at",
        "100 however wrong it is. Given logits, softplus can be computed without forming sigmoid at all; torch's",
        "MultiLabelSoftMarginLoss does that but returns nan at x = +inf (0 * inf); softmargin returns 0 and inf.",
    ]
    return "\n".join(lines)
