"""kNN-overlap alignment: mutual, cycle, LCS and edit-distance kNN (Huh et al. 2024, "The Platonic Representation
Hypothesis", ICML; the semantics of platonic-rep ``metrics.py``).

Neighbours are the k largest inner products with the point itself excluded (platonic-rep
``compute_nearest_neighbors``), i.e. :func:`jaxalign.neighbors.knn` with ``metric="ip"``. With N_X(i) and N_Y(i) the
ordered neighbour lists of sample i in the two embeddings:

- ``mutual_knn``        = mean_i |N_X(i) ∩ N_Y(i)| / k;
- ``cycle_knn``         = mean_i [ ∃ j ∈ N_Y(i) with i ∈ N_X(j) ]   (Y-neighbour, then back through X);
- ``lcs_knn``           = mean_i LCS(N_X(i), N_Y(i)), the length of the longest common subsequence of the ordered lists
  (not normalised: it lies in [0, k]);
- ``edit_distance_knn`` = 1 − mean_i Lev(N_X(i), N_Y(i)) / k, Lev the Levenshtein distance with unit insert, delete
  and substitute costs (``torchaudio.functional.edit_distance``).

After the two graphs (one per embedding, reusable through ``graph_x=`` / ``graph_y=``) nothing N×N is formed:

- mutual: each row's two lists are concatenated and sorted; as a kNN list holds distinct indices, every shared
  neighbour shows up as one pair of equal neighbours. O(N·k log k) time, O(N·k) memory.
- cycle: for a tile of rows the (tile, k, k) gather N_X(N_Y(i)) is compared with i, tiles mapped (and sharded)
  with :func:`jaxalign.tiling.map_row_tiles` so that tile·k² stays within the tile budget. O(N·k²) time.
- LCS and Levenshtein: dynamic programmes over the k positions of list X (``lax.scan``) whose rows over the k
  positions of list Y are closed forms: the in-row recurrence ``D[j] = max(c[j], D[j-1])`` is a running maximum
  (LCS) and ``D[j] = min(c[j], D[j-1] + 1)`` is ``cummin(c[j] − j) + j`` (Levenshtein), so each step is vectorised
  over the row and ``vmap``-ped over samples: O(N·k²) time, O(N·k) memory.

Input: features follow :func:`jaxalign._checks.as_features` (integers through float64, half precision as float32,
complex refused). A constant embedding (all rows identical) raises ``ValueError``, as in CKA and CKNNA: every inner
product ties, so its neighbour lists are the row order and the overlap is an artefact. The check needs values, so it
runs eagerly on features only (not under ``jit``, and not on precomputed graphs).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign._checks import as_features, check_variance
from jaxalign.neighbors import COMPARE_UP_TO, NeighborGraph, resolve_graph
from jaxalign.tiling import TILE_BUDGET, map_row_tiles, resolve_mesh

__all__ = ["cycle_knn", "edit_distance_knn", "lcs_knn", "mutual_knn"]


# --------------------------------------------------------------------------------------------------------------------
# Graph handling


def _graph(x: Any, graph: NeighborGraph | None, k: int, name: str, tile: int | None, mesh: Any) -> NeighborGraph:
    """The inner-product, self-excluded kNN graph of ``x`` truncated to ``k``, built or validated.

    Raises ``ValueError`` when the graph has to be built from features whose rows are all identical.
    """
    if graph is None and x is not None:
        x = as_features(x, name)
        check_variance(x, name)
    return resolve_graph(x, graph, k=k, metric="ip", name=name, purpose="kNN overlap", tile=tile, mesh=mesh)


def _graphs(
    x: Any,
    y: Any,
    k: int,
    graph_x: NeighborGraph | None,
    graph_y: NeighborGraph | None,
    tile: int | None,
    mesh: Any,
) -> tuple[NeighborGraph, NeighborGraph]:
    gx = _graph(x, graph_x, k, "x", tile, mesh)
    gy = _graph(y, graph_y, k, "y", tile, mesh)
    if gx.n != gy.n:
        raise ValueError(
            f"`x` has {gx.n} rows but `y` has {gy.n}; row i of both must describe the same sample, so pass "
            "embeddings (or graphs) of the same N samples in the same order."
        )
    return gx, gy


def _dtype(gx: NeighborGraph, gy: NeighborGraph) -> jnp.dtype:
    return jnp.result_type(gx.values.dtype, gy.values.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Vectorised kernels


def lcs_length(a: jax.Array, b: jax.Array) -> jax.Array:
    """Length of the longest common subsequence of the 1-D integer sequences ``a`` and ``b`` (classic DP).

    Row i of the table is D_i[j] = max(D_{i-1}[j], D_i[j-1], D_{i-1}[j-1] + [a_i = b_j]); since D_{i-1}[j-1] + 1
    bounds D_i[j-1] and D_{i-1}[j] from above, D_i = cummax(max(D_{i-1}[j], D_{i-1}[j-1] + [a_i = b_j])).
    """
    zero = jnp.zeros((), jnp.int32)

    def step(prev: jax.Array, ai: jax.Array) -> tuple[jax.Array, None]:
        cand = jnp.maximum(prev[1:], prev[:-1] + (ai == b).astype(jnp.int32))
        return jnp.concatenate([zero[None], jax.lax.cummax(cand)]), None

    last, _ = jax.lax.scan(step, jnp.zeros(b.shape[0] + 1, jnp.int32), a)
    return last[-1]


def levenshtein(a: jax.Array, b: jax.Array) -> jax.Array:
    """Levenshtein distance between the 1-D integer sequences ``a`` and ``b`` (unit insert/delete/substitute).

    Row i: D_i[0] = i, D_i[j] = min(D_{i-1}[j] + 1, D_i[j-1] + 1, D_{i-1}[j-1] + [a_i ≠ b_j]); the in-row term is
    unrolled as D_i[j] = j + min_{j' ≤ j}(c[j'] − j') with c the two other terms, i.e. a running minimum.
    """
    offsets = jnp.arange(b.shape[0] + 1, dtype=jnp.int32)

    def step(prev: jax.Array, inp: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        i, ai = inp
        cand = jnp.minimum(prev[1:] + 1, prev[:-1] + (ai != b).astype(jnp.int32))
        cand = jnp.concatenate([i[None] + 1, cand])
        return jax.lax.cummin(cand - offsets) + offsets, None

    last, _ = jax.lax.scan(step, offsets, (jnp.arange(a.shape[0], dtype=jnp.int32), a))
    return last[-1]


def _shared_per_row(a: jax.Array, b: jax.Array) -> jax.Array:
    """|a_i ∩ b_i| for every row i of two (N, k) arrays whose rows hold distinct values: every pair of the two rows
    compared in one fused pass for small rows (:data:`~jaxalign.neighbors.COMPARE_UP_TO`), else a merge by sorting."""
    if a.shape[1] * b.shape[1] <= COMPARE_UP_TO:
        return (a[:, :, None] == b[:, None, :]).any(2).sum(1, dtype=jnp.int32)  # 20x faster than a 2-axis sum
    merged = jnp.sort(jnp.concatenate([a, b], axis=1), axis=1)
    return (merged[:, 1:] == merged[:, :-1]).sum(axis=1)


def _returns_tile(rows: jax.Array, ix: jax.Array, iy: jax.Array) -> jax.Array:
    """For each i in ``rows``: is i among the X-neighbours of one of its Y-neighbours? (tile, k, k) gather."""
    return (ix[iy[rows]] == rows[:, None, None]).any(axis=(1, 2))


@jax.jit
def _mutual_core(gx: NeighborGraph, gy: NeighborGraph) -> jax.Array:
    shared = _shared_per_row(gx.indices, gy.indices)
    return shared.sum().astype(_dtype(gx, gy)) / gx.indices.size


@functools.partial(jax.jit, static_argnames=("tile", "mesh"))
def _cycle_core(gx: NeighborGraph, gy: NeighborGraph, *, tile: int, mesh: Mesh | None) -> jax.Array:
    back = map_row_tiles(_returns_tile, gx.n, gx.indices, gy.indices, tile=tile, mesh=mesh)
    return back.sum().astype(_dtype(gx, gy)) / gx.n


@jax.jit
def _lcs_core(gx: NeighborGraph, gy: NeighborGraph) -> jax.Array:
    lengths = jax.vmap(lcs_length)(gx.indices, gy.indices)
    return lengths.sum().astype(_dtype(gx, gy)) / lengths.shape[0]


@jax.jit
def _edit_core(gx: NeighborGraph, gy: NeighborGraph) -> jax.Array:
    dist = jax.vmap(levenshtein)(gx.indices, gy.indices)
    total = gx.indices.size  # N·k; 1 − Σ Lev / (N·k) as one exact integer difference over N·k
    return (total - dist.sum()).astype(_dtype(gx, gy)) / total


# --------------------------------------------------------------------------------------------------------------------
# Public metrics


def mutual_knn(
    x: Any,
    y: Any,
    *,
    k: int = 10,
    graph_x: NeighborGraph | None = None,
    graph_y: NeighborGraph | None = None,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Mutual kNN accuracy: mean_i |N_X(i) ∩ N_Y(i)| / k (platonic-rep ``mutual_knn``).

    Args:
      x: (N, d_x) features, or None when ``graph_x`` is given.
      y: (N, d_y) features, or None when ``graph_y`` is given.
      k: neighbours per point, 1 <= k <= N-1 (platonic-rep ``topk``).
      graph_x, graph_y: precomputed ``knn(·, k' >= k, metric="ip")`` graphs, truncated to ``k``: one neighbour
        search per embedding serves every kNN metric and every pair.
      tile, mesh: passed to :func:`jaxalign.knn` when a graph has to be built.

    Raises:
      ValueError: naming the argument, for bad features (complex, NaN/inf, N mismatch, constant), k out of range or
        an unsuitable graph.

    Returns:
      A scalar in [0, 1]; 1 when both embeddings have the same neighbour sets. Symmetric in x and y.
    """
    gx, gy = _graphs(x, y, k, graph_x, graph_y, tile, mesh)
    return _mutual_core(gx, gy)


def cycle_knn(
    x: Any,
    y: Any,
    *,
    k: int = 10,
    graph_x: NeighborGraph | None = None,
    graph_y: NeighborGraph | None = None,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Cycle kNN accuracy: the fraction of samples i with i ∈ N_X(j) for some j ∈ N_Y(i) (platonic-rep
    ``cycle_knn``: step to a Y-neighbour, come back through X).

    Args:
      x: (N, d_x) features, or None when ``graph_x`` is given.
      y: (N, d_y) features, or None when ``graph_y`` is given.
      k: neighbours per point, 1 <= k <= N-1 (platonic-rep ``topk``).
      graph_x, graph_y: precomputed ``knn(·, k' >= k, metric="ip")`` graphs, truncated to ``k``: one neighbour
        search per embedding serves every kNN metric and every pair.
      tile, mesh: passed to :func:`jaxalign.knn` when a graph has to be built; ``mesh`` also splits the
        (rows, k, k) gathers N_X(N_Y(i)) over devices.

    Raises:
      ValueError: naming the argument, for bad features (complex, NaN/inf, N mismatch, constant), k out of range or
        an unsuitable graph.

    Returns:
      A scalar in [0, 1]. Not symmetric in x and y.
    """
    gx, gy = _graphs(x, y, k, graph_x, graph_y, tile, mesh)
    gather_tile = max(1, min(gx.n, TILE_BUDGET // (k * k)))  # rows per (tile, k, k) block
    return _cycle_core(gx, gy, tile=gather_tile, mesh=resolve_mesh(mesh))


def lcs_knn(
    x: Any,
    y: Any,
    *,
    k: int = 10,
    graph_x: NeighborGraph | None = None,
    graph_y: NeighborGraph | None = None,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Mean length of the longest common subsequence of the ordered neighbour lists N_X(i), N_Y(i)
    (platonic-rep ``lcs_knn``; not normalised by k, as in the anchor).

    Args:
      x: (N, d_x) features, or None when ``graph_x`` is given.
      y: (N, d_y) features, or None when ``graph_y`` is given.
      k: neighbours per point, 1 <= k <= N-1 (platonic-rep ``topk``).
      graph_x, graph_y: precomputed ``knn(·, k' >= k, metric="ip")`` graphs, truncated to ``k``: one neighbour
        search per embedding serves every kNN metric and every pair.
      tile, mesh: passed to :func:`jaxalign.knn` when a graph has to be built.

    Raises:
      ValueError: naming the argument, for bad features (complex, NaN/inf, N mismatch, constant), k out of range or
        an unsuitable graph.

    Returns:
      A scalar in [0, k]; k when both embeddings rank the same neighbours in the same order.
    """
    gx, gy = _graphs(x, y, k, graph_x, graph_y, tile, mesh)
    return _lcs_core(gx, gy)


def edit_distance_knn(
    x: Any,
    y: Any,
    *,
    k: int = 10,
    graph_x: NeighborGraph | None = None,
    graph_y: NeighborGraph | None = None,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Edit-distance kNN similarity: 1 − mean_i Lev(N_X(i), N_Y(i)) / k, Lev the Levenshtein distance
    between the ordered neighbour lists (platonic-rep ``edit_distance_knn``, ``torchaudio.functional.edit_distance``).

    Args:
      x: (N, d_x) features, or None when ``graph_x`` is given.
      y: (N, d_y) features, or None when ``graph_y`` is given.
      k: neighbours per point, 1 <= k <= N-1 (platonic-rep ``topk``).
      graph_x, graph_y: precomputed ``knn(·, k' >= k, metric="ip")`` graphs, truncated to ``k``: one neighbour
        search per embedding serves every kNN metric and every pair.
      tile, mesh: passed to :func:`jaxalign.knn` when a graph has to be built.

    Raises:
      ValueError: naming the argument, for bad features (complex, NaN/inf, N mismatch, constant), k out of range or
        an unsuitable graph.

    Returns:
      A scalar in [0, 1]; 1 when both embeddings rank the same neighbours in the same order.
    """
    gx, gy = _graphs(x, y, k, graph_x, graph_y, tile, mesh)
    return _edit_core(gx, gy)
