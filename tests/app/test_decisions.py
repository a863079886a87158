"""The bag-of-words default: the truncated-Newton linear model against scikit-learn's LogisticRegression, tf-idf
against scikit-learn's TfidfTransformer, the calibration of held-out scores against scipy's optimiser and
scikit-learn's LogisticRegression, and the tuned thresholds' safety (the floor, the SCutfbr fallback, and no
threshold option dropping micro-F1 below fixed 0.5 by more than 0.02: issue 17, item 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("torch")

from softmargin.app import data as D
from softmargin.app import train as T
from softmargin.app.decisions import calibrate, cv_thresholds, global_threshold
from softmargin.app.linear import fit_logistic, tfidf_transform, tfidf_weights

MULAN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mulan"


def _bag_of_words(rows: int, features: int, labels: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Counts and labels with a few frequent and many rare labels, each label tied to a handful of words."""
    rng = np.random.default_rng(seed)
    frequency = np.r_[np.full(3, 0.3), np.geomspace(0.1, 0.01, labels - 3)]
    Y = (rng.random((rows, labels)) < frequency).astype(np.uint8)
    words = rng.integers(0, features, size=(labels, 4))
    X = sp.lil_matrix((rows, features))
    for i in range(rows):
        for w in rng.integers(0, features, size=8):  # background words
            X[i, w] += 1
        for j in np.flatnonzero(Y[i]):
            for w in words[j][rng.random(4) < 0.6]:
                X[i, w] += 1
    return sp.csr_matrix(X, dtype=np.float32), Y


def test_fit_logistic_matches_sklearn_per_label() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    Y = (X @ rng.normal(size=(6, 3)) + rng.normal(size=(120, 3)) > 0.5).astype(np.uint8)
    weights = np.array([1.0, 3.0, 0.5])
    solution = fit_logistic(sp.csr_matrix(X), Y, C=2.0, pos_weight=weights, tol=1e-10, max_iter=100)
    for j in range(3):
        reference = LogisticRegression(C=2.0, tol=1e-12, max_iter=10_000, class_weight={0: 1.0, 1: weights[j]})
        reference.fit(X, Y[:, j])
        np.testing.assert_allclose(solution.W[:, j], reference.coef_[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(solution.b[j], reference.intercept_[0], rtol=1e-5, atol=1e-6)


def test_fit_logistic_threads_and_warm_start_do_not_change_the_optimum() -> None:
    X, Y = _bag_of_words(150, 40, 9, seed=1)
    one = fit_logistic(X, Y, C=10.0, threads=1, tol=1e-8)
    three = fit_logistic(X, Y, C=10.0, threads=3, tol=1e-8, start=(np.ones((40, 9)), np.zeros(9)))
    np.testing.assert_allclose(three.W, one.W, atol=1e-5)
    np.testing.assert_allclose(three.b, one.b, atol=1e-5)


def test_fit_logistic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="C=0"):
        fit_logistic(np.ones((2, 2)), np.ones((2, 1)), C=0)
    with pytest.raises(ValueError, match="Y: expected shape"):
        fit_logistic(np.ones((2, 2)), np.ones((3, 1)), C=1.0)


def test_tfidf_matches_sklearn() -> None:
    from sklearn.feature_extraction.text import TfidfTransformer

    X, _ = _bag_of_words(60, 30, 5, seed=2)
    expected = TfidfTransformer().fit(X).transform(X).toarray()
    np.testing.assert_allclose(tfidf_transform(X, tfidf_weights(X)).toarray(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("form", ["stored zeros", "bsr", "duplicates"])
def test_tfidf_document_frequency_counts_non_zeros_not_stored_entries(form: str) -> None:
    """A stored 0 counted as an occurrence: a third of the entries zeroed in place moved the idf from 1.45 to 1.06,
    and the Newton model on them 0.007 in probability from the same numbers without stored zeros."""
    X, _ = _bag_of_words(60, 30, 5, seed=2)
    dense = X.toarray()
    dense[:, ::3] = 0  # no occurrence left in every third column, whatever is stored
    if form == "stored zeros":
        stored = X.copy()
        stored.data[stored.indices % 3 == 0] = 0  # zeroed in place: still stored
    elif form == "bsr":
        stored = sp.bsr_matrix(dense, blocksize=(2, 3))  # blocks carry zeros
    else:
        csr = sp.csr_matrix(dense)  # each value stored twice, as two halves: a CSR matrix not in canonical form
        indices = np.stack([csr.indices, csr.indices], 1).ravel()
        stored = sp.csr_matrix((np.repeat(csr.data / 2, 2), indices, 2 * csr.indptr), shape=dense.shape)
        assert not stored.has_canonical_format
    n = dense.shape[0]
    expected = 1 + np.log((1 + n) / (1 + (dense != 0).sum(0)))  # scikit-learn's smooth idf, from the non-zeros
    np.testing.assert_allclose(tfidf_weights(stored), expected, rtol=1e-12)
    np.testing.assert_allclose(tfidf_weights(dense), expected, rtol=1e-12)


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float((y & pred).sum())
    return 2 * tp / max(float(y.sum() + pred.sum()), 1.0)


def test_cv_thresholds_first_label_reaches_the_best_f1() -> None:
    """The most frequent label is cut first: micro-F1 + macro-F1 is then twice its F1, so its cut must reach the
    best F1 that any threshold reaches (brute force over every score)."""
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.4
    scores = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    Y = np.c_[y, rng.random(200) < 0.05].astype(np.uint8)
    S = np.c_[scores, rng.random(200)]
    threshold = cv_thresholds(Y, S, floor=1e-9)[0]
    best = max(_f1(y, scores >= t) for t in scores)
    assert _f1(y, scores >= threshold) == pytest.approx(best)



@pytest.mark.parametrize("counts", ["observed", "calibrated"])
def test_cv_thresholds_a_cut_taking_every_held_out_row_sits_below_every_held_out_score(counts: str) -> None:
    """A label positive in every held-out row (scores 0.9 to 1 - 1e-7) is cut below all of them: at most 0.5, as a
    label without a held-out positive is cut above all of them, at least 0.5. Its threshold was the lowest held-out
    score itself, so a new row scored a hair below it lost the label."""
    rng = np.random.default_rng(0)
    Y = np.c_[rng.random(100) < 0.3, np.ones(100)].astype(np.uint8)
    S = np.c_[np.clip(0.4 * Y[:, 0] + 0.6 * rng.random(100), 0, 1), 1 - rng.uniform(1e-7, 0.1, 100)]
    thresholds = cv_thresholds(Y, S, counts=counts, floor=0.05)
    assert thresholds[1] == 0.5
    assert (S[:, 1] >= thresholds[1]).all()

@pytest.mark.parametrize("seed", range(5))
def test_cv_thresholds_never_below_the_floor(seed: int) -> None:
    rng = np.random.default_rng(seed)
    Y = (rng.random((80, 12)) < rng.uniform(0.01, 0.5, 12)).astype(np.uint8)
    S = rng.random((80, 12)) ** 6  # mostly tiny scores: an unclamped cut would fall far below 0.1
    for floor in (0.05, 0.1, 0.3):
        assert cv_thresholds(Y, S, floor=floor).min() >= floor


def _fallback_case(seed: int, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Held-out (labels, scores) of three labels: 0 learnable (40 positives scored 0.1 higher), 1 with one positive
    scored below every negative (best F1 = 2 / (n + 1) < 0.1), 2 without a positive."""
    rng = np.random.default_rng(seed)
    Y = np.zeros((n, 3), np.uint8)
    S = rng.uniform(0.0, 0.9, (n, 3))
    Y[:40, 0] = 1
    S[:40, 0] += 0.1
    Y[0, 1] = 1
    S[0, 1] = 0.01
    return Y, S


def test_cv_thresholds_fallback_for_labels_with_few_positives() -> None:
    """A label whose held-out positives score below most negatives (held-out F1 < fbr), and a label without a
    positive, are predicted only above every held-out score (at least 0.5)."""
    Y, S = _fallback_case(4)
    thresholds = cv_thresholds(Y, S, fbr=0.1, floor=0.1)
    for j in (1, 2):
        assert thresholds[j] > S[:, j].max() and thresholds[j] >= 0.5
    assert thresholds[0] < S[:, 0].max()  # the learnable label keeps a cut through its scores


def test_cv_thresholds_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fbr=1"):
        cv_thresholds(np.zeros((2, 2)), np.zeros((2, 2)), fbr=1)
    with pytest.raises(ValueError, match="floor=0"):
        cv_thresholds(np.zeros((2, 2)), np.zeros((2, 2)), floor=0)
    with pytest.raises(ValueError, match="scores: expected"):
        cv_thresholds(np.zeros((2, 2)), np.zeros((3, 2)))


def _dataset(X: sp.csr_matrix, Y: np.ndarray, name: str) -> D.Dataset:
    return D.Dataset(X, Y, [f"w{i}" for i in range(X.shape[1])], [f"l{j}" for j in range(Y.shape[1])], name)


def _micro_f1(model: T.TrainedModel, test: D.Dataset, strategy: str) -> float:
    return T.evaluate(model.with_decision(strategy), test)[0]["micro_f1"]


@pytest.mark.parametrize(
    "settings",
    # the default (calibrated counts), the observed counts and SCutfbr's own fallback every day; the other settings in
    # CI (a second each)
    [{}, {"cut_counts": "observed"}, {"cut_counts": "observed", "fallback": "above"}]
    + [pytest.param(settings, marks=pytest.mark.slow) for settings in (
        {"linear_loss": "logistic"}, {"macro_weight": 0.3}, {"macro_weight": 1.0}, {"calibration_prior": 0.1},
        {"calibration_prior": 1000.0}, {"cut_counts": "observed", "macro_weight": 0.3},
        {"cut_counts": "observed", "fbr_positives": None}, {"cut_counts": "observed", "linear_loss": "logistic"},
        {"cut_counts": "observed", "fallback": "above", "linear_loss": "logistic"},
        {"cut_counts": "observed", "fbr_positives": None, "linear_loss": "logistic"})],  # fmt: skip
    ids=str,
)
def test_threshold_options_are_safe_on_small_generated_data(settings: dict[str, object]) -> None:
    """Issue 17, item 5, on a small generated bag-of-words set (medical's shape, scaled down: 150 training rows,
    rare labels): no threshold option drops micro-F1 below the fixed-0.5 default by more than 0.02, with either
    linear loss and the decision options."""
    X, Y = _bag_of_words(450, 120, 20, seed=5)
    train, test = _dataset(X[:150], Y[:150], "train"), _dataset(X[150:], Y[150:], "test")
    model = T.fit(train, T.TrainConfig(**settings), progress=False)  # type: ignore[arg-type]
    assert model.config.optimizer == "newton" and model.decision["strategy"] == "tuned"
    fixed = _micro_f1(model, test, "fixed")
    tuned = _micro_f1(model, test, "tuned")
    assert tuned >= fixed - 0.02, (tuned, fixed)
    assert model.tuned is not None and model.tuned.min() >= model.config.min_threshold


def test_linear_model_round_trips_with_row_normalisation(tmp_path: Path) -> None:
    X, Y = _bag_of_words(120, 50, 6, seed=6)
    train = _dataset(X, Y, "train")
    model = T.fit(train, T.TrainConfig(C=1.0, rare_weight=1.0), progress=False)
    assert model.nets[0].normalize and model.config.standardize == "tfidf"
    assert model.config.linear_loss == "squared_hinge"
    T.save_model(model, tmp_path)
    loaded = T.load_model(tmp_path)
    expected = model.predict_proba(X)
    np.testing.assert_allclose(loaded.predict_proba(X), expected, rtol=1e-12)
    np.testing.assert_allclose(model.predict_proba(X.toarray()), expected, rtol=1e-5, atol=1e-7)  # dense input
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    # the net computes what the solver saw: tf-idf rows of unit norm, then the solved L2-loss SVM (sigmoid of margins)
    from softmargin.app.linear import fit_logistic as solve

    solution = solve(tfidf_transform(X, tfidf_weights(X)), Y, C=1.0, loss="squared_hinge")
    z = tfidf_transform(X, tfidf_weights(X)) @ solution.W + solution.b
    np.testing.assert_allclose(expected, 1 / (1 + np.exp(-z)), atol=5e-3)  # both solved to the default tol=1e-3


def test_saved_config_says_what_the_cuts_counted(tmp_path: Path) -> None:
    """A saved model's config.json records the calibrated counts and the macro weight they used (resolved, not
    None); a model saved before the option existed (no cut_counts in its config.json) loads as observed counts, which
    is what its cuts counted; the tuned thresholds themselves are the saved ones either way."""
    import json

    X, Y = _bag_of_words(120, 50, 6, seed=7)
    model = T.fit(_dataset(X, Y, "train"), T.TrainConfig(C=1.0), progress=False)
    T.save_model(model, tmp_path)
    T.write_json(tmp_path / "config.json", T.config_dict(model.config))  # as `softmargin train` writes it
    loaded = T.load_model(tmp_path)
    assert (loaded.config.cut_counts, loaded.config.macro_weight) == ("calibrated", 2.0)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["train"]["cut_counts"], saved["train"]["macro_weight"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"config\.json: its training settings differ from those model\.json records"):
        T.load_model(tmp_path)  # an edit, as far as model.json can tell
    meta = json.loads((tmp_path / "model.json").read_text())  # a model.json from before it recorded the settings
    del meta["train_settings_sha256"], meta["content_sha256"]
    T.write_json(tmp_path / "model.json", {**meta, "content_sha256": T._content_sha256(meta)})
    old = T.load_model(tmp_path)
    assert (old.config.cut_counts, old.config.macro_weight) == ("observed", 1.0)
    assert old.tuned is not None and model.tuned is not None
    np.testing.assert_array_equal(old.tuned, model.tuned)


@pytest.mark.slow
@pytest.mark.skipif(not (MULAN / "medical").exists(), reason="../shared/data/mulan is not on this machine")
@pytest.mark.parametrize("name", ["medical", "enron"])
def test_threshold_options_are_safe_on_medical_and_enron(name: str) -> None:
    """Issue 17, item 5, on the real sets: the tuned thresholds within 0.02 micro-F1 of fixed 0.5, or above it, with
    either count and either linear loss."""
    train = D.load_arff(MULAN / name / f"{name}-train.arff")
    test = D.load_arff(MULAN / name / f"{name}-test.arff")
    for settings in ({}, {"linear_loss": "logistic"}, {"cut_counts": "observed"}, {"cut_counts": "observed", "linear_loss": "logistic"}):
        model = T.fit(train, T.TrainConfig(**settings), progress=False)  # type: ignore[arg-type]
        fixed = _micro_f1(model, test, "fixed")
        assert _micro_f1(model, test, "tuned") >= fixed - 0.02, settings


def test_fit_logistic_without_bias_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    X = rng.normal(size=(100, 5))
    Y = (X @ rng.normal(size=(5, 2)) + rng.normal(size=(100, 2)) > 0).astype(np.uint8)
    solution = fit_logistic(X, Y, C=0.5, bias=False, tol=1e-10, max_iter=100)
    assert not solution.b.any()
    for j in range(2):
        reference = LogisticRegression(C=0.5, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(X, Y[:, j])
        np.testing.assert_allclose(solution.W[:, j], reference.coef_[0], rtol=1e-5, atol=1e-6)


def test_auto_keeps_the_mlp_beyond_the_newton_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    X, Y = _bag_of_words(60, 30, 5, seed=8)
    data = _dataset(X, Y, "train")
    assert T.TrainConfig().resolve(data).optimizer == "newton"
    monkeypatch.setattr(T, "NEWTON_MAX_CELLS", 60 * 5 - 1)
    resolved = T.TrainConfig().resolve(data)
    assert (resolved.model, resolved.optimizer, resolved.thresholds) == ("mlp", "adamw", "fixed")
    with pytest.raises(ValueError, match="optimizer='newton' holds"):
        T.fit(data, T.TrainConfig(model="linear", optimizer="newton"), progress=False)


def test_squared_hinge_matches_liblinear_svm() -> None:
    """loss='squared_hinge' is LIBLINEAR's L2-loss SVM (scikit-learn's LinearSVC, the same C), with per-label
    positive weights as LinearSVC's class_weight, and without a bias as fit_intercept=False."""
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(9)
    X = rng.normal(size=(150, 6))
    Y = (X @ rng.normal(size=(6, 3)) + rng.normal(size=(150, 3)) > 0.3).astype(np.uint8)
    weights = np.array([1.0, 2.0, 0.5])
    solution = fit_logistic(X, Y, C=0.7, pos_weight=weights, bias=False, tol=1e-10, max_iter=200, loss="squared_hinge")
    for j in range(3):
        reference = LinearSVC(C=0.7, fit_intercept=False, tol=1e-12, max_iter=200_000, class_weight={0: 1.0, 1: weights[j]})
        reference.fit(X, Y[:, j])
        np.testing.assert_allclose(solution.W[:, j], reference.coef_[0], rtol=1e-5, atol=1e-6)
    # the bias: unpenalised here, LinearSVC's penalised one approaches it as intercept_scaling grows
    solution = fit_logistic(X, Y, C=0.7, tol=1e-10, max_iter=200, loss="squared_hinge")
    reference = LinearSVC(C=0.7, intercept_scaling=1e3, tol=1e-12, max_iter=500_000).fit(X, Y[:, 0])
    np.testing.assert_allclose(solution.W[:, 0], reference.coef_[0], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(solution.b[0], reference.intercept_[0], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="loss='hinge'"):
        fit_logistic(X, Y, C=1.0, loss="hinge")


def test_cv_thresholds_macro_weight_cut_maximises_the_weighted_sum() -> None:
    """The second (rarer) label's cut maximises micro-F1 + macro_weight x macro-F1 over both labels, checked by brute
    force over every threshold of that label, for several weights."""
    rng = np.random.default_rng(10)
    n = 120
    Y = np.c_[rng.random(n) < 0.5, rng.random(n) < 0.1].astype(np.uint8)
    S = np.clip(0.25 * Y + rng.random((n, 2)) * 0.75, 0, 1)
    for weight in (0.0, 0.3, 1.0, 3.0):
        thresholds = cv_thresholds(Y, S, fbr=0.0, floor=1e-9, macro_weight=weight)
        first = S[:, 0] >= thresholds[0]

        def objective(t: float) -> float:
            pred = np.c_[first, S[:, 1] >= t]
            tp = float((pred & (Y > 0)).sum())
            micro = 2 * tp / float(pred.sum() + Y.sum())
            return micro + weight * (_f1(Y[:, 0] > 0, pred[:, 0]) + _f1(Y[:, 1] > 0, pred[:, 1])) / 2

        best = max(objective(t) for t in np.r_[S[:, 1], 2.0])
        assert objective(thresholds[1]) == pytest.approx(best), weight
    with pytest.raises(ValueError, match="macro_weight=-1"):
        cv_thresholds(Y, S, macro_weight=-1)


def test_cv_thresholds_fallback_only_below_fbr_positives() -> None:
    """With fbr_positives, a label with many held-out positives keeps its cut even at a held-out F1 below fbr; a
    label with fewer falls back to above every held-out score."""
    rng = np.random.default_rng(11)
    n = 400
    Y = np.zeros((n, 2), np.uint8)
    Y[:30, 0] = 1  # 30 positives, scored like the negatives: F1 at any cut is low
    Y[:3, 1] = 1  # 3 positives, likewise
    S = rng.uniform(0.0, 0.9, (n, 2))
    every = cv_thresholds(Y, S, fbr=0.5)
    assert (every > S.max(0)).all()
    counted = cv_thresholds(Y, S, fbr=0.5, fbr_positives=10)
    assert counted[0] <= S[:, 0].max() and counted[1] > S[:, 1].max()
    with pytest.raises(ValueError, match="fbr_positives=0"):
        cv_thresholds(Y, S, fbr_positives=0)


@pytest.mark.parametrize("seed", range(4))
def test_global_threshold_maximises_the_pooled_micro_f1(seed: int) -> None:
    """Against scikit-learn's micro-F1, brute force over every score as the shared threshold (ties included)."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    Y = (rng.random((60, 5)) < rng.uniform(0.05, 0.5, 5)).astype(np.uint8)
    S = np.round(np.clip(0.3 * Y + 0.7 * rng.random((60, 5)), 0, 1), 2)  # rounded: ties between scores
    best = max(f1_score(Y, S >= t, average="micro", zero_division=0) for t in np.unique(S))
    threshold = global_threshold(Y, S)
    assert f1_score(Y, S >= threshold, average="micro", zero_division=0) == pytest.approx(best)
    assert global_threshold(np.zeros((3, 2)), S[:3, :2]) == 0.5  # no positive at all


def test_cv_thresholds_global_fallback() -> None:
    """fallback='global': a label failing the SCutfbr test gets the global threshold; one without any held-out
    positive still gets a threshold above every held-out score; a learnable label keeps its own cut."""
    Y, S = _fallback_case(11)
    above = cv_thresholds(Y, S, fbr=0.1, floor=0.01, fbr_positives=10)
    shared = cv_thresholds(Y, S, fbr=0.1, floor=0.01, fbr_positives=10, fallback="global")
    assert shared[1] == pytest.approx(global_threshold(Y, S)) and above[1] > S[:, 1].max()
    assert shared[2] == above[2] > S[:, 2].max()  # no positive: never predicted
    assert shared[0] == above[0] < S[:, 0].max()
    with pytest.raises(ValueError, match="fallback='nowhere'"):
        cv_thresholds(Y, S, fallback="nowhere")
    with pytest.raises(ValueError, match="fallback='nowhere'"):
        T.TrainConfig(fallback="nowhere").check()


def test_rare_labels_get_a_positive_weight() -> None:
    """The default Newton model weights the positives of labels with fewer than 10 training positives by
    min(10, n_neg / n_pos), the others by 1: the same model as the solver given those weights (computed here from
    the counts); rare_weight=1 turns it off."""
    from softmargin.app.linear import fit_logistic as solve

    X, Y = _bag_of_words(120, 50, 8, seed=12)
    counts = Y.sum(0)
    assert ((counts > 0) & (counts < 10)).any() and (counts >= 10).any()
    expected_weights = np.where((counts > 0) & (counts < 10), np.minimum(10.0, (120 - counts) / np.maximum(counts, 1)), 1.0)
    Z = tfidf_transform(X, tfidf_weights(X))
    for config, weights in ((T.TrainConfig(C=1.0), expected_weights), (T.TrainConfig(C=1.0, rare_weight=1.0), None)):
        model = T.fit(_dataset(X, Y, "train"), config, progress=False)
        solution = solve(Z, Y, C=1.0, loss="squared_hinge", pos_weight=weights, tol=1e-8)
        np.testing.assert_allclose(model.predict_proba(X), 1 / (1 + np.exp(-(Z @ solution.W + solution.b))), atol=5e-3)
    with pytest.raises(ValueError, match="rare_weight=0.5"):
        T.TrainConfig(rare_weight=0.5).check()
    with pytest.raises(ValueError, match="rare_positives=-1"):
        T.TrainConfig(rare_positives=-1).check()


def _calibration_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out-like scores: a label with many positives, labels with a handful, one without any."""
    rng = np.random.default_rng(seed)
    n = 300
    Y = np.zeros((n, 4), np.uint8)
    Y[rng.random(n) < 0.4, 0] = 1
    Y[rng.choice(n, 5, replace=False), 1] = 1
    Y[rng.choice(n, 2, replace=False), 2] = 1
    margins = rng.normal(-1.0, 1.0, (n, 4)) + 2.0 * Y
    return Y, 1 / (1 + np.exp(-margins))


@pytest.mark.parametrize("prior", [0.5, 10.0, 200.0])
def test_calibrate_matches_an_independent_fit(prior: float) -> None:
    """The shared Platt scaling against scikit-learn's unpenalised LogisticRegression on the pooled logits; each label's
    against scipy's L-BFGS on the penalised log-likelihood written out here."""
    from scipy.optimize import minimize
    from sklearn.linear_model import LogisticRegression

    Y, S = _calibration_case(0)
    logits = np.log(S) - np.log1p(-S)
    pooled = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(logits.reshape(-1, 1), Y.ravel())
    center = np.array([pooled.coef_[0, 0], pooled.intercept_[0]])
    expected = np.empty_like(S)
    for j in range(Y.shape[1]):

        def loss(theta: np.ndarray, j: int = j) -> float:
            z = theta[0] * logits[:, j] + theta[1]
            return float(np.sum(np.logaddexp(0, z) - Y[:, j] * z) + prior * np.sum((theta - center) ** 2))

        theta = minimize(loss, center, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-10}).x
        expected[:, j] = 1 / (1 + np.exp(-(theta[0] * logits[:, j] + theta[1])))
    np.testing.assert_allclose(calibrate(Y, S, prior=prior), expected, atol=1e-5)


def test_calibrate_shrinks_rare_labels_and_keeps_each_ranking() -> None:
    """A label with 2 held-out positives gets nearly the shared scaling under a strong prior, its own under a weak one;
    each label's ranking is kept (positive slopes); bad arguments are refused by name."""
    Y, S = _calibration_case(1)
    strong, weak = calibrate(Y, S, prior=1e4), calibrate(Y, S, prior=1e-3)
    shared = calibrate(np.tile(Y.reshape(-1, 1), (1, 1)), S.reshape(-1, 1), prior=1e4)  # one column: the pooled fit
    np.testing.assert_allclose(strong[:, 2], shared.reshape(S.shape)[:, 2], atol=1e-3)
    assert np.abs(weak[:, 2] - strong[:, 2]).max() > 0.05
    for Q in (strong, weak):
        for j in range(4):
            order = np.argsort(S[:, j])
            assert (np.diff(Q[order, j]) >= 0).all()
    with pytest.raises(ValueError, match="prior=0"):
        calibrate(Y, S, prior=0)
    with pytest.raises(ValueError, match="scores: expected"):
        calibrate(Y, S[:, :3])
    for bad in (np.nan, 1.5, -0.1):
        broken = S.copy()
        broken[3, 1] = bad
        with pytest.raises(ValueError, match=r"scores: expected probabilities in \[0, 1\], got 1 outside"):
            calibrate(Y, broken)
    with pytest.raises(ValueError, match="counts='expected'"):
        cv_thresholds(Y, S, counts="expected")


@pytest.mark.parametrize("weight", [0.0, 1.0, 2.0])
def test_cv_thresholds_calibrated_cut_maximises_the_expected_objective(weight: float) -> None:
    """counts='calibrated': each label's cut maximises micro-F1 + weight x macro-F1 of the labels cut so far, the
    counts being the calibrated probabilities' sums (brute force over every cut, labels in order of frequency); a
    label without held-out positives gets a threshold above every held-out score."""
    Y, S = _calibration_case(2)
    thresholds = cv_thresholds(Y, S, counts="calibrated", macro_weight=weight, floor=1e-9, prior=5.0)
    Q = calibrate(Y, S, prior=5.0)
    totals = np.zeros(3)
    for done, j in enumerate((0, 1, 2), start=1):  # label 3 has no positive
        candidates = np.r_[np.sort(S[:, j]), np.inf]

        def counts(t: float, j: int = j) -> np.ndarray:
            cut = S[:, j] >= t
            return np.array([Q[cut, j].sum(), (1 - Q[cut, j]).sum(), Q[~cut, j].sum()])

        def objective(t: float) -> float:
            tp, fp, fn = counts(t) + totals
            own = counts(t)
            return 2 * tp / (2 * tp + fp + fn) + weight * 2 * own[0] / (2 * own[0] + own[1] + own[2]) / done

        best = max(objective(t) for t in candidates)
        assert objective(thresholds[j]) == pytest.approx(best), j
        totals += counts(thresholds[j])
    assert thresholds[3] > S[:, 3].max()


def test_calibrated_counts_refuse_the_fbr_settings() -> None:
    """The SCutfbr settings belong to the observed counts: given with the calibrated ones they are refused by name,
    not ignored; an unknown count or a bad prior is refused too."""
    for settings, name in (({"fbr": 0.2}, "fbr=0.2"), ({"fallback": "above"}, "fallback='above'"),
                           ({"fbr_positives": None}, "fbr_positives=None")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            T.TrainConfig(**settings).check()  # type: ignore[arg-type]
        T.TrainConfig(cut_counts="observed", **settings).check()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cut_counts='labels'"):
        T.TrainConfig(cut_counts="labels").check()
    with pytest.raises(ValueError, match="calibration_prior=-1"):
        T.TrainConfig(calibration_prior=-1).check()
    svm = T.TrainConfig(optimizer="newton")
    assert T.macro_weight(svm) == 2.0 and T.macro_weight(T.TrainConfig(optimizer="newton", cut_counts="observed")) == 1.0
    assert T.macro_weight(T.TrainConfig(optimizer="newton", linear_loss="logistic")) == 1.0
    assert T.macro_weight(T.TrainConfig(optimizer="adamw")) == 1.0 and T.macro_weight(T.TrainConfig(macro_weight=0.5)) == 0.5
