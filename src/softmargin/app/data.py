"""Multi-label data sets: the built-in yeast, MULAN ARFF (dense and sparse), LIBSVM / extreme-classification text,
and CSV with named label columns.

Every loader returns a :class:`Dataset`: features ``X`` (a dense float64 array, as read; or a float32 scipy.sparse CSR matrix when the file is sparse: sparse stays sparse; float64 where float32 would lose a column, which training then refuses by name), labels ``Y`` (uint8, shape (N, L): dense, or a CSR matrix for large label sets:
the positives only, never N x L; None for unlabeled data) and the names of both. A malformed file raises
:class:`DataError` naming the file, the line and what was expected there; so does a missing, NaN or infinite feature
value, one beyond float32's range, a number not in plain ASCII decimal or scientific notation (Python's ``float``
also reads ``1_0`` and other scripts' digits), an index given twice in a row, and a label other than 0/1. Text is
UTF-8 (a byte-order mark is skipped; CSV and ARFF files that are not UTF-8 are refused, never read with replacement
characters).

Columns are identified by name, exactly (names that differ only in Unicode normalisation are told apart, and the
errors say so): :func:`align` reorders a later file's features and labels to a model's, and says which are missing
or extra; read with a model's names (``features=``), an ARFF or CSV column that is neither a feature nor a label is an
error. (LIBSVM columns are named by their index, so a file that never mentions the last features or labels still
matches.)
"""

from __future__ import annotations

import csv
import gzip
import math
import re
import unicodedata
import xml.etree.ElementTree as ET
from array import array
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .. import _validation as V

BUILTIN = ("yeast",)


class DataError(ValueError):
    """A data file that does not parse: the message names the file, the line and what was expected."""


#: From this many label cells (N x L) on, LIBSVM labels stay a sparse CSR matrix.
SPARSE_LABELS_FROM = 1 << 26
#: Without an ``N F L`` header, a LIBSVM feature or label index at or above this is taken for a broken file; with one,
#: an ``F`` or ``L`` above it is (each column gets a name; far more than the extreme-classification sets' millions).
MAX_INDEX_WITHOUT_HEADER = 1 << 24
#: The largest float32 (:data:`softmargin._validation.FLOAT32_MAX`). A feature value from float32's max plus half its
#: last step on (2**128 - 2**103) would become inf in the float32 features, so it is refused; one in between rounds to
#: the max (``3.4028235e+38`` reads back).
FLOAT32_MAX = V.FLOAT32_MAX
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


@dataclass
class Dataset:
    """Features ``X`` (N, F), labels ``Y`` (N, L) or None (unlabeled data, for ``predict``) and their names."""

    X: Any  # np.ndarray (float64 from the loaders; float32 too) or scipy.sparse.csr_matrix (float32)
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


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _form(name: str) -> str:
    """The Unicode normalisation form ``name`` is in, with its code points spelt out (``NFD 'cafe\\u0301'``)."""
    form = next((f for f in ("NFC", "NFD") if unicodedata.is_normalized(f, name)), "mixed")
    return f"{form} {ascii(name)}"


def _normalisation_hint(missing: Sequence[str], have: Sequence[str], whose: str = "the file's") -> str:
    """Names are matched exactly (code point for code point). When a missing name is spelt differently in ``have`` but
    is the same text in Unicode's eyes (``café`` as one code point, NFC, or as ``e`` plus a combining accent, NFD), the
    error says so: the two look identical when printed."""
    spelt = {_nfc(name): name for name in have}
    for name in missing:
        other = spelt.get(_nfc(name))
        if other is not None and other != name:
            return (f" ({name!r} and {whose} {other!r} differ only in Unicode normalisation: {_form(name)} against "
                    f"{_form(other)}; names are matched exactly: write both in one form, e.g. NFC)")  # fmt: skip
    return ""


def _seen_before(seen: dict[str, str], name: str) -> str | None:
    """The name met before that ``name`` repeats (itself, or a spelling that differs only in Unicode normalisation,
    NFC / NFD), else None, recording ``name``; ``seen`` maps each NFC form to the name as first written."""
    key = _nfc(name)
    if key in seen:
        return seen[key]
    seen[key] = name
    return None


def _check_unique(names: Sequence[str], what: str) -> None:
    """Each name once; two names that differ only in Unicode normalisation (NFC / NFD) count as the same name."""
    seen: dict[str, str] = {}
    for name in names:
        other = _seen_before(seen, name)
        if other == name:
            raise DataError(f"{what} names {name!r} twice: expected each name once")
        if other is not None:
            raise DataError(f"{what} names {other!r} and {name!r}, which differ only in Unicode normalisation ({_form(other)}, "
                            f"{_form(name)}): expected each name once")  # fmt: skip


def _in_float32(values: np.ndarray) -> np.ndarray:
    """Where ``values`` (float64) stay finite as float32: False for missing, NaN, infinite and too large values."""
    return np.abs(values) < _FLOAT32_OVERFLOW  # NaN compares False


def _beyond_float32(value: float) -> str:
    return f"{value}, beyond float32's range: expected a magnitude of at most {FLOAT32_MAX:.8g} (rescale the feature)"


#: float32 blurs a feature column when its rounding (up to 2**-24 of a value's magnitude) exceeds this share of the
#: column's standard deviation
BLUR = 1e-3


def float32_blurred(X: Any, block_cells: int = 1 << 22) -> np.ndarray:
    """Which columns of float64 features ``X`` (dense or sparse) float32 would blur, (F,) bool: round their values by
    more than :data:`BLUR` of the column's standard deviation. Timestamps of 1.6e9 +- 50 s are such a column: float32
    holds them to 128 s (300 of them had 4 distinct float32 values), which no model can learn from. Column statistics
    without a copy of ``X``: a dense one in blocks of rows (``block_cells`` cells at a time), a sparse one over its
    stored values and its zeros. All False for float32 features and for fewer than 2 rows."""
    if X.dtype != np.float64 or X.shape[0] < 2:
        return np.zeros(X.shape[1], bool)
    if sp.issparse(X):
        from sklearn.utils.sparsefuncs import mean_variance_axis

        mean, var = mean_variance_axis(sp.csr_matrix(X), axis=0)
    else:
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler()
        step = max(1, block_cells // max(1, X.shape[1]))
        for start in range(0, len(X), step):  # its partial_fit: Chan et al.'s update of the mean and variance
            scaler.partial_fit(X[start:start + step])
        mean, var = scaler.mean_, scaler.var_
    std = np.sqrt(var)
    return (np.abs(mean) * 2.0**-24 > BLUR * std) & (std > 0)


def column_magnitudes(X: Any) -> np.ndarray:
    """Each column's largest absolute value, (F,) float64 (0 for no rows), dense or sparse: one pass, no dense copy."""
    if X.shape[0] == 0:
        return np.zeros(X.shape[1])
    if sp.issparse(X):
        return np.asarray(abs(sp.csr_matrix(X)).max(axis=0).toarray(), np.float64).ravel()
    return np.maximum(X.max(axis=0), -X.min(axis=0)).astype(np.float64, copy=False)


def _as_float32_unless_lost(X: sp.csr_matrix) -> sp.csr_matrix:
    """Sparse float64 features as float32 (half the memory), unless float32 would lose a column: every non-zero of it
    below float32's smallest normal number (1e-50 becomes 0) or a column float32 blurs (:func:`float32_blurred`).
    Then they stay float64, so that training refuses that column by name, as it refuses such dense features, and
    prediction scales them before casting (cast here, the feature was silently lost)."""
    largest = column_magnitudes(X)
    if ((largest > 0) & (largest < np.finfo(np.float32).tiny)).any() or float32_blurred(X).any():
        return X if X.data.flags.writeable else X.copy()  # (LIBSVM's values: a view of the parser's buffer)
    return X.astype(np.float32)


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
    """The error for a file that is not UTF-8, naming the line and the first byte that is not (never read with
    replacement characters: a name would silently change)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = re.split(rb"\r\n|\r|\n", raw[: exc.start])
        where = len(before[-1].decode("utf-8")) + 1
        save = "save it as 'CSV UTF-8', or convert it" if path.suffix.lower() == ".csv" else "convert it"
        return DataError(
            f"{path}:{len(before)}: byte {raw[exc.start]:#04x} at character {where} is not UTF-8: expected a UTF-8 text "
            f"file ({save}, e.g. iconv -f latin1 -t utf-8)"
        )
    return DataError(f"{path}: expected a UTF-8 text file")  # pragma: no cover - called on a decoding error


def _label_error(path: Path, line: int, name: str, value: float, missing: int) -> DataError:
    if np.isnan(value):  # "is nan" for a '?' or an empty cell read as if the file held the text nan
        return DataError(
            f"{path}:{line}: label {name!r} is missing ('?', empty or NaN; {missing} such label cell(s) in the file): "
            f"expected 0 or 1 in every label cell (the trainer and evaluate do not take partly labelled rows; the "
            f"loss's mask= argument does, in the library)"
        )
    return DataError(f"{path}:{line}: label {name!r} is {value}: expected 0 or 1")


def _check_binary(path: Path, Y: np.ndarray, lines: Sequence[int], names: Sequence[str]) -> None:
    bad = np.argwhere(~np.isin(Y, (0, 1)))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise _label_error(path, lines[row], names[col], Y[row, col], int(np.isnan(Y).sum()))


def stays_sparse(Y: Any) -> bool:
    """Whether a label matrix is kept sparse: a scipy.sparse one of :data:`SPARSE_LABELS_FROM` cells or more."""
    return sp.issparse(Y) and Y.shape[0] * Y.shape[1] >= SPARSE_LABELS_FROM


def sparse_labels(Y: Any) -> sp.csr_matrix:
    """0/1 labels (already checked) as a uint8 CSR matrix without stored zeros: a stored 0 ("{3 0}") is no positive,
    and the sparse metrics count stored entries."""
    Y = sp.csr_matrix(Y).astype(np.uint8)
    Y.eliminate_zeros()
    return Y


def _check_binary_sparse(path: Path, Y: sp.csr_matrix, lines: Sequence[int], names: Sequence[str]) -> None:
    """:func:`_check_binary` for a CSR label matrix: only its stored values are looked at (the rest are 0)."""
    bad = np.flatnonzero(~np.isin(Y.data, (0, 1)))
    if len(bad):
        row = int(np.searchsorted(Y.indptr, bad[0], side="right")) - 1
        col = int(Y.indices[bad[0]])
        raise _label_error(path, lines[row], names[col], Y.data[bad[0]], int(np.isnan(Y.data).sum()))


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
        values[:, features],
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


#: What surrounds a value and is dropped: ASCII white space only (a no-break space is not a number's part).
_SPACE = " \t\r\n\f\v"


def _value(text: str) -> float:
    """A number written in plain ASCII: decimal or scientific notation (``-1.5``, ``.5``, ``2e-3``), or a spelling
    of inf / nan (refused later as not finite). Python's ``float`` also reads ``1_0`` and other scripts' digits (``١٠``)
    as 10: refused here. Raises ValueError."""
    if not text.isascii() or "_" in text:
        raise ValueError(f"could not convert string to float: {text!r} (expected plain ASCII decimal or scientific notation)")
    return float(text)


def _index(text: str) -> int:
    """An integer in ASCII digits, with an optional sign (a negative one is refused with the range); Python's
    ``int`` also reads ``1_0`` and other scripts' digits. Raises ValueError."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"invalid integer {text!r}")
    return int(text)


def _number(text: str) -> float:
    """An ARFF/CSV value: a number (:func:`_value`), or ``?`` / empty for a missing one (NaN; rejected where it
    matters)."""
    text = text.strip(_SPACE)
    return math.nan if text in ("?", "") else _value(text)


def _arff_number(text: str) -> float:
    """An ARFF data value: :func:`_number`, also in quotes (Weka writes a {0,1} attribute's values as ``'1'``). A
    quoted ``'?'`` is the text ?, not a missing value, so it stays an error."""
    text = text.strip(_SPACE)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        inner = _unquote(text)
        if inner.strip(_SPACE) in ("?", "") or inner != inner.strip(_SPACE):
            raise ValueError(f"could not convert string to float: {text!r}")
        return _value(inner)
    return _number(text)


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


def _read_arff(path: Path, skip: Collection[str] = ()) -> tuple[list[str], Any, list[int]]:
    """(attribute names, values (N, A) float64, dense or CSR, NaN where missing, the line of each row). The values of
    the attributes named in ``skip`` are not read (0; labels, for predict). A file that is not UTF-8 is an error."""
    try:
        return _read_arff_text(path, skip)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _read_arff_text(path: Path, skip: Collection[str]) -> tuple[list[str], Any, list[int]]:
    names: list[str] = []
    spelt: dict[str, str] = {}  # NFC form -> the name as declared
    skipped: set[int] = set()
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    dense_rows: list[list[float]] = []
    lines: list[int] = []
    first_one: list[tuple[int, str]] = []  # nominal {1,0} attributes: (line, name)
    sparse = None
    with open(path, encoding="utf-8-sig") as f:
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
                    nominal = [_unquote(v.strip()) for v in kind[1:kind.rfind("}")].split(",")] if kind.startswith("{") else None
                    if not (kind in ("numeric", "real", "integer") or (nominal is not None and sorted(nominal) == ["0", "1"])):
                        raise DataError(f"{path}:{number}: attribute type {match.group(2).strip()!r} is not numeric or {{0,1}}")
                    name = _unquote(match.group(1))
                    if nominal == ["1", "0"]:  # in a sparse row an omitted value is the first declared one: here 1
                        first_one.append((number, name))
                    other = _seen_before(spelt, name)
                    if other == name:
                        raise DataError(f"{path}:{number}: attribute {name!r} is declared twice")
                    if other is not None:
                        raise DataError(f"{path}:{number}: attribute {name!r} is declared twice: {other!r} and {name!r} differ "
                                        f"only in Unicode normalisation ({_form(other)}, {_form(name)})")  # fmt: skip
                    names.append(name)
                elif lower.startswith("@data"):
                    in_data = True
                    skipped = {i for i, name in enumerate(names) if name in skip}
                elif not lower.startswith("@relation"):  # a typo ('@atribute') would shift every later column
                    raise DataError(f"{path}:{number}: expected '@relation', '@attribute', '@data' or a '%' comment in "
                                    f"the header, got {line[:80]!r}")  # fmt: skip
                continue
            is_sparse = line.startswith("{")
            if sparse is None:
                sparse = is_sparse
                if sparse and first_one:
                    at, name = first_one[0]
                    raise DataError(f"{path}:{at}: attribute {name!r} is declared {{1,0}}: in a sparse file a value "
                                    "left out is the first declared one, 1, where softmargin reads 0; declare it {0,1}")  # fmt: skip
            elif sparse != is_sparse:
                raise DataError(f"{path}:{number}: a {'sparse' if is_sparse else 'dense'} row in a {'sparse' if sparse else 'dense'} file")
            first = len(cols)
            try:
                if is_sparse:
                    body = line[1:line.rindex("}")].strip()
                    for item in body.split(",") if body else []:
                        index_text, value = item.split()
                        index = _index(index_text)
                        if not 0 <= index < len(names):
                            raise ValueError(f"index {index} is outside the {len(names)} attributes")
                        rows.append(len(lines))
                        cols.append(index)
                        vals.append(0.0 if index in skipped else _arff_number(value))
                else:
                    cells = line.split(",")
                    if len(cells) != len(names):
                        raise ValueError(f"{len(cells)} values for {len(names)} attributes")
                    dense_rows.append([0.0 if i in skipped else _arff_number(v) for i, v in enumerate(cells)])
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
    if not in_data:
        raise DataError(f"{path}: no '@data' line after the {len(names)} attributes: the file has no data section")
    if sparse:
        matrix: Any = sp.csr_matrix((vals, (rows, cols)), shape=(len(lines), len(names)), dtype=np.float64)
    else:
        matrix = np.asarray(dense_rows, dtype=np.float64).reshape(len(lines), len(names))
    return names, matrix, lines


def _few(names: Sequence[str], limit: int = 5) -> str:
    return f"{list(names[:limit])}{' ...' if len(names) > limit else ''}"


def _columns(path: Path, names: list[str], wanted: Sequence[str], what: str, extra: Sequence[str] = ()) -> list[int]:
    """The positions of ``wanted`` in ``names``; a missing one is an error naming it (with ``extra``, the columns
    that are neither features nor labels, when there are any)."""
    position = {name: i for i, name in enumerate(names)}
    missing = [name for name in wanted if name not in position]
    if missing:
        also = f"; extra column(s) {_few(extra)}" if extra else ""
        raise DataError(f"{path}: {what} {_few(missing)} not in the file's columns {_few(names, 8)}{also}"
                        f"{_normalisation_hint(missing, names)}")  # fmt: skip
    return [position[name] for name in wanted]


def _dataset(
    path: Path, names: list[str], matrix: Any, lines: list[int], labels: Sequence[str] | None,
    features: Sequence[str] | None, keep_label_order: bool, read_labels: bool = True,
) -> Dataset:  # fmt: skip
    """Split a table's columns into features and labels.

    ``features`` None (training data): ``labels`` are the label columns, every other column is a feature.
    ``features`` (a trained model's feature names): exactly those, in that order; ``labels`` (the model's label names)
    are the only other columns allowed (another column is an error that names it: it would be ignored), and they are
    read only if all of them are present (else unlabeled data, ``missing_labels`` saying which are absent). With
    ``read_labels`` False (predict) label columns are recognised but never read (their cells were not parsed).
    """
    if labels is not None:
        _check_unique(labels, "--labels")
    missing_labels: list[str] = []
    if features is not None:
        known = set(features) | set(labels or ())
        extra = [name for name in names if name not in known]
        feature_index = _columns(path, names, features, "feature column(s)", extra)
        both = sorted(set(features) & set(labels or ()))
        if both:
            raise DataError(f"{path}: {_few(both)} named both a feature and a label: expected each column to be one of them")
        if extra:
            hint = _normalisation_hint(extra, list(known), "the model's")
            raise DataError(
                f"{path}: extra column(s) {_few(extra)}: neither one of the model's {len(features)} features nor one of its "
                f"{len(labels or ())} labels{hint}; a column the model does not use would be ignored: drop it from the file"
            )
        present = set(names)
        if labels is not None and not all(label in present for label in labels):
            missing_labels = [label for label in labels if label not in present]
            labels = None  # unlabeled data, for predict
        if not read_labels:
            labels, missing_labels = None, []
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
    # dense features stay float64 (the text they were parsed from took far more memory): training casts them to
    # float32 unless float32 would blur a column (train._as_computed), prediction computes in float64
    X = _as_float32_unless_lost(X.tocsr()) if sp.issparse(X) else np.asarray(X, np.float64)
    Y = None
    if labels is not None:
        Y = matrix[:, label_index]
        if stays_sparse(Y):  # as LIBSVM labels: no dense copy
            Y = Y.tocsr()
            _check_binary_sparse(path, Y, lines, [names[i] for i in label_index])
            Y = sparse_labels(Y)
        else:
            Y = Y.toarray() if sp.issparse(Y) else Y
            _check_binary(path, Y, lines, [names[i] for i in label_index])
            Y = Y.astype(np.uint8)
    label_names = [names[i] for i in label_index]
    feature_names = [names[i] for i in feature_index]
    return Dataset(X, Y, feature_names, label_names, path.stem, str(path), missing_labels=missing_labels)


def load_arff(
    path: str | Path, labels: Sequence[str] | None = None, xml: str | Path | None = None,
    features: Sequence[str] | None = None, read_labels: bool = True,
) -> Dataset:  # fmt: skip
    """A MULAN ARFF file, dense or sparse (``{index value, ...}`` rows).

    The label attributes are named by ``labels`` or by ``xml`` (MULAN's XML file: not both), else by the ``.xml``
    file next to the ARFF whose name is the ARFF's up to its last ``-`` (``yeast-train.arff`` -> ``yeast.xml``). With
    ``features`` (a trained model's feature names, ``labels`` its label names) the file may lack the label attributes
    (unlabeled data), and any other attribute is an error; ``read_labels`` False: the label attributes' values are
    not read (predict). A file that is not UTF-8 is an error.
    """
    path = Path(path)
    if labels is not None and xml:
        raise DataError(f"--labels and --xml {xml} both name {path}'s labels: give one of them")
    if labels is None:
        xml = Path(xml) if xml else _sibling_xml(path)
        if xml is not None:
            labels = mulan_labels(xml)
        elif features is None:
            raise DataError(f"{path}: which attributes are labels? Pass --labels or the MULAN XML file (--xml)")
    names, matrix, lines = _read_arff(path, skip=() if read_labels or features is None else set(labels or ()))
    return _dataset(path, names, matrix, lines, labels, features, keep_label_order=False, read_labels=read_labels)


def _sibling_xml(path: Path) -> Path | None:
    stem = path.stem
    candidates = [path.with_suffix(".xml")]
    if "-" in stem:
        candidates.append(path.with_name(stem.rsplit("-", 1)[0] + ".xml"))
    return next((c for c in candidates if c.exists()), None)


# --- LIBSVM / extreme classification -------------------------------------------------------------------------------


_HEADER = re.compile(r"[0-9]+[ \t]+[0-9]+[ \t]+[0-9]+")


def load_libsvm(path: str | Path) -> Dataset:
    """The multi-label LIBSVM format ``l1,l2 idx:val idx:val ...`` (0-based label ids and feature indices), with or
    without the extreme-classification repository's header line ``N F L``. Features stay sparse (CSR); labels too
    when there are many (from :data:`SPARSE_LABELS_FROM` cells). Columns are named by their index. ``#`` starts a
    comment, to the end of the line; the header is the first line that is not a comment.

    With a header, the file must hold N rows and its indices must be below F and L, which may not exceed
    :data:`MAX_INDEX_WITHOUT_HEADER` (2**24); without one, an index from :data:`MAX_INDEX_WITHOUT_HEADER` on is taken
    for a typo (it would make a huge model).

    An empty line is a sample with no labels and no features in a file with a header (as the extreme-classification
    repository's readers take it: every line after the header is a sample, and N counts it); without a header it is
    an error naming the line (LIBSVM's own reader refuses it too; skipping it would shift every later row), unless
    no sample comes before it or only empty lines follow it. A line of only white space, ASCII or not, is empty. Labels: Y is None (unlabeled data) when no row has any label.
    """
    path = Path(path)
    header: tuple[int, int, int] | None = None
    header_line = 0
    indptr, label_ptr = [0], [0]
    # typed arrays, not lists: 8 bytes a nonzero against a list's 8 plus a Python int or float object each
    indices = array("q")
    values = array("d")
    label_ids = array("q")
    lines: list[int] = []
    blanks: list[int] = []  # empty lines since the last sample (or the header): samples only before another one
    empty_lines: list[int] = []  # those read as samples

    def empty_samples(numbers: list[int]) -> None:
        empty_lines.extend(numbers)
        for number in numbers:
            label_ptr.append(len(label_ids))
            indptr.append(len(indices))
            lines.append(number)

    with open(path, encoding="utf-8-sig", errors="replace") as f:  # only a comment can hold text: numbers are checked
        for number, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip(_SPACE)
            if not line.split():  # also a line of only non-ASCII white space (a no-break space): empty
                if "#" not in raw:
                    blanks.append(number)
                continue  # a comment line
            if header is None and not lines and _HEADER.fullmatch(line):
                fields = [v.lstrip("0") or "0" for v in line.split()]
                for letter, what, text in zip("NFL", ("samples", "features", "labels"), fields):
                    # F or L up to 2**24 (each column gets a name: 1e9 names would fill the memory); N is checked
                    # against the file, but a number of thousands of digits is no count (nor could a message print it)
                    limit = 10**18 if letter == "N" else MAX_INDEX_WITHOUT_HEADER
                    if len(text) > 19 or int(text) > limit:
                        said = text if len(text) <= 30 else f"a {len(text)}-digit number, {text[:10]}..."
                        raise DataError(f"{path}:{number}: the header 'N F L' says {letter} = {said} {what}: expected "
                                        f"at most {limit:,}" + ("" if letter == "N" else " (the most a file without a header "
                                        "may have too)"))  # fmt: skip
                header = (int(fields[0]), int(fields[1]), int(fields[2]))
                header_line = number
                blanks.clear()  # before the header: not samples
                continue
            if blanks and header is None and not lines:
                blanks.clear()  # empty lines before the first sample (and no header): nothing to shift
            if blanks:
                if header is None:
                    raise DataError(
                        f"{path}:{blanks[0]}: an empty line between samples: a sample needs labels or features (write "
                        "one with neither as '0:0'; in a file with the 'N F L' header an empty line is such a sample), "
                        "or delete the line"
                    )
                empty_samples(blanks)
                blanks.clear()
            parts = line.split()
            label_field, features = ("", parts) if ":" in parts[0] else (parts[0], parts[1:])
            try:
                row_labels = [_index(v) for v in label_field.split(",") if v != ""]
                row_features = [(_index(i), _value(v)) for i, v in (item.split(":") for item in features)]
            except ValueError:
                raise DataError(
                    f"{path}:{number}: expected 'l1,l2,... idx:val idx:val ...' with integer labels and indices and "
                    f"plain ASCII numbers; got {line[:80]!r}{_other_format_hint(path, line)}"
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
    if header is not None:
        empty_samples(blanks[: max(0, header[0] - len(lines))])  # the last samples may be empty ones too
        if header[0] != len(lines):
            counted = f" (the {len(empty_lines)} empty line(s) among them count as samples)" if empty_lines else ""
            raise DataError(f"{path}:{header_line}: the header says {header[0]} samples, the file holds {len(lines)}{counted}")
    width = header[1] if header else (max(indices) + 1 if indices else 0)
    height = header[2] if header else (max(label_ids) + 1 if label_ids else 0)
    X = _as_float32_unless_lost(sp.csr_matrix((np.frombuffer(values), np.frombuffer(indices, np.int64), indptr),
                                              shape=(len(lines), width)))  # fmt: skip
    X.sort_indices()
    feature_names = [str(i) for i in range(width)]
    if not label_ids:  # no row has a label: unlabeled data (evaluation against all-zero labels would mean nothing)
        return Dataset(X, None, feature_names, [], path.stem, str(path), True)
    Y: Any = sp.csr_matrix(
        (np.ones(len(label_ids), np.uint8), np.frombuffer(label_ids, np.int64), np.asarray(label_ptr, np.int64)),
        shape=(len(lines), height),
    )
    if not stays_sparse(Y):
        Y = Y.toarray()
    return Dataset(X, Y, feature_names, [str(i) for i in range(height)], path.stem, str(path), True)


def _other_format_hint(path: Path, line: str) -> str:
    """Why a line of ARFF or CSV text was read as LIBSVM: the format is chosen by the file's name, not its content."""
    if line.lower().startswith(("@relation", "@attribute", "@data", "%")):
        kind, suffix = "ARFF", ".arff"
    elif "," in line and ":" not in line and not line.replace(",", "").isdigit():
        kind, suffix = "CSV", ".csv"
    else:
        return ""
    return (f" (is it {kind}? {path.name} is read as LIBSVM text: a file is read as {kind} only when its name ends in "
            f"{suffix})")  # fmt: skip


def _range_hint(limit: int, header: Any, letter: str) -> str:
    if header:
        return f"expected 0 <= index < {limit} as the header 'N F L' says ({letter} = {limit}); ids are 0-based"
    return f"expected 0 <= index < {limit} (ids are 0-based; give the file an 'N F L' header line for larger ones)"


# --- CSV -----------------------------------------------------------------------------------------------------------


#: What a ``csv.Error`` on a row most likely means (its own text says what it is: the field size limit, mostly).
_CSV_ERROR_HINT = (f"a quote opened here or below is never closed, or a field is longer than {csv.field_size_limit():,} "
                   "characters?")  # fmt: skip


def _check_names_given(path: Path, header: Sequence[str], features: Sequence[str] | None) -> None:
    """A header field that is empty (or white space) names no column: pandas' ``to_csv`` writes its index that way, and
    it would be trained on as a feature named ''. Refused, naming its position, unless a model has such a feature."""
    if "" in header and "" not in (features or ()):
        column = header.index("") + 1
        raise DataError(f"{path}:1: column {column} of the header has no name (a pandas index? to_csv(index=False) "
                        "leaves it out): name the column, or drop it")  # fmt: skip


def _fails(read: Any, value: str) -> bool:
    try:
        read(value)
    except ValueError:
        return True
    return False


def load_csv(
    path: str | Path, labels: Sequence[str] | None, features: Sequence[str] | None = None, read_labels: bool = True
) -> Dataset:
    """A CSV file with a header row; ``labels`` names the 0/1 label columns, every other column is a feature. With
    ``features`` (a trained model's feature names, ``labels`` its label names) the file may lack the label columns
    (unlabeled data), and any other column is an error; ``read_labels`` False: the label cells are not read
    (predict). Numbers are plain ASCII decimal or scientific notation."""
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
            except csv.Error as exc:  # a quote never closed, or a name, running past the field size limit
                raise DataError(f"{path}:1: the header row cannot be read as CSV ({exc}): {_CSV_ERROR_HINT}") from None
            header = [h.strip() for h in header]
            known = set(labels or ()) | set(features or ())  # a one-column file whose column is named may be one
            one = len(header) == 1 and header[0] not in known
            separator = next((c for c in ";\t|" if c in header[0]), None) if one else None
            if separator is not None:  # a European (';') or tab-separated file read as one column
                raise DataError(f"{path}:1: the header {header[0][:60]!r} is one column: a .csv file is read as "
                                f"comma-separated, and this one seems separated by {separator!r}; convert it to commas")  # fmt: skip
            _check_names_given(path, header, features)
            _check_unique(header, f"{path}:1: the header")
            skip = set(labels or ()) if features is not None and not read_labels else set()
            parse = [(lambda v: 0.0) if name in skip else _number for name in header]
            rows, lines = [], []
            while True:
                start = reader.line_num + 1  # the line this row starts on (a quoted field may span lines)
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:  # e.g. a quote never closed, running past the field size limit
                    raise DataError(f"{path}:{start}: this row cannot be read as CSV ({exc}): {_CSV_ERROR_HINT}") from None
                number = reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    spans = f" (it runs from line {start}: a quote opened there is never closed?)" if number > start else ""
                    raise DataError(f"{path}:{start}: expected {len(header)} fields as in the header, got {len(row)}{spans}")
                try:
                    rows.append([read(v) for read, v in zip(parse, row)])
                except ValueError as exc:
                    column = next((name for read, v, name in zip(parse, row, header) if _fails(read, v)), None)
                    what = "a label, 0 or 1" if labels and column in labels else "a number"
                    raise DataError(f"{path}:{number}: column {column!r}: expected {what} ({exc})") from None
                lines.append(number)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    return _dataset(path, header, matrix, lines, list(labels) if labels else None, features, keep_label_order=True,
                    read_labels=read_labels)  # fmt: skip


# --- dispatch ------------------------------------------------------------------------------------------------------


def load(
    spec: str, labels: Sequence[str] | None = None, xml: str | None = None, *, features: Sequence[str] | None = None,
    argument: str = "--data", read_labels: bool = True,
) -> Dataset:  # fmt: skip
    """One file, by its extension: ``.arff``, ``.csv``, anything else LIBSVM text. ``features``: a trained model's
    feature names (and ``labels`` its label names), to read later ARFF/CSV files: a column that is neither is an error,
    and labels are read only when all of ``labels`` are there (else unlabeled data); ``read_labels`` False (predict):
    label columns are recognised but not read."""
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{argument} {spec!r}: no such file, and not a built-in data set ({', '.join(BUILTIN)})")
    if path.is_dir():
        raise DataError(f"{argument} {spec!r} is a folder: expected a data file (.arff, .csv or LIBSVM text)")
    _check_utf8_text(path)
    suffix = path.suffix.lower()
    if suffix == ".arff":
        return load_arff(path, labels, xml, features, read_labels)
    if suffix == ".csv":
        return load_csv(path, labels, features, read_labels)
    return load_libsvm(path)


#: The first bytes of files that are not UTF-8 text (never the start of UTF-8 text), what they are and how to undo it:
#: compressed files, and UTF-16 / UTF-32 text by its byte-order mark (UTF-32's before UTF-16's, whose mark it starts
#: with).
_NOT_UTF8_TEXT = (
    (b"\x1f\x8b", "gzip-compressed, not text", "decompress it first (gunzip FILE.gz, or zcat FILE > NEW_FILE)"),
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook?), not text",
     "extract the data, or save the sheet as 'CSV UTF-8'"),
    (b"\xff\xfe\x00\x00", "UTF-32 text (byte-order mark FF FE 00 00), not UTF-8",
     "convert it (iconv -f utf-32 -t utf-8 FILE > NEW_FILE)"),
    (b"\x00\x00\xfe\xff", "UTF-32 text (byte-order mark 00 00 FE FF), not UTF-8",
     "convert it (iconv -f utf-32 -t utf-8 FILE > NEW_FILE)"),
    (b"\xff\xfe", "UTF-16 text (byte-order mark FF FE, as Windows PowerShell's '>' and Excel's 'Unicode Text' write "
     "it), not UTF-8", "convert it (iconv -f utf-16 -t utf-8 FILE > NEW_FILE), or save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text (byte-order mark FE FF), not UTF-8",
     "convert it (iconv -f utf-16 -t utf-8 FILE > NEW_FILE), or save it as UTF-8"),
)  # fmt: skip


def _check_utf8_text(path: Path) -> None:
    """A compressed or UTF-16 / UTF-32 file is named as such (read as text it would give an error about UTF-8 that
    suggests converting from latin1, or, LIBSVM, a format error quoting garbled text). Only a regular file is looked
    at: a pipe's first bytes, once read, would be gone."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        start = f.read(4)
    for magic, what, fix in _NOT_UTF8_TEXT:
        if start.startswith(magic):
            raise DataError(f"{path}:1: the file is {what}: {fix}")


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
    test_set = load(test, labels or train.label_names, argument="--test")  # the labels --xml named for --data
    return train, align(test_set, train.feature_names, train.label_names, positional=train.positional, against="--data")


def align(
    data: Dataset, feature_names: Sequence[str], label_names: Sequence[str], positional: bool = False,
    against: str = "the model",
) -> Dataset:  # fmt: skip
    """``data`` with its features and labels in the order of ``feature_names`` / ``label_names`` (a model's or a
    training file's), matched by name (exactly: names that differ only in Unicode normalisation are told apart, and
    the error says so). Positional (LIBSVM) columns match by index: a file that never mentions the last ones is padded
    with zeros, and an index the model lacks is an error naming the largest such index in the file (a header's larger
    ``F`` or ``L`` alone is not: its extra columns are all zero). Missing or extra names are an error that lists them.
    ``against``: whose columns these are, for the errors (``--data``: the training file's, for ``train --test``)."""
    X, Y = data.X, data.Y
    where = data.path or data.name
    if positional and data.positional:
        X = _to_width(X, len(feature_names), lambda top: f"{where}: feature index {top}: {against} has {len(feature_names)} features (0 to {len(feature_names) - 1})")
        if Y is not None:
            Y = _to_width(Y, len(label_names), lambda top: f"{where}: label {top}: {against} has {len(label_names)} labels (0 to {len(label_names) - 1})")
        return Dataset(X, Y, list(feature_names), list(label_names) if Y is not None else [], data.name, data.path, True)
    X = X[:, _order(where, data.feature_names, feature_names, "feature", against)]
    if Y is not None:
        Y = Y[:, _order(where, data.label_names, label_names, "label", against)]
    return Dataset(
        X, Y, list(feature_names), list(label_names) if Y is not None else [], data.name, data.path,
        missing_labels=data.missing_labels,
    )  # fmt: skip


def _to_width(M: Any, width: int, error: Any) -> Any:
    """``M`` (positional columns) with ``width`` columns: zero columns added, or all-zero ones dropped; a column beyond
    ``width`` that the file mentions (any stored entry, even an explicit 0) is an error: ``error(largest index)``."""
    if sp.issparse(M):
        M = M.tocsr()
        used = int(M.indices.max()) if M.nnz else -1
    else:
        mentioned = np.flatnonzero(np.asarray(M != 0).any(0))
        used = int(mentioned[-1]) if len(mentioned) else -1
    if used >= width:
        raise DataError(error(used))
    if M.shape[1] == width:
        return M
    if sp.issparse(M):
        return sp.csr_matrix((M.data, M.indices, M.indptr), shape=(M.shape[0], width))
    return M[:, :width] if M.shape[1] > width else np.pad(M, ((0, 0), (0, width - M.shape[1])))


def _order(where: str, have: Sequence[str], want: Sequence[str], what: str, against: str = "the model") -> Any:
    if list(have) == list(want):
        return slice(None)
    position = {name: i for i, name in enumerate(have)}
    missing = [name for name in want if name not in position]
    extra = sorted(set(have) - set(want))
    if missing or extra:
        parts = [f"missing {what}(s) {_few(missing)}" if missing else "", f"extra {what}(s) {_few(extra)}" if extra else ""]
        raise DataError(f"{where}: the {what}s do not match {against}'s {len(want)} by name: {'; '.join(p for p in parts if p)}"
                        f"{_normalisation_hint(missing, extra)}")  # fmt: skip
    return np.asarray([position[name] for name in want])
