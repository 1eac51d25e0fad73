"""Centered kernel alignment (CKA) with platonic-rep's conventions, never materialising the N x N kernels.

    CKA(K, L) = HSIC(K, L) / (sqrt(HSIC(K, K) · HSIC(L, L)) + 1e-6)

with K = X Xᵀ (``kernel="ip"``) or K_ij = exp(−‖x_i − x_j‖² / (2σ²)) (``kernel="rbf"``), and L likewise from Y
(Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited"; the 1e-6 and the HSIC scaling
are those of platonic-rep's ``metrics.py``, Huh et al. 2024).

- Biased HSIC = trace(K H L H), H = I − 11ᵀ/n (no 1/(n−1)² factor).
- Unbiased HSIC (Song et al. 2012, JMLR 13, eq. 5), with K̃, L̃ the kernels with zeroed diagonals:
  [Σ K̃∘L̃ᵀ + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2·1ᵀK̃L̃1/(n−2)] / (n(n−3)). Needs n ≥ 4; may be negative.

Every HSIC is a function of four sums (:func:`hsic_from_sums`). For the linear kernel they come from d x d products
and row sums of the centred features (both HSICs are invariant to translating the features); for the RBF kernel
from one tiled pass over row blocks accumulating per-row sums of K, L, K∘L, K∘K and L∘L. Both HSICs are also
invariant to subtracting a constant from every (off-diagonal) kernel entry, so the RBF pass subtracts a cheap
estimate of the kernel's mean first, which keeps float32 accurate when K ≈ c 11ᵀ (small distances relative to σ).
Memory O(N·d + d² + tile·N).

Scale: linear CKA is evaluated on unit-scale features. Each input is translated by its first row (exact zeros for a
constant input), divided by its largest |entry|, centred and divided by its RMS row norm (:func:`unit_scale`), so
every sum is O(N²) whatever the units of the input (1e-12 … 1e12 in float32 alike). The HSICs scale as s_x² s_y²,
s_x⁴ and s_y⁴, so the ratio is formed as HSIC'(K, L) / (sqrt(HSIC'(K, K))·sqrt(HSIC'(L, L)) + 1e-6 / (s_x² s_y²)):
the anchor's formula, 1e-6 included, evaluated without forming any product of scales that could under- or
overflow. CKA is therefore scale invariant except through platonic's 1e-6, which matters only when
sqrt(HSIC(K, K)·HSIC(L, L)) is within a few decades of 1e-6 (e.g. features of size ~1e-3 at N ~ 500); there the
value follows the anchor's formula (→ 0 for vanishing features), not a float32 underflow. The RBF kernel has an
absolute bandwidth, so its inputs are only centred; its entries are formed as exp(−γm)·expm1(−γ(d² − m)) next to
the mean kernel value exp(−γm), which keeps their small deviations exact in float32.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign._checks import as_features, check_same_n, check_variance
from jaxalign.tiling import map_row_tiles, pairwise_block, resolve_mesh, safe_sqrt

__all__ = ["KERNELS", "cka", "hsic_from_sums", "normalized_ratio", "unbiased_cka", "unit_scale"]

KERNELS = ("ip", "rbf")
#: platonic-rep's regulariser in the CKA denominator.
EPS = 1e-6


def hsic_from_sums(
    trace_kl: jax.Array,
    total_k: jax.Array,
    total_l: jax.Array,
    kl_sum: jax.Array,
    lk_sum: jax.Array,
    n: int,
    *,
    unbiased: bool,
) -> jax.Array:
    """HSIC of two (possibly asymmetric) n x n kernels K, L from their sums.

    Args:
      trace_kl: Σ_ij K_ij L_ji = trace(K L).
      total_k, total_l: 1ᵀK1, 1ᵀL1.
      kl_sum: 1ᵀ K L 1 = Σ_l colsum(K)_l · rowsum(L)_l.
      lk_sum: 1ᵀ L K 1 = Σ_l colsum(L)_l · rowsum(K)_l (equals ``kl_sum`` for symmetric kernels).
      n: number of samples.
      unbiased: Song et al.'s estimator (the arguments must then be the sums of the zero-diagonal K̃, L̃) instead of
        the biased trace(K H L H) = trace(KL) − (1ᵀKL1 + 1ᵀLK1)/n + (1ᵀK1)(1ᵀL1)/n².
    """
    n = float(n) if isinstance(n, int) else n  # n² overflows int32 beyond N = 46,340
    if unbiased:
        value = trace_kl + total_k * total_l / ((n - 1) * (n - 2)) - 2.0 * kl_sum / (n - 2)
        return value / (n * (n - 3))
    return trace_kl - (kl_sum + lk_sum) / n + total_k * total_l / (n * n)


def unit_scale(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(z, s)`` with z = (x − mean(x)) / s of RMS row norm 1 and s > 0 its scale; s = 0 (and z = 0) for a constant x.

    Scale-safe in any float dtype: x is first translated by its first row (exact zeros for a constant input, and
    most of a common offset gone without rounding) and divided by its largest |entry|, so no square is formed
    before the values are O(1); then it is centred and divided by its RMS row norm, which lies in
    [1/(2·sqrt(N)), sqrt(d)] there. Differentiable (the gradient of max|x| is that of one entry).
    """
    x = x - x[:1]
    peak = jnp.max(jnp.abs(x))
    nonzero = peak > 0
    x = x / jnp.where(nonzero, peak, 1.0)
    x = x - x.mean(0)
    rms = jnp.sqrt(jnp.mean(jnp.sum(x * x, axis=1)))
    rms = jnp.where(nonzero, rms, 1.0)
    return x / rms, jnp.where(nonzero, peak * rms, 0.0)


def normalized_ratio(
    hsic_kl: jax.Array, hsic_kk: jax.Array, hsic_ll: jax.Array, *units: Any, self_nonnegative: bool = False
) -> jax.Array:
    """platonic's HSIC(K, L) / (sqrt(HSIC(K, K)·HSIC(L, L)) + 1e-6) from HSICs of rescaled kernels.

    With K = u_1 u_2 … K' and L likewise (``units``: the positive factors by which HSIC(K, L) and
    sqrt(HSIC(K, K)·HSIC(L, L)) both exceed the primed values), pass HSIC(K', L'), HSIC(K', K'), HSIC(L', L').
    The ratio is formed as HSIC(K', L') / (sqrt|HSIC(K', K')|·sqrt|HSIC(L', L')| + 1e-6 / u_1 / u_2 / …): no
    product of HSICs or of units is formed, so nothing under- or overflows, and a vanishing kernel gives 0 through
    the anchor's 1e-6, not through an underflow. NaN, as in platonic-rep, when the two self-HSICs have opposite signs
    (possible for the unbiased estimator of a masked kernel). With ``self_nonnegative`` (symmetric kernels: both
    estimators of HSIC(K, K) are then squared norms, ≥ 0) a self-HSIC that round-off made slightly negative counts
    as 0 instead. A zero unit (a constant input) counts as 1.
    """
    eps = jnp.asarray(EPS, jnp.result_type(hsic_kl))
    for unit in units:
        eps = eps / jnp.where(unit > 0, unit, 1.0)
    if self_nonnegative:
        return hsic_kl / (safe_sqrt(jnp.maximum(hsic_kk, 0.0)) * safe_sqrt(jnp.maximum(hsic_ll, 0.0)) + eps)
    root = safe_sqrt(jnp.abs(hsic_kk)) * safe_sqrt(jnp.abs(hsic_ll))
    root = jnp.where(jnp.sign(hsic_kk) * jnp.sign(hsic_ll) < 0, jnp.nan, root)
    return hsic_kl / (root + eps)


def _ratio(hsic_kl: jax.Array, hsic_kk: jax.Array, hsic_ll: jax.Array) -> jax.Array:
    return normalized_ratio(hsic_kl, hsic_kk, hsic_ll, self_nonnegative=True)


def _linear_unbiased_hsic(x: jax.Array, y: jax.Array, sq_x: jax.Array, sq_y: jax.Array) -> jax.Array:
    """Unbiased HSIC of K = XXᵀ, L = YYᵀ through d x d products and row sums (zero diagonals applied in closed form).

    Σ K̃∘L̃ = ‖XᵀY‖²_F − Σ_i |x_i|²|y_i|²; 1ᵀK̃1 = |Σx|² − Σ|x_i|²; rowsum(K̃)_l = x_l·Σx − |x_l|².
    """
    n = x.shape[0]
    sum_x, sum_y = x.sum(0), y.sum(0)
    trace_kl = jnp.sum((x.T @ y) ** 2) - jnp.sum(sq_x * sq_y)
    row_k, row_l = x @ sum_x - sq_x, y @ sum_y - sq_y
    total_k, total_l = row_k.sum(), row_l.sum()
    cross = jnp.dot(row_k, row_l)
    return hsic_from_sums(trace_kl, total_k, total_l, cross, cross, n, unbiased=True)


@functools.partial(jax.jit, static_argnames=("unbiased",))
def _cka_linear(x: jax.Array, y: jax.Array, *, unbiased: bool) -> jax.Array:
    """Linear CKA on unit-scale features (:func:`unit_scale`); K = s_x² K', L = s_y² L'."""
    x, scale_x = unit_scale(x)
    y, scale_y = unit_scale(y)
    if not unbiased:  # trace(K H L H) = ‖(HX)ᵀ(HY)‖²_F
        hsics = jnp.sum((x.T @ y) ** 2), jnp.sum((x.T @ x) ** 2), jnp.sum((y.T @ y) ** 2)
    else:
        sq_x, sq_y = (x * x).sum(1), (y * y).sum(1)
        hsics = (
            _linear_unbiased_hsic(x, y, sq_x, sq_y),
            _linear_unbiased_hsic(x, x, sq_x, sq_x),
            _linear_unbiased_hsic(y, y, sq_y, sq_y),
        )
    return normalized_ratio(*hsics, scale_x, scale_x, scale_y, scale_y, self_nonnegative=True)


def _rbf_deviation(sq: jax.Array, gamma: jax.Array, mean_sq: jax.Array, shift: jax.Array) -> jax.Array:
    """exp(−γ d²) − exp(−γ m) with ``shift`` = exp(−γ m), accurate to float precision even when both are ≈ 1.

    Near the mean (|γ(d² − m)| < 1) it is shift · expm1(−γ(d² − m)), whose relative error does not grow as the
    two exponentials approach each other; farther away the plain difference loses at most a bit or two.
    """
    t = gamma * (sq - mean_sq)
    near = jnp.abs(t) < 1.0
    return jnp.where(near, shift * jnp.expm1(-jnp.where(near, t, 0.0)), jnp.exp(-gamma * sq) - shift)


def _rbf_row_sums(
    rows: jax.Array,
    x: jax.Array,
    y: jax.Array,
    gamma: jax.Array,
    mean_k: jax.Array,
    mean_l: jax.Array,
    shift_k: jax.Array,
    shift_l: jax.Array,
) -> tuple[jax.Array, ...]:
    """Per-row Σ_j K_ij, Σ_j L_ij, Σ_j K_ij L_ij, Σ_j K_ij², Σ_j L_ij² over j ≠ i of the shifted RBF kernels for a tile
    of rows (the diagonal, 1 − shift exactly, is added back by the caller for the biased estimator)."""
    diag = (jnp.arange(rows.shape[0]), rows)
    k = _rbf_deviation(pairwise_block(x[rows], x, "sqeuclidean"), gamma, mean_k, shift_k).at[diag].set(0.0)
    l = _rbf_deviation(pairwise_block(y[rows], y, "sqeuclidean"), gamma, mean_l, shift_l).at[diag].set(0.0)  # noqa: E741
    return k.sum(1), l.sum(1), (k * l).sum(1), (k * k).sum(1), (l * l).sum(1)


def _rbf_shift(x: jax.Array, gamma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(m, exp(−γ m)) with m = mean_ij ‖x_i − x_j‖² = 2 Σ_i ‖x_i − x̄‖² / n for centred x: a cheap guess of the
    kernel's mean that is subtracted from every entry to avoid cancellation when K ≈ c 11ᵀ. Treated as a constant
    (both HSICs are unchanged by it)."""
    mean_sq = jax.lax.stop_gradient(2.0 * jnp.sum(x * x) / x.shape[0])
    return mean_sq, jax.lax.stop_gradient(jnp.exp(-gamma * mean_sq))


@functools.partial(jax.jit, static_argnames=("unbiased", "tile", "mesh"))
def _cka_rbf(
    x: jax.Array, y: jax.Array, sigma: jax.Array, *, unbiased: bool, tile: int | None, mesh: Mesh | None
) -> jax.Array:
    n = x.shape[0]
    x = x - x[:1]  # most of an offset goes without rounding before the mean is taken
    y = y - y[:1]
    x = x - x.mean(0)
    y = y - y.mean(0)
    gamma = 1.0 / (2.0 * sigma * sigma)
    mean_k, shift_k = _rbf_shift(x, gamma)
    mean_l, shift_l = _rbf_shift(y, gamma)
    sums = map_row_tiles(_rbf_row_sums, n, x, y, gamma, mean_k, mean_l, shift_k, shift_l, tile=tile, mesh=mesh)
    row_k, row_l, kl, kk, ll = sums
    if not unbiased:  # add the diagonals back: 1 − exp(−γ m), accurately
        dk, dl = -jnp.expm1(-gamma * mean_k), -jnp.expm1(-gamma * mean_l)
        row_k, row_l, kl, kk, ll = row_k + dk, row_l + dl, kl + dk * dl, kk + dk * dk, ll + dl * dl
    total_k, total_l = row_k.sum(), row_l.sum()

    def hsic(trace: jax.Array, total_a: jax.Array, total_b: jax.Array, row_a: jax.Array, row_b: jax.Array):
        cross = jnp.dot(row_a, row_b)
        return hsic_from_sums(trace.sum(), total_a, total_b, cross, cross, n, unbiased=unbiased)

    return _ratio(
        hsic(kl, total_k, total_l, row_k, row_l),
        hsic(kk, total_k, total_k, row_k, row_k),
        hsic(ll, total_l, total_l, row_l, row_l),
    )


def cka(
    x: Any,
    y: Any,
    *,
    kernel: str = "ip",
    sigma: float = 1.0,
    unbiased: bool = False,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """Centered kernel alignment of two embeddings of the same N samples (platonic-rep ``cka``).

    CKA = HSIC(K, L) / (sqrt(HSIC(K, K)·HSIC(L, L)) + 1e-6), biased HSIC = trace(K H L H) or Song et al.'s unbiased
    estimator (``unbiased=True``). Biased linear CKA lies in [0, 1]; the unbiased one may be negative.

    Args:
      x: (N, d_x) features (numpy, jax or torch).
      y: (N, d_y) features of the same samples.
      kernel: ``"ip"`` (K = X Xᵀ; O(N d²), no N x N work) or ``"rbf"`` (exp(−‖x_i − x_j‖²/(2σ²)); one tiled
        O(N² d) pass).
      sigma: RBF bandwidth σ > 0 (ignored for ``"ip"``).
      unbiased: use the unbiased HSIC (needs N ≥ 4).
      tile: rows per tile of the RBF pass (default keeps a (tile, N) block near 32 MiB).
      mesh: 1-D device mesh splitting the row tiles, ``"auto"`` (all devices) or ``None``.

    Returns:
      A scalar in the common float dtype of ``x`` and ``y``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"`kernel` must be one of {KERNELS}, got {kernel!r}.")
    min_rows = 4 if unbiased else 2
    x = as_features(x, "x", min_rows=min_rows)
    y = as_features(y, "y", min_rows=min_rows)
    check_same_n(x, y)
    check_variance(x, "x")
    check_variance(y, "y")
    dtype = jnp.result_type(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
    if kernel == "ip":
        return _cka_linear(x, y, unbiased=bool(unbiased))
    if isinstance(sigma, (int, float)) and not (0.0 < sigma < float("inf")):
        raise ValueError(f"`sigma` must be a positive finite bandwidth, got {sigma!r}.")
    mesh = resolve_mesh(mesh)
    tile = None if tile is None else int(tile)
    return _cka_rbf(x, y, jnp.asarray(sigma, dtype), unbiased=bool(unbiased), tile=tile, mesh=mesh)


def unbiased_cka(
    x: Any,
    y: Any,
    *,
    kernel: str = "ip",
    sigma: float = 1.0,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> jax.Array:
    """:func:`cka` with Song et al.'s unbiased HSIC (platonic-rep ``unbiased_cka``); needs N ≥ 4."""
    return cka(x, y, kernel=kernel, sigma=sigma, unbiased=True, tile=tile, mesh=mesh)
