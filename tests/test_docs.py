"""The documentation against what it cites: the docstrings' cross-references name objects that exist, the files the
README and docs/ point at are there, and the README's CPU benchmark table says what its CSV holds (each time and
ratio to the digits it prints, ratios recomputed from the CSV's medians)."""

from __future__ import annotations

import csv
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "src" / "softmargin").rglob("*.py"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _references() -> list[str]:
    """Every fully qualified ``:class:`` / ``:func:`` / ``:mod:`` target of the package's docstrings."""
    found = set()
    for path in SOURCES:
        found.update(
            re.findall(r":(?:class|func|mod|data):`(softmargin\.[A-Za-z0-9_.]+)`", path.read_text(encoding="utf-8"))
        )
    return sorted(found)


@pytest.mark.parametrize("name", _references())
def test_docstring_cross_references_resolve(name):
    parts = name.split(".")
    if parts[:2] == ["softmargin", "keras"]:  # importing keras here would fix its backend for this process: read it
        module = ROOT / "src" / "softmargin" / "keras.py"
        defined = set(re.findall(r"^(?:class|def) (\w+)", module.read_text(encoding="utf-8"), re.M))
        assert len(parts) == 2 or (len(parts) == 3 and parts[2] in defined), name
        return
    for split in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError as error:
            if not (error.name or "").startswith("softmargin"):
                pytest.skip(f"{name} needs {error.name}")
            continue
        break
    for attribute in parts[split:]:
        assert hasattr(target, attribute), f"{name}: {'.'.join(parts[:split])} has no {attribute!r}"
        target = getattr(target, attribute)


def test_the_result_files_the_docs_cite_exist():
    cited = set()
    for doc in DOCS:
        cited.update(re.findall(r"benchmarks/results/[A-Za-z0-9_./-]*[A-Za-z0-9_]", doc.read_text(encoding="utf-8")))
    missing = sorted(path for path in cited if not (ROOT / path).exists())
    assert not missing, missing


def _cell(text: str) -> tuple[str, str | None]:
    """'61.4 ms (8.30x)' -> ('61.4', '8.30'); '**7.39 ms**' -> ('7.39', None); '0.042 ms' -> ('0.042', None)."""
    match = re.fullmatch(r"\**([0-9.]+) ms\**(?: \(([0-9.]+)x\))?", text.strip())
    assert match, text
    return match.group(1), match.group(2)


def _agrees(printed: str | None, exact: float, slack: float = 0.0) -> bool:
    """``printed`` is ``exact`` rounded to the digits it shows (give or take ``slack``, the CSV's own rounding)."""
    assert printed is not None
    decimals = len(printed.partition(".")[2])
    return abs(float(printed) - exact) <= 0.5 * 10**-decimals + slack + 1e-12


def test_readme_cpu_table_matches_its_csv():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("Run of 2026-12-01 08:20 UTC (`benchmarks/results/bench-cpu.csv`") :]
    table = section[section.index("| shape, dtype |") :].split("\n\n")[0].splitlines()[2:]
    rows = list(csv.DictReader((ROOT / "benchmarks/results/bench-cpu.csv").open(encoding="utf-8")))
    median = {(r["shape"], r["dtype"], r["impl"]): float(r["median_ms"]) for r in rows}
    memory = {(r["shape"], r["dtype"], r["impl"]): float(r["peak_extra_x_logits"]) for r in rows}
    assert len(table) == 10
    wrong = []
    for line in table:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        shape, dtype = cells[0].split()
        ours = median[shape, dtype, "softmargin"]
        time, _ = _cell(cells[1])
        if not _agrees(time, ours):
            wrong.append((shape, dtype, "softmargin", time, ours))
        for impl, text in zip(("torch eager", "torch.compile", "BCEWithLogits", "floor"), cells[2:6]):
            time, ratio = _cell(text)
            theirs = median[shape, dtype, impl]
            if not _agrees(time, theirs):
                wrong.append((shape, dtype, impl, time, theirs))
            if ratio is not None:  # the anchor's time over softmargin's; for the floor, softmargin's over the floor's
                exact = ours / theirs if impl == "floor" else theirs / ours
                slack = exact * 0.5e-4 * (1 / ours + 1 / theirs)  # the CSV's medians have 4 decimals
                if not _agrees(ratio, exact, slack):
                    wrong.append((shape, dtype, f"{impl} ratio", ratio, exact))
        if cells[6] != "–":
            figures = re.findall(r"([0-9.]+)x", cells[6])
            for impl, printed in zip(("softmargin", "torch eager", "BCEWithLogits"), figures):
                if not _agrees(printed, memory[shape, dtype, impl]):
                    wrong.append((shape, dtype, f"{impl} memory", printed, memory[shape, dtype, impl]))
    assert not wrong, wrong
