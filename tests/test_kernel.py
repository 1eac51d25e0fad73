"""CKA (linear and RBF, biased and unbiased) against platonic-rep's values, invariances and input checks."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CASES, l2
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign.metrics.kernel import cka, unbiased_cka

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("dense_reference", ROOT / "benchmarks" / "dense_reference.py")
dense = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dense)

CALLS = {
    "cka(kernel=ip, biased)": {},
    "unbiased_cka": {"unbiased": True},
    "cka(kernel=rbf, sigma=1.0, biased)": {"kernel": "rbf", "sigma": 1.0},
}
PROPS = settings(max_examples=20, deadline=None)


def _case(inputs, case: str, prep: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = inputs[f"{case}_X"], inputs[f"{case}_Y"]
    return (l2(x), l2(y)) if prep == "l2" else (x, y)


def _gaussian(seed: int, n: int, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx))
    y = np.tanh(x @ rng.normal(size=(dx, dy))) + 0.5 * rng.normal(size=(n, dy))
    return x, y


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("prep", ["raw", "l2"])
@pytest.mark.parametrize("case", CASES)
def test_matches_platonic(inputs, expected_platonic, case, prep, call):
    x, y = _case(inputs, case, prep)
    got = cka(x, y, **CALLS[call])
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), expected_platonic[case][f"{call} [{prep}]"], rtol=1e-6)


@pytest.mark.parametrize("prep", ["raw", "l2"])
@pytest.mark.parametrize("case", CASES)
def test_float32_close_to_float64(inputs, case, prep):
    x, y = _case(inputs, case, prep)
    for kw in CALLS.values():
        got = cka(x.astype(np.float32), y.astype(np.float32), **kw)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(float(got), float(cka(x, y, **kw)), atol=1e-4)


def test_unbiased_cka_is_cka_unbiased(inputs):
    x, y = _case(inputs, "correlated", "l2")
    assert float(unbiased_cka(x, y)) == float(cka(x, y, unbiased=True))
    assert float(unbiased_cka(x, y, kernel="rbf", sigma=0.7)) == float(
        cka(x, y, kernel="rbf", sigma=0.7, unbiased=True)
    )


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("sigma", [0.3, 4.0])
def test_rbf_matches_dense_port_any_tile(inputs, sigma, unbiased):
    """RBF CKA of the tiled pass equals the dense N x N computation, for tiles that do not divide N."""
    x, y = _case(inputs, "manifold3", "l2")
    x, y = x[:203], y[:203]
    want = dense.cka(x, y, "rbf", sigma, unbiased=unbiased)
    for tile in (None, 50):
        got = cka(x, y, kernel="rbf", sigma=sigma, unbiased=unbiased, tile=tile, mesh=None)
        np.testing.assert_allclose(float(got), want, rtol=1e-9)


@PROPS
@given(
    seed=st.integers(0, 2**31),
    kernel=st.sampled_from(["ip", "rbf"]),
    unbiased=st.booleans(),
)
def test_orthogonal_invariance_and_symmetry(seed, kernel, unbiased):
    x, y = _gaussian(seed, 17, 4, 3)
    q, _ = np.linalg.qr(np.random.default_rng(seed + 1).normal(size=(4, 4)))
    kw = {"kernel": kernel, "sigma": 2.0, "unbiased": unbiased}
    base = float(cka(x, y, **kw))
    np.testing.assert_allclose(float(cka(x @ q, y, **kw)), base, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(cka(y, x, **kw)), base, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(float(cka(x + 3.0, y - 1.0, **kw)), base, rtol=1e-9, atol=1e-12)


@PROPS
@given(seed=st.integers(0, 2**31), scale=st.floats(0.5, 20.0), unbiased=st.booleans())
def test_linear_isotropic_scaling_invariance(seed, scale, unbiased):
    x, y = _gaussian(seed, 17, 4, 3)
    base = float(cka(x, y, unbiased=unbiased))
    np.testing.assert_allclose(float(cka(scale * x, y, unbiased=unbiased)), base, rtol=1e-5, atol=1e-6)


@PROPS
@given(seed=st.integers(0, 2**31), kernel=st.sampled_from(["ip", "rbf"]))
def test_range_and_self_similarity(seed, kernel):
    """Biased CKA of PSD kernels lies in [0, 1]; CKA(x, x) = h / (h + 1e-6) ≈ 1 (the unbiased RBF HSIC(K, K) is
    small enough for the 1e-6 to show, so the unbiased check is linear only)."""
    x, y = _gaussian(seed, 17, 4, 3)
    kw = {"kernel": kernel, "sigma": 1.5}
    value = float(cka(x, y, **kw))
    assert -1e-12 <= value <= 1.0
    np.testing.assert_allclose(float(cka(x, x, **kw)), 1.0, atol=1e-5)
    np.testing.assert_allclose(float(cka(x, x, unbiased=True)), 1.0, atol=1e-5)


@PROPS
@given(seed=st.integers(0, 2**31), kernel=st.sampled_from(["ip", "rbf"]), unbiased=st.booleans())
def test_matches_dense_port_on_random_inputs(seed, kernel, unbiased):
    x, y = _gaussian(seed, 17, 4, 3)
    want = dense.cka(x + 2.0, y, kernel, 1.3, unbiased=unbiased)
    np.testing.assert_allclose(float(cka(x + 2.0, y, kernel=kernel, sigma=1.3, unbiased=unbiased)), want, rtol=1e-8)


@pytest.mark.parametrize("kernel", ["ip", "rbf"])
def test_jit_and_gradient(inputs, kernel):
    x, y = _case(inputs, "heavytail", "l2")
    eager = cka(x, y, kernel=kernel, unbiased=True)
    jitted = jax.jit(lambda a, b: cka(a, b, kernel=kernel, unbiased=True))(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-12)
    grad = jax.grad(lambda a: cka(a, y, kernel=kernel))(jnp.asarray(x))
    assert grad.shape == x.shape
    assert bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).max()) > 0


def test_linear_gradient_matches_finite_difference():
    x, y = _gaussian(3, 15, 3, 2)
    direction = np.random.default_rng(4).normal(size=x.shape)
    grad = jax.grad(lambda a: cka(a, y, unbiased=True))(jnp.asarray(x))
    h = 1e-6
    fd = (float(cka(x + h * direction, y, unbiased=True)) - float(cka(x - h * direction, y, unbiased=True))) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), fd, rtol=1e-6)


def test_sharded_over_four_devices_matches_single():
    """RBF CKA and CKNNA split their row tiles over 4 host devices (shard_map) and give the single-device value."""
    script = textwrap.dedent(
        """
        import jax
        jax.config.update("jax_enable_x64", True)
        import numpy as np
        from jaxalign.metrics.kernel import cka
        from jaxalign.metrics.cknna import cknna
        assert jax.device_count() == 4
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(37, 5)), rng.normal(size=(37, 4))
        for fn in (lambda m: cka(x, y, kernel="rbf", unbiased=True, tile=4, mesh=m),
                   lambda m: cknna(x, y, k=5, tile=4, mesh=m)):
            np.testing.assert_allclose(float(fn("auto")), float(fn(None)), rtol=1e-12)
        print("ok")
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize(
    ("x", "y", "kw", "match"),
    [
        (np.full((6, 2), np.nan), np.ones((6, 2)), {}, "`x` contains NaN"),
        (np.eye(6, 2), np.eye(5, 2), {}, "`x` has 6 rows but `y` has 5"),
        (np.eye(3, 2), np.eye(3, 2) * 2, {"unbiased": True}, "`x` has 3 rows"),
        (np.ones((6, 2)), np.eye(6, 2), {}, "`x` has zero variance"),
        (np.eye(6, 2), np.ones((6, 3)), {"kernel": "rbf"}, "`y` has zero variance"),
        (np.arange(6.0), np.eye(6, 2), {}, "`x` must be 2-D"),
        (np.zeros((0, 2)), np.zeros((0, 2)), {}, "`x` is empty"),
        (np.eye(6, 2), np.eye(6, 2), {"kernel": "cosine"}, "`kernel`"),
        (np.eye(6, 2), np.eye(6, 2), {"kernel": "rbf", "sigma": 0.0}, "`sigma`"),
        (np.eye(6, 2), np.eye(6, 2), {"kernel": "rbf", "sigma": float("nan")}, "`sigma`"),
    ],
)
def test_bad_inputs(x, y, kw, match):
    with pytest.raises(ValueError, match=match):
        cka(x, y, **kw)


@pytest.mark.parametrize("unbiased", [False, True])
def test_hsic_normalisation_at_paper_scale_n_does_not_overflow(unbiased):
    """n² exceeds int32 beyond N = 46,340 (seed 000 uses 50,000): the HSIC normalisation must stay floating."""
    from jaxalign.metrics.kernel import hsic_from_sums

    n = 50_000
    one = jnp.asarray(1.0)
    value = hsic_from_sums(one, one, one, one, one, n, unbiased=unbiased)
    expected = (1 + 1 / ((n - 1) * (n - 2)) - 2 / (n - 2)) / (n * (n - 3)) if unbiased else 1 - 2 / n + 1 / n**2
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)
