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

Everything is a pure function of arrays (``jit``/``vmap``-able); the folds depend only on the static row count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._checks import as_features, check_same_n

__all__ = [
    "DEFAULT_ALPHAS",
    "SEED",
    "RidgeFit",
    "check_alphas",
    "fit_ridge2fold",
    "kfold_halves",
    "predict",
    "ridge2fold_cv",
]

#: scikit-matter's seed for every split of the reconstruction measures.
SEED = 0x5F3759DF
#: scikit-matter's relative cutoff grid, ``np.geomspace(1e-9, 0.9, 20)``.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.geomspace(1e-9, 0.9, 20))
#: Elements of the (alphas, fold rows, outputs) prediction batch kept alive at once.
_BATCH_BUDGET = 1 << 23


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


def _cv_scores(x: jax.Array, y: jax.Array, alphas: jax.Array, *, random_state: int, shuffle: bool):
    """Mean 2-fold score of every relative cutoff, and the absolute cutoffs."""
    fold1, fold2 = kfold_halves(x.shape[0], random_state=random_state, shuffle=shuffle)
    x1, x2, y1, y2 = x[fold1], x[fold2], y[fold1], y[fold2]
    u1, s1, vt1 = jnp.linalg.svd(x1, full_matrices=False)
    u2, s2, vt2 = jnp.linalg.svd(x2, full_matrices=False)
    rcond = max(x.shape) * jnp.finfo(x.dtype).eps
    cutoffs = alphas * jnp.maximum(s1.max(), s2.max())
    # fold f's fit predicts the other fold as (X_other V_f) diag(keep / s_f) (U_fᵀ Y_f)
    proj_2_on_1, coef_1 = x2 @ vt1.T, u1.T @ y1
    proj_1_on_2, coef_2 = x1 @ vt2.T, u2.T @ y2

    def score(c: jax.Array) -> jax.Array:
        pred_2 = (proj_2_on_1 * _inverse(s1, (s1 > c) & (s1 > rcond))) @ coef_1
        pred_1 = (proj_1_on_2 * _inverse(s2, (s2 > c) & (s2 > rcond))) @ coef_2
        return (_neg_rmse(y2, pred_2) + _neg_rmse(y1, pred_1)) / 2

    per_alpha = max(x1.shape[0], x2.shape[0]) * y.shape[1]
    batch = max(1, min(alphas.shape[0], _BATCH_BUDGET // max(per_alpha, 1)))
    return jax.lax.map(score, cutoffs, batch_size=batch), cutoffs


def fit_ridge2fold(
    x: jax.Array, y: jax.Array, alphas: jax.Array, *, random_state: int = SEED, shuffle: bool = True
) -> RidgeFit:
    """Unvalidated, traceable Ridge2FoldCV fit (the core of :func:`ridge2fold_cv`; safe under ``jit``/``vmap``)."""
    alphas = jnp.asarray(alphas, dtype=x.dtype)
    scores, cutoffs = _cv_scores(x, y, alphas, random_state=random_state, shuffle=shuffle)
    best = jnp.argmax(scores)  # first maximum on ties, as np.argmax
    cutoff = cutoffs[best]
    u, s, vt = jnp.linalg.svd(x, full_matrices=False)
    rank_floor = max(x.shape) * jnp.finfo(x.dtype).eps * s[0]
    weights = (vt.T * _inverse(s, (s > cutoff) & (s > rank_floor))) @ (u.T @ y)
    return RidgeFit(weights=weights, cutoff=cutoff, alpha=alphas[best], scores=scores)


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
