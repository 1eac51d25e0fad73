"""mutual / cycle / LCS / edit-distance kNN against platonic-rep values, plain-Python definitions and properties."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CASES, l2
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign.metrics.knn_overlap import (
    cycle_knn,
    edit_distance_knn,
    lcs_knn,
    lcs_length,
    levenshtein,
    mutual_knn,
)
from jaxalign.neighbors import NeighborGraph, knn

METRICS = {"mutual_knn": mutual_knn, "cycle_knn": cycle_knn, "lcs_knn": lcs_knn, "edit_distance_knn": edit_distance_knn}
PREP = {"raw": lambda a: a, "l2": l2}
K_MAX = 10


# ---------------------------------------------------------------------------------------------------------------------
# Plain-Python definitions (platonic-rep semantics, one row at a time)


def py_lcs(a, b) -> int:
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            dp[i][j] = dp[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(dp[i - 1][j], dp[i][j - 1])
    return dp[-1][-1]


def py_levenshtein(a, b) -> int:
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return prev[-1]


def py_metrics(ix: np.ndarray, iy: np.ndarray) -> dict[str, float]:
    n, k = ix.shape
    return {
        "mutual_knn": np.mean([len(set(ix[i]) & set(iy[i])) / k for i in range(n)]),
        "cycle_knn": np.mean([any(i in ix[j] for j in iy[i]) for i in range(n)]),
        "lcs_knn": np.mean([py_lcs(list(ix[i]), list(iy[i])) for i in range(n)]),
        "edit_distance_knn": 1 - np.mean([py_levenshtein(list(ix[i]), list(iy[i])) for i in range(n)]) / k,
    }


def random_graph(rng: np.random.Generator, n: int, k: int, m: int | None = None) -> NeighborGraph:
    """Random self-excluding neighbour lists; with ``m`` the neighbours are drawn from the first m other points only
    (a small pool makes overlaps, common subsequences and cycles frequent)."""
    rows = []
    for i in range(n):
        pool = np.array([j for j in range(n) if j != i])
        pool = pool[: max(k, m or n)]
        rows.append(rng.permutation(pool)[:k])
    idx = jnp.asarray(np.array(rows), jnp.int32)
    return NeighborGraph(idx, jnp.zeros(idx.shape), "ip")


def apply(name: str, gx: NeighborGraph, gy: NeighborGraph, k: int) -> float:
    return float(METRICS[name](None, None, k=k, graph_x=gx, graph_y=gy))


# ---------------------------------------------------------------------------------------------------------------------
# Anchor values


@pytest.fixture(scope="module")
def graphs(inputs):
    """k=10 graphs of every reference embedding, float64 and float32: each serves k=5 and k=10."""
    out = {}
    for case in CASES:
        for tag, prep in PREP.items():
            for dtype in (np.float64, np.float32):
                x, y = (prep(inputs[f"{case}_{s}"]).astype(dtype) for s in "XY")
                out[case, tag, dtype] = (knn(x, K_MAX), knn(y, K_MAX))
    return out


def reference_keys(case_expected: dict, tag: str):
    for key, value in case_expected.items():
        match = re.fullmatch(rf"(\w+)\(topk=(\d+)\) \[{tag}\]", key)
        if match and match[1] in METRICS:
            yield match[1], int(match[2]), value


@pytest.mark.parametrize("tag", PREP)
@pytest.mark.parametrize("case", CASES)
def test_reference_values(case, tag, graphs, expected_platonic):
    gx, gy = graphs[case, tag, np.float64]
    checked = 0
    for name, k, value in reference_keys(expected_platonic[case], tag):
        got = METRICS[name](None, None, k=k, graph_x=gx, graph_y=gy)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(float(got), value, rtol=1e-6, err_msg=f"{case} {tag} {name}(k={k})")
        checked += 1
    assert checked == 5  # mutual k=5,10; cycle k=5,10; lcs k=10


@pytest.mark.parametrize("case", CASES)
def test_float32_matches_float64(case, graphs):
    # On these cases the float32 and float64 neighbour lists coincide (no near-tie flips), so the metrics agree up to
    # the rounding of the final division; were a list to flip, the counts would differ by >= 1/(N k) > 1e-4.
    for tag in PREP:
        g64, g32 = graphs[case, tag, np.float64], graphs[case, tag, np.float32]
        for name in METRICS:
            v64 = apply(name, *g64, K_MAX)
            v32 = METRICS[name](None, None, k=K_MAX, graph_x=g32[0], graph_y=g32[1])
            assert v32.dtype == jnp.float32
            np.testing.assert_allclose(float(v32), v64, rtol=1e-4, err_msg=f"{case} {tag} {name}")


def test_graphs_given_equal_computed(inputs):
    x, y = inputs["manifold3_X"][:200], inputs["manifold3_Y"][:200]
    gx, gy = knn(x, 12), knn(y, 8)  # larger k than asked: truncated
    for name, fn in METRICS.items():
        direct = float(fn(x, y, k=6))
        assert float(fn(None, None, k=6, graph_x=gx, graph_y=gy)) == direct, name
        assert float(fn(x, None, k=6, graph_y=gy)) == direct, name
        assert float(fn(x, y, k=6, graph_x=gx)) == direct, name
        # graphs are pytrees: the metric composes with jit
        jitted = jax.jit(lambda a, b, fn=fn: fn(None, None, k=6, graph_x=a, graph_y=b))
        assert float(jitted(gx, gy)) == direct, name


# ---------------------------------------------------------------------------------------------------------------------
# Against the plain-Python definitions


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([1, 4]), pool=st.booleans())
def test_random_graphs_match_python(seed, k, pool):
    n = 9
    rng = np.random.default_rng(seed)
    gx = random_graph(rng, n, k, k + 1 if pool else None)
    gy = random_graph(rng, n, k, k + 1 if pool else None)
    expected = py_metrics(np.asarray(gx.indices), np.asarray(gy.indices))
    for name in METRICS:
        np.testing.assert_allclose(apply(name, gx, gy, k), expected[name], rtol=1e-12, atol=1e-15, err_msg=name)


_lcs, _lev = jax.jit(lcs_length), jax.jit(levenshtein)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), len_a=st.sampled_from([0, 1, 6]), len_b=st.sampled_from([1, 6]))
def test_dp_kernels_match_python(data, len_a, len_b):
    # General sequences: repeated symbols and unequal (or zero) lengths, beyond the distinct, equal-length kNN lists.
    a = data.draw(st.lists(st.integers(0, 3), min_size=len_a, max_size=len_a))
    b = data.draw(st.lists(st.integers(0, 3), min_size=len_b, max_size=len_b))
    ja, jb = jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32)
    assert int(_lcs(ja, jb)) == py_lcs(a, b)
    assert int(_lev(ja, jb)) == py_levenshtein(a, b)


# ---------------------------------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_properties(seed):
    rng = np.random.default_rng(seed)
    n, k = 40, 6
    x = rng.standard_normal((n, 5))
    y = np.tanh(x @ rng.standard_normal((5, 7))) + 0.5 * rng.standard_normal((n, 7))
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    gx, gy, gq = knn(x, k), knn(y, k), knn(x @ q, k)
    # identical embeddings
    assert apply("mutual_knn", gx, gx, k) == 1.0
    assert apply("lcs_knn", gx, gx, k) == k
    assert apply("edit_distance_knn", gx, gx, k) == 1.0
    for name in METRICS:
        v = apply(name, gx, gy, k)
        assert 0.0 <= v <= (k if name == "lcs_knn" else 1.0), name
        # inner products, hence neighbours, are invariant to an orthogonal transform of the features
        assert apply(name, gq, gy, k) == v, name
        if name != "cycle_knn":  # cycle_knn is directed
            assert apply(name, gy, gx, k) == v, name


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize("name", METRICS)
def test_bad_inputs(name):
    fn = METRICS[name]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((20, 4))
    with pytest.raises(ValueError, match="`k`=0"):
        fn(x, y, k=0)
    with pytest.raises(ValueError, match="`k`=20"):
        fn(x, y, k=20)
    with pytest.raises(ValueError, match="`k` must be an integer"):
        fn(x, y, k=2.5)
    with pytest.raises(ValueError, match="`y` has 19"):
        fn(x, y[:19], k=3)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="`x` contains NaN"):
        fn(bad, y, k=3)
    with pytest.raises(ValueError, match="`y` is None"):
        fn(x, None, k=3)
    with pytest.raises(ValueError, match="`graph_x` must be a NeighborGraph"):
        fn(None, y, k=3, graph_x=np.zeros((20, 3), np.int32))
    with pytest.raises(ValueError, match="`graph_x` was built with metric='euclidean'"):
        fn(None, y, k=3, graph_x=knn(x, 3, metric="euclidean"))
    with pytest.raises(ValueError, match=r"`graph_y` was built with .*exclude_self=False"):
        fn(x, None, k=3, graph_y=knn(y, 3, exclude_self=False))
    with pytest.raises(ValueError, match="`graph_y` holds 2 neighbours"):
        fn(x, None, k=3, graph_y=knn(y, 2))
    with pytest.raises(ValueError, match="`graph_y` has 19 rows but `y` has 20"):
        fn(x, y, k=3, graph_y=knn(y[:19], 3))
    with pytest.raises(ValueError, match="`y` has 19"):
        fn(None, None, k=3, graph_x=knn(x, 3), graph_y=knn(y[:19], 3))
