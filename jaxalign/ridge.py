"""Ridge2FoldCV: linear regression regularised by a truncated SVD, with the cutoff picked by one 2-fold split.

This is scikit-matter 0.4.1's ``Ridge2FoldCV`` as its reconstruction measures configure it (Goscinski, Fraux,
Imbalzano & Ceriotti 2021, "The role of feature space in atomistic learning", Mach. Learn.: Sci. Technol. 2, 025028):
``alphas=geomspace(1e-9, 0.9, 20)``, ``alpha_type="relative"``, ``regularization_method="cutoff"``,
``random_state=0x5F3759DF``, ``shuffle=True``, ``scoring="neg_root_mean_squared_error"``, no intercept.

- Folds: the first split of sklearn ``KFold(n_splits=2, shuffle=True, random_state=seed)`` over the n rows:
  ``RandomState(seed)`` shuffles ``arange(n)``; fold 2 is the first ceil(n/2) shuffled rows, fold 1 the rest, each
  sorted (:func:`kfold_halves`).
- For fold f, X_f = U_f S_f V_fᵀ. The absolute cutoffs are c = α · max(s_max(fold 1), s_max(fold 2)). The fit on
  fold f keeps the singular values s > c and s > rcond = max(n, d) · eps: W_f(c) = V_f S_f⁺(c) U_fᵀ Y_f.
- Score(c) = ½ [−RMSE(Y_2, X_2 W_1(c)) − RMSE(Y_1, X_1 W_2(c))], RMSE taken per output column and averaged over
  columns. One SVD per fold serves every α: the grid is evaluated as a batched product.
- c* = the first argmax. Final fit on all n rows keeping the singular values s > c*: W = V S⁺(c*) Uᵀ Y. The anchor
  applies no rank floor there; we also drop s ≤ max(n, d) · eps · s_max (numpy ``pinv``'s numerical rank). In
  float64 this floor lies below the smallest default cutoff 1e-9 · s_max unless max(n, d) > 3·10⁶, so the anchor's
  numbers are unchanged; in float32 it drops the round-off singular values (~1e-7 · s_max) of rank-deficient inputs,
  e.g. k centred neighbours in d ≥ k dimensions in LFRE, which the anchor's 1e-9 cutoff keeps and inverts.

Computation (LAPACK work, not the anchor's three SVDs of n-row matrices): every cutoff is scored at once from
prefix sums over the sorted spectrum (:func:`_prefix_sq_errors`). Tall folds (rows ≥ d_x) are each reduced once to
(R_f, X_fᵀY_f, ‖Y_f‖²) by an R-only Householder QR and two Gram products; the fold and final SVDs are SVDs of d_x×d_x
R factors, the final one values-only when the cutoff keeps every singular value (then two triangular solves). Few
rows in many dimensions (LFRE's k neighbours) are first rotated into an orthonormal basis of their span
(:func:`fit_predict_ridge2fold`), so the local fits factorise k×(k+1) matrices instead of k×d_x ones.

Everything is a pure function of arrays (``jit``/``vmap``-able); the folds depend only on the static row count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from jaxalign._checks import as_features, check_same_n
from jaxalign._lapack import after

__all__ = [
    "DEFAULT_ALPHAS",
    "SEED",
    "RidgeFit",
    "check_alphas",
    "fit_predict_ridge2fold",
    "fit_ridge2fold",
    "kfold_halves",
    "predict",
    "ridge2fold_cv",
]

#: scikit-matter's seed for every split of the reconstruction measures.
SEED = 0x5F3759DF
#: scikit-matter's relative cutoff grid, ``np.geomspace(1e-9, 0.9, 20)``.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.geomspace(1e-9, 0.9, 20))


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["weights", "cutoff", "alpha", "scores"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class RidgeFit:
    """A fitted Ridge2FoldCV.

    Attributes:
      weights: (d_x, d_y) coefficients; predictions are ``x @ weights`` (no intercept).
      cutoff: the chosen absolute singular-value cutoff c* = α* · s_max.
      alpha: the chosen relative cutoff α*.
      scores: (n_alphas,) mean 2-fold score (−RMSE) of every α.
    """

    weights: jax.Array
    cutoff: jax.Array
    alpha: jax.Array
    scores: jax.Array


def predict(fit: RidgeFit, x: jax.Array) -> jax.Array:
    """Predictions ``x @ fit.weights``."""
    return x @ fit.weights


def kfold_halves(n: int, *, random_state: int = SEED, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The first (train, test) split of sklearn ``KFold(n_splits=2, shuffle=shuffle, random_state=random_state)``.

    ``RandomState(random_state)`` shuffles ``arange(n)`` (unless ``shuffle`` is False); the test fold is the first
    ceil(n/2) entries and the train fold the rest, both returned sorted, as sklearn does. Ridge2FoldCV fits on the
    train fold first (its "fold 1").
    """
    if n < 2:
        raise ValueError(f"a 2-fold split needs at least 2 rows, got {n}; pass more samples.")
    order = np.arange(n)
    if shuffle:
        np.random.RandomState(random_state).shuffle(order)
    n_test = (n + 1) // 2
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def check_alphas(alphas: Any) -> np.ndarray:
    """Relative cutoffs must be a non-empty 1-D sequence in [0, 1) (scikit-matter's rule for relative alphas)."""
    arr = np.asarray(alphas, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"`alphas` must be a non-empty 1-D sequence of relative cutoffs, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr >= 1):
        raise ValueError(
            "`alphas` are relative singular-value cutoffs and must lie in [0, 1); "
            f"got min {arr.min():.3g}, max {arr.max():.3g}."
        )
    return arr


def _neg_rmse(y_true: jax.Array, y_pred: jax.Array) -> jax.Array:
    """sklearn's ``neg_root_mean_squared_error``: −mean over columns of sqrt(mean over rows of squared error)."""
    return -jnp.sqrt(jnp.mean((y_true - y_pred) ** 2, axis=0)).mean()


def _inverse(s: jax.Array, keep: jax.Array) -> jax.Array:
    """1/s where ``keep``, else 0 (never divides by a dropped, possibly zero, singular value)."""
    return jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)


def _thin_svd(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Thin SVD U S Vᵀ of a (m, n) matrix via a Householder QR of its long side and the SVD of the square factor.

    Backward stable like a direct SVD, and ~2x faster on CPU for the small wide matrices of local fits
    (LAPACK's divide-and-conquer driver only pre-reduces strongly rectangular inputs).

    Its two LAPACK calls run one after the other (:func:`~jaxalign._lapack.after`): the SVD of R waits for the
    ``orgqr`` forming Q, so a batched call cannot deadlock.
    """
    m, n = a.shape
    if m == n:
        return jnp.linalg.svd(a, full_matrices=False)
    if m < n:  # a = Rᵀ Qᵀ with aᵀ = Q R
        q, r = jnp.linalg.qr(a.T)
        u, s, wt = jnp.linalg.svd(after(r.T, q), full_matrices=False)
        return u, s, wt @ q.T
    q, r = jnp.linalg.qr(a)  # a = Q R
    u, s, vt = jnp.linalg.svd(after(r, q), full_matrices=False)
    return q @ u, s, vt


def _prefix_sq_errors(p: jax.Array, b: jax.Array, w: jax.Array, total: jax.Array) -> jax.Array:
    """Squared error per output column of one fold's fit on the other fold, for every number r of kept singular values.

    The fit keeping the r largest singular values predicts the other fold as P_{:r} w_{:r}, with P = X_other V_f the
    other fold in the fit's right singular basis and w = diag(1/s) U_fᵀ Y_f its coefficients, so its squared error per
    column is ‖y‖² − 2 Σ_{j<r} w_j b_j + Σ_{j,l<r} w_j G_jl w_l with G = PᵀP, b = Pᵀy. The quadratic form of prefix r
    grows by w_j (G_jj w_j + 2 Σ_{l<j} G_jl w_l) at step j, so every prefix is one cumulative sum: O(n d² + d² d_y) for
    all cutoffs instead of O(n_alpha · n d d_y). Only PᵀP enters, so P may be R V_f for any R with
    RᵀR = X_otherᵀX_other. ``total`` = ‖y_other‖² per column. Row r of the (rank + 1, d_y) result is the error of
    prefix r.
    """
    gram = p.T @ p
    lower = jnp.tril(gram, -1) @ w
    step = w * (jnp.diagonal(gram)[:, None] * w + 2.0 * lower - 2.0 * b)
    cumulative = jnp.concatenate([jnp.zeros_like(step[:1]), jnp.cumsum(step, axis=0)], axis=0)
    return jnp.maximum(total + cumulative, 0.0)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["r", "xty", "yty"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class _Moments:
    """What a tall block of rows (X, Y) contributes to a least-squares fit: R of X = Q R, XᵀY and ‖Y‖² per column."""

    r: jax.Array
    xty: jax.Array
    yty: jax.Array


def _moments(x: jax.Array, y: jax.Array) -> _Moments:
    return _Moments(jnp.linalg.qr(x, mode="r"), x.T @ y, jnp.sum(y * y, axis=0))


def _merge(a: _Moments, b: _Moments, *, wait: jax.Array) -> _Moments:
    """Moments of the stacked rows: the QR of [R_a; R_b] is that of [X_a; X_b]; XᵀY and ‖Y‖² add. The QR starts
    after ``wait`` (the previous factorisation's output) exists."""
    stacked = after(jnp.concatenate([a.r, b.r]), wait)
    return _Moments(jnp.linalg.qr(stacked, mode="r"), a.xty + b.xty, a.yty + b.yty)


def _spectral_fit(m: _Moments, *, wait: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(s, Vᵀ, Vᵀ XᵀY) of a tall block from the SVD of its R factor (the singular values and right vectors of X),
    started after ``wait`` exists.

    The coefficients of the fit along v_j are u_jᵀ Y / s_j = v_jᵀ XᵀY / s_j², so U (n rows) is never formed.
    """
    _, s, vt = jnp.linalg.svd(after(m.r, wait), full_matrices=False)
    return s, vt, vt @ m.xty


def _cv_scores(x: jax.Array, y: jax.Array, alphas: jax.Array, *, random_state: int, shuffle: bool, width: int):
    """Mean 2-fold score of every relative cutoff, the absolute cutoffs, and the train moments (None for wide folds).

    The singular values kept by a cutoff c (s > c and s > rcond) are a prefix of the sorted spectrum, so every
    cutoff's score is read off the per-prefix errors of :func:`_prefix_sq_errors`. When both folds have at least d_x
    rows, each fold is reduced once to its :class:`_Moments` (an R-only Householder QR of the fold and two Gram
    products): the fold SVDs are SVDs of R_f, the scoring needs only Gram products, and the merged moments are the
    full fit's, so no factorisation touches the n rows twice. Otherwise (wide folds, as in LFRE's neighbourhoods) the
    folds' thin SVDs are used directly. Each factorisation waits for the previous one's output (one LAPACK call at a
    time, see :mod:`jaxalign._lapack`).
    """
    fold1, fold2 = kfold_halves(x.shape[0], random_state=random_state, shuffle=shuffle)
    x1, x2, y1, y2 = x[fold1], x[fold2], y[fold1], y[fold2]
    rcond = max(x.shape[0], width) * jnp.finfo(x.dtype).eps
    if min(fold1.size, fold2.size) >= x.shape[1]:
        m1 = _moments(x1, y1)
        m2 = _moments(after(x2, m1.r), y2)
        s1, vt1, c1 = _spectral_fit(m1, wait=m2.r)
        s2, vt2, c2 = _spectral_fit(m2, wait=s1)
        w1 = (_inverse(s1, s1 > rcond) ** 2)[:, None] * c1
        w2 = (_inverse(s2, s2 > rcond) ** 2)[:, None] * c2
        # fold 1's fit scored on fold 2 (P = R_2 V_1, b = V_1ᵀ X_2ᵀ Y_2), and fold 2's on fold 1
        err_2 = _prefix_sq_errors(m2.r @ vt1.T, vt1 @ m2.xty, w1, m2.yty)
        err_1 = _prefix_sq_errors(m1.r @ vt2.T, vt2 @ m1.xty, w2, m1.yty)
        train = _merge(m1, m2, wait=s2)
    else:
        u1, s1, vt1 = _thin_svd(x1)
        u2, s2, vt2 = _thin_svd(after(x2, s1))
        p2, p1 = x2 @ vt1.T, x1 @ vt2.T
        w1 = _inverse(s1, s1 > rcond)[:, None] * (u1.T @ y1)
        w2 = _inverse(s2, s2 > rcond)[:, None] * (u2.T @ y2)
        err_2 = _prefix_sq_errors(p2, p2.T @ y2, w1, jnp.sum(y2 * y2, axis=0))
        err_1 = _prefix_sq_errors(p1, p1.T @ y1, w2, jnp.sum(y1 * y1, axis=0))
        train = None
    cutoffs = alphas * jnp.maximum(s1.max(), s2.max())
    rank_1 = jnp.sum((s1[None, :] > cutoffs[:, None]) & (s1[None, :] > rcond), axis=1)
    rank_2 = jnp.sum((s2[None, :] > cutoffs[:, None]) & (s2[None, :] > rcond), axis=1)
    neg_rmse_2 = -jnp.sqrt(err_2[rank_1] / x2.shape[0]).mean(axis=1)
    neg_rmse_1 = -jnp.sqrt(err_1[rank_2] / x1.shape[0]).mean(axis=1)
    return (neg_rmse_2 + neg_rmse_1) / 2, cutoffs, train


def _tall_weights(train: _Moments, cutoff: jax.Array, floor_scale: jax.Array) -> jax.Array:
    """Final weights of a tall fit from its moments: W = V S⁺(c*) Uᵀ Y = V diag(1/s²) Vᵀ XᵀY over the kept
    singular values.

    When the cutoff keeps every singular value (the usual case with many more rows than features) the truncated fit
    is plain least squares, W = R⁻¹ R⁻ᵀ XᵀY: two triangular solves after a values-only SVD of R decide it, instead
    of a full SVD.
    """
    s = jnp.linalg.svd(train.r, compute_uv=False)
    floor = floor_scale * s[0]
    # The two solves are cheap (d_x² d_y) and come first, so that under vmap (where lax.cond evaluates both
    # branches) the truncated branch's SVD still waits for them: one LAPACK call at a time.
    z = solve_triangular(after(train.r, s), train.xty, trans="T", lower=False)
    least_squares = solve_triangular(train.r, z, lower=False)

    def truncated(_):
        s, vt, c = _spectral_fit(train, wait=least_squares)
        return vt.T @ ((_inverse(s, (s > cutoff) & (s > floor)) ** 2)[:, None] * c)

    return jax.lax.cond(s[-1] > jnp.maximum(cutoff, floor), lambda _: least_squares, truncated, None)


def _final_factors(
    x: jax.Array, y: jax.Array, alphas: jax.Array, *, random_state: int, shuffle: bool, width: int | None = None
):
    """Cross-validated cutoff and the final fit W = vtᵀ coef: (vt, coef, cutoff, best, scores), vt None when coef
    is W itself.

    Wide x: coef = diag(1/s) Uᵀ Y restricted to the kept singular values (zero rows elsewhere). ``width`` is the
    feature dimension the numerical-rank thresholds max(n, d) · eps refer to (default: x's own; it differs when x
    holds coordinates in a smaller basis, see :func:`fit_predict_ridge2fold`).
    """
    width = x.shape[1] if width is None else width
    scores, cutoffs, train = _cv_scores(x, y, alphas, random_state=random_state, shuffle=shuffle, width=width)
    best = jnp.argmax(scores)  # first maximum on ties, as np.argmax
    cutoff = cutoffs[best]
    floor_scale = max(x.shape[0], width) * jnp.finfo(x.dtype).eps
    if train is not None:
        return None, _tall_weights(train, cutoff, floor_scale), cutoff, best, scores
    u, s, vt = _thin_svd(after(x, cutoff))  # after the fold factorisations
    coef = _inverse(s, (s > cutoff) & (s > floor_scale * s[0]))[:, None] * (u.T @ y)
    return vt, coef, cutoff, best, scores


def fit_ridge2fold(
    x: jax.Array, y: jax.Array, alphas: jax.Array, *, random_state: int = SEED, shuffle: bool = True
) -> RidgeFit:
    """Unvalidated, traceable Ridge2FoldCV fit (the core of :func:`ridge2fold_cv`; safe under ``jit``/``vmap``)."""
    alphas = jnp.asarray(alphas, dtype=x.dtype)
    vt, coef, cutoff, best, scores = _final_factors(x, y, alphas, random_state=random_state, shuffle=shuffle)
    weights = coef if vt is None else vt.T @ coef
    return RidgeFit(weights=weights, cutoff=cutoff, alpha=alphas[best], scores=scores)


def fit_predict_ridge2fold(
    x: jax.Array,
    y: jax.Array,
    query: jax.Array,
    alphas: jax.Array,
    *,
    random_state: int = SEED,
    shuffle: bool = True,
) -> jax.Array:
    """``query @ fit_ridge2fold(x, y, alphas).weights`` without forming the (d_x, d_y) weights.

    Evaluated as (query V) coef with coef = diag(1/s) Uᵀ Y: O(q · d_x · r + r · d_y) after the fit instead of
    O(d_x · r · d_y), which dominates when a fit serves few queries (LFRE's one point per local fit).

    When the rows of x and the queries number fewer than d_x (LFRE's k neighbours in d dimensions), everything is
    first expressed in an orthonormal basis of their span: one R-only Householder QR [xᵀ | queryᵀ] = Q R gives the
    coordinates x̃ = R[:, :n]ᵀ and q̃ = R[:, n:]ᵀ. The fit and the 2-fold scores depend on x and the queries only
    through their inner products, which Q preserves exactly, so the whole Ridge2FoldCV then runs on (n, n + q)
    matrices instead of (n, d_x) ones.
    """
    alphas = jnp.asarray(alphas, dtype=x.dtype)
    n, width = x.shape
    rows = query.reshape(-1, width)  # a single (d_x,) query is one row
    if n + rows.shape[0] < width:
        r = jnp.linalg.qr(jnp.concatenate([x, rows]).T, mode="r")  # every later factorisation depends on it
        x, rows = r[:, :n].T, r[:, n:].T
    vt, coef, *_ = _final_factors(x, y, alphas, random_state=random_state, shuffle=shuffle, width=width)
    projected = rows if vt is None else rows @ vt.T
    return (projected @ coef).reshape((*query.shape[:-1], y.shape[1]))


_fit_jit = jax.jit(fit_ridge2fold, static_argnames=("random_state", "shuffle"))


def ridge2fold_cv(
    x: Any,
    y: Any,
    *,
    alphas: Any = DEFAULT_ALPHAS,
    random_state: int = SEED,
    shuffle: bool = True,
) -> RidgeFit:
    """Fit scikit-matter's ``Ridge2FoldCV`` (cutoff regularisation, relative alphas, 2-fold CV on −RMSE).

    Args:
      x: (n, d_x) inputs, n ≥ 2 (no intercept is fitted: centre them first if needed).
      y: (n, d_y) targets.
      alphas: relative cutoffs in [0, 1); the absolute cutoff is α times the largest singular value of the folds.
      random_state: seed of the 2-fold split (``numpy.random.RandomState``, as sklearn's ``KFold``).
      shuffle: shuffle the rows before splitting them into halves.

    Returns:
      A :class:`RidgeFit` (weights, chosen cutoff and α, per-α scores). Cost: three thin SVDs.
    """
    x = as_features(x, "x")
    y = as_features(y, "y", min_rows=1)
    check_same_n(x, y)
    dtype = jnp.result_type(x.dtype, y.dtype)
    alphas = jnp.asarray(check_alphas(alphas), dtype=dtype)
    return _fit_jit(x.astype(dtype), y.astype(dtype), alphas, random_state=int(random_state), shuffle=bool(shuffle))
