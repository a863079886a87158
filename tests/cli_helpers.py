"""For the CLI test modules: running `softmargin` commands in-process (the exit code and output, the one-line error
check) and LIBSVM text to feed them."""

from __future__ import annotations

import re

import numpy as np


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``softmargin <argv>``: (exit code, stdout, stderr); never a traceback."""
    from softmargin.app.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_line_error(argv: list[str], capsys, pattern: str, quiet_stdout: bool = False) -> str:
    """Exit code 2 and exactly one ``error:`` line, matching ``pattern``; ``quiet_stdout``: nothing on stdout either
    (not even a CSV header)."""
    code, out, err = run(argv, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    if quiet_stdout:
        assert out == "", out
    return err


def bag_of_words(rows: int, seed: int, num_labels: int, num_features: int, rate: float, per_row: int) -> list[str]:
    """LIBSVM lines of counts: each label positive with probability ``rate`` (label 0 where none is), ``per_row``
    feature draws (repeats merged) among ``num_features``, counts 1 to 3."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        labels = [j for j in range(num_labels) if rng.random() < rate] or [0]
        features = sorted(set(rng.integers(0, num_features, per_row).tolist()))
        lines.append(",".join(map(str, labels)) + " " + " ".join(f"{f}:{rng.integers(1, 4)}" for f in features))
    return lines
