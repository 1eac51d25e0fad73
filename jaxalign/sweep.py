"""Every model x model metric matrix of a study in a few passes over the data (seed 000's ~60 models x 50,000 rows).

:func:`pairwise_matrices` takes M embeddings of the same N structures and returns name → (M, M) matrix for CKNNA,
mutual kNN, CKA, unbiased CKA, distance correlation and information imbalance (row → column), each equal to the
pairwise public function on the same inputs. It works per model and per pass over row tiles, never per pair:

1. **Graphs** (one unit per model): the inner-product kNN graph (CKNNA, mutual kNN), from the exact engine
   :func:`jaxalign.knn`.
2. **Features** (no N x N work): linear CKA and unbiased CKA from each model's unit-scale features — one
   (d_a x N)·(N x Σ_b d_b) product per model gives every pair's XᵀY — and CKNNA / mutual kNN from the graphs
   (per pair, each row's two neighbour lists compared entry by entry in one fused pass, O(N·k²) without a gather,
   :func:`jaxalign.neighbors.row_membership`; CKNNA's float32 kernel entries and each graph's reverse entries are
   built once per model, as :func:`~jaxalign.metrics.cknna` does).
3. **Distance pass** (units of rows): for a tile of rows, every model's (tile, N) squared-distance block is computed
   once (one GEMM) and serves both N² metrics:

   - dCor: the shifted distance powers a'_ij = ‖x_i − x_j‖^p − c of every model are flattened and their Gram
     matrix — one (M x tile·N)·(tile·N x M) product — adds Σ_ij a'_ij b'_ij to every pair at once; row sums and
     Σ a'² come with it (:func:`jaxalign.metrics.dcor.dcor_from_totals` finishes);
   - information imbalance: every model's Euclidean neighbours of the tile's rows are taken from its own block (the
     engine's certified top-k, :func:`jaxalign._exact.exact_top_k`: no second N² search per model) and ranked in
     every model's block at once, as threshold counts against that block (the exact counts of
     :mod:`jaxalign.metrics.information_imbalance`: certain counts from the block, the round-off band decided in
     double-float), for every k of ``ii_k`` from one set of counts.

   Sums are accumulated exactly where they are integers (ranks, as double-floats of integers) and in double-float
   across tiles for the Gram. Memory O(M·tile·N + M·N·k).

Sharding: the tiles of a unit are split over the devices of a 1-D mesh (:func:`jaxalign.tiling.sum_row_tiles`,
``shard_map``). Across hosts (``jax.distributed.initialize``, one process per host) the units are dealt round-robin
to the processes and every finished unit is broadcast to all of them, so every process returns the full matrices.

Resuming: with ``journal=`` (a directory, :class:`jaxalign.journal.Journal`) each finished unit is written
atomically under a name carrying the content key of its inputs; a rerun after any interruption (SIGKILL included)
reads them and computes only the missing units, and sums them in the same order, so the matrices are identical.
Units are named by their parameters, row range and model set; a whole-matrix sweep over another model set on the
same rows reuses the cells of the models it shares with a journaled unit and computes only the new models' rows and
columns (``between=(group_a, group_b)`` restricts any sweep to the cells between two groups the same way; the
permutation null of :mod:`jaxalign.statistics` uses it for originals against shuffled copies).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxalign import _double_float as df
from jaxalign._checks import as_features, check_k, check_variance
from jaxalign._exact import exact_rescale, exact_top_k, expanded_bound, expanded_frame
from jaxalign.journal import Journal, content_key
from jaxalign.metrics.cknna import (
    _cross_entries,
    _feature_side,
    _graph_entries,
    _hsic,
    _reverse_entries,
    _self_entries,
    cknna,
)
from jaxalign.metrics.dcor import (
    DistanceFrame,
    DistanceMoments,
    _check_exponent,
    _safe_power,
    dcor_from_totals,
    distance_frame,
)
from jaxalign.metrics.information_imbalance import COUNT_UP_TO_K, _exact_ranks, exact_count_sum
from jaxalign.metrics.kernel import _linear_unbiased_hsic, normalized_ratio, unit_scale
from jaxalign.metrics.knn_overlap import _mutual_core
from jaxalign.neighbors import COMPARE_UP_TO, NeighborGraph, knn, sorted_rows
from jaxalign.tiling import pairwise_block, resolve_mesh, safe_sqrt, sum_row_tiles

__all__ = ["METRICS", "pairwise_matrices"]

METRICS = ("cknna", "mutual_knn", "cka", "unbiased_cka", "dcor", "information_imbalance")
#: Elements of the per-tile working set of the distance pass (all M blocks): 2**26 float32 values = 256 MiB.
PASS_BUDGET = 1 << 26
#: Fewest rows per tile of the distance pass, whatever M·N: below it the per-tile costs (skinny matrix products, the
#: many small per-model operations of each step) dominate — M = 8, N = 10,000: 28.7 s at 8 rows, 9.3 s at 16, 6.5 s
#: at 32 to 128. Many models at large N exceed the budget instead (M = 60, N = 50,000: ~1.5 GiB).
MIN_PASS_TILE = 32
#: Graph entries (N·k) of the pairs computed at once by the graph metrics (CKNNA, mutual kNN): batching pairs only
#: pays at small N (N = 50,000, k = 25: 47 ms per CKNNA pair one at a time, 70 three at a time, 82 eight at a time).
PAIR_BATCH = 1 << 16

Progress = Callable[[str, int, int, bool], None]


# ---- inputs --------------------------------------------------------------------------------------------------------


def _models(features: Sequence[Any] | Mapping[str, Any]) -> tuple[list[str], list[jax.Array]]:
    """Names and checked (N, d_m) arrays in one common float dtype."""
    if isinstance(features, Mapping):
        names = [str(name) for name in features]
        values = list(features.values())
    elif isinstance(features, Sequence) and not isinstance(features, (str, bytes)):
        names = [str(i) for i in range(len(features))]
        values = list(features)
    else:
        raise ValueError(
            f"`features` must be a sequence or a mapping of (N, d_m) arrays, got {type(features).__name__}."
        )
    if len(values) < 1:
        raise ValueError("`features` is empty; pass at least one (N, d) embedding.")
    arrays = []
    for name, value in zip(names, values, strict=True):
        x = as_features(value, f"features[{name!r}]", min_rows=4)
        check_variance(x, f"features[{name!r}]")
        arrays.append(x)
    n = arrays[0].shape[0]
    for name, x in zip(names, arrays, strict=True):
        if x.shape[0] != n:
            raise ValueError(
                f"`features[{name!r}]` has {x.shape[0]} rows but `features[{names[0]!r}]` has {n}; every embedding "
                "must describe the same N structures in the same order."
            )
    dtype = jnp.result_type(*[x.dtype for x in arrays])
    return names, [x.astype(dtype) for x in arrays]


def _shape(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


def jaxalign_version() -> str:
    import jaxalign

    return jaxalign.__version__


def _digest(x: jax.Array) -> str:
    """sha256 of an array's dtype, shape and bytes (the journal's notion of "the same model")."""
    a = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:20]


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"`metrics` must be a non-empty subset of {METRICS}, got {metrics!r}.")
    return metrics


def _as_tuple(value: Any) -> tuple:
    if isinstance(value, (int, np.integer)) or not isinstance(value, Sequence):
        return (value,)
    return tuple(value)


def _check_ks(value: int | Sequence[int], n: int, name: str, low: int) -> tuple[int, ...]:
    values = _as_tuple(value)
    if not values:
        raise ValueError(f"`{name}` is empty; pass at least one k.")
    return tuple(sorted({check_k(k, n, name, low=low) for k in values}))


# ---- units: compute, journal, share across processes ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Units:
    """Runs named units once: from the journal if finished, else computed by the process they are dealt to and
    broadcast to the others (multi-host). ``computed`` counts the units this process computed."""

    journal: Journal | None
    progress: Progress | None
    computed: list = dataclasses.field(default_factory=list)

    def run(
        self,
        label: str,
        names: list[str],
        compute: Callable[[int], dict[str, np.ndarray]],
        shapes: Callable[[int], dict[str, jax.ShapeDtypeStruct]],
    ) -> list[dict]:
        """The units' arrays in order; ``shapes(i)`` gives unit i's output shapes (for the broadcast)."""
        procs, me = jax.process_count(), jax.process_index()
        results: list[dict | None] = [None] * len(names)
        for i, name in enumerate(names):
            if self.journal is not None:
                results[i] = self.journal.get(name)
            cached = results[i] is not None
            if results[i] is None and i % procs == me:
                results[i] = {key: np.asarray(value) for key, value in compute(i).items()}
                self.computed.append(name)
                if self.journal is not None:
                    self.journal.put(name, results[i])
            if self.progress is not None and results[i] is not None:
                self.progress(label, i + 1, len(names), cached)
        if procs > 1:
            results = _share(results, shapes)
        return results


def _share(results: list[dict | None], shapes: Callable[[int], dict[str, jax.ShapeDtypeStruct]]) -> list[dict]:
    """Every unit from the process it was dealt to (i mod process_count), broadcast to all, in unit order. A unit
    found in a shared journal by its owner is broadcast the same way."""
    from jax.experimental import multihost_utils

    procs, me = jax.process_count(), jax.process_index()
    shared = []
    for i, mine in enumerate(results):
        owner = i % procs
        if owner != me or mine is None:
            mine = {key: np.zeros(s.shape, s.dtype) for key, s in shapes(i).items()}
        got = multihost_utils.broadcast_one_to_all(mine, is_source=owner == me)
        shared.append({key: np.asarray(value) for key, value in got.items()})
    return shared


# ---- which cells: the whole matrix, the cells between two groups, the cells a journal lacks ------------------------


@dataclasses.dataclass(frozen=True)
class _Cells:
    """The cells a sweep computes: every pair with one model in ``left`` and the other in ``right``, both
    directions (``left = right = all`` for the whole matrix)."""

    m: int
    left: tuple[int, ...]
    right: tuple[int, ...]

    @property
    def full(self) -> bool:
        return self.left == self.right == tuple(range(self.m))

    @property
    def used(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.left) | set(self.right)))

    def mask(self) -> np.ndarray:
        """(M, M) bool: the cells computed."""
        mask = np.zeros((self.m, self.m), bool)
        mask[np.ix_(self.left, self.right)] = True
        mask[np.ix_(self.right, self.left)] = True
        return mask

    def sources(self, target: int) -> tuple[int, ...]:
        """The models i whose cell (i, target) is computed."""
        return tuple(int(i) for i in np.flatnonzero(self.mask()[:, target]))


def _group(group: Any, names: list[str], which: str) -> tuple[int, ...]:
    if isinstance(group, (str, int, np.integer)) or not isinstance(group, Sequence) or not group:
        raise ValueError(f"`between[{which}]` must be a non-empty sequence of model names or indices, got {group!r}.")
    out = set()
    for g in group:
        if isinstance(g, str) and g in names:
            out.add(names.index(g))
        elif isinstance(g, (int, np.integer)) and not isinstance(g, bool) and 0 <= int(g) < len(names):
            out.add(int(g))
        else:
            raise ValueError(f"`between[{which}]` names an unknown model {g!r}; models are {names} (or 0..M-1).")
    return tuple(sorted(out))


def _cells(between: Any, names: list[str]) -> _Cells:
    m = len(names)
    if between is None:
        return _Cells(m, tuple(range(m)), tuple(range(m)))
    if isinstance(between, (str, bytes)) or not isinstance(between, Sequence) or len(between) != 2:
        raise ValueError(f"`between` must be a pair (group_a, group_b) of model names or indices, got {between!r}.")
    return _Cells(m, _group(between[0], names, "0"), _group(between[1], names, "1"))


def _model_ids(digests: list[str]) -> np.ndarray:
    """(M, 10) uint8: the models' digests as a journal record carries them (broadcastable across hosts)."""
    return np.stack([np.frombuffer(bytes.fromhex(d), np.uint8) for d in digests])


def _prior(journal: Journal | None, prefix: str, digests: list[str]) -> tuple[dict, np.ndarray] | None:
    """The journaled record named ``prefix…`` that shares the most models with ``digests`` (a run on another model
    set): its arrays and, per current model, its position there (−1: not in it). None if no record shares one."""
    if journal is None:
        return None
    best = None
    for name in journal.units():
        record = journal.get(name) if name.startswith(prefix) else None
        if record is None or "models" not in record:
            continue
        position = {bytes(r).hex(): i for i, r in enumerate(record["models"])}
        index = np.array([position.get(d, -1) for d in digests])
        if best is None or (index >= 0).sum() > (best[1] >= 0).sum():
            best = (record, index)
    return best if best is not None and (best[1] >= 0).any() else None


def _incremental(
    journal: Journal | None,
    prefix: str,
    digests: list[str],
    compute: Callable[[_Cells], dict[str, np.ndarray]],
    cell_keys: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """A full-matrix unit, reusing a record of another model set: the cells among models both share are read from
    it, only the cells of the new models (their rows and columns) are computed. Arrays named in ``cell_keys`` are
    (M, M, …) cell arrays; the others are per model (M, …) and come from the computation, which needs every model."""
    m = len(digests)
    prior = _prior(journal, prefix, digests)
    if prior is None:
        out = compute(_Cells(m, tuple(range(m)), tuple(range(m))))
    else:
        record, index = prior
        known = np.flatnonzero(index >= 0)
        fresh = tuple(int(i) for i in np.flatnonzero(index < 0))
        if not fresh:  # a subset of an earlier model set: nothing new to compute
            return {
                key: (value[np.ix_(index, index)] if key in cell_keys else value[index])
                for key, value in record.items()
                if key != "models"
            } | {"models": _model_ids(digests)}
        out = compute(_Cells(m, fresh, tuple(range(m))))
        for key in (key for key in cell_keys if key in out):
            out[key] = np.array(out[key])
            out[key][np.ix_(known, known)] = record[key][np.ix_(index[known], index[known])]
    return {**out, "models": _model_ids(digests)}


# ---- per-model preparation -----------------------------------------------------------------------------------------


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["frame", "data", "scale", "sq", "norm", "exact"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class _Space:
    """One model's operands of the distance pass: dCor's :class:`~jaxalign.metrics.dcor.DistanceFrame` (whose rows
    also give the information-imbalance blocks), the model's own rows and the power of two that rescales them (the
    double-float band decisions, no second copy), the frame's squared row norms (the blocks' expansion: summed once,
    not on every tile) and their roots (round-off bounds), and the lattice flag — as :mod:`jaxalign.metrics.dcor` and
    :mod:`jaxalign.metrics.information_imbalance` prepare them."""

    frame: DistanceFrame
    data: jax.Array
    scale: jax.Array
    sq: jax.Array
    norm: jax.Array
    exact: jax.Array


@functools.partial(jax.jit, static_argnames=("exponent",))
def _frame_parts(x: jax.Array, *, exponent: float) -> tuple[DistanceFrame, jax.Array, jax.Array, jax.Array]:
    _, exact, _ = expanded_frame(x)
    frame = distance_frame(x, exponent)
    return frame, exact_rescale(x), (frame.rows * frame.rows).sum(1), exact


def _prepare(x: jax.Array, *, exponent: float) -> _Space:
    frame, scale, sq, exact = _frame_parts(x, exponent=exponent)
    return _Space(frame, x, scale, sq, jnp.sqrt(sq), exact)


# ---- the distance pass ---------------------------------------------------------------------------------------------


def _dd_combine(total: dict, part: dict) -> dict:
    """Exact double-float accumulation of the (hi, lo) leaves; plain sums for the row sums."""
    out = dict(total)
    for key in part:
        if key == "row":
            out[key] = total[key] + part[key]
        else:
            out[key] = df.add(total[key], part[key])
    return out


def _pass_tile(
    rows: jax.Array,
    valid: jax.Array,
    spaces: tuple[_Space, ...],
    start: jax.Array,
    *,
    length: int,
    exponent: float,
    ii_k: tuple[int, ...],
    dcor: bool,
    cells: _Cells,
) -> dict:
    """One tile's contribution over the models ``cells`` uses: dCor's cross Gram (|left|, |right|), Σ a'² (M,) and
    row sums (M, length) of the unit's rows; II rank totals (M_source, M_target, len(ii_k)), zero outside the
    cells; all as double-floats except the row sums."""
    t = rows.shape[0]
    m = len(spaces)
    n = spaces[0].data.shape[0]
    used = cells.used
    diag = rows[:, None] == jnp.arange(n, dtype=rows.dtype)[None, :]  # a mask XLA fuses into each consumer
    frames = {i: spaces[i].frame for i in used}
    # +inf on the diagonal: the blocks are the information-imbalance distances as they are (self excluded), and
    # dCor's powers put its 0 back in their own fusion — one (tile, N) array per model, not two
    blocks = {
        i: jnp.where(diag, jnp.inf, pairwise_block(f.rows[rows], f.rows, "sqeuclidean", b_sq=spaces[i].sq))
        for i, f in frames.items()
    }
    dtype = spaces[0].data.dtype
    out = {}
    if dcor:  # as distance_power_block, from the block shared with the ranks
        weight = valid.astype(dtype)[:, None]
        powers = {
            i: (
                jnp.where(diag, 0.0, _safe_power(b * (frames[i].factor * frames[i].factor), exponent / 2.0))
                - frames[i].shift
            )
            * weight
            for i, b in blocks.items()
        }

        # (tile·N, M) with the models last: XLA:CPU runs this AᵀA ~4x faster than the (M, tile·N) A Aᵀ
        def flat(group: tuple[int, ...]) -> jax.Array:
            return jnp.stack([powers[i] for i in group], axis=-1).reshape(-1, len(group))

        left = flat(cells.left)
        right = left if cells.right == cells.left else flat(cells.right)
        cross = jnp.matmul(left.T, right, precision=jax.lax.Precision.HIGHEST)
        if cells.full:  # the row sums from the stacked powers: each model's powers are formed once, in the stack
            sq = jnp.diagonal(cross)
            sums = left.reshape(t, n, m).sum(1).T
        else:
            sq = jnp.zeros(m, dtype).at[jnp.asarray(used)].set(jnp.stack([(powers[i] ** 2).sum() for i in used]))
            sums = jnp.stack([powers[i].sum(1) if i in powers else jnp.zeros(t, dtype) for i in range(m)])
        out["cross"], out["sq"] = df.lift(cross), df.lift(sq)
        out["row"] = jnp.zeros((m, length), dtype).at[:, rows - start].add(sums * valid[None, :])
    if ii_k:
        kmax = ii_k[-1]
        zero = jnp.zeros((m, len(ii_k)), dtype)
        bounds, near = {}, {}
        for i in used:  # every model's exact Euclidean neighbours of the tile's rows, from its own block
            space = spaces[i]
            d = space.data.shape[1]
            bounds[i] = jnp.where(space.exact, 0.0, expanded_bound(space.norm[rows], space.norm.max(), d, "sq"))
            near[i] = exact_top_k(
                blocks[i], bounds[i], space.data[rows], space.data, space.exact, k=kmax, metric="euclidean",
                exclude_self=True, ordered=len(ii_k) > 1, scale=space.scale, descending=False,
            )[0]  # fmt: skip
        near_of: dict[tuple[int, ...], jax.Array] = {}
        totals_hi, totals_lo = [], []
        for target in range(m):
            sources = cells.sources(target)
            if not sources:
                totals_hi.append(zero)
                totals_lo.append(zero)
                continue
            space = spaces[target]
            if sources not in near_of:
                near_of[sources] = jnp.stack([near[s] for s in sources], 1).reshape(t, len(sources) * kmax)
            search = len(sources) * kmax > COUNT_UP_TO_K
            ranks = _exact_ranks(
                blocks[target], bounds[target], near_of[sources], rows, space.data, space.exact, search=search,
                scale=space.scale,
            )  # fmt: skip
            upto = jnp.cumsum(ranks.reshape(t, len(sources), kmax), axis=2)[:, :, jnp.asarray(ii_k) - 1]
            hi, lo = exact_count_sum(jnp.where(valid[:, None, None], upto, 0), 0, dtype)
            totals_hi.append(zero.at[jnp.asarray(sources)].set(hi))
            totals_lo.append(zero.at[jnp.asarray(sources)].set(lo))
        out["ranks"] = (jnp.stack(totals_hi, 1), jnp.stack(totals_lo, 1))  # (M_src, M_tgt, n_k)
    return out


@functools.partial(jax.jit, static_argnames=("length", "exponent", "ii_k", "dcor", "cells", "tile", "mesh"))
def _pass_unit(
    rows: jax.Array,
    spaces: tuple[_Space, ...],
    start: jax.Array,
    *,
    length: int,
    exponent: float,
    ii_k: tuple[int, ...],
    dcor: bool,
    cells: _Cells,
    tile: int,
    mesh: Mesh | None,
) -> dict:
    fn = functools.partial(_pass_tile, length=length, exponent=exponent, ii_k=ii_k, dcor=dcor, cells=cells)
    return sum_row_tiles(fn, rows, spaces, start, tile=tile, mesh=mesh, combine=_dd_combine)


def _pass_tile_size(n: int, m: int, n_dev: int, tile: int | None) -> int:
    if tile is not None:
        return max(1, int(tile))
    size = max(MIN_PASS_TILE, PASS_BUDGET // max(1, 3 * m * n))
    return max(1, min(size - size % 8, -(-n // n_dev)))


# ---- pairs from features and graphs --------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("unbiased",))
def _cka_row(x: jax.Array, others: tuple[jax.Array, ...], *, unbiased: bool) -> jax.Array:
    """HSICs of model x (unit scale) against each of ``others`` (unit scale), as :func:`_cka_linear` forms them."""
    if not unbiased:
        return jnp.stack([jnp.sum((x.T @ y) ** 2) for y in others])
    sq_x = (x * x).sum(1)
    return jnp.stack([_linear_unbiased_hsic(x, y, sq_x, (y * y).sum(1)) for y in others])


@functools.partial(jax.jit, static_argnames=("dtype", "batch"))
def _mutual_row(ix: jax.Array, iys: jax.Array, *, dtype: Any, batch: int) -> jax.Array:
    """Mutual kNN of one model's graph against a stack of graphs (as :func:`~jaxalign.metrics.mutual_knn`)."""
    values = jnp.zeros(ix.shape, dtype)

    def one(iy: jax.Array) -> jax.Array:
        return _mutual_core(NeighborGraph(ix, values, "ip", True), NeighborGraph(iy, values, "ip", True))

    return jax.lax.map(one, iys, batch_size=batch)


_unit_scale = jax.jit(unit_scale)
_ratio = jax.jit(functools.partial(normalized_ratio, self_nonnegative=True))
_feature_entries = jax.jit(_feature_side, static_argnames=("mesh",))
_graph_entries_jit = jax.jit(_graph_entries)


# ---- public --------------------------------------------------------------------------------------------------------


def pairwise_matrices(
    features: Sequence[Any] | Mapping[str, Any],
    *,
    metrics: Sequence[str] = METRICS,
    k: int | Sequence[int] = 25,
    mutual_k: int | None = None,
    ii_k: int | Sequence[int] = (1,),
    exponent: float = 1.0,
    tile: int | None = None,
    unit_rows: int | None = None,
    mesh: Mesh | str | None = "auto",
    between: tuple[Sequence[str | int], Sequence[str | int]] | None = None,
    journal: str | Journal | None = None,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """name → (M, M) matrix of every pair of ``features``, in passes over row tiles (module docstring).

    Entry [i, j] is metric(model i, model j); information imbalance is Δ(i → j) (row = source). Every value equals
    the public pairwise function on the same two arrays (float64: to round-off; float32: within its ~1e-4):
    ``cknna(x_i, x_j, k=k)``, ``mutual_knn(x_i, x_j, k=mutual_k)``, ``cka``, ``unbiased_cka``,
    ``dcor(x_i, x_j, exponent=exponent)`` and ``information_imbalance(x_i, x_j, k=k')[0]``.

    Args:
      features: a sequence or a mapping (name → array) of M (N, d_m) embeddings of the same N structures (widths
        may differ); numpy, jax or torch; all are computed in their common float dtype.
      metrics: a subset of :data:`METRICS`.
      k: CKNNA's neighbours, one k or several (a k sweep: ``"cknna@k"`` for each, ``"cknna"`` the first given).
      mutual_k: mutual kNN's k (default: the first CKNNA k).
      ii_k: information imbalance's k, one or several (``"information_imbalance@k"`` for each; the plain key is
        the first). All are read from one set of rank counts.
      exponent: dCor's distance exponent p ∈ (0, 2).
      tile: rows per tile of the distance pass (default: all M blocks within ~256 MiB per device, and at least
        :data:`MIN_PASS_TILE` rows).
      unit_rows: rows per journal unit of the distance pass (default: about N/8, whole tiles per device).
      mesh: a 1-D device mesh splitting each unit's tiles, ``"auto"`` (all local devices) or None.
      between: ``(group_a, group_b)`` of model names or indices: compute only the cells with one model in each group
        (both directions, e.g. new models against all, or models against shuffled copies); the others are NaN.
        None: every cell.
      journal: a directory (or :class:`~jaxalign.journal.Journal`) of finished units, to resume an interrupted
        sweep; None keeps nothing. A whole-matrix sweep whose journal holds units of another model set on the same
        rows reuses the cells of the models both share and computes only the new models' rows and columns (their
        distance blocks still pass through every tile, as the partners of every cell).
      progress: called as ``progress(pass_name, units_done, units_total, cached)`` after each unit this process
        holds (``cached``: read from the journal rather than computed); it may raise to stop the sweep, whose
        finished units stay journaled.

    Raises:
      ValueError: naming the argument, for bad features (as the pairwise functions: complex, NaN/inf, constant,
        different N), an unknown metric, k or exponent out of range.

    Returns:
      name → (M, M) float64 numpy matrix, plus ``"models"`` → the (M,) names.
    """
    metrics = _check_metrics(metrics)
    names, arrays = _models(features)
    n, m = arrays[0].shape[0], len(arrays)
    ks = _check_ks(k, n, "k", low=2) if "cknna" in metrics else ()
    main_k = _as_tuple(k)[0] if _as_tuple(k) else k
    mutual_k = check_k(main_k if mutual_k is None else mutual_k, n, "mutual_k")
    iik = _check_ks(ii_k, n, "ii_k", low=1) if "information_imbalance" in metrics else ()
    exponent = _check_exponent(exponent)
    mesh = resolve_mesh(mesh)
    cells = _cells(between, names)
    mask = cells.mask()
    if journal is not None and not isinstance(journal, Journal):
        journal = Journal(journal)
    units = _Units(journal, progress)
    digests = [_digest(x) for x in arrays]
    base = {"version": jaxalign_version(), "n": n, "dtype": str(arrays[0].dtype)}
    out: dict[str, np.ndarray] = {"models": np.asarray(names)}

    # 1. graphs, one unit per model
    ip_k = max([*ks, mutual_k] if ("cknna" in metrics or "mutual_knn" in metrics) else [0])

    def graph_unit(i: int) -> dict[str, np.ndarray]:
        g = knn(arrays[i], ip_k, metric="ip", mesh=mesh)
        return {"ip_i": g.indices, "ip_v": g.values}

    def graph_shapes(i: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {"ip_i": _shape((n, ip_k), jnp.int32), "ip_v": _shape((n, ip_k), arrays[i].dtype)}

    graphs = []
    if ip_k:
        key = content_key("graphs", {**base, "ip": ip_k})
        graphs = units.run("graphs", [f"graph-{d}-{key}" for d in digests], graph_unit, graph_shapes)

    # 2. pairs from features and graphs (one unit: cheap next to the graphs and the pass)
    pair_names = [name for name in ("mutual_knn", "cka", "unbiased_cka") if name in metrics]
    pair_names += [f"cknna@{kk}" for kk in ks]
    if pair_names:

        def pair_cells(part: _Cells) -> dict[str, np.ndarray]:
            return _pair_matrices(arrays, graphs, part, metrics, ks, mutual_k, mesh)

        def pair_unit(_: int) -> dict[str, np.ndarray]:
            if not cells.full:
                return pair_cells(cells)
            return _incremental(units.journal, f"pairs-{pair_key}-", digests, pair_cells, tuple(pair_names))

        def pair_shapes(_: int) -> dict[str, jax.ShapeDtypeStruct]:
            extra = {"models": _shape((m, 10), np.uint8)} if cells.full else {}
            return {name: _shape((m, m), np.float64) for name in pair_names} | extra

        pair_key = content_key("pairs", {**base, "metrics": pair_names, "mutual_k": mutual_k})
        models_key = content_key("models", {"models": digests, "between": [cells.left, cells.right]})
        (pairs,) = units.run("pairs", [f"pairs-{pair_key}-{models_key}"], pair_unit, pair_shapes)
        out.update({name: np.where(mask, pairs[name], np.nan) for name in pair_names})
    if ks:
        out["cknna"] = out[f"cknna@{check_k(main_k, n, 'k', low=2)}"]

    # 3. the distance pass
    dcor = "dcor" in metrics
    if dcor or iik:
        out.update(_distance_pass(arrays, digests, base, units, cells, dcor, iik, exponent, tile, unit_rows, mesh))
    if iik:
        out["information_imbalance"] = out[f"information_imbalance@{check_k(_as_tuple(ii_k)[0], n, 'ii_k')}"]
    return out


def _pair_matrices(
    arrays: list[jax.Array],
    graphs: list[dict],
    cells: _Cells,
    metrics: tuple[str, ...],
    ks: tuple[int, ...],
    mutual_k: int,
    mesh: Mesh | None,
) -> dict[str, np.ndarray]:
    """CKA, unbiased CKA, mutual kNN and CKNNA at every k of ``ks`` for the cells (NaN elsewhere)."""
    m, n = len(arrays), arrays[0].shape[0]
    mask = cells.mask()
    used = cells.used
    out: dict[str, np.ndarray] = {}
    if "cka" in metrics or "unbiased_cka" in metrics:
        unit = {i: _unit_scale(arrays[i]) for i in used}
        for name, unbiased in (("cka", False), ("unbiased_cka", True)):
            if name not in metrics:
                continue
            hsic = np.full((m, m), np.nan, dtype=np.float64)
            for a in used:
                cols = [b for b in used if b == a or (b > a and mask[a, b])]
                hsic[a, cols] = np.asarray(_cka_row(unit[a][0], tuple(unit[b][0] for b in cols), unbiased=unbiased))
            mat = np.full((m, m), np.nan)
            for a, b in zip(*np.nonzero(np.triu(mask)), strict=True):
                scales = (unit[a][1], unit[a][1], unit[b][1], unit[b][1])
                hab, haa, hbb = (jnp.asarray(h, arrays[0].dtype) for h in (hsic[a, b], hsic[a, a], hsic[b, b]))
                mat[a, b] = mat[b, a] = float(_ratio(hab, haa, hbb, *scales))
            out[name] = mat
        del unit
    if "mutual_knn" in metrics:
        stacked = jnp.stack([jnp.asarray(r["ip_i"][:, :mutual_k]) for r in graphs])
        dtype = jnp.result_type(*[r["ip_v"].dtype for r in graphs])
        batch = max(1, min(m, PAIR_BATCH // max(1, n * mutual_k)))
        mat = np.full((m, m), np.nan)
        for a, part, take in _upper_chunks(mask, batch):
            row = np.asarray(_mutual_row(stacked[a], stacked[take], dtype=dtype, batch=batch), np.float64)
            mat[a, part] = mat[part, a] = row[: len(part)]
        out["mutual_knn"] = mat
    for kk in ks:
        out[f"cknna@{kk}"] = _cknna_matrix(arrays, graphs, kk, mask, mesh)
    return out


@functools.partial(jax.jit, static_argnames=("exact",))
def _cknna_self(ix: jax.Array, a: df.DD, *, exact: bool) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """sim(K, K) of one model (computed once, not per pair) and its graph's reverse entries (mask, position)."""
    reverse = _reverse_entries(ix)
    cols, va, vb, found = _self_entries(ix, a, unbiased=True, reverse=reverse)
    hi, lo = _hsic(cols, va, vb, found, unbiased=True, exact=exact)
    return hi + lo, reverse


@functools.partial(jax.jit, static_argnames=("exact", "batch"))
def _cknna_cross(
    ix: jax.Array,
    a: df.DD,
    reverse_x: tuple[jax.Array, jax.Array],
    iys: jax.Array,
    bs: df.DD,
    tables: tuple[jax.Array, jax.Array] | None,
    *,
    exact: bool,
    batch: int,
) -> jax.Array:
    """sim(K, L) of one model against a stack of models (M, N, k) with their sorted rows (None where rows are compared
    entry by entry), ``batch`` at a time."""

    def one(args: tuple) -> jax.Array:
        iy, b, table = args
        entries = _cross_entries(ix, a, iy, b, unbiased=True, reverse_x=reverse_x, table_y=table)
        hi, lo = _hsic(*entries, unbiased=True, exact=exact)
        return hi + lo

    return jax.lax.map(one, (iys, bs, tables), batch_size=batch)


_sorted_rows = jax.jit(sorted_rows)


def _pick(tree: Any, take: jax.Array) -> Any:
    """The models ``take`` of every stacked (M, …) leaf."""
    return jax.tree_util.tree_map(lambda v: v[take], tree)


def _upper_chunks(mask: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray, jax.Array]]:
    """(a, columns, take) for the cells (a, b ≥ a) of a symmetric ``mask``, ``chunk`` columns at a time: each
    unordered pair once, for metrics symmetric in their two models; ``take`` is the columns padded to ``chunk`` with
    the last one (one compiled shape for every call)."""
    for a in range(mask.shape[0]):
        cols = np.flatnonzero(mask[a, a:]) + a
        for s in range(0, cols.size, chunk):
            part = cols[s : s + chunk]
            yield a, part, jnp.asarray(np.concatenate([part, np.repeat(part[-1:], chunk - part.size)]))


def _cknna_matrix(
    arrays: list[jax.Array], graphs: list[dict], k: int, mask: np.ndarray, mesh: Mesh | None
) -> np.ndarray:
    """CKNNA at k for every ordered pair of ``mask``, as :func:`~jaxalign.metrics.cknna` computes it: kernel entries
    and sim(K, K) once per model, the cross HSIC per pair (batched over the column models). Both directions: the
    kNN-masked kernels are not symmetric, so CKNNA(A, B) ≠ CKNNA(B, A) in general."""
    m, n = len(arrays), arrays[0].shape[0]
    mat = np.full((m, m), np.nan)
    if 2 * k > n - 1:  # dense masks or k = N − 1: the pairwise function's own expansions, per pair
        g = [NeighborGraph(r["ip_i"][:, :k], r["ip_v"][:, :k], "ip", True) for r in graphs]
        for a, b in zip(*np.nonzero(mask), strict=True):
            mat[a, b] = float(cknna(arrays[a], arrays[b], k=k, graph_x=g[a], graph_y=g[b], mesh=mesh))
        return mat
    exact = arrays[0].dtype == jnp.float32
    indices, entries, units = [], [], []
    for x, r in zip(arrays, graphs, strict=True):
        idx = jnp.asarray(r["ip_i"][:, :k])
        if exact:
            values, scale = _feature_entries(idx, x, mesh=mesh)
            units.append((scale, scale))
        else:
            values, unit = _graph_entries_jit(jnp.asarray(r["ip_v"][:, :k]))
            units.append((unit,))
        indices.append(idx)
        entries.append(values)
    selves = [_cknna_self(i, e, exact=exact) for i, e in zip(indices, entries, strict=True)]
    stacked_i = jnp.stack(indices)
    stacked_e = (jnp.stack([e[0] for e in entries]), jnp.stack([e[1] for e in entries]))
    batch = max(1, min(m, PAIR_BATCH // max(1, n * k)))
    stacked_t = None  # the binary search's tables, only for rows too long to compare entry by entry
    if k * k > COMPARE_UP_TO:
        tables = [_sorted_rows(i) for i in indices]
        stacked_t = (jnp.stack([t[0] for t in tables]), jnp.stack([t[1] for t in tables]))
    for a in range(m):
        cols = np.flatnonzero(mask[a])
        if cols.size == 0:
            continue
        take = None if cols.size == m else jnp.asarray(cols)
        cross = _cknna_cross(
            indices[a],
            entries[a],
            selves[a][1],
            *(stacked_i, stacked_e, stacked_t) if take is None else _pick((stacked_i, stacked_e, stacked_t), take),
            exact=exact,
            batch=batch,
        )
        for j, b in enumerate(cols):
            mat[a, b] = float(_ratio_units(cross[j], selves[a][0], selves[b][0], units[a] + units[b]))
    return mat


@jax.jit
def _ratio_units(sim: jax.Array, self_a: jax.Array, self_b: jax.Array, units: tuple[jax.Array, ...]) -> jax.Array:
    return normalized_ratio(sim, self_a, self_b, *units)


def _distance_pass(
    arrays: list[jax.Array],
    digests: list[str],
    base: dict,
    units: _Units,
    cells: _Cells,
    dcor: bool,
    ii_k: tuple[int, ...],
    exponent: float,
    tile: int | None,
    unit_rows: int | None,
    mesh: Mesh | None,
) -> dict[str, np.ndarray]:
    """dCor and information imbalance for every pair of ``cells`` from one pass of unit row ranges over the
    models' blocks. A whole-matrix unit of a journal that holds the same unit for another model set reuses its
    cells and computes only the new models' rows and columns (:func:`_incremental`)."""
    n, m = arrays[0].shape[0], len(arrays)
    n_dev = 1 if mesh is None else mesh.devices.size
    tile = _pass_tile_size(n, len(cells.used), n_dev, tile)
    step = tile * n_dev
    if unit_rows is None:
        unit_rows = max(step, -(-n // 8 // step) * step)
    unit_rows = max(1, min(int(unit_rows), n))
    starts = list(range(0, n, unit_rows))
    spaces = tuple(_prepare(x, exponent=exponent) for x in arrays)
    params = content_key(
        "distance-pass",
        {**base, "dcor": dcor, "exponent": exponent, "ii_k": list(ii_k), "unit_rows": unit_rows},
    )
    groups = {} if cells.full else {"between": [[digests[i] for i in cells.left], [digests[i] for i in cells.right]]}
    models = content_key("models", {"models": digests, **groups})

    def run(i: int, part_cells: _Cells) -> dict[str, np.ndarray]:
        begin = starts[i]
        stop = min(n, begin + unit_rows)
        part = _pass_unit(
            jnp.arange(begin, stop, dtype=jnp.int32),
            spaces,
            jnp.int32(begin),
            length=stop - begin,
            exponent=exponent,
            ii_k=ii_k,
            dcor=dcor,
            cells=part_cells,
            tile=tile,
            mesh=mesh,
        )
        flat = {}
        for name, value in part.items():
            if name == "cross":  # (|left|, |right|) into the (M, M) cells
                for half, v in zip(("hi", "lo"), value, strict=True):
                    full = np.zeros((m, m), v.dtype)
                    full[np.ix_(part_cells.left, part_cells.right)] = np.asarray(v)
                    full[np.ix_(part_cells.right, part_cells.left)] = np.asarray(v).T
                    flat[f"cross_{half}"] = full
            elif isinstance(value, tuple):
                flat[f"{name}_hi"], flat[f"{name}_lo"] = (np.asarray(v) for v in value)
            else:
                flat[name] = np.asarray(value)
        return flat

    def compute(i: int) -> dict[str, np.ndarray]:
        if not cells.full:
            return run(i, cells)
        prefix = f"pass-{params}-{starts[i]:09d}-"
        return _incremental(units.journal, prefix, digests, functools.partial(run, i), _PASS_CELLS)

    def shapes(i: int) -> dict[str, jax.ShapeDtypeStruct]:
        dtype = arrays[0].dtype
        out = {"models": _shape((m, 10), np.uint8)} if cells.full else {}
        if dcor:
            length = min(n, starts[i] + unit_rows) - starts[i]
            out.update({f"cross_{h}": _shape((m, m), dtype) for h in ("hi", "lo")})
            out.update({f"sq_{h}": _shape((m,), dtype) for h in ("hi", "lo")}, row=_shape((m, length), dtype))
        if ii_k:
            out.update({f"ranks_{h}": _shape((m, m, len(ii_k)), dtype) for h in ("hi", "lo")})
        return out

    names = [f"pass-{params}-{s:09d}-{models}" for s in starts]
    parts = units.run("distance pass", names, compute, shapes)
    out: dict[str, np.ndarray] = {}
    mask = cells.mask()
    if dcor:
        cross = _dd_total([(p["cross_hi"], p["cross_lo"]) for p in parts])
        sq = _dd_total([(p["sq_hi"], p["sq_lo"]) for p in parts])
        rows = np.concatenate([p["row"] for p in parts], axis=1)
        out["dcor"] = _dcor_matrix(spaces, rows, cross, sq, mask)
    if ii_k:
        # the exact rank totals (a normalised double-float of integers below 2^48) rounded once to the working
        # float: its high part, as information_imbalance rounds its own exact total
        totals = jnp.asarray(_dd_total([(p["ranks_hi"], p["ranks_lo"]) for p in parts])[0])
        for j, kk in enumerate(ii_k):
            value = np.asarray(totals[:, :, j] * (2.0 / (n * n * kk)), np.float64)
            out[f"information_imbalance@{kk}"] = np.where(mask, value, np.nan)
    return out


#: The pass's per-pair arrays (the rest are per model).
_PASS_CELLS = ("cross_hi", "cross_lo", "ranks_hi", "ranks_lo")


def _dd_total(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Σ of double-float unit totals, in unit order."""
    hi, lo = jnp.asarray(parts[0][0]), jnp.asarray(parts[0][1])
    for p_hi, p_lo in parts[1:]:
        hi, lo = df.add((hi, lo), (jnp.asarray(p_hi), jnp.asarray(p_lo)))
    return np.asarray(hi), np.asarray(lo)


@jax.jit
def _dcor_pair(row_a: jax.Array, row_b: jax.Array, shifts: jax.Array, sums: jax.Array) -> jax.Array:
    """dCor from the pass's row sums of both models, their shifts and the totals (cross, Σa'², Σb'²); the per-row
    Σa'² of the moments is not read by :func:`dcor_from_totals`."""
    moments_a, moments_b = DistanceMoments(row_a, row_a, shifts[0]), DistanceMoments(row_b, row_b, shifts[1])
    return safe_sqrt(dcor_from_totals(moments_a, moments_b, sums[0], sums[1], sums[2]))


def _dcor_matrix(
    spaces: tuple[_Space, ...],
    rows: np.ndarray,
    cross: tuple[np.ndarray, np.ndarray],
    sq: tuple[np.ndarray, np.ndarray],
    mask: np.ndarray,
) -> np.ndarray:
    """dCor of every pair of ``mask`` from the row sums (M, N), the cross totals and Σ a'² (double-floats)."""
    m = len(spaces)
    total = jnp.asarray(cross[0]) + jnp.asarray(cross[1])
    own = jnp.asarray(sq[0]) + jnp.asarray(sq[1])
    mat = np.full((m, m), np.nan)
    for a in range(m):
        for b in range(a, m):
            if not mask[a, b]:
                continue
            shifts = jnp.stack([spaces[a].frame.shift, spaces[b].frame.shift])
            sums = jnp.stack([total[a, b], own[a], own[b]])
            mat[a, b] = mat[b, a] = float(_dcor_pair(jnp.asarray(rows[a]), jnp.asarray(rows[b]), shifts, sums))
    return mat
