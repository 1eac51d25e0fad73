"""Distance correlation against dcor 0.7's anchor values and a dense numpy definition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CASES
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from scipy.stats import special_ortho_group

from jaxalign.metrics.dcor import dcor, dcor_from_sums, dcor_sqr, distance_row_sums, u_dcor_sqr

RTOL = 1e-6


def _dense_dcor_sqr(x: np.ndarray, y: np.ndarray, exponent: float = 1.0, unbiased: bool = False) -> float:
    """Textbook dense definition: double-centred (V) or U-centred (Székely & Rizzo 2014) distance matrices."""
    n = x.shape[0]

    def centred(z):
        a = cdist(z, z) ** exponent
        if not unbiased:
            return a - a.mean(0) - a.mean(1)[:, None] + a.mean()
        u = a - a.sum(0) / (n - 2) - a.sum(1)[:, None] / (n - 2) + a.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(u, 0.0)
        return u

    def product(a, b):
        return (a * b).sum() / (n * (n - 3)) if unbiased else (a * b).mean()

    a, b = centred(x), centred(y)
    denominator = np.sqrt(abs(product(a, a) * product(b, b)))
    return 0.0 if denominator == 0 else product(a, b) / denominator


def _dense_dcor_jnp(x: jax.Array, y: jax.Array) -> jax.Array:
    """Dense, differentiable dCor (exponent 1) for checking gradients."""

    def centred(z):
        diff = z[:, None, :] - z[None, :, :]
        sq = (diff * diff).sum(-1)
        a = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
        return a - a.mean(0) - a.mean(1)[:, None] + a.mean()

    a, b = centred(x), centred(y)
    return jnp.sqrt((a * b).mean() / jnp.sqrt((a * a).mean() * (b * b).mean()))


def _pair(seed: int, n: int = 24, dx: int = 3, dy: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx))
    y = np.tanh(x[:, :dy] * rng.normal(size=dy)) + 0.3 * rng.normal(size=(n, dy))
    return x, y


@pytest.mark.parametrize("case", CASES)
def test_reference_values(inputs, expected_pypi, case):
    x, y = inputs[f"{case}_X"], inputs[f"{case}_Y"]
    want = expected_pypi[case]
    np.testing.assert_allclose(dcor(x, y), want["dcor.distance_correlation"], rtol=RTOL)
    np.testing.assert_allclose(dcor_sqr(x, y), want["dcor.distance_correlation_sqr"], rtol=RTOL)
    np.testing.assert_allclose(u_dcor_sqr(x, y), want["dcor.u_distance_correlation_sqr"], rtol=RTOL)
    np.testing.assert_allclose(dcor(x, y, exponent=0.5), want["dcor.distance_correlation(exponent=0.5)"], rtol=RTOL)


@pytest.mark.parametrize("case", CASES)
def test_float32_within_1e4_of_float64(inputs, expected_pypi, case):
    x, y = inputs[f"{case}_X"].astype(np.float32), inputs[f"{case}_Y"].astype(np.float32)
    want = expected_pypi[case]
    got = dcor(x, y)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want["dcor.distance_correlation"], atol=1e-4)
    np.testing.assert_allclose(u_dcor_sqr(x, y), want["dcor.u_distance_correlation_sqr"], atol=1e-4)
    np.testing.assert_allclose(dcor(x, y, exponent=0.5), want["dcor.distance_correlation(exponent=0.5)"], atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(
    n=st.sampled_from([4, 29]),
    exponent=st.sampled_from([1.0, 0.5, 1.7]),
    seed=st.integers(0, 2**16),
)
def test_matches_dense_definition(n, exponent, seed):
    x, y = _pair(seed, n)
    sums = distance_row_sums(x, y, exponent=exponent)
    for unbiased in (False, True):
        want = _dense_dcor_sqr(x, y, exponent, unbiased)
        np.testing.assert_allclose(dcor_from_sums(*sums, unbiased=unbiased), want, rtol=1e-8, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3), shift=st.floats(-1e3, 1e3))
def test_invariances_symmetry_and_range(seed, scale, shift):
    x, y = _pair(seed)
    rot = special_ortho_group.rvs(3, random_state=seed)
    moved = scale * x @ rot + shift
    base = float(dcor(x, y))
    assert 0.0 <= base <= 1.0
    np.testing.assert_allclose(dcor(moved, y), base, rtol=1e-9)
    np.testing.assert_allclose(dcor(y, x), base, rtol=1e-12)
    np.testing.assert_allclose(u_dcor_sqr(moved, y), u_dcor_sqr(x, y), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dcor(x, moved), 1.0, rtol=1e-9)
    np.testing.assert_allclose(dcor(x, x), 1.0, rtol=1e-12)
    np.testing.assert_allclose(u_dcor_sqr(x, x), 1.0, rtol=1e-12)


def test_tiles_do_not_change_the_result():
    x, y = _pair(3, n=37)
    for tile in (5, 100):
        for fn in (dcor_sqr, u_dcor_sqr):
            np.testing.assert_allclose(fn(x, y, tile=tile, mesh=None), fn(x, y), rtol=1e-12)


def test_sums_reuse_per_embedding():
    """Moments of x from the (x, y) pass serve (x, z): only the cross sums are per pair."""
    x, y = _pair(4)
    z = np.random.default_rng(5).normal(size=(x.shape[0], 4))
    mx, _, _ = distance_row_sums(x, y)
    _, mz, cross_xz = distance_row_sums(x, z)
    for unbiased, fn in ((False, dcor_sqr), (True, u_dcor_sqr)):
        np.testing.assert_allclose(dcor_from_sums(mx, mz, cross_xz, unbiased=unbiased), fn(x, z), rtol=1e-12)


def test_gradient_matches_dense_and_is_finite_with_duplicates():
    x, y = _pair(6, n=20)
    grad = jax.grad(lambda a: dcor(a, y))(jnp.asarray(x))
    want = jax.grad(lambda a: _dense_dcor_jnp(a, jnp.asarray(y)))(jnp.asarray(x))
    np.testing.assert_allclose(grad, want, rtol=1e-8, atol=1e-12)
    x[5] = x[2]
    grad = jax.grad(lambda a: dcor(a, y, exponent=0.5, tile=7))(jnp.asarray(x))
    assert bool(jnp.isfinite(grad).all()) and bool((grad != 0).any())
    grad_u = jax.grad(lambda a: u_dcor_sqr(a, y))(jnp.asarray(x))
    assert bool(jnp.isfinite(grad_u).all()) and bool((grad_u != 0).any())


def test_works_under_jit():
    x, y = _pair(7)
    np.testing.assert_allclose(jax.jit(lambda a, b: dcor(a, b))(x, y), dcor(x, y), rtol=1e-12)


def test_constant_embedding_is_refused_eagerly_and_zero_under_jit():
    """A constant embedding is a broken extraction: refused with a ValueError. Under jit, where values cannot be
    checked, the result is dcor 0.7's convention (zero denominator → 0), never NaN."""
    x, _ = _pair(8)
    const = np.ones((x.shape[0], 2))
    with pytest.raises(ValueError, match="`y` has zero variance"):
        dcor(x, const)
    with pytest.raises(ValueError, match="`x` has zero variance"):
        u_dcor_sqr(const, x)
    assert float(jax.jit(lambda a, b: dcor(a, b))(x, const)) == 0.0
    assert float(jax.jit(lambda a, b: u_dcor_sqr(a, b))(const, x)) == 0.0


@pytest.mark.parametrize("fn", [dcor, dcor_sqr, u_dcor_sqr])
def test_bad_inputs(fn):
    x, y = _pair(9)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="`x` contains NaN"):
        fn(bad, y)
    with pytest.raises(ValueError, match="`y` contains NaN"):
        fn(y, bad)
    with pytest.raises(ValueError, match="`x` has 24 rows but `y` has 23"):
        fn(x, y[:-1])
    with pytest.raises(ValueError, match="`x` must be 2-D"):
        fn(x[:, 0], y)
    with pytest.raises(ValueError, match="`y` is empty"):
        fn(x, np.zeros((24, 0)))
    for exponent in (0.0, 2.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="`exponent` must be a number in the open interval"):
            fn(x, y, exponent=exponent)


def test_u_statistic_needs_four_rows():
    x, y = _pair(10, n=3)
    with pytest.raises(ValueError, match="`x` has 3 rows; this estimator needs at least 4"):
        u_dcor_sqr(x, y)
    np.testing.assert_allclose(dcor_sqr(x, y), _dense_dcor_sqr(x, y), rtol=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
def test_statistics_at_paper_scale_n_do_not_overflow(unbiased):
    """n² exceeds int32 beyond N = 46,340 (seed 000 uses 50,000): the normalisations must stay in floating point.
    The per-row sums of N = 50,000 equal rows make a perfectly dependent pair, so dCor² must be exactly 1."""
    from jaxalign.metrics.dcor import DistanceMoments

    n = 50_000
    m = DistanceMoments(row=jnp.arange(n, dtype=jnp.float64), sq=jnp.arange(n, dtype=jnp.float64) ** 2 + 1.0,
                        shift=jnp.asarray(0.0))  # fmt: skip
    value = dcor_from_sums(m, m, m.sq, unbiased=unbiased)
    np.testing.assert_allclose(float(value), 1.0, rtol=1e-9)
