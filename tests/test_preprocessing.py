"""Preprocessing functions (SPEC §1) against their numpy definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign.preprocessing import center_scale_total_variance, clamp_quantile, l2_normalize, max_normalize, mean_pool

rng = np.random.default_rng(0)


def test_l2_normalize_rows_have_unit_norm():
    x = rng.normal(size=(20, 5))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(l2_normalize(x)), axis=1), 1.0, rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(q=st.floats(0.05, 0.99), seed=st.integers(0, 1000))
def test_clamp_quantile_is_platonic_exact_quantile(q, seed):
    x = np.random.default_rng(seed).standard_t(2, size=(17, 6))
    flat = np.sort(np.abs(x).ravel())
    bound = flat[int(q * flat.size)]
    np.testing.assert_array_equal(np.asarray(clamp_quantile(x, q)), np.clip(x, -bound, bound))


def test_clamp_quantile_one_is_identity_and_bad_q():
    x = rng.normal(size=(4, 3))
    np.testing.assert_array_equal(np.asarray(clamp_quantile(x, 1.0)), x)
    with pytest.raises(ValueError, match="`q`"):
        clamp_quantile(x, 0.0)


def test_max_normalize():
    x = rng.normal(size=(9, 4))
    out = np.asarray(max_normalize(x))
    np.testing.assert_allclose(np.abs(out).max(1), 1.0)
    x[2] = 0
    with pytest.raises(ValueError, match="all-zero row"):
        max_normalize(x)


def test_center_scale_total_variance_fit_on_rows():
    x = rng.normal(size=(30, 5)) * np.arange(1, 6) + 3
    out = np.asarray(center_scale_total_variance(x))
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(0).sum(), 1.0, rtol=1e-12)
    train = np.arange(0, 30, 2)
    part = np.asarray(center_scale_total_variance(x, fit_rows=train))
    ref = (x - x[train].mean(0)) / np.sqrt(x[train].var(0).sum())
    np.testing.assert_allclose(part, ref, rtol=1e-12)
    with pytest.raises(ValueError, match="total variance"):
        center_scale_total_variance(np.ones((5, 3)))


def test_mean_pool_matches_loop():
    feats = rng.normal(size=(11, 3))
    seg = np.array([0, 0, 1, 2, 2, 2, 3, 3, 3, 3, 4])
    ref = np.stack([feats[seg == s].mean(0) for s in range(5)])
    np.testing.assert_allclose(np.asarray(mean_pool(feats, seg)), ref, rtol=1e-12)
    with pytest.raises(ValueError, match="own no rows"):
        mean_pool(feats, seg, num_segments=6)
    with pytest.raises(ValueError, match="`segment_ids`"):
        mean_pool(feats, seg[:-1])


def test_standardize_matches_numpy_and_zeroes_constant_columns():
    from jaxalign.preprocessing import standardize

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)) * [1e-6, 1.0, 1e6, 3.0] + 5.0
    x[:, 3] = 7.0  # a constant column
    got = np.asarray(standardize(x.astype(np.float64)))
    want = (x[:, :3] - x[:, :3].mean(0)) / x[:, :3].std(0, ddof=1)
    np.testing.assert_allclose(got[:, :3], want, rtol=1e-5)
    assert np.all(got[:, 3] == 0.0)
    with pytest.raises(ValueError, match="`x`"):
        standardize(np.ones((1, 3)))
