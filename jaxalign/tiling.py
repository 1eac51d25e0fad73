"""Row tiles of an (N, N) pairwise computation, mapped sequentially and sharded across devices.

Every metric that needs all pairs (kNN search, distance correlation, RBF CKA, information imbalance) is written as a
function of a *tile of row indices*: ``fn(rows, *operands) -> pytree of (tile, ...)`` arrays, one entry per row.
``map_row_tiles`` runs it over ``ceil(N / tile)`` tiles with ``lax.map`` (so at most ``tile x N`` values are alive at
once) and splits the tiles over the devices of a 1-D ``jax.sharding.Mesh`` with ``shard_map``. Padded rows are
clamped to row N-1 and their outputs dropped, so ``fn`` never sees an out-of-range index.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

__all__ = [
    "ROW_AXIS",
    "default_tile",
    "map_row_tiles",
    "pairwise_block",
    "resolve_mesh",
    "row_mesh",
    "safe_sqrt",
    "sum_row_tiles",
]

ROW_AXIS = "rows"
#: Elements of one (tile, N) block; 2**23 float32 values = 32 MiB.
TILE_BUDGET = 1 << 23


def row_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: this process's devices) whose axis ``"rows"`` splits row tiles.

    The default is the local devices: the metrics work on host-local arrays, and under ``jax.distributed`` each
    process shards over its own devices (:func:`jaxalign.sweep.pairwise_matrices` deals work units to the processes).
    """
    devices = jax.local_devices() if devices is None else list(devices)
    return Mesh(devices, (ROW_AXIS,))


def resolve_mesh(mesh: Mesh | str | None) -> Mesh | None:
    """``"auto"`` → a row mesh over this process's devices when there are several, else None; a Mesh or None as
    given."""
    if mesh == "auto":
        return row_mesh() if jax.local_device_count() > 1 else None
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


def sum_row_tiles(
    fn: Callable[..., Any],
    rows: jax.Array,
    *operands: Any,
    tile: int,
    mesh: Mesh | None = None,
    combine: Callable[[Any, Any], Any] | None = None,
) -> Any:
    """Σ over the tiles of ``rows`` of ``fn(tile_rows, valid, *operands)``: a reduction over row tiles.

    The counterpart of :func:`map_row_tiles` for statistics that are sums over rows (Gram matrices of flattened
    blocks, rank counts, scattered row sums): ``rows`` (R,) is padded to whole tiles (a multiple of the device count)
    by repeating its last entry with ``valid`` False, and ``fn`` must give those rows no weight. The tiles run in
    order in a ``lax.scan`` whose carry is the running sum; on a mesh each device sums its share of the tiles and the
    devices' partial sums are gathered and combined in device order (deterministic for a given device count).

    Args:
      fn: maps (tile,) int32 row indices, a (tile,) bool ``valid`` mask and the operands to a pytree of arrays of
        fixed shapes (not per row); the pytree is summed leaf by leaf (``+``).
      rows: (R,) int32 indices of the rows to visit.
      operands: arrays every tile needs in full (replicated on every device).
      tile: rows per tile.
      mesh: a 1-D mesh whose devices split the tiles, or None.
      combine: ``(total, part) -> total`` for the whole pytree (e.g. exact double-float additions); default: ``+``
        leaf by leaf.

    Returns:
      The pytree of sums, replicated.
    """
    n_dev = 1 if mesh is None else mesh.devices.size
    count = rows.shape[0]
    tile = max(1, min(int(tile), count))
    n_tiles = math.ceil(math.ceil(count / tile) / n_dev) * n_dev
    padded = n_tiles * tile
    valid = (jnp.arange(padded) < count).reshape(n_tiles, tile)
    rows = jnp.concatenate([rows, jnp.broadcast_to(rows[-1:], (padded - count,))]).reshape(n_tiles, tile)
    shapes = jax.eval_shape(fn, rows[0], valid[0], *operands)
    if combine is None:
        combine = functools.partial(jax.tree_util.tree_map, jnp.add)

    def run(row_tiles: jax.Array, valid_tiles: jax.Array, *ops: Any) -> Any:
        def step(total: Any, tile_in: tuple[jax.Array, jax.Array]) -> tuple[Any, None]:
            return combine(total, fn(tile_in[0], tile_in[1], *ops)), None

        zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        total = jax.lax.scan(step, zero, (row_tiles, valid_tiles))[0]
        if mesh is None:
            return total
        parts = jax.lax.all_gather(total, mesh.axis_names[0])
        return jax.lax.scan(lambda t, p: (combine(t, p), None), zero, parts)[0]

    if mesh is not None:
        axis = mesh.axis_names[0]
        run = jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(PartitionSpec(axis), PartitionSpec(axis)) + (PartitionSpec(),) * len(operands),
            out_specs=PartitionSpec(),
            check_vma=False,
        )
    return run(rows, valid, *operands)


def safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt with a zero (not NaN/inf) gradient at 0, for distances on the diagonal and between duplicates."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def pairwise_block(a: jax.Array, b: jax.Array, metric: str, *, b_sq: jax.Array | None = None) -> jax.Array:
    """Pairwise ``metric`` between the rows of ``a`` (tile, d) and ``b`` (N, d): an (tile, N) block.

    ``"ip"``: a bᵀ. ``"sqeuclidean"``: |a|² + |b|² − 2 a·b clamped at 0. ``"euclidean"``: its safe square root.
    Centre the data first (distances are translation invariant) to keep the expanded formula accurate. ``b_sq``:
    the (N,) |b|² when a loop over row tiles holds them (summed once, not re-read from ``b`` on every tile).
    """
    prod = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs: exactness first
    if metric == "ip":
        return prod
    b_sq = (b * b).sum(1) if b_sq is None else b_sq
    sq = jnp.maximum((a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * prod, 0.0)
    if metric == "sqeuclidean":
        return sq
    if metric == "euclidean":
        return safe_sqrt(sq)
    raise ValueError(f"`metric` must be 'ip', 'sqeuclidean' or 'euclidean', got {metric!r}.")
