"""Row tiles of an (N, N) pairwise computation, mapped sequentially and sharded across devices.

Every metric that needs all pairs (kNN search, distance correlation, RBF CKA, information imbalance) is written as a
function of a *tile of row indices*: ``fn(rows, *operands) -> pytree of (tile, ...)`` arrays, one entry per row.
``map_row_tiles`` runs it over ``ceil(N / tile)`` tiles with ``lax.map`` (so at most ``tile x N`` values are alive at
once) and splits the tiles over the devices of a 1-D ``jax.sharding.Mesh`` with ``shard_map``. Padded rows are
clamped to row N-1 and their outputs dropped, so ``fn`` never sees an out-of-range index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

__all__ = ["ROW_AXIS", "default_tile", "map_row_tiles", "pairwise_block", "resolve_mesh", "row_mesh", "safe_sqrt"]

ROW_AXIS = "rows"
#: Elements of one (tile, N) block; 2**23 float32 values = 32 MiB.
TILE_BUDGET = 1 << 23


def row_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices) whose axis ``"rows"`` splits row tiles."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(devices, (ROW_AXIS,))


def resolve_mesh(mesh: Mesh | str | None) -> Mesh | None:
    """``"auto"`` → a row mesh over all devices when there are several, else None; a Mesh or None as given."""
    if mesh == "auto":
        return row_mesh() if jax.device_count() > 1 else None
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    raise ValueError(f"`mesh` must be a jax.sharding.Mesh, 'auto' or None, got {mesh!r}.")


def default_tile(n: int, width: int | None = None, budget: int = TILE_BUDGET) -> int:
    """Largest tile (multiple of 8 where possible) whose ``tile x max(n, width)`` block fits ``budget`` elements."""
    width = max(n, width or 0)
    tile = max(1, min(n, budget // max(width, 1)))
    if tile == n or tile <= 8:
        return tile
    return tile - tile % 8


def map_row_tiles(
    fn: Callable[..., Any],
    n: int,
    *operands: Any,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> Any:
    """Evaluate ``fn(rows, *operands)`` for every tile of rows ``0..n-1`` and concatenate the per-row outputs.

    Args:
      fn: maps an int32 vector of ``tile`` row indices (and the operands) to a pytree of arrays whose leading axis
        has length ``tile``. It must be shape-polymorphic only in values, as for ``lax.map``.
      n: number of rows.
      operands: arrays every tile needs in full (replicated on every device).
      tile: rows per tile (default: :func:`default_tile` of ``n``).
      mesh: a 1-D mesh whose devices split the tiles, ``"auto"`` (all devices when there are several) or ``None``.

    Returns:
      The pytree of ``fn``'s outputs with the tile axis flattened to ``n`` rows.
    """
    tile = default_tile(n) if tile is None else max(1, min(int(tile), n))
    mesh = resolve_mesh(mesh)
    n_dev = 1 if mesh is None else mesh.devices.size
    n_tiles = math.ceil(n / tile)
    n_tiles = math.ceil(n_tiles / n_dev) * n_dev
    rows = jnp.minimum(jnp.arange(n_tiles * tile, dtype=jnp.int32), n - 1).reshape(n_tiles, tile)

    def run(row_tiles: jax.Array, *ops: Any) -> Any:
        return jax.lax.map(lambda r: fn(r, *ops), row_tiles)

    if mesh is not None:
        axis = mesh.axis_names[0]
        run = jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(PartitionSpec(axis),) + (PartitionSpec(),) * len(operands),
            out_specs=PartitionSpec(axis),
            check_vma=False,
        )
    out = run(rows, *operands)
    return jax.tree_util.tree_map(lambda a: a.reshape((n_tiles * tile, *a.shape[2:]))[:n], out)


def safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt with a zero (not NaN/inf) gradient at 0, for distances on the diagonal and between duplicates."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def pairwise_block(a: jax.Array, b: jax.Array, metric: str) -> jax.Array:
    """Pairwise ``metric`` between the rows of ``a`` (tile, d) and ``b`` (N, d): an (tile, N) block.

    ``"ip"``: a bᵀ. ``"sqeuclidean"``: |a|² + |b|² − 2 a·b clamped at 0. ``"euclidean"``: its safe square root.
    Centre the data first (distances are translation invariant) to keep the expanded formula accurate.
    """
    prod = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs: exactness first
    if metric == "ip":
        return prod
    sq = jnp.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * prod, 0.0)
    if metric == "sqeuclidean":
        return sq
    if metric == "euclidean":
        return safe_sqrt(sq)
    raise ValueError(f"`metric` must be 'ip', 'sqeuclidean' or 'euclidean', got {metric!r}.")
