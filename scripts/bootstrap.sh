# Sourced by scripts/main and .ci/run: make .venv (once) with everything the project needs, and activate it.
# torch (and jax, optax, keras, transformers) are pinned here, not in pyproject.toml: 2.13.0 is the CPU build our machines install from local disk.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.softmargin-installed
# the CPU kernel is compiled by the install: install again when its sources change
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
  || [ -n "$(find src/softmargin/kernels/csrc src/softmargin/kernels/build.py -newer "$stamp" 2>/dev/null)" ]; then
  python -m pip install -q --disable-pip-version-check --upgrade pip
  python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  # The other frameworks pinned as torch is (the CPU jaxlib; none of these pulls another torch): about 30 s.
  python -m pip install -q --disable-pip-version-check "jax==0.10.2" "jaxlib==0.10.2" "optax==0.2.8" "keras==3.15.1" \
    "transformers==5.23.0" "accelerate==1.15.0"
  python -m pip install -q --disable-pip-version-check -e ".[all,test]"
  touch "$stamp"
fi
