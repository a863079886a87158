"""torch.export of a module that ends in the loss: strict and non-strict, the exported program gives the same values,
and eager calls afterwards are still right (nothing traced is left in a cache)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F

import softmargin.torch as st


class _Model(torch.nn.Module):
    def __init__(self, **loss_kwargs):
        super().__init__()
        self.linear = torch.nn.Linear(6, 5)
        self.loss = st.MultiLabelSoftMarginLoss(**loss_kwargs)

    def forward(self, x, y):
        return self.loss(self.linear(x), y)


CASES = {
    "plain": {},
    "weight": {"weight": torch.tensor([0.5, 2.0, 1.5, 1.0, 0.25])},
    "options": {"pos_weight": torch.tensor([1.0, 2.0, 3.0, 0.5, 1.5]), "gamma_neg": 2.0, "clip": 0.05, "label_smoothing": 0.1},
}


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_exported_program_matches_eager_and_torch(strict, case):
    torch.manual_seed(0)
    model = _Model(**CASES[case])
    x = torch.randn(8, 6)
    y = (torch.rand(8, 5) < 0.4).float()
    expected = model(x, y)
    program = torch.export.export(model, (x, y), strict=strict)
    assert any("softmargin.loss_rows" in str(node.target) for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(x, y), expected, rtol=1e-6, atol=1e-7)
    x2 = torch.randn(8, 6)
    torch.testing.assert_close(program.module()(x2, y), model(x2, y), rtol=1e-6, atol=1e-7)
    if case == "plain":  # and torch's own loss
        torch.testing.assert_close(expected, F.multilabel_soft_margin_loss(model.linear(x), y), rtol=1e-6, atol=1e-7)
    # eager afterwards: with gradients, against torch
    logits = model.linear(x).detach().requires_grad_()
    ours = st.multilabel_soft_margin_loss(logits, y)
    ours.backward()
    reference = logits.detach().clone().requires_grad_()
    F.multilabel_soft_margin_loss(reference, y).backward()
    torch.testing.assert_close(logits.grad, reference.grad, rtol=1e-6, atol=1e-8)


def test_export_with_dynamic_batch():
    model = _Model()
    x, y = torch.randn(8, 6), (torch.rand(8, 5) < 0.4).float()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x, y), dynamic_shapes=({0: batch}, {0: batch}))
    x3, y3 = torch.randn(3, 6), (torch.rand(3, 5) < 0.4).float()
    torch.testing.assert_close(program.module()(x3, y3), model(x3, y3), rtol=1e-6, atol=1e-7)


def test_exported_module_compiled_backward():
    """The exported forward skips the gradient (need_grad=False: nothing required grad at export); a backward through
    it under torch.compile recomputes it through the operator, not the kernels (a FakeTensor has no data pointer)."""
    exported = torch.export.export(st.MultiLabelSoftMarginLoss(), (torch.randn(3, 4), torch.rand(3, 4)))
    x, y = torch.randn(3, 4, requires_grad=True), torch.rand(3, 4)
    torch.compile(exported.module(), backend="aot_eager")(x, y).backward()
    reference = x.detach().clone().requires_grad_()
    torch.nn.functional.multilabel_soft_margin_loss(reference, y).backward()
    torch.testing.assert_close(x.grad, reference.grad)


class _HeadModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(6, 4)
        self.head = st.LinearMultiLabelSoftMarginLoss(4, 5, pos_weight=torch.tensor([1.0, 2.0, 3.0, 0.5, 1.5]))

    def forward(self, x, y):
        return self.head(self.body(x), y)


def test_non_strict_export_of_a_model_ending_in_the_fused_head():
    """Non-strict export ran the head under is_compiling() without Dynamo: its graph break re-entered itself until
    RecursionError (and its value checks failed on the FakeTensors). Now it traces the head's eager walk: the program
    gives the eager values, on new inputs too. (Strict export, like fullgraph=True, refuses the host-driven head.)"""
    torch.manual_seed(0)
    model = _HeadModel()
    x, y = torch.randn(8, 6), (torch.rand(8, 5) < 0.4).float()
    program = torch.export.export(model, (x, y), strict=False)
    torch.testing.assert_close(program.module()(x, y), model(x, y), rtol=1e-6, atol=1e-7)
    x2 = torch.randn(8, 6)
    logits = model.body(x2) @ model.head.weight.T + model.head.bias
    expected = st.multilabel_soft_margin_loss(logits, y, pos_weight=model.head.pos_weight)  # the unfused loss
    torch.testing.assert_close(program.module()(x2, y), expected, rtol=1e-6, atol=1e-7)
