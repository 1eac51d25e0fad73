"""Information imbalance against DADApy 0.3.4's exact values and a dense numpy definition.

DADApy needs numpy<2 and jax 0.4.30, so it runs in its own interpreter (anchors.dadapy_runner; the ``dadapy``
environment of extractors.envs is built on first use): the session-scoped ``dadapy_imbalance`` fixture computes
every live DADApy value below in one batch.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CASES
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from anchors.dadapy_runner import information_imbalance_call, run_calls
from jaxalign.metrics.information_imbalance import COUNT_UP_TO_K, _information_imbalance, information_imbalance
from jaxalign.neighbors import knn

RTOL = 1e-6
N = 80
#: (seed, k) pairs compared with live DADApy: k = 1, a small k and one past COUNT_UP_TO_K (the searched ranks).
DIRECT = [(seed, k) for seed in (0, 1) for k in (1, 5, COUNT_UP_TO_K + 3)]


def _dense_ii(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Δ(A→B) from dense distance matrices; B-ranks are 1 + #strictly closer points (self excluded)."""
    da, db = cdist(a, a), cdist(b, b)
    np.fill_diagonal(da, np.inf)
    np.fill_diagonal(db, np.inf)
    nbr = np.argsort(da, axis=1, kind="stable")[:, :k]
    target = np.take_along_axis(db, nbr, 1)
    ranks = 1 + (db[:, None, :] < target[:, :, None]).sum(-1)
    return 2.0 * ranks.mean() / a.shape[0]


def _pair(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = np.sin(2 * x[:, :2]) + 0.3 * rng.normal(size=(n, 2))
    return x, y


@pytest.fixture(scope="session")
def dadapy_imbalance(inputs) -> dict[tuple, np.ndarray]:
    """DADApy's exact [Δ(X→Y), Δ(Y→X)], run for real in the dadapy environment (one worker process), keyed
    (input name, k): the reference cases at k ∈ {1, 10} and the DIRECT pairs."""
    named = {(case, k): (inputs[f"{case}_X"], inputs[f"{case}_Y"]) for case in CASES for k in (1, 10)}
    named |= {(f"seed{seed}", k): _pair(seed) for seed, k in DIRECT}
    results = run_calls([information_imbalance_call(x, y, k) for (_, k), (x, y) in named.items()])
    return {key: np.asarray(result.value) for key, result in zip(named, results, strict=True)}


@pytest.mark.parametrize("case", CASES)
def test_dadapy_environment_reproduces_reference(expected_pypi, dadapy_imbalance, case):
    """DADApy in its own environment gives the stored reference values (the anchor still is the anchor)."""
    for k in (1, 10):
        want = expected_pypi[case][f"dadapy.information_imbalance exact k={k} [X->Y, Y->X]"]
        np.testing.assert_allclose(dadapy_imbalance[case, k], want, rtol=1e-12)


@pytest.mark.parametrize(("seed", "k"), DIRECT)
def test_matches_dadapy_directly(dadapy_imbalance, seed, k):
    x, y = _pair(seed)
    np.testing.assert_allclose(information_imbalance(x, y, k=k), dadapy_imbalance[f"seed{seed}", k], rtol=RTOL)


@pytest.mark.parametrize("case", CASES)
def test_reference_values(inputs, expected_pypi, case):
    x, y = inputs[f"{case}_X"], inputs[f"{case}_Y"]
    want = expected_pypi[case]["dadapy.information_imbalance exact k=10 [X->Y, Y->X]"]
    np.testing.assert_allclose(information_imbalance(x, y, k=10), want, rtol=RTOL)
    # k=1 from the 10-NN graphs, truncated: one neighbour search per embedding serves every k.
    graph_x, graph_y = knn(x, 10, metric="euclidean"), knn(y, 10, metric="euclidean")
    want = expected_pypi[case]["dadapy.information_imbalance exact k=1 [X->Y, Y->X]"]
    np.testing.assert_allclose(information_imbalance(x, y, k=1, graph_x=graph_x, graph_y=graph_y), want, rtol=RTOL)


@pytest.mark.parametrize("case", CASES)
def test_float32_within_1e4_of_float64(inputs, expected_pypi, case):
    x, y = inputs[f"{case}_X"].astype(np.float32), inputs[f"{case}_Y"].astype(np.float32)
    want = expected_pypi[case]["dadapy.information_imbalance exact k=10 [X->Y, Y->X]"]
    got = information_imbalance(x, y, k=10)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(k=st.sampled_from([3, COUNT_UP_TO_K + 3, N - 1]), seed=st.integers(0, 2**16))
def test_matches_dense_definition_and_exact_values(k, seed):
    x, y = _pair(seed)
    got = np.asarray(information_imbalance(x, y, k=k))
    np.testing.assert_allclose(got, [_dense_ii(x, y, k), _dense_ii(y, x, k)], rtol=1e-12)
    # Swapping the spaces swaps the two directions.
    np.testing.assert_allclose(information_imbalance(y, x, k=k), got[::-1], rtol=1e-12)
    # A space predicts itself perfectly: the first k neighbours have ranks 1..k, so Δ(X→X) = (2/N)(k+1)/2.
    np.testing.assert_allclose(information_imbalance(x, x, k=k), [(k + 1) / N] * 2, rtol=1e-12)
    if k == N - 1:  # every rank 1..N−1 is averaged
        np.testing.assert_allclose(got, [1.0, 1.0], rtol=1e-12)


def test_searched_and_counted_ranks_agree():
    x, y = _pair(1)
    for k in (3, COUNT_UP_TO_K + 3):
        nx, ny = knn(x, k, metric="euclidean").indices, knn(y, k, metric="euclidean").indices
        counted = _information_imbalance(x, y, nx, ny, k=k, search=False, tile=7, mesh=None)
        searched = _information_imbalance(x, y, nx, ny, k=k, search=True, tile=None, mesh=None)
        np.testing.assert_array_equal(counted, searched)
        # neighbours found inside the rank pass (no graphs given) are the engine's
        fused = _information_imbalance(x, y, nx[:, :0], ny[:, :0], k=k, search=False, tile=7, mesh=None)
        np.testing.assert_array_equal(fused, counted)


def test_ties_take_the_smallest_rank():
    """On a grid many B-distances are equal: each tied neighbour gets 1 + the number of strictly closer points.

    The grid is mirrored so its mean is exactly 1 and the centred coordinates (and distances) stay exact integers.
    """
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N, 3))
    half = rng.integers(0, 3, size=(N // 2, 2)).astype(float)
    y = np.concatenate([half, 2.0 - half])
    for k in (5, COUNT_UP_TO_K + 3):
        np.testing.assert_allclose(information_imbalance(x, y, k=k)[0], _dense_ii(x, y, k), rtol=1e-12)


def test_precomputed_graphs_equal_computed():
    x, y = _pair(3)
    ref = information_imbalance(x, y, k=4)
    gx, gy = knn(x, 4, metric="euclidean"), knn(y, 9, metric="euclidean")  # a larger graph is truncated
    np.testing.assert_array_equal(information_imbalance(x, y, k=4, graph_x=gx, graph_y=gy), ref)
    np.testing.assert_array_equal(information_imbalance(x, y, k=4, graph_y=gy), ref)
    np.testing.assert_array_equal(information_imbalance(x, y, k=4, tile=6, mesh=None), ref)


def test_bad_inputs():
    x, y = _pair(4)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="`x` contains NaN"):
        information_imbalance(bad, y)
    with pytest.raises(ValueError, match="`y` contains NaN"):
        information_imbalance(x, bad)
    with pytest.raises(ValueError, match=f"`x` has {N} rows but `y` has {N - 1}"):
        information_imbalance(x, y[:-1])
    for k in (0, N, 2.5):
        with pytest.raises(ValueError, match="`k`"):
            information_imbalance(x, y, k=k)
    with pytest.raises(ValueError, match="`y` has zero variance"):
        information_imbalance(x, np.ones((N, 2)))
    with pytest.raises(ValueError, match="`x` must be 2-D"):
        information_imbalance(x[:, 0], y)
    with pytest.raises(ValueError, match="`x` is empty"):
        information_imbalance(np.zeros((0, 3)), y)
    with pytest.raises(ValueError, match="`graph_x` was built with metric='ip'"):
        information_imbalance(x, y, k=2, graph_x=knn(x, 2))
    with pytest.raises(ValueError, match=r"`graph_y` holds 2 neighbours per point but .* needs k=3"):
        information_imbalance(x, y, k=3, graph_y=knn(y, 2, metric="euclidean"))
    with pytest.raises(ValueError, match=f"`graph_x` has {N - 1} rows but `x` has {N}"):
        information_imbalance(x, y, graph_x=knn(x[:-1], 1, metric="euclidean"))
    with pytest.raises(ValueError, match="`graph_y` must be a NeighborGraph"):
        information_imbalance(x, y, graph_y=np.zeros((N, 1), dtype=int))
