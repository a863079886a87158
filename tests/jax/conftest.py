"""JAX tests run with float64 enabled (x64), so that float64 inputs stay float64; other dtypes are unaffected."""

import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
