"""Training and evaluating multi-label models with the soft-margin loss: the engine behind ``softmargin train``,
``evaluate`` and ``predict`` and behind :class:`softmargin.SoftMarginClassifier`.

Models are "binary relevance" logistic regression (``linear``) or an MLP, trained with AdamW on
:class:`softmargin.torch.MultiLabelSoftMarginLoss`, with a validation split for early stopping and threshold tuning.
A run folder holds everything needed to reuse the model: ``model.safetensors`` (weights and the feature scaler),
``model.json`` (architecture, feature and label names, decisions, the weights' SHA-256, checked on load), plus
``config.json``, ``metrics.json``, ``per_label.csv``, ``history.csv`` and two plots. The folder is assembled under a
temporary name and renamed into place whole (:func:`assemble_run`): a run folder is complete or absent.

Training runs on one process, or on several under ``torchrun`` (:class:`Distributed`): data-parallel (DDP) for the
network, or label-parallel for the fused head of a large label set; rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import expit, logsumexp
from torch import nn

from .. import metrics as M
from .._validation import check_options
from ..torch import MultiLabelSoftMarginLoss, linear_multilabel_soft_margin_loss
from ..weights import METHODS, Method, class_weights, pos_weight
from .data import BLUR, FLOAT32_MAX, Dataset, column_magnitudes, float32_blurred
from .decisions import COUNTS, FALLBACKS, cv_thresholds
from .files import new_folder

CLASS_WEIGHTS = ("none", "inverse", "sqrt_inverse", "effective_number")
#: How probabilities become 0/1 decisions: a fixed threshold, per-label thresholds tuned for F1 on held-out data,
#: each sample's k best labels, or MULAN's RCut (each sample's t best, t the training data's label cardinality).
STRATEGIES = ("fixed", "tuned", "top-k", "rcut")
MODELS = ("auto", "linear", "mlp")
OPTIMIZERS = ("auto", "adamw", "lbfgs", "newton")
#: ``C=None`` for the Newton path: each candidate is scored by the cross-fitting's held-out predictions (P@1 +
#: micro-F1 + macro-F1 after the tuned thresholds) when the data is small (feature nonzeros x labels up to
#: AUTO_C_BUDGET); above, AUTO_C_LARGE up to AUTO_C_HUGE and AUTO_C_HUGE_VALUE beyond (a larger C takes more Newton
#: steps: a time bound, measured on bibtex and delicious, not a quality optimum).
AUTO_C_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
AUTO_C_BUDGET = 2e7
AUTO_C_LARGE = 10.0
AUTO_C_HUGE = 1e8
AUTO_C_HUGE_VALUE = 1.0
#: The same for the squared-hinge loss (LIBLINEAR's L2-loss SVM, the default linear loss), scored by the held-out
#: P@1 + P@3 + P@5 alone (the logistic loss keeps the score above): its grid up to
#: AUTO_C_BUDGET, a shorter one up to AUTO_C_HUGE, one value beyond. Each grid's candidates are its values and the
#: mean of each two neighbours (one linear model, the two solutions averaged), scored by the held-out P@1 + P@3 + P@5.
SVM_C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SVM_C_GRID_LARGE = (0.1, 0.3)  # a time bound: bibtex's cross-fitting over (0.1, 0.3, 1) took 17 s at load 4
SVM_C_HUGE_VALUE = 0.1
#: Cross-fitting folds (``folds=None``): FOLDS, and FOLDS_HUGE above AUTO_C_HUGE (delicious: 3 folds take the fit
#: from 28 s to 45 s at a load of 4 for +0.003 test macro-F1).
FOLDS = 3
FOLDS_HUGE = 2
#: The Newton solver's losses (``linear_loss``).
LINEAR_LOSSES = ("squared_hinge", "logistic")
#: ``macro_weight`` of the tuned thresholds (:func:`softmargin.app.decisions.cv_thresholds`): LibMultiLabel's 1, and
#: MACRO_WEIGHT_SVM for the squared-hinge linear model's cuts on calibrated counts, where it keeps macro-F1 where the
#: observed counts had it on enron, bibtex and delicious (means over 3 fold seeds) at a lower Hamming loss
#: (docs/quality.md). The logistic loss's probabilities keep 1: 2 bought them no macro-F1 on medical and enron and
#: cost 0.026 micro-F1 on the small generated set of the threshold-safety test.
MACRO_WEIGHT = 1.0
MACRO_WEIGHT_SVM = 2.0
#: ``calibration_prior``: the shrinkage of each label's Platt scaling toward the shared one
#: (:func:`softmargin.app.decisions.calibrate`).
CALIBRATION_PRIOR = 10.0
#: The Newton path's positive weight for rare labels (``rare_weight``, ``rare_positives``): a label with fewer than
#: RARE_POSITIVES training positives has them weighted n_neg / n_pos, at most RARE_WEIGHT (medical macro-F1 0.380 ->
#: 0.398, enron 0.235 -> 0.264; frequent labels, and so the ranking at the top, are left alone).
RARE_WEIGHT = 10.0
RARE_POSITIVES = 10
#: The Newton solver holds a few float64 (samples x labels) arrays: above this many cells, auto keeps the MLP (whose
#: fused head never makes one) and an explicit optimizer='newton' is refused.
NEWTON_MAX_CELLS = 20_000_000


class TrainingError(ValueError):
    """Training went wrong in a way the user can fix (a diverging loss): nothing is saved."""


def check_decision(threshold: float, k: int) -> None:
    if not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise ValueError(f"threshold={threshold!r}: expected a probability strictly between 0 and 1")
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"k={k!r}: expected a positive number of labels per sample")


def check_k(k: int, num_labels: int) -> None:
    """top-k's ``k`` against the labels there are: more would predict every label for every sample."""
    if k > num_labels:
        raise ValueError(f"k={k}: top-k with {k} labels per sample, and there are {num_labels} labels (every label would "
                         f"be predicted for every sample); expected at most {num_labels}")  # fmt: skip


def resolve_device(device: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; ``cpu``; ``cuda`` / ``cuda:N``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", str(device)):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: this machine has no CUDA device torch can use; use 'cpu' or 'auto'")
        return torch.device(device)
    raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


#: From this many cells (rows x features) on, L-BFGS on sparse features says that it makes them dense (512 MB).
LBFGS_DENSE_NOTICE = 1 << 27
#: The most cells of sparse features made dense at once for the validation loss (64 MB of float32).
VALID_CHUNK_CELLS = 1 << 24
#: From this many labels on, ``head="auto"`` trains the last layer and the loss as one fused head.
FUSED_HEAD_FROM = 512


def _is_number(value: Any) -> bool:
    """A real number, not a bool (True would pass as 1) nor a string."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


#: TrainConfig's numeric fields, checked for their type before their range; the optional ones may be None.
_NUMBER_FIELDS = ("dropout", "lr", "weight_decay", "C", "valid_fraction", "pos_weight_max", "rare_weight",
                  "label_smoothing", "gamma_pos", "gamma_neg", "clip", "fbr", "min_threshold", "macro_weight",
                  "calibration_prior", "threshold")  # fmt: skip
_INTEGER_FIELDS = ("rare_positives", "folds", "fbr_positives", "k", "seed", "threads")  # (epochs, batch_size,
# ensemble and patience: "expected a positive integer" below)
_OPTIONAL_FIELDS = ("C", "pos_weight_max", "macro_weight", "folds", "fbr_positives", "threads")


@dataclass
class TrainConfig:
    """Every setting of a training run (saved as config.json)."""

    model: str = "auto"  # "linear", "mlp"; auto: linear for sparse non-negative (bag-of-words) features, else mlp
    hidden: tuple[int, ...] = (512,)
    dropout: float = 0.5
    epochs: int = 200
    batch_size: int = 64
    optimizer: str = "auto"  # "adamw" (mini-batches), "lbfgs" (full batch), "newton" (linear model: truncated Newton,
    #                          cross-fitted); auto: newton for the linear model, adamw for the MLP
    lr: float = 1e-3
    weight_decay: float = 1e-2
    C: float | None = None  # L2 penalty as scikit-learn's LogisticRegression(C=...): sum ||W||^2 / (2 C N L); newton:
    #                         None chooses it (AUTO_C_GRID by cross-validation on small data, else AUTO_C_LARGE)
    valid_fraction: float = 0.15
    patience: int = 20
    standardize: str = "auto"  # "auto" (newton on bag-of-words: tfidf; else dense features only), "yes", "no", "tfidf"
    class_weight: str = "none"
    pos_weight: bool = False
    pos_weight_max: float | None = 10.0
    rare_weight: float = RARE_WEIGHT  # newton: labels with fewer than rare_positives training positives get the
    #                                  positive weight min(rare_weight, n_neg / n_pos) (1: off; --pos-weight overrides)
    rare_positives: int = RARE_POSITIVES
    label_smoothing: float = 0.0
    gamma_pos: float = 0.0
    gamma_neg: float = 0.0
    clip: float = 0.0
    thresholds: str = "auto"  # "fixed" (threshold), "tuned" (per label, on held-out data), "top-k" (k), "rcut";
    #                           auto: tuned for newton on tf-idf features (the bag-of-words default), else fixed
    folds: int | None = None  # newton: folds of the cross-fitting that gives every training row a held-out
    #                          prediction; None: FOLDS, or FOLDS_HUGE above AUTO_C_HUGE (time)
    fbr: float = 0.1  # tuned: a label whose held-out F1 is below this is predicted only above every held-out score
    min_threshold: float = 0.05  # tuned: no per-label threshold below this
    macro_weight: float | None = None  # tuned: each cut maximises micro-F1 + macro_weight x macro-F1 (held out);
    #                                    None: MACRO_WEIGHT_SVM for newton's squared hinge on calibrated counts, else
    #                                    MACRO_WEIGHT (decided by resolve())
    fbr_positives: int | None = 10  # tuned: the fbr fallback only for labels with fewer held-out positives (None: all)
    fallback: str = "global"  # tuned: where the fbr fallback goes: "global" (the one threshold maximising the pooled
    #                          held-out micro-F1) or "above" (SCutfbr: above every held-out score, at least 0.5)
    cut_counts: str = "calibrated"  # tuned: the cuts count the held-out labels' calibrated probabilities
    #                                 ("calibrated": no fbr fallback) or the labels themselves ("observed")
    calibration_prior: float = CALIBRATION_PRIOR  # tuned, calibrated: each label's Platt scaling's shrinkage
    linear_loss: str = "squared_hinge"  # newton: "squared_hinge" (L2-loss SVM; probabilities = sigmoid(margin)) or
    #                                     "logistic" (logistic regression: calibrated probabilities)
    threshold: float = 0.5  # the fixed threshold on the probabilities
    k: int = 1  # labels per sample for thresholds="top-k"
    at_least_one: str = "auto"  # predict each sample's top label when none passes its threshold: auto = if every
    #                             training sample has a label
    ensemble: int = 5  # networks trained from consecutive seeds; their probabilities are averaged
    head: str = "auto"  # "fused": last layer and loss fused (no batch x labels logits); "plain"; auto: fused from 512 labels
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"

    def check(self) -> TrainConfig:
        # types before the range checks, which would compare a str and fail unclearly, or take True for 1
        for name in _NUMBER_FIELDS:
            value = getattr(self, name)
            if not (value is None and name in _OPTIONAL_FIELDS) and not _is_number(value):
                raise ValueError(f"{name}={value!r}: expected a number{' or None' if name in _OPTIONAL_FIELDS else ''}")
        for name in _INTEGER_FIELDS:
            value = getattr(self, name)
            if not (value is None and name in _OPTIONAL_FIELDS) and not (_is_number(value) and isinstance(value, (int, np.integer))):
                raise ValueError(f"{name}={value!r}: expected an integer{' or None' if name in _OPTIONAL_FIELDS else ''}")
        if not isinstance(self.pos_weight, (bool, np.bool_)):
            raise ValueError(f"pos_weight={self.pos_weight!r}: expected True or False")
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: expected one of {', '.join(MODELS)}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"class_weight={self.class_weight!r}: expected one of {', '.join(CLASS_WEIGHTS)}")
        if self.standardize not in ("auto", "yes", "no", "tfidf"):
            raise ValueError(f"standardize={self.standardize!r}: expected 'auto', 'yes', 'no' or 'tfidf'")
        if self.thresholds not in ("auto", *STRATEGIES):
            raise ValueError(f"thresholds={self.thresholds!r}: expected one of auto, {', '.join(STRATEGIES)}")
        if self.folds is not None and not (isinstance(self.folds, (int, np.integer)) and self.folds >= 2):
            raise ValueError(f"folds={self.folds!r}: expected at least 2 folds")
        if not 0 <= self.fbr < 1:
            raise ValueError(f"fbr={self.fbr!r}: expected an F1 floor in [0, 1)")
        if not 0 < self.min_threshold < 1:
            raise ValueError(f"min_threshold={self.min_threshold!r}: expected a probability strictly between 0 and 1")
        if self.macro_weight is not None and not (
            isinstance(self.macro_weight, (int, float)) and math.isfinite(self.macro_weight) and self.macro_weight >= 0
        ):
            raise ValueError(f"macro_weight={self.macro_weight!r}: expected a non-negative finite weight, or None")
        if self.cut_counts not in COUNTS:
            raise ValueError(f"cut_counts={self.cut_counts!r}: expected one of {', '.join(COUNTS)}")
        if not (isinstance(self.calibration_prior, (int, float)) and math.isfinite(self.calibration_prior) and self.calibration_prior > 0):
            raise ValueError(f"calibration_prior={self.calibration_prior!r}: expected a positive finite shrinkage strength")
        if self.cut_counts == "calibrated":
            defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
            changed = [f"{name}={getattr(self, name)!r}" for name in ("fbr", "fbr_positives", "fallback")
                       if getattr(self, name) != defaults[name]]  # fmt: skip
            if changed:
                raise ValueError(f"{', '.join(changed)}: the SCutfbr fallback belongs to cut_counts='observed'; the "
                                 "calibrated counts (the default) have none; set cut_counts='observed'")  # fmt: skip
        if self.fbr_positives is not None and not (isinstance(self.fbr_positives, (int, np.integer)) and self.fbr_positives >= 1):
            raise ValueError(f"fbr_positives={self.fbr_positives!r}: expected a positive count of held-out positives, or None")
        if not (isinstance(self.rare_weight, (int, float)) and math.isfinite(self.rare_weight) and self.rare_weight >= 1):
            raise ValueError(f"rare_weight={self.rare_weight!r}: expected a positive weight of at least 1 (1: off)")
        if not (isinstance(self.rare_positives, (int, np.integer)) and self.rare_positives >= 0):
            raise ValueError(f"rare_positives={self.rare_positives!r}: expected a non-negative count of training positives")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback={self.fallback!r}: expected one of {', '.join(FALLBACKS)}")
        if self.linear_loss not in LINEAR_LOSSES:
            raise ValueError(f"linear_loss={self.linear_loss!r}: expected one of {', '.join(LINEAR_LOSSES)}")
        check_decision(self.threshold, self.k)
        # the loss's own check, here rather than when training starts (after the data were read)
        check_options(self.label_smoothing, self.gamma_pos, self.gamma_neg, self.clip)
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"valid_fraction={self.valid_fraction!r}: expected a fraction in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r}: expected a probability in [0, 1)")
        if self.head not in ("auto", "fused", "plain"):
            raise ValueError(f"head={self.head!r}: expected 'auto', 'fused' or 'plain'")
        if self.at_least_one not in ("auto", "yes", "no"):
            raise ValueError(f"at_least_one={self.at_least_one!r}: expected 'auto', 'yes' or 'no'")
        for name in ("epochs", "batch_size", "ensemble", "patience"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name}={value!r}: expected a positive integer")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads!r}: expected a positive number of threads, or None for torch's default")
        if not (0 < self.lr <= FLOAT32_MAX):  # beyond float32's largest, AdamW's step failed inside torch
            raise ValueError(f"lr={self.lr!r}: expected a positive learning rate, at most float32's largest (3.4e38)")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay={self.weight_decay!r}: expected a non-negative finite weight decay")
        if self.pos_weight_max is not None and not (
            isinstance(self.pos_weight_max, (int, float)) and math.isfinite(self.pos_weight_max) and self.pos_weight_max > 0
        ):
            raise ValueError(f"pos_weight_max={self.pos_weight_max!r}: expected a positive finite cap, or None")
        if not (isinstance(self.seed, (int, np.integer)) and 0 <= self.seed < 2**32):
            raise ValueError(f"seed={self.seed!r}: expected an integer in [0, 2**32)")
        resolve_device(self.device)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.optimizer == "newton" and self.model == "mlp":
            raise ValueError("optimizer='newton' solves the linear model: use --model linear (or auto), or adamw / lbfgs")
        if self.C is not None and not self.C > 0:
            raise ValueError(f"C={self.C!r}: expected a positive inverse regularisation strength, or None")
        if self.thresholds == "tuned" and self.valid_fraction == 0 and self.optimizer in ("adamw", "lbfgs"):
            raise ValueError("thresholds='tuned' needs a validation split: valid_fraction > 0")
        return self

    def resolve(self, train: Dataset) -> TrainConfig:
        """A copy with every ``auto`` setting that depends on the data decided (see each field's comment)."""
        bag = train.sparse and bool(train.X.nnz == 0 or train.X.data.min() >= 0)
        # the Newton solver does plain logistic regression (with pos_weight): other loss options keep the MLP
        newton_loss = self.class_weight == "none" and not (self.label_smoothing or self.gamma_pos or self.gamma_neg or self.clip)
        fits = len(train) * train.Y.shape[1] <= NEWTON_MAX_CELLS
        model = self.model if self.model != "auto" else ("linear" if bag and newton_loss and fits else "mlp")
        optimizer = self.optimizer
        if optimizer == "auto":  # Newton runs on one process: under torchrun the linear model keeps AdamW (DDP)
            single = "WORLD_SIZE" not in os.environ
            optimizer = "newton" if model == "linear" and newton_loss and single and fits else "adamw"
        standardize = self.standardize
        if standardize == "auto" and optimizer == "newton" and bag:
            standardize = "tfidf"
        thresholds = self.thresholds
        if thresholds == "auto":  # tuned where the held-out predictions come free: Newton's cross-fitting
            thresholds = "tuned" if optimizer == "newton" and standardize == "tfidf" else "fixed"
        resolved = dataclasses.replace(self, model=model, optimizer=optimizer, standardize=standardize, thresholds=thresholds)
        return dataclasses.replace(resolved, macro_weight=macro_weight(resolved)).check()


class MultiLabelNet(nn.Module):
    """Feature scaling (``(x - shift) * scale``, then with ``normalize`` each row to unit L2 norm: tf-idf), then a
    linear layer (binary relevance) or an MLP, giving one logit per label."""

    shift: torch.Tensor  # buffers (registered in __init__), declared for type checkers
    scale: torch.Tensor
    layers: nn.Sequential

    def __init__(self, in_features: int, num_labels: int, hidden: Sequence[int] = (), dropout: float = 0.0,
                 normalize: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.normalize = normalize
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
        return self.layers(self.inputs(x))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled (and, with ``normalize``, row-normalised) features the first layer sees. float64 features
        (kept so where float32 would blur them: :func:`_float32_blurs`) are centred and scaled in float64, then cast."""
        x = (x - self.shift) * self.scale
        if x.dtype != self.scale.dtype:
            x = x.to(self.scale.dtype)
        if self.normalize:
            x = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        return x

    @property
    def first_layer(self) -> nn.Linear:
        """The input layer (``layers[0]``; the output layer too for the linear model)."""
        return _linear(self.layers[0])

    @property
    def last_layer(self) -> nn.Linear:
        """The output layer (``layers[-1]``): one logit per label."""
        return _linear(self.layers[-1])

    def loss(self, x: torch.Tensor, y: torch.Tensor, loss_fn: MultiLabelSoftMarginLoss, fused: bool) -> torch.Tensor:
        """The training loss; ``fused``: the last layer and the loss as one fused head (no (batch, L) logits)."""
        if not fused:
            return loss_fn(self(x), y)
        body, last = self.layers[:-1], self.last_layer
        return linear_multilabel_soft_margin_loss(
            body(self.inputs(x)), last.weight, last.bias, y, class_weight=loss_fn.weight,
            pos_weight=loss_fn.pos_weight, label_smoothing=loss_fn.label_smoothing, gamma_pos=loss_fn.gamma_pos,
            gamma_neg=loss_fn.gamma_neg, clip=loss_fn.clip, validate=False,
        )  # fmt: skip


def _linear(layer: nn.Module) -> nn.Linear:
    """``layer``, known to be a linear layer (the first and last layers of :class:`MultiLabelNet` always are)."""
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"expected a linear layer, got {type(layer).__name__}")
    return layer


@dataclass
class TrainedModel:
    """Fitted networks (an ensemble: their probabilities are averaged) and what is needed to use them.

    ``thresholds`` holds each label's threshold for the ``fixed`` and ``tuned`` strategies (NaN for ``top-k`` and
    ``rcut``); ``tuned`` the per-label thresholds tuned at training time (None when not tuned); ``rcut_k`` the
    training data's label cardinality, rounded (MULAN's RCut); ``decision`` the strategy in use and its parameters.
    """

    nets: list[MultiLabelNet]
    config: TrainConfig
    label_names: list[str]
    feature_names: list[str]
    thresholds: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    at_least_one: bool = False
    label_counts: np.ndarray | None = None  # positives per label in the training data (for PSP@k and the plot)
    train_size: int = 0
    tuned: np.ndarray | None = None
    rcut_k: int = 1
    decision: dict[str, Any] = field(default_factory=lambda: {"strategy": "fixed", "threshold": 0.5, "k": 1})
    positional: bool = False  # features and labels named by their index (LIBSVM)

    @property
    def num_features(self) -> int:
        return int(self.nets[0].shift.numel())

    def decision_function(self, X: Any, batch_size: int | None = None, device: str = "cpu") -> np.ndarray:
        """The logit of the ensemble's mean probability, (N, L), from the members' logits z_m, unclipped:
        ``log mean sigmoid(z_m) - log mean sigmoid(-z_m)`` (one member: its logit itself). The logit of the mean
        probability, clipped to [1e-12, 1 - 1e-12], tied every logit beyond +-27.6."""
        total = np.zeros((X.shape[0], len(self.label_names)), np.float64)
        for rows, batch, members in self._batches(X, batch_size, device):
            z = np.stack([member.logits(batch) for member in members])
            if len(members) == 1:
                total[rows] = z[0]
            else:  # log sigmoid(z) = -softplus(-z); the 1/M of both means cancels
                total[rows] = logsumexp(-np.logaddexp(0.0, -z), axis=0) - logsumexp(-np.logaddexp(0.0, z), axis=0)
        return total

    def predict_proba(self, X: Any, batch_size: int | None = None, device: str = "cpu") -> np.ndarray:
        """The members' mean probability, (N, L). Dense input is computed in float64, so that a row's result does not
        depend on which other rows share its batch (float32 matrix products round differently with the batch size);
        sparse input stays sparse: its first layer is a sparse product (row by row, so batch-independent too). Nor does it
        depend on the input's memory order: a Fortran-ordered batch is made C-contiguous first."""
        total = np.zeros((X.shape[0], len(self.label_names)), np.float64)
        for rows, probabilities in self.iter_proba(X, batch_size, device):
            total[rows] = probabilities
        return total

    def iter_proba(self, X: Any, batch_size: int | None = None, device: str = "cpu") -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, the members' mean probability of those rows) one batch at a time: memory bounded by the batch."""
        for rows, batch, members in self._batches(X, batch_size, device):
            total = members[0](batch)
            for member in members[1:]:
                total = total + member(batch)
            yield rows, total / len(members)

    def _batches(self, X: Any, batch_size: int | None, device: str) -> Iterator[tuple[slice, Any, list[_Inference]]]:
        """(rows, X's rows, the members ready on ``device``) one batch at a time (default: up to 4096 rows, about a
        million cells of output)."""
        batch_size = batch_size or max(1, min(4096, (1 << 20) // max(1, len(self.label_names))))
        where = resolve_device(device)
        members = [_Inference(net, where) for net in self.nets]
        for start in range(0, X.shape[0], batch_size):
            rows = slice(start, min(start + batch_size, X.shape[0]))
            batch = X[rows]
            if isinstance(batch, np.ndarray):  # a Fortran-ordered (a DataFrame's) batch rounded the products differently
                batch = np.ascontiguousarray(batch)
            yield rows, batch, members

    def predict(self, X: Any) -> np.ndarray:
        return self.decide(self.predict_proba(X))

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """0/1 decisions from probabilities (N, L) with this model's strategy (see :data:`STRATEGIES`)."""
        strategy = self.decision["strategy"]
        if strategy == "top-k":
            return top_k_decisions(scores, int(self.decision["k"]))
        if strategy == "rcut":
            return top_k_decisions(scores, self.rcut_k)
        return decide(scores, self.thresholds, self.at_least_one)

    def with_decision(self, strategy: str | None = None, threshold: float | None = None, k: int | None = None) -> TrainedModel:
        """A copy deciding with another strategy (``None``: keep this model's): ``fixed`` at ``threshold``, ``tuned``
        (only if thresholds were tuned in training), ``top-k`` with ``k`` labels per sample, or ``rcut``."""
        decision = dict(self.decision)
        if strategy is not None:
            if strategy not in STRATEGIES:
                raise ValueError(f"thresholds={strategy!r}: expected one of {', '.join(STRATEGIES)}")
            decision["strategy"] = strategy
        if threshold is not None:
            decision["threshold"] = threshold
        if k is not None:
            decision["k"] = k
        check_decision(decision["threshold"], decision["k"])
        if (strategy, k) != (None, None) and decision["strategy"] == "top-k":
            check_k(decision["k"], len(self.label_names))
        if decision["strategy"] == "tuned" and self.tuned is None:
            raise ValueError("--thresholds tuned: this model was trained without tuned thresholds (train it with --thresholds tuned)")
        model = copy.copy(self)
        model.decision = decision
        model.thresholds = _thresholds(decision, self.tuned, len(self.label_names))
        return model


def _thresholds(decision: dict[str, Any], tuned: np.ndarray | None, num_labels: int) -> np.ndarray:
    if decision["strategy"] == "tuned":
        assert tuned is not None
        return np.asarray(tuned, np.float64)
    if decision["strategy"] == "fixed":
        return np.full(num_labels, float(decision["threshold"]))
    return np.full(num_labels, np.nan)  # top-k and rcut rank, they do not threshold


class _Inference:
    """One ensemble member ready for prediction, on ``device``: the layers after the first in float64; the first
    layer (the big one with many features) stays as trained, float32, and each call makes only a temporary copy.
    Sparse input is never made dense: its first layer is a sparse product (row by row, so batch-independent)."""

    def __init__(self, net: MultiLabelNet, device: torch.device) -> None:
        self.device = device
        first = net.first_layer
        self.weight = first.weight.detach().to(device)
        self.bias = first.bias.detach().double().to(device)
        self.shift = net.shift.detach().double().to(device)
        self.scale = net.scale.detach().double().to(device)
        self.normalize = net.normalize
        self.rest = copy.deepcopy(net.layers[1:]).double().eval().to(device)

    def __call__(self, batch: Any) -> np.ndarray:
        """The member's probabilities of ``batch``, float64."""
        return np.asarray(expit(self.logits(batch)))  # (no overflow warning for a logit of -1000, as 1 / (1 + exp(1000)) gives)

    @torch.no_grad()
    def logits(self, batch: Any) -> np.ndarray:
        """The member's logits of ``batch``, float64."""
        if sp.issparse(batch):
            # (x - shift) * scale @ W.T + b == (x * scale) @ W.T + (b - W @ (shift * scale))
            csr = sp.csr_matrix(batch.multiply(self.scale.cpu().numpy()[None, :]), dtype=np.float32)
            if self.normalize:  # shift is zero here (tf-idf scaling): (x / |x|) @ W.T == (x @ W.T) / |x|
                norms = np.sqrt(np.asarray(csr.multiply(csr).sum(1), np.float64).ravel())
                csr = sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ csr, dtype=np.float32)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": sparse.mm on CSR is all we use
                warnings.simplefilter("ignore", UserWarning)
                x = torch.sparse_csr_tensor(
                    torch.from_numpy(csr.indptr.astype(np.int64)), torch.from_numpy(csr.indices.astype(np.int64)),
                    torch.from_numpy(csr.data), csr.shape,
                ).to(self.device)  # fmt: skip
            offset = self.bias - self.weight.double() @ (self.shift * self.scale) if self.shift.any() else self.bias
            first = torch.sparse.mm(x, self.weight.t()).double() + offset
        else:
            x = (torch.from_numpy(np.asarray(batch, dtype=np.float64)).to(self.device) - self.shift) * self.scale
            if self.normalize:
                x = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            first = torch.nn.functional.linear(x, self.weight.double(), self.bias)
        return self.rest(first).cpu().numpy()


def decide(scores: np.ndarray, thresholds: Any, at_least_one: bool) -> np.ndarray:
    """0/1 predictions: scores at or above their label's threshold; with ``at_least_one``, a sample with none gets its
    top-scoring label (the empty set is never predicted, as none occurred in training)."""
    pred = (scores >= thresholds).astype(np.uint8)
    if at_least_one and pred.size:
        empty = np.flatnonzero(pred.sum(1) == 0)
        pred[empty, scores[empty].argmax(1)] = 1
    return pred


def top_k_decisions(scores: np.ndarray, k: int) -> np.ndarray:
    """0/1 predictions: each sample's ``k`` highest-scoring labels (all of them if there are fewer)."""
    pred = np.zeros(scores.shape, np.uint8)
    k = min(k, scores.shape[1])
    if k and len(scores):
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        np.put_along_axis(pred, top, 1, axis=1)
    return pred


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` highest-scoring columns, best first (ties: the lower index first), (N, min(k, L))."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(k), (len(scores), 1))
    part.sort(axis=1)  # the lower index first among equal scores, as a stable sort would
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def _dense_batch(X: Any, index: Any) -> torch.Tensor:
    """Rows ``index`` of the features as a dense tensor: float32, or float64 for dense float64 features (kept so only
    where float32 would blur them, :func:`_as_computed`; the network centres them before casting)."""
    rows = X[index]
    if sp.issparse(rows):  # sparse features stay sparse; each mini-batch is made dense on its own
        rows = rows.toarray()
    dtype = np.float64 if not sp.issparse(X) and X.dtype == np.float64 else np.float32
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=dtype))


def _float32_blurs(X: Any, block_cells: int = 1 << 22) -> bool:
    """Whether float32 would blur a column of float64 features ``X`` (:func:`softmargin.app.data.float32_blurred`)."""
    return bool(float32_blurred(X, block_cells).any())


def _check_float32_range(train: Dataset) -> None:
    """Refuse float64 features that float32, which the network and its scaler are computed and stored in, cannot
    hold: a column whose every non-zero is below float32's smallest normal number (1.2e-38; all of 1e-50 became 0: the
    model ignored the feature, 0.59 off in probability from the same data times 1e50) or a value above its largest
    (3.4e38: it became infinite). One pass over the values, no copy of a dense ``X``."""
    X = train.X
    if X.dtype != np.float64 or X.shape[0] == 0:
        return
    largest = column_magnitudes(X)
    limits = np.finfo(np.float32)
    for bad, what in (((largest > 0) & (largest < limits.tiny), f"below float32's smallest normal number {limits.tiny:.3g}, "
                                                                 "which it rounds to 0 or to a few bits (the feature is lost)"),
                      (largest > limits.max, f"beyond float32's largest {limits.max:.3g}, so that they would become infinite")):  # fmt: skip
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            name = train.feature_names[j] if j < len(train.feature_names) else str(j)
            raise ValueError(f"{train.name}: feature {name!r} (column {j}) has values of magnitude up to {largest[j]:.3g}, "
                             f"{what}: the network computes in float32 ({int(bad.sum())} such column(s)); rescale the "
                             "features first, e.g. divide each column by its largest absolute value")  # fmt: skip


def _as_computed(train: Dataset) -> Dataset:
    """``train`` with its features in float32, as the network computes, unless float32 would blur a dense column
    (:func:`_float32_blurs`): those features stay float64 and are centred in float64 (``MultiLabelNet.inputs``).
    Sparse features are never centred (that would make them dense): a sparse column float32 blurs is refused."""
    X = train.X
    _check_float32_range(train)
    if X.dtype == np.float32:
        return train
    blurred = float32_blurred(X)
    if blurred.any() and sp.issparse(X):
        j = int(np.flatnonzero(blurred)[0])
        name = train.feature_names[j] if j < len(train.feature_names) else str(j)
        raise ValueError(f"{train.name}: feature {name!r} (column {j}) varies too little for its magnitude: float32, in "
                         "which sparse features are computed (never centred: that would make them dense), rounds its "
                         f"values by more than {BLUR:g} of its standard deviation ({int(blurred.sum())} such column(s)); "
                         "subtract a typical value from the column first (e.g. its minimum), or write the data dense "
                         "(CSV), whose features are centred in float64")  # fmt: skip
    if blurred.any():
        return train
    return dataclasses.replace(train, X=X.astype(np.float32))


def _scaler(X: Any, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) of scikit-learn's StandardScaler (dense), or MaxAbsScaler-like scaling for sparse features."""
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler

    width = X.shape[1]
    if mode == "tfidf":
        from .linear import tfidf_weights

        if (X.data if sp.issparse(X) else np.asarray(X)).min(initial=0) < 0:
            raise ValueError("standardize='tfidf' needs non-negative features (counts or 0/1): these have negative values")
        return np.zeros(width, np.float32), tfidf_weights(X).astype(np.float32)
    if mode == "no" or (mode == "auto" and sp.issparse(X)):
        return np.zeros(width, np.float32), np.ones(width, np.float32)
    if sp.issparse(X):
        scaler = MaxAbsScaler().fit(X)
        return np.zeros(width, np.float32), (1.0 / scaler.scale_).astype(np.float32)
    scaler = StandardScaler().fit(X)
    return scaler.mean_.astype(np.float32), (1.0 / scaler.scale_).astype(np.float32)


def _loss(config: TrainConfig, Y: Any, labels: slice = slice(None)) -> MultiLabelSoftMarginLoss:
    """The loss with its per-label weights computed on ``Y`` (dense or sparse), restricted to the ``labels`` shard."""
    weight = None
    if config.class_weight != "none":
        assert _is_class_weighting(config.class_weight), config.class_weight  # TrainConfig.check() allows no other
        weight = torch.as_tensor(class_weights(Y, config.class_weight)[labels], dtype=torch.float32)
    positive = torch.as_tensor(pos_weight(Y, config.pos_weight_max)[labels], dtype=torch.float32) if config.pos_weight else None
    return MultiLabelSoftMarginLoss(
        weight=weight, pos_weight=positive, label_smoothing=config.label_smoothing,
        gamma_pos=config.gamma_pos, gamma_neg=config.gamma_neg, clip=config.clip, validate=False,
    )  # fmt: skip


def _is_class_weighting(name: str) -> TypeGuard[Method]:
    """Whether ``name`` is one of :func:`softmargin.weights.class_weights`' methods."""
    return name in METHODS


def _valid_count(n: int, fraction: float) -> int:
    """The rows of ``n`` that :func:`_split` holds out for ``fraction``."""
    return int(round(n * fraction)) if fraction else 0


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    num_valid = _valid_count(n, fraction)
    return np.sort(order[num_valid:]), np.sort(order[:num_valid])


def _row_counts(Y: Any) -> np.ndarray:
    return np.asarray(Y.sum(1)).ravel()


#: Held while a fit uses torch's process-wide state: the global random generators (seeded for each member, drawn by
#: the initialisation and dropout) and the intra-op thread count (``threads``). Fits from several threads at once (a
#: grid search on joblib's threading backend) drew each other's random numbers, so a seed no longer gave its model
#: (measured: 4 concurrent SoftMarginClassifier fits up to 0.29 off in probability from the same fits made one after
#: another), and could put back each other's thread count; they take turns. Re-entrant; a new one in a forked child,
#: which may hold a copy taken while another thread of its parent was fitting.
TORCH_GLOBALS = threading.RLock()


def _new_torch_globals_lock() -> None:
    global TORCH_GLOBALS
    TORCH_GLOBALS = threading.RLock()


os.register_at_fork(after_in_child=_new_torch_globals_lock)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one). Data-parallel: each global mini-batch
    is split between the ranks and DDP averages the gradients. Label-parallel (the fused head, from
    :data:`FUSED_HEAD_FROM` labels): every rank sees the whole batch and holds a shard of the output layer."""

    rank: int = 0
    world: int = 1
    group: Any = None

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        """Joins the process group ``torchrun`` describes (gloo on the CPU, NCCL on CUDA)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)  # NCCL's own buffers go to this rank's GPU, not all to GPU 0
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), dist.group.WORLD)

    @property
    def writer(self) -> bool:
        """Whether this process writes files and prints results (rank 0)."""
        return self.rank == 0

    def shard(self, size: int) -> slice:
        bounds = np.linspace(0, size, self.world + 1).astype(int)
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))


def _device(config: TrainConfig) -> torch.device:
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def fit(
    train: Dataset,
    config: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> TrainedModel:
    """Train ``config.ensemble`` networks on ``train`` (each member carves its own validation split out of it: early
    stopping, then threshold tuning on the ensemble's held-out predictions).

    Raises:
        TrainingError: the training loss became NaN or infinite, or no epoch of a member beat its untrained
            network's validation loss, nor on the training rows (diverged; nothing is returned, so nothing can be saved).
        ValueError: a setting that cannot work with this data (tuned thresholds with sparse labels).
    """
    config.check()
    if train.X.shape[1] == 0:
        raise ValueError(f"{train.name}: no feature columns (every column is a label, or the LIBSVM rows hold labels "
                         "only): nothing to learn from")  # fmt: skip
    if train.sparse and len(train) and train.X.nnz == 0:  # an 'N F L' header gives F columns all the same
        raise ValueError(f"{train.name}: no row gives a feature value (the LIBSVM rows hold labels only, or the sparse "
                         "ARFF rows name label attributes only): nothing to learn from")  # fmt: skip
    if train.Y is None:
        raise ValueError(f"{train.name}: training needs labels, the data has none")
    config = config.resolve(train)
    train = _as_computed(train)
    if config.optimizer == "newton":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("optimizer='newton' runs on one process: use adamw under torchrun")
        return _fit_newton(train, config, progress, log)
    num_labels = train.Y.shape[1]
    if len(train) < 2:
        raise ValueError(f"{train.name}: {len(train)} sample: training needs at least 2")
    if config.thresholds == "tuned" and train.sparse_labels:
        raise ValueError("thresholds='tuned' needs a dense label matrix; with this many labels use 'top-k' or 'rcut'")
    device = _device(config)
    dist = Distributed.from_env(device)
    if dist.world > 1 and config.optimizer == "lbfgs":
        raise ValueError("optimizer='lbfgs' (full batch) runs on one process: use adamw under torchrun")
    nets, histories = [], []
    tuned = config.thresholds == "tuned"
    fraction = config.valid_fraction if config.optimizer == "adamw" or tuned else 0.0
    held = _valid_count(len(train), fraction)
    if held >= len(train) or (tuned and held == 0):  # (adamw without a validation row stops on the training loss)
        what = "no training row" if held else "no validation row, which tuned thresholds are cut on"
        raise ValueError(f"valid_fraction={config.valid_fraction}: {len(train)} samples leave {what}: expected a "
                         f"valid_fraction that holds out between 1 and {len(train) - 1} of them, or more samples")  # fmt: skip
    if held == 0 and fraction:  # the early stopping asked for cannot happen: say so, not silently
        warnings.warn(f"valid_fraction={fraction} of {len(train)} samples holds out no row: the model trains "
                      f"{config.epochs} epochs without early stopping", UserWarning, stacklevel=2)  # fmt: skip
    held_out_sum = np.zeros(train.Y.shape, np.float64) if tuned else None  # each sample's held-out predictions
    held_out_count = np.zeros(len(train), np.int64)
    interactive = progress and sys.stderr.isatty()  # in a log file, a line per model instead of progress-bar frames
    members = _progress(range(config.ensemble), interactive and config.ensemble > 1, desc="ensemble", unit="model")
    with TORCH_GLOBALS, _threads(config.threads):
        for member in members:
            seed = config.seed + member
            started = time.perf_counter()
            # each member has its own validation split (diversity, as in bagging) and its own scaler and class weights;
            # L-BFGS has no early stopping: it holds rows out only for the tuned thresholds' held-out predictions
            train_index, valid_index = _split(len(train), fraction, np.random.default_rng(seed))
            scaling = _scaler(train.X[train_index], config.standardize)
            net, history = _fit_one(train, config, seed, train_index, valid_index, scaling, interactive, log, device, dist)
            nets.append(net)
            histories.append([{"member": member, **h} for h in history])
            if progress and not interactive:
                best = min(history, key=lambda h: h.get("valid_loss", h["train_loss"]))
                log(f"model {member + 1}/{config.ensemble} (seed {seed}): {len(history)} epochs, kept epoch {best['epoch']} "
                    f"(loss {best.get('valid_loss', best['train_loss']):.4f}), {time.perf_counter() - started:.1f} s")  # fmt: skip
            if held_out_sum is not None:
                single = TrainedModel([net], config, list(train.label_names), [], np.full(num_labels, 0.5))
                held_out_sum[valid_index] += single.predict_proba(train.X[valid_index], device=str(device))
                held_out_count[valid_index] += 1
    rows = _row_counts(train.Y)
    at_least_one = config.at_least_one == "yes" or (config.at_least_one == "auto" and bool((rows > 0).all()))
    decision = {"strategy": config.thresholds, "threshold": config.threshold, "k": config.k}
    model = TrainedModel(
        nets, config, list(train.label_names), list(train.feature_names), np.full(num_labels, config.threshold),
        [h for member in histories for h in member], at_least_one, train.label_counts(), len(train),
        rcut_k=max(1, int(round(float(rows.mean())))), decision=decision, positional=train.positional,
    )  # fmt: skip
    if held_out_sum is not None:  # on held-out predictions only: samples some member never trained on
        seen = held_out_count > 0
        model.tuned = _cut(config, train.Y[seen], held_out_sum[seen] / held_out_count[seen, None])
    return model.with_decision()


def _fit_newton(train: Dataset, config: TrainConfig, progress: bool, log: Callable[[str], None]) -> TrainedModel:
    """The linear model by truncated Newton (:func:`softmargin.app.linear.fit_logistic`), cross-fitted: ``folds``
    models, each trained without one fold, give every training row a held-out prediction (for the tuned thresholds,
    and to choose C); the model kept is trained on all rows, started from the fold models' mean."""
    from .linear import LinearSolution, fit_logistic

    if config.class_weight != "none" or config.label_smoothing or config.gamma_pos or config.gamma_neg or config.clip:
        raise ValueError("optimizer='newton' solves plain (pos_weight-able) logistic regression: --class-weight, "
                         "--label-smoothing and asymmetric focusing need --optimizer adamw or lbfgs")  # fmt: skip
    X, Y = train.X, train.Y
    num_labels = Y.shape[1]
    if len(train) * num_labels > NEWTON_MAX_CELLS:
        raise ValueError(f"optimizer='newton' holds (samples x labels) arrays: {len(train)} x {num_labels} is more than {NEWTON_MAX_CELLS}; "
                         "use --optimizer adamw (the fused head) with --thresholds top-k or rcut")  # fmt: skip
    Yd = np.asarray(Y.toarray() if sp.issparse(Y) else Y, np.float64)
    started = time.perf_counter()
    shift, scale = _scaler(X, config.standardize)
    normalize = config.standardize == "tfidf"
    Xs = _scaled(X, shift, scale, normalize)
    positive = pos_weight(Yd, config.pos_weight_max) if config.pos_weight else _rare_weights(Yd, config)
    work = (Xs.nnz if sp.issparse(Xs) else Xs.size) * num_labels
    count = config.folds or (FOLDS if work <= AUTO_C_HUGE else FOLDS_HUGE)
    if len(train) < count:  # an empty fold: its "held-out" predictions would come from a model trained on no row
        raise ValueError(f"{train.name}: {len(train)} training sample(s) for the Newton solver's {count}-fold cross-fitting "
                         f"(folds={count}, --folds): expected at least {count}, one per fold (an empty fold's held-out "
                         "predictions would come from a model trained on no row); use more data, or fewer folds (at least 2)")  # fmt: skip
    folds = np.array_split(np.random.default_rng(config.seed).permutation(len(train)), count)
    threads = config.threads

    loss = config.linear_loss

    def cross_fit(C: float) -> tuple[np.ndarray, list[Any]]:
        """Held-out logits (N, L) of the models trained without each fold, and those models."""
        held_out, solutions = np.zeros(Yd.shape), []
        for fold in folds:
            rest = np.setdiff1d(np.arange(len(train)), fold)
            solution = fit_logistic(Xs[rest], Yd[rest], C, pos_weight=positive, threads=threads, loss=loss)
            held_out[fold] = np.asarray(Xs[fold] @ solution.W) + solution.b
            solutions.append(solution)
        return held_out, solutions

    if config.C is not None:
        grid: tuple[float, ...] = (config.C,)
    elif loss == "squared_hinge":
        grid = SVM_C_GRID if work <= AUTO_C_BUDGET else SVM_C_GRID_LARGE if work <= AUTO_C_HUGE else (SVM_C_HUGE_VALUE,)
    else:
        grid = AUTO_C_GRID if work <= AUTO_C_BUDGET else (AUTO_C_LARGE,) if work <= AUTO_C_HUGE else (AUTO_C_HUGE_VALUE,)
    fitted = {C: cross_fit(C) for C in grid}
    # squared hinge: the candidates are each C and the mean of each two neighbours' models (still one linear model),
    # chosen by the held-out ranking (P@1 + P@3 + P@5), the decisions being tuned afterwards on the chosen model's
    # held-out predictions; logistic (as before the SVM): each C, by held-out P@1 + micro-F1 + macro-F1 after the cut
    hinge = loss == "squared_hinge"
    candidates = [(C,) for C in grid] + (list(zip(grid, grid[1:])) if hinge else [])
    best, chosen, held_out = -math.inf, candidates[0], fitted[grid[0]][0]
    for candidate in candidates if len(candidates) > 1 else []:
        logits = np.mean([fitted[C][0] for C in candidate], 0)
        quality = [M._precision_at_k(Yd, logits, k) for k in (1, 3, 5)]  # Yd: the training labels, 0/1 (checked at load)
        if hinge:
            score = sum(quality)
        else:
            probabilities = _sigmoid(logits)
            cut = probabilities >= _cut(config, Yd, probabilities)
            from sklearn.metrics import f1_score

            f1 = [float(f1_score(Yd, cut, average=average, zero_division=0)) for average in ("micro", "macro")]
            score = quality[0] + sum(f1)
        if progress:
            log(f"C={'+'.join(f'{C:g}' for C in candidate)}: held-out P@1 {quality[0]:.3f}, P@3 {quality[1]:.3f}, "
                f"P@5 {quality[2]:.3f}")  # fmt: skip
        if score > best:
            best, chosen, held_out = score, candidate, logits
    finals = []
    for C in chosen:  # each chosen C's model on all rows, started from its fold models' mean
        folded = fitted[C][1]
        start = (np.mean([s.W for s in folded], 0), np.mean([s.b for s in folded], 0))
        finals.append(fit_logistic(Xs, Yd, C, pos_weight=positive, start=start, threads=threads, loss=loss))
    final = LinearSolution(np.mean([f.W for f in finals], 0), np.mean([f.b for f in finals], 0),
                           max(f.iterations for f in finals), sum(f.hessian_products for f in finals))  # fmt: skip
    C = float(np.exp(np.mean(np.log(chosen))))  # saved in config.json: a pair's geometric mean
    with TORCH_GLOBALS:  # its initialisation draws from torch's generator, which another thread's fit may be using
        net = MultiLabelNet(X.shape[1], num_labels, (), 0.0, normalize)
    with torch.no_grad():
        net.shift.copy_(torch.from_numpy(shift))
        net.scale.copy_(torch.from_numpy(scale))
        net.last_layer.weight.copy_(torch.from_numpy(final.W.T.astype(np.float32)))
        net.last_layer.bias.copy_(torch.from_numpy(final.b.astype(np.float32)))
    logits = np.asarray(Xs @ final.W) + final.b
    margins = -(2 * Yd - 1) * logits
    train_loss = float(np.mean(np.maximum(margins + 1.0, 0.0) ** 2 if loss == "squared_hinge" else np.logaddexp(0.0, margins)))
    if progress:
        log(f"linear model (newton, {loss}, C={'+'.join(f'{c:g}' for c in chosen)}, {count}-fold cross-fitting): "
            f"{final.iterations} Newton iterations, "
            f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    config = dataclasses.replace(config, C=C, folds=count)
    rows = _row_counts(Y)
    at_least_one = config.at_least_one == "yes" or (config.at_least_one == "auto" and bool((rows > 0).all()))
    model = TrainedModel(
        [net.eval()], config, list(train.label_names), list(train.feature_names), np.full(num_labels, config.threshold),
        [{"member": 0, "epoch": final.iterations, "train_loss": train_loss}], at_least_one, train.label_counts(),
        len(train), _cut(config, Yd, _sigmoid(held_out)),
        max(1, int(round(float(rows.mean())))), {"strategy": config.thresholds, "threshold": config.threshold, "k": config.k},
        train.positional,
    )  # fmt: skip
    return model.with_decision()


def macro_weight(config: TrainConfig) -> float:
    """The tuned cuts' macro weight: ``config.macro_weight``; when None, MACRO_WEIGHT_SVM for the Newton-solved
    squared hinge (``optimizer="newton"``, as resolved) on calibrated counts, else MACRO_WEIGHT."""
    if config.macro_weight is not None:
        return float(config.macro_weight)
    svm = config.optimizer == "newton" and config.linear_loss == "squared_hinge" and config.cut_counts == "calibrated"
    return MACRO_WEIGHT_SVM if svm else MACRO_WEIGHT


def _cut(config: TrainConfig, Y: Any, probabilities: np.ndarray) -> np.ndarray:
    """The tuned per-label thresholds of ``config`` from held-out ``probabilities`` against ``Y``."""
    return cv_thresholds(Y, probabilities, fbr=config.fbr, floor=config.min_threshold, macro_weight=macro_weight(config),
                         fbr_positives=config.fbr_positives, fallback=config.fallback, counts=config.cut_counts,
                         prior=config.calibration_prior)  # fmt: skip


def _rare_weights(Y: np.ndarray, config: TrainConfig) -> np.ndarray | None:
    """The Newton path's positive weight per label (L,): ``min(rare_weight, n_neg / n_pos)`` for the labels with
    fewer than ``rare_positives`` (but some) training positives, 1 for the others; None when no label gets a weight
    above 1 (the solver then keeps no cost array)."""
    positives = Y.sum(0)
    rare = (positives > 0) & (positives < config.rare_positives)
    if config.rare_weight <= 1 or not rare.any():
        return None
    weights = np.ones(Y.shape[1])
    weights[rare] = np.minimum(config.rare_weight, (len(Y) - positives[rare]) / positives[rare])
    return weights


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _scaled(X: Any, shift: np.ndarray, scale: np.ndarray, normalize: bool) -> Any:
    """What :meth:`MultiLabelNet.inputs` computes, in float64 with NumPy / SciPy (sparse stays sparse: shift is 0)."""
    if sp.issparse(X):
        assert not shift.any(), "sparse features are scaled, never shifted"
        Z = sp.csr_matrix(sp.csr_matrix(X, dtype=np.float64).multiply(scale.astype(np.float64)[None, :]))
        if normalize:
            norms = np.sqrt(np.asarray(Z.multiply(Z).sum(1)).ravel())
            Z = sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ Z)
        return Z
    Z = (np.asarray(X, np.float64) - shift) * scale
    if normalize:
        norms = np.linalg.norm(Z, axis=1, keepdims=True)
        Z = Z / np.where(norms > 0, norms, 1.0)
    return Z


def _targets(Y: Any, index: Any, columns: slice, sparse_ok: bool, device: torch.device) -> Any:
    """Rows ``index``, label shard ``columns`` of Y as the loss wants them: a float32 tensor, or for sparse labels
    and the fused head the positives alone (scipy CSR, which the fused head reads without densifying)."""
    rows = Y[index]
    if sp.issparse(rows):
        rows = rows[:, columns] if columns != slice(None) else rows
        if sparse_ok:
            return rows.tocsr()
        rows = rows.toarray()
    else:
        rows = rows[:, columns]
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(device)


class _TrainingLoss(nn.Module):
    """The network's training loss as a module, so that DDP wraps it (its forward is what DDP synchronises)."""

    def __init__(self, net: MultiLabelNet, loss_fn: MultiLabelSoftMarginLoss, fused: bool,
                 penalty: Callable[[], torch.Tensor] | None, shard: Distributed | None, total_labels: int) -> None:  # fmt: skip
        super().__init__()
        self.net, self.loss_fn, self.fused, self.penalty = net, loss_fn, fused, penalty
        self.shard, self.total_labels = shard, total_labels

    def forward(self, x: torch.Tensor, y: Any) -> torch.Tensor:
        if self.shard is not None:  # label-parallel: this rank's labels, loss and hidden gradient all-reduced
            body, last = self.net.layers[:-1], self.net.last_layer
            fn = self.loss_fn
            loss = linear_multilabel_soft_margin_loss(
                body(self.net.inputs(x)), last.weight, last.bias, y, class_weight=fn.weight,
                pos_weight=fn.pos_weight, label_smoothing=fn.label_smoothing, gamma_pos=fn.gamma_pos,
                gamma_neg=fn.gamma_neg, clip=fn.clip, process_group=self.shard.group, total_labels=self.total_labels,
                validate=False,
            )  # fmt: skip
        else:
            loss = self.net.loss(x, y, self.loss_fn, self.fused)
        return loss + self.penalty() if self.penalty is not None else loss


def _check_finite_loss(value: float, where: str, config: TrainConfig) -> None:
    if not math.isfinite(value):
        raise TrainingError(f"the training loss became {value} ({where}): training diverged and nothing was saved; "
                            f"{_divergence_advice(config)}")  # fmt: skip


def _divergence_advice(config: TrainConfig) -> str:
    """What to change when a run diverges: L-BFGS takes no learning rate (its line search sets each step)."""
    if config.optimizer == "lbfgs":
        penalty = "; without an L2 penalty the weights of separable labels grow without bound: set --C (e.g. 1)"
        return (f"check the scale of the features (--standardize yes, now {config.standardize}; L-BFGS has no learning "
                f"rate, its line search sizes each step){penalty if config.C is None else ''}")  # fmt: skip
    advice = f"lower --lr (now {config.lr:g}) or check the scale of the features (--standardize yes, now {config.standardize})"
    # the regularisation can be the cause as well: AdamW scales the weights by 1 - lr x weight_decay each step, and an
    # L2 penalty of 1 / (2 C) per weight steepens every step as C shrinks
    if config.lr * config.weight_decay >= 0.1:
        advice += f"; or lower --weight-decay (now {config.weight_decay:g}: each step scales the weights by 1 - {config.lr * config.weight_decay:.3g})"
    if config.C is not None:
        advice += f"; or raise --C (now {config.C:g}: its L2 penalty steepens as C shrinks)"
    return advice


def _fit_one(
    train: Dataset,
    config: TrainConfig,
    seed: int,
    train_index: np.ndarray,
    valid_index: np.ndarray,
    scaling: tuple[np.ndarray, np.ndarray],
    progress: bool,
    log: Callable[[str], None],
    device: torch.device | None = None,
    dist: Distributed | None = None,
) -> tuple[MultiLabelNet, list[dict[str, float]]]:
    """One network, from seed ``seed``: AdamW with early stopping on the validation loss, or full-batch L-BFGS."""
    device = device or torch.device("cpu")
    dist = dist or Distributed()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    X, Y = train.X, train.Y
    num_labels = Y.shape[1]
    fused = config.head == "fused" or (config.head == "auto" and num_labels >= FUSED_HEAD_FROM)
    label_parallel = fused and dist.world > 1
    columns = dist.shard(num_labels) if label_parallel else slice(None)
    hidden = tuple(config.hidden) if config.model == "mlp" else ()
    net = MultiLabelNet(X.shape[1], num_labels, hidden, config.dropout, config.standardize == "tfidf")
    if label_parallel:  # initialised whole, as on one process, then cut to this rank's shard of the labels
        whole = net.last_layer
        shard = nn.Linear(whole.in_features, columns.stop - columns.start)
        with torch.no_grad():
            shard.weight.copy_(whole.weight[columns])
            shard.bias.copy_(whole.bias[columns])
        net.layers[-1] = shard
        if dist.writer and seed == config.seed:
            log(f"label-parallel fused head: {num_labels} labels in {dist.world} shards (rank 0: labels {columns.start}:{columns.stop})")
    net.shift.copy_(torch.from_numpy(scaling[0]))
    net.scale.copy_(torch.from_numpy(scaling[1]))
    net.to(device)
    loss_fn = _loss(config, Y[train_index], columns).to(device)
    penalty = _l2_penalty(net, config.C, len(train_index), num_labels)
    if config.optimizer == "lbfgs":
        cells = len(train_index) * X.shape[1]
        if sp.issparse(X) and cells >= LBFGS_DENSE_NOTICE and seed == config.seed:
            log(f"L-BFGS is full batch: the {len(train_index)} x {X.shape[1]} sparse features are made dense "
                f"({cells * 4 / 1e9:.1f} GB); --optimizer newton (the linear model) or adamw keeps them sparse")  # fmt: skip
        X_all = _dense_batch(X, train_index).to(device)
        return net, _fit_lbfgs(net, loss_fn, penalty, X_all, _targets(Y, train_index, columns, False, device), config)
    training_loss = _TrainingLoss(net, loss_fn, fused, penalty, dist if label_parallel else None, num_labels)
    objective: nn.Module = training_loss
    if dist.world > 1 and not label_parallel:
        # the buffers (the features' centring, the loss's weights) are the same on every rank: no sync per forward.
        # torch 2.13 renamed the switch and warns, once per process, at the old name
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        no_sync: dict[str, Any] = {"forward_sync_buffers" if renamed else "broadcast_buffers": False}
        objective = DistributedDataParallel(training_loss, **no_sync)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # the validation rows, in parts: sparse features are made dense a part at a time (at most VALID_CHUNK_CELLS
    # cells: 3,000 rows of 100,000 features made dense at once took 1.2 GB), dense ones are one part
    step = max(1, VALID_CHUNK_CELLS // max(1, X.shape[1])) if sp.issparse(X) else max(1, len(valid_index))
    parts = [valid_index[i:i + step] for i in range(0, len(valid_index), step)]
    dense_parts = None if sp.issparse(X) else [_dense_batch(X, part).to(device) for part in parts]
    valid_targets = [_targets(Y, part, columns, fused, device) for part in parts]

    def validation_loss() -> float:
        """The mean validation loss: each part's, weighted by its rows (one part: the loss itself)."""
        losses = []
        for i, part in enumerate(parts):
            x = dense_parts[i] if dense_parts is not None else _dense_batch(X, part).to(device)
            losses.append(training_loss(x, valid_targets[i]).item())  # the module itself, not its DDP wrapper
        if len(losses) == 1:
            return losses[0]
        return sum(loss * len(part) for loss, part in zip(losses, parts)) / len(valid_index)

    validating = len(valid_index) > 0
    untrained = math.inf  # the untrained network's validation loss: the guard after the epochs compares with it
    if validating:
        net.eval()
        with torch.no_grad():
            untrained = validation_loss()  # every rank alike, as each epoch's validation below
        untrained = untrained if math.isfinite(untrained) else math.inf  # NaN: the first epoch's check names it
    best = (math.inf, 0, {k: v.clone() for k, v in net.state_dict().items()})
    history: list[dict[str, float]] = []
    epochs = _progress(range(config.epochs), progress, desc=f"train {train.name} (seed {seed})", unit="epoch")
    for epoch in epochs:
        net.train()
        order = train_index[rng.permutation(len(train_index))]
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            if dist.world > 1 and not label_parallel:  # data-parallel: this rank's part of the global batch
                if len(batch) < dist.world:
                    continue
                batch = np.array_split(batch, dist.world)[dist.rank]
            loss = objective(_dense_batch(X, batch).to(device), _targets(Y, batch, columns, fused, device))
            value = loss.item()
            _check_finite_loss(value, f"epoch {epoch + 1}, seed {seed}", config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += value * len(batch)
            count += len(batch)
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
        if validating:
            net.eval()
            with torch.no_grad():
                record["valid_loss"] = validation_loss()
            _check_finite_loss(record["valid_loss"], f"validation, epoch {epoch + 1}, seed {seed}", config)
        history.append(record)
        monitored = record.get("valid_loss", record["train_loss"])
        if monitored < best[0] - 1e-6:
            best = (monitored, epoch + 1, {k: v.clone() for k, v in net.state_dict().items()})
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "epoch"} | {"best": best[1]})
        if validating and epoch + 1 - best[1] >= config.patience:
            log(f"seed {seed}: early stop at epoch {epoch + 1}, best validation loss at epoch {best[1]}")
            break
    # Diverged: every epoch worse than the untrained network, on the validation rows and on the training rows (whose
    # untrained loss is the validation rows', in expectation). Keeping the best epoch would save a model worse than no
    # training, silently. Only the validation loss not improving (the training loss did: on data with nothing to
    # learn, or very few validation rows) keeps the best epoch, as early stopping always has.
    # Worse, not merely no better: a run whose loss did not move (a learning rate too small to matter) keeps its model,
    # as before; one whose every epoch is worse than the untrained network by more than 0.1 % is refused
    worse = untrained + max(1e-6, 1e-3 * untrained)
    diverged = validating and best[0] > worse and min(h["train_loss"] for h in history) > worse
    if dist.world > 1:  # one decision on every rank (each data-parallel rank's training loss is its own part's)
        flag = torch.tensor([float(diverged)], device=device)  # on the device: NCCL reduces CUDA tensors only
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN, group=dist.group)
        diverged = bool(flag.item())
    if diverged:
        raise TrainingError(f"seed {seed}: every epoch was worse than the untrained network's loss {untrained:.4g} (validation "
                            f"rows; the best epoch, {best[1]}, had {best[0]:.4g} there): training diverged, and nothing was "
                            f"saved; {_divergence_advice(config)}, or train longer (--epochs {config.epochs})")  # fmt: skip
    net.load_state_dict(best[2])
    if label_parallel:
        net = _gather_head(net, dist, num_labels, hidden, config.dropout)
    return net.cpu(), history


def _gather_head(net: MultiLabelNet, dist: Distributed, num_labels: int, hidden: tuple[int, ...], dropout: float) -> MultiLabelNet:
    """The whole network (on the CPU) from the label shards of its output layer, on the device the shards are on
    (NCCL gathers CUDA tensors); every rank gets it. The shards are padded to one size, as all_gather wants."""
    import torch.distributed as tdist

    last = net.last_layer
    sizes = [Distributed(r, dist.world).shard(num_labels) for r in range(dist.world)]
    widest = max(s.stop - s.start for s in sizes)
    local = torch.cat([last.weight.detach(), last.bias.detach()[:, None]], 1)
    padded = local.new_zeros(widest, local.shape[1])
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in range(dist.world)]
    tdist.all_gather(parts, padded, group=dist.group)
    full = torch.cat([part[: s.stop - s.start] for part, s in zip(parts, sizes)]).cpu()
    net = net.cpu()
    whole = MultiLabelNet(net.shift.numel(), num_labels, hidden, dropout)
    state = net.state_dict()
    key = f"layers.{len(net.layers) - 1}"
    state[f"{key}.weight"], state[f"{key}.bias"] = full[:, :-1].contiguous(), full[:, -1].contiguous()
    whole.load_state_dict(state)
    return whole


def _l2_penalty(net: MultiLabelNet, C: float | None, num_samples: int, num_labels: int) -> Callable[[], torch.Tensor] | None:
    """scikit-learn's L2 term, rescaled to our loss (a mean over N samples and L labels): sum ||W||^2 / (2 C N L)."""
    if C is None:
        return None
    weights = [m.weight for m in net.modules() if isinstance(m, nn.Linear)]  # biases are not penalised
    factor = 1.0 / (2.0 * C * num_samples * num_labels)

    def penalty() -> torch.Tensor:
        total = weights[0].pow(2).sum()
        for w in weights[1:]:
            total = total + w.pow(2).sum()
        return factor * total

    return penalty


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
        _check_finite_loss(loss.item(), f"L-BFGS iteration {len(history) + 1}", config)
        loss.backward()
        history.append({"epoch": len(history) + 1, "train_loss": loss.item()})
        return loss

    net.train()
    optimizer.step(closure)
    net.cpu()
    return history


def _progress(iterable: Any, enabled: bool, desc: str, unit: str) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, unit=unit, file=sys.stderr, leave=False)


def evaluate(model: TrainedModel, data: Dataset, device: str = "cpu") -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, per-label rows) of ``model`` on labeled ``data`` (its columns in the model's order: see
    :func:`softmargin.app.data.align`). Sparse labels, and dense ones of :data:`EVALUATE_DENSE_MAX` cells or more, are
    evaluated a batch at a time (:func:`evaluate_sparse`)."""
    if data.Y is None:
        raise ValueError(f"{data.name}: the data has no labels to evaluate against (use 'softmargin predict')")
    if data.Y.shape[1] != len(model.label_names):
        raise ValueError(
            f"the data has {data.Y.shape[1]} labels, the model {len(model.label_names)}: expected the same label set"
        )
    if data.sparse_labels:
        return evaluate_sparse(model, data, device)
    if data.Y.size >= EVALUATE_DENSE_MAX:  # scikit-learn's metrics: about 1.5 us a cell, and several copies
        return evaluate_sparse(model, dataclasses.replace(data, Y=sp.csr_matrix(data.Y)), device)
    scores = model.predict_proba(data.X, device=device)
    pred = model.decide(scores)
    return M.evaluate(data.Y, scores, model.thresholds, pred, model.label_counts, model.train_size)


#: From this many label cells (N x L) on, dense labels are evaluated as sparse ones are (:func:`evaluate_sparse`, a
#: batch at a time, without the ranking metrics over all labels): scikit-learn's metrics over the whole matrix took
#: 22 s and 0.9 GB for 100 samples of 100,000 labels.
EVALUATE_DENSE_MAX = 1 << 23


def evaluate_sparse(model: TrainedModel, data: Dataset, device: str = "cpu") -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The metrics that need no N x L matrix, from batches of rows: Hamming loss, subset accuracy, micro / macro /
    samples F1 (and macro-F1 over the labels with a training positive), precision and recall, P@k, one-error (1 -
    P@1), nDCG@k (the extreme classification repository's: DCG@k over the ideal DCG of min(k, positives)) and PSP@k.
    Ranking metrics over all labels (LRAP, ranking loss, coverage, mAP) are left out."""
    Y = data.Y.tocsr()
    if not Y.has_canonical_format or (Y.nnz and not Y.data.all()):  # once, not per batch: each cell once, and a
        Y = Y.copy()  # stored 0 is no positive (the loaders give neither; a caller's matrix may); the caller's stays
        Y.sum_duplicates()
        Y.eliminate_zeros()
    num_rows, num_labels = Y.shape
    tp = np.zeros(num_labels, np.int64)
    predicted = np.zeros(num_labels, np.int64)
    exact = samples_f1 = 0.0
    ks = (1, 3, 5)
    precision = dict.fromkeys(ks, 0.0)
    ndcg = dict.fromkeys(ks, 0.0)
    psp_gain = dict.fromkeys(ks, 0.0)
    psp_ideal = dict.fromkeys(ks, 0.0)
    inv_p = None
    if model.label_counts is not None and model.train_size:
        inv_p = 1.0 / M.propensities(model.label_counts, model.train_size)
    discount = 1.0 / np.log2(np.arange(2, 7))
    for rows, scores in model.iter_proba(data.X, device=device):
        truth = Y[rows]  # canonical, without stored zeros: its entries are the true labels
        pred = model.decide(scores).astype(bool, copy=False)  # dense: a CSR copy of it cost more than all else here
        row_true = np.diff(truth.indptr)
        truth_rows = np.repeat(np.arange(truth.shape[0]), row_true)
        hit = pred[truth_rows, truth.indices]  # the true labels predicted
        tp += np.bincount(truth.indices[hit], minlength=num_labels)
        predicted += pred.sum(0, dtype=np.int64)
        row_tp = np.bincount(truth_rows[hit], minlength=truth.shape[0])
        row_pred = pred.sum(1, dtype=np.int64)
        exact += float(((row_tp == row_pred) & (row_tp == row_true)).sum())
        denominator = row_pred + row_true
        samples_f1 += float(np.where(denominator > 0, 2 * row_tp / np.maximum(denominator, 1), 0.0).sum())  # zero_division=0
        top = _top(scores, 5)
        relevant = np.asarray(truth[np.arange(truth.shape[0])[:, None], top].todense()) > 0
        for k in ks:
            precision[k] += float(relevant[:, :k].sum()) / k
            dcg = (relevant[:, :k] * discount[:k]).sum(1)
            ideal = np.cumsum(discount[:k])[np.minimum(row_true, k) - 1]
            ndcg[k] += float(np.where(row_true > 0, dcg / np.where(row_true > 0, ideal, 1), 0).sum())
            if inv_p is not None:
                psp_gain[k] += float((relevant[:, :k] * inv_p[top[:, :k]]).sum())
                for r in range(truth.shape[0]):
                    weights = inv_p[truth.indices[truth.indptr[r]:truth.indptr[r + 1]]]
                    psp_ideal[k] += float(np.sort(weights)[::-1][:k].sum())
    support = data.label_counts()
    fp, fn = predicted - tp, support - tp
    n = max(num_rows, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        label_precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        label_recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        label_f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    total_tp, total_pred, total_true = tp.sum(), predicted.sum(), support.sum()
    metrics = {
        "hamming_loss": float((fp.sum() + fn.sum()) / max(num_rows * num_labels, 1)),
        "subset_accuracy": exact / n,
        "micro_f1": float(2 * total_tp / max(total_pred + total_true, 1)),
        "macro_f1": float(label_f1.mean()),
        "samples_f1": samples_f1 / n,
        "micro_precision": float(total_tp / max(total_pred, 1)),
        "micro_recall": float(total_tp / max(total_true, 1)),
        "macro_precision": float(label_precision.mean()),
        "macro_recall": float(label_recall.mean()),
    }
    metrics |= {f"P@{k}": precision[k] / n for k in ks} | {f"nDCG@{k}": ndcg[k] / n for k in ks}
    metrics["one_error"] = 1.0 - precision[1] / n if num_rows else float("nan")  # the top label not a true one
    if model.label_counts is not None and model.train_size:
        seen = np.asarray(model.label_counts) > 0
        metrics["macro_f1_train_labels"] = float(label_f1[seen].mean()) if seen.any() else float("nan")
    if inv_p is not None:
        metrics |= {f"PSP@{k}": psp_gain[k] / psp_ideal[k] if psp_ideal[k] else float("nan") for k in ks}
    per_label = [
        {"support": int(s), "precision": float(p), "recall": float(r), "f1": float(f), "threshold": float(t)}
        for p, r, f, s, t in zip(label_precision, label_recall, label_f1, support, model.thresholds)
    ]
    return metrics, per_label


# --- run folders ---------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through a temporary file in the same folder, then move it into place: never a half-written file."""
    from .files import atomic_open

    with atomic_open(path, mode) as f:
        write(f)


def write_json(path: Path, obj: Any, *, strict: bool = False) -> None:
    """``obj`` as JSON. ``strict`` (the metrics files, read by other tools): a NaN or infinite number (a metric
    undefined on this data: mAP or PSP@k without a positive label) is written as null, which every JSON parser reads;
    json.dump's bare NaN is not JSON. model.json keeps its NaN thresholds (top-k, rcut), which softmargin reads back
    and its content checksum covers."""
    if strict:
        obj = _finite(obj)
    _atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=False, default=_json_default, allow_nan=not strict))


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (Python's or NumPy's, in dicts, lists and arrays) replaced by None."""
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


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


class RunFolder:
    """A run folder assembled under a temporary name (``root/.<name>.<random>.partial``) and renamed into place whole
    by :meth:`commit`: ``root/<YYYYmmdd-HHMMSS>-<name>``, never an existing folder. :meth:`discard` removes it.
    Making it first is also how a command learns, before any work, that ``root`` is not writable."""

    def __init__(self, root: Path, name: str) -> None:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise ValueError(f"--out {root} is a file: expected a folder to hold run folders")
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.name = root, name
        self.path = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=root))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp makes folders private; give what a plain mkdir would

    def commit(self) -> Path:
        """Rename the assembled folder to its final name. The name is reserved first with ``mkdir`` (which fails
        if it exists); renaming onto one's own empty folder then replaces it in one step."""
        final = new_folder(self.root, f"{time.strftime('%Y%m%d-%H%M%S')}-{self.name}")
        os.replace(self.path, final)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: TrainedModel, run: Path) -> None:
    """``model.safetensors`` (every member's weights and scaler, keys ``member<i>.<name>``) and ``model.json``
    (architecture, names, decisions and the SHA-256 of ``model.safetensors``, checked by :func:`load_model`)."""
    from safetensors.torch import save

    tensors = {
        f"member{i}.{k}": v.detach().cpu().contiguous() for i, net in enumerate(model.nets) for k, v in net.state_dict().items()
    }
    blob = save(tensors)
    _atomic_write(run / "model.safetensors", lambda f: f.write(blob), mode="wb")
    hidden = list(model.config.hidden) if model.config.model == "mlp" else []
    meta = {
            "format": MODEL_FORMAT,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "members": len(model.nets),
            "in_features": model.num_features,
            "hidden": hidden,
            "dropout": model.config.dropout,
            "normalize_rows": bool(model.nets[0].normalize),
            "label_names": model.label_names,
            "feature_names": model.feature_names,
            "positional": model.positional,
            "decision": model.decision,
            "thresholds": model.thresholds.tolist(),
            "tuned_thresholds": None if model.tuned is None else model.tuned.tolist(),
            "rcut_k": model.rcut_k,
            "at_least_one": model.at_least_one,
            "label_counts": None if model.label_counts is None else model.label_counts.tolist(),
            "train_size": model.train_size,
            # config.json's "train" settings (written beside it by the CLI): an edited one is refused on loading
            "train_settings_sha256": _canonical_sha256(json.loads(json.dumps(dataclasses.asdict(model.config), default=_json_default))),
    }  # fmt: skip
    meta = json.loads(json.dumps(meta, default=_json_default))  # as it will be read back
    write_json(run / "model.json", {**meta, "content_sha256": _content_sha256(meta)})


#: format 3 adds ``content_sha256``: the SHA-256 of the rest of ``model.json`` (canonical JSON), so that an edited
#: model.json is refused as an edited model.safetensors is; format 2 files (without it) still load
MODEL_FORMAT = "softmargin-model-3"
_READABLE_FORMATS = ("softmargin-model-2", MODEL_FORMAT)


def _content_sha256(meta: dict[str, Any]) -> str:
    """SHA-256 of ``meta`` without its ``content_sha256``, as canonical JSON (sorted keys, no spaces, ASCII)."""
    return _canonical_sha256({k: v for k, v in meta.items() if k != "content_sha256"})


def _canonical_sha256(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}): the run folder is damaged") from None


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """What :func:`load_model` takes from ``model.json`` beyond the weights, checked: an edited file is refused by name
    instead of deciding nonsense (an unknown strategy predicting nothing, a negative rcut_k) or failing later."""

    def bad(what: str, found: Any, expected: str) -> ValueError:
        return ValueError(f"{path}: {what} is {found!r}, expected {expected}: the run folder is damaged or was edited")

    labels, features = meta.get("label_names"), meta.get("feature_names")
    for what, names in (("label_names", labels), ("feature_names", features)):
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise bad(what, type(names).__name__ if not isinstance(names, list) else f"a list of {len(names)}", "a non-empty list of names")
        seen: set[str] = set()  # (a set: a scan of the names before each one took 13 s for 50,000 features)
        repeated = None
        for name in names:
            if name in seen:
                repeated = name
                break
            seen.add(name)
        if repeated is not None:
            raise bad(f"{what} (the name {repeated!r} twice)", len(names), "each name once")
    assert isinstance(labels, list) and isinstance(features, list)
    integer = lambda v, low: isinstance(v, int) and not isinstance(v, bool) and v >= low
    if not integer(meta.get("members"), 1):
        raise bad("members", meta.get("members"), "a positive number of ensemble members")
    hidden = meta.get("hidden")
    if not (isinstance(hidden, list) and all(integer(h, 1) for h in hidden)):
        raise bad("hidden", hidden, "a list of positive layer widths")
    dropout = meta.get("dropout")
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise bad("dropout", dropout, "a number in [0, 1)")
    for what in ("normalize_rows", "positional", "at_least_one"):
        if what in meta and not isinstance(meta[what], bool):
            raise bad(what, meta[what], "true or false")
    if "train_size" in meta and not integer(meta["train_size"], 0):
        raise bad("train_size", meta["train_size"], "the number of training samples")
    counts = meta.get("label_counts")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf
    if counts is not None and not (isinstance(counts, list) and len(counts) == len(labels) and all(map(number, counts))):
        shown = f"{len(counts)} values" if isinstance(counts, list) else counts
        raise bad("label_counts", shown, f"{len(labels)} counts >= 0, one per label")
    if meta.get("in_features") != len(features):
        raise bad("in_features", meta.get("in_features"), f"{len(features)}, one per feature name")
    decision = meta.get("decision")
    if not isinstance(decision, dict) or decision.get("strategy") not in STRATEGIES:
        found = decision.get("strategy") if isinstance(decision, dict) else decision
        raise bad("decision.strategy", found, f"one of {', '.join(STRATEGIES)}")
    try:
        check_decision(decision.get("threshold"), decision.get("k"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"{path}: decision: {exc}: the run folder is damaged or was edited") from None
    rcut_k = meta.get("rcut_k")
    if not (isinstance(rcut_k, int) and not isinstance(rcut_k, bool) and rcut_k >= 1):
        raise bad("rcut_k", rcut_k, "a positive number of labels")
    for what in ("thresholds", "tuned_thresholds"):
        values = meta.get(what)
        if values is None and what == "tuned_thresholds":
            continue
        array = np.asarray(values if isinstance(values, list) else [], np.float64)
        if not isinstance(values, list) or array.shape != (len(labels),):
            raise bad(what, f"{len(values)} values" if isinstance(values, list) else values, f"{len(labels)} values, one per label")
        finite = array[np.isfinite(array)]
        if (finite <= 0).any() or (what == "tuned_thresholds" and len(finite) < len(array)):  # 0 would predict every label
            raise bad(what, f"values from {np.nanmin(array):g} to {np.nanmax(array):g}", "thresholds above 0")


def _saved_config(path: Path, sha256: str | None = None) -> TrainConfig:
    """The training configuration recorded in ``config.json`` (the defaults where there is none), checked: a damaged
    or edited file is refused by name (against ``sha256``, model.json's record of the settings, where there is one)."""
    if not path.exists():
        if sha256 is not None:  # saved beside model.json by `softmargin train`: the folder lost it
            warnings.warn(f"{path} is missing: the model loads (its predictions need model.json and model.safetensors "
                          "only), but its training settings are unknown and .config reports the defaults", UserWarning, stacklevel=3)  # fmt: skip
        return TrainConfig()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    document = _read_json(path)
    raw = document.get("train", {}) if isinstance(document, dict) else None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: no 'train' settings object: the run folder is damaged or was edited")
    settings: dict[str, Any] = {k: (tuple(v) if k == "hidden" and isinstance(v, list) else v) for k, v in raw.items() if k in fields}
    if raw and "cut_counts" not in raw:  # saved before the calibrated counts: its cuts counted the labels
        settings.update(cut_counts="observed", macro_weight=raw.get("macro_weight", MACRO_WEIGHT))
    try:
        config = TrainConfig(**settings).check()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: its training settings are not valid ({exc}): the run folder is damaged or was edited") from None
    if sha256 is not None and _canonical_sha256(raw) != sha256:
        raise ValueError(f"{path}: its training settings differ from those model.json records (train_settings_sha256): "
                         "config.json was edited, or comes from another run; restore it, or retrain")  # fmt: skip
    return config


def load_model(run: Path) -> TrainedModel:
    """A model saved by :func:`save_model`: safetensors weights (loading executes no code), checked against the
    SHA-256 in ``model.json``, and JSON metadata. A missing, damaged or altered file is a ValueError naming it. A
    model.json of the older format 2 (no ``content_sha256``) loads with a UserWarning: edits to it cannot be seen."""
    from safetensors.torch import load_file

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder (expected a folder written by 'softmargin train')")
    for name in ("model.json", "model.safetensors"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run}: no {name}: expected a run folder written by 'softmargin train'")
    meta = _read_json(run / "model.json")
    if not isinstance(meta, dict) or meta.get("format") not in _READABLE_FORMATS:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{run / 'model.json'}: format {found!r}, expected {MODEL_FORMAT!r} (retrain with this version)")
    if meta["format"] != MODEL_FORMAT:  # format 2: still read, but nothing can tell whether it was edited
        warnings.warn(f"{run / 'model.json'}: format {meta['format']!r} (older) has no content checksum "
                      "(content_sha256), so an edit to it cannot be detected; retrain with this version to get a checked "
                      f"file ({MODEL_FORMAT!r})", UserWarning, stacklevel=2)  # fmt: skip
    if meta["format"] == MODEL_FORMAT and meta.get("content_sha256") != _content_sha256(meta):
        raise ValueError(f"{run / 'model.json'}: its content differs from its SHA-256 (content_sha256): the file was "
                         "edited or is damaged; retrain, or restore it (predict's --thresholds/--threshold/--top-k "
                         "change decisions without editing it)")  # fmt: skip
    if not isinstance(meta.get("sha256"), str):
        raise ValueError(f"{run / 'model.json'}: no 'sha256' of model.safetensors: the run folder is damaged or was edited")
    if file_sha256(run / "model.safetensors") != meta.get("sha256"):
        raise ValueError(f"{run / 'model.safetensors'}: its SHA-256 differs from the one in model.json: the file is "
                         "damaged or was changed; retrain or restore it")  # fmt: skip
    try:
        _check_meta(run / "model.json", meta)
        tensors = load_file(str(run / "model.safetensors"))
        stored = sorted({key.split(".", 1)[0] for key in tensors})
        if stored != sorted(f"member{i}" for i in range(meta["members"])):
            raise ValueError(f"{run / 'model.json'}: members is {meta['members']}, but model.safetensors holds "
                             f"{len(stored)} members: the run folder is damaged or was edited")  # fmt: skip
        nets = []
        for i in range(meta["members"]):
            with torch.device("meta"):  # no memory, no initialisation: the saved tensors are taken as they are
                net = MultiLabelNet(meta["in_features"], len(meta["label_names"]), meta["hidden"], meta["dropout"],
                                    bool(meta.get("normalize_rows", False)))  # fmt: skip
            prefix = f"member{i}."
            net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, assign=True)
            nets.append(net.eval())
        del tensors
        config = _saved_config(run / "config.json", meta.get("train_settings_sha256"))
        counts = meta.get("label_counts")
        tuned = meta.get("tuned_thresholds")
        model = TrainedModel(
            nets, config, meta["label_names"], meta["feature_names"], np.asarray(meta["thresholds"], np.float64), [],
            meta["at_least_one"], None if counts is None else np.asarray(counts), meta.get("train_size", 0),
            None if tuned is None else np.asarray(tuned, np.float64), int(meta["rcut_k"]), dict(meta["decision"]),
            bool(meta.get("positional", False)),
        )  # fmt: skip
        return model.with_decision()
    except (KeyError, TypeError, RuntimeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""  # torch's state-dict errors run to many lines
        raise ValueError(f"{run}: model.json and model.safetensors do not describe a model ({type(exc).__name__}: {first}); "
                         "the run folder is damaged") from None  # fmt: skip
    except Exception as exc:  # safetensors' own errors (a truncated or foreign file)
        if type(exc).__module__.startswith("safetensors") or "safetensors" in type(exc).__name__.lower():
            raise ValueError(f"{run / 'model.safetensors'}: not a readable safetensors file ({exc})") from None
        raise


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


def plot_f1_vs_frequency(
    per_label: list[dict[str, Any]], label_names: list[str], train_frequency: np.ndarray | None, path: Path
) -> None:
    """Per-label F1 against the label's frequency in the training data. Up to 60 labels: one bar per label, sorted by
    frequency, names on the axis (they cannot overlap); labels without a positive in the evaluated data are drawn
    grey and listed. More labels: a scatter plot without names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f1 = np.array([row["f1"] for row in per_label], np.float64)
    support = np.array([row["support"] for row in per_label])
    frequency = train_frequency if train_frequency is not None else np.full(len(f1), np.nan)
    absent = [name for name, s in zip(label_names, support) if s == 0]
    if len(f1) <= 60:
        order = np.argsort(-np.nan_to_num(frequency, nan=-1), kind="stable")
        fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.24 * len(f1)))
        y = np.arange(len(order))
        colours = ["lightgrey" if support[i] == 0 else "C0" for i in order]
        ax.barh(y, f1[order], color=colours)
        ax.set_yticks(y, [f"{label_names[i]}  ({frequency[i]:.1%})" for i in order], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("F1 on the evaluated data")
        ax.set_title("Per-label F1, labels by frequency in the training data (in brackets)", fontsize=10)
        for yi, i in enumerate(order):  # yi: the bar's position (y[yi] == yi)
            ax.text(min(f1[i], 0.9) + 0.01, yi, "no positives here" if support[i] == 0 else f"{f1[i]:.2f}", va="center", fontsize=7)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.scatter(frequency[support > 0], f1[support > 0], s=10, alpha=0.6, label="labels")
        ax.set_xscale("log")
        ax.set_xlabel("label frequency in the training data (log scale)")
        ax.set_ylabel("F1 on the evaluated data")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("Per-label F1 against label frequency")
        if absent:
            shown = ", ".join(absent[:8]) + (f" and {len(absent) - 8} more" if len(absent) > 8 else "")
            ax.text(0.01, -0.2, f"{len(absent)} label(s) without a positive in the evaluated data (not drawn): {shown}",
                    transform=ax.transAxes, fontsize=7, wrap=True)  # fmt: skip
    fig.tight_layout()
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)


def write_report(
    run: Path, metrics: dict[str, float], per_label: list[dict[str, Any]], label_names: list[str],
    train_frequency: np.ndarray | None = None,
) -> None:  # fmt: skip
    """metrics.json, per_label.csv (sorted by support, most frequent first) and f1_vs_frequency.png into ``run``."""
    write_json(run / "metrics.json", metrics, strict=True)
    header = ["label", "support", "precision", "recall", "f1", "threshold"]
    order = sorted(range(len(per_label)), key=lambda i: -per_label[i]["support"])
    rows = [[label_names[i]] + [per_label[i][k] for k in header[1:]] for i in order]
    write_csv(run / "per_label.csv", header, rows)
    plot_f1_vs_frequency(per_label, label_names, train_frequency, run / "f1_vs_frequency.png")


def train_frequency(model: TrainedModel) -> np.ndarray | None:
    if model.label_counts is None or not model.train_size:
        return None
    return np.asarray(model.label_counts, np.float64) / model.train_size


def config_dict(config: TrainConfig, **extra: Any) -> dict[str, Any]:
    """config.json: the training settings, the versions that produced the run, and ``extra`` (data, hashes, ...)."""
    from importlib.metadata import version

    from .. import __version__

    versions = {"softmargin": __version__, "torch": torch.__version__, "numpy": np.__version__,
                "scikit-learn": version("scikit-learn"), "python": sys.version.split()[0]}  # fmt: skip
    return {"train": dataclasses.asdict(config), "versions": versions, **extra}
