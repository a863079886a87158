"""Running `softmargin` commands in-process, for the CLI test modules: the exit code and output, and the one-line
error check."""

from __future__ import annotations

import re


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
