"""Information imbalance with exact full ranks (DADApy 0.3.4 ``return_information_imbalace``), tiled.

Glielmo, Zeni, Cheng, Csányi & Laio 2022, "Ranking the information content of distance measures", PNAS Nexus 1(2):

    Δ(A→B) = (2/N) · ⟨r^B_ij⟩, averaged over every i and over the first k neighbours j of i in space A,

where r^B_ij is the rank of j among the neighbours of i in space B: 1-based, the point itself excluded, so the
nearest other point has rank 1. Δ ≈ 0 when A's neighbourhoods predict B's, Δ ≈ 1 when they carry no information
about B. Exact values: with k = N − 1 every rank 1..N−1 is averaged and Δ = 1; for A = B the ranks of the first k
neighbours are 1..k, so Δ(A→A) = (2/N)·(k+1)/2 = (k+1)/N (→ 0 as N grows, the "Δ(X→X) = 0" of the paper).

Algorithm (time O(N² d), memory O(tile·N + N·k)): the k Euclidean neighbours of every point in each space come from
the neighbour engine (:func:`~jaxalign.neighbors.knn`; pass ``graph_x``/``graph_y`` to reuse them). One
:func:`~jaxalign.tiling.map_row_tiles` pass forms, for a tile of rows i, the squared distances d_X(i, ·) and
d_Y(i, ·) of the centred data (squared distances rank like distances), sets d(i, i) = +inf, and ranks the other
space's neighbours: r_ij = 1 + #{l : d(i, l) < d(i, j)}. For k ≤ 64 the count is a fused compare-and-sum per
neighbour (O(tile·N·k)); for larger k the k targets of each row are sorted once and every distance of the row is
placed among them by binary search, so the counts follow from a histogram (O(tile·N·log k)).

Ties: DADApy's rank is j's position in scikit-learn's ``argsort`` of row i, whose order among equal distances is
unspecified (even the point itself need not come first when rows are duplicated). We use the smallest tied
position, 1 + the number of strictly closer points ("competition" ranking); the two agree whenever the distances
from i are distinct, which is the case for continuous data. Ties are decided on the computed squared distances, so
distances equal in exact arithmetic can be split by rounding, as they can in scikit-learn's expanded formula.
DADApy's truncated variant (``return_inf_imb_two_selected_coords``, which draws random ranks beyond ``maxk``) is
biased and not reproduced.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign._checks import as_features, check_k, check_same_n, check_variance
from jaxalign.neighbors import NeighborGraph, check_graph
from jaxalign.tiling import map_row_tiles, pairwise_block, resolve_mesh

__all__ = ["COUNT_UP_TO_K", "information_imbalance"]

#: Up to this k each rank is a fused compare-and-count over the row; above it the row's distances are binary-searched
#: among the k sorted targets. On CPU the count wins below k ≈ 64 (N = 4000-10000, tile 256-512); sorting whole rows
#: was ~20x slower than either at k = 32.
COUNT_UP_TO_K = 64


def _ranks(dist: jax.Array, idx: jax.Array, *, search: bool) -> jax.Array:
    """1 + #{l : dist[t, l] < dist[t, idx[t, m]]} for a (tile, N) block and (tile, k) column indices.

    ``search=False``: one (tile, N) compare-and-count per neighbour, O(tile·N·k), never a (tile, k, N) array.
    ``search=True``: sort the k targets of each row, place every distance of the row among them by binary search
    (p_l = #{targets ≤ d_l}), histogram p and take its cumulative sum C(q) = #{l : p_l ≤ q} = #{l : d_l < ts_q};
    the target t_m reads C at its leftmost sorted position. O(tile·N·log k), exact (same integers as the count).
    """
    target = jnp.take_along_axis(dist, idx, axis=1)
    if not search:
        closer = jax.lax.map(lambda t: (dist < t[:, None]).sum(1, dtype=jnp.int32), target.T).T
        return closer + 1
    k = idx.shape[1]
    ordered = jnp.sort(target, axis=1)

    def row(ts: jax.Array, d: jax.Array, t: jax.Array) -> jax.Array:
        p = jnp.searchsorted(ts, d, side="right")
        cumulative = jnp.cumsum(jnp.zeros(k + 1, jnp.int32).at[p].add(1))
        return cumulative[jnp.searchsorted(ts, t, side="left")]

    return jax.vmap(row)(ordered, dist, target) + 1


def _rank_sums_tile(
    rows: jax.Array, x: jax.Array, y: jax.Array, nbr_x: jax.Array, nbr_y: jax.Array, *, k: int, search: bool
) -> tuple[jax.Array, jax.Array]:
    """Per-row sums of the Y-ranks of the X-neighbours and of the X-ranks of the Y-neighbours.

    A zero-width ``nbr_x``/``nbr_y`` means no graph was given: the k nearest neighbours are then taken from the very
    distance block the ranks use (the engine's top-k fused into this pass, saving one N² pass per embedding).
    """
    diag = (jnp.arange(rows.shape[0]), rows)
    dist_x = pairwise_block(x[rows], x, "sqeuclidean").at[diag].set(jnp.inf)
    dist_y = pairwise_block(y[rows], y, "sqeuclidean").at[diag].set(jnp.inf)
    near_x = nbr_x[rows] if nbr_x.shape[1] else jax.lax.top_k(-dist_x, k)[1]
    near_y = nbr_y[rows] if nbr_y.shape[1] else jax.lax.top_k(-dist_y, k)[1]
    x_to_y = _ranks(dist_y, near_x, search=search).sum(1)
    y_to_x = _ranks(dist_x, near_y, search=search).sum(1)
    return x_to_y, y_to_x


@functools.partial(jax.jit, static_argnames=("k", "search", "tile", "mesh"))
def _information_imbalance(
    x: jax.Array,
    y: jax.Array,
    nbr_x: jax.Array,
    nbr_y: jax.Array,
    *,
    k: int,
    search: bool,
    tile: int | None,
    mesh: Mesh | None,
) -> jax.Array:
    n = x.shape[0]
    dtype = jnp.result_type(x.dtype, y.dtype)
    x = x - x.mean(0)
    y = y - y.mean(0)
    fn = functools.partial(_rank_sums_tile, k=k, search=search)
    x_to_y, y_to_x = map_row_tiles(fn, n, x, y, nbr_x, nbr_y, tile=tile, mesh=mesh)
    scale = 2.0 / (n * n * k)
    return jnp.stack([x_to_y.astype(dtype).sum(), y_to_x.astype(dtype).sum()]) * scale


def information_imbalance(
    x: Any,
    y: Any,
    *,
    k: int = 1,
    graph_x: NeighborGraph | None = None,
    graph_y: NeighborGraph | None = None,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Information imbalances [Δ(X→Y), Δ(Y→X)] with exact full ranks (DADApy 0.3.4, one subset = all N points).

    Δ(A→B) = (2/N) · mean over i and over the first k Euclidean neighbours j of i in A of the rank r^B_ij of j
    among i's neighbours in B (1-based, self excluded, ties ranked by the number of strictly closer points).
    Glielmo et al. 2022, PNAS Nexus 1(2). Δ(X→X) = (k+1)/N; with k = N−1, Δ = 1.

    Args:
      x: (N, d_x) features (numpy, jax or torch).
      y: (N, d_y) features of the same N samples.
      k: neighbours of A averaged per point, 1 <= k <= N−1 (default 1, DADApy's default).
      graph_x, graph_y: optional precomputed ``knn(x, k', metric="euclidean")`` graphs with k' >= k, reused across
        metrics and model pairs.
      tile: rows per tile (default: one (tile, N) block near 32 MiB).
      mesh: 1-D device mesh splitting the row tiles, ``"auto"`` (all devices) or ``None``.

    Returns:
      A (2,) array [Δ(X→Y), Δ(Y→X)] in the input's float dtype. Time O(N² (d_x + d_y)), memory O(tile·N + N·k).
    """
    x, y = as_features(x, "x"), as_features(y, "y")
    check_same_n(x, y)
    n = x.shape[0]
    k = check_k(k, n, "k")
    check_variance(x, "x")
    check_variance(y, "y")
    mesh = resolve_mesh(mesh)
    purpose = "information imbalance (Euclidean ranks without the point itself)"
    neighbours = []
    for graph, name in ((graph_x, "x"), (graph_y, "y")):
        if graph is None:  # found inside the rank pass, from the same distance block
            neighbours.append(jnp.zeros((n, 0), jnp.int32))
        else:
            graph = check_graph(graph, f"graph_{name}", metric="euclidean", n=n, k=k, data_name=name, purpose=purpose)
            neighbours.append(graph.indices)
    return _information_imbalance(x, y, *neighbours, k=k, search=k > COUNT_UP_TO_K, tile=tile, mesh=mesh)
