"""The neighbour engine and the row-tile map against dense numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from jaxalign.metrics.knn_overlap import _shared_per_row
from jaxalign.neighbors import COMPARE_UP_TO, NeighborGraph, knn, membership, row_membership
from jaxalign.tiling import default_tile, map_row_tiles, pairwise_block


def _dense_ip(x, k, exclude_self=True):
    s = x @ x.T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(s, idx, 1)


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(5, 60),
    d=st.integers(1, 9),
    k=st.integers(1, 4),
    tile=st.integers(1, 70),
    seed=st.integers(0, 2**16),
)
def test_knn_matches_dense_for_any_tile(n, d, k, tile, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    k = min(k, n - 1)
    g = knn(x, k, tile=tile)
    idx, val = _dense_ip(x, k)
    np.testing.assert_array_equal(np.asarray(g.indices), idx)
    np.testing.assert_allclose(np.asarray(g.values), val, rtol=1e-12)

    ge = knn(x, k, metric="euclidean", tile=tile)
    dist = cdist(x, x)
    np.fill_diagonal(dist, np.inf)
    np.testing.assert_array_equal(np.asarray(ge.indices), np.argsort(dist, axis=1, kind="stable")[:, :k])
    np.testing.assert_allclose(np.asarray(ge.values), np.sort(dist, axis=1)[:, :k], rtol=1e-10, atol=1e-12)


def test_self_included_when_asked():
    x = np.random.default_rng(1).normal(size=(40, 3))
    g = knn(x, 5, exclude_self=False)
    idx, val = _dense_ip(x, 5, exclude_self=False)
    np.testing.assert_array_equal(np.asarray(g.indices), idx)
    np.testing.assert_allclose(np.asarray(g.values), val, rtol=1e-12)
    assert not g.exclude_self and g.k == 5 and g.n == 40
    assert knn(x, 40, exclude_self=False).k == 40


def test_duplicates_are_neighbours_at_distance_zero():
    x = np.random.default_rng(2).normal(size=(30, 4))
    x[7] = x[3]
    g = knn(x, 2, metric="euclidean")
    assert int(g.indices[3, 0]) == 7 and int(g.indices[7, 0]) == 3
    assert float(g.values[3, 0]) == 0.0 and float(g.values[7, 0]) == 0.0
    # the point itself is excluded by index, never by value
    assert (np.asarray(g.indices) != np.arange(30)[:, None]).all()


def test_truncate_and_membership():
    x = np.random.default_rng(3).normal(size=(50, 5))
    g10, g4 = knn(x, 10), knn(x, 4)
    t = g10.truncate(4)
    np.testing.assert_array_equal(np.asarray(t.indices), np.asarray(g4.indices))
    rows = jnp.arange(50)[:, None].repeat(10, 1)
    found, pos = membership(g10.indices, rows, g10.indices)
    assert bool(found.all())
    np.testing.assert_array_equal(np.asarray(pos), np.tile(np.arange(10), (50, 1)))
    found_self, _ = membership(g10.indices, jnp.arange(50), jnp.arange(50))
    assert not bool(found_self.any())
    with pytest.raises(ValueError, match="`k`"):
        g4.truncate(5)


def _graph_rows(rng: np.random.Generator, n: int, k: int, pool: int) -> np.ndarray:
    """(n, k) rows of distinct indices drawn from a window of ``pool`` around each row (overlapping rows)."""
    return np.stack([(i + rng.choice(pool, k, replace=False)) % n for i in range(n)]).astype(np.int32)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.sampled_from([1, 3, 25, 70]), c=st.sampled_from([1, 5, 25, 70]))
def test_row_membership_and_shared_rows_match_sets(seed, k, c):
    """Both paths (every pair compared, k·c ≤ COMPARE_UP_TO; binary search / sort-merge above) against Python sets,
    positions included."""
    rng = np.random.default_rng(seed)
    n = 100
    pool = max(k, c) + 8
    graph, cols = _graph_rows(rng, n, k, pool), _graph_rows(rng, n, c, pool)
    found, pos = (np.asarray(a) for a in row_membership(jnp.asarray(graph), jnp.asarray(cols)))
    for i in range(n):
        where = {int(v): s for s, v in enumerate(graph[i])}
        np.testing.assert_array_equal(found[i], [int(v) in where for v in cols[i]])
        np.testing.assert_array_equal(pos[i][found[i]], [where[int(v)] for v in cols[i][found[i]]])
    rows = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], cols.shape)
    searched = membership(jnp.asarray(graph), rows, jnp.asarray(cols))
    np.testing.assert_array_equal(found, np.asarray(searched[0]))
    if k == c:
        shared = np.asarray(_shared_per_row(jnp.asarray(graph), jnp.asarray(cols)))
        np.testing.assert_array_equal(shared, [len(set(a) & set(b)) for a, b in zip(graph, cols, strict=True)])
    assert (k * c > COMPARE_UP_TO) == (k == c == 70)  # both paths are drawn


def test_graph_is_a_pytree_usable_under_jit():
    g = knn(np.random.default_rng(4).normal(size=(20, 3)), 3)
    leaves, treedef = jax.tree_util.tree_flatten(g)
    assert len(leaves) == 2
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(rebuilt, NeighborGraph) and rebuilt.metric == "ip"
    total = jax.jit(lambda gr: gr.values.sum())(g)
    np.testing.assert_allclose(float(total), float(np.asarray(g.values).sum()))


def test_map_row_tiles_concatenates_rows_in_order():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(23, 3)))
    sums = map_row_tiles(lambda r, a: pairwise_block(a[r], a, "sqeuclidean").sum(1), 23, x, tile=4)
    np.testing.assert_allclose(np.asarray(sums), (cdist(np.asarray(x), np.asarray(x)) ** 2).sum(1), rtol=1e-10)
    assert default_tile(10) == 10 and default_tile(10**6) * 10**6 <= 1 << 23


def test_float32_input_stays_float32():
    x = np.random.default_rng(6).normal(size=(30, 4)).astype(np.float32)
    assert knn(x, 3).values.dtype == jnp.float32


def test_torch_like_and_list_inputs():
    x = np.random.default_rng(7).normal(size=(12, 2)).tolist()
    assert knn(x, 2).indices.shape == (12, 2)


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (np.ones(10), {"k": 1}, "2-D"),
        (np.zeros((0, 3)), {"k": 1}, "empty"),
        (np.array([[0.0, np.nan], [1, 2], [3, 4]]), {"k": 1}, "NaN"),
        (np.random.default_rng(0).normal(size=(5, 2)), {"k": 5}, "`k`=5"),
        (np.random.default_rng(0).normal(size=(5, 2)), {"k": 0}, "`k`=0"),
        (np.random.default_rng(0).normal(size=(5, 2)), {"k": 2, "metric": "cosine"}, "`metric`"),
        ([[1.0, 2.0], [3.0]], {"k": 1}, "ragged"),
    ],
)
def test_bad_inputs(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        knn(x, **kwargs)


@settings(max_examples=10, deadline=None)
@given(m=st.integers(1, 30), n=st.integers(2, 40), k=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_queries_against_a_reference(m, n, k, seed):
    rng = np.random.default_rng(seed)
    q, ref = rng.normal(size=(m, 4)), rng.normal(size=(n, 4)) + 0.5
    k = min(k, n)
    g = knn(q, k, reference=ref, metric="euclidean", tile=7)
    dist = cdist(q, ref)
    np.testing.assert_array_equal(np.asarray(g.indices), np.argsort(dist, axis=1, kind="stable")[:, :k])
    np.testing.assert_allclose(np.asarray(g.values), np.sort(dist, axis=1)[:, :k], rtol=1e-10, atol=1e-12)
    gi = knn(q, k, reference=ref)
    np.testing.assert_array_equal(np.asarray(gi.indices), np.argsort(-(q @ ref.T), axis=1, kind="stable")[:, :k])
    assert not g.exclude_self


def test_reference_bad_inputs():
    q = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(ValueError, match="`reference` has 2 features"):
        knn(q, 1, reference=np.ones((4, 2)))
    with pytest.raises(ValueError, match="`k`=5"):
        knn(q, 5, reference=np.random.default_rng(1).normal(size=(4, 3)))
