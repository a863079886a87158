"""Training and evaluating multi-label models with the soft-margin loss: the engine behind ``softmargin train``,
``evaluate`` and ``predict`` and behind :class:`softmargin.SoftMarginClassifier`.

Models are "binary relevance" logistic regression (``linear``) or an MLP, trained with AdamW on
:class:`softmargin.torch.MultiLabelSoftMarginLoss`, with a validation split for early stopping and threshold tuning.
A run folder holds everything needed to reuse the model: ``model.safetensors`` (weights and the feature scaler),
``model.json`` (architecture, label names, thresholds), plus ``config.json``, ``metrics.json``, ``per_label.csv``,
``history.csv`` and two plots. Every file is written to a temporary name and moved into place (atomic).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .. import metrics as M
from ..torch import MultiLabelSoftMarginLoss, linear_multilabel_soft_margin_loss
from ..weights import class_weights, pos_weight
from .data import Dataset

CLASS_WEIGHTS = ("none", "inverse", "sqrt_inverse", "effective_number")
#: From this many labels on, ``head="auto"`` trains the last layer and the loss as one fused head.
FUSED_HEAD_FROM = 512


@dataclass
class TrainConfig:
    """Every setting of a training run (saved as config.json)."""

    model: str = "mlp"  # "linear" or "mlp"
    hidden: tuple[int, ...] = (512,)
    dropout: float = 0.5
    epochs: int = 200
    batch_size: int = 64
    optimizer: str = "adamw"  # "adamw" (mini-batches) or "lbfgs" (full batch, to convergence)
    lr: float = 1e-3
    weight_decay: float = 1e-2
    C: float | None = None  # L2 penalty as scikit-learn's LogisticRegression(C=...): sum ||W||^2 / (2 C N L)
    valid_fraction: float = 0.15
    patience: int = 20
    standardize: str = "auto"  # "auto" (dense features only), "yes", "no"
    class_weight: str = "none"
    pos_weight: bool = False
    pos_weight_max: float | None = 10.0
    label_smoothing: float = 0.0
    gamma_pos: float = 0.0
    gamma_neg: float = 0.0
    clip: float = 0.0
    thresholds: str = "fixed"  # "fixed" (0.5) or "tuned" (per label, on the validation split)
    at_least_one: str = "auto"  # predict each sample's top label when none passes its threshold: auto = if every
    #                             training sample has a label
    ensemble: int = 5  # networks trained from consecutive seeds; their probabilities are averaged
    head: str = "auto"  # "fused": last layer and loss fused (no batch x labels logits); "plain"; auto: fused from 512 labels
    seed: int = 0
    threads: int | None = None

    def check(self) -> TrainConfig:
        if self.model not in ("linear", "mlp"):
            raise ValueError(f"model={self.model!r}: expected 'linear' or 'mlp'")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"class_weight={self.class_weight!r}: expected one of {', '.join(CLASS_WEIGHTS)}")
        if self.standardize not in ("auto", "yes", "no"):
            raise ValueError(f"standardize={self.standardize!r}: expected 'auto', 'yes' or 'no'")
        if self.thresholds not in ("fixed", "tuned"):
            raise ValueError(f"thresholds={self.thresholds!r}: expected 'fixed' or 'tuned'")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"valid_fraction={self.valid_fraction!r}: expected a fraction in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r}: expected a probability in [0, 1)")
        if self.head not in ("auto", "fused", "plain"):
            raise ValueError(f"head={self.head!r}: expected 'auto', 'fused' or 'plain'")
        if self.at_least_one not in ("auto", "yes", "no"):
            raise ValueError(f"at_least_one={self.at_least_one!r}: expected 'auto', 'yes' or 'no'")
        for name in ("epochs", "batch_size", "ensemble"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive integer")
        if self.optimizer not in ("adamw", "lbfgs"):
            raise ValueError(f"optimizer={self.optimizer!r}: expected 'adamw' or 'lbfgs'")
        if self.C is not None and not self.C > 0:
            raise ValueError(f"C={self.C!r}: expected a positive inverse regularisation strength, or None")
        if self.thresholds == "tuned" and self.valid_fraction == 0:
            raise ValueError("thresholds='tuned' needs a validation split: valid_fraction > 0")
        return self


class MultiLabelNet(nn.Module):
    """Feature scaling, then a linear layer (binary relevance) or an MLP, giving one logit per label."""

    def __init__(self, in_features: int, num_labels: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_labels))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers((x - self.shift) * self.scale)

    def loss(self, x: torch.Tensor, y: torch.Tensor, loss_fn: MultiLabelSoftMarginLoss, fused: bool) -> torch.Tensor:
        """The training loss; ``fused``: the last layer and the loss as one fused head (no (batch, L) logits)."""
        if not fused:
            return loss_fn(self(x), y)
        body, last = self.layers[:-1], self.layers[-1]
        return linear_multilabel_soft_margin_loss(
            body((x - self.shift) * self.scale), last.weight, last.bias, y, class_weight=loss_fn.weight,
            pos_weight=loss_fn.pos_weight, label_smoothing=loss_fn.label_smoothing, gamma_pos=loss_fn.gamma_pos,
            gamma_neg=loss_fn.gamma_neg, clip=loss_fn.clip, validate=False,
        )  # fmt: skip


@dataclass
class TrainedModel:
    """Fitted networks (an ensemble: their probabilities are averaged) and what is needed to use them."""

    nets: list[MultiLabelNet]
    config: TrainConfig
    label_names: list[str]
    feature_names: list[str]
    thresholds: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    at_least_one: bool = False
    label_counts: np.ndarray | None = None  # positives per label in the training data (for PSP@k)
    train_size: int = 0

    def decision_function(self, X: Any, batch_size: int | None = None) -> np.ndarray:
        """The logit of the ensemble's mean probability, (N, L)."""
        p = np.clip(self.predict_proba(X, batch_size), 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)

    def predict_proba(self, X: Any, batch_size: int | None = None) -> np.ndarray:
        """The members' mean probability, (N, L). Computed in float64, so that a row's result does not depend on
        which other rows share its batch (float32 matrix products round differently with the batch size)."""
        total = np.zeros((X.shape[0], len(self.label_names)), np.float64)
        batch_size = batch_size or max(1, min(4096, (1 << 24) // max(1, len(self.label_names))))
        with torch.no_grad():
            for net in self.nets:
                net64 = copy.deepcopy(net).double().eval()
                for start in range(0, X.shape[0], batch_size):
                    rows = slice(start, start + batch_size)
                    total[rows] += torch.sigmoid(net64(_dense_batch(X, rows).double())).numpy()
        return total / len(self.nets)

    def predict(self, X: Any) -> np.ndarray:
        return decide(self.predict_proba(X), self.thresholds, self.at_least_one)


def decide(scores: np.ndarray, thresholds: Any, at_least_one: bool) -> np.ndarray:
    """0/1 predictions: scores at or above their label's threshold; with ``at_least_one``, a sample with none gets its
    top-scoring label (the empty set is never predicted, as none occurred in training)."""
    pred = (scores >= thresholds).astype(np.uint8)
    if at_least_one and pred.size:
        empty = np.flatnonzero(pred.sum(1) == 0)
        pred[empty, scores[empty].argmax(1)] = 1
    return pred


def _dense_batch(X: Any, index: Any) -> torch.Tensor:
    rows = X[index]
    if sp.issparse(rows):  # sparse features stay sparse; each mini-batch is made dense on its own
        rows = rows.toarray()
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


def _scaler(X: Any, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) of scikit-learn's StandardScaler (dense), or MaxAbsScaler-like scaling for sparse features."""
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler

    width = X.shape[1]
    if mode == "no" or (mode == "auto" and sp.issparse(X)):
        return np.zeros(width, np.float32), np.ones(width, np.float32)
    if sp.issparse(X):
        scaler = MaxAbsScaler().fit(X)
        return np.zeros(width, np.float32), (1.0 / scaler.scale_).astype(np.float32)
    scaler = StandardScaler().fit(X)
    return scaler.mean_.astype(np.float32), (1.0 / scaler.scale_).astype(np.float32)


def _loss(config: TrainConfig, Y: np.ndarray) -> MultiLabelSoftMarginLoss:
    weight = None
    if config.class_weight != "none":
        weight = torch.as_tensor(class_weights(Y, config.class_weight), dtype=torch.float32)
    positive = torch.as_tensor(pos_weight(Y, config.pos_weight_max), dtype=torch.float32) if config.pos_weight else None
    return MultiLabelSoftMarginLoss(
        weight=weight, pos_weight=positive, label_smoothing=config.label_smoothing,
        gamma_pos=config.gamma_pos, gamma_neg=config.gamma_neg, clip=config.clip, validate=False,
    )  # fmt: skip


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    num_valid = int(round(n * fraction)) if fraction else 0
    return np.sort(order[num_valid:]), np.sort(order[:num_valid])


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(
    train: Dataset,
    config: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> TrainedModel:
    """Train ``config.ensemble`` networks on ``train`` (one validation split, carved out of it, serves them all:
    early stopping, then threshold tuning on the ensemble's validation predictions)."""
    config.check()
    nets, histories = [], []
    held_out_sum = np.zeros(train.Y.shape, np.float64)  # each sample's predictions by the members it was held out of
    held_out_count = np.zeros(len(train), np.int64)
    members = _progress(range(config.ensemble), progress and config.ensemble > 1, desc="ensemble", unit="model")
    with _threads(config.threads):
        for member in members:
            seed = config.seed + member
            # each member has its own validation split (diversity, as in bagging) and its own scaler and class weights
            train_index, valid_index = _split(len(train), config.valid_fraction, np.random.default_rng(seed))
            scaling = _scaler(train.X[train_index], config.standardize)
            loss_fn = _loss(config, train.Y[train_index])
            net, history = _fit_one(train, config, seed, train_index, valid_index, scaling, loss_fn, progress, log)
            nets.append(net)
            histories.append([{"member": member, **h} for h in history])
            if config.thresholds == "tuned":
                single = TrainedModel([net], config, list(train.label_names), [], np.full(train.Y.shape[1], 0.5))
                held_out_sum[valid_index] += single.predict_proba(train.X[valid_index])
                held_out_count[valid_index] += 1
    at_least_one = config.at_least_one == "yes" or (config.at_least_one == "auto" and bool((train.Y.sum(1) > 0).all()))
    model = TrainedModel(
        nets, config, list(train.label_names), list(train.feature_names), np.full(train.Y.shape[1], 0.5),
        [h for member in histories for h in member], at_least_one, train.Y.sum(0).astype(np.int64), len(train),
    )  # fmt: skip
    if config.thresholds == "tuned":  # on held-out predictions only: samples some member never trained on
        seen = held_out_count > 0
        model.thresholds = M.tune_thresholds(train.Y[seen], held_out_sum[seen] / held_out_count[seen, None])
    return model


def _fit_one(
    train: Dataset,
    config: TrainConfig,
    seed: int,
    train_index: np.ndarray,
    valid_index: np.ndarray,
    scaling: tuple[np.ndarray, np.ndarray],
    loss_fn: nn.Module,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[MultiLabelNet, list[dict[str, float]]]:
    """One network, from seed ``seed``: AdamW with early stopping on the validation loss, or full-batch L-BFGS."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    X, Y = train.X, train.Y.astype(np.float32)
    hidden = tuple(config.hidden) if config.model == "mlp" else ()
    net = MultiLabelNet(X.shape[1], Y.shape[1], hidden, config.dropout)
    net.shift.copy_(torch.from_numpy(scaling[0]))
    net.scale.copy_(torch.from_numpy(scaling[1]))
    Y_t = torch.from_numpy(Y)
    penalty = _l2_penalty(net, config.C, len(train_index), Y.shape[1])
    if config.optimizer == "lbfgs":
        return net, _fit_lbfgs(net, loss_fn, penalty, _dense_batch(X, train_index), Y_t[train_index], config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    fused = config.head == "fused" or (config.head == "auto" and Y.shape[1] >= FUSED_HEAD_FROM)
    X_valid = _dense_batch(X, valid_index) if len(valid_index) else None
    best = (math.inf, 0, {k: v.clone() for k, v in net.state_dict().items()})
    history: list[dict[str, float]] = []
    epochs = _progress(range(config.epochs), progress, desc=f"train {train.name} (seed {seed})", unit="epoch")
    for epoch in epochs:
        net.train()
        order = train_index[rng.permutation(len(train_index))]
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = net.loss(_dense_batch(X, batch), Y_t[batch], loss_fn, fused)
            if penalty is not None:
                loss = loss + penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            count += len(batch)
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
        if X_valid is not None:
            net.eval()
            with torch.no_grad():
                record["valid_loss"] = net.loss(X_valid, Y_t[valid_index], loss_fn, fused).item()
        history.append(record)
        monitored = record.get("valid_loss", record["train_loss"])
        if monitored < best[0] - 1e-6:
            best = (monitored, epoch + 1, {k: v.clone() for k, v in net.state_dict().items()})
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "epoch"} | {"best": best[1]})
        if X_valid is not None and epoch + 1 - best[1] >= config.patience:
            log(f"seed {seed}: early stop at epoch {epoch + 1}, best validation loss at epoch {best[1]}")
            break
    net.load_state_dict(best[2])
    return net, history


def _l2_penalty(net: MultiLabelNet, C: float | None, num_samples: int, num_labels: int) -> Callable[[], torch.Tensor] | None:
    """scikit-learn's L2 term, rescaled to our loss (a mean over N samples and L labels): sum ||W||^2 / (2 C N L)."""
    if C is None:
        return None
    weights = [m.weight for m in net.modules() if isinstance(m, nn.Linear)]  # biases are not penalised
    factor = 1.0 / (2.0 * C * num_samples * num_labels)
    return lambda: factor * sum(w.pow(2).sum() for w in weights)


def _fit_lbfgs(
    net: MultiLabelNet, loss_fn: nn.Module, penalty: Callable[[], torch.Tensor] | None, X: torch.Tensor, Y: torch.Tensor,
    config: TrainConfig,
) -> list[dict[str, float]]:
    """Full-batch L-BFGS to convergence: for the linear model this is per-label logistic regression, solved."""
    optimizer = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=config.epochs * 20, tolerance_grad=1e-7,
                                  tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")  # fmt: skip
    history: list[dict[str, float]] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(X), Y)
        if penalty is not None:
            loss = loss + penalty()
        loss.backward()
        history.append({"epoch": len(history) + 1, "train_loss": loss.item()})
        return loss

    net.train()
    optimizer.step(closure)
    return history


def _progress(iterable: Any, enabled: bool, desc: str, unit: str) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, unit=unit, file=sys.stderr, leave=False)


def evaluate(model: TrainedModel, data: Dataset) -> tuple[dict[str, float], list[dict[str, Any]]]:
    if data.Y.shape[1] != len(model.label_names):
        raise ValueError(
            f"the data has {data.Y.shape[1]} labels, the model {len(model.label_names)}: expected the same label set"
        )
    scores = model.predict_proba(data.X)
    pred = decide(scores, model.thresholds, model.at_least_one)
    return M.evaluate(data.Y, scores, model.thresholds, pred, model.label_counts, model.train_size)


# --- run folders ---------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through a temporary file in the same folder, then move it into place: never a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; give the permissions a plain open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=False, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def write(f: Any) -> None:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)

    _atomic_write(path, write)


def new_run_dir(root: Path, name: str) -> Path:
    """``root/<YYYYmmdd-HHMMSS>-<name>``, never an existing folder (nothing is overwritten)."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (f"{stamp}-{name}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not make a new run folder under {root}")


def save_model(model: TrainedModel, run: Path) -> None:
    """``model.safetensors`` (every member's weights and scaler, keys ``member<i>.<name>``) and ``model.json``."""
    from safetensors.torch import save

    tensors = {
        f"member{i}.{k}": v.detach().contiguous() for i, net in enumerate(model.nets) for k, v in net.state_dict().items()
    }
    _atomic_write(run / "model.safetensors", lambda f: f.write(save(tensors)), mode="wb")
    hidden = list(model.config.hidden) if model.config.model == "mlp" else []
    write_json(
        run / "model.json",
        {
            "format": "softmargin-model-1",
            "members": len(model.nets),
            "in_features": int(model.nets[0].shift.numel()),
            "hidden": hidden,
            "dropout": model.config.dropout,
            "label_names": model.label_names,
            "feature_names": model.feature_names,
            "thresholds": model.thresholds.tolist(),
            "at_least_one": model.at_least_one,
            "label_counts": None if model.label_counts is None else model.label_counts.tolist(),
            "train_size": model.train_size,
        },
    )


def load_model(run: Path) -> TrainedModel:
    """A model saved by :func:`save_model`: safetensors weights (loading executes no code) and JSON metadata."""
    from safetensors.torch import load_file

    run = Path(run)
    for name in ("model.json", "model.safetensors"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run}: no {name}: expected a run folder written by 'softmargin train'")
    meta = json.loads((run / "model.json").read_text())
    tensors = load_file(str(run / "model.safetensors"))
    nets = []
    for i in range(meta["members"]):
        net = MultiLabelNet(meta["in_features"], len(meta["label_names"]), meta["hidden"], meta["dropout"])
        prefix = f"member{i}."
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        nets.append(net)
    config = TrainConfig()
    config_path = run / "config.json"
    if config_path.exists():
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        raw = json.loads(config_path.read_text()).get("train", {})
        config = TrainConfig(**{k: (tuple(v) if k == "hidden" else v) for k, v in raw.items() if k in fields})
    counts = meta.get("label_counts")
    return TrainedModel(
        nets, config, meta["label_names"], meta["feature_names"], np.asarray(meta["thresholds"]), [],
        meta["at_least_one"], None if counts is None else np.asarray(counts), meta.get("train_size", 0),
    )  # fmt: skip


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    members = sorted({h.get("member", 0) for h in history})
    for m in members:
        rows = [h for h in history if h.get("member", 0) == m]
        epochs = [h["epoch"] for h in rows]
        first = m == members[0]
        ax.plot(epochs, [h["train_loss"] for h in rows], color="C0", alpha=0.7, label="train" if first else None)
        if rows and "valid_loss" in rows[0]:
            ax.plot(epochs, [h["valid_loss"] for h in rows], color="C1", alpha=0.7, label="validation" if first else None)
            best = min(rows, key=lambda h: h["valid_loss"])
            ax.plot(best["epoch"], best["valid_loss"], "o", color="C1", markersize=4, label="kept (best)" if first else None)
    ax.set_xlabel("epoch" if len(members) == 1 else f"epoch ({len(members)} ensemble members)")
    ax.set_ylabel("multi-label soft-margin loss")
    ax.set_title("Loss per epoch")
    ax.legend()
    fig.tight_layout()
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")
    plt.close(fig)


def plot_f1_vs_frequency(per_label: list[dict[str, Any]], label_names: list[str], num_samples: int, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frequency = np.array([row["support"] for row in per_label]) / max(num_samples, 1)
    f1 = np.array([row["f1"] for row in per_label])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(frequency, f1, s=18, alpha=0.8)
    if len(label_names) <= 30:
        for x, y, name in zip(frequency, f1, label_names):
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("label frequency in the evaluated data (log scale)")
    ax.set_ylabel("F1")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Per-label F1 against label frequency")
    fig.tight_layout()
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")
    plt.close(fig)


def write_report(run: Path, metrics: dict[str, float], per_label: list[dict[str, Any]], label_names: list[str], num_samples: int) -> None:
    write_json(run / "metrics.json", metrics)
    header = ["label", "support", "precision", "recall", "f1", "threshold"]
    rows = [[name] + [row[k] for k in header[1:]] for name, row in zip(label_names, per_label)]
    write_csv(run / "per_label.csv", header, rows)
    plot_f1_vs_frequency(per_label, label_names, num_samples, run / "f1_vs_frequency.png")


def config_dict(config: TrainConfig, **extra: Any) -> dict[str, Any]:
    return {"train": dataclasses.asdict(config), **extra}
