"""SVCCA against independent numpy/scipy and scikit-learn computations, plus properties and bad inputs.

platonic-rep's ``svcca`` has no reference value (randomised ``svd_lowrank``, iterative sklearn CCA and added noise),
so the anchor here is its procedure re-run deterministically: the canonical correlations of the top-q left singular
vectors, from scipy's principal angles (exact) and from sklearn's ``CCA`` + ``np.corrcoef`` as platonic does
(iterative, hence the looser tolerance).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from conftest import CASES
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign.metrics.svcca import svcca


def top_u(a: np.ndarray, q: int) -> np.ndarray:
    """platonic-rep's preprocessing (torch.std is ddof=1) and the top-q left singular vectors, in numpy."""
    a = a - a.mean(0)
    a = a / (a.std(0, ddof=1) + 1e-8)
    return np.linalg.svd(a, full_matrices=False)[0][:, :q]


def svcca_principal_angles(x: np.ndarray, y: np.ndarray, q: int = 10) -> float:
    return float(np.cos(scipy.linalg.subspace_angles(top_u(x, q), top_u(y, q))).mean())


def svcca_sklearn(x: np.ndarray, y: np.ndarray, q: int = 10) -> float:
    from sklearn.cross_decomposition import CCA

    u1, u2 = top_u(x, q), top_u(y, q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NIPALS may stop at max_iter on near-equal correlations
        a, b = CCA(n_components=q).fit(u1, u2).transform(u1, u2)
    return float(np.mean([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(q)]))


@pytest.mark.parametrize("case", CASES)
def test_reference_cases(case, inputs):
    x, y = inputs[f"{case}_X"], inputs[f"{case}_Y"]
    got = svcca(x, y)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), svcca_principal_angles(x, y), rtol=1e-10)
    np.testing.assert_allclose(float(got), svcca_sklearn(x, y), atol=1e-4)
    got32 = svcca(x.astype(np.float32), y.astype(np.float32))
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(float(got32), float(got), atol=1e-4)


def test_q_and_jit(inputs):
    x, y = inputs["manifold3_X"], inputs["manifold3_Y"]
    for q in (1, 30):
        np.testing.assert_allclose(float(svcca(x, y, q=q)), svcca_principal_angles(x, y, q), rtol=1e-10)
    jitted = jax.jit(lambda a, b: svcca(a, b, q=30))
    np.testing.assert_allclose(float(jitted(x, y)), float(svcca(x, y, q=30)), rtol=1e-10)


def test_differentiable(inputs):
    x, y = inputs["correlated_X"][:100], inputs["correlated_Y"][:100]
    grad = jax.grad(lambda a: svcca(a, y, q=5))(jnp.asarray(x))
    assert grad.shape == x.shape and bool(jnp.isfinite(grad).all())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_properties(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 8))
    y = np.tanh(x @ rng.standard_normal((8, 6))) + rng.standard_normal((40, 6))
    q = 4
    value = float(svcca(x, y, q=q))
    assert 0.0 <= value <= 1.0 + 1e-12
    np.testing.assert_allclose(float(svcca(x, x, q=q)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(float(svcca(y, x, q=q)), value, rtol=1e-10)
    # Column-wise standardisation: invariant to shifting, rescaling and permuting the columns (up to the +1e-8 added
    # to each standard deviation, a ~1e-7 relative perturbation for these scales).
    scale = rng.uniform(0.1, 10.0, size=8)
    shifted = (x * scale + rng.standard_normal(8))[:, rng.permutation(8)]
    np.testing.assert_allclose(float(svcca(shifted, y, q=q)), value, rtol=1e-6)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 30))
    with pytest.raises(ValueError, match=r"`q`=6 must be an integer with 1 <= q <= .* = 5"):
        svcca(x, y, q=6)  # more directions than x has columns
    with pytest.raises(ValueError, match=r"`q`=12 .* = 11"):
        svcca(y, y, q=12)  # a centred 12-row matrix has rank <= 11
    with pytest.raises(ValueError, match="`q`=0"):
        svcca(x, y, q=0)
    with pytest.raises(ValueError, match=r"`q`=2\.0"):
        svcca(x, y, q=2.0)
    with pytest.raises(ValueError, match="`y` has 11"):
        svcca(x, y[:11], q=2)
    bad = y.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="`y` contains NaN or inf"):
        svcca(x, bad, q=2)
    low_rank = rng.standard_normal((12, 2)) @ rng.standard_normal((2, 5))
    with pytest.raises(ValueError, match="`x` has fewer than q=3 non-degenerate"):
        svcca(low_rank, y, q=3)
