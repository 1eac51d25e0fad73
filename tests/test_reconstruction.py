"""Feature reconstruction measures (GFRE, GFRD, LFRE) and Ridge2FoldCV against scikit-matter 0.4.1 (SPEC §8)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign.reconstruction import (
    gfrd,
    gfre,
    lfre,
    pointwise_gfrd,
    pointwise_gfre,
    pointwise_lfre,
    train_test_indices,
)
from jaxalign.ridge import DEFAULT_ALPHAS, SEED, fit_predict_ridge2fold, kfold_halves, ridge2fold_cv

skmatter_metrics = pytest.importorskip("skmatter.metrics")
skmatter_linear = pytest.importorskip("skmatter.linear_model")
sklearn_ms = pytest.importorskip("sklearn.model_selection")

CASES = ("correlated", "independent", "manifold3", "heavytail")
KEY = re.compile(r"skmatter\.(GFRE|GFRD|LFRE)\((X->Y|Y->X)(?:, n_local_points=(\d+))?\)")


def _anchor_entries() -> list[tuple[str, str, str, str, int | None]]:
    """(case, measure, direction, k) of every skmatter entry, read from the anchor file at collection time."""
    import json

    from conftest import REFERENCE

    data = json.loads((REFERENCE / "expected_pypi.json").read_text())
    out = []
    for case in CASES:
        for key in data[case]:
            m = KEY.fullmatch(key)
            if m:
                out.append((case, key, m.group(1), m.group(2), None if m.group(3) is None else int(m.group(3))))
    return out


ENTRIES = _anchor_entries()


def _pair(inputs, case, direction, dtype=np.float64):
    x, y = inputs[f"{case}_X"].astype(dtype), inputs[f"{case}_Y"].astype(dtype)
    return (x, y) if direction == "X->Y" else (y, x)


def _measure(name, x, y, k):
    if name == "GFRE":
        return gfre(x, y)
    if name == "GFRD":
        return gfrd(x, y)
    return lfre(x, y, k=k)


def _skmatter_ridge() -> object:
    """The estimator scikit-matter's reconstruction measures build by default."""
    return skmatter_linear.Ridge2FoldCV(
        alphas=np.geomspace(1e-9, 0.9, 20),
        alpha_type="relative",
        regularization_method="cutoff",
        random_state=SEED,
        shuffle=True,
        scoring="neg_root_mean_squared_error",
        n_jobs=1,
    )


def _related(seed: int, n: int, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) * rng.uniform(0.1, 3.0, size=dx)
    y = np.tanh(x @ rng.normal(size=(dx, dy)) / np.sqrt(dx)) + 0.1 * rng.normal(size=(n, dy))
    return x, y


# ---------------------------------------------------------------------------------------------------------------------
# anchors


def test_every_skmatter_entry_is_covered():
    assert len(ENTRIES) == 20
    assert {e[2] for e in ENTRIES} == {"GFRE", "GFRD", "LFRE"}


@pytest.mark.parametrize(("case", "key", "name", "direction", "k"), ENTRIES, ids=[f"{e[0]}-{e[1]}" for e in ENTRIES])
def test_anchor_values(inputs, expected_pypi, case, key, name, direction, k):
    x, y = _pair(inputs, case, direction)
    np.testing.assert_allclose(float(_measure(name, x, y, k)), expected_pypi[case][key], rtol=1e-6)


@pytest.mark.parametrize(("case", "direction"), [("correlated", "X->Y"), ("manifold3", "Y->X")])
def test_float32_close_to_float64(inputs, case, direction):
    """float32 within 1e-4 of float64, LFRE included: its k=20 centred neighbourhoods are rank-deficient in d ≥ 20,
    which the rank floor of the final ridge fit handles (see jaxalign.ridge)."""
    x64, y64 = _pair(inputs, case, direction)
    x32, y32 = _pair(inputs, case, direction, np.float32)
    for name in ("GFRE", "GFRD", "LFRE"):
        v32 = _measure(name, x32, y32, 20)
        assert v32.dtype == np.float32
        np.testing.assert_allclose(float(v32), float(_measure(name, x64, y64, 20)), atol=1e-4, err_msg=name)


# Small problems share one shape, (60, 5) vs (60, 4) with k = 8, so they share compilations; the heavytail-shaped
# one reuses the anchor tests' compilations.
SMALL = (60, 5, 4)
K_SMALL = 8


@pytest.mark.parametrize(("seed", "n", "dx", "dy", "k"), [(1, *SMALL, K_SMALL), (2, 300, 20, 12, 20)])
def test_matches_skmatter_on_random_data(seed, n, dx, dy, k):
    x, y = _related(seed, n, dx, dy)
    for a, b in ((x, y), (y, x)):
        np.testing.assert_allclose(
            np.asarray(pointwise_gfre(a, b)), skmatter_metrics.pointwise_global_reconstruction_error(a, b), rtol=1e-9
        )
        np.testing.assert_allclose(
            np.asarray(pointwise_lfre(a, b, k=k)),
            skmatter_metrics.pointwise_local_reconstruction_error(a, b, k),
            rtol=1e-9,
        )
        if a.shape[1] <= b.shape[1]:  # the anchor crashes otherwise (scikit-matter issue #269)
            np.testing.assert_allclose(
                np.asarray(pointwise_gfrd(a, b)),
                skmatter_metrics.pointwise_global_reconstruction_distortion(a, b),
                rtol=1e-9,
            )


def test_given_indices_match_skmatter():
    x, y = _related(3, *SMALL)
    test = np.arange(0, 60, 2)
    np.testing.assert_allclose(
        float(gfre(x, y, test_idx=test)), skmatter_metrics.global_reconstruction_error(x, y, test_idx=test), rtol=1e-9
    )
    train = np.arange(30)
    np.testing.assert_allclose(
        float(lfre(x, y, k=K_SMALL, train_idx=train)),
        skmatter_metrics.local_reconstruction_error(x, y, K_SMALL, train_idx=train),
        rtol=1e-9,
    )


def test_scale_all_fits_the_scalers_on_every_row():
    """``scale="all"`` (seed 003 §II A): X and Y scaled to zero mean and unit total variance on all rows
    (scikit-matter's StandardFlexibleScaler fitted on every row), then scikit-matter's ridge on the train rows."""
    from skmatter.preprocessing import StandardFlexibleScaler

    x, y = _related(6, *SMALL)
    x = x * 5.0 + 3.0  # off-centre and scaled: the scaler's rows matter
    train, test = train_test_indices(x.shape[0])
    xs = StandardFlexibleScaler(column_wise=False).fit(x).transform(x)
    ys = StandardFlexibleScaler(column_wise=False).fit(y).transform(y)
    ridge = _skmatter_ridge().fit(xs[train], ys[train])
    expected = np.sqrt(np.mean(np.sum((ys[test] - ridge.predict(xs[test])) ** 2, axis=1)))
    np.testing.assert_allclose(float(gfre(x, y, scale="all")), expected, rtol=1e-9)
    assert abs(float(gfre(x, y, scale="all")) - float(gfre(x, y))) > 1e-6  # the train-row scaler differs
    assert np.isfinite(float(lfre(x, y, k=K_SMALL, scale="all")))
    with pytest.raises(ValueError, match="`scale` must be one of"):
        gfre(x, y, scale="test")


def test_ridge_matches_skmatter():
    x, y = _related(4, 40, 30, 9)  # fewer fold rows than features: the cutoff matters
    ours = ridge2fold_cv(x, y)
    ref = _skmatter_ridge().fit(x, y)
    np.testing.assert_allclose(np.asarray(ours.weights), ref.coef_.T, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ours.scores), ref.cv_values_, rtol=1e-10)
    assert float(ours.alpha) == ref.alpha_


@pytest.mark.parametrize(
    ("n", "d", "n_query", "repeated"),
    [(200, 12, 5, 0), (200, 12, 5, 3), (20, 64, 1, 0), (20, 64, 50, 0), (60, 64, 3, 0)],
)
def test_ridge_tall_and_row_space_paths_match_skmatter(n, d, n_query, repeated):
    """Tall folds go through R factors and Gram products (a full-rank final fit by triangular solves, a rank-deficient
    one, with ``repeated`` duplicated columns, by the truncated SVD), few rows in many dimensions through a row-space
    basis; all must give scikit-matter's predictions (fit on x, then predict the queries)."""
    x, y = _related(5, n + n_query, d, 7)
    if repeated:
        x[:, -repeated:] = x[:, :repeated]
    x = x - x[:n].mean(0)
    ref = _skmatter_ridge().fit(x[:n], y[:n]).predict(x[n:])
    alphas = jnp.asarray(DEFAULT_ALPHAS)
    ours = fit_predict_ridge2fold(jnp.asarray(x[:n]), jnp.asarray(y[:n]), jnp.asarray(x[n:]), alphas)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-7, atol=1e-10)
    one = fit_predict_ridge2fold(jnp.asarray(x[:n]), jnp.asarray(y[:n]), jnp.asarray(x[n]), alphas)
    np.testing.assert_allclose(np.asarray(one), ref[0], rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# splits


@pytest.mark.parametrize("n", [2, 3, 10, 101, 500])
def test_splits_match_sklearn(n):
    train, test = train_test_indices(n)
    ref_train, ref_test = sklearn_ms.train_test_split(
        np.arange(n), test_size=0.5, train_size=0.5, random_state=SEED, shuffle=True
    )
    np.testing.assert_array_equal(train, ref_train)
    np.testing.assert_array_equal(test, ref_test)
    for shuffle in (True, False):
        fold1, fold2 = kfold_halves(n, shuffle=shuffle)
        ref1, ref2 = next(sklearn_ms.KFold(2, shuffle=shuffle, random_state=SEED if shuffle else None).split(range(n)))
        np.testing.assert_array_equal(fold1, ref1)
        np.testing.assert_array_equal(fold2, ref2)


def test_one_given_index_set_takes_the_complement():
    train, test = train_test_indices(10, test_idx=[7, 1, 3])
    np.testing.assert_array_equal(train, [0, 2, 4, 5, 6, 8, 9])
    np.testing.assert_array_equal(test, [7, 1, 3])
    train, test = train_test_indices(5, train_idx=np.array([4, 0]))
    np.testing.assert_array_equal(test, [1, 2, 3])


def test_pointwise_follow_the_test_order_and_pool_by_rms():
    x, y = _related(5, *SMALL)
    test = np.random.default_rng(0).permutation(60)[:30]
    kinds = ((pointwise_gfre, gfre, {}), (pointwise_gfrd, gfrd, {}), (pointwise_lfre, lfre, {"k": K_SMALL}))
    for pointwise, pooled, kw in kinds:
        p = np.asarray(pointwise(x, y, test_idx=test, **kw))
        assert p.shape == (30,)
        np.testing.assert_allclose(float(pooled(x, y, test_idx=test, **kw)), np.sqrt(np.mean(p**2)), rtol=1e-12)
        np.testing.assert_allclose(pointwise(x, y, test_idx=test[::-1], **kw), p[::-1], rtol=1e-12)


def test_lfre_tiles_and_mesh_agree():
    x, y = _related(6, *SMALL)
    np.testing.assert_allclose(
        pointwise_lfre(x, y, k=K_SMALL, tile=4, mesh="auto"), pointwise_lfre(x, y, k=K_SMALL), rtol=1e-12
    )


# ---------------------------------------------------------------------------------------------------------------------
# properties

N, D = 60, 5
SCALES = st.lists(st.floats(1e-2, 1e2), min_size=D, max_size=D)


def _gaussian(seed: int, scales: list[float]) -> np.ndarray:
    """Gaussian rows with hypothesis-drawn column scales, mixed by a random rotation (so no axis is special)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(N, D)) * np.asarray(scales)) @ np.linalg.qr(rng.normal(size=(D, D)))[0]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), SCALES)
def test_self_reconstruction_is_exact(seed, scales):
    x = _gaussian(seed, scales)
    assert float(gfre(x, x)) < 1e-6
    assert float(gfrd(x, x)) < 1e-6


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), SCALES)
def test_gfre_invariant_to_rotating_the_source(seed, scales):
    x = _gaussian(seed, scales)
    y = np.sin(x[:, :4]) + x[:, 1:] ** 2 / 10  # (N, 4): the shape of the other tests' small case
    q = np.linalg.qr(np.random.default_rng(seed + 1).normal(size=(D, D)))[0]
    np.testing.assert_allclose(float(gfre(x @ q, y)), float(gfre(x, y)), rtol=1e-7, atol=1e-9)


def test_gfrd_source_wider_than_target():
    """d_x > d_y (the anchor crashes): zero when Y is an isometric image of X's informative columns, and equal to
    the padded definition assembled from scikit-matter's ridge and scipy's Procrustes otherwise."""
    n, dx, dy = SMALL
    rng = np.random.default_rng(7)
    z = rng.normal(size=(n, dy))
    q = np.linalg.qr(rng.normal(size=(dy, dy)))[0]
    assert float(gfrd(np.hstack([z, np.zeros((n, dx - dy))]), z @ q)) < 1e-10

    x, y = _related(8, *SMALL)
    train, test = train_test_indices(n)
    sx = (x - x[train].mean(0)) / np.sqrt(x[train].var(0).sum())
    sy = (y - y[train].mean(0)) / np.sqrt(y[train].var(0).sum())
    w_pad = np.pad(_skmatter_ridge().fit(sx[train], sy[train]).coef_.T, ((0, 0), (0, dx - dy)))
    rot = scipy.linalg.orthogonal_procrustes(sx[train], sx[train] @ w_pad)[0]
    expected = np.linalg.norm(sx[test] @ w_pad - sx[test] @ rot, axis=1)
    np.testing.assert_allclose(np.asarray(pointwise_gfrd(x, y)), expected, rtol=1e-8)


def test_differentiable():
    x, y = _related(9, *SMALL)
    for fn in (lambda a: gfre(a, y), lambda a: lfre(a, y, k=K_SMALL)):
        g = np.asarray(jax.grad(fn)(x))
        assert g.shape == x.shape and np.isfinite(g).all() and np.abs(g).max() > 0


# ---------------------------------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs():
    x, y = _related(10, 30, 3, 2)
    with pytest.raises(ValueError, match="`x` has total variance"):
        gfre(np.ones((30, 3)), y)
    with pytest.raises(ValueError, match="`y` has total variance"):
        lfre(x, np.full((30, 2), 2.0), k=5)
    with pytest.raises(ValueError, match="`k`=16"):
        lfre(x, y, k=16)  # 15 train points
    with pytest.raises(ValueError, match="`k`=1"):
        lfre(x, y, k=1)
    with pytest.raises(ValueError, match="`k` must be an integer"):
        lfre(x, y, k=2.5)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="`x` contains NaN"):
        gfre(bad, y)
    with pytest.raises(ValueError, match="`x` has 30 rows but `y` has 29"):
        gfrd(x, y[:29])
    with pytest.raises(ValueError, match="`y` must be 2-D"):
        gfre(x, y[:, 0])
    with pytest.raises(ValueError, match="`test_idx` holds indices outside"):
        gfre(x, y, test_idx=[0, 30])
    with pytest.raises(ValueError, match="`train_idx` must hold integer"):
        gfre(x, y, train_idx=np.ones(30, bool))
    with pytest.raises(ValueError, match="`alphas`"):
        gfre(x, y, alphas=[0.5, 1.0])
    with pytest.raises(ValueError, match="train set has 1 row"):
        gfre(x, y, train_idx=[4])
    assert DEFAULT_ALPHAS[0] == 1e-9 and len(DEFAULT_ALPHAS) == 20
