"""Information imbalance with exact full ranks (DADApy 0.3.4 ``return_information_imbalace``), tiled.

Glielmo, Zeni, Cheng, Csányi & Laio 2022, "Ranking the information content of distance measures", PNAS Nexus 1(2):

    Δ(A→B) = (2/N) · ⟨r^B_ij⟩, averaged over every i and over the first k neighbours j of i in space A,

where r^B_ij is the rank of j among the neighbours of i in space B: 1-based, the point itself excluded, so the
nearest other point has rank 1. Δ ≈ 0 when A's neighbourhoods predict B's, Δ ≈ 1 when they carry no information
about B. Exact values: with k = N − 1 every rank 1..N−1 is averaged and Δ = 1; for A = B the ranks of the first k
neighbours are 1..k, so Δ(A→A) = (2/N)·(k+1)/2 = (k+1)/N (→ 0 as N grows, the "Δ(X→X) = 0" of the paper).

Algorithm (time O(N² d), memory O(tile·N + N·k)): one :func:`~jaxalign.tiling.map_row_tiles` pass forms, for a tile
of rows i, the squared distances d_X(i, ·) and d_Y(i, ·) by the expanded formula (centred data; binary and small
integer features on a dyadic lattice are not centred, and their distances are then exact), sets d(i, i) = +inf,
takes the k neighbours of each space from the same block (or from ``graph_x``/``graph_y``, built by the exact
engine :func:`~jaxalign.neighbors.knn`) and ranks them in the other space: r_ij = 1 + #{l : d(i, l) < d(i, j)}.
Each count is made exact with a rigorous per-row round-off bound E_i (:func:`jaxalign._exact.expanded_bound`): one
fused pass per neighbour counts the points certainly closer (computed d < t − 2E_i) and the band within 2E_i of
the target t; small bands (near-ties, up to SLOT_BAND points) have their members named by passes over the whole
block, two per pass (a row's s-th small band in pass s); band members are compared with the target again by
double-float distances from the rows themselves. For k ≤ 64 the counts are one variadic reduce per neighbour
(O(tile·N·k)); for larger k the band edges of each row are sorted once and every distance is placed among them by
binary search, the counts following from histograms (O(tile·N·log k)).

Ties: DADApy's rank is j's position in scikit-learn's ``argsort`` of row i, whose order among equal distances is
unspecified (even the point itself need not come first when rows are duplicated). We use the smallest tied
position, 1 + the number of strictly closer points ("competition" ranking), evaluated exactly (as float64 would for
float32 input); the two agree whenever the distances from i are distinct. Among neighbours tied at the k-th
distance the lower index is taken (as a stable argsort), so Δ does not depend on ``tile``, the mesh or the number of
devices. DADApy's truncated variant (``return_inf_imb_two_selected_coords``, which draws random ranks beyond
``maxk``) is biased and not reproduced.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign import _double_float as df
from jaxalign._checks import as_features, check_k, check_same_n, check_variance
from jaxalign._exact import (
    exact_top_k,
    expanded_bound,
    expanded_frame,
    for_each_true,
)
from jaxalign.neighbors import NeighborGraph, check_graph
from jaxalign.tiling import map_row_tiles, pairwise_block, resolve_mesh

__all__ = ["COUNT_UP_TO_K", "information_imbalance"]

#: Up to this k each rank is a fused compare-and-count over the row; above it the row's distances are binary-searched
#: among the k sorted targets. On CPU the count wins below k ≈ 64 (N = 4000-10000, tile 256-512); sorting whole rows
#: was ~20x slower than either at k = 32.
COUNT_UP_TO_K = 64
#: Bands of up to SLOT_BAND points (near-ties) are decided by passes over the whole block, two members per pass;
#: larger ones (ties, duplicated rows) BAND_WINDOW members at a time, WALK_CHUNK rows at once.
SLOT_BAND = 8
BAND_WINDOW = 32
WALK_CHUNK = 8


def _band_reduce(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Combine (count below, count up to the band's top)."""
    return a[0] + b[0], a[1] + b[1]


def _band_edges(target: jax.Array, bound: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The band [t − 2E, t + 2E] around target distances t (…, k) for per-row bounds E (…,): every decision of the
    counts and of the band's members uses these very edges."""
    return target - 2 * bound[..., None], target + 2 * bound[..., None]


def _band_counts(
    dist: jax.Array, target: jax.Array, bound: jax.Array, *, search: bool, columns: jax.Array | None = None
) -> tuple[jax.Array, ...]:
    """For a (tile, N) block and (tile, k) target distances t: #{l : d_l < t − 2E} and the band size #{l : |d_l − t|
    ≤ 2E} (computed d_l ≥ t − 2E and ≤ t + 2E), (tile, k) int32.

    ``search=False``: one two-output variadic reduce per target over the row, O(tile·N·k), never a (tile, k, N)
    array (XLA:CPU runs a two-output reduce of the comparisons ~5x faster than a plain sum of one, and a third
    output — the band's index sum, once carried here — made it 2.5x slower); with ``columns`` (traced int) only
    the first ``columns`` targets are counted, the others are 0. ``search=True``: the edges t − 2E and
    t + 2E of each row are sorted once and every distance is placed among them by binary search (p_l = #{edges ≤
    d_l}); histograms of p and their cumulative sums give every count at every edge, O(tile·N·log k).
    """
    lower, upper = (jnp.asarray(e) for e in _band_edges(target, bound))
    k = target.shape[1]
    if not search:

        def one(c: jax.Array, counts: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
            below = dist < lower[:, c, None]
            upto = dist <= upper[:, c, None]
            init = (jnp.int32(0), jnp.int32(0))
            got = jax.lax.reduce((below.astype(jnp.int32), upto.astype(jnp.int32)), init, _band_reduce, (1,))
            return tuple(a.at[:, c].set(b) for a, b in zip(counts, got, strict=True))

        zeros = jnp.zeros(target.shape, jnp.int32)
        below, upto = jax.lax.fori_loop(0, k if columns is None else columns, one, (zeros, zeros))
        return below, upto - below

    def row(d: jax.Array, lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, ...]:
        def cumulative(edges: jax.Array, side: str) -> jax.Array:
            return jnp.cumsum(jnp.zeros(k + 1, jnp.int32).at[jnp.searchsorted(edges, d, side=side)].add(1))

        lo_sorted, hi_sorted = jnp.sort(lo), jnp.sort(hi)
        # d_l < lo_j  <=>  #{edges <= d_l} <= #{edges < lo_j};  d_l <= hi_j  <=>  #{edges < d_l} <= #{edges < hi_j}
        at_lo, at_hi = jnp.searchsorted(lo_sorted, lo, side="left"), jnp.searchsorted(hi_sorted, hi, side="left")
        below = cumulative(lo_sorted, "right")[at_lo]
        return below, cumulative(hi_sorted, "left")[at_hi] - below

    return jax.vmap(row)(dist, lower, upper)


def _members_reduce(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Combine (lowest index, highest index)."""
    return jnp.minimum(a[0], b[0]), jnp.maximum(a[1], b[1])


def _band_ends(dist: jax.Array, lower: jax.Array, upper: jax.Array, outside: jax.Array, after: jax.Array,
               before: jax.Array) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """For each row of a (t, N) block: the lowest and highest index l with after < l < before, l ≠ outside and
    lower ≤ d_l ≤ upper (N and −1 where none), from one two-output variadic reduce over the block (XLA:CPU runs it
    ~2x faster than a single-output min of the same comparisons)."""
    n = dist.shape[1]
    cols = jnp.arange(n, dtype=jnp.int32)[None, :]
    inside = (dist >= lower[:, None]) & (dist <= upper[:, None]) & (cols != outside[:, None])
    inside &= (cols > after[:, None]) & (cols < before[:, None])
    init = (jnp.int32(n), jnp.int32(-1))
    return jax.lax.reduce((jnp.where(inside, cols, n), jnp.where(inside, cols, -1)), init, _members_reduce, (1,))


def _distinct(targets: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each row's distinct targets (tile, k) packed to the front in increasing order (the rest repeat the row's
    smallest), their number per row (tile,), and the packed position of every original entry (tile, k): one rank
    per distinct target decides them all (the sweep's sources often share a row's nearest neighbour)."""
    t, k = targets.shape
    lanes = jnp.arange(t)[:, None]
    order = jnp.argsort(targets, axis=1)
    ordered = jnp.take_along_axis(targets, order, 1)
    first = jnp.concatenate([jnp.ones((t, 1), bool), ordered[:, 1:] != ordered[:, :-1]], 1)
    slot = jnp.cumsum(first, axis=1, dtype=jnp.int32) - 1
    packed = jnp.broadcast_to(ordered[:, :1], (t, k)).at[lanes, slot].set(ordered)
    return packed, slot[:, -1] + 1, jnp.zeros((t, k), jnp.int32).at[lanes, order].set(slot)


def _exact_ranks(
    dist: jax.Array,
    bound: jax.Array,
    targets: jax.Array,
    rows: jax.Array,
    data: jax.Array,
    exact: jax.Array,
    *,
    search: bool,
    scale: jax.Array | float = 1.0,
) -> jax.Array:
    """r_im = 1 + #{l : d(i, l) < d(i, j_m)} exactly, for a (tile, N) block of computed squared distances (+inf on
    the diagonal) within ``bound`` (tile,) of the exact ones, and (tile, k) targets j. The double-float decisions
    use ``data`` times ``scale`` (a power of two, so the rows the block was computed from, exactly).

    Points certainly closer are counted from the block; the band within 2·bound of the target (the target itself
    included) is decided by double-float distances from the uncentred ``data``. Bands of at most SLOT_BAND points
    (near-ties) are decided slot by slot over the whole block: slot s holds each row's s-th such target, and every
    pass over the block names the lowest and the highest of its band's remaining members (:func:`_band_ends`), so a
    band of two or three takes one pass. The union of a row's larger bands (duplicates) is packed to the front of the
    row and each member decided once against every target whose band holds it, BAND_WINDOW members at a time.
    With ``exact`` (lattice data) the block is exact and the band holds only genuine ties, which do not count.
    Repeated targets of a row (:func:`_distinct`) are counted and decided once.
    """
    t, k = targets.shape
    n = dist.shape[1]
    targets, distinct, position = _distinct(targets)
    target = jnp.take_along_axis(dist, targets, 1)
    below, band = _band_counts(dist, target, bound, search=search, columns=distinct.max())
    ambiguous = (band >= 2) & ~exact & (jnp.arange(k)[None, :] < distinct[:, None])
    small = ambiguous & (band <= SLOT_BAND)
    lanes = jnp.arange(t)

    def row_key(r: jax.Array, cols: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Double-float ‖x_i − x_l‖² of tile rows r (B,) against points cols (B, c)."""
        return df.accurate_sqdist(data[rows[r]][:, None, :] * scale, data[cols] * scale)

    def closer_than_target(r: jax.Array, m: jax.Array, others: jax.Array, valid: jax.Array) -> jax.Array:
        """#{valid others strictly closer to row r than its target m}, from one (B, 1 + c) double-float pass."""
        hi, lo = row_key(r, jnp.concatenate([targets[r, m][:, None], others], 1))
        return (df.less((hi[:, 1:], lo[:, 1:]), (hi[:, :1], lo[:, :1])) & valid).sum(1, dtype=jnp.int32)

    slot_of = jnp.where(small, jnp.cumsum(small, axis=1, dtype=jnp.int32) - 1, -1)

    def slot(s: jax.Array, correction: jax.Array) -> jax.Array:
        """Each row's s-th small band: its members other than the target, two per pass, lowest and highest first."""
        here = slot_of == s
        has = here.any(1)
        m = jnp.argmax(here, axis=1)
        j, lower, upper = targets[lanes, m], *(e[lanes, m] for e in _band_edges(target, bound))
        left0 = jnp.where(has, band[lanes, m] - 1, 0)

        def members(state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            after, before, left, closer = state
            a, b = _band_ends(dist, lower, upper, j, after, before)
            found_a = (left > 0) & (a < n)
            found_b = (left > 1) & (b > a)
            both = jnp.stack([jnp.clip(a, 0, n - 1), jnp.clip(b, 0, n - 1)], 1)
            closer = closer + closer_than_target(lanes, m, both, jnp.stack([found_a, found_b], 1))
            # a row whose pass names no member is done (counts and members use the very same edges)
            left = jnp.where(found_a, left - 1 - found_b, 0)
            return a, b, left, closer

        start = (jnp.full(t, -1, jnp.int32), jnp.full(t, n, jnp.int32), left0, jnp.zeros(t, jnp.int32))
        closer = jax.lax.while_loop(lambda st: (st[2] > 0).any(), members, start)[3]
        return correction.at[lanes, m].set(jnp.where(has, closer, correction[lanes, m]))

    correction = jax.lax.fori_loop(0, small.sum(1).max(), slot, jnp.zeros((t, k), jnp.int32))
    cols = jnp.arange(n, dtype=jnp.int32)

    width = -(-n // BAND_WINDOW) * BAND_WINDOW
    big = ambiguous & ~small

    def walked(p: jax.Array, correction: jax.Array) -> jax.Array:
        """Rows p with bands of more than SLOT_BAND points: the union of their bands is packed to the front of the row
        once and each member's double-float distance is computed once, then compared with every target whose band
        holds it (tied targets share one band: e.g. a fingerprint's many equidistant structures)."""
        r = jnp.minimum(p, t - 1)
        e = 2 * bound[r][:, None]
        need = big[r]  # (B, k)
        tv = jnp.where(need, target[r], jnp.inf)
        row = dist[r]  # (B, N)
        # in some needed band: the nearest needed target (sorted, binary-searched) is within the band's half-width
        edges = jnp.sort(tv, axis=1)
        at = jax.vmap(jnp.searchsorted)(edges, row)
        near = jnp.minimum(
            jnp.abs(row - jnp.take_along_axis(edges, jnp.clip(at, 0, k - 1), 1)),
            jnp.abs(row - jnp.take_along_axis(edges, jnp.clip(at - 1, 0, k - 1), 1)),
        )
        inside = near <= 2 * e  # a superset of the bands (rounding of the differences); each band is tested below
        slot = jnp.where(inside, jnp.cumsum(inside, axis=1, dtype=jnp.int32) - 1, width)
        lanes = jnp.arange(r.shape[0])[:, None]
        members = jnp.zeros((r.shape[0], width), jnp.int32).at[lanes, slot].set(cols[None, :], mode="drop")
        size = inside.sum(1, dtype=jnp.int32)
        goal = row_key(r, targets[r])  # (B, k): the targets' own double-float distances

        def window(i: jax.Array, closer: jax.Array) -> jax.Array:
            others = jax.lax.dynamic_slice_in_dim(members, i * BAND_WINDOW, BAND_WINDOW, axis=1)
            valid = (i * BAND_WINDOW + jnp.arange(BAND_WINDOW))[None, :] < size[:, None]
            hi, lo = row_key(r, others)  # (B, W)
            d = jnp.take_along_axis(row, others, 1)[:, :, None]
            lower, upper = tv[:, None, :] - e[:, :, None], tv[:, None, :] + e[:, :, None]  # as _band_counts
            in_band = valid[:, :, None] & (d >= lower) & (d <= upper)
            less = df.less((hi[:, :, None], lo[:, :, None]), (goal[0][:, None, :], goal[1][:, None, :]))
            return closer + (in_band & less).sum(1, dtype=jnp.int32)

        steps = -(-size.max() // BAND_WINDOW)
        closer = jax.lax.fori_loop(0, steps, window, jnp.zeros((r.shape[0], k), jnp.int32))
        return correction.at[p].set(jnp.where(need, closer, correction[r]), mode="drop")

    correction = for_each_true(big.any(1), WALK_CHUNK, walked, correction)
    return jnp.take_along_axis(1 + below + correction, position, 1)


def _rank_sums_tile(
    rows: jax.Array,
    centred_x: jax.Array,
    centred_y: jax.Array,
    x: jax.Array,
    y: jax.Array,
    sq_x: jax.Array,
    sq_y: jax.Array,
    exact: jax.Array,
    nbr_x: jax.Array,
    nbr_y: jax.Array,
    *,
    k: int,
    search: bool,
) -> tuple[jax.Array, jax.Array]:
    """Per-row sums of the Y-ranks of the X-neighbours and of the X-ranks of the Y-neighbours.

    Each space's (tile, N) block is its own buffer (stacking the two into one array cost ~15% in copies). A
    zero-width ``nbr_x``/``nbr_y`` means no graph was given: the k nearest neighbours are then taken from the very
    distance block the ranks use (the engine's exact top-k fused into this pass, saving one N² pass per embedding).
    """
    t = rows.shape[0]
    spaces = []
    for s, (centred, data, sq) in enumerate(((centred_x, x, sq_x), (centred_y, y, sq_y))):
        dist = pairwise_block(centred[rows], centred, "sqeuclidean", b_sq=sq).at[jnp.arange(t), rows].set(jnp.inf)
        bound = jnp.where(exact[s], 0.0, expanded_bound(jnp.sqrt(sq[rows]), jnp.sqrt(sq.max()), data.shape[1], "sq"))
        spaces.append((dist, bound, data, exact[s]))

    def neighbours(nbr: jax.Array, space: tuple[jax.Array, ...]) -> jax.Array:
        if nbr.shape[1]:
            return nbr[rows]
        dist, bound, data, flag = space
        return exact_top_k(
            dist,
            bound,
            data[rows],
            data,
            flag,
            k=k,
            metric="euclidean",
            exclude_self=True,
            ordered=False,
            descending=False,
        )[0]

    near_x, near_y = neighbours(nbr_x, spaces[0]), neighbours(nbr_y, spaces[1])
    x_to_y = _exact_ranks(*spaces[1][:2], near_x, rows, *spaces[1][2:], search=search).sum(1)
    y_to_x = _exact_ranks(*spaces[0][:2], near_y, rows, *spaces[0][2:], search=search).sum(1)
    return x_to_y, y_to_x


def exact_count_sum(counts: jax.Array, axis: int, dtype: Any) -> df.DD:
    """Σ of non-negative int32 counts along ``axis`` as an exact double-float in ``dtype``: the parts above and below
    2^12 are exact floats and their double-float sum is exact below 2^48 (float32), in any summation order."""
    high = (counts >> 12) << 12
    return df.sum((high.astype(dtype), (counts - high).astype(dtype)), axis=axis)


def _exact_total(counts: jax.Array, dtype: Any) -> jax.Array:
    """Σ counts rounded once to ``dtype`` (no dependence on the summation order)."""
    return exact_count_sum(counts, 0, dtype)[0]


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
    # Δ is piecewise constant; ranks do not change under the exact scaling by powers of two. Both spaces in the common
    # dtype: the round-off bounds below are those of ``dtype``, so a float32 side must be computed in it too.
    (x, exact_x, centred_x), (y, exact_y, centred_y) = (
        expanded_frame(jax.lax.stop_gradient(a).astype(dtype)) for a in (x, y)
    )
    exact, centred = [exact_x, exact_y], [centred_x, centred_y]
    sq = [(c * c).sum(1) for c in centred]  # once, not on every tile
    fn = functools.partial(_rank_sums_tile, k=k, search=search)
    operands = (*centred, x, y, *sq, jnp.stack(exact), nbr_x, nbr_y)
    x_to_y, y_to_x = map_row_tiles(fn, n, *operands, tile=tile, mesh=mesh)
    scale = 2.0 / (n * n * k)
    return jnp.stack([_exact_total(x_to_y, dtype), _exact_total(y_to_x, dtype)]) * scale


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

    Neighbours and ranks are exact (float32 input: as float64 would decide them): r_ij = 1 + #{l : d(i, l) <
    d(i, j)}, and neighbours tied at the k-th distance are taken in index order (a stable argsort). Binary and
    small-integer features tie exactly and are ranked by this rule, for every ``tile`` and number of devices.

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
