"""CKNNA against platonic-rep's values and our dense port of its algorithm; graph reuse and input checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CASES, l2
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign.metrics.cknna import cknna
from jaxalign.metrics.kernel import unbiased_cka
from jaxalign.neighbors import knn

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("dense_reference", ROOT / "benchmarks" / "dense_reference.py")
dense = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dense)

CALLS = {
    "cknna(topk=5, unbiased=True)": {"k": 5, "unbiased": True},
    "cknna(topk=10, unbiased=True)": {"k": 10, "unbiased": True},
    "cknna(topk=25, unbiased=True)": {"k": 25, "unbiased": True},
    "cknna(topk=10, unbiased=False)": {"k": 10, "unbiased": False},
}
PROPS = settings(max_examples=20, deadline=None)


def _case(inputs, case: str, prep: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = inputs[f"{case}_X"], inputs[f"{case}_Y"]
    return (l2(x), l2(y)) if prep == "l2" else (x, y)


def _related(seed: int, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) + rng.normal(size=4)  # off-centre: raw inner products, self not always top-1
    y = np.tanh(x @ rng.normal(size=(4, 3))) + 0.3 * rng.normal(size=(n, 3))
    return x, y


@pytest.mark.parametrize("prep", ["raw", "l2"])
@pytest.mark.parametrize("case", CASES)
def test_matches_platonic(inputs, expected_platonic, case, prep):
    x, y = _case(inputs, case, prep)
    graphs = {ub: (knn(x, 25, exclude_self=ub), knn(y, 25, exclude_self=ub)) for ub in (True, False)}
    for call, kw in CALLS.items():
        gx, gy = graphs[kw["unbiased"]]
        got = cknna(None, None, graph_x=gx, graph_y=gy, **kw)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(float(got), expected_platonic[case][f"{call} [{prep}]"], rtol=1e-6, err_msg=call)


@pytest.mark.parametrize("prep", ["raw", "l2"])
@pytest.mark.parametrize("case", CASES)
def test_dense_port_matches_platonic(inputs, expected_platonic, case, prep):
    """benchmarks/dense_reference.py (the benchmark anchor) reproduces platonic-rep's dense algorithms."""
    x, y = _case(inputs, case, prep)
    for key, want in expected_platonic[case].items():
        name, tag = key.rsplit(" ", 1)
        if tag != f"[{prep}]":
            continue
        if name == "cka(kernel=ip, biased)":
            got = dense.cka(x, y)
        elif name == "unbiased_cka":
            got = dense.cka(x, y, unbiased=True)
        elif name == "cka(kernel=rbf, sigma=1.0, biased)":
            got = dense.cka(x, y, "rbf", 1.0)
        elif name in CALLS:
            got = dense.cknna(x, y, CALLS[name]["k"], unbiased=CALLS[name]["unbiased"])
        elif name.startswith("mutual_knn(topk="):
            got = dense.mutual_knn(x, y, int(name[len("mutual_knn(topk=") : -1]))
        else:
            continue
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("prep", ["raw", "l2"])
def test_float32_close_to_float64(inputs, prep):
    x, y = _case(inputs, "heavytail", prep)  # columns scaled 0.01…100: the hardest case for float32
    for kw in ({"k": 10, "unbiased": True}, {"k": 10, "unbiased": False}):
        got = cknna(x.astype(np.float32), y.astype(np.float32), **kw)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(float(got), float(cknna(x, y, **kw)), atol=1e-4)


@PROPS
@given(seed=st.integers(0, 2**31), k=st.sampled_from([2, 7, 23]), unbiased=st.booleans(), swap=st.booleans())
def test_sparse_matches_dense_port(seed, k, unbiased, swap):
    """The O(N·k) sparse HSIC equals platonic's dense masked HSIC for any k, both estimators, either order."""
    x, y = _related(seed)
    if swap:
        x, y = y, x
    want = dense.cknna(x, y, k, unbiased=unbiased)
    got = cknna(x, y, k=k, unbiased=unbiased, mesh=None)
    np.testing.assert_allclose(float(got), want, rtol=1e-9, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_full_neighbourhood_is_unbiased_cka(seed):
    x, y = _related(seed)
    np.testing.assert_allclose(float(cknna(x, y, k=None)), float(unbiased_cka(x, y)), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(float(cknna(x, y, k=x.shape[0] - 1)), float(unbiased_cka(x, y)), rtol=1e-9)


def test_precomputed_graphs_equal_fresh_and_truncate(inputs):
    x, y = _case(inputs, "manifold3", "l2")
    fresh = float(cknna(x, y, k=7))
    gx, gy = knn(x, 12), knn(y, 12)  # built for a larger k: truncated to 7
    assert float(cknna(x, y, k=7, graph_x=gx, graph_y=gy)) == fresh
    assert float(cknna(None, y, k=7, graph_x=gx)) == fresh
    assert float(cknna(x, None, k=7, graph_y=gy)) == fresh
    biased = float(cknna(x, y, k=7, unbiased=False))
    graphs = {"graph_x": knn(x, 9, exclude_self=False), "graph_y": knn(y, 9, exclude_self=False)}
    assert float(cknna(None, None, k=7, unbiased=False, **graphs)) == biased


def test_jit_and_gradient_of_values():
    x, y = _related(5)
    eager = cknna(x, y, k=6)
    jitted = jax.jit(lambda a, b: cknna(a, b, k=6))(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-12)
    grad = jax.grad(lambda a: cknna(a, y, k=6))(jnp.asarray(x))
    assert grad.shape == x.shape and bool(jnp.isfinite(grad).all())


def _bad_calls():
    x, y = _related(0, n=10)
    g = knn(x, 4)
    return [
        ((np.where(np.eye(10, 4) > 0, np.nan, x), y), {}, "`x` contains NaN"),
        ((x, y[:9]), {}, "`x` has 10 rows but `y` has 9"),
        ((x, y), {"k": 10}, "`k`=10 is out of range"),
        ((x, y), {"k": 1}, "`k`=1 is out of range"),
        ((x, y), {"k": 2.5}, "`k` must be an integer"),
        ((x[:3], y[:3]), {"k": 2}, "`x` has 3 rows"),
        ((np.ones((10, 4)), y), {"k": 3}, "`x` has zero variance"),
        ((x[:, 0], y), {}, "`x` must be 2-D"),
        ((np.zeros((0, 4)), y), {}, "`x` is empty"),
        ((None, y), {"k": 3}, "`x` is None"),
        ((x, None), {"k": 3}, "`y` is None"),
        ((x, y), {"k": 3, "graph_x": knn(x, 4, metric="euclidean")}, "`graph_x` was built with metric='euclidean'"),
        ((x, y), {"k": 3, "graph_y": knn(y, 4, exclude_self=False)}, "`graph_y` was built with .*exclude_self=False"),
        ((x, y), {"k": 3, "unbiased": False, "graph_x": g}, "`graph_x` was built with .*exclude_self=True"),
        ((x, y), {"k": 5, "graph_x": g}, "`graph_x` holds 4 neighbours"),
        ((x[:9], None), {"k": 3, "graph_y": knn(y, 4)}, "`graph_y` has 10 rows"),
        ((x, y), {"k": 3, "graph_x": g.indices}, "`graph_x` must be a NeighborGraph"),
    ]


@pytest.mark.parametrize(("args", "kw", "match"), _bad_calls())
def test_bad_inputs(args, kw, match):
    with pytest.raises(ValueError, match=match):
        cknna(*args, **kw)
