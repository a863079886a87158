"""softmargin.integrations.transformers.loss_function with a tiny randomly initialised model (no download)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing is ever downloaded
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from softmargin import class_weights, pos_weight
from softmargin.integrations.transformers import loss_function

NUM_LABELS = 5


def _model():
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=NUM_LABELS, problem_type="multi_label_classification",
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def _batch(rng, n=16):
    ids = torch.as_tensor(rng.integers(1, 64, (n, 12)))
    labels = torch.as_tensor((rng.random((n, NUM_LABELS)) < 0.3).astype(np.float32))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_plain_equals_the_models_own_bce_loss(rng):
    model = _model().eval()
    batch = _batch(rng)
    with torch.no_grad():
        outputs = model(**batch)  # transformers' own BCEWithLogitsLoss() for multi_label_classification
        ours = loss_function()(outputs, batch["labels"])
    assert abs(float(ours) - float(outputs.loss)) <= 1e-6 * float(outputs.loss)


def test_weights_from_the_training_labels_equal_bce_with_weights(rng):
    model = _model().eval()
    batch = _batch(rng)
    train_labels = (rng.random((100, NUM_LABELS)) < 0.2).astype(np.float32)
    compute = loss_function(train_labels, class_weight="inverse", pos_weight=True, pos_weight_max=None)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
        ours = compute({"logits": logits}, batch["labels"])
    cw = torch.as_tensor(class_weights(train_labels), dtype=torch.float32)
    pw = torch.as_tensor(pos_weight(train_labels), dtype=torch.float32)
    reference = torch.nn.BCEWithLogitsLoss(weight=cw, pos_weight=pw)(logits, batch["labels"])
    assert abs(float(ours) - float(reference)) <= 1e-6 * float(reference)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weights_keep_their_precision_with_half_precision_logits(rng, dtype):
    """The weights were cast to the logits' dtype: with float16 logits a class weight of 1e5 became inf (refused as
    if given so) and one of 1e-8 became 0 (its label silently dropped). Against float64 on the same logits."""
    logits = torch.as_tensor(rng.standard_normal((8, 4)), dtype=dtype)
    labels = torch.as_tensor((rng.random((8, 4)) < 0.4).astype(np.float32))
    for weights in ([1e5, 1.0, 1.0, 1.0], [1e-8, 1.0, 1.0, 1.0]):
        ours = loss_function(class_weight=weights, pos_weight=[3.0, 1.0, 1.0, 1e4])({"logits": logits}, labels)
        reference = torch.nn.BCEWithLogitsLoss(
            weight=torch.tensor(weights, dtype=torch.float64), pos_weight=torch.tensor([3.0, 1.0, 1.0, 1e4], dtype=torch.float64)
        )(logits.double(), labels.double())  # fmt: skip
        assert torch.isfinite(ours) and abs(float(ours) - float(reference)) <= 1e-6 * float(reference)


def test_weights_keep_float64_with_float64_logits(rng):
    """Given weights were stored in float32, so a float64 model's loss used weights rounded to float32 (1 + 1e-9 became
    1, 1e-50 became 0): against the float64 definition on the same logits."""
    logits = torch.as_tensor(rng.standard_normal((8, 4)), dtype=torch.float64)
    labels = torch.as_tensor((rng.random((8, 4)) < 0.4).astype(np.float64))
    weights, positive = [1 + 1e-9, 1e-50, 2.0, 0.5], [3.0, 1.0 + 1e-9, 1.0, 2.0]
    ours = loss_function(class_weight=weights, pos_weight=positive)({"logits": logits}, labels)
    reference = torch.nn.BCEWithLogitsLoss(
        weight=torch.tensor(weights, dtype=torch.float64), pos_weight=torch.tensor(positive, dtype=torch.float64)
    )(logits, labels)
    assert ours.dtype == torch.float64
    assert abs(float(ours) - float(reference)) <= 1e-15 * float(reference)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loss_is_float32_under_autocast_as_the_models_own(rng, dtype):
    """Under autocast (the Trainer's bf16=True / fp16=True) the logits are half precision and the model's own
    BCEWithLogitsLoss float32. The labels were cast to the logits' dtype, so the loss was half precision: 1.9e-3 off
    the model's (bfloat16), and a float16 loss made GradScaler's first backward inf (its scale 65536 overflows
    float16), so that step was skipped."""
    model = _model().eval()
    batch = _batch(rng)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        outputs = model(**batch)
        ours = loss_function()(outputs, batch["labels"])
    assert outputs.logits.dtype == dtype and ours.dtype == outputs.loss.dtype == torch.float32
    assert abs(float(ours) - float(outputs.loss)) <= 1e-6 * float(outputs.loss)
    linear = torch.nn.Linear(6, NUM_LABELS)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=dtype):
        loss = loss_function()({"logits": linear(torch.randn(8, 6))}, batch["labels"][:8])
    scaler.scale(loss).backward()
    assert scaler.get_scale() == 65536.0 and torch.isfinite(linear.weight.grad).all()


def test_nan_as_missing_label_masks_as_minus_100_does(rng):
    """missing_label=NaN was compared with ==, which NaN never is: nothing was masked and the NaN labels refused."""
    train = np.array([[1, 0, -100], [0, -100, 1], [1, 1, 0], [-100, 0, 1]], dtype=np.float64)
    labels = torch.tensor([[1.0, -100, 0], [0, 1, -100]])
    logits = torch.as_tensor(rng.standard_normal((2, 3)), dtype=torch.float32)
    for options in ({}, {"class_weight": "inverse", "pos_weight": True}):
        with_nan = loss_function(np.where(train == -100, np.nan, train), missing_label=float("nan"), **options)
        with_minus_100 = loss_function(train, missing_label=-100, **options)
        ours = with_nan({"logits": logits}, labels.where(labels != -100, torch.tensor(float("nan"))))
        assert float(ours) == pytest.approx(float(with_minus_100({"logits": logits}, labels)), rel=1e-6)


def test_missing_labels_are_masked(rng):
    logits = torch.as_tensor(rng.standard_normal((3, NUM_LABELS)), dtype=torch.float32)
    labels = torch.tensor([[1.0, 0, -100, 0, 1], [0, 0, 0, 1, -100], [-100, 1, 1, 0, 0]])
    ours = loss_function(missing_label=-100)((logits,), labels)
    observed = labels != -100
    element = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.clamp(min=0), reduction="none")
    reference = ((element * observed).sum(1) / observed.sum(1)).mean()
    assert abs(float(ours) - float(reference)) <= 1e-6 * float(reference)


def test_errors():
    with pytest.raises(ValueError, match="train_labels is None"):
        loss_function(class_weight="inverse")
    with pytest.raises(ValueError, match="target has 1 value outside"):
        loss_function()({"logits": torch.zeros(1, 2)}, torch.tensor([[2.0, 0.0]]))


def test_given_weights_are_checked_when_the_hook_is_made():
    """class_weight and pos_weight given as values were checked only at the first training step, with the message
    naming `weight`; a (1, C) pos_weight was taken and broadcast. Now when loss_function is called, by their names."""
    train = np.zeros((4, 3))
    with pytest.raises(ValueError, match=re.escape("class_weight.shape == (2,): expected (3,), one class_weight per column")):
        loss_function(train, class_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=re.escape("pos_weight.shape == (1, 3): expected shape (C,), one pos_weight per")):
        loss_function(pos_weight=[[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=re.escape("class_weight has 1 value outside the finite range [0, inf) (the first at position (1,): -2.0)")):
        loss_function(class_weight=[1.0, -2.0, 1.0])
    with pytest.raises(ValueError, match=re.escape("pos_weight has 1 value outside the finite range (0, inf) (the first at position (0,): 0.0)")):
        loss_function(pos_weight=[0.0, 1.0])
    logits, labels = torch.zeros(2, 3), torch.ones(2, 3)
    scalar = loss_function(class_weight=2.0, pos_weight=3.0)({"logits": logits}, labels)
    assert float(scalar) == pytest.approx(6 * float(loss_function()({"logits": logits}, labels)), rel=1e-6)


@pytest.mark.parametrize("missing_label", [None, -100.0])
def test_num_items_in_batch_makes_accumulated_micro_batches_the_whole_batch(rng, missing_label):
    # the Trainer does not divide a compute_loss_func's loss by the accumulation steps: it passes its count of label
    # entries other than -100 over all the micro-batches; the micro-batches' losses must then add up to the batch's
    logits = torch.tensor(rng.standard_normal((8, NUM_LABELS)), dtype=torch.float64, requires_grad=True)
    labels = torch.as_tensor((rng.random((8, NUM_LABELS)) < 0.4).astype(np.float64))
    if missing_label is not None:
        labels[torch.as_tensor(rng.random((8, NUM_LABELS)) < 0.2)] = missing_label
    compute = loss_function(missing_label=missing_label)
    counted = int((labels != -100).sum())
    whole = compute({"logits": logits}, labels, num_items_in_batch=counted)
    assert float(whole) == pytest.approx(float(compute({"logits": logits}, labels)), rel=1e-15)  # one micro-batch
    (whole_grad,) = torch.autograd.grad(whole, logits)
    parts = sum(compute({"logits": logits[rows]}, labels[rows], num_items_in_batch=torch.tensor(counted))
                for rows in (slice(0, 3), slice(3, 8)))  # fmt: skip
    (parts_grad,) = torch.autograd.grad(parts, logits)
    if missing_label is None:  # exact: the micro-batches' means weighed by their sizes
        assert float(parts) == pytest.approx(float(whole), rel=1e-12)
        torch.testing.assert_close(parts_grad, whole_grad, rtol=1e-12, atol=1e-15)
    else:  # each micro-batch's mean weighs by its observed labels
        shares = [float((labels[rows] != -100).sum()) / counted for rows in (slice(0, 3), slice(3, 8))]
        expected = sum(share * float(compute({"logits": logits[rows]}, labels[rows]))
                       for share, rows in zip(shares, (slice(0, 3), slice(3, 8))))  # fmt: skip
        assert float(parts) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("average_tokens_across_devices", [True, False])
def test_num_items_in_batch_under_data_parallel(rng, average_tokens_across_devices):
    """Under torch.nn.DataParallel (n_gpu > 1, one process) transformers 5's Trainer (_get_num_items_in_batch, then
    compute_loss and training_step) expands the count to one per GPU, shape (n_gpu, 1), after dividing it by n_gpu
    when average_tokens_across_devices is False, and multiplies the loss by n_gpu when it is True, then takes
    loss.mean(); compute_loss_func sees the gathered logits. The loss came out n_gpu times the single device's (and
    of shape (n_gpu, 1)). Replays those steps (no GPU needed) against one device's loss."""
    n_gpu = 2
    logits = torch.tensor(rng.standard_normal((8, NUM_LABELS)), dtype=torch.float64)
    labels = torch.as_tensor((rng.random((8, NUM_LABELS)) < 0.4).astype(np.float64))
    compute = loss_function()
    counted = (labels != -100).sum()  # the Trainer's count over the two micro-batches below
    single = sum(compute({"logits": logits[rows]}, labels[rows], num_items_in_batch=counted)
                 for rows in (slice(0, 3), slice(3, 8)))  # fmt: skip
    handed = counted if average_tokens_across_devices else counted // n_gpu
    handed = handed.unsqueeze(0).expand(n_gpu, -1)
    parallel = 0.0
    for rows in (slice(0, 3), slice(3, 8)):
        loss = compute({"logits": logits[rows]}, labels[rows], num_items_in_batch=handed)
        parallel = parallel + (loss * n_gpu if average_tokens_across_devices else loss).mean()
    assert float(parallel) == pytest.approx(float(single), rel=1e-12)
    assert float(single) == pytest.approx(float(compute({"logits": logits}, labels)), rel=1e-12)


def test_weights_from_training_labels_with_missing_entries_use_the_observed_rates():
    train = np.array([[1, 0, -100], [0, -100, 1], [1, 1, 0], [-100, 0, 1], [0, 0, 1]], dtype=np.float64)
    compute = loss_function(train, class_weight="inverse", pos_weight=True, pos_weight_max=None, missing_label=-100)
    observed = train != -100
    rate = np.where(observed, train, 0).sum(0) / observed.sum(0)  # 2/4, 1/4, 3/4
    logits, labels = torch.zeros(2, 3, dtype=torch.float64), torch.tensor([[1.0, 0, 1], [0, 1, 0]], dtype=torch.float64)
    inverse = 1 / (3 * rate)
    reference = torch.nn.BCEWithLogitsLoss(
        weight=torch.as_tensor(inverse / inverse.mean()), pos_weight=torch.as_tensor((1 - rate) / rate)
    )(logits, labels)
    assert float(compute({"logits": logits}, labels)) == pytest.approx(float(reference), rel=1e-6)
    assert (train == -100).sum() == 3  # the caller's matrix is left as it was


@pytest.mark.slow
def test_gradient_accumulation_gives_the_same_update_as_one_batch(tmp_path):
    pytest.importorskip("accelerate")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x, labels=None):
            return {"logits": self.linear(x)}

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 4, generator=gen), (torch.rand(8, 3, generator=gen) < 0.5).float()
    data = [{"x": x[i], "labels": y[i]} for i in range(8)]

    def update(batch_size, steps):
        model = Tiny()
        before = model.linear.weight.detach().clone()
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=batch_size, gradient_accumulation_steps=steps,
            max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
            max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
            remove_unused_columns=False, disable_tqdm=True,
        )  # fmt: skip
        transformers.Trainer(model=model, args=args, train_dataset=data, compute_loss_func=loss_function()).train()
        return model.linear.weight.detach() - before

    torch.testing.assert_close(update(4, 2), update(8, 1), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_trainer_trains_with_it(rng, tmp_path):
    pytest.importorskip("accelerate")
    model = _model()
    rows = [_batch(rng, 1) for _ in range(64)]
    dataset = [{k: v[0] for k, v in row.items()} for row in rows]
    train_labels = np.stack([row["labels"].numpy() for row in dataset])
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=4, learning_rate=5e-3,
        report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset,
        compute_loss_func=loss_function(train_labels, class_weight="sqrt_inverse", pos_weight=True, gamma_neg=1.0),
    )  # fmt: skip
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) >= 8 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
