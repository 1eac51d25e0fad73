"""Differentiable alignment losses for training: pure functions of two minibatches of features, for ``jax.grad``,
``jax.jit`` and ``jax.vmap``.

Each loss is ``1 − similarity`` (0 when the two representations align perfectly) of a minibatch x (n, d_x), y
(n, d_y) whose rows describe the same n samples, e.g. a student's embedding and a frozen teacher's (seed 000 §3.2:
aligning a model's representation with a pretrained interatomic potential as a regulariser). Minibatches are small,
so the n × n kernels are formed densely here; the metrics in :mod:`jaxalign.metrics` are the tiled, exact,
study-scale versions, and each loss's value equals its metric on the same batch (tests).

- :func:`cka_loss` — 1 − CKA with a linear or RBF kernel, biased HSIC trace(KHLH) or unbiased HSIC (Song et al.
  2012), CKA = HSIC(K, L) / (sqrt(HSIC(K, K)·HSIC(L, L)) + 1e-6) as platonic-rep (Kornblith et al. 2019).
- :func:`dcor_loss` — 1 − distance correlation (Székely et al. 2007, V-statistic as ``dcor.distance_correlation``).
  Distances are safe square roots (value and gradient 0 at zero distance), so duplicate rows and collapsed
  embeddings give finite gradients.
- :func:`reconstruction_loss` — a GFRE-style error: Y scaled to unit total variance is predicted from scaled X by
  ridge regression fitted in closed form on the batch's train rows and evaluated on its test rows; differentiable
  through the solve, with a fixed or learned regulariser.
- :func:`soft_mutual_knn_loss`, :func:`soft_cknna_loss` — surrogates of mutual kNN and CKNNA whose hard top-k
  masks become sigmoids of the inner-product scores around each row's k-th/(k+1)-th threshold, with a temperature;
  as the temperature → 0 the values tend to the hard metrics (tests).

All functions raise ``ValueError`` naming the argument for mismatched shapes or bad settings (checked at trace time
on the static shapes) and return a scalar of the inputs' floating dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "alignment_regularized",
    "cka_loss",
    "dcor_loss",
    "reconstruction_loss",
    "soft_cknna_loss",
    "soft_mutual_knn_loss",
]

#: platonic-rep's regulariser in the CKA and CKNNA denominators.
EPS = 1e-6


# ---------------------------------------------------------------------------------------------------------- helpers
def _pair(x: Any, y: Any, *, min_rows: int = 2) -> tuple[jax.Array, jax.Array]:
    x, y = jnp.asarray(x), jnp.asarray(y)
    for name, a in (("x", x), ("y", y)):
        if a.ndim != 2:
            raise ValueError(f"`{name}` must be a 2-D (n, d) minibatch of features, got shape {a.shape}.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` and `y` must hold the same n samples (rows), got {x.shape[0]} and {y.shape[0]}.")
    if x.shape[0] < min_rows:
        raise ValueError(f"the minibatch has {x.shape[0]} rows; this loss needs at least {min_rows}.")
    dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
    return x.astype(dtype), y.astype(dtype)


def _safe_sqrt(a: jax.Array) -> jax.Array:
    """sqrt with value and gradient 0 at a ≤ 0 (no NaN from the derivative 1/(2·sqrt(0)))."""
    positive = a > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, a, 1.0)), 0.0)


def _sq_distances(x: jax.Array) -> jax.Array:
    """(n, n) squared Euclidean distances from centred rows, clipped at 0, exactly 0 on the diagonal."""
    x = x - jnp.mean(x, axis=0)
    sq = jnp.sum(x * x, axis=1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    return jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d2)


def _hsic(k: jax.Array, l: jax.Array, *, unbiased: bool) -> jax.Array:  # noqa: E741 (the kernels' usual names)
    """Biased trace(K H L H) (no 1/(n−1)² factor, as platonic-rep) or the unbiased estimator of Song et al. 2012
    (eq. 5), which zeroes the diagonals and needs n ≥ 4. K and L need not be symmetric (CKNNA's row-wise masked
    kernels are not): the traces pair K_ij with L_ji, as platonic-rep's ``K * L.T``."""
    n = k.shape[0]
    if not unbiased:
        kc = k - jnp.mean(k, axis=0, keepdims=True)
        kc = kc - jnp.mean(kc, axis=1, keepdims=True)
        return jnp.sum(kc * l.T)  # trace(HKH L) = Σ_ij (HKH)_ij L_ji
    eye = jnp.eye(n, dtype=bool)
    kt, lt = jnp.where(eye, 0.0, k), jnp.where(eye, 0.0, l)
    term = jnp.sum(kt * lt.T) + jnp.sum(kt) * jnp.sum(lt) / ((n - 1) * (n - 2))
    term = term - 2.0 * jnp.sum(kt.sum(axis=0) * lt.sum(axis=1)) / (n - 2)
    return term / (n * (n - 3))


def _normalized(hsic_kl: jax.Array, hsic_kk: jax.Array, hsic_ll: jax.Array) -> jax.Array:
    return hsic_kl / (_safe_sqrt(hsic_kk * hsic_ll) + EPS)


def _kernel(x: jax.Array, kernel: str, sigma: Any) -> jax.Array:
    if kernel == "linear":
        return x @ x.T
    return jnp.exp(-_sq_distances(x) / (2.0 * jnp.asarray(sigma, x.dtype) ** 2))


# ---------------------------------------------------------------------------------------------------------- CKA
def cka_loss(x: Any, y: Any, *, kernel: str = "linear", sigma: Any = 1.0, unbiased: bool = False) -> jax.Array:
    """1 − CKA(x, y) on a minibatch (Kornblith et al. 2019; platonic-rep's HSIC scaling and 1e-6).

    CKA = HSIC(K, L) / (sqrt(HSIC(K, K)·HSIC(L, L)) + 1e-6), K = x xᵀ (``kernel="linear"``) or
    K_ij = exp(−‖x_i − x_j‖² / (2σ²)) (``"rbf"``), L likewise from y; HSIC biased trace(KHLH) or unbiased (Song et al.
    2012, needs n ≥ 4). Equals 1 − :func:`jaxalign.metrics.cka` (``kernel="ip"``/``"rbf"``) on the same batch.

    Args:
      x: (n, d_x) features; y: (n, d_y) features of the same samples.
      kernel: ``"linear"`` or ``"rbf"``.
      sigma: the RBF bandwidth (a float or a traced scalar, so it can be learned); ignored for ``"linear"``.
      unbiased: the unbiased HSIC estimator.

    Returns:
      A scalar in [0, 1] (biased; the unbiased CKA may leave it), 0 when the kernels are proportional after centring.

    Raises:
      ValueError: shapes that are not (n, d) with one n, fewer than 2 (biased) or 4 (unbiased) rows, an unknown kernel.
    """
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"`kernel` must be 'linear' or 'rbf', got {kernel!r}.")
    x, y = _pair(x, y, min_rows=4 if unbiased else 2)
    k, l = _kernel(x, kernel, sigma), _kernel(y, kernel, sigma)  # noqa: E741
    hsic = lambda a, b: _hsic(a, b, unbiased=unbiased)  # noqa: E731
    return 1.0 - _normalized(hsic(k, l), hsic(k, k), hsic(l, l))


# ---------------------------------------------------------------------------------------------------------- dCor
def _double_centred_distances(x: jax.Array, exponent: float) -> jax.Array:
    d2 = _sq_distances(x)
    a = _safe_sqrt(d2) if exponent == 1.0 else jnp.where(d2 > 0, jnp.where(d2 > 0, d2, 1.0) ** (exponent / 2), 0.0)
    return a - a.mean(axis=0, keepdims=True) - a.mean(axis=1, keepdims=True) + a.mean()


def dcor_loss(x: Any, y: Any, *, exponent: float = 1.0) -> jax.Array:
    """1 − dCor(x, y), the distance correlation of a minibatch (Székely, Rizzo & Bakirov 2007; the V-statistic of
    ``dcor.distance_correlation``, equal to :func:`jaxalign.metrics.dcor`).

    dCor² = dCov²(x, y) / sqrt(dVar²(x)·dVar²(y)) with dCov² = mean_ij A_ij B_ij over the double-centred distance
    matrices A, B (distances to the power ``exponent``). Every square root is safe (value and gradient 0 at 0): equal
    rows, a collapsed embedding or independent inputs give finite gradients, not NaN.

    Args:
      x: (n, d_x) features; y: (n, d_y) features of the same samples.
      exponent: the distance exponent, in (0, 2).

    Returns:
      A scalar in [0, 1]; 0 when y is a similarity transform of x.

    Raises:
      ValueError: bad shapes, fewer than 2 rows, an exponent outside (0, 2).
    """
    if not 0.0 < float(exponent) < 2.0:
        raise ValueError(f"`exponent` must be in the open interval (0, 2), got {exponent!r}.")
    x, y = _pair(x, y)
    a, b = _double_centred_distances(x, float(exponent)), _double_centred_distances(y, float(exponent))
    dcov, dvar_x, dvar_y = jnp.mean(a * b), jnp.mean(a * a), jnp.mean(b * b)
    denom = _safe_sqrt(dvar_x * dvar_y)
    r2 = jnp.where(denom > 0, dcov / jnp.where(denom > 0, denom, 1.0), 0.0)
    return 1.0 - _safe_sqrt(r2)


# ---------------------------------------------------------------------------------------------------------- GFRE
def _unit_total_variance(a: jax.Array, rows: jax.Array) -> jax.Array:
    """Centre on the rows' mean and divide by sqrt(their total variance) (scikit-matter's StandardFlexibleScaler)."""
    w = rows.astype(a.dtype)[:, None]
    count = jnp.sum(w)
    mean = jnp.sum(a * w, axis=0) / count
    centred = a - mean
    total_var = jnp.sum(centred * centred * w) / count
    return centred / _safe_sqrt(total_var + jnp.finfo(a.dtype).tiny)


def reconstruction_loss(x: Any, y: Any, *, alpha: Any = 1e-3, test: Any = None) -> jax.Array:
    """A GFRE-style reconstruction error of y from x on a minibatch, differentiable through the ridge solve.

    X and Y are each centred and scaled to unit total variance on the train rows; W = (XₜᵀXₜ + α I)⁻¹ XₜᵀYₜ is the
    ridge fit on the train rows (closed form, a Cholesky solve, so gradients flow through it and through ``alpha``)
    and the loss is sqrt(mean over the test rows of ‖y_i − x_i W‖²) (Goscinski et al. 2021's GFRE with a fixed
    absolute regulariser instead of scikit-matter's cross-validated cutoff). 0: y is a linear function of x; about
    1: x holds no linear information on y.

    Args:
      x: (n, d_x) source features; y: (n, d_y) target features of the same samples.
      alpha: the ridge regulariser on the scaled features, > 0 (a float, or a traced scalar to learn it, e.g.
        ``jnp.exp(log_alpha)``).
      test: (n,) boolean mask of the test rows; default: every odd row (train = the even ones).

    Returns:
      A non-negative scalar.

    Raises:
      ValueError: bad shapes, fewer than 4 rows, a ``test`` mask of the wrong shape.
    """
    x, y = _pair(x, y, min_rows=4)
    n = x.shape[0]
    if test is None:
        test = jnp.arange(n) % 2 == 1
    test = jnp.asarray(test)
    if test.shape != (n,) or test.dtype != jnp.bool_:
        raise ValueError(f"`test` must be a boolean mask of the {n} rows, got {test.dtype} of shape {test.shape}.")
    train = ~test
    xs, ys = _unit_total_variance(x, train), _unit_total_variance(y, train)
    wt = train.astype(x.dtype)[:, None]
    gram = (xs * wt).T @ xs + jnp.asarray(alpha, x.dtype) * jnp.eye(x.shape[1], dtype=x.dtype)
    weights = jax.scipy.linalg.solve(gram, (xs * wt).T @ ys, assume_a="pos")
    resid = (ys - xs @ weights) * test.astype(x.dtype)[:, None]
    return _safe_sqrt(jnp.sum(resid * resid) / jnp.maximum(jnp.sum(test), 1))


# ---------------------------------------------------------------------------------------------------------- soft kNN
def _soft_membership(x: jax.Array, k: int, temperature: Any, *, exclude_self: bool) -> tuple[jax.Array, jax.Array]:
    """(kernel K = x xᵀ, soft top-k mask): m_ij = sigmoid((K_ij − τ_i)/(T·s)), τ_i midway between row i's k-th and
    (k+1)-th largest score (self excluded when asked), s the mean gap between each row's largest and (k+1)-th score
    plus 1e-6·(1 + mean |K|) (so T is relative, and finite for a collapsed embedding)."""
    kern = x @ x.T
    n = x.shape[0]
    eye = jnp.eye(n, dtype=bool)
    scores = jnp.where(eye, -jnp.inf, kern) if exclude_self else kern
    top = jax.lax.top_k(scores, k + 1)[0]
    tau = 0.5 * (top[:, k - 1] + top[:, k])
    # the gaps' scale (differentiable, so gradients are exact), floored for a collapsed embedding (every score equal)
    floor = 1e-6 * (1.0 + jax.lax.stop_gradient(jnp.mean(jnp.abs(kern))))
    scale = jnp.mean(top[:, 0] - top[:, k]) + floor
    mask = jax.nn.sigmoid((kern - tau[:, None]) / (jnp.asarray(temperature, x.dtype) * scale))
    return kern, jnp.where(eye, 0.0, mask) if exclude_self else mask


def _check_k(k: int, n: int, *, upper: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= upper:
        raise ValueError(f"`k` must be an integer in [1, {upper}] for a minibatch of {n} rows, got {k!r}.")
    return k


def soft_mutual_knn_loss(x: Any, y: Any, *, k: int = 10, temperature: Any = 0.05) -> jax.Array:
    """1 − soft mutual kNN: mean_i Σ_j m^x_ij m^y_ij / k with soft top-k (inner product) memberships, self excluded.

    m_ij = sigmoid((⟨x_i, x_j⟩ − τ_i) / (T·s)): τ_i is midway between row i's k-th and (k+1)-th largest inner
    product, s the batch's mean gap between each row's largest and (k+1)-th score (``temperature`` T is relative to
    it). As T → 0 the memberships become platonic-rep's top-k sets and the value 1 − :func:`jaxalign.metrics.
    mutual_knn` (no ties); larger T spreads gradient over more neighbours.

    Args:
      x: (n, d_x) features; y: (n, d_y) features of the same samples.
      k: neighbours per sample, 1 ≤ k ≤ n − 2 (the threshold needs the (k+1)-th).
      temperature: T > 0, relative to the score gaps (a float or a traced scalar).

    Returns:
      A scalar in [0, 1].

    Raises:
      ValueError: bad shapes or k.
    """
    x, y = _pair(x, y, min_rows=3)
    k = _check_k(k, x.shape[0], upper=x.shape[0] - 2)
    _, mx = _soft_membership(x, k, temperature, exclude_self=True)
    _, my = _soft_membership(y, k, temperature, exclude_self=True)
    return 1.0 - jnp.mean(jnp.sum(mx * my, axis=1)) / k


def soft_cknna_loss(x: Any, y: Any, *, k: int = 10, temperature: Any = 0.05, unbiased: bool = True) -> jax.Array:
    """1 − soft CKNNA: platonic-rep's CKNNA with its top-k masks replaced by the soft memberships of
    :func:`soft_mutual_knn_loss`.

    CKNNA = HSIC(M∘K, M∘L) / (sqrt(HSIC(M_K∘K, M_K∘K)·HSIC(M_L∘L, M_L∘L)) + 1e-6), K = x xᵀ, L = y yᵀ, M = M_K∘M_L
    (Huh et al. 2024); with ``unbiased`` self is excluded from the neighbours and the unbiased HSIC is used. As the
    temperature → 0 the value tends to 1 − :func:`jaxalign.metrics.cknna` (no ties).

    Args:
      x: (n, d_x) features; y: (n, d_y) features of the same samples.
      k: neighbours per sample, 1 ≤ k ≤ n − 2.
      temperature: T > 0, relative to the score gaps.
      unbiased: platonic-rep's default (self excluded, unbiased HSIC; needs n ≥ 4).

    Returns:
      A scalar (1 − CKNNA; CKNNA lies in [−1, 1] for the unbiased estimator).

    Raises:
      ValueError: bad shapes or k.
    """
    x, y = _pair(x, y, min_rows=4 if unbiased else 3)
    k = _check_k(k, x.shape[0], upper=x.shape[0] - 2)
    kx, mx = _soft_membership(x, k, temperature, exclude_self=unbiased)
    ky, my = _soft_membership(y, k, temperature, exclude_self=unbiased)
    hsic = lambda a, b: _hsic(a, b, unbiased=unbiased)  # noqa: E731
    m = mx * my
    return 1.0 - _normalized(hsic(m * kx, m * ky), hsic(mx * kx, mx * kx), hsic(my * ky, my * ky))


# ---------------------------------------------------------------------------------------------------------- training
def alignment_regularized(
    task_loss: Callable[..., jax.Array],
    alignment_loss: Callable[..., jax.Array],
    weight: float | Callable[[Any], Any],
) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """``task_loss + λ(step) · alignment_loss`` as one loss function for ``jax.value_and_grad(..., has_aux=True)``.

    ``task_loss(params, batch)`` is the training objective and ``alignment_loss(params, batch)`` an alignment term
    built from the functions above (e.g. ``cka_loss(student(params, batch.x), batch.teacher)``); ``weight`` is a
    constant or an optax schedule (``optax.linear_schedule(0.0, 0.1, 1000)``: any callable step → λ). The returned
    ``f(params, batch, step) -> (total, {"task", "alignment", "weight"})`` keeps both terms as auxiliary outputs for
    logging. The step is the optimiser's count (``optax.tree_utils.tree_get(opt_state, "count")`` or your own).
    """
    schedule = weight if callable(weight) else (lambda _step: weight)

    def loss(params: Any, batch: Any, step: Any = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
        task = task_loss(params, batch)
        align = alignment_loss(params, batch)
        lam = jnp.asarray(schedule(step), dtype=jnp.result_type(task))
        return task + lam * align, {"task": task, "alignment": align, "weight": lam}

    return loss
