"""``SoftMarginClassifier``: a scikit-learn estimator trained with the multi-label soft-margin loss.

It takes a multi-label indicator matrix ``y`` of shape (n_samples, n_labels) — the case it is built for — and, like
scikit-learn's own multi-label capable classifiers, also a 1-D ``y`` of class labels (binary: one sigmoid; multiclass:
one sigmoid per class, one-vs-rest, probabilities normalised to sum to 1). It works in ``Pipeline`` and
``GridSearchCV``; sparse ``X`` stays sparse.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from .._extras import needed

with needed("app", by="softmargin.SoftMarginClassifier"):
    import scipy.sparse as sp
    import torch
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import NotFittedError
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import type_of_target
    from sklearn.utils.validation import check_is_fitted, validate_data

    from . import train as T
    from .data import Dataset, sparse_labels, stays_sparse


def _is_int(value: Any) -> TypeGuard[int | np.integer[Any]]:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class SoftMarginClassifier(ClassifierMixin, BaseEstimator):
    """Multi-label classifier (linear "binary relevance" or MLP) trained with the soft-margin loss.

    Parameters mirror ``softmargin train`` (see :class:`softmargin.app.train.TrainConfig`); ``hidden_layer_sizes`` is
    scikit-learn's name for ``--hidden``, ``random_state`` for ``--seed``, and ``label_weight`` for ``--class-weight``
    (a per-label weighting method computed from the data: ``"none"``, ``"inverse"``, ``"sqrt_inverse"``,
    ``"effective_number"``; not scikit-learn's ``class_weight`` dictionary, whose per-sample meaning it does not have). The defaults train one MLP, quickly;
    ``softmargin train``'s defaults for dense features (an ensemble of 5 networks of 512 hidden units, dropout 0.5) are
    ``hidden_layer_sizes=(512,), dropout=0.5, ensemble=5, at_least_one="auto"``.

    ``random_state`` (default None) follows scikit-learn's ``check_random_state``: an int in [0, 2**32) is the seed
    itself (``--seed``: the same int, the same model); a ``numpy.random.RandomState`` gives the seed as one draw from
    it at each ``fit`` (so it advances, and two fits with one instance differ); None draws the seed from NumPy's
    global ``RandomState``, so each fit gives a different model (unless ``np.random.seed`` was called; ``softmargin
    train``'s default is seed 0). Anything else (a float, a string, a bool, a ``numpy.random.Generator``) is refused
    by ``fit`` with a ValueError. Training draws from torch's process-wide generators, so fits in several threads at
    once (joblib's threading backend) take turns: in threads too, a seed gives its model.

    ``thresholds`` is how ``predict`` turns a label matrix's probabilities into 0/1: ``"fixed"`` (0.5), ``"tuned"``
    (per label, on the validation split), ``"top-k"`` (each sample's best label) or ``"rcut"`` (each sample's t best,
    t the training label cardinality). A binary y (one sigmoid) takes ``"fixed"`` or ``"tuned"``: ranking its one
    label would predict the positive class for every sample, so ``fit`` refuses the others with a ValueError; a
    multiclass y predicts the most probable class (a decision rule other than the defaults warns that it is ignored
    there, and the fit uses the defaults).

    ``optimizer="newton"`` (with ``model="linear"``) trains LIBLINEAR's L2-loss SVM (the squared hinge), as ``softmargin
    train``'s default for bag-of-words features does: its ``predict_proba`` is sigmoid(margin), which ranks and cuts
    well but is not a calibrated probability (``softmargin train --linear-loss logistic`` gives calibrated ones; the
    estimator does not expose that choice).

    A parameter set to other than its default where the fit does not use it (``lr`` or ``batch_size`` with
    ``optimizer="lbfgs"``, ``dropout`` or ``hidden_layer_sizes`` with ``model="linear"``) gets a ``UserWarning`` at
    ``fit``, as scikit-learn's ``LogisticRegression`` warns of an unused ``l1_ratio`` (``softmargin train`` refuses
    the option outright); a grid search over the optimizer and its learning rate still runs.

    ``standardize="auto"`` (as ``--standardize auto``) standardises dense ``X`` and leaves a scipy.sparse ``X`` as it
    is (centring would densify it): the same numbers given dense and given sparse train different models. ``"no"``
    (or ``"tfidf"``, for counts) treats both alike; ``"yes"`` standardises dense ``X`` and scales sparse ``X`` by each
    feature's largest absolute value (scikit-learn's MaxAbsScaler).

    Attributes:
        classes_: for a label matrix, ``np.arange(n_labels)``; for 1-D targets, the sorted class labels.
        model_: the fitted :class:`softmargin.app.train.TrainedModel`.
        n_features_in_: number of features seen in ``fit``.

    Example:
        >>> from sklearn.datasets import make_multilabel_classification
        >>> X, Y = make_multilabel_classification(n_samples=200, n_classes=5, random_state=0)
        >>> clf = SoftMarginClassifier(epochs=30, random_state=0).fit(X, Y)
        >>> clf.predict(X[:2]).shape
        (2, 5)
    """

    def __init__(
        self,
        model: str = "mlp",
        hidden_layer_sizes: tuple[int, ...] = (256,),
        dropout: float = 0.2,
        ensemble: int = 1,
        optimizer: str = "adamw",
        epochs: int = 200,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        C: float | None = None,
        valid_fraction: float = 0.15,
        patience: int = 20,
        standardize: str = "auto",
        label_weight: str = "none",
        pos_weight: bool = False,
        label_smoothing: float = 0.0,
        gamma_pos: float = 0.0,
        gamma_neg: float = 0.0,
        clip: float = 0.0,
        thresholds: str = "fixed",
        at_least_one: str = "no",
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.model = model
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.ensemble = ensemble
        self.optimizer = optimizer
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.C = C
        self.valid_fraction = valid_fraction
        self.patience = patience
        self.standardize = standardize
        self.label_weight = label_weight
        self.pos_weight = pos_weight
        self.label_smoothing = label_smoothing
        self.gamma_pos = gamma_pos
        self.gamma_neg = gamma_neg
        self.clip = clip
        self.thresholds = thresholds
        self.at_least_one = at_least_one
        self.random_state = random_state
        self.verbose = verbose

    def _hidden(self) -> tuple[int, ...]:
        """``hidden_layer_sizes`` as a tuple of positive ints (a single int is one layer, as in scikit-learn's
        ``MLPClassifier``)."""
        sizes: Any = self.hidden_layer_sizes
        try:
            layers = (sizes,) if _is_int(sizes) else tuple(sizes)
        except TypeError:
            layers = ()
        if not layers or not all(_is_int(v) and v >= 1 for v in layers):
            raise ValueError(
                f"hidden_layer_sizes={self.hidden_layer_sizes!r}: expected a tuple of positive layer sizes, e.g. (256,) "
                "or (512, 256) (no hidden layer: model='linear')"
            )
        return tuple(int(v) for v in layers)

    def _random_state(self) -> int | np.random.RandomState:
        """``random_state`` as scikit-learn's ``check_random_state`` reads it, checked: an int is the seed itself, a
        ``RandomState`` is used as given, None is NumPy's global ``RandomState``; anything else is refused."""
        random_state: Any = self.random_state
        expected = "expected None, an integer in [0, 2**32) or a numpy.random.RandomState instance"
        if _is_int(random_state):
            if not 0 <= random_state < 2**32:
                raise ValueError(f"random_state={random_state!r}: {expected}")
            return int(random_state)
        if isinstance(random_state, bool):  # check_random_state would take True for the seed 1
            raise ValueError(f"random_state={random_state!r}: {expected}")
        try:
            return check_random_state(random_state)
        except ValueError:
            raise ValueError(f"random_state={random_state!r}: {expected}") from None

    def _config(self) -> T.TrainConfig:
        # the parameters whose TrainConfig field has another name, checked here so that an error names the parameter
        if self.label_weight not in T.CLASS_WEIGHTS:
            raise ValueError(f"label_weight={self.label_weight!r}: expected one of {', '.join(T.CLASS_WEIGHTS)}")
        self._random_state()  # checked before the data; the seed is drawn in fit, once they are
        return T.TrainConfig(
            model=self.model, hidden=self._hidden(), dropout=self.dropout, ensemble=self.ensemble,
            optimizer=self.optimizer, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, C=self.C, valid_fraction=self.valid_fraction, patience=self.patience,
            standardize=self.standardize, class_weight=self.label_weight, pos_weight=self.pos_weight,
            label_smoothing=self.label_smoothing, gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg, clip=self.clip,
            thresholds=self.thresholds, at_least_one=self.at_least_one,
        ).check()  # fmt: skip

    def fit(self, X: Any, y: Any) -> SoftMarginClassifier:
        # a fit that fails leaves the estimator unfitted: never a previous model_ beside this fit's classes_
        for name in ("model_", "classes_", "_binarizer"):
            self.__dict__.pop(name, None)
        config = self._config()
        # float64 stays float64 until the fit has checked that float32 does not blur a column (train._as_computed)
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=(np.float64, np.float32), multi_output=True)
        target_type = type_of_target(y)
        if target_type == "multilabel-indicator":
            # scikit-learn calls any matrix of at most two values an indicator matrix: {-1, +1} and {0, 2} too,
            # which as 0/1 labels would be nonsense (-1 becomes 255)
            values = np.unique(y.data if sp.issparse(y) else y)
            if sp.issparse(y) and y.nnz < y.shape[0] * y.shape[1]:
                values = np.union1d(values, [0])  # the implicit zeros
            if not np.isin(values, (0, 1)).all():
                raise ValueError(
                    f"y has the values {values.tolist()}: expected a multi-label indicator matrix (n_samples, n_labels) "
                    "of 0/1 (or booleans); for class labels pass a 1-D y"
                )
            # as `softmargin train` keeps LIBSVM labels: no dense copy (tuned thresholds need the dense matrix)
            if stays_sparse(y) and config.thresholds != "tuned":
                Y: Any = sparse_labels(y)
            else:
                Y = np.asarray(y.toarray() if sp.issparse(y) else y).astype(np.uint8)
            self.classes_ = np.arange(Y.shape[1])
            self._binarizer = None
        elif target_type in ("binary", "multiclass"):
            self._binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._binarizer.classes_
            Y = self._binarizer.transform(y).astype(np.uint8)
        else:
            raise ValueError(
                f"Unknown label type: y is {target_type!r}; expected a multi-label indicator matrix "
                f"(n_samples, n_labels) of 0/1, or binary / multiclass class labels"
            )
        if len(self.classes_) < 2 and self._binarizer is not None:
            raise ValueError(f"y has {len(self.classes_)} class: expected at least 2 classes")
        if len(self.classes_) == 2 and self._binarizer is not None and config.thresholds in ("top-k", "rcut"):
            # one sigmoid for the positive class: ranking one label would give every sample the positive class
            raise ValueError(
                f"thresholds={self.thresholds!r}: a binary y is one label (the positive class), which {self.thresholds} "
                "would predict for every sample; expected 'fixed' or 'tuned' for a binary y"
            )
        if len(self.classes_) > 2 and self._binarizer is not None and (self.thresholds, self.at_least_one) != ("fixed", "no"):
            # predict takes the most probable class: no decision rule applies, and "tuned" would hold rows out for nothing
            warnings.warn(
                f"thresholds={self.thresholds!r}, at_least_one={self.at_least_one!r} are ignored for a multiclass y "
                "(predict takes the most probable class); this fit uses thresholds='fixed', at_least_one='no'",
                UserWarning,
                stacklevel=2,
            )
            config = dataclasses.replace(config, thresholds="fixed", at_least_one="no")
        names = [str(c) for c in range(Y.shape[1])]
        features = [str(f) for f in range(X.shape[1])]
        random_state = self._random_state()
        seed = random_state if isinstance(random_state, int) else int(random_state.randint(np.iinfo(np.int32).max))
        config = dataclasses.replace(config, seed=seed)
        data = Dataset(X, Y, features, names, "fit")
        self._ignored_parameters(config.resolve(data))
        # training seeds torch's global generators (dropout, initialisation): the caller's state is put back after;
        # fits in other threads wait (T.TORCH_GLOBALS), or they would draw, and put back, each other's states
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with T.TORCH_GLOBALS, torch.random.fork_rng(devices=devices):
            self.model_ = T.fit(data, config, progress=self.verbose)
        return self

    def _ignored_parameters(self, resolved: T.TrainConfig) -> None:
        """Warn of a parameter set to other than its default where this fit does not use it (``lr`` with
        ``optimizer="lbfgs"``, ``dropout`` with ``model="linear"``, ...). ``softmargin train`` refuses such an option;
        the estimator warns, as scikit-learn's ``LogisticRegression`` does of an unused ``l1_ratio``, so that a grid
        search over the optimizer and its learning rate still runs."""
        from .runs import _USED_WHEN

        defaults = {name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()}
        for _option, field, used, why in [*_USED_WHEN, ("", "hidden", lambda c: c.model == "mlp", "it sets the MLP's layers")]:
            name = {"hidden": "hidden_layer_sizes", "class_weight": "label_weight"}.get(field, field)
            if name not in defaults or used(resolved):
                continue
            default = defaults[name]
            if (self._hidden() if name == "hidden_layer_sizes" else getattr(self, name)) != default:
                warnings.warn(
                    f"{name}={getattr(self, name)!r} is ignored by this fit ({why}; this fit: model={resolved.model!r}, "
                    f"optimizer={resolved.optimizer!r}, thresholds={resolved.thresholds!r}); leave it at its default "
                    f"({default!r}), or set the parameters it belongs to",
                    UserWarning,
                    stacklevel=3,
                )

    def _features(self, X: Any) -> Any:
        check_is_fitted(self, "model_")
        return validate_data(self, X, accept_sparse="csr", dtype=(np.float64, np.float32), reset=False)

    def _scores(self, X: Any) -> np.ndarray:
        X = self._features(X)
        return self.model_.predict_proba(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Multi-label: (n, n_labels) probabilities; binary: (n, 2); multiclass: (n, n_classes), rows summing to 1."""
        p = self._scores(X)
        if self._binarizer is None:
            return p
        if len(self.classes_) == 2:
            return np.column_stack([1 - p[:, 0], p[:, 0]])
        return p / np.maximum(p.sum(1, keepdims=True), 1e-300)

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits: (n, n_labels) for multi-label and multiclass targets, (n,) for binary ones: the logit of the
        ensemble's mean probability, unclipped. ``predict`` cuts the probabilities at the decision thresholds, so
        ``decision_function(X) > 0`` agrees with it only for ``thresholds="fixed"`` at 0.5 (the default for dense
        features); with tuned thresholds the cut is at ``logit(threshold)``, per label."""
        X = self._features(X)  # before touching model_: an unfitted estimator raises NotFittedError
        logits = self.model_.decision_function(X)
        return logits[:, 0] if self._binarizer is not None and len(self.classes_) == 2 else logits

    def predict(self, X: Any) -> np.ndarray:
        """Multi-label: (n, n_labels) 0/1 by the ``thresholds`` strategy (fixed, tuned, each sample's top-k or RCut
        labels); binary: the class whose probability passes the threshold; multiclass: the most probable class."""
        p = self._scores(X)
        if self._binarizer is None:
            return self.model_.decide(p).astype(np.int64)
        if len(self.classes_) == 2:
            return self.classes_[(p[:, 0] >= self.model_.thresholds[0]).astype(int)]
        return self.classes_[p.argmax(1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_label = True  # scikit-learn's multi-label estimator checks run too
        tags.input_tags.sparse = True
        return tags


class RunModel(BaseEstimator):
    """A model saved by ``softmargin train``, loaded with :func:`load_run`: ``predict``, ``predict_proba`` and
    ``decision_function`` check their input as :class:`SoftMarginClassifier` does (2-D numbers, dense or scipy.sparse,
    finite, the model's number of features; a pandas DataFrame is matched to the model's features by column name).

    Attributes:
        model_: the :class:`softmargin.app.train.TrainedModel`.
        n_features_in_: the number of features the model expects.
        feature_names, label_names: the model's, in its column order.
        decision: how probabilities become labels (``strategy``: fixed, tuned, top-k or rcut, with its parameters).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    @property
    def feature_names(self) -> list[str]:
        return list(self.model_.feature_names)

    @property
    def label_names(self) -> list[str]:
        return list(self.model_.label_names)

    @property
    def decision(self) -> dict[str, Any]:
        return dict(self.model_.decision)

    def _features(self, X: Any) -> Any:
        if not hasattr(self, "model_"):
            raise NotFittedError("this RunModel holds no model: get one from softmargin.load_run(path)")
        if hasattr(X, "columns") and hasattr(X, "loc"):  # a DataFrame: by name, in the model's order
            columns = set(map(str, X.columns))  # once: rebuilt for each name it took minutes at 100,000 features
            missing = [name for name in self.model_.feature_names if name not in columns]
            if missing:
                raise ValueError(f"X lacks the model's feature column(s) {missing[:5]}: expected all of {self.n_features_in_}")
            X = X.rename(columns=str)[self.model_.feature_names].to_numpy()
        return validate_data(self, X, accept_sparse="csr", dtype=(np.float64, np.float32), reset=False)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities, (n_samples, n_labels)."""
        return self.model_.predict_proba(self._features(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits of the ensemble's mean probability, (n_samples, n_labels)."""
        return self.model_.decision_function(self._features(X))

    def predict(self, X: Any) -> np.ndarray:
        """0/1 decisions, (n_samples, n_labels), with the model's decision strategy."""
        return self.model_.decide(self.predict_proba(X)).astype(np.int64)

    def with_decision(self, thresholds: str | None = None, threshold: float | None = None, k: int | None = None) -> RunModel:
        """A copy deciding with another strategy: ``fixed`` at ``threshold``, ``tuned``, ``top-k`` with ``k``, ``rcut``."""
        other = RunModel(self.path)
        other.model_ = self.model_.with_decision(thresholds, threshold, k)
        other.n_features_in_ = self.n_features_in_
        return other

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


def load_run(path: str | Path) -> RunModel:
    """The model of a run folder written by ``softmargin train``, ready to predict.

    Args:
        path: the run folder (it holds model.json and model.safetensors; the weights' SHA-256 is checked).

    Returns:
        A :class:`RunModel`: ``predict(X)`` (n, L) 0/1, ``predict_proba(X)`` (n, L), ``decision_function(X)`` (n, L),
        for X of shape (n, n_features_in_), dense or scipy.sparse.

    Example:
        >>> import softmargin
        >>> run = softmargin.load_run("runs/20261129-172136-yeast")  # doctest: +SKIP
        >>> run.predict(X).shape  # doctest: +SKIP
        (917, 14)
    """
    model = T.load_model(Path(path))
    run = RunModel(str(path))
    run.model_ = model
    run.n_features_in_ = model.num_features
    return run
