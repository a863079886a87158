"""The layout's rules, checked: the library never imports the application, and ``import softmargin`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "softmargin"
LIBRARY_MODULES = ["softmargin", "softmargin.numpy", "softmargin.weights", "softmargin._formula", "softmargin._validation",
                   "softmargin._sparse", "softmargin._chunks", "softmargin._options", "softmargin.kernels.cpu"]


def _imports(path: Path) -> set[str]:
    """Every module a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *( [node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_no_library_module_imports_the_application():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "app" or relative.name == "__main__.py":  # the application, and its entry point
            continue
        bad = sorted(m for m in _imports(path) if m == "softmargin.app" or m.startswith("softmargin.app."))
        if bad:
            offenders[str(relative)] = bad
    assert offenders == {}


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_importing_the_library_loads_no_application_and_no_framework(module):
    code = (
        f"import sys, {module}; heavy = sorted(m for m in ('torch', 'jax', 'keras', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules);"
        "app = sorted(m for m in sys.modules if m.startswith('softmargin.app')); print(heavy, app)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] []", f"import {module} loaded {out}"


def test_torch_backend_loads_no_application_and_no_compiler_stack():
    pytest.importorskip("torch")
    code = (
        "import sys, softmargin.torch; print(sorted(m for m in sys.modules if m.startswith('softmargin.app')), "
        "'torch._dynamo' in sys.modules, 'triton' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] False False"
