"""The trainer: public load_run against the scikit-learn estimator's validation, memory (sparse stays sparse, labels
stay sparse), multi-process training under torchrun against one process, and the device option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import softmargin
from softmargin.app import data as D
from softmargin.app import train as T
from softmargin.app.cli import main

PEAK = """
import sys
from softmargin.app.cli import main
code = main(sys.argv[1:])
peak = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print("PEAK", peak, file=sys.stderr)
sys.exit(code)
"""
needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")


def _peak_bytes(argv: list[str], cwd: Path) -> int:
    """Run the command in a fresh process; its peak resident memory (VmHWM), in bytes."""
    done = subprocess.run([sys.executable, "-c", PEAK, *argv], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return int(done.stderr.split("PEAK ")[-1].split()[0])


def _libsvm(path: Path, rows: int, features: int, labels: int, per_row: int, seed: int = 0) -> Path:
    """A learnable XC/LIBSVM file: each row's labels come from one of 50 clusters of the features."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((50, features))
    lines = []
    for _ in range(rows):
        c = int(rng.integers(50))
        ids = sorted({(c * (labels // 50) + int(v)) % labels for v in rng.integers(0, 5, size=rng.integers(1, 4))})
        cols = np.sort(rng.choice(features, per_row, replace=False))
        x = centers[c, cols] + 0.3 * rng.standard_normal(per_row)
        lines.append(",".join(map(str, ids)) + " " + " ".join(f"{j}:{v:.3f}" for j, v in zip(cols, x)))
    path.write_text(f"{rows} {features} {labels}\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def yeast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("yeast")
    assert main(["train", "--model", "linear", "--quiet", "--out", str(out)]) == 0  # Newton: no epochs, one model
    (run,) = out.iterdir()
    return run


# --- load_run ------------------------------------------------------------------------------------------------------


def test_load_run_validates_input_like_the_estimator(yeast_run):
    run = softmargin.load_run(yeast_run)
    _, test = D.load_builtin("yeast")
    proba = run.predict_proba(test.X)
    assert proba.shape == (917, 14) and run.n_features_in_ == 103 and len(run.label_names) == 14
    logits = run.decision_function(test.X)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), proba, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(run.predict(test.X), ((proba >= 0.5) | (proba == proba.max(1, keepdims=True))).astype(int))
    import scipy.sparse as sp

    np.testing.assert_allclose(run.predict_proba(sp.csr_matrix(test.X)), proba, atol=1e-5)
    with pytest.raises(ValueError, match=r"X has 5 features, but RunModel is expecting 103 features"):
        run.predict(test.X[:, :5])
    bad = test.X[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"Input X contains NaN"):
        run.predict_proba(bad)
    with pytest.raises(ValueError, match=r"Expected 2D array, got 1D array"):
        run.decision_function(test.X[0])


def test_load_run_matches_dataframe_columns_by_name(yeast_run):
    pd = pytest.importorskip("pandas")
    run = softmargin.load_run(yeast_run)
    _, test = D.load_builtin("yeast")
    frame = pd.DataFrame(test.X[:20], columns=test.feature_names)
    np.testing.assert_array_equal(run.predict_proba(frame[frame.columns[::-1]]), run.predict_proba(test.X[:20]))
    # a DataFrame's values come Fortran-ordered: the same bits as the C-ordered rows, not one ulp apart
    np.testing.assert_array_equal(run.predict_proba(np.asfortranarray(test.X[:20])), run.predict_proba(test.X[:20]))
    with pytest.raises(ValueError, match=r"X lacks the model's feature column\(s\) \['Att1'\]"):
        run.predict(frame.drop(columns=["Att1"]))


def _timestamps(rows: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Two features 1.6e9 +- 20 (unix times in seconds): float32 holds them to 128 s, a few distinct values of 300."""
    z = np.random.default_rng(0).normal(size=(rows, 2))
    return 1.6e9 + 20 * z, (z > 0).astype(np.uint8)


def test_float32_blurs_matches_numpys_column_statistics():
    X, _ = _timestamps()
    assert T._float32_blurs(X) and not T._float32_blurs(X - 1.6e9)
    assert not T._float32_blurs(X.astype(np.float32)) and not T._float32_blurs(X[:1])  # float32 already; one row
    rng = np.random.default_rng(1)
    for _ in range(20):  # the blockwise mean and variance against numpy's, across block boundaries
        X = rng.normal(size=(int(rng.integers(2, 50)), 3)) * rng.uniform(1e-3, 1e3, 3) + rng.uniform(-1e7, 1e7, 3)
        expected = bool((np.abs(X.mean(0)) * 2.0**-24 > T.BLUR * X.std(0)).any())
        for rows in (1, 3, 1000):
            assert T._float32_blurs(X, block_cells=rows * X.shape[1]) == expected


def test_features_float32_would_blur_train_in_float64():
    """Timestamps 1.6e9 +- 20: cast to float32 before centring, the classifier learned next to nothing (per-cell accuracy
    0.63); centred in float64 first it does as well as on the centred data."""
    X, Y = _timestamps()
    fitted = softmargin.SoftMarginClassifier(random_state=0).fit(X[:200], Y[:200])
    assert (fitted.predict(X[200:]) == Y[200:]).mean() > 0.95
    table = np.column_stack([X, Y])
    dataset = D.Dataset(table[:200, :2], Y[:200], ["t0", "t1"], ["a", "b"], "times")
    model = T.fit(dataset, T.TrainConfig(seed=0, ensemble=1, epochs=30), progress=False)
    assert (model.predict(X[200:]) == Y[200:]).mean() > 0.95


@pytest.mark.parametrize("sparse", [False, True])
def test_features_beyond_float32s_range_are_refused_by_name(sparse):
    """Features of 1e-50 became 0 in float32: the model ignored them and fit silently (0.59 off in probability from
    the same data times 1e50); beyond 3.4e38 they became infinite (an unclear error, or NaN). Refused, named; the
    smallest normal float32 (1.2e-38) and features of 1e-30 still train."""
    import scipy.sparse as sp

    X, Y = _timestamps(100)
    X = np.abs(X - 1.6e9) + 1.0  # positive, so that sparse input holds every value
    config = T.TrainConfig(seed=0, ensemble=1, model="linear", optimizer="lbfgs", C=1.0, standardize="yes")

    def fit(scale):
        features = X * np.array([1.0, scale])
        features = sp.csr_matrix(features) if sparse else features
        return T.fit(D.Dataset(features, Y, ["t0", "t1"], ["a", "b"], "scaled"), config, progress=False)

    with pytest.raises(ValueError, match=r"scaled: feature 't1' \(column 1\) has values of magnitude up to .*e-4\d, below float32's smallest normal"):
        fit(1e-50)
    with pytest.raises(ValueError, match=r"scaled: feature 't1' \(column 1\) has values of magnitude up to .*e\+39, beyond float32's largest"):
        fit(1e38)
    for scale in (2 * np.finfo(np.float32).tiny / X[:, 1].max(), 1e-30, 1e37 / X[:, 1].max()):
        assert np.isfinite(fit(scale).predict_proba(X * np.array([1.0, scale]))).all()


def test_load_run_is_exported_lazily():
    code = "import sys, softmargin; assert 'softmargin.app' not in sys.modules; softmargin.load_run; assert 'softmargin.app' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# --- memory --------------------------------------------------------------------------------------------------------


@needs_proc
@pytest.mark.slow
def test_sparse_features_stay_sparse_in_evaluate_and_predict(tmp_path):
    """50,000 features: a batch made dense would be 2000 x 50000 x 8 bytes = 800 MB; the whole command stays under
    500 MB (about 400 MB of it is importing torch, scikit-learn and matplotlib)."""
    data = _libsvm(tmp_path / "wide.txt", rows=2000, features=50_000, labels=5, per_row=12)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--hidden", "64", "--epochs", "1",
                 "--ensemble", "1", "--quiet"]) == 0  # fmt: skip
    (run,) = (tmp_path / "runs").iterdir()
    assert _peak_bytes(["evaluate", str(run), "--data", str(data)], tmp_path) < 500e6
    assert _peak_bytes(["predict", str(run), "--data", str(data), "--out", str(tmp_path / "p.csv")], tmp_path) < 500e6
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 2001


def test_validation_loss_of_sparse_features_in_parts_equals_the_whole(monkeypatch):
    """Sparse features' validation rows were made dense all at once (3,000 rows of 100,000 features: 1.2 GB); they
    are now made dense VALID_CHUNK_CELLS at a time and the parts' losses weighted by their rows: the same validation
    losses (to float32 rounding) and the same training."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    X = sp.random(400, 50, density=0.1, random_state=0, format="csr", dtype=np.float32)
    Y = (np.asarray(X[:, :4].sum(1)) + 0.2 * rng.standard_normal((400, 1)) > np.array([0.0, 0.05, 0.1, 0.2])).astype(np.uint8)
    data = D.Dataset(X, Y, [str(i) for i in range(50)], [str(i) for i in range(4)])
    config = T.TrainConfig(model="mlp", epochs=4, ensemble=1, hidden=(8,))
    whole = T.fit(data, config, progress=False).history
    monkeypatch.setattr(T, "VALID_CHUNK_CELLS", 50 * 7)  # 7 rows a part: 60 validation rows in 9 parts, the last short
    parts = T.fit(data, config, progress=False).history
    assert [h["train_loss"] for h in parts] == [h["train_loss"] for h in whole]
    np.testing.assert_allclose([h["valid_loss"] for h in parts], [h["valid_loss"] for h in whole], rtol=1e-6)


def test_lbfgs_says_when_it_makes_sparse_features_dense(monkeypatch):
    import scipy.sparse as sp

    X = sp.random(60, 40, density=0.1, random_state=0, format="csr", dtype=np.float32)
    Y = (np.arange(60)[:, None] % np.array([2, 3]) == 0).astype(np.uint8)
    data = D.Dataset(X, Y, [str(i) for i in range(40)], ["a", "b"])
    config = T.TrainConfig(model="linear", optimizer="lbfgs", ensemble=1)
    said: list[str] = []
    T.fit(data, config, progress=False, log=said.append)
    assert not any("L-BFGS is full batch" in s for s in said)
    monkeypatch.setattr(T, "LBFGS_DENSE_NOTICE", 60 * 40)
    T.fit(data, config, progress=False, log=said.append)
    assert any("L-BFGS is full batch: the 60 x 40 sparse features are made dense" in s for s in said), said


@needs_proc
@pytest.mark.slow
def test_100k_labels_train_and_evaluate_without_a_dense_label_matrix(tmp_path):
    """10,000 samples x 100,000 labels: a dense float32 label matrix alone would be 4 GB; training and evaluating
    (one process, fused head) peaks under 1 GB, most of it imports."""
    rows, labels = 10_000, 100_000
    data = _libsvm(tmp_path / "xc.txt", rows=rows, features=100, labels=labels, per_row=20)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--hidden", "16", "--epochs", "1",
            "--ensemble", "1", "--batch-size", "1024", "--valid-fraction", "0.05", "--quiet"]  # fmt: skip
    peak = _peak_bytes(argv, tmp_path)
    assert peak < rows * labels * 4 / 4, f"peak {peak / 1e6:.0f} MB"
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"P@1", "P@5", "nDCG@5", "PSP@5", "micro_f1", "hamming_loss"} <= set(metrics)
    assert D.load_libsvm(data).sparse_labels


def test_evaluate_sparse_agrees_with_the_dense_metrics():
    """The batch-wise metrics for sparse labels against scikit-learn's on the same (small) data."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    Y = (X[:, :6] + 0.5 * rng.standard_normal((300, 6)) > 0.3).astype(np.uint8)
    names = [str(i) for i in range(6)]
    model = T.fit(D.Dataset(X, Y, [str(i) for i in range(8)], names), T.TrainConfig(epochs=5, ensemble=1), progress=False)
    dense, _ = T.evaluate(model, D.Dataset(X, Y, [], names))
    sparse, per_label = T.evaluate(model, D.Dataset(X, sp.csr_matrix(Y), [], names))
    keys = ("hamming_loss", "subset_accuracy", "micro_f1", "macro_f1", "samples_f1", "micro_precision", "micro_recall",
            "macro_precision", "macro_recall", "P@1", "P@3", "P@5", "PSP@1", "PSP@3", "one_error", "macro_f1_train_labels")  # fmt: skip
    for key in keys:
        assert sparse[key] == pytest.approx(dense[key], abs=1e-9), key
    assert [r["support"] for r in per_label] == Y.sum(0).tolist()
    # a caller's CSR matrix with stored zeros (the loaders drop them): they are no positives (review: subset accuracy
    # 0.16 against 0.18 and PSP@1 0.817 against 0.839 while they were counted in each row's true labels)
    stored = sp.csr_matrix(Y)
    rows = np.flatnonzero(Y[:, 0] == 0)[:5]
    stored[rows, 0] = 1
    stored.data[np.isin(np.repeat(np.arange(len(Y)), np.diff(stored.indptr)), rows) & (stored.indices == 0)] = 0
    assert stored.nnz == sp.csr_matrix(Y).nnz + 5 and (stored.toarray() == Y).all()
    with_zeros, _ = T.evaluate(model, D.Dataset(X, stored, [], names))
    assert with_zeros == sparse and stored.nnz == sp.csr_matrix(Y).nnz + 5  # the caller's matrix left as it was
    # dense labels of EVALUATE_DENSE_MAX cells or more take the batch-wise path too (scikit-learn's metrics over the
    # whole matrix took 22 s for 100 x 100,000 labels): the same numbers, without the ranking metrics over all labels
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as m:
        m.setattr(T, "EVALUATE_DENSE_MAX", Y.size)
        large, _ = T.evaluate(model, D.Dataset(X, Y, [], names))
    assert large == sparse and "lrap" in dense and "lrap" not in large


# --- multi-process training (torchrun) -----------------------------------------------------------------------------


def _torchrun(processes: int, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "softmargin", *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_two_gloo_processes_match_one_on_yeast(tmp_path):
    """Data-parallel DDP, same global batch: each process takes half of each batch of 64 and the gradients are
    averaged, which is the one-process gradient up to float32 rounding. Tolerance: 0.005 on Hamming loss, micro-F1
    and LRAP after 20 epochs of the linear model (dropout would draw other masks on two processes)."""
    argv = ["train", "--model", "linear", "--epochs", "20", "--ensemble", "1", "--valid-fraction", "0", "--quiet", "--threads", "1"]
    one = _torchrun(1, argv + ["--out", "one"], tmp_path)
    two = _torchrun(2, argv + ["--out", "two"], tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    runs = {name: list((tmp_path / name).iterdir()) for name in ("one", "two")}
    assert len(runs["two"]) == 1, "only rank 0 writes a run folder"
    assert two.stdout.count("run folder:") == 1, "only rank 0 prints"
    # torch 2.13's DDP warned, once on each process, that broadcast_buffers is deprecated
    assert "softmargin train: warning" not in two.stderr, two.stderr[-3000:]
    first, second = (json.loads((runs[n][0] / "metrics.json").read_text()) for n in ("one", "two"))
    print({key: (first[key], second[key]) for key in ("hamming_loss", "micro_f1", "lrap")})
    for key in ("hamming_loss", "micro_f1", "lrap"):
        assert abs(first[key] - second[key]) <= 0.005, (key, first[key], second[key])


@pytest.mark.slow
def test_a_diverged_run_stops_every_process(tmp_path):
    """The divergence check (no epoch beats the untrained network) is decided once for all ranks: each data-parallel
    rank's training loss is its own part's, and a rank that stopped alone would leave the others waiting."""
    argv = ["train", "--epochs", "5", "--lr", "100", "--ensemble", "1", "--quiet", "--threads", "1", "--out", "runs"]
    two = _torchrun(2, argv, tmp_path)
    assert two.returncode != 0
    assert two.stderr.count("every epoch was worse than the untrained network's loss") == 2, two.stderr[-3000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_two_processes_split_the_labels_of_a_fused_head(tmp_path):
    """From 512 labels the head is fused; under torchrun each process holds half of the output layer and sees the
    whole batch (label-parallel), initialised as one process would, so the result matches one process closely
    (tolerance 0.005 on P@1, micro-F1, measured on a --test file); rank 0 alone writes the run folder. (This replaced
    a run on delicious, 983 labels, the same path at 29 s of CI.)"""
    header, *lines = _libsvm(tmp_path / "xc.txt", rows=2000, features=60, labels=600, per_row=20).read_text().splitlines()
    for name, part in (("train", lines[:1500]), ("test", lines[1500:])):
        (tmp_path / f"{name}.txt").write_text(f"{len(part)} 60 600\n" + "\n".join(part) + "\n")
    argv = ["train", "--data", "train.txt", "--test", "test.txt", "--hidden", "32", "--epochs", "20", "--lr", "0.01",
            "--ensemble", "1", "--dropout", "0", "--threads", "1"]  # fmt: skip
    one = _torchrun(1, argv + ["--out", "one", "--quiet"], tmp_path)
    two = _torchrun(2, argv + ["--out", "two"], tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert "label-parallel fused head: 600 labels in 2 shards (rank 0: labels 0:300)" in two.stderr
    (run,) = (tmp_path / "two").iterdir()
    assert json.loads((run / "model.json").read_text())["label_names"][:2] == ["0", "1"]
    first, second = (json.loads((next((tmp_path / n).iterdir()) / "metrics.json").read_text()) for n in ("one", "two"))
    print({key: (first[key], second[key]) for key in ("P@1", "micro_f1")})
    assert first["P@1"] > 0.2, "the comparison means something only if the model learned"
    for key in ("P@1", "micro_f1"):
        assert abs(first[key] - second[key]) <= 0.005, (key, first[key], second[key])


# --- device --------------------------------------------------------------------------------------------------------


def test_device_auto_resolves_to_what_is_there():
    assert T.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert T.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device='gpu': expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        T.resolve_device("gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_evaluate_predict_on_cuda_match_the_cpu(tmp_path, yeast_run, capsys):
    assert main(["train", "--device", "cuda", "--epochs", "3", "--ensemble", "2", "--quiet", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    outputs = {}
    for device in ("cpu", "cuda"):
        assert main(["predict", str(yeast_run), "--data", "yeast", "--out", "-", "--device", device]) == 0
        outputs[device] = np.loadtxt(capsys.readouterr().out.splitlines(), delimiter=",", skiprows=1)
    np.testing.assert_allclose(outputs["cuda"], outputs["cpu"], atol=2e-6)


def test_a_child_forked_during_a_fit_can_fit():
    """Fits take turns through ``T.TORCH_GLOBALS``; a child forked while a thread of its parent held it (a fork
    ``multiprocessing`` pool started beside a fitting thread) gets a lock of its own, not a copy nobody releases."""
    import threading
    import warnings

    holding, release = threading.Event(), threading.Event()

    def fitting():
        with T.TORCH_GLOBALS:
            holding.set()
            release.wait(60)

    thread = threading.Thread(target=fitting)
    thread.start()
    holding.wait(60)
    try:
        with warnings.catch_warnings():  # Python 3.12+ warns of a fork beside threads: this test's very subject
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: only the lock, then out without running the parent's clean-up
            os._exit(0 if T.TORCH_GLOBALS.acquire(timeout=10) else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0
