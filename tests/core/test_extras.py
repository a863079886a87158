"""A missing optional dependency is a ``ModuleNotFoundError`` that names the extra to install (softmargin._extras).

Each entry point runs in a fresh interpreter where the dependency is made unimportable as if it were not installed
(``sys.modules[name] = None``: the import system then raises ``ModuleNotFoundError`` with that ``name``, as for a
module that is absent). The extras' module lists are checked against pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from softmargin import _extras

ROOT = Path(__file__).resolve().parents[2]

_REPORT = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None
try:
{code}
except BaseException as error:
    print(json.dumps([type(error).__name__, getattr(error, "name", None), str(error)]))
else:
    print(json.dumps(None))
"""


def _error(code: str, blocked: tuple[str, ...], env: dict[str, str] | None = None) -> list | None:
    """The exception ``code`` raises (type name, ``name``, message) where ``blocked`` are not importable, or None."""
    script = _REPORT.format(blocked=blocked, code=textwrap.indent(textwrap.dedent(code).strip(), "    "))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=env or dict(os.environ))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("code", "blocked", "name", "message"), [
    ("import softmargin.torch", ("torch",), "torch",
     "softmargin.torch needs torch, which is not installed: pip install 'softmargin[torch]'"),
    ("from softmargin.torch import MultiLabelSoftMarginLoss", ("torch",), "torch",
     "softmargin.torch needs torch, which is not installed: pip install 'softmargin[torch]'"),
    ("import softmargin.jax", ("jax",), "jax",
     "softmargin.jax needs jax, which is not installed: pip install 'softmargin[jax]'"),
    ("import softmargin.keras", ("keras",), "keras",
     "softmargin.keras needs keras, which is not installed: pip install 'softmargin[keras]'"),
    ("import softmargin.metrics", ("scipy", "sklearn"), "scipy",
     "softmargin.metrics needs scipy, which is not installed: pip install 'softmargin[app]'"),
    ("import softmargin; softmargin.SoftMarginClassifier", ("scipy", "torch", "sklearn"), "scipy",
     "softmargin.SoftMarginClassifier needs scipy, which is not installed: pip install 'softmargin[app]'"),
    ("from softmargin.integrations.transformers import loss_function; loss_function()", ("torch", "transformers"),
     "torch", "softmargin.integrations.transformers.loss_function needs torch, which is not installed: "
     "pip install 'softmargin[transformers]'"),
])  # fmt: skip
def test_an_entry_point_without_its_dependency_names_the_extra(code, blocked, name, message):
    assert _error(code, blocked) == ["ModuleNotFoundError", name, message]


def test_the_transformers_integration_imports_without_torch_or_transformers():
    """Only calling loss_function needs torch; importing the module (e.g. to reference it in a config) does not."""
    assert _error("import softmargin.integrations.transformers", ("torch", "transformers")) is None


def test_the_numpy_api_needs_no_extra():
    code = "import numpy as np, softmargin, softmargin.numpy; softmargin.multilabel_soft_margin_loss(np.zeros((2, 3)), np.ones((2, 3)))"
    assert _error(code, ("torch", "jax", "keras", "scipy", "sklearn")) is None


def test_the_command_names_the_app_extra():
    code = "from softmargin.app.cli import main; raise SystemExit(main(['compare']))"
    script = f"import sys\nsys.modules['torch'] = None\n{code}"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "softmargin compare: error: the command needs torch, which is not installed: pip install 'softmargin[app]'"
    )


@pytest.fixture
def keras_env(tmp_path):
    """The environment of a Keras user with no KERAS_BACKEND and no keras.json of their own."""
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return {**env, "KERAS_HOME": str(tmp_path / "keras-home")}


def test_keras_without_a_backend_says_which_to_choose(keras_env):
    """Keras's default backend is tensorflow, which softmargin does not run on (and which is not installed here):
    "No module named 'tensorflow'" from deep inside keras said neither KERAS_BACKEND nor an extra."""
    error = _error("import softmargin.keras", ("tensorflow",), keras_env)
    assert error[:2] == ["ModuleNotFoundError", "tensorflow"], error
    assert error[2] == (
        "softmargin.keras: keras could not import its backend (KERAS_BACKEND is not set: keras.json's, by default "
        "tensorflow): tensorflow is not installed; softmargin's Keras loss runs on the jax or the torch backend: set "
        "KERAS_BACKEND=jax (pip install 'softmargin[keras,jax]') or KERAS_BACKEND=torch "
        "(pip install 'softmargin[keras,torch]')"
    )


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_keras_with_a_backend_that_is_not_installed_names_its_extra(keras_env, backend):
    error = _error("import softmargin.keras", (backend,), {**keras_env, "KERAS_BACKEND": backend})
    assert error == [
        "ModuleNotFoundError", backend,
        f"softmargin.keras with KERAS_BACKEND={backend} needs {backend}, which is not installed: "
        f"pip install 'softmargin[keras,{backend}]'",
    ]  # fmt: skip


def test_other_import_errors_pass_through_unchanged():
    """A module no extra brings, or an installed module that fails to load, is not reported as a missing extra."""
    unknown = ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")
    with pytest.raises(ModuleNotFoundError) as caught, _extras.needed("torch", by="softmargin.torch"):
        raise unknown
    assert caught.value is unknown
    broken = ImportError("libtorch_cpu.so: cannot open shared object file", name="torch")
    with pytest.raises(ImportError) as caught, _extras.needed("torch", by="softmargin.torch"):
        raise broken
    assert caught.value is broken


def test_the_first_extra_that_brings_the_module_is_named():
    with pytest.raises(ModuleNotFoundError, match=r"^the command needs jax, .* pip install 'softmargin\[jax\]'$"):
        with _extras.needed("app", "jax", by="the command"):
            raise ModuleNotFoundError("No module named 'jax.numpy'", name="jax.numpy")


def test_the_extras_are_pyprojects():
    """Each extra's modules are the import names of its requirements in pyproject.toml (self-references resolved)."""
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    import_names = {"scikit-learn": "sklearn"}

    def modules(extra: str) -> set[str]:
        found = set()
        for requirement in declared[extra]:
            if requirement.startswith("softmargin["):
                for inner in requirement[len("softmargin[") : -1].split(","):
                    found |= modules(inner)
            else:
                name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
                found.add(import_names.get(name, name))
        return found

    assert {extra: modules(extra) for extra in _extras.EXTRAS} == {k: set(v) for k, v in _extras.EXTRAS.items()}
