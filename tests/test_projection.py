"""PCovR (SPEC §9) against scikit-matter 0.4.1: the stored anchor values and the package itself."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign.projection import PCovR, pcovr

FEATURE_KEY = (
    "feature_space: PCovR(mixing=0.5, n_components=2).fit(correlated_X, correlated_Y[:, :1]).transform(correlated_X)"
)
SAMPLE_KEY = (
    "sample_space: PCovR(mixing=0.5, n_components=2).fit(correlated_X[:40], correlated_Y[:40, :1])"
    ".transform(correlated_X[:40])"
)


def assert_columns_close(ours, expected, rtol):
    """Equal column by column up to a sign flip (eigenvectors are defined up to sign)."""
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    assert ours.shape == expected.shape
    for j in range(expected.shape[1]):
        sign = np.sign(ours[:, j] @ expected[:, j])
        np.testing.assert_allclose(sign * ours[:, j], expected[:, j], rtol=rtol, atol=rtol * np.abs(expected).max())


def skmatter_pcovr(x, y, **kwargs):
    from skmatter.decomposition import PCovR as SkPCovR

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "does not automatically center data"
        return SkPCovR(**kwargs).fit(x, y)


@pytest.mark.parametrize(("rows", "key", "space"), [(None, FEATURE_KEY, "feature"), (40, SAMPLE_KEY, "sample")])
def test_reference(inputs, expected_pcovr, rows, key, space):
    x = inputs["correlated_X"][:rows]
    y = inputs["correlated_Y"][:rows, :1]
    fitted = pcovr(x, y, alpha=0.5, n_components=2)
    assert fitted.space == expected_pcovr[f"{space}_space: space_"] == space
    assert_columns_close(fitted.transform(x), expected_pcovr[key], rtol=1e-6)


@pytest.mark.parametrize(("rows", "key"), [(None, FEATURE_KEY), (40, SAMPLE_KEY)])
def test_float32_close_to_float64(inputs, expected_pcovr, rows, key):
    x = inputs["correlated_X"][:rows].astype(np.float32)
    y = inputs["correlated_Y"][:rows, :1].astype(np.float32)
    t32 = pcovr(x, y).transform(x)
    assert t32.dtype == jnp.float32
    assert_columns_close(t32, expected_pcovr[key], rtol=1e-4)


@settings(max_examples=10, deadline=None)
@given(
    n=st.integers(6, 40),
    d=st.integers(2, 12),
    p=st.integers(1, 3),
    alpha=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_skmatter(n, d, p, alpha, seed):
    """Random data in both spaces: projector, space and transform of new rows equal scikit-matter's, signs too."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + 0.3
    y = np.tanh(x @ rng.normal(size=(d, p))) + 0.5 * rng.normal(size=(n, p))
    n_components = min(2, n, d)
    sk = skmatter_pcovr(x, y, mixing=alpha, n_components=n_components)
    ours = pcovr(x, y, alpha=alpha, n_components=n_components)
    assert ours.space == sk.space_
    x_new = rng.normal(size=(5, d))
    # Compare components separated from the other computed ones (a near-degenerate eigenpair is not unique);
    # components with eigenvalue ~0 are tiny in both and pass through the absolute tolerance.
    vals = np.asarray(ours.eigenvalues)
    gaps = np.array(
        [min([abs(vals[j] - v) for i, v in enumerate(vals) if i != j], default=np.inf) for j in range(len(vals))]
    )
    ok = gaps > 1e-6 * vals[0]
    assert_columns_close(np.asarray(ours.transform(x_new))[:, ok], sk.transform(x_new)[:, ok], rtol=1e-6)
    assert_columns_close(np.asarray(ours.pxt)[:, ok], sk.pxt_[:, ok], rtol=1e-6)


@pytest.mark.parametrize("space", ["feature", "sample"])
def test_forced_space_agrees(space):
    """Both spaces give the same projection when XᵀX is well conditioned (PCovR's two forms are equivalent)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 6))
    y = x[:, :1] ** 2 + x[:, 1:2]
    sk = skmatter_pcovr(x, y, mixing=0.5, n_components=2, space=space)
    ours = pcovr(x, y, space=space)
    assert ours.space == space
    assert_columns_close(ours.transform(x), sk.transform(x), rtol=1e-6)
    other = pcovr(x, y, space="sample" if space == "feature" else "feature")
    assert_columns_close(ours.transform(x), other.transform(x), rtol=1e-6)


def test_projects_new_dataset_and_is_pytree():
    """Seed 003: fit on one dataset, project another into the same plane; the fit is a jit-friendly pytree."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 5))
    fitted = pcovr(x, x[:, 0])
    leaves, treedef = jax.tree_util.tree_flatten(fitted)
    assert len(leaves) == 3
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(rebuilt, PCovR) and rebuilt.space == "feature"
    other = rng.normal(size=(8, 5)) + 1.0
    np.testing.assert_allclose(
        jax.jit(lambda m, a: m.transform(a))(fitted, other), (other - x.mean(0)) @ np.asarray(fitted.pxt), rtol=1e-12
    )


def test_bad_inputs():
    x = np.random.default_rng(5).normal(size=(10, 4))
    with pytest.raises(ValueError, match="`y` has 9"):
        pcovr(x, x[:9, 0])
    with pytest.raises(ValueError, match="`n_components`"):
        pcovr(x, x[:, 0], n_components=5)
    with pytest.raises(ValueError, match="`n_components`"):
        pcovr(x, x[:, 0], n_components=0)
    with pytest.raises(ValueError, match="`alpha`"):
        pcovr(x, x[:, 0], alpha=1.5)
    with pytest.raises(ValueError, match="`space`"):
        pcovr(x, x[:, 0], space="kernel")
    with pytest.raises(ValueError, match=r"`y`.*NaN"):
        pcovr(x, np.where(np.arange(10) == 3, np.nan, 1.0))
    with pytest.raises(ValueError, match="`x_new` has 3 features"):
        pcovr(x, x[:, 0]).transform(x[:, :3])
