"""The neighbour engine: exact k-nearest-neighbour graphs from tiled top-k, never materialising N x N.

One graph per embedding serves every kNN metric (CKNNA, mutual/cycle/LCS/edit kNN, TwoNN, MLE, information
imbalance), so an M-model alignment matrix needs M searches, not M². Like jax-md's neighbour lists the graph is a
pure value with static capacity ``k``: build it once with :func:`knn`, pass it to any metric, vmap or shard it.

For each row tile T the engine forms S = X[T] Xᵀ (``metric="ip"``) or −D² with D² = |x|² + |y|² − 2 x·y clamped at 0
(``metric="euclidean"``), removes the point itself *by index* (never by value, so duplicates stay neighbours) and
keeps ``lax.top_k``. Euclidean distances of the selected pairs are then recomputed as ‖x_i − x_j‖ from the rows
themselves (the expanded formula loses digits for close points) and re-sorted, so r₁ = 0 identifies duplicates
exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign._checks import as_features, check_k
from jaxalign.tiling import TILE_BUDGET, default_tile, map_row_tiles, resolve_mesh, safe_sqrt

__all__ = ["METRICS", "NeighborGraph", "knn", "membership"]

METRICS = ("ip", "euclidean")


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["indices", "values"], meta_fields=["metric", "exclude_self"]
)
@dataclasses.dataclass(frozen=True)
class NeighborGraph:
    """k nearest neighbours of every point.

    Attributes:
      indices: (N, k) int32, neighbours of row i, best first.
      values: (N, k) similarities (``metric="ip"``, descending) or Euclidean distances (ascending).
      metric: ``"ip"`` or ``"euclidean"`` (static).
      exclude_self: whether the point itself was excluded from its own neighbours (static).
    """

    indices: jax.Array
    values: jax.Array
    metric: str
    exclude_self: bool = True

    @property
    def n(self) -> int:
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def truncate(self, k: int) -> NeighborGraph:
        """The graph of the first ``k`` neighbours (a graph built for k_max serves every k ≤ k_max)."""
        check_k(k, self.k + 1, "k", high=self.k)
        return NeighborGraph(self.indices[:, :k], self.values[:, :k], self.metric, self.exclude_self)


def _topk_tile(rows: jax.Array, x: jax.Array, sq: jax.Array, *, k: int, metric: str, exclude_self: bool):
    a = x[rows]
    prod = jnp.matmul(a, x.T, precision=jax.lax.Precision.HIGHEST)
    score = prod if metric == "ip" else 2.0 * prod - sq[rows][:, None] - sq[None, :]
    if exclude_self:
        score = score.at[jnp.arange(rows.shape[0]), rows].set(-jnp.inf)
    values, indices = jax.lax.top_k(score, k)
    if metric == "euclidean":
        diff = a[:, None, :] - x[indices]
        values = safe_sqrt((diff * diff).sum(-1))
        order = jnp.argsort(values, axis=1, stable=True)
        values = jnp.take_along_axis(values, order, 1)
        indices = jnp.take_along_axis(indices, order, 1)
    return indices.astype(jnp.int32), values


@functools.partial(jax.jit, static_argnames=("k", "metric", "exclude_self", "tile", "mesh"))
def _knn(x: jax.Array, *, k: int, metric: str, exclude_self: bool, tile: int, mesh: Mesh | None) -> NeighborGraph:
    if metric == "euclidean":
        x = x - x.mean(0)
    sq = (x * x).sum(1)
    fn = functools.partial(_topk_tile, k=k, metric=metric, exclude_self=exclude_self)
    indices, values = map_row_tiles(fn, x.shape[0], x, sq, tile=tile, mesh=mesh)
    return NeighborGraph(indices, values, metric, exclude_self)


def knn(
    x: Any,
    k: int,
    *,
    metric: str = "ip",
    exclude_self: bool = True,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> NeighborGraph:
    """Exact k-nearest-neighbour graph of the rows of ``x``.

    Args:
      x: (N, d) features (numpy, jax or torch).
      k: neighbours per point, ``1 <= k <= N-1`` (``<= N`` when ``exclude_self=False``).
      metric: ``"ip"`` (largest inner product, platonic-rep's kNN) or ``"euclidean"`` (smallest distance).
      exclude_self: drop the point itself by index (platonic-rep's unbiased CKNNA keeps it when False).
      tile: rows per tile; default keeps one (tile, N) block near 32 MiB.
      mesh: 1-D device mesh splitting the row tiles, ``"auto"`` (all devices) or ``None``.

    Returns:
      A :class:`NeighborGraph` with (N, k) indices and values. Time O(N² d), memory O(tile·N + N·k).
    """
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}.")
    x = as_features(x, "x")
    n = x.shape[0]
    k = check_k(k, n, "k", high=n - 1 if exclude_self else n)
    if tile is None:
        tile = default_tile(n, k * x.shape[1] if metric == "euclidean" else None, TILE_BUDGET)
    return _knn(x, k=k, metric=metric, exclude_self=exclude_self, tile=int(tile), mesh=resolve_mesh(mesh))


def membership(graph_indices: jax.Array, rows: jax.Array, cols: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Is ``cols[m]`` among the neighbours of ``rows[m]``, and at which position of ``graph_indices[rows[m]]``?

    Each row's neighbours are sorted once; every query is then a binary search of ceil(log2(k+1)) gather steps, so
    time is O(M log k) and memory O(N·k + M). ``rows``/``cols`` may have any (matching) shape. Returns
    (found, position), the position being meaningful only where found.
    """
    order = jnp.argsort(graph_indices, axis=1)
    sorted_idx = jnp.take_along_axis(graph_indices, order, 1)
    k = graph_indices.shape[1]
    r, c = rows.reshape(-1), cols.reshape(-1)
    lo = jnp.zeros(r.shape, jnp.int32)
    hi = jnp.full(r.shape, k, jnp.int32)
    for _ in range(max(1, math.ceil(math.log2(k + 1)))):
        mid = (lo + hi) // 2
        go_right = (sorted_idx[r, jnp.minimum(mid, k - 1)] < c) & (lo < hi)
        lo, hi = jnp.where(go_right, mid + 1, lo), jnp.where(go_right | (lo >= hi), hi, mid)
    pos = jnp.minimum(lo, k - 1)
    found = sorted_idx[r, pos] == c
    return found.reshape(rows.shape), order[r, pos].reshape(rows.shape)
