"""TwoNN and Levina–Bickel MLE intrinsic dimension against DADApy 0.3.4 and scikit-dimension 0.5.0.

DADApy needs numpy<2 and jax 0.4.30, so it runs in its own interpreter (anchors.dadapy_runner; the ``dadapy``
environment of extractors.envs is built on first use): every DADApy value the tests below compare with is computed
in one batch by the session-scoped ``dadapy_twonn`` fixture.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CASES
from hypothesis import given, settings
from hypothesis import strategies as st

from anchors.dadapy_runner import run_calls, twonn_call
from jaxalign.metrics.intrinsic_dimension import distinct_neighbor_distances, mle_id, twonn
from jaxalign.neighbors import knn

SIDES = ("X", "Y")
ALGORITHMS = ("base", "ml")
#: The (algorithm, mu_fraction) pairs compared with DADApy directly, on each seed's input.
DIRECT = (("base", 0.9), ("base", 0.5), ("base", 0.77), ("ml", 0.9))
DIRECT_SEEDS = (0, 1, 2)


def _twonn_key(side: str, algorithm: str) -> str:
    suffix = "algorithm=base, mu_fraction=0.9" if algorithm == "base" else "algorithm=ml"
    return f"dadapy.compute_id_2NN[{side}] ({suffix})"


def _mle_key(side: str, comb: str) -> str:
    return f"skdim.MLE[{side}] (n_neighbors=20, comb={comb})"


def _skdim_mle(x: np.ndarray, k: int = 20, comb: str = "mle", unbiased: bool = False) -> float:
    import skdim

    return skdim.id.MLE(unbiased=unbiased).fit(np.asarray(x, float), n_neighbors=k, comb=comb).dimension_


def _subspace(rng: np.random.Generator, n: int, d: int, big_d: int) -> np.ndarray:
    """n Gaussian points on a random d-dimensional affine subspace of R^big_d."""
    basis, _ = np.linalg.qr(rng.normal(size=(big_d, d)))
    return rng.normal(size=(n, d)) @ basis.T + rng.normal(size=big_d)


def _direct_input(seed: int) -> np.ndarray:
    """The input of test_matches_dadapy_and_skdim_directly for ``seed``: a bent (2 + 2·seed)-d subspace of R^12."""
    return np.tanh(_subspace(np.random.default_rng(seed), 150, 2 + 2 * seed, 12))


def _mu_one_input() -> np.ndarray:
    return _subspace(np.random.default_rng(3), 100, 2, 5)


def _with_duplicates(seed: int, n: int = 120, d: int = 4) -> np.ndarray:
    """Distinct points plus copies: pairs, triples and one group of 7, shuffled, so copies are others' neighbours."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x = np.concatenate([x, x[:8], x[:3], x[:3], np.repeat(x[10:11], 6, axis=0)])
    return x[rng.permutation(len(x))]


# --------------------------------------------------------------------------------------------------------------------
# Anchors


@pytest.fixture(scope="session")
def dadapy_twonn(inputs) -> dict[tuple, float]:
    """DADApy's compute_id_2NN, run for real in the dadapy environment (one worker process), on every input the
    tests compare with, keyed (input name, algorithm, mu_fraction): the reference cases' sides, each direct seed and
    the mu_fraction = 1 input."""
    named = {
        f"{case}_{side}": (inputs[f"{case}_{side}"], [(a, 0.9) for a in ALGORITHMS]) for case in CASES for side in SIDES
    }
    named |= {f"seed{seed}": (_direct_input(seed), DIRECT) for seed in DIRECT_SEEDS}
    named["mu_one"] = (_mu_one_input(), [("base", 1.0)])
    keys = [(name, algorithm, mu) for name, (_, pairs) in named.items() for algorithm, mu in pairs]
    results = run_calls([twonn_call(named[name][0], algorithm, mu) for name, algorithm, mu in keys])
    return {key: result.value for key, result in zip(keys, results, strict=True)}


@pytest.fixture(scope="module")
def graphs(inputs):
    """One Euclidean 20-NN graph per (case, side, dtype), shared by TwoNN and MLE as in real use."""
    out = {}
    for case in CASES:
        for side in SIDES:
            x = inputs[f"{case}_{side}"]
            for dtype in (np.float64, np.float32):
                out[case, side, dtype] = knn(x.astype(dtype), 20, metric="euclidean")
    return out


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", CASES)
def test_twonn_matches_dadapy_anchor(inputs, expected_pypi, graphs, case, side, algorithm):
    got = twonn(inputs[f"{case}_{side}"], algorithm=algorithm, graph=graphs[case, side, np.float64])
    assert got.dtype == jnp.float64 and got.shape == ()
    np.testing.assert_allclose(float(got), expected_pypi[case][_twonn_key(side, algorithm)], rtol=1e-6)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", CASES)
def test_dadapy_environment_reproduces_reference(expected_pypi, dadapy_twonn, case, algorithm):
    """DADApy in its own environment gives the stored reference values (the anchor still is the anchor). To 1e-8:
    the same pinned environment rebuilt on a fresh clone (2026-12-02) gave TwoNN 5e-10 relative off the stored values
    (its least-squares fit's last bits follow the BLAS build and threads), while a wrong DADApy or numpy would be
    off by far more; the project's contract with its anchors is 1e-6."""
    for side in SIDES:
        want = expected_pypi[case][_twonn_key(side, algorithm)]
        np.testing.assert_allclose(dadapy_twonn[f"{case}_{side}", algorithm, 0.9], want, rtol=1e-8)


@pytest.mark.parametrize("comb", ["mle", "mean"])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", CASES)
def test_mle_matches_skdim_anchor(inputs, expected_pypi, graphs, case, side, comb):
    got = mle_id(inputs[f"{case}_{side}"], k=20, comb=comb, graph=graphs[case, side, np.float64])
    assert got.dtype == jnp.float64 and got.shape == ()
    np.testing.assert_allclose(float(got), expected_pypi[case][_mle_key(side, comb)], rtol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_float32_close_to_float64(graphs, case):
    for side in SIDES:
        g32, g64 = graphs[case, side, np.float32], graphs[case, side, np.float64]
        assert g32.values.dtype == jnp.float32
        for algorithm in ("base", "ml"):
            got = twonn(None, algorithm=algorithm, graph=g32)
            assert got.dtype == jnp.float32
            np.testing.assert_allclose(float(got), float(twonn(None, algorithm=algorithm, graph=g64)), rtol=1e-4)
        for comb in ("mle", "mean"):
            got = mle_id(None, comb=comb, graph=g32)
            assert got.dtype == jnp.float32
            np.testing.assert_allclose(float(got), float(mle_id(None, comb=comb, graph=g64)), rtol=1e-4)


def test_float32_features_stay_float32(inputs):
    x = inputs["manifold3_X"]
    for fn in (twonn, mle_id):
        got = fn(x.astype(np.float32))
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(float(got), float(fn(x)), rtol=1e-4)


@pytest.mark.parametrize("seed", DIRECT_SEEDS)
def test_matches_dadapy_and_skdim_directly(dadapy_twonn, seed):
    x = _direct_input(seed)
    graph = knn(x, 12, metric="euclidean")
    for algorithm, mu_fraction in DIRECT:
        want = dadapy_twonn[f"seed{seed}", algorithm, mu_fraction]
        got = twonn(None, algorithm=algorithm, mu_fraction=mu_fraction, graph=graph)
        np.testing.assert_allclose(float(got), want, rtol=1e-6)
    for k, comb, unbiased in [(5, "mle", False), (10, "mean", True), (12, "median", False), (3, "mle", True)]:
        want = _skdim_mle(x, k, comb, unbiased)
        got = mle_id(None, k=k, comb=comb, unbiased=unbiased, graph=graph)
        np.testing.assert_allclose(float(got), want, rtol=1e-10)
    np.testing.assert_allclose(float(twonn(x)), dadapy_twonn[f"seed{seed}", "base", 0.9], rtol=1e-6)
    np.testing.assert_allclose(float(mle_id(x, k=12, comb="median")), _skdim_mle(x, 12, "median"), rtol=1e-10)


def test_mu_fraction_one_switches_to_ml_like_dadapy(dadapy_twonn):
    x = _mu_one_input()
    np.testing.assert_allclose(float(twonn(x, mu_fraction=1.0)), float(twonn(x, algorithm="ml")), rtol=1e-12)
    np.testing.assert_allclose(float(twonn(x, mu_fraction=1.0)), dadapy_twonn["mu_one", "base", 1.0], rtol=1e-10)


# --------------------------------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=8, deadline=None)
@given(d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_linear_subspace_dimension_is_recovered(d, seed):
    graph = knn(_subspace(np.random.default_rng(seed), 800, d, 16), 20, metric="euclidean")
    estimates = [twonn(None, graph=graph), twonn(None, algorithm="ml", graph=graph)]
    estimates += [mle_id(None, graph=graph), mle_id(None, comb="mean", graph=graph)]
    for estimate in estimates:
        assert abs(float(estimate) / d - 1) < 0.15


@settings(max_examples=15, deadline=None)
@given(
    d=st.integers(2, 6),
    scale=st.floats(1e-3, 1e3),
    shift=st.floats(-1e2, 1e2),
    seed=st.integers(0, 2**16),
)
def test_invariant_to_rotation_translation_and_scaling(d, scale, shift, seed):
    rng = np.random.default_rng(seed)
    x = np.zeros((60, 6))  # fixed shape (one compilation); the data live in the first d coordinates
    x[:, :d] = rng.normal(size=(60, d))
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    moved = scale * x @ rotation + shift * rng.normal(size=6)
    g, g_moved = knn(x, 5, metric="euclidean"), knn(moved, 5, metric="euclidean")
    for kwargs in ({}, {"algorithm": "ml"}):
        np.testing.assert_allclose(
            float(twonn(None, graph=g_moved, **kwargs)), float(twonn(None, graph=g, **kwargs)), rtol=1e-7
        )
    for kwargs in ({"comb": "mle"}, {"comb": "mean"}):
        np.testing.assert_allclose(
            float(mle_id(None, k=5, graph=g_moved, **kwargs)), float(mle_id(None, k=5, graph=g, **kwargs)), rtol=1e-7
        )


def test_precomputed_graph_equals_computed():
    x = _subspace(np.random.default_rng(4), 200, 3, 9)
    small, large = knn(x, 2, metric="euclidean"), knn(x, 25, metric="euclidean")
    # Same neighbours; a k = 2 and a k = 25 search are different XLA programs whose distance sums may round apart by
    # an ulp (seen with jax 0.10), hence rtol 1e-14 rather than bit equality on the values.
    np.testing.assert_array_equal(small.indices, large.indices[:, :2])
    for graph in (small, large):
        for algorithm in ("base", "ml"):
            want = twonn(x, algorithm=algorithm)
            np.testing.assert_allclose(twonn(None, algorithm=algorithm, graph=graph), want, rtol=1e-14)
            np.testing.assert_allclose(twonn(x, algorithm=algorithm, graph=graph), want, rtol=1e-14)
    graph = knn(x, 25, metric="euclidean")
    for comb in ("mle", "mean", "median"):
        np.testing.assert_allclose(mle_id(None, k=20, comb=comb, graph=graph), mle_id(x, k=20, comb=comb), rtol=1e-14)


def test_jit_over_precomputed_graph_and_features():
    x = _subspace(np.random.default_rng(5), 150, 4, 10)
    graph = knn(x, 20, metric="euclidean")
    both = jax.jit(lambda g: (twonn(None, graph=g), mle_id(None, graph=g, comb="median")))(graph)
    np.testing.assert_allclose(both[0], twonn(x), rtol=1e-12)
    np.testing.assert_allclose(both[1], mle_id(x, comb="median"), rtol=1e-12)
    traced_x = jax.jit(lambda z: (twonn(z, algorithm="ml"), mle_id(z, k=7)))(jnp.asarray(x))
    np.testing.assert_allclose(traced_x[0], twonn(x, algorithm="ml"), rtol=1e-12)
    np.testing.assert_allclose(traced_x[1], mle_id(x, k=7), rtol=1e-12)


def test_gradients_are_finite_and_translation_free():
    x = jnp.asarray(_subspace(np.random.default_rng(6), 100, 3, 6))
    for fn in (twonn, lambda z: mle_id(z, k=10)):
        grad = jax.grad(fn)(x)
        assert bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).max()) > 0
        np.testing.assert_allclose(grad.sum(0), 0, atol=1e-9)  # translation invariance


# --------------------------------------------------------------------------------------------------------------------
# Duplicates


def test_drop_duplicates_warns_and_equals_deduplicated():
    x = _with_duplicates(0)
    unique = np.unique(x, axis=0)
    n_with_copy = int(sum((x == row).all(1).sum() > 1 for row in x))
    unique_graph = knn(unique, 10, metric="euclidean")
    cases = [
        (twonn, {}, "TwoNN"),
        (twonn, {"algorithm": "ml"}, "TwoNN"),
        (mle_id, {"k": 10, "comb": "mean", "unbiased": True}, "MLE"),
        (mle_id, {"k": 10, "comb": "median"}, "MLE"),
    ]
    for fn, kwargs, name in cases:
        with pytest.warns(
            UserWarning,
            match=rf"{n_with_copy} rows with an exact duplicate.*{len(x) - len(unique)} "
            rf"repeated rows.*{name} on the {len(unique)} distinct rows",
        ):
            got = fn(x, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            want = fn(unique, graph=unique_graph, **kwargs)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-12)


def test_duplicates_under_jit_are_masked_or_nan():
    x = _with_duplicates(2)
    unique = np.unique(x, axis=0)
    wide, narrow = knn(x, 30, metric="euclidean"), knn(x, 2, metric="euclidean")
    drop = jax.jit(lambda g: (twonn(None, graph=g), mle_id(None, k=10, graph=g)))
    got = drop(wide)
    np.testing.assert_allclose(float(got[0]), float(twonn(unique)), rtol=1e-12)
    np.testing.assert_allclose(float(got[1]), float(mle_id(unique, k=10)), rtol=1e-12)
    assert np.isnan(float(jax.jit(lambda g: twonn(None, graph=g))(narrow)))  # too narrow: NaN, not a wrong number
    assert np.isnan(float(jax.jit(lambda g: twonn(None, graph=g, on_duplicates="raise"))(wide)))


def test_distinct_neighbor_distances_of_dense_dedup():
    x = _with_duplicates(3, n=40, d=2)
    graph = knn(x, len(x) - 1, metric="euclidean")
    dist, keep, complete = distinct_neighbor_distances(graph.indices, graph.values, 5)
    unique = np.unique(x, axis=0)
    assert int(keep.sum()) == len(unique) and bool(complete.all())
    kept = np.asarray(keep)
    order = np.argsort([np.flatnonzero((unique == row).all(1))[0] for row in x[kept]])
    want = np.sort(np.linalg.norm(unique[:, None] - unique[None], axis=-1), axis=1)[:, 1:6]
    np.testing.assert_allclose(np.asarray(dist)[kept][order], want, rtol=1e-12)


def test_duplicates_raise_when_asked():
    x = _with_duplicates(4)
    with pytest.raises(ValueError, match=r"has \d+ rows with an exact duplicate.*np.unique\(x, axis=0\)"):
        twonn(x, on_duplicates="raise")
    with pytest.raises(ValueError, match="exact duplicate"):
        mle_id(x, on_duplicates="raise")


def test_duplicates_with_too_narrow_given_graph_raise():
    x = _with_duplicates(5)
    with pytest.raises(ValueError, match=r"`graph` holds 2 neighbours.*wider graph"):
        twonn(x, graph=knn(x, 2, metric="euclidean"))


def test_too_few_distinct_rows():
    x = np.repeat(np.eye(2), 6, axis=0)
    with pytest.raises(ValueError, match="only 2 distinct rows"):
        twonn(x)
    with pytest.raises(ValueError, match="only 2 distinct rows"):
        mle_id(x, k=3, graph=knn(x, 11, metric="euclidean"))


# --------------------------------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 4))
    nan = x.copy()
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="`x` contains NaN"):
        twonn(nan)
    with pytest.raises(ValueError, match="`x` contains NaN"):
        mle_id(nan, k=5)
    with pytest.raises(ValueError, match="`x` must be 2-D"):
        twonn(x[:, 0])
    with pytest.raises(ValueError, match="`x` must be 2-D"):
        mle_id(x[:, 0])
    with pytest.raises(ValueError, match="`x` is empty"):
        twonn(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="`x` is empty"):
        mle_id(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="`x` has 2 rows"):
        twonn(x[:2])
    with pytest.raises(ValueError, match="`k`=30 is out of range"):
        mle_id(x, k=30)
    with pytest.raises(ValueError, match="`k`=2 is out of range"):
        mle_id(x, k=2)
    with pytest.raises(ValueError, match="`k` must be an integer"):
        mle_id(x, k=5.0)
    with pytest.raises(ValueError, match="`algorithm` must be one of"):
        twonn(x, algorithm="mle")
    with pytest.raises(ValueError, match="`comb` must be one of"):
        mle_id(x, k=5, comb="harmonic")
    with pytest.raises(ValueError, match="`on_duplicates` must be one of"):
        twonn(x, on_duplicates="ignore")
    with pytest.raises(ValueError, match="`on_duplicates` must be one of"):
        mle_id(x, k=5, on_duplicates="keep")
    with pytest.raises(ValueError, match="`unbiased` must be True or False"):
        mle_id(x, k=5, unbiased="yes")
    for bad in (0.0, -0.5, 1.5, None):
        with pytest.raises(ValueError, match="`mu_fraction` must be a number in"):
            twonn(x, mu_fraction=bad)
    with pytest.raises(ValueError, match=r"`mu_fraction`=0\.01 keeps no point"):
        twonn(x, mu_fraction=0.01)
    with pytest.raises(ValueError, match="`x` is None and no `graph`"):
        twonn(None)


def test_bad_graphs():
    x = np.random.default_rng(8).normal(size=(30, 4))
    with pytest.raises(ValueError, match="`graph` was built with metric='ip'"):
        twonn(x, graph=knn(x, 2))
    with pytest.raises(ValueError, match="`graph` was built with metric='euclidean', exclude_self=False"):
        mle_id(x, k=5, graph=knn(x, 6, metric="euclidean", exclude_self=False))
    with pytest.raises(ValueError, match="`graph` has 30 rows but `x` has 20"):
        twonn(x[:20], graph=knn(x, 2, metric="euclidean"))
    with pytest.raises(ValueError, match="`graph` holds 1 neighbours per point but TwoNN needs k=2"):
        twonn(x, graph=knn(x, 1, metric="euclidean"))
    with pytest.raises(ValueError, match="`graph` holds 10 neighbours per point but MLE needs k=20"):
        mle_id(None, graph=knn(x, 10, metric="euclidean"))
    with pytest.raises(ValueError, match="`graph` must be a NeighborGraph"):
        twonn(x, graph=(np.zeros((30, 2)), np.ones((30, 2))))
