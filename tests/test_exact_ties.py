"""Exact ties (issue 10, kind 4): binary and integer features tie exactly, and the results follow the documented rule.

Information imbalance ranks by 1 + the number of strictly closer points and takes the neighbours by a stable
argsort (genuine ties: lower index); the kNN graph puts equal exact distances in index order. Both are evaluated
exactly, so they depend on neither ``tile`` nor the number of devices, and duplicate rows are found by value (r₁ = 0)
whatever the round-off. The reference everywhere is numpy in float64 with direct differences (exact here).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign._exact import expanded_bound, expanded_frame
from jaxalign.metrics.information_imbalance import (
    COUNT_UP_TO_K,
    SLOT_BAND,
    _band_counts,
    _exact_ranks,
    information_imbalance,
)
from jaxalign.metrics.intrinsic_dimension import distinct_neighbor_distances, mle_id
from jaxalign.neighbors import knn
from jaxalign.tiling import pairwise_block


def _sq(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    d = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return d


def rule(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Δ(A→B) of ../shared/cases/numerics.py: stable-argsort neighbours in A, 1 + #strictly closer in B."""
    da, db = _sq(a), _sq(b)
    nbr = np.argsort(da, axis=1, kind="stable")[:, :k]
    target = np.take_along_axis(db, nbr, 1)
    return 2 * (1 + (db[:, None, :] < target[:, :, None]).sum(-1)).sum() / (len(a) ** 2 * k)


def _fingerprints() -> tuple[np.ndarray, np.ndarray]:
    """The binary features of numerics.py block 5 (its generator, advanced past blocks 1-4)."""
    rng = np.random.default_rng(0)
    rng.normal(size=(300, 4))
    rng.normal(size=(300, 6)), rng.normal(size=(6, 20)), rng.normal(size=(20, 1))
    rng.normal(size=(300, 32)), rng.normal(size=(300, 1, 32))
    b = (rng.random((300, 64)) < 0.1).astype(np.float32)
    b2 = b.copy()
    b2[:, 32:] = rng.random((300, 32)) < 0.1
    return b, b2


def test_numerics_block5_rule_for_every_tile():
    b, b2 = _fingerprints()
    want = [rule(b, b2, 3), rule(b2, b, 3)]
    np.testing.assert_allclose(want, [0.36105925925925925, 0.2970740740740741], rtol=1e-14)
    results = [np.asarray(information_imbalance(b, b2, k=3, tile=tile)) for tile in (1, 7, None)]
    for got in results:
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_array_equal(got, results[0])


def lattice(kind: str, seed: int, n: int, d: int) -> np.ndarray:
    """Features on a dyadic lattice, with repeated rows."""
    rng = np.random.default_rng(seed)
    if kind == "binary":
        x = (rng.random((n, d)) < 0.2).astype(float)
    elif kind == "counts":
        x = rng.poisson(1.0, size=(n, d)).astype(float)
    else:  # quarters in [-1, 1]
        x = rng.integers(-4, 5, size=(n, d)) / 4.0
    x[rng.integers(0, n, n // 5)] = x[rng.integers(0, n, n // 5)]
    return x


ties = st.fixed_dictionaries({"kind": st.sampled_from(["binary", "counts", "quarters"]), "seed": st.integers(0, 2**16)})
EXAMPLES = {"lattice": 0, "continuous": 0}


@settings(max_examples=30, deadline=None)
@given(case=ties, dtype=st.sampled_from([np.float32, np.float64]), tile=st.sampled_from([None, 7]))
def test_information_imbalance_equals_the_rule_on_lattices(case, dtype, tile):
    x = lattice(case["kind"], case["seed"], 60, 8)
    y = lattice(case["kind"], case["seed"] + 1, 60, 6)
    got = np.asarray(information_imbalance(x.astype(dtype), y.astype(dtype), k=3, tile=tile))
    np.testing.assert_allclose(got, [rule(x, y, 3), rule(y, x, 3)], rtol=1e-6 if dtype == np.float32 else 1e-13)
    EXAMPLES["lattice"] += 1


def continuous(kind: str, seed: int, n: int = 80, d: int = 5) -> np.ndarray:
    """Continuous data with exact duplicates and near-ties (distances equal to float32 round-off)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if kind == "duplicates":
        x = x[rng.integers(0, n // 2, n)]
    elif kind == "near":
        x[: n // 2] = x[0] * (1 + 1e-6 * rng.normal(size=(n // 2, d)))
    elif kind == "twins":  # every point has one near-duplicate: bands of exactly two (their other member named)
        x[n // 2 :] = x[: n // 2] * (1 + 1e-7 * rng.normal(size=(n // 2, d)))
    else:  # points on a sphere around the first: equal distances up to round-off
        u = rng.normal(size=(n - 1, d))
        x[1:] = x[0] + 3 * u / np.linalg.norm(u, axis=1, keepdims=True)
    return (x + 10).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["duplicates", "near", "twins", "sphere"]), seed=st.integers(0, 2**16))
def test_information_imbalance_exact_on_continuous_data_with_ties(kind, seed):
    """Float32 blocks whose round-off exceeds the gaps: counted ranks (k = 3) and searched ranks (k > 64)."""
    x, y = continuous(kind, seed), continuous("duplicates", seed + 1)
    for k in (3, COUNT_UP_TO_K + 3):
        got = np.asarray(information_imbalance(x, y, k=k))
        np.testing.assert_allclose(got, [rule(x, y, k), rule(y, x, k)], rtol=1e-6)
    EXAMPLES["continuous"] += 1


def _check_exact_ranks(repeated: bool, search: bool) -> None:
    """Clusters of 1-12 near-duplicates (1e-7 apart, below float32 round-off at offset 10): a target in a cluster of
    c points has a band of c, so one block holds bands of two (one pass), of 3-SLOT_BAND (one to four passes of the
    slot path) and larger (the packed walk); every rank equals the float64 count of strictly closer points.
    ``repeated``: each row's 12 targets drawn with replacement from 1-6 candidates, as the sweep's sources share a
    row's nearest neighbour — rows with different numbers of distinct targets, each decided once."""
    rng = np.random.default_rng(7)
    sizes = np.arange(1, 13).repeat(2)
    centres = rng.normal(size=(len(sizes), 5))
    x = np.concatenate([c * (1 + 1e-7 * rng.normal(size=(s, 5))) for c, s in zip(centres, sizes, strict=True)])
    x = (x + 10).astype(np.float32)
    n, k = len(x), 12
    data, exact, frame = expanded_frame(x)
    norm = np.sqrt((np.asarray(frame, np.float64) ** 2).sum(1)).astype(np.float32)
    rows = np.arange(n, dtype=np.int32)
    dist = np.array(pairwise_block(frame, frame, "sqeuclidean"))
    np.fill_diagonal(dist, np.inf)
    bound = expanded_bound(norm, norm.max(), x.shape[1], "sq")
    if repeated:
        pools = [rng.choice(np.delete(rows, i), rng.integers(1, 7), replace=False) for i in rows]
        targets = np.stack([rng.choice(pool, k) for pool in pools]).astype(np.int32)
        assert len({len(set(t)) for t in targets.tolist()}) == 6  # 1 to 6 distinct targets per row
    else:
        targets = np.stack([rng.choice(np.delete(rows, i), k, replace=False) for i in rows]).astype(np.int32)
    band = np.asarray(_band_counts(dist, np.take_along_axis(dist, targets, 1), bound, search=search)[1])
    assert {2, 3, 4, SLOT_BAND, SLOT_BAND + 1} <= set(band.ravel().tolist())  # every path is taken
    args = (jnp.asarray(dist), bound, jnp.asarray(targets), jnp.asarray(rows), data, exact)
    got = jax.jit(functools.partial(_exact_ranks, search=search))(*args)
    d64 = _sq(x)
    want = 1 + (d64[:, None, :] < np.take_along_axis(d64, targets, 1)[:, :, None]).sum(-1)
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("search", [False, True])
def test_exact_ranks_decide_bands_of_every_size(search):
    _check_exact_ranks(False, search)


@pytest.mark.parametrize("search", [False, True])
def test_exact_ranks_decide_repeated_targets_once(search):
    _check_exact_ranks(True, search)


@pytest.mark.parametrize("dtypes", [(np.float32, np.float64), (np.float64, np.float32)])
def test_information_imbalance_mixed_dtypes_follow_the_rule(dtypes):
    """One float32 and one float64 space (x64 on): both are ranked in the common dtype, so the float32 side's
    duplicates are tied exactly (the bounds of the wider dtype used on float32 distances broke the ties once)."""
    rng = np.random.default_rng(0)
    gap = 10.0 ** rng.uniform(-6, -4)
    centres, steps = rng.normal(size=(12, 1, 6)), rng.normal(size=(12, 4, 6))
    steps *= (gap * np.array([0.0, 1.0, 2.0, 4.0]))[None, :, None] / np.linalg.norm(steps, axis=2, keepdims=True)
    x = (centres + steps).reshape(48, 6).astype(np.float16).astype(dtypes[0])  # copies equal or an ulp apart
    y = rng.normal(size=(48, 4)).astype(dtypes[1])
    for k in (1, 3):
        got = np.asarray(information_imbalance(x, y, k=k))
        np.testing.assert_allclose(got, [rule(x, y, k), rule(y, x, k)], rtol=1e-6)


def test_hypothesis_ran_examples():
    print(f"\nexact-tie examples: {EXAMPLES}")
    assert all(count > 0 for count in EXAMPLES.values())


@pytest.mark.parametrize("metric", ["euclidean", "ip"])
def test_knn_ties_go_to_the_lower_index(metric):
    """Binary features: many equal distances and products; the graph is the stable argsort for every tile."""
    x = lattice("binary", 3, 90, 12).astype(np.float32)
    xd = x.astype(np.float64)
    keys = -_sq(xd) if metric == "euclidean" else xd @ xd.T
    np.fill_diagonal(keys, -np.inf)
    want = np.argsort(-keys, axis=1, kind="stable")[:, :6]
    for tile in (1, 7, None):
        graph = knn(x, 6, metric=metric, tile=tile)
        np.testing.assert_array_equal(np.asarray(graph.indices), want)


def test_duplicates_found_by_value_for_every_tile_and_row_order():
    """Morgan-like fingerprints (300 rows of 120 distinct binary vectors): the distinct rows are np.unique's, and the
    MLE on them depends neither on the tile nor on the row order."""
    rng = np.random.default_rng(8)
    distinct = (rng.random((120, 256)) < 0.05).astype(np.float32)
    x = distinct[rng.integers(0, 120, 300)]
    n_unique = len(np.unique(x, axis=0))
    graph = knn(x, 40, metric="euclidean")
    _, keep, complete = distinct_neighbor_distances(graph.indices, graph.values, 10)
    assert int(keep.sum()) == n_unique and bool((complete | ~keep).all())
    with pytest.warns(UserWarning, match="duplicate"):
        values = [float(mle_id(x, k=10, tile=tile)) for tile in (7, None)]
    with pytest.warns(UserWarning, match="duplicate"):
        values.append(float(mle_id(x[rng.permutation(300)], k=10)))
    np.testing.assert_allclose(values, float(mle_id(np.unique(x, axis=0), k=10)), rtol=1e-6)


SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    from jaxalign import knn
    from jaxalign.metrics import information_imbalance

    assert jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(0)
    b = (rng.random((150, 64)) < 0.1).astype(np.float32)
    b2 = b.copy()
    b2[:, 32:] = rng.random((150, 32)) < 0.1
    c = rng.normal(size=(50, 8)).astype(np.float32)
    c = np.repeat(c, 3, axis=0) * (1 + 1e-6 * rng.normal(size=(150, 8))).astype(np.float32)
    out = {
        "ii": [np.asarray(information_imbalance(b, b2, k=3, tile=t, mesh=m)).tolist()
               for m, t in ((None, None), ("auto", None), ("auto", 7))],
        "knn": [np.asarray(knn(a, 5, metric=metric, tile=7, mesh=m).indices).tolist()
                for a, metric in ((b, "euclidean"), (c, "ip")) for m in (None, "auto")],
    }
    print(json.dumps(out))
    print(json.dumps({"b": b.tolist(), "b2": b2.tolist()}))
    """
)


def test_two_host_devices_give_the_rule():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    out, data = json.loads(lines[-2]), json.loads(lines[-1])
    b, b2 = np.array(data["b"]), np.array(data["b2"])
    want = [rule(b, b2, 3), rule(b2, b, 3)]
    for got in out["ii"]:
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert got == out["ii"][0]
    for single, sharded in zip(out["knn"][::2], out["knn"][1::2], strict=True):
        assert single == sharded
