"""The exact neighbour engine (issue 10, kind 3): float32 searches return a float64 brute force's neighbours.

Every check compares with numpy in float64 from direct differences (exact for float32 input up to one rounding of
the sum), "up to genuine ties": a returned index may differ from the stable argsort only where the two exact keys
are equal (to 1e-12). The hypothesis generators are adversarial: near-duplicate clusters (relative offsets 1e-4 to
1e-6), exact duplicates, groups of near-ties larger than the candidate margin, binary and small-integer features,
offsets up to 1e3 and scales from 1e-12 to 1e12. Shapes are fixed per test so that examples reuse one compilation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxalign._exact import TOP_K_CHUNK, _partial_top_k, extra_candidates
from jaxalign.metrics.intrinsic_dimension import mle_id, twonn
from jaxalign.neighbors import knn

N, D = 96, 5
KINDS = ("clusters", "duplicates", "crowd", "binary", "smallint", "gaussian")


def exact_keys(q: np.ndarray, ref: np.ndarray, metric: str) -> np.ndarray:
    """Ranking keys in float64, larger is closer: q·r, or −‖q − r‖² from direct differences."""
    q, ref = np.asarray(q, np.float64), np.asarray(ref, np.float64)
    if metric == "ip":
        return q @ ref.T
    return np.concatenate(
        [-((block[:, None, :] - ref[None]) ** 2).sum(-1) for block in np.array_split(q, -(-len(q) // 64))]
    )


def assert_exact(x, k, metric, *, reference=None, tile=None, exclude_self=True):
    """The graph of ``knn`` has the brute force's neighbours in order, and values from the chosen pairs."""
    graph = knn(x, k, metric=metric, reference=reference, tile=tile, exclude_self=exclude_self, mesh=None)
    keys = exact_keys(x, x if reference is None else reference, metric)
    if reference is None and exclude_self:
        np.fill_diagonal(keys, -np.inf)
    want = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    got = np.asarray(graph.indices)
    got_keys, want_keys = np.take_along_axis(keys, got, 1), np.take_along_axis(keys, want, 1)
    tied = np.isclose(got_keys, want_keys, rtol=1e-12, atol=0)
    bad = np.flatnonzero(((got != want) & ~tied).any(1))
    assert bad.size == 0, f"{bad.size} rows differ from the float64 brute force, e.g. row {bad[:3]}"
    values = np.asarray(graph.values, np.float64)
    want_values = want_keys if metric == "ip" else np.sqrt(-want_keys)
    rtol = 1e-5 if graph.values.dtype == np.float32 else 1e-12
    scale = np.abs(want_keys).max() if metric == "ip" else 0.0
    np.testing.assert_allclose(values, want_values, rtol=rtol, atol=rtol * scale)
    if metric == "euclidean":
        assert (values[want_keys == 0] == 0).all(), "duplicates must be at distance exactly 0"
    return graph


def adversarial(kind: str, seed: int, scale: float, offset: float, rel: float, n: int = N, d: int = D) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "clusters":  # near-duplicates: groups of 4 within `rel` of each other
        centres = rng.normal(size=(n // 4, d))
        x = (centres[:, None, :] * (1 + rel * rng.normal(size=(n // 4, 4, d)))).reshape(n, d)
    elif kind == "duplicates":
        x = rng.normal(size=(n // 3, d))[rng.integers(0, n // 3, n)]
    elif kind == "crowd":  # one group of near-ties far larger than the k + m candidates
        x = rng.normal(size=(n, d))
        x[: n // 2] = x[0] * (1 + rel * rng.normal(size=(n // 2, d)))
    elif kind == "binary":
        return (rng.random((n, d)) < 0.4).astype(float)
    elif kind == "smallint":
        return rng.integers(-3, 4, size=(n, d)).astype(float)
    else:
        x = rng.normal(size=(n, d))
    return x * scale + offset


data = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(KINDS),
        "seed": st.integers(0, 2**16),
        "scale": st.sampled_from([1e-12, 1e-3, 1.0, 1e3, 1e12]),
        "offset": st.sampled_from([0.0, 1.0, 1e3]),
        "rel": st.sampled_from([1e-4, 1e-5, 1e-6]),
    }
)
EXAMPLES = {"knn": 0, "reference": 0}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=data, dtype=st.sampled_from([np.float32, np.float64]))
def test_knn_equals_float64_brute_force(case, dtype):
    """Both metrics, k = 4, default tile: the float64 brute force's neighbours, in order, for every row."""
    x = adversarial(**case).astype(dtype)
    for metric in ("euclidean", "ip"):
        assert_exact(x, 4, metric)
    EXAMPLES["knn"] += 1


@settings(max_examples=20, deadline=None)
@given(case=data, k=st.sampled_from([1, 7]), tile=st.sampled_from([None, 9]))
def test_knn_exact_for_any_k_and_tile_float32(case, k, tile):
    """Float32, k = 1 and 7, tiles of 9 rows and the default: one answer, the brute force's."""
    x = adversarial(**case).astype(np.float32)
    for metric in ("euclidean", "ip"):
        assert_exact(x, k, metric, tile=tile)


@settings(max_examples=20, deadline=None)
@given(case=data)
def test_queries_against_a_reference_are_exact(case):
    """Queries near (but not in) the reference points, float32: both metrics, the point itself not special."""
    ref = adversarial(**case).astype(np.float32)
    rng = np.random.default_rng(case["seed"] + 1)
    q = (ref[rng.integers(0, N, 40)] * (1 + case["rel"] * rng.normal(size=(40, D)))).astype(np.float32)
    for metric in ("euclidean", "ip"):
        assert_exact(q, 5, metric, reference=ref)
        assert_exact(q, 5, metric, reference=ref, tile=7)
    EXAMPLES["reference"] += 1


def test_hypothesis_ran_examples():
    """Record how many generated examples the two main properties checked (printed with ``-s``)."""
    print(f"\nexact-neighbour examples: {EXAMPLES}")
    assert all(count > 0 for count in EXAMPLES.values())


# --------------------------------------------------------------------------------------------------------------------
# Regression: ../shared/cases/numerics.py block 4


def _tight_clusters() -> np.ndarray:
    rng = np.random.default_rng(0)
    rng.normal(size=(300, 4))  # the earlier blocks of numerics.py draw from the same generator
    rng.normal(size=(300, 6)), rng.normal(size=(6, 20)), rng.normal(size=(20, 1))
    c = rng.normal(size=(300, 32)) * 2
    off = np.array([0, 1e-4, 2e-4, 4e-4, 8e-4])
    u = rng.normal(size=(300, 1, 32))
    u /= np.linalg.norm(u, axis=2, keepdims=True)
    return (c[:, None] + off[None, :, None] * u).reshape(-1, 32).astype(np.float32)


def test_numerics_block4_tight_clusters():
    """Rattled copies 1e-4 apart: the float32 search has every row's float64 neighbours; TwoNN (ml) = 2.27333."""
    x = _tight_clusters()
    assert float(twonn(x, algorithm="ml")) == pytest.approx(2.2733280, abs=1e-4)  # float64 of the same data
    assert float(twonn(x.astype(np.float64), algorithm="ml")) == pytest.approx(2.2733280, abs=1e-6)
    assert_exact(x, 4, "euclidean", tile=7)
    assert_exact(x, 4, "ip")
    assert_exact(x, 6, "euclidean", exclude_self=False)


def test_groups_larger_than_the_candidate_margin():
    """150 near-copies of one point (offsets 1e-7 relative) and 50 others: every row's neighbours among 149
    near-ties, with k + m candidates far fewer than the ties (the windowed double-float search)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 6))
    x[:150] = x[0] * (1 + 1e-7 * rng.normal(size=(150, 6)))
    x[150:153] = x[0]  # exact duplicates among them
    k = 5
    assert k + extra_candidates(k) < 149
    for metric in ("euclidean", "ip"):
        assert_exact(x.astype(np.float32), k, metric)
        assert_exact(x.astype(np.float32), k, metric, tile=13)


# --------------------------------------------------------------------------------------------------------------------
# The two-stage top-k of long rows (chunk maxima, then the best chunks) is lax.top_k, ties and -inf included


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(["uniform", "ties", "sparse", "few", "duplicated"]),
    k=st.sampled_from([1, 4, 9, 30]),
    n=st.sampled_from([4 * 64 * 30, 4 * 64 * 30 + 37]),
)
def test_two_stage_top_k_equals_lax_top_k(seed, kind, k, n):
    """Values and indices equal lax.top_k's, whose order among equal values is the lower index: integer ties, rows
    mostly −inf (the self-exclusion of a search), fewer finite values than k, and whole duplicated chunks."""
    rng = np.random.default_rng(seed)
    t = 5
    assert -(-n // TOP_K_CHUNK) >= 4 * k  # the two-stage path
    if kind == "uniform":
        x = rng.random((t, n)).astype(np.float32)
    elif kind == "ties":
        x = rng.integers(0, 4, (t, n)).astype(np.float32)
    elif kind == "sparse":
        x = rng.integers(0, 3, (t, n)).astype(np.float32)
        x[:, rng.random(n) < 0.95] = -np.inf
    elif kind == "few":
        x = np.full((t, n), -np.inf, np.float32)
        x[:, rng.integers(0, n, 3)] = 1.0
    else:
        chunk = rng.random((t, TOP_K_CHUNK)).astype(np.float32)
        x = np.tile(chunk, (1, -(-n // TOP_K_CHUNK)))[:, :n]
    want = jax.lax.top_k(jnp.asarray(x), k)
    got = jax.jit(_partial_top_k, static_argnums=1)(jnp.asarray(x), k, jnp.asarray(False))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))


@pytest.mark.parametrize("kind", ["clusters", "duplicates", "crowd", "smallint"])
def test_knn_exact_on_rows_long_enough_for_the_two_stage_top_k(kind):
    """N = 1,600 points: k + m candidates come from the two-stage top-k (N / TOP_K_CHUNK ≥ 4 (k + m)); the graph is
    the float64 brute force's for near-duplicates, duplicates, a crowd of near-ties and integer ties."""
    x = adversarial(kind, seed=5, scale=1.0, offset=1e3, rel=1e-5, n=1600).astype(np.float32)
    k = 3
    assert -(-1600 // TOP_K_CHUNK) >= 4 * (k + extra_candidates(k))
    for metric in ("euclidean", "ip"):
        assert_exact(x, k, metric, tile=64)


# --------------------------------------------------------------------------------------------------------------------
# Gradients: the search is not differentiated, the values are


def _finite_difference(fn, x: np.ndarray, coords: list[tuple[int, int]], eps: float = 1e-6) -> np.ndarray:
    out = []
    for i, j in coords:
        step = np.zeros_like(x)
        step[i, j] = eps
        out.append((float(fn(x + step)) - float(fn(x - step))) / (2 * eps))
    return np.array(out)


@pytest.mark.parametrize("metric", ["euclidean", "ip"])
def test_gradient_of_knn_values_equals_finite_difference(metric):
    x = np.random.default_rng(4).normal(size=(40, 3))

    def total(z):
        return (knn(z, 4, metric=metric, mesh=None).values ** 2 * jnp.arange(1, 5)).sum()

    grad = np.asarray(jax.grad(total)(jnp.asarray(x)))
    jitted = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(x)))
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    coords = [(0, 0), (5, 1), (17, 2), (39, 0)]
    np.testing.assert_allclose(grad[tuple(zip(*coords, strict=True))], _finite_difference(total, x, coords), rtol=1e-6)
    np.testing.assert_allclose(jitted, grad, rtol=1e-12)


def test_gradient_through_intrinsic_dimension_equals_finite_difference():
    x = np.random.default_rng(5).normal(size=(60, 4)) @ np.random.default_rng(6).normal(size=(4, 6))
    coords = [(0, 0), (11, 3), (42, 5)]
    for fn in (lambda z: twonn(z, algorithm="ml"), lambda z: mle_id(z, k=6)):
        grad = np.asarray(jax.grad(fn)(jnp.asarray(x)))
        assert np.isfinite(grad).all()
        np.testing.assert_allclose(grad[tuple(zip(*coords, strict=True))], _finite_difference(fn, x, coords), rtol=1e-5)


def test_gradient_is_zero_between_duplicates():
    x = np.random.default_rng(7).normal(size=(30, 3))
    x[4] = x[9]
    grad = jax.grad(lambda z: knn(z, 2, metric="euclidean", mesh=None).values.sum())(jnp.asarray(x))
    assert bool(jnp.isfinite(grad).all())
