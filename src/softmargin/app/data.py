"""Multi-label data sets: the built-in yeast, MULAN ARFF (dense and sparse), LIBSVM / extreme-classification text,
and CSV with named label columns.

Every loader returns a :class:`Dataset`: features ``X`` (a dense float32 array, or a scipy.sparse CSR matrix when the
file is sparse: sparse stays sparse), labels ``Y`` (uint8, shape (N, L)) and their names. A malformed file raises
:class:`DataError` naming the file, the line and what was expected there.
"""

from __future__ import annotations

import csv
import gzip
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

BUILTIN = ("yeast",)


class DataError(ValueError):
    """A data file that does not parse: the message names the file, the line and what was expected."""


@dataclass
class Dataset:
    X: Any  # np.ndarray (float32) or scipy.sparse.csr_matrix
    Y: np.ndarray  # uint8, (N, L)
    feature_names: list[str] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    name: str = ""

    @property
    def sparse(self) -> bool:
        return sp.issparse(self.X)

    def __len__(self) -> int:
        return int(self.Y.shape[0])

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(self.X[index], self.Y[index], self.feature_names, self.label_names, self.name)

    def describe(self) -> str:
        density = self.Y.mean() if self.Y.size else 0.0
        kind = "sparse" if self.sparse else "dense"
        return (
            f"{self.name or 'data'}: {len(self)} samples, {self.X.shape[1]} {kind} features, {self.Y.shape[1]} labels, "
            f"label cardinality {self.Y.sum(1).mean():.3f}, density {density:.3f}"
        )


# --- built-in ------------------------------------------------------------------------------------------------------


def load_builtin(name: str) -> tuple[Dataset, Dataset]:
    """(train, test) of a built-in data set in its standard split. ``yeast``: MULAN's 1500/917 split.

    Yeast comes from the copy the ``river`` package ships (``river/datasets/yeast.csv.gz``, the MULAN data set:
    OpenML 40597), which holds MULAN's 917 test rows first and then the 1500 training rows (checked against MULAN's
    own files in the tests).
    """
    if name != "yeast":
        raise ValueError(f"data={name!r} is not a built-in data set: expected one of {', '.join(BUILTIN)} or a file")
    try:
        import river.datasets
    except ImportError as exc:  # pragma: no cover - river is a dependency of the trainer
        raise ImportError("the built-in yeast data set comes with the 'river' package: pip install river") from exc
    path = Path(river.datasets.__file__).with_name("yeast.csv.gz")
    with gzip.open(path, "rt") as f:
        header = f.readline().strip().split(",")
        values = np.loadtxt(f, delimiter=",", dtype=np.float64)
    labels = [i for i, h in enumerate(header) if h.startswith("Class")]
    features = [i for i in range(len(header)) if i not in labels]
    data = Dataset(
        values[:, features].astype(np.float32),
        values[:, labels].astype(np.uint8),
        [header[i] for i in features],
        [header[i] for i in labels],
        "yeast",
    )
    num_test = 917
    return data.subset(np.arange(num_test, len(data))), data.subset(np.arange(num_test))


# --- ARFF ----------------------------------------------------------------------------------------------------------

_ATTRIBUTE = re.compile(r"@attribute\s+('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)\s+(.+)$", re.IGNORECASE)


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def mulan_labels(xml_path: str | Path) -> list[str]:
    """The label names listed in a MULAN XML file (``<labels><label name="..."/>...</labels>``)."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{xml_path}: not a readable MULAN label XML file ({exc})") from None
    names = [el.attrib["name"] for el in root.iter() if el.tag.split("}")[-1] == "label" and "name" in el.attrib]
    if not names:
        raise DataError(f"{xml_path}: no <label name=...> element: expected MULAN's label XML")
    return names


def load_arff(path: str | Path, labels: Sequence[str] | None = None, xml: str | Path | None = None) -> Dataset:
    """A MULAN ARFF file, dense or sparse (``{index value, ...}`` rows).

    The label attributes are named by ``labels``, else by ``xml`` (MULAN's XML file), else by the ``.xml`` file next
    to the ARFF whose name is the ARFF's up to its last ``-`` (``yeast-train.arff`` -> ``yeast.xml``).
    """
    path = Path(path)
    if labels is None:
        xml = Path(xml) if xml else _sibling_xml(path)
        if xml is None:
            raise DataError(f"{path}: which attributes are labels? Pass --labels or the MULAN XML file (--xml)")
        labels = mulan_labels(xml)
    names: list[str] = []
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    dense_rows: list[list[float]] = []
    sparse = None
    with open(path, encoding="utf-8", errors="replace") as f:
        in_data = False
        row = 0
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("%"):
                continue
            if not in_data:
                lower = line.lower()
                if lower.startswith("@attribute"):
                    match = _ATTRIBUTE.match(line)
                    if not match:
                        raise DataError(f"{path}:{number}: expected '@attribute NAME TYPE', got {line[:80]!r}")
                    kind = match.group(2).strip().lower()
                    if not (kind in ("numeric", "real", "integer") or kind.startswith("{")):
                        raise DataError(f"{path}:{number}: attribute type {kind!r} is not numeric or {{0,1}}")
                    names.append(_unquote(match.group(1)))
                elif lower.startswith("@data"):
                    in_data = True
                continue
            is_sparse = line.startswith("{")
            if sparse is None:
                sparse = is_sparse
            elif sparse != is_sparse:
                raise DataError(f"{path}:{number}: a {'sparse' if is_sparse else 'dense'} row in a {'sparse' if sparse else 'dense'} file")
            try:
                if is_sparse:
                    body = line[1:line.rindex("}")].strip()
                    for item in body.split(",") if body else []:
                        index, value = item.split()
                        rows.append(row)
                        cols.append(int(index))
                        vals.append(float(value))
                else:
                    values = [float(v) for v in line.split(",")]
                    if len(values) != len(names):
                        raise ValueError(f"{len(values)} values for {len(names)} attributes")
                    dense_rows.append(values)
            except ValueError as exc:
                expected = "'{index value, ...}'" if is_sparse else f"{len(names)} comma-separated numbers"
                raise DataError(f"{path}:{number}: expected {expected} ({exc}); got {line[:80]!r}") from None
            row += 1
    if not names:
        raise DataError(f"{path}: no @attribute lines: not an ARFF file")
    position = {name: i for i, name in enumerate(names)}
    missing = [label for label in labels if label not in position]
    if missing:
        raise DataError(f"{path}: label attribute(s) {missing[:5]} not in the file's {len(names)} attributes")
    label_index = sorted(position[label] for label in labels)  # in the file's order, whatever the XML's
    labels = [names[i] for i in label_index]
    feature_index = [i for i in range(len(names)) if i not in set(label_index)]
    if sparse:
        matrix = sp.csr_matrix((vals, (rows, cols)), shape=(row, len(names)), dtype=np.float32)
        if cols and max(cols) >= len(names):
            raise DataError(f"{path}: a sparse index {max(cols)} is beyond the {len(names)} attributes")
        X = matrix[:, feature_index].tocsr()
        Y = matrix[:, label_index].toarray()
    else:
        matrix = np.asarray(dense_rows, dtype=np.float64).reshape(row, len(names))
        X = matrix[:, feature_index].astype(np.float32)
        Y = matrix[:, label_index]
    if not np.isin(Y, (0, 1)).all():
        raise DataError(f"{path}: label attributes hold values other than 0 and 1")
    return Dataset(X, Y.astype(np.uint8), [names[i] for i in feature_index], list(labels), path.stem)


def _sibling_xml(path: Path) -> Path | None:
    stem = path.stem
    candidates = [path.with_suffix(".xml")]
    if "-" in stem:
        candidates.append(path.with_name(stem.rsplit("-", 1)[0] + ".xml"))
    return next((c for c in candidates if c.exists()), None)


# --- LIBSVM / extreme classification -------------------------------------------------------------------------------


def load_libsvm(path: str | Path, num_features: int | None = None, num_labels: int | None = None) -> Dataset:
    """The multi-label LIBSVM format ``l1,l2 idx:val idx:val ...`` (0-based label ids), with or without the
    extreme-classification repository's header line ``N F L``. Features stay sparse (CSR)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    first = 0
    if text and re.fullmatch(r"\s*\d+\s+\d+\s+\d+\s*", text[0]):
        _, header_features, header_labels = (int(v) for v in text[0].split())
        num_features = num_features or header_features
        num_labels = num_labels or header_labels
        first = 1
    indptr, indices, values, label_lists = [0], [], [], []
    for number, line in enumerate(text[first:], first + 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if ":" in parts[0]:
            label_field, features = "", parts
        else:
            label_field, features = parts[0], parts[1:]
        try:
            label_lists.append([int(v) for v in label_field.split(",") if v != ""])
            for item in features:
                index, value = item.split(":")
                indices.append(int(index))
                values.append(float(value))
        except ValueError:
            raise DataError(
                f"{path}:{number}: expected 'l1,l2,... idx:val idx:val ...' with integer labels and indices; "
                f"got {line[:80]!r}"
            ) from None
        indptr.append(len(indices))
    width = max(num_features or 0, (max(indices) + 1) if indices else 0)
    height = max(num_labels or 0, max((max(ls) + 1 for ls in label_lists if ls), default=0))
    X = sp.csr_matrix((np.asarray(values, np.float32), indices, indptr), shape=(len(label_lists), width))
    Y = np.zeros((len(label_lists), height), dtype=np.uint8)
    for i, labels in enumerate(label_lists):
        Y[i, labels] = 1
    return Dataset(X, Y, [str(i) for i in range(width)], [str(i) for i in range(height)], path.stem)


# --- CSV -----------------------------------------------------------------------------------------------------------


def load_csv(path: str | Path, labels: Sequence[str]) -> Dataset:
    """A CSV file with a header row; ``labels`` names the 0/1 label columns, every other column is a feature."""
    path = Path(path)
    if not labels:
        raise DataError(f"{path}: a CSV file needs --labels naming its label columns")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}:1: expected a header row, the file is empty") from None
        missing = [label for label in labels if label not in header]
        if missing:
            raise DataError(f"{path}:1: label column(s) {missing[:5]} not in the header {header[:10]}")
        rows = []
        for number, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{number}: expected {len(header)} fields as in the header, got {len(row)}")
            try:
                rows.append([float(v) for v in row])
            except ValueError as exc:
                raise DataError(f"{path}:{number}: expected numbers ({exc})") from None
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    label_index = [header.index(label) for label in labels]
    feature_index = [i for i in range(len(header)) if i not in set(label_index)]
    Y = matrix[:, label_index]
    if not np.isin(Y, (0, 1)).all():
        raise DataError(f"{path}: label columns hold values other than 0 and 1")
    return Dataset(
        matrix[:, feature_index].astype(np.float32), Y.astype(np.uint8),
        [header[i] for i in feature_index], list(labels), path.stem,
    )  # fmt: skip


# --- dispatch ------------------------------------------------------------------------------------------------------


def load(spec: str, labels: Sequence[str] | None = None, xml: str | None = None) -> Dataset:
    """One file, by its extension: ``.arff``, ``.csv``, anything else LIBSVM text."""
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--data {spec!r}: no such file, and not a built-in data set ({', '.join(BUILTIN)})")
    suffix = path.suffix.lower()
    if suffix == ".arff":
        return load_arff(path, labels, xml)
    if suffix == ".csv":
        return load_csv(path, labels or [])
    return load_libsvm(path)


def load_train_test(
    data: str, test: str | None = None, labels: Sequence[str] | None = None, xml: str | None = None
) -> tuple[Dataset, Dataset | None]:
    """(train, test): a built-in name gives its standard split; a file gives (it, ``test`` or None)."""
    if data in BUILTIN:
        return load_builtin(data)
    train = load(data, labels, xml)
    test_set = load(test, labels or (train.label_names if test and test.endswith(".csv") else labels), xml) if test else None
    if test_set is not None:
        _align(train, test_set)
    return train, test_set


def _align(train: Dataset, test: Dataset) -> None:
    if train.Y.shape[1] != test.Y.shape[1]:
        width = max(train.Y.shape[1], test.Y.shape[1])  # LIBSVM files may not mention the last labels
        for d in (train, test):
            d.Y = np.pad(d.Y, ((0, 0), (0, width - d.Y.shape[1])))
            d.label_names = [str(i) for i in range(width)] if d.label_names and d.label_names[0] == "0" else d.label_names
    if train.X.shape[1] != test.X.shape[1]:
        width = max(train.X.shape[1], test.X.shape[1])
        for d in (train, test):
            if d.X.shape[1] < width:
                if not d.sparse:
                    raise DataError(f"train has {train.X.shape[1]} features, test {test.X.shape[1]}: expected the same")
                d.X = sp.csr_matrix((d.X.data, d.X.indices, d.X.indptr), shape=(d.X.shape[0], width))
