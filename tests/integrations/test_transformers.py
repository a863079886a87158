"""softmargin.integrations.transformers.loss_function with a tiny randomly initialised model (no download)."""

from __future__ import annotations

import os

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
