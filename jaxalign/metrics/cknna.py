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
:func:`jaxalign.neighbors.membership`), 1ᵀA1 sums the entries, and 1ᵀAB1 = Σ_l colsum(A)_l · rowsum(B)_l is summed
over the entries as Σ_(i,l) A_il · rowsum(B)_l. In float64 the kernel values at mask entries are the inner products
the neighbour graphs already hold; float32 features get the treatment below.

Offsets and scale. Platonic's kernel is the raw inner product, so CKNNA (unlike CKA) depends on where the features
sit: with m the column mean and c_i = x_i − m, K_ij = A + u_i + u_j + C_ij (A = |m|², u_i = m·c_i, C_ij = c_i·c_j),
and the masked HSICs keep the offset terms A and u, which are larger than C by |m|/|c| and |m|²/|c|². The HSIC sums
then cancel the A- and u-sized parts down to a much smaller value (by 10⁷ and more at an offset of 1e3 times the
spread, e.g. when every row picks the same far-out "hub" points), which float32 sums of float32 kernel values cannot
resolve. For float32 features the value is therefore computed as follows (float64 keeps the plain 53-bit path):

- Selection: the neighbours are the engine's (:func:`jaxalign.knn`, ``metric="ip"``), which are those of the exact
  inner products, genuine ties to the lower index (its module docstring), so binary features and near-ties select
  the same masks in float32 as in float64.
- Entries: K_ij is assembled from its exact parts as a double-float (a pair of float32 whose sum carries ~46 bits):
  A and u_i from error-free products of 12-bit halves, C_ij in float32 (its rounding is relative to C itself).
- Sums: every HSIC term is accumulated in double-float (one XLA reduce with a TwoSum combiner), column sums enter
  only as Σ_(i,l) a_il·rowsum_l (no scatter-add), and the three terms of the estimator are combined before the
  single final rounding.
- Dense masks (2k > N − 1): every HSIC is bilinear and annihilates the all-ones off-diagonal matrix J, so with
  M = J − M̄ the masked HSIC is expanded around the full kernels,
  HSIC(M∘K, M∘L) = HSIC(K, L) − HSIC(K, M̄∘L) − HSIC(M̄∘K, L) + HSIC(M̄∘K, M̄∘L), where the full-kernel terms are
  closed forms in the centred features (A and u drop out analytically; the biased estimator kills every additive
  row or column effect, which otherwise cancels from 10¹² down to the centred part) and the rest are sparse sums
  over the N·(N − 1 − k) complementary entries, in double-float.
- Full masks: for ``unbiased`` and k = N − 1 the definition reduces exactly to unbiased linear CKA, which is what is
  computed (:func:`jaxalign.metrics.kernel.unbiased_cka`), without any neighbour search.

Kernel values are divided by a power of two near their magnitude (exact), and the ratio is formed without a product
of HSICs or of units (:func:`jaxalign.metrics.kernel.normalized_ratio`), so features of size 1e-12 … 1e12 neither
under- nor overflow; the value follows the anchor's formula, including its 1e-6 (which makes CKNNA → 0 for vanishing
features).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign import _double_float as df
from jaxalign._checks import as_features, check_k, check_same_n, check_variance
from jaxalign.metrics.kernel import _cka_linear, _linear_unbiased_hsic, hsic_from_sums, normalized_ratio
from jaxalign.neighbors import NeighborGraph, check_graph, knn, membership, row_membership
from jaxalign.tiling import TILE_BUDGET, default_tile, map_row_tiles, resolve_mesh

__all__ = ["cknna"]

_HIGHEST = jax.lax.Precision.HIGHEST
DD = df.DD


# ---- double-float helpers of the sparse sums -------------------------------------------------------------------


def _dd_where(mask: jax.Array, x: DD) -> DD:
    return jnp.where(mask, x[0], 0.0), jnp.where(mask, x[1], 0.0)


def _dd_gather(x: DD, index: jax.Array) -> DD:
    return x[0][index], x[1][index]


# ---- HSIC of sparse masked kernels -----------------------------------------------------------------------------------


def _unbiased_value(trace: DD, total_a: DD, total_b: DD, ab: DD, n: int) -> DD:
    """[tr + T_a T_b/((n−1)(n−2)) − 2·1ᵀAB1/(n−2)] / (n(n−3)), combined before any rounding."""
    num = df.add(df.scale(df.scale(trace, n - 1), n - 2), df.mul(total_a, total_b))
    num = df.add(num, df.scale(ab, -2.0 * (n - 1)))
    return df.div(num, float(n - 1) * float(n - 2) * float(n) * float(n - 3))


def _biased_value(trace: DD, total_a: DD, total_b: DD, ab: DD, ba: DD, n: int) -> DD:
    """tr − (1ᵀAB1 + 1ᵀBA1)/n + T_a T_b/n², combined before any rounding."""
    num = df.add(df.scale(df.scale(trace, n), n), df.mul(total_a, total_b))
    num = df.add(num, df.scale(df.add(ab, ba), -float(n)))
    return df.div(num, float(n) * float(n))


def _hsic(cols: jax.Array, a: DD, b: DD, reverse: jax.Array, *, unbiased: bool, exact: bool) -> DD:
    """HSIC of the sparse n x n matrices A, B whose row i holds ``a[i]``, ``b[i]`` (zero off the mask) at columns
    ``cols[i]``; ``reverse[i, s]`` says that (cols[i, s], i) is an entry too, so Σ_ij A_ij B_ji = Σ over those
    entries of a·b (the kernels are symmetric: B_ji = L_ji = L_ij).

    1ᵀAB1 = Σ_l colsum(A)_l · rowsum(B)_l is summed as Σ_(i,l) A_il · rowsum(B)_l (no scatter-add). With ``exact``
    every sum is a double-float (three stacked reductions) and the three terms are combined before rounding;
    otherwise plain arithmetic.
    """
    n = cols.shape[0]
    if not exact:
        trace_ab = jnp.sum(jnp.where(reverse, a[0] * b[0], 0))
        row_a, row_b = a[0].sum(1), b[0].sum(1)
        ab, ba = jnp.sum(a[0] * row_b[cols]), jnp.sum(b[0] * row_a[cols])
        return df.lift(hsic_from_sums(trace_ab, row_a.sum(), row_b.sum(), ab, ba, n, unbiased=unbiased))
    rows = df.sum((jnp.stack([a[0], b[0]]), jnp.stack([a[1], b[1]])), axis=-1)  # (2, n): row sums of A and B
    totals = df.sum(rows, axis=-1)
    row_a, row_b = (rows[0][0], rows[1][0]), (rows[0][1], rows[1][1])
    terms = [
        _dd_where(reverse, df.mul(a, b)),
        df.mul(a, _dd_gather(row_b, cols)),
        df.mul(b, _dd_gather(row_a, cols)),
    ]
    sums = df.sum((jnp.stack([t[0].reshape(-1) for t in terms]), jnp.stack([t[1].reshape(-1) for t in terms])), -1)
    trace_ab, ab, ba = ((sums[0][i], sums[1][i]) for i in range(3))
    total_a, total_b = (totals[0][0], totals[1][0]), (totals[0][1], totals[1][1])
    if unbiased:
        return _unbiased_value(trace_ab, total_a, total_b, ab, n)
    return _biased_value(trace_ab, total_a, total_b, ab, ba, n)


def _rows_like(indices: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(indices.shape[0], dtype=indices.dtype)[:, None], indices.shape)


def _self_entries(
    idx: jax.Array, values: DD, *, unbiased: bool, reverse: tuple[jax.Array, jax.Array] | None = None
) -> tuple[jax.Array, DD, DD, jax.Array]:
    """(cols, a, b, reverse) of sim(K, K) = HSIC(M_K∘K, M_K∘K) over the entries of one graph; ``reverse`` may be
    passed precomputed (:func:`_reverse_entries`)."""
    if reverse is None:
        reverse = _reverse_entries(idx)
    if unbiased:  # the unbiased HSIC zeroes diag(K)
        values = _dd_where(_rows_like(idx) != idx, values)
    return idx, values, values, reverse[0]


def _reverse_entries(idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For each entry (i, j = idx[i, s]) of a graph: is (j, i) an entry too, and at which position of row j?"""
    return membership(idx, idx, _rows_like(idx))


def _cross_entries(
    ix: jax.Array,
    a: DD,
    iy: jax.Array,
    b: DD,
    *,
    unbiased: bool,
    reverse_x: tuple[jax.Array, jax.Array] | None = None,
    table_y: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, DD, DD, jax.Array]:
    """(cols, a, b, reverse) of sim(K, L) = HSIC(M∘K, M∘L), M = M_K∘M_L: the entries of graph_x that graph_y holds
    too (L_ij from its values). When one graph meets many, its parts may be passed precomputed: ``reverse_x``
    (:func:`_reverse_entries` of graph_x) and ``table_y`` (:func:`~jaxalign.neighbors.sorted_rows` of graph_y, used
    by the binary search of large rows).

    An entry (i, j) is reversed in M when (j, i) is an entry of graph_x — at position p of row j — and graph_y
    holds it, which is the membership of graph_x's entry (j, p) already found for row j: one gather, no search.
    """
    in_y, pos_y = row_membership(iy, ix, table=table_y)
    found_x, at_x = _reverse_entries(ix) if reverse_x is None else reverse_x
    reverse = found_x & in_y[ix, at_x]
    mask = in_y & (_rows_like(ix) != ix) if unbiased else in_y
    b = (jnp.take_along_axis(b[0], pos_y, 1), jnp.take_along_axis(b[1], pos_y, 1))
    return ix, _dd_where(mask, a), _dd_where(mask, b), reverse


def _stack(items: list) -> Any:
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *items)


# ---- kernel values at the graph entries ------------------------------------------------------------------------------


def _graph_entries(values: jax.Array) -> tuple[DD, jax.Array]:
    """Entries from a graph's own values, divided (exactly) by a power of two near their largest magnitude."""
    unit = df.power_of_two_above(jnp.max(jnp.abs(values)))
    return df.lift(values / unit), unit


def _centred_parts(x: jax.Array) -> tuple[jax.Array, DD, DD, jax.Array]:
    """x / s = c + m (s a power of two: exact; m the column mean; c = x/s − m, exact where the offset dominates, by
    Sterbenz), with u_i = m·c_i and A = m·m as double-floats from error-free products. Returns (c, u, A, s)."""
    scale = df.power_of_two_above(jnp.max(jnp.abs(x)))
    x = x / scale
    m = x.mean(0)
    c = x - m
    return c, df.sum(df.two_prod(c, m[None, :]), axis=1), df.sum(df.two_prod(m, m)), scale


def _feature_side(indices: jax.Array, x: jax.Array, *, mesh: Mesh | None) -> tuple[DD, jax.Array]:
    """K_ij = A + u_i + u_j + C_ij at the graph's entries, as double-floats, for x / s (s a power of two: exact);
    returns (entries, s).

    One gathered pass computes C_ij = c_i·c_j (float32: its round-off is relative to C, not to the offset) for every
    entry; A and u_i come from error-free products.
    """
    c, u, a_const, scale = _centred_parts(x)
    width, dim = indices.shape[1], c.shape[1]
    tile = max(1, min(c.shape[0], TILE_BUDGET // max(1, width * dim)))

    def gram(rows: jax.Array, idx: jax.Array, c: jax.Array) -> jax.Array:
        return jnp.einsum("td,tkd->tk", c[rows], c[idx[rows]], precision=_HIGHEST)

    cross = map_row_tiles(gram, c.shape[0], indices, c, tile=tile, mesh=mesh)
    rows = _rows_like(indices)
    entries = df.add(df.add(_dd_gather(u, rows), _dd_gather(u, indices)), df.lift(cross))
    constant = (jnp.broadcast_to(a_const[0], indices.shape), jnp.broadcast_to(a_const[1], indices.shape))
    return df.add(constant, entries), scale


def _cknna_core(
    ix: jax.Array, a: DD, iy: jax.Array, b: DD, units: tuple[jax.Array, ...], *, unbiased: bool
) -> jax.Array:
    """CKNNA from the final graphs and their kernel entries (double-floats in float32, plain otherwise); ``units``
    are the factors by which HSIC(K, L) and sqrt(HSIC(K, K)·HSIC(L, L)) exceed those of the entries."""
    exact = a[0].dtype == jnp.float32 and b[0].dtype == jnp.float32
    batch = _stack(
        [
            _cross_entries(ix, a, iy, b, unbiased=unbiased),
            _self_entries(ix, a, unbiased=unbiased),
            _self_entries(iy, b, unbiased=unbiased),
        ]
    )  # the three HSICs share one compiled computation
    hi, lo = jax.vmap(functools.partial(_hsic, unbiased=unbiased, exact=exact))(*batch)
    sims = hi + lo
    return normalized_ratio(sims[0], sims[1], sims[2], *units)


def _complement_tile(rows: jax.Array, ix: jax.Array, iy: jax.Array, c: jax.Array, d: jax.Array, *, widths, unbiased):
    """For a tile of rows: the entries outside M_K, outside M_L and outside M_K∘M_L (ascending columns, padded to
    the static ``widths``), with C_ij = c_i·c_j and D_ij = d_i·d_j there (one (tile, N) Gram block each)."""
    t, n = rows.shape[0], c.shape[0]
    local = jnp.arange(t)[:, None]
    member_k = jnp.zeros((t, n), bool).at[local, ix[rows]].set(True)
    member_l = jnp.zeros((t, n), bool).at[local, iy[rows]].set(True)
    if unbiased:  # the point itself is in no mask and in no complement: the unbiased HSIC zeroes the diagonal
        member_k = member_k.at[jnp.arange(t), rows].set(True)
        member_l = member_l.at[jnp.arange(t), rows].set(True)
    gram_c = jnp.matmul(c[rows], c.T, precision=_HIGHEST)
    gram_d = jnp.matmul(d[rows], d.T, precision=_HIGHEST)
    out = []
    for member, width in zip((member_k, member_l, member_k & member_l), widths, strict=True):
        outside = ~member
        pos = jnp.where(outside, jnp.cumsum(outside, axis=1) - 1, width)
        cols = jnp.zeros((t, width), jnp.int32).at[local, pos].set(jnp.arange(n, dtype=jnp.int32)[None, :], mode="drop")
        valid = jnp.arange(width)[None, :] < outside.sum(1)[:, None]
        out.append((cols, valid, jnp.take_along_axis(gram_c, cols, 1), jnp.take_along_axis(gram_d, cols, 1)))
    return tuple(out)


def _complement_similarity(cols, valid, reverse, parts_a, parts_b, gram_a, gram_b, *, unbiased: bool) -> DD:
    """HSIC(M∘K, M∘L) for M = J − M̄ (M̄: the ``valid`` entries ``cols``), expanded around the full kernels:
    HSIC(K, L) − HSIC(K, M̄∘L) − HSIC(M̄∘K, L) + HSIC(M̄∘K, M̄∘L).

    K_ij = A + u_i + u_j + C_ij (``parts_a`` = (c, u, A), C = c cᵀ) and L likewise; ``gram_a``/``gram_b`` hold C, D
    at the entries of M̄. In the full-kernel terms the offset parts drop out analytically: every HSIC annihilates
    the constant A (on the off-diagonal J for the unbiased one); the biased one also every additive u_i + u_j, the
    unbiased one leaves Σ_l u_l (colsum_l − rowsum_l) of the sparse partner.
    """
    n = cols.shape[0]
    (c, u, a_const), (d, v, b_const) = parts_a, parts_b
    rows = _rows_like(cols)

    def entries(u_: DD, const: DD, gram: jax.Array) -> DD:
        value = df.add(df.add(_dd_gather(u_, rows), _dd_gather(u_, cols)), df.lift(gram))
        return _dd_where(
            valid, df.add((jnp.broadcast_to(const[0], cols.shape), jnp.broadcast_to(const[1], cols.shape)), value)
        )

    a, b = entries(u, a_const, gram_a), entries(v, b_const, gram_b)
    gc, gd = df.lift(jnp.where(valid, gram_a, 0.0)), df.lift(jnp.where(valid, gram_b, 0.0))
    row_a, row_b = df.sum(a, axis=1), df.sum(b, axis=1)
    total_a, total_b = df.sum(row_a), df.sum(row_b)
    sum_c, sum_d = c.sum(0), d.sum(0)

    def edge_sum(values: DD, weights: jax.Array) -> DD:  # Σ over the entries (i, l) of values_il · weights_l
        return df.sum(df.mul(values, df.lift(weights[cols])))

    if unbiased:
        sq_c, sq_d = (c * c).sum(1), (d * d).sum(1)
        full = df.lift(_linear_unbiased_hsic(c, d, sq_c, sq_d))
        total_c, total_d = df.lift(jnp.dot(sum_c, sum_c) - sq_c.sum()), df.lift(jnp.dot(sum_d, sum_d) - sq_d.sum())
        line_c, line_d = c @ sum_c - sq_c, d @ sum_d - sq_d  # row sums of the zero-diagonal C̃, D̃
        # HSIC(K̃, M̄∘L): Σ_l u_l (col_b − row_b) + Σ C̃∘(M̄∘L)ᵀ + T_C T_b/((n−1)(n−2)) − 2·Σ_l line_c,l row_b,l/(n−2)
        u_cols = df.sum(df.mul(b, _dd_gather(u, cols)))
        u_rows = df.sum(df.mul(u, row_b))
        trace = df.add(df.add(u_cols, df.neg(u_rows)), df.sum(df.mul(gc, b)))
        k_g = _unbiased_value(trace, total_c, total_b, df.sum(df.mul(df.lift(line_c), row_b)), n)
        v_cols = df.sum(df.mul(a, _dd_gather(v, cols)))
        v_rows = df.sum(df.mul(v, row_a))
        trace = df.add(df.add(v_rows, df.neg(v_cols)), df.sum(df.mul(a, gd)))
        g_l = _unbiased_value(trace, total_a, total_d, edge_sum(a, line_d), n)
    else:
        cc, dc = c - c.mean(0), d - d.mean(0)
        full = df.lift(jnp.sum(jnp.matmul(cc.T, dc, precision=_HIGHEST) ** 2))  # trace(K H L H) = ‖(Hc)ᵀ(Hd)‖²_F
        total_c, total_d = df.lift(jnp.dot(sum_c, sum_c)), df.lift(jnp.dot(sum_d, sum_d))
        line_c, line_d = c @ sum_c, d @ sum_d  # row sums of C = c cᵀ, D = d dᵀ (diagonal included)
        k_g = _biased_value(
            df.sum(df.mul(gc, b)), total_c, total_b, df.sum(df.mul(df.lift(line_c), row_b)), edge_sum(b, line_c), n
        )
        g_l = _biased_value(
            df.sum(df.mul(a, gd)), total_a, total_d, edge_sum(a, line_d), df.sum(df.mul(df.lift(line_d), row_a)), n
        )
    g_g = _hsic(cols, a, b, reverse & valid, unbiased=unbiased, exact=True)
    out = df.add(full, df.neg(k_g))
    out = df.add(out, df.neg(g_l))
    return df.add(out, g_g)


def _complement_core(
    x: jax.Array, y: jax.Array, ix: jax.Array, iy: jax.Array, *, unbiased: bool, tile: int | None, mesh: Mesh | None
) -> jax.Array:
    """CKNNA for dense masks (2k > N − 1) of float32 features, through the expansion around the full kernels."""
    n, k = ix.shape
    c, u, a_const, scale_x = _centred_parts(x)
    d, v, b_const, scale_y = _centred_parts(y)
    q = (n - 1 if unbiased else n) - k
    widths = (q, q, min(2 * q, n - 1 if unbiased else n))
    tile = default_tile(n) if tile is None else tile
    fn = functools.partial(_complement_tile, widths=widths, unbiased=unbiased)
    comp_k, comp_l, comp_kl = map_row_tiles(fn, n, ix, iy, c, d, tile=tile, mesh=mesh)

    def reverse_of(cols: jax.Array, graphs: tuple[jax.Array, ...]) -> jax.Array:
        """(cols[i, s], i) lies outside the intersection of the masks of ``graphs`` (and off the diagonal)."""
        rows = _rows_like(cols)
        inside = functools.reduce(jnp.logical_and, [membership(g, cols, rows)[0] for g in graphs])
        return ~inside & (cols != rows) if unbiased else ~inside

    parts_x, parts_y = (c, u, a_const), (d, v, b_const)
    sims = []
    for (cols, valid, gram_c, gram_d), graphs, pa, pb, second in (
        (comp_kl, (ix, iy), parts_x, parts_y, True),
        (comp_k, (ix,), parts_x, parts_x, False),
        (comp_l, (iy,), parts_y, parts_y, True),
    ):
        gram_a = gram_c if pa is parts_x else gram_d
        gram_b = gram_d if second else gram_c
        sims.append(
            _complement_similarity(cols, valid, reverse_of(cols, graphs), pa, pb, gram_a, gram_b, unbiased=unbiased)
        )
    return normalized_ratio(*[hi + lo for hi, lo in sims], scale_x, scale_x, scale_y, scale_y)


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

    The value depends on the features' offset (platonic's kernel is the raw inner product) but not on their scale
    beyond the anchor's 1e-6. For float32 features it stays within ~1e-4 of the exact value of this definition at
    offsets up to ~1e3 times the spread: the engine's neighbours are those of the exact inner products (ties to the
    lower index), kernel values are double-floats built from the features' offset decomposition, the HSICs are
    summed in double-float, dense masks are expanded around the
    full kernels and k = N − 1 (``unbiased``) is unbiased linear CKA (module docstring). float64 keeps the plain
    evaluation. With graphs only (no features) the graphs' own neighbours and float values are used.

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
      A scalar in the common float dtype of the kernel values. Time O(N² d) for the searches, O(N k (d + log k))
      after; dense masks (2k > N − 1, float32 features) O(N² (d + log N)) time and O(N·(N − k) + tile·N) memory.
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
    widest = n - 1 if unbiased else n
    mesh = resolve_mesh(mesh)
    full = unbiased and k == widest and x is not None and y is not None  # every off-diagonal pair in the masks

    values_dtypes = [g.values.dtype for g in (graph_x, graph_y) if isinstance(g, NeighborGraph)]
    dtype = jnp.result_type(*[f.dtype for f in (x, y) if f is not None], *values_dtypes)
    precise = dtype == jnp.float32  # float64 keeps the plain path: its 53 bits need no double-floats

    graphs = []
    for feats, graph, name in ((x, graph_x, "x"), (y, graph_y, "y")):
        if graph is not None:
            graph = check_graph(
                graph, f"graph_{name}", metric="ip", exclude_self=unbiased, n=n, k=k, data_name=name, purpose="CKNNA"
            )
        else:
            check_variance(feats, name)
            if full:
                graphs.append(None)  # no search needed
                continue
            graph = knn(feats, k, metric="ip", exclude_self=unbiased, tile=tile, mesh=mesh)
        graphs.append(graph)
    if full:  # the definition reduces exactly to unbiased linear CKA
        common = jnp.result_type(x.dtype, y.dtype)
        return _cka_linear(x.astype(common), y.astype(common), unbiased=True)

    return _similarities(
        graphs[0].indices,
        graphs[0].values.astype(dtype),
        x if precise else None,
        graphs[1].indices,
        graphs[1].values.astype(dtype),
        y if precise else None,
        k=k,
        unbiased=unbiased,
        dense=2 * k > widest,
        tile=tile,
        mesh=mesh,
    )


@functools.partial(jax.jit, static_argnames=("k", "unbiased", "dense", "tile", "mesh"))
def _similarities(
    ix: jax.Array,
    x_values: jax.Array,
    x: jax.Array | None,
    iy: jax.Array,
    y_values: jax.Array,
    y: jax.Array | None,
    *,
    k: int,
    unbiased: bool,
    dense: bool,
    tile: int | None,
    mesh: Mesh | None,
) -> jax.Array:
    """CKNNA from the k-neighbour graphs in one program: float32 features give double-float entries, sides without
    features their graph values."""
    sides, units = [], []
    for indices, values, feats in ((ix, x_values, x), (iy, y_values, y)):
        if feats is not None:
            entries, scale = _feature_side(indices, feats, mesh=mesh)
            units += [scale, scale]
        else:
            entries, unit = _graph_entries(values)
            units.append(unit)
        sides.append((indices, entries))
    (ix, a), (iy, b) = sides
    if dense and x is not None and y is not None:  # dense masks: expand around the full kernels
        return _complement_core(x, y, ix, iy, unbiased=unbiased, tile=tile, mesh=mesh)
    return _cknna_core(ix, a, iy, b, tuple(units), unbiased=unbiased)
