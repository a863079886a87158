"""Multi-label data sets: the built-in yeast, MULAN ARFF (dense and sparse), LIBSVM / extreme-classification text,
and CSV with named label columns.

Every loader returns a :class:`Dataset`: features ``X`` (a dense float32 array, or a scipy.sparse CSR matrix when the
file is sparse: sparse stays sparse), labels ``Y`` (uint8, shape (N, L): dense, or a CSR matrix for large label sets:
the positives only, never N x L) and the names of both. A malformed file raises :class:`DataError` naming the file,
the line and what was expected there; so does a missing, NaN or infinite feature value, one beyond float32's range,
an index given twice in a row, and a label other than 0/1. Text is UTF-8 (a byte-order mark is skipped).

Columns are identified by name: :func:`align` reorders a later file's features and labels to a model's, and says
which are missing or extra. (LIBSVM columns are named by their index, so a file that never mentions the last
features or labels still matches.)
"""

from __future__ import annotations

import csv
import gzip
import math
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


#: From this many label cells (N x L) on, LIBSVM labels stay a sparse CSR matrix.
SPARSE_LABELS_FROM = 1 << 26
#: Without an ``N F L`` header, a LIBSVM feature or label index at or above this is taken for a broken file.
MAX_INDEX_WITHOUT_HEADER = 1 << 24
#: The largest float32. A feature value from float32's max plus half its last step on (2**128 - 2**103) would become
#: inf in the float32 features, so it is refused; one in between rounds to the max (``3.4028235e+38`` reads back).
FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


@dataclass
class Dataset:
    """Features ``X`` (N, F), labels ``Y`` (N, L) or None (unlabeled data, for ``predict``) and their names."""

    X: Any  # np.ndarray (float32) or scipy.sparse.csr_matrix
    Y: Any  # np.ndarray (uint8, (N, L)), scipy.sparse.csr_matrix (uint8) for large label sets, or None (unlabeled)
    feature_names: list[str] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    name: str = ""
    path: str | None = None  # the file it was read from (None: built in)
    positional: bool = False  # columns named by their index (LIBSVM): a later file may omit the last ones
    # label columns asked for that the file lacks (it was then read as unlabeled, for predict): what evaluate reports
    missing_labels: list[str] = field(default_factory=list)

    @property
    def sparse(self) -> bool:
        return sp.issparse(self.X)

    @property
    def sparse_labels(self) -> bool:
        return sp.issparse(self.Y)

    @property
    def labeled(self) -> bool:
        return self.Y is not None

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def subset(self, index: np.ndarray) -> Dataset:
        Y = None if self.Y is None else self.Y[index]
        return Dataset(
            self.X[index], Y, self.feature_names, self.label_names, self.name, self.path, self.positional,
            self.missing_labels,
        )  # fmt: skip

    def label_counts(self) -> np.ndarray:
        """Positives per label, (L,) int64."""
        return np.asarray(self.Y.sum(0), dtype=np.int64).ravel()

    def describe(self) -> str:
        kind = "sparse" if self.sparse else "dense"
        text = f"{self.name or 'data'}: {len(self)} samples, {self.X.shape[1]} {kind} features"
        if self.Y is None:
            return text + ", no labels"
        positives = float(self.Y.sum())
        cardinality = positives / max(len(self), 1)
        density = positives / max(len(self) * self.Y.shape[1], 1)
        return text + f", {self.Y.shape[1]} labels, label cardinality {cardinality:.3f}, density {density:.3f}"


def _check_unique(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{what} names {name!r} twice: expected each name once")
        seen.add(name)


def _in_float32(values: np.ndarray) -> np.ndarray:
    """Where ``values`` (float64) stay finite as float32: False for missing, NaN, infinite and too large values."""
    return np.abs(values) < _FLOAT32_OVERFLOW  # NaN compares False


def _beyond_float32(value: float) -> str:
    return f"{value}, beyond float32's range: expected a magnitude of at most {FLOAT32_MAX:.8g} (rescale the feature)"


def _check_finite(path: Path, X: Any, lines: Sequence[int], names: Sequence[str]) -> None:
    """A missing (``?``), NaN or infinite feature value, or one that float32 cannot hold (it would become inf), is an
    error naming the file, the line and the column. ``X``: float64, checked before the cast to float32."""
    values = X.data if sp.issparse(X) else X
    if _in_float32(values).all():
        return
    if sp.issparse(X):
        coo = X.tocoo()
        bad = np.flatnonzero(~_in_float32(coo.data))
        order = np.lexsort((coo.col[bad], coo.row[bad]))[0]
        row, col = int(coo.row[bad][order]), int(coo.col[bad][order])
    else:
        row, col = (int(v) for v in np.argwhere(~_in_float32(X))[0])
    value = X[row, col]
    if np.isfinite(value):
        raise DataError(f"{path}:{lines[row]}: feature {names[col]!r} is {_beyond_float32(value)}")
    raise DataError(
        f"{path}:{lines[row]}: feature {names[col]!r} is {value}: expected a finite number (no missing, NaN or "
        "infinite values; impute or drop them first)"
    )


def _repeated(items: Sequence[int]) -> int:
    """The first item that comes twice in ``items`` (called once a set of them came out shorter)."""
    seen: set[int] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    raise ValueError("no item comes twice")  # pragma: no cover - only called when one does


def _not_utf8(path: Path) -> DataError:
    """The error for a file that is not UTF-8, naming the line and the first byte that is not."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = re.split(rb"\r\n|\r|\n", raw[: exc.start])
        where = len(before[-1].decode("utf-8")) + 1
        return DataError(
            f"{path}:{len(before)}: byte {raw[exc.start]:#04x} at character {where} is not UTF-8: expected a UTF-8 text "
            "file (save it as 'CSV UTF-8', or convert it, e.g. iconv -f latin1 -t utf-8)"
        )
    return DataError(f"{path}: expected a UTF-8 text file")  # pragma: no cover - called on a decoding error


def _check_binary(path: Path, Y: np.ndarray, lines: Sequence[int], names: Sequence[str]) -> None:
    bad = np.argwhere(~np.isin(Y, (0, 1)))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise DataError(f"{path}:{lines[row]}: label {names[col]!r} is {Y[row, col]}: expected 0 or 1")


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


def _number(text: str) -> float:
    """An ARFF/CSV value: a number, or ``?`` / empty for a missing one (NaN; rejected where it matters)."""
    text = text.strip()
    return math.nan if text in ("?", "") else float(text)


def mulan_labels(xml_path: str | Path) -> list[str]:
    """The label names listed in a MULAN XML file (``<labels><label name="..."/>...</labels>``)."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{xml_path}: not a readable MULAN label XML file ({exc})") from None
    names = [el.attrib["name"] for el in root.iter() if el.tag.split("}")[-1] == "label" and "name" in el.attrib]
    if not names:
        raise DataError(f"{xml_path}: no <label name=...> element: expected MULAN's label XML")
    _check_unique(names, str(xml_path))
    return names


def _read_arff(path: Path) -> tuple[list[str], Any, list[int]]:
    """(attribute names, values (N, A) float64, dense or CSR, NaN where missing, the line of each row)."""
    names: list[str] = []
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    dense_rows: list[list[float]] = []
    lines: list[int] = []
    sparse = None
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        in_data = False
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
                    name = _unquote(match.group(1))
                    if name in names:
                        raise DataError(f"{path}:{number}: attribute {name!r} is declared twice")
                    names.append(name)
                elif lower.startswith("@data"):
                    in_data = True
                continue
            is_sparse = line.startswith("{")
            if sparse is None:
                sparse = is_sparse
            elif sparse != is_sparse:
                raise DataError(f"{path}:{number}: a {'sparse' if is_sparse else 'dense'} row in a {'sparse' if sparse else 'dense'} file")
            first = len(cols)
            try:
                if is_sparse:
                    body = line[1:line.rindex("}")].strip()
                    for item in body.split(",") if body else []:
                        index_text, value = item.split()
                        index = int(index_text)
                        if not 0 <= index < len(names):
                            raise ValueError(f"index {index} is outside the {len(names)} attributes")
                        rows.append(len(lines))
                        cols.append(index)
                        vals.append(_number(value))
                else:
                    values = [_number(v) for v in line.split(",")]
                    if len(values) != len(names):
                        raise ValueError(f"{len(values)} values for {len(names)} attributes")
                    dense_rows.append(values)
            except ValueError as exc:
                expected = "'{index value, ...}'" if is_sparse else f"{len(names)} comma-separated numbers"
                raise DataError(f"{path}:{number}: expected {expected} ({exc}); got {line[:80]!r}") from None
            if is_sparse and len(set(cols[first:])) != len(cols) - first:
                twice = _repeated(cols[first:])
                raise DataError(
                    f"{path}:{number}: attribute {names[twice]!r} (index {twice}) is given twice in the row: expected "
                    "each index once (values are not summed)"
                )
            lines.append(number)
    if not names:
        raise DataError(f"{path}: no @attribute lines: not an ARFF file")
    if sparse:
        matrix: Any = sp.csr_matrix((vals, (rows, cols)), shape=(len(lines), len(names)), dtype=np.float64)
    else:
        matrix = np.asarray(dense_rows, dtype=np.float64).reshape(len(lines), len(names))
    return names, matrix, lines


def _columns(path: Path, names: list[str], wanted: Sequence[str], what: str) -> list[int]:
    position = {name: i for i, name in enumerate(names)}
    missing = [name for name in wanted if name not in position]
    if missing:
        raise DataError(f"{path}: {what} {missing[:5]}{' ...' if len(missing) > 5 else ''} not in the file's columns {names[:8]}{' ...' if len(names) > 8 else ''}")
    return [position[name] for name in wanted]


def _dataset(
    path: Path, names: list[str], matrix: Any, lines: list[int], labels: Sequence[str] | None,
    features: Sequence[str] | None, keep_label_order: bool,
) -> Dataset:  # fmt: skip
    """Split a table's columns into features and labels. ``features`` (a model's feature names): exactly those, in
    that order, and labels only if all of ``labels`` are present (else unlabeled data)."""
    if labels is not None:
        _check_unique(labels, "--labels")
    missing_labels: list[str] = []
    if features is not None:
        feature_index = _columns(path, names, features, "feature column(s)")
        if labels is not None and not all(label in names for label in labels):
            missing_labels = [label for label in labels if label not in names]
            labels = None  # unlabeled data, for predict
    if labels is not None:
        label_index = _columns(path, names, labels, "label column(s)")
        if not keep_label_order:
            label_index = sorted(label_index)  # in the file's order, whatever the XML's
    else:
        label_index = []
    if features is None:
        taken = set(label_index)
        feature_index = [i for i in range(len(names)) if i not in taken]
    X = matrix[:, feature_index]
    _check_finite(path, X, lines, [names[i] for i in feature_index])  # before the cast, which would make inf
    X = X.tocsr().astype(np.float32) if sp.issparse(X) else X.astype(np.float32)
    Y = None
    if labels is not None:
        Y = matrix[:, label_index]
        Y = Y.toarray() if sp.issparse(Y) else Y
        _check_binary(path, Y, lines, [names[i] for i in label_index])
        Y = Y.astype(np.uint8)
    label_names = [names[i] for i in label_index]
    feature_names = [names[i] for i in feature_index]
    return Dataset(X, Y, feature_names, label_names, path.stem, str(path), missing_labels=missing_labels)


def load_arff(
    path: str | Path, labels: Sequence[str] | None = None, xml: str | Path | None = None,
    features: Sequence[str] | None = None,
) -> Dataset:  # fmt: skip
    """A MULAN ARFF file, dense or sparse (``{index value, ...}`` rows).

    The label attributes are named by ``labels``, else by ``xml`` (MULAN's XML file), else by the ``.xml`` file next
    to the ARFF whose name is the ARFF's up to its last ``-`` (``yeast-train.arff`` -> ``yeast.xml``). With
    ``features`` (a trained model's feature names) the file may lack the label attributes (unlabeled data).
    """
    path = Path(path)
    if labels is None:
        xml = Path(xml) if xml else _sibling_xml(path)
        if xml is not None:
            labels = mulan_labels(xml)
        elif features is None:
            raise DataError(f"{path}: which attributes are labels? Pass --labels or the MULAN XML file (--xml)")
    names, matrix, lines = _read_arff(path)
    return _dataset(path, names, matrix, lines, labels, features, keep_label_order=False)


def _sibling_xml(path: Path) -> Path | None:
    stem = path.stem
    candidates = [path.with_suffix(".xml")]
    if "-" in stem:
        candidates.append(path.with_name(stem.rsplit("-", 1)[0] + ".xml"))
    return next((c for c in candidates if c.exists()), None)


# --- LIBSVM / extreme classification -------------------------------------------------------------------------------


def load_libsvm(path: str | Path) -> Dataset:
    """The multi-label LIBSVM format ``l1,l2 idx:val idx:val ...`` (0-based label ids and feature indices), with or
    without the extreme-classification repository's header line ``N F L``. Features stay sparse (CSR); labels too
    when there are many (from :data:`SPARSE_LABELS_FROM` cells). Columns are named by their index.

    With a header, the file must hold N rows and its indices must be below F and L; without one, an index from
    :data:`MAX_INDEX_WITHOUT_HEADER` on is taken for a typo (it would make a huge model).
    """
    path = Path(path)
    header: tuple[int, int, int] | None = None
    indptr, label_ptr = [0], [0]
    indices: list[int] = []
    values: list[float] = []
    label_ids: list[int] = []
    lines: list[int] = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if number == 1 and re.fullmatch(r"\d+\s+\d+\s+\d+", line):
                header = tuple(int(v) for v in line.split())  # type: ignore[assignment]
                continue
            parts = line.split()
            label_field, features = ("", parts) if ":" in parts[0] else (parts[0], parts[1:])
            try:
                row_labels = [int(v) for v in label_field.split(",") if v != ""]
                row_features = [(int(i), float(v)) for i, v in (item.split(":") for item in features)]
            except ValueError:
                raise DataError(
                    f"{path}:{number}: expected 'l1,l2,... idx:val idx:val ...' with integer labels and indices; "
                    f"got {line[:80]!r}"
                ) from None
            num_features = header[1] if header else MAX_INDEX_WITHOUT_HEADER
            num_labels = header[2] if header else MAX_INDEX_WITHOUT_HEADER
            for label in row_labels:
                if not 0 <= label < num_labels:
                    raise DataError(f"{path}:{number}: label {label}: {_range_hint(num_labels, header, 'L')}")
            if len(set(row_labels)) != len(row_labels):
                twice = _repeated(row_labels)
                raise DataError(f"{path}:{number}: label {twice} is listed twice: expected each label once")
            for index, value in row_features:
                if not 0 <= index < num_features:
                    raise DataError(f"{path}:{number}: feature index {index}: {_range_hint(num_features, header, 'F')}")
                if not math.isfinite(value):
                    raise DataError(f"{path}:{number}: feature {index} is {value}: expected a finite number")
                if abs(value) >= _FLOAT32_OVERFLOW:
                    raise DataError(f"{path}:{number}: feature {index} is {_beyond_float32(value)}")
            row_indices = [i for i, _ in row_features]
            if len(set(row_indices)) != len(row_indices):
                raise DataError(
                    f"{path}:{number}: feature index {_repeated(row_indices)} is given twice: expected each index once "
                    "(values are not summed)"
                )
            label_ids.extend(sorted(row_labels))
            label_ptr.append(len(label_ids))
            indices.extend(row_indices)
            values.extend(v for _, v in row_features)
            indptr.append(len(indices))
            lines.append(number)
    if header is not None and header[0] != len(lines):
        raise DataError(f"{path}:1: the header says {header[0]} samples, the file holds {len(lines)}")
    width = header[1] if header else (max(indices) + 1 if indices else 0)
    height = header[2] if header else (max(label_ids) + 1 if label_ids else 0)
    X = sp.csr_matrix((np.asarray(values, np.float32), indices, indptr), shape=(len(lines), width))
    X.sort_indices()
    Y: Any = sp.csr_matrix(
        (np.ones(len(label_ids), np.uint8), np.asarray(label_ids, np.int64), np.asarray(label_ptr, np.int64)),
        shape=(len(lines), height),
    )
    if len(lines) * height < SPARSE_LABELS_FROM:
        Y = Y.toarray()
    return Dataset(X, Y, [str(i) for i in range(width)], [str(i) for i in range(height)], path.stem, str(path), True)


def _range_hint(limit: int, header: Any, letter: str) -> str:
    if header:
        return f"expected 0 <= index < {limit} as the header 'N F L' says ({letter} = {limit}); ids are 0-based"
    return f"expected 0 <= index < {limit} (ids are 0-based; give the file an 'N F L' header line for larger ones)"


# --- CSV -----------------------------------------------------------------------------------------------------------


def load_csv(path: str | Path, labels: Sequence[str] | None, features: Sequence[str] | None = None) -> Dataset:
    """A CSV file with a header row; ``labels`` names the 0/1 label columns, every other column is a feature. With
    ``features`` (a trained model's feature names) the file may lack the label columns (unlabeled data)."""
    path = Path(path)
    if not labels and features is None:
        raise DataError(f"{path}: a CSV file needs --labels naming its label columns")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: skips Excel's byte-order mark
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{path}:1: expected a header row, the file is empty") from None
            header = [h.strip() for h in header]
            _check_unique(header, f"{path}:1: the header")
            rows, lines = [], []
            for row in reader:
                number = reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}:{number}: expected {len(header)} fields as in the header, got {len(row)}")
                try:
                    rows.append([_number(v) for v in row])
                except ValueError as exc:
                    raise DataError(f"{path}:{number}: expected numbers ({exc})") from None
                lines.append(number)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    return _dataset(path, header, matrix, lines, list(labels) if labels else None, features, keep_label_order=True)


# --- dispatch ------------------------------------------------------------------------------------------------------


def load(
    spec: str, labels: Sequence[str] | None = None, xml: str | None = None, *, features: Sequence[str] | None = None,
    argument: str = "--data",
) -> Dataset:  # fmt: skip
    """One file, by its extension: ``.arff``, ``.csv``, anything else LIBSVM text. ``features``: a trained model's
    feature names, to read unlabeled ARFF/CSV files (labels are then read only when all of ``labels`` are there)."""
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{argument} {spec!r}: no such file, and not a built-in data set ({', '.join(BUILTIN)})")
    if path.is_dir():
        raise DataError(f"{argument} {spec!r} is a folder: expected a data file (.arff, .csv or LIBSVM text)")
    suffix = path.suffix.lower()
    if suffix == ".arff":
        return load_arff(path, labels, xml, features)
    if suffix == ".csv":
        return load_csv(path, labels, features)
    return load_libsvm(path)


def load_train_test(
    data: str, test: str | None = None, labels: Sequence[str] | None = None, xml: str | None = None
) -> tuple[Dataset, Dataset | None]:
    """(train, test): a built-in name gives its standard split; a file gives (it, ``test`` or None). The test file's
    columns are matched to the training file's by name."""
    if data in BUILTIN:
        given = [name for name, value in (("--test", test), ("--labels", labels), ("--xml", xml)) if value]
        if given:
            raise ValueError(f"--data {data} is built in, with its own split and labels: {', '.join(given)} would be ignored; drop it")
        return load_builtin(data)
    train = load(data, labels, xml)
    if test is None:
        return train, None
    test_set = load(test, labels or train.label_names, xml, argument="--test")
    return train, align(test_set, train.feature_names, train.label_names, positional=train.positional)


def align(data: Dataset, feature_names: Sequence[str], label_names: Sequence[str], positional: bool = False) -> Dataset:
    """``data`` with its features and labels in the order of ``feature_names`` / ``label_names`` (a model's or a
    training file's), matched by name. Positional (LIBSVM) columns match by index, and a file that never mentions
    the last ones is padded with zeros. Missing or extra names are an error that lists them."""
    X, Y = data.X, data.Y
    where = data.path or data.name
    if positional and data.positional:
        if X.shape[1] > len(feature_names):
            raise DataError(f"{where}: feature index {X.shape[1] - 1}: the model has {len(feature_names)} features (0 to {len(feature_names) - 1})")
        X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], len(feature_names))) if sp.issparse(X) else np.pad(X, ((0, 0), (0, len(feature_names) - X.shape[1])))
        if Y is not None:
            if Y.shape[1] > len(label_names):
                raise DataError(f"{where}: label {Y.shape[1] - 1}: the model has {len(label_names)} labels (0 to {len(label_names) - 1})")
            Y = sp.csr_matrix((Y.data, Y.indices, Y.indptr), shape=(Y.shape[0], len(label_names))) if sp.issparse(Y) else np.pad(Y, ((0, 0), (0, len(label_names) - Y.shape[1])))
        return Dataset(X, Y, list(feature_names), list(label_names), data.name, data.path, True)
    X = X[:, _order(where, data.feature_names, feature_names, "feature")]
    if Y is not None:
        Y = Y[:, _order(where, data.label_names, label_names, "label")]
    return Dataset(
        X, Y, list(feature_names), list(label_names) if Y is not None else [], data.name, data.path,
        missing_labels=data.missing_labels,
    )  # fmt: skip


def _order(where: str, have: Sequence[str], want: Sequence[str], what: str) -> Any:
    if list(have) == list(want):
        return slice(None)
    position = {name: i for i, name in enumerate(have)}
    missing = [name for name in want if name not in position]
    extra = sorted(set(have) - set(want))
    if missing or extra:
        parts = [f"missing {what}(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "",
                 f"extra {what}(s) {extra[:5]}{' ...' if len(extra) > 5 else ''}" if extra else ""]  # fmt: skip
        raise DataError(f"{where}: the {what}s do not match the model's {len(want)} by name: {'; '.join(p for p in parts if p)}")
    return np.asarray([position[name] for name in want])
