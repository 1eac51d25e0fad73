"""CKNNA: centered kernel nearest-neighbour alignment (Huh et al. 2024, "The Platonic Representation Hypothesis").

CKA restricted to mutual top-k neighbourhoods, with platonic-rep ``cknna`` semantics. With K = X Xᵀ, L = Y Yᵀ and the
directed masks M_K(i, j) = [j ∈ topk_K(i)], M_L(i, j) = [j ∈ topk_L(i)] (top-k by inner product; the point itself
excluded when ``unbiased``, allowed when not):

    sim(K, L) = HSIC(M ∘ K, M ∘ L),  M = M_K ∘ M_L  (asymmetric),
    sim(K, K) = HSIC(M_K ∘ K, M_K ∘ K),  sim(L, L) likewise with M_L,
    CKNNA = sim(K, L) / (sqrt(sim(K, K) · sim(L, L)) + 1e-6),

HSIC being Song et al.'s unbiased estimator when ``unbiased`` (the default) and trace(K H L H) otherwise. With
k = N − 1 and ``unbiased`` the masks keep every off-diagonal pair and CKNNA equals unbiased linear CKA.

Every HSIC term is a sparse sum over the N·k mask entries, so memory is O(N·k) beyond the neighbour search:
Σ_ij A_ij B_ji keeps the entries (i, j) whose reverse (j, i) is also in the mask (found with
:func:`jaxalign.neighbors.membership`), 1ᵀA1 sums the entries, and 1ᵀAB1 = Σ_l colsum(A)_l · rowsum(B)_l with column
sums from ``jax.ops.segment_sum``. The kernel values at mask entries are the inner products the neighbour graphs
already hold.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign._checks import as_features, check_k, check_same_n, check_variance
from jaxalign.metrics.kernel import EPS, hsic_from_sums
from jaxalign.neighbors import NeighborGraph, check_graph, knn, membership

__all__ = ["cknna"]


def _sparse_hsic(cols: jax.Array, a: jax.Array, b: jax.Array, reverse: jax.Array, *, unbiased: bool) -> jax.Array:
    """HSIC of the sparse n x n matrices A, B whose row i holds ``a[i]``, ``b[i]`` at columns ``cols[i]``.

    ``a``/``b`` are zero off the mask; ``reverse[i, s]`` says that (cols[i, s], i) is a mask entry too, so
    Σ_ij A_ij B_ji = Σ over those entries of a·b (the kernels are symmetric: B_ji = L_ji = L_ij).
    """
    n = cols.shape[0]
    flat_cols = cols.reshape(-1)
    trace_ab = jnp.sum(jnp.where(reverse, a * b, 0))
    row_a, row_b = a.sum(1), b.sum(1)
    col_a = jax.ops.segment_sum(a.reshape(-1), flat_cols, num_segments=n)
    col_b = jax.ops.segment_sum(b.reshape(-1), flat_cols, num_segments=n)
    ab = jnp.dot(col_a, row_b)
    ba = jnp.dot(col_b, row_a)
    return hsic_from_sums(trace_ab, row_a.sum(), row_b.sum(), ab, ba, n, unbiased=unbiased)


def _rows_like(indices: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(indices.shape[0], dtype=indices.dtype)[:, None], indices.shape)


@functools.partial(jax.jit, static_argnames=("unbiased",))
def _self_similarity(graph: NeighborGraph, *, unbiased: bool) -> jax.Array:
    """sim(K, K) = HSIC(M_K∘K, M_K∘K) over the entries of one graph (reusable across pairs)."""
    idx = graph.indices
    rows = _rows_like(idx)
    reverse, _ = membership(idx, idx, rows)
    values = jnp.where(rows != idx, graph.values, 0) if unbiased else graph.values  # unbiased HSIC zeroes diag(K)
    return _sparse_hsic(idx, values, values, reverse, unbiased=unbiased)


@functools.partial(jax.jit, static_argnames=("unbiased",))
def _cross_similarity(graph_x: NeighborGraph, graph_y: NeighborGraph, *, unbiased: bool) -> jax.Array:
    """sim(K, L) = HSIC(M∘K, M∘L), M = M_K∘M_L: the entries of graph_x that graph_y holds too (L_ij from its values)."""
    ix, iy = graph_x.indices, graph_y.indices
    rows = _rows_like(ix)
    in_y, pos_y = membership(iy, rows, ix)
    reverse = membership(ix, ix, rows)[0] & membership(iy, ix, rows)[0]
    mask = in_y & (rows != ix) if unbiased else in_y
    a = jnp.where(mask, graph_x.values, 0)
    b = jnp.where(mask, jnp.take_along_axis(graph_y.values, pos_y, 1), 0)
    return _sparse_hsic(ix, a, b, reverse, unbiased=unbiased)


def cknna(
    x: Any,
    y: Any,
    *,
    k: int | None = 25,
    unbiased: bool = True,
    graph_x: NeighborGraph | None = None,
    graph_y: NeighborGraph | None = None,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """CKNNA alignment of two embeddings of the same N samples (platonic-rep ``cknna``; seed 000 uses k = 25).

    CKNNA = HSIC(M∘K, M∘L) / (sqrt(HSIC(M_K∘K, M_K∘K)·HSIC(M_L∘L, M_L∘L)) + 1e-6) with K = XXᵀ, L = YYᵀ and
    M = M_K ∘ M_L the mutual top-k (inner product) masks; see the module docstring. If HSIC(M_K∘K, M_K∘K)·
    HSIC(M_L∘L, M_L∘L) is negative (possible for the unbiased estimator of a masked kernel) the result is NaN, as in
    platonic-rep.

    Args:
      x: (N, d_x) features; may be ``None`` when ``graph_x`` is given.
      y: (N, d_y) features of the same samples; may be ``None`` when ``graph_y`` is given.
      k: neighbours per point, 2 ≤ k ≤ N − 1; ``None`` means N − 1 (with ``unbiased`` then equal to unbiased CKA).
      unbiased: exclude each point from its own neighbours and use the unbiased HSIC (Song et al. 2012); otherwise
        top-k over the full row (self allowed) and the biased HSIC trace(K H L H).
      graph_x, graph_y: precomputed ``knn(x, k', metric="ip", exclude_self=unbiased)`` graphs with k' ≥ k (reuse one
        per embedding across metrics and pairs); truncated to k.
      tile, mesh: passed to :func:`jaxalign.knn` when a graph is built here.

    Returns:
      A scalar in the common float dtype of the kernel values. Time O(N² d) for the searches, O(N k log k) after.
    """
    unbiased = bool(unbiased)
    min_rows = 4 if unbiased else 3
    if x is None and graph_x is None:
        raise ValueError("`x` is None; pass (N, d) features or a precomputed `graph_x`.")
    if y is None and graph_y is None:
        raise ValueError("`y` is None; pass (N, d) features or a precomputed `graph_y`.")
    x = None if x is None else as_features(x, "x", min_rows=min_rows)
    y = None if y is None else as_features(y, "y", min_rows=min_rows)
    if x is not None and y is not None:
        check_same_n(x, y)
    sizes = [a.shape[0] for a in (x, y) if a is not None]
    sizes += [g.n for g in (graph_x, graph_y) if isinstance(g, NeighborGraph)]
    n = sizes[0]
    if n < min_rows:
        raise ValueError(f"CKNNA needs at least {min_rows} samples, got N={n}.")
    k = n - 1 if k is None else check_k(k, n, "k", low=2, high=n - 1)

    graphs = []
    for feats, graph, name in ((x, graph_x, "x"), (y, graph_y, "y")):
        if graph is not None:
            graph = check_graph(
                graph, f"graph_{name}", metric="ip", exclude_self=unbiased, n=n, k=k, data_name=name, purpose="CKNNA"
            )
        else:
            check_variance(feats, name)
            graph = knn(feats, k, metric="ip", exclude_self=unbiased, tile=tile, mesh=mesh)
        graphs.append(graph)
    gx, gy = graphs
    dtype = jnp.result_type(gx.values.dtype, gy.values.dtype)
    gx = NeighborGraph(gx.indices, gx.values.astype(dtype), gx.metric, gx.exclude_self)
    gy = NeighborGraph(gy.indices, gy.values.astype(dtype), gy.metric, gy.exclude_self)
    sim_kk = _self_similarity(gx, unbiased=unbiased)
    sim_ll = _self_similarity(gy, unbiased=unbiased)
    sim_kl = _cross_similarity(gx, gy, unbiased=unbiased)
    return sim_kl / (jnp.sqrt(sim_kk * sim_ll) + EPS)
