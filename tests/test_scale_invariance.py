"""Scale, offset and rank deficiency: float32 results stay those of the definitions (issue 10, kinds 1, 5 and 6).

Every metric is checked against a reference written here and evaluated in float64 (or exactly) on the *same* input
arrays: dCor and CKA from dense N x N formulas on centred data (both are translation invariant, so centring is exact
and the float64 reference keeps its digits at any offset), CKNNA exactly, in Python integers (platonic's kernel is
the raw inner product, so its value depends on the offset and a dense float64 evaluation itself loses digits there),
PCovR in float64 by jaxalign. Regression tests pin the cases of ``../shared/cases/numerics.py`` (blocks 1, 3, 6).
"""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from jaxalign.metrics.cknna import cknna
from jaxalign.metrics.dcor import dcor, dcor_sqr, u_dcor_sqr
from jaxalign.metrics.kernel import cka, unbiased_cka
from jaxalign.projection import pcovr

PROPS = settings(max_examples=40, deadline=None)
ATOL32 = 1e-4  # float32 against the float64 / exact value of the same definition on the same inputs


# ---------------------------------------------------------------------------------------------------------------------
# references (float64 numpy, or exact)


def ref_dcor_sqr(x: np.ndarray, y: np.ndarray, exponent: float = 1.0, unbiased: bool = False) -> float:
    """dcor 0.7: double-centred (V) or U-centred distance matrices of the centred float64 data."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a, b = (cdist(z - z.mean(0), z - z.mean(0)) ** exponent for z in (x, y))
    n = a.shape[0]

    def centred(m: np.ndarray) -> np.ndarray:
        if not unbiased:
            return m - m.mean(0)[None, :] - m.mean(1)[:, None] + m.mean()
        u = m - m.sum(0)[None, :] / (n - 2) - m.sum(1)[:, None] / (n - 2) + m.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(u, 0.0)
        return u

    ca, cb = centred(a), centred(b)
    cov, var_x, var_y = (ca * cb).sum(), (ca * ca).sum(), (cb * cb).sum()
    den = np.sqrt(abs(var_x)) * np.sqrt(abs(var_y))
    return 0.0 if den == 0 else cov / den


def ref_cka(x: np.ndarray, y: np.ndarray, kernel: str = "ip", sigma: float = 1.0, unbiased: bool = False) -> float:
    """platonic's CKA with its 1e-6, on centred float64 data; RBF kernels as K − 1 = expm1(−d²/2σ²) (both HSICs are
    unchanged by a constant, and expm1 keeps the small deviations exact). HSIC(K, K) of a symmetric kernel is a
    squared norm for both estimators; round-off below 0 counts as 0."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    if kernel == "ip":
        k, l = x @ x.T, y @ y.T  # noqa: E741
    else:
        k, l = (np.expm1(-cdist(z, z, "sqeuclidean") / (2 * sigma**2)) for z in (x, y))  # noqa: E741
    n = k.shape[0]

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        if not unbiased:
            h = np.eye(n) - 1.0 / n
            return float(((h @ a @ h) * b).sum())
        a, b = a.copy(), b.copy()
        np.fill_diagonal(a, 0)
        np.fill_diagonal(b, 0)
        value = (a * b.T).sum() + a.sum() * b.sum() / ((n - 1) * (n - 2)) - 2 * (a @ b).sum() / (n - 2)
        return value / (n * (n - 3))

    return hsic(k, l) / (np.sqrt(max(hsic(k, k), 0.0) * max(hsic(l, l), 0.0)) + 1e-6)


def _as_integers(x: np.ndarray) -> tuple[np.ndarray, int]:
    """x = ints · 2**e exactly (ints: Python integers)."""
    x = np.asarray(x)
    bits = 24 if x.dtype == np.float32 else 53
    mant, expo = np.frexp(x.astype(np.float64))
    mant = np.round(mant * 2.0**bits).astype(np.int64)
    expo = expo.astype(np.int64) - bits
    nonzero = mant != 0
    low = int(expo[nonzero].min()) if nonzero.any() else 0
    shift = np.where(nonzero, expo - low, 0)
    ints = np.array([int(m) << int(s) for m, s in zip(mant.ravel(), shift.ravel(), strict=True)], dtype=object)
    return ints.reshape(x.shape), low


def exact_cknna(x: np.ndarray, y: np.ndarray, k: int, unbiased: bool = True) -> float:
    """platonic-rep CKNNA evaluated exactly: integer kernels, exact top-k (ties: lower index first), rational HSICs."""

    def graph(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        ints, low = _as_integers(z)
        gram = np.dot(ints, ints.T)
        n = gram.shape[0]
        mask = np.zeros((n, n), bool)
        for i in range(n):
            cand = [j for j in range(n) if not (unbiased and j == i)]
            cand.sort(key=lambda j: (-gram[i, j], j))
            mask[i, cand[:k]] = True
        return gram, mask, low

    def hsic(a: np.ndarray, b: np.ndarray) -> Fraction:
        n = a.shape[0]
        if unbiased:
            a, b = a.copy(), b.copy()
            np.fill_diagonal(a, 0)
            np.fill_diagonal(b, 0)
        trace, ta, tb = int((a * b.T).sum()), int(a.sum()), int(b.sum())
        ab, ba = int(np.dot(a.sum(0), b.sum(1))), int(np.dot(b.sum(0), a.sum(1)))
        if unbiased:
            value = Fraction(trace) + Fraction(ta * tb, (n - 1) * (n - 2)) - Fraction(2 * ab, n - 2)
            return value / (n * (n - 3))
        return Fraction(trace) - Fraction(ab + ba, n) + Fraction(ta * tb, n * n)

    (gk, mk, ex), (gl, ml, ey) = graph(x), graph(y)
    m = mk & ml
    kl = hsic(np.where(m, gk, 0), np.where(m, gl, 0))
    kk = hsic(np.where(mk, gk, 0), np.where(mk, gk, 0))
    ll = hsic(np.where(ml, gl, 0), np.where(ml, gl, 0))
    if kk * ll < 0:
        return float("nan")
    # K = gk · 4**ex, L = gl · 4**ey: the 1e-6 in integer units is 1e-6 / 4**(ex + ey)
    return float(kl) / (np.sqrt(float(kk)) * np.sqrt(float(ll)) + 1e-6 * 2.0 ** (-2 * (ex + ey)))


# ---------------------------------------------------------------------------------------------------------------------
# adversarial inputs


@st.composite
def pairs(draw, sizes=(24, 40), dims=(3, 5)):
    """Two related embeddings with independent scales 10^[-12, 12], offsets up to 1e3 times their spread (along the
    all-ones direction, as language-model embeddings sit in a cone, or a random one), optionally rank-deficient
    (d − 1 or d − 2 free directions), heavy-tailed columns, in float32 or float64."""
    n, d = draw(st.sampled_from(sizes)), draw(st.sampled_from(dims))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rank = d - draw(st.sampled_from([0, 1, 2]))
    x = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d))
    x *= np.exp(rng.normal(size=d))  # column scales spread over ~e^±2
    y = np.tanh(x @ rng.normal(size=(d, 3))) + 0.3 * rng.normal(size=(n, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    out = []
    for z in (x, y):
        spread = z.std(0).mean()
        offset = draw(st.sampled_from([0.0, 1.0, 10.0, 1e3])) * spread
        direction = np.ones(z.shape[1]) if draw(st.booleans()) else rng.normal(size=z.shape[1])
        scale = 10.0 ** draw(st.floats(-12, 12))
        out.append(((z + offset * direction) * scale).astype(dtype))
    return out[0], out[1], dtype


def _tolerance(dtype) -> dict:
    return {"atol": ATOL32, "rtol": ATOL32} if dtype == np.float32 else {"atol": 1e-8, "rtol": 1e-8}


# ---------------------------------------------------------------------------------------------------------------------
# regression tests: ../shared/cases/numerics.py blocks 1, 3 and 6


def test_block1_dcor_is_the_same_at_every_scale_in_float32():
    """dCor used to return 0 at 1e±10: the product of the two variances under/overflowed in float32 and the
    zero-denominator rule then read "independent". dcor 0.7 gives 0.4397 at every scale."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = x**2
    want = ref_dcor_sqr(x, y) ** 0.5
    assert abs(want - 0.4397) < 1e-4
    for s in (1.0, 1e-12, 1e-10, 1e-6, 1e6, 1e10, 1e12):
        xs, ys = (s * x).astype(np.float32), (s * y).astype(np.float32)
        got = dcor(xs, ys)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(float(got), want, atol=1e-5, err_msg=f"scale {s}")
        np.testing.assert_allclose(float(u_dcor_sqr(xs, ys)), ref_dcor_sqr(x, y, unbiased=True), atol=1e-5)
        np.testing.assert_allclose(float(dcor(xs, ys, exponent=1.9)), ref_dcor_sqr(x, y, 1.9) ** 0.5, atol=1e-5)


def test_block1_zero_variance_rule_fires_only_for_a_constant_input():
    """Under jit (no eager refusal) a constant input gives dcor 0.7's 0, a tiny non-constant one its true value."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    fn = jax.jit(lambda a, b: dcor(a, b))
    assert float(fn(np.full_like(x, 1e-12), x)) == 0.0
    assert float(fn(x, np.full_like(x, 3e12))) == 0.0
    np.testing.assert_allclose(float(fn(1e-12 * x, 1e12 * x**3)), ref_dcor_sqr(x, x**3) ** 0.5, atol=1e-5)


def test_block3_pcovr_float32_rank_deficient_is_finite_and_matches_float64():
    """XᵀX + 1e-6 I of a rank-6 X is not positive definite in float32: the Cholesky ridge returned NaN everywhere."""
    rng = np.random.default_rng(0)
    rng.normal(size=(300, 4))  # the draws of numerics.py before block 3
    xr = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 20))
    yr = xr @ rng.normal(size=(20, 1))
    fit32 = pcovr(xr.astype(np.float32), yr.astype(np.float32))
    fit64 = pcovr(xr, yr)
    assert fit32.eigenvalues.dtype == jnp.float32
    assert bool(jnp.isfinite(fit32.pxt).all())
    np.testing.assert_allclose(fit32.eigenvalues, fit64.eigenvalues, rtol=1e-5)
    np.testing.assert_allclose(fit64.eigenvalues, [16905.3484254, 8702.93770624], rtol=1e-8)
    _assert_projections_close(fit32.transform(xr.astype(np.float32)), fit64.transform(xr), 1e-4)


def test_block6_cknna_full_neighbourhood_is_unbiased_cka_at_any_offset():
    """CKNNA(k = N − 1) is unbiased CKA; float32 sums of offset-sized kernel entries gave NaN at offset 10 and 5.19
    at offset 1000."""
    r = np.random.default_rng(1234)
    x = r.standard_normal((500, 64)).astype(np.float32)
    y = (x @ r.standard_normal((64, 32)) + r.standard_normal((500, 32))).astype(np.float32)
    want = float(unbiased_cka(x, y))
    np.testing.assert_allclose(want, 0.5833776, atol=1e-6)
    for o in (0.0, 10.0, 1000.0):
        xo, yo = (x + o).astype(np.float32), (y + o).astype(np.float32)
        np.testing.assert_allclose(float(cknna(xo, yo, k=None)), want, atol=1e-4, err_msg=f"offset {o}")
        np.testing.assert_allclose(float(cknna(xo, yo, k=499)), want, atol=1e-4, err_msg=f"offset {o}")


@pytest.mark.parametrize("unbiased", [True, False])
def test_block6_cknna_smaller_k_equals_the_exact_definition_at_offset_1000(unbiased):
    """Near-full masks, a mid-size k and the seed's k = 25, far off-centre (the masked HSICs then cancel their
    offset-sized terms by 10⁷ or more): float32 equals the exact value of the definition on the same inputs."""
    r = np.random.default_rng(1234)
    x = r.standard_normal((60, 16)).astype(np.float32)
    y = (x @ r.standard_normal((16, 8)) + r.standard_normal((60, 8))).astype(np.float32)
    xo, yo = (x + 1000).astype(np.float32), (y + 1000).astype(np.float32)
    for k in (5, 25, 30, 57, 58):
        want = exact_cknna(xo, yo, k, unbiased)
        np.testing.assert_allclose(float(cknna(xo, yo, k=k, unbiased=unbiased)), want, rtol=1e-4, atol=1e-4, err_msg=k)


def test_narrow_cone_of_l2_normalised_embeddings():
    """Rows of X + 1000 l2-normalised (language-model embeddings: a narrow cone around one direction)."""
    r = np.random.default_rng(7)
    x = r.standard_normal((80, 12)) + 1000
    y = np.tanh(r.standard_normal((80, 12)) @ r.standard_normal((12, 6))) + x[:, :6] - 1000 + 1000
    x32, y32 = ((z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32) for z in (x, y))
    for k in (10, 79):
        np.testing.assert_allclose(float(cknna(x32, y32, k=k)), exact_cknna(x32, y32, k), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(float(unbiased_cka(x32, y32)), ref_cka(x32, y32, unbiased=True), atol=1e-4)
    np.testing.assert_allclose(float(dcor(x32, y32)), ref_dcor_sqr(x32, y32) ** 0.5, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# property tests against the references


@PROPS
@given(data=pairs(sizes=(24, 60)), exponent=st.sampled_from([1.0, 0.5, 1.7]))
def test_dcor_family_matches_the_float64_reference(data, exponent):
    x, y, dtype = data
    tol = _tolerance(dtype)
    np.testing.assert_allclose(float(dcor(x, y, exponent=exponent)), ref_dcor_sqr(x, y, exponent) ** 0.5, **tol)
    np.testing.assert_allclose(float(dcor_sqr(x, y, exponent=exponent)), ref_dcor_sqr(x, y, exponent), **tol)
    np.testing.assert_allclose(
        float(u_dcor_sqr(x, y, exponent=exponent)), ref_dcor_sqr(x, y, exponent, unbiased=True), **tol
    )


@PROPS
@given(data=pairs(sizes=(24, 60)), unbiased=st.booleans())
def test_dcor_is_scale_invariant(data, unbiased):
    """dCor of the unscaled pair, and of the pair scaled by 1e±12, agree (it is exactly scale invariant)."""
    x, y, dtype = data
    fn = u_dcor_sqr if unbiased else dcor
    base = float(fn(x / np.abs(x).max(), y / np.abs(y).max()))
    for s in (1e-12, 1e12):
        np.testing.assert_allclose(float(fn((x * s).astype(dtype), y)), base, **_tolerance(dtype))


@PROPS
@given(data=pairs(sizes=(24, 60)), kernel=st.sampled_from(["ip", "rbf"]), unbiased=st.booleans())
def test_cka_matches_the_float64_reference(data, kernel, unbiased):
    """Linear CKA at any scale (including where platonic's 1e-6 takes over) and RBF CKA with a bandwidth near the
    data's spread (distances tiny, comparable or huge relative to σ as the scale varies)."""
    x, y, dtype = data
    sigma = float(np.median(cdist(x.astype(np.float64), x.astype(np.float64)))) if kernel == "rbf" else 1.0
    sigma = sigma or 1.0
    want = ref_cka(x, y, kernel, sigma, unbiased)
    got = cka(x, y, kernel=kernel, sigma=sigma, unbiased=unbiased)
    assert got.dtype == dtype
    np.testing.assert_allclose(float(got), want, **_tolerance(dtype))


@settings(max_examples=18, deadline=None)
@given(data=pairs(sizes=(32,)), which=st.sampled_from(["2", "half", "half+1", "N-2", "N-1"]))
def test_cknna_matches_the_exact_definition(data, which):
    """Both estimators, k from 2 to N − 1 (sparse and dense masks); float32 within 1e-4 of the exact value at
    offsets up to 1e3 (a few shapes only: every k compiles anew). float64 runs the plain evaluation (bit-identical
    for fresh and precomputed graphs), which itself loses up to ~(offset/spread)⁴·1e-16 relative near full masks,
    so it gets the same tolerance."""
    x, y, _ = data
    n = x.shape[0]
    k = {"2": 2, "half": (n - 1) // 2, "half+1": (n - 1) // 2 + 1, "N-2": n - 2, "N-1": n - 1}
    for unbiased in (True, False):
        want = exact_cknna(x, y, k[which], unbiased)
        got = cknna(x, y, k=k[which], unbiased=unbiased, mesh=None)
        np.testing.assert_allclose(float(got), want, atol=ATOL32, rtol=ATOL32, err_msg=f"k={k[which]} {unbiased=}")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([30, 80]),
    d=st.sampled_from([5, 12, 40]),
    rank=st.sampled_from([1, 3, 100]),
    log_scale=st.floats(-2, 2),
)
def test_pcovr_float32_matches_float64_on_rank_deficient_inputs(seed, n, d, rank, log_scale):
    """Feature space (n > d) and sample space (n ≤ d), rank 1, 3 or full: float32 stays finite and close."""
    rng = np.random.default_rng(seed)
    r = min(rank, n, d)
    x = rng.normal(size=(n, r)) @ rng.normal(size=(r, d)) * 10.0**log_scale
    x -= x.mean(0)
    y = x @ rng.normal(size=(d, 2)) + 0.1 * rng.normal(size=(n, 2)) * 10.0**log_scale
    fit64 = pcovr(x, y)
    fit32 = pcovr(x.astype(np.float32), y.astype(np.float32))
    assert bool(jnp.isfinite(fit32.pxt).all()) and bool(jnp.isfinite(fit32.eigenvalues).all())
    top = float(fit64.eigenvalues[0])
    np.testing.assert_allclose(fit32.eigenvalues, fit64.eigenvalues, rtol=1e-4, atol=1e-4 * top)
    if float(fit64.eigenvalues[1]) > 1e-3 * top and float(fit64.eigenvalues[0] - fit64.eigenvalues[1]) > 1e-3 * top:
        _assert_projections_close(fit32.transform(x.astype(np.float32)), fit64.transform(x), 1e-3)


def _assert_projections_close(ours, want, rtol):
    """Latent coordinates equal column by column up to the free sign of each component."""
    ours, want = np.asarray(ours, np.float64), np.asarray(want, np.float64)
    for j in range(want.shape[1]):
        sign = np.sign(ours[:, j] @ want[:, j]) or 1.0
        np.testing.assert_allclose(sign * ours[:, j], want[:, j], atol=rtol * np.abs(want).max())
