"""Distance correlation with dcor 0.7's conventions, in one tiled pass that never materialises the N x N distances.

With a_ij = ‖x_i − x_j‖^p and b_ij = ‖y_i − y_j‖^p (``exponent`` p ∈ (0, 2), default 1), and the sums
S1 = Σ_ij a_ij b_ij, S2 = Σ_i a_i· b_i·, S3 = a·· b·· (Székely, Rizzo & Bakirov 2007, "Measuring and testing
dependence by correlation of distances", Ann. Statist. 35(6)):

- biased (V-statistic): dCov²(X, Y) = S1/n² − 2 S2/n³ + S3/n⁴;
- bias-corrected (U-statistic, Székely & Rizzo 2014, "Partial distance correlation with methods for dissimilarities",
  Ann. Statist. 42(6)): Ω(X, Y) = S1/(n(n−3)) − 2 S2/(n(n−2)(n−3)) + S3/(n(n−1)(n−2)(n−3)), n ≥ 4;
- dCor² = dCov²(X, Y) / sqrt(|dVar²(X) · dVar²(Y)|), 0 when the denominator is 0 (as dcor does); ``dcor`` is the
  square root of the biased ratio (negative rounding clipped to 0); ``u_dcor_sqr`` is the U ratio and may be < 0.

Every statistic follows from five per-row sums — a_i·, b_i·, Σ_j a_ij b_ij, Σ_j a_ij², Σ_j b_ij² — gathered by
:func:`distance_row_sums` in a single :func:`~jaxalign.tiling.map_row_tiles` pass over (tile, N) distance blocks
(time O(N² d), memory O(tile·N)). Three of them belong to one embedding (:class:`DistanceMoments`) and only
Σ_j a_ij b_ij to the pair, so a model x model sweep can keep the moments per model; :func:`dcor_from_sums` turns
them into dCor².

Precision: both estimators are unchanged when a constant c is subtracted from the distances (from every entry,
diagonal included, for the V-statistic; from the off-diagonal entries for the U-statistic), so the pass sums the
shifted a_ij − c with c = (mean squared distance)^(p/2) ≈ the mean distance. This removes the cancellation between
S1/n² and S3/n⁴ that otherwise costs float32 most of its digits; :func:`dcor_from_sums` undoes the shift exactly.
Distances come from the expanded |x|² + |y|² − 2 x·y formula on the rows of :class:`DistanceFrame`: centred, or
uncentred on a dyadic lattice (binary fingerprints, small counts), where every expanded distance is exact; the
diagonal is set to 0 by index.

Scale: dCor is invariant to rescaling either input, so each input is brought to unit scale before any sum is formed
(multiplied by a power of two bringing its largest |entry| into [1/2, 1), exactly, then by the inverse RMS row norm
of the centred rows: :func:`distance_frame`); the per-row sums of :func:`distance_row_sums` are in those units. The
ratio is formed as dCov² / sqrt|dVar²(X)| / sqrt|dVar²(Y)|, never through the product of the two variances, so
inputs of size 1e-12 … 1e12 give the same value in float32. The zero-denominator rule (dCor = 0, as in dcor 0.7)
fires only for a truly constant input (every row equal to the first), whose shifted distance powers are set to
exactly 0, while any other input has Σ_j a'_ij² ≥ c² > 0 in unit scale.

Gradients: a_ij is computed as a safe power of the squared distance (zero gradient where the distance is 0: the
diagonal and duplicated rows), and each tile is rematerialised in the backward pass, so ``jax.grad`` stays finite
and O(tile·N) in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign._checks import as_features, check_same_n, check_variance
from jaxalign._exact import expanded_frame
from jaxalign.tiling import map_row_tiles, pairwise_block, resolve_mesh, safe_sqrt

__all__ = [
    "DistanceFrame",
    "DistanceMoments",
    "dcor",
    "dcor_from_sums",
    "dcor_from_totals",
    "dcor_sqr",
    "distance_frame",
    "distance_power_block",
    "distance_row_sums",
    "u_dcor_sqr",
]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["row", "sq", "shift"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class DistanceMoments:
    """Per-row sums of one embedding's shifted distance powers a'_ij = ‖x_i − x_j‖^p − c (all i, j; a'_ii = −c).

    The distances are those of the unit-scale input (:func:`distance_row_sums`); every statistic is invariant to
    that scale. All sums are exactly 0 for a constant input (and only then).

    Attributes:
      row: (N,) Σ_j a'_ij.
      sq: (N,) Σ_j a'_ij².
      shift: () the constant c subtracted from every entry.
    """

    row: jax.Array
    sq: jax.Array
    shift: jax.Array

    @property
    def n(self) -> int:
        return self.row.shape[0]


def _check_exponent(exponent: float) -> float:
    if isinstance(exponent, bool) or not isinstance(exponent, numbers.Real) or not 0.0 < float(exponent) < 2.0:
        raise ValueError(
            f"`exponent` must be a number in the open interval (0, 2), got {exponent!r}; outside it distance "
            "covariance no longer characterises independence. Use the default exponent=1.0."
        )
    return float(exponent)


def _safe_power(sq: jax.Array, half_exponent: float) -> jax.Array:
    """sq^half_exponent with value and gradient 0 where sq is 0 (d^p = (d²)^(p/2))."""
    if half_exponent == 0.5:
        return safe_sqrt(sq)
    positive = sq > 0
    return jnp.where(positive, jnp.where(positive, sq, 1.0) ** half_exponent, 0.0)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["rows", "factor", "shift"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class DistanceFrame:
    """One embedding's operands of the distance blocks: a_ij = ‖r_i − r_j‖^p·f^p − c.

    Attributes:
      rows: (N, d) the rows of :func:`jaxalign._exact.expanded_frame` (rescaled by a power of two; uncentred on a
        dyadic lattice, where the expanded distances are exact; centred elsewhere); 0 for a constant input.
      factor: () f, bringing the rows to unit scale (RMS row norm 1 after centring); a constant for the gradient.
      shift: () c = (mean squared unit-scale distance)^(p/2) = 2^(p/2) up to round-off, ≈ the mean distance power,
        subtracted from every entry to avoid cancellation (0 for a constant input); a constant for the gradient.
    """

    rows: jax.Array
    factor: jax.Array
    shift: jax.Array


def distance_frame(x: jax.Array, exponent: float) -> DistanceFrame:
    """The :class:`DistanceFrame` of x (traceable; no checks)."""
    data, _, rows = expanded_frame(x)
    constant = jnp.all(x == x[:1])
    centred = data - data.mean(0)
    rms = jax.lax.stop_gradient(jnp.sqrt(jnp.mean(jnp.sum(centred * centred, axis=1))))
    factor = jnp.where(constant | (rms == 0), 1.0, 1.0 / jnp.where(rms > 0, rms, 1.0))
    unit = jax.lax.stop_gradient(centred * factor)
    shift = jnp.where(constant, 0.0, _safe_power(2.0 * jnp.sum(unit * unit) / x.shape[0], exponent / 2.0))
    return DistanceFrame(jnp.where(constant, 0.0, rows), factor, jax.lax.stop_gradient(shift))


def distance_power_block(rows: jax.Array, frame: DistanceFrame, exponent: float) -> jax.Array:
    """(tile, N) block of a'_ij = (‖r_i − r_j‖·f)^p − c for the given rows; the self-distance is 0 by index."""
    sq = pairwise_block(frame.rows[rows], frame.rows, "sqeuclidean").at[jnp.arange(rows.shape[0]), rows].set(0.0)
    return _safe_power(sq * (frame.factor * frame.factor), exponent / 2.0) - frame.shift


def _row_sums_tile(
    rows: jax.Array, frame_x: DistanceFrame, frame_y: DistanceFrame, *, exponent: float
) -> tuple[jax.Array, ...]:
    a = distance_power_block(rows, frame_x, exponent)
    b = distance_power_block(rows, frame_y, exponent)
    return a.sum(1), b.sum(1), (a * b).sum(1), (a * a).sum(1), (b * b).sum(1)


@functools.partial(jax.jit, static_argnames=("exponent", "tile", "mesh"))
def _distance_row_sums(
    x: jax.Array, y: jax.Array, *, exponent: float, tile: int | None, mesh: Mesh | None
) -> tuple[DistanceMoments, DistanceMoments, jax.Array]:
    frame_x, frame_y = distance_frame(x, exponent), distance_frame(y, exponent)
    fn = jax.checkpoint(functools.partial(_row_sums_tile, exponent=exponent))
    a, b, ab, aa, bb = map_row_tiles(fn, x.shape[0], frame_x, frame_y, tile=tile, mesh=mesh)
    return DistanceMoments(a, aa, frame_x.shift), DistanceMoments(b, bb, frame_y.shift), ab


def distance_row_sums(
    x: Any,
    y: Any,
    *,
    exponent: float = 1.0,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> tuple[DistanceMoments, DistanceMoments, jax.Array]:
    """Per-row sums of the shifted distance powers of ``x`` and ``y``, in one tiled pass.

    Args:
      x: (N, d_x) features (numpy, jax or torch).
      y: (N, d_y) features of the same N samples.
      exponent: p in a_ij = ‖x_i − x_j‖^p, in (0, 2).
      tile: rows per tile (default: one (tile, N) block near 32 MiB).
      mesh: 1-D device mesh splitting the row tiles, ``"auto"`` (all devices) or ``None``.

    Returns:
      ``(moments_x, moments_y, cross)``: the :class:`DistanceMoments` of each embedding and the (N,) per-row sums
      Σ_j a'_ij b'_ij of the shifted entries. Feed them to :func:`dcor_from_sums`.
    """
    exponent = _check_exponent(exponent)
    x, y = as_features(x, "x"), as_features(y, "y")
    check_same_n(x, y)
    return _distance_row_sums(x, y, exponent=exponent, tile=tile, mesh=resolve_mesh(mesh))


def _dcov_v(cross: jax.Array, row_x: jax.Array, row_y: jax.Array) -> jax.Array:
    """S1/n² − 2 S2/n³ + S3/n⁴ = mean(a b) − 2 mean_i(ā_i b̄_i) + ā b̄ (ā_i = a_i·/n), exact for the shifted sums;
    ``cross`` is the total Σ_ij a'_ij b'_ij."""
    n = float(row_x.shape[0])  # n² overflows int32 beyond N = 46,340
    ra, rb = row_x / n, row_y / n
    mean_a, mean_b = ra.mean(), rb.mean()
    return cross / (n * n) - 2.0 * jnp.mean((ra - mean_a) * (rb - mean_b)) - mean_a * mean_b


def _dcov_u(cross: jax.Array, row_x: jax.Array, row_y: jax.Array, shift_x: jax.Array, shift_y: jax.Array) -> jax.Array:
    """S1/(n(n−3)) − 2 S2/(n(n−2)(n−3)) + S3/(n(n−1)(n−2)(n−3)) of the off-diagonal-shifted entries.

    ``cross`` (the total) holds the entries shifted on the diagonal too, whose contribution n·c_a·c_b is removed.
    """
    n = float(row_x.shape[0])  # n² overflows int32 beyond N = 46,340
    ra, rb = row_x + shift_x, row_y + shift_y  # row sums with a'_ii = 0
    s1 = cross - n * shift_x * shift_y
    s2 = jnp.dot(ra, rb)
    s3 = ra.sum() * rb.sum()
    return (s1 - 2.0 * s2 / (n - 2) + s3 / ((n - 1) * (n - 2))) / (n * (n - 3))


@functools.partial(jax.jit, static_argnames=("unbiased",))
def dcor_from_totals(
    moments_x: DistanceMoments,
    moments_y: DistanceMoments,
    cross: jax.Array,
    sq_x: jax.Array,
    sq_y: jax.Array,
    *,
    unbiased: bool = False,
) -> jax.Array:
    """:func:`dcor_from_sums` from the totals of the pair sums: ``cross`` = Σ_ij a'_ij b'_ij, ``sq_x`` = Σ_ij a'_ij²,
    ``sq_y`` = Σ_ij b'_ij² (the per-row ``sq`` of the moments is not read). A model x model sweep
    (:func:`jaxalign.sweep.pairwise_matrices`) gets all of them at once as the Gram matrix of flattened distance tiles.
    """
    mx, my = moments_x, moments_y
    if unbiased:
        if mx.n < 4:
            raise ValueError(f"the bias-corrected statistic needs n >= 4 samples, got n={mx.n}.")
        cov = _dcov_u(cross, mx.row, my.row, mx.shift, my.shift)
        var_x = _dcov_u(sq_x, mx.row, mx.row, mx.shift, mx.shift)
        var_y = _dcov_u(sq_y, my.row, my.row, my.shift, my.shift)
    else:
        cov = _dcov_v(cross, mx.row, my.row)
        var_x = _dcov_v(sq_x, mx.row, mx.row)
        var_y = _dcov_v(sq_y, my.row, my.row)
    # the zero-variance rule is decided on the data: a constant input has every shifted distance power exactly 0
    constant = (sq_x == 0) | (sq_y == 0)
    root_x, root_y = safe_sqrt(jnp.abs(var_x)), safe_sqrt(jnp.abs(var_y))
    defined = ~constant & (root_x > 0) & (root_y > 0)
    return jnp.where(defined, cov / jnp.where(defined, root_x, 1.0) / jnp.where(defined, root_y, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("unbiased",))
def dcor_from_sums(
    moments_x: DistanceMoments, moments_y: DistanceMoments, cross: jax.Array, *, unbiased: bool = False
) -> jax.Array:
    """Squared distance correlation from the per-row sums of :func:`distance_row_sums`.

    dCor² = dCov²(X, Y) / sqrt(|dVar²(X) · dVar²(Y)|) with the biased V-statistic or, for ``unbiased=True``, the
    U-statistic (needs n ≥ 4), formed as dCov² / sqrt|dVar²(X)| / sqrt|dVar²(Y)| (no product of variances to under-
    or overflow). A constant embedding (all its sums exactly 0) gives 0, as dcor 0.7's zero-denominator rule does.
    Pure and jittable: in a model x model sweep the moments are computed once per model and only ``cross`` per pair.
    """
    return dcor_from_totals(
        moments_x, moments_y, cross.sum(), moments_x.sq.sum(), moments_y.sq.sum(), unbiased=unbiased
    )


def _validated(x: Any, y: Any, exponent: float, min_rows: int) -> tuple[jax.Array, jax.Array, float]:
    exponent = _check_exponent(exponent)
    x, y = as_features(x, "x", min_rows=min_rows), as_features(y, "y", min_rows=min_rows)
    check_same_n(x, y)
    check_variance(x, "x")
    check_variance(y, "y")
    return x, y, exponent


def dcor_sqr(
    x: Any,
    y: Any,
    *,
    exponent: float = 1.0,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Squared distance correlation (biased V-statistic), dcor 0.7 ``distance_correlation_sqr``.

    dCor²(X, Y) = dCov²(X, Y) / sqrt(dVar²(X) dVar²(Y)), dCov² = S1/n² − 2 S2/n³ + S3/n⁴ with a_ij = ‖x_i − x_j‖^p
    (Székely, Rizzo & Bakirov 2007). In [0, 1]. A constant embedding raises ValueError (under jit, where it cannot
    be checked, the result is 0 as in dcor 0.7).

    Args:
      x: (N, d_x) features (numpy, jax or torch).
      y: (N, d_y) features of the same N samples.
      exponent: p, in (0, 2).
      tile: rows per tile (default: one (tile, N) block near 32 MiB).
      mesh: 1-D device mesh splitting the row tiles, ``"auto"`` (all devices) or ``None``.

    Returns:
      A scalar in the input's float dtype. Time O(N² (d_x + d_y)), memory O(tile·N).
    """
    x, y, exponent = _validated(x, y, exponent, 2)
    sums = _distance_row_sums(x, y, exponent=exponent, tile=tile, mesh=resolve_mesh(mesh))
    return dcor_from_sums(*sums, unbiased=False)


def dcor(
    x: Any,
    y: Any,
    *,
    exponent: float = 1.0,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Distance correlation, dcor 0.7 ``distance_correlation``: sqrt(max(dCor², 0)) of :func:`dcor_sqr`.

    In [0, 1]; 0 iff the samples show no dependence (in the population limit, for p ∈ (0, 2)), 1 for x = y and for
    y a rigid motion or isotropic rescaling of x. Differentiable (the gradient of the square root is 0 at 0).
    Arguments as for :func:`dcor_sqr`.
    """
    return safe_sqrt(dcor_sqr(x, y, exponent=exponent, tile=tile, mesh=mesh))


def u_dcor_sqr(
    x: Any,
    y: Any,
    *,
    exponent: float = 1.0,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Bias-corrected squared distance correlation, dcor 0.7 ``u_distance_correlation_sqr``.

    Ω(X, Y) / sqrt(Ω(X, X) Ω(Y, Y)) with the U-statistic Ω = S1/(n(n−3)) − 2 S2/(n(n−2)(n−3)) +
    S3/(n(n−1)(n−2)(n−3)) (Székely & Rizzo 2014). Approximately unbiased, so it may be negative for independent
    data; needs N ≥ 4. Arguments as for :func:`dcor_sqr`.
    """
    x, y, exponent = _validated(x, y, exponent, 4)
    sums = _distance_row_sums(x, y, exponent=exponent, tile=tile, mesh=resolve_mesh(mesh))
    return dcor_from_sums(*sums, unbiased=True)
