"""Principal covariates regression (PCovR), scikit-matter 0.4.1 conventions (SPEC §9).

PCovR (de Jong & Kiers 1992; Helfrecht et al., Mach. Learn.: Sci. Technol. 1, 045021 (2020)) finds a latent
projection T = X P_XT that mixes variance of X (weight α) with the part of a target Y linearly predictable from X
(weight 1 − α). Seed 003 (Chorna et al.) uses α = 0.5 and 2 components to map one model's features into a
plane fitted on another's. As in scikit-matter, nothing is centred while fitting (centre and scale X and Y first),
and Ŷ = X W comes from Ridge(alpha=1e-6, fit_intercept=False): W = (XᵀX + λI)⁻¹XᵀY, which scikit-learn solves by
Cholesky (primal when d ≤ n, dual when d > n). Here it is solved from the thin SVD X = U S Vᵀ, W = V S(S² + λ)⁻¹UᵀY,
keeping only the singular values above max(n, d)·eps·s_max (numerical rank): the same W in float64 (the directions
dropped there have s² ≲ 1e-26 s_max², far below λ), and a finite, float64-close answer in float32 on rank-deficient
X, where XᵀX + 1e-6 I is not positive definite in float32 and the Cholesky factorisation returns NaN.

Feature space (n > d):
  C̃ = α XᵀX + (1 − α) (XᵀX)^(−1/2) XᵀŶ ŶᵀX (XᵀX)^(−1/2), with (XᵀX)^(−1/2) built from the eigenpairs of XᵀX whose
  eigenvalue exceeds ``tol`` (taken from the same SVD: eigenvalues s², and only directions of the numerical rank,
  so (XᵀX)^(−1/2) XᵀŶ = V diag(s²/(s² + λ)) UᵀY needs no inverse of a round-off eigenvalue); top eigenpairs (Λ, V)
  of C̃; P_XT = (XᵀX)^(−1/2) V Λ^(1/2).
Sample space (n ≤ d):
  K̃ = α XXᵀ + (1 − α) ŶŶᵀ; top eigenpairs (Λ, V) of K̃; P_XT = (α Xᵀ + (1 − α) W Ŷᵀ) V Λ^(−1/2).
In both, eigenvalues ≤ ``tol`` get a zero (inverse) square root, and each eigenvector's sign makes its largest
|entry| positive (scikit-learn's ``svd_flip``). ``transform`` subtracts the *training* column mean:
T = (X_new − mean_train) P_XT, as scikit-matter's (via scikit-learn's ``_BasePCA``) does.

Scale: PCovR is not scale invariant (``tol`` and the ridge λ are absolute, as in scikit-matter): centre and scale X
and Y first. Within that, the rank decision is relative (max(n, d)·eps·s_max), so it does not depend on the units.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._checks import as_features, as_real_array, check_same_n

__all__ = ["PCovR", "pcovr"]

_SPACES = ("auto", "feature", "sample")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["pxt", "mean", "eigenvalues"], meta_fields=["space"])
@dataclasses.dataclass(frozen=True)
class PCovR:
    """A fitted PCovR projection (a pytree: arrays are leaves, ``space`` is static).

    Attributes:
      pxt: (d, n_components) projector P_XT from features to latent coordinates (scikit-matter ``pxt_``).
      mean: (d,) column mean of the training features, subtracted by :meth:`transform` (``mean_``).
      eigenvalues: (n_components,) top eigenvalues of C̃ or K̃ (``singular_values_ ** 2``).
      space: ``"feature"`` or ``"sample"``, the space the eigenproblem was solved in (``space_``).
    """

    pxt: jax.Array
    mean: jax.Array
    eigenvalues: jax.Array
    space: str

    def transform(self, x_new: Any) -> jax.Array:
        """Latent coordinates T = (X_new − mean_train) P_XT of new rows: (n_new, n_components)."""
        x_new = as_features(x_new, "x_new", min_rows=1)
        if x_new.shape[1] != self.pxt.shape[0]:
            raise ValueError(
                f"`x_new` has {x_new.shape[1]} features but the projection was fitted on {self.pxt.shape[0]}; "
                "pass features of the same model and layer."
            )
        return _transform(x_new, self.pxt, self.mean)


@jax.jit
def _transform(x: jax.Array, pxt: jax.Array, mean: jax.Array) -> jax.Array:
    pxt = pxt.astype(x.dtype)
    return x @ pxt - mean.astype(x.dtype) @ pxt


def _top_eigh(mat: jax.Array, n_components: int) -> tuple[jax.Array, jax.Array]:
    """Top ``n_components`` eigenpairs of a symmetric PSD matrix, descending, signs as scikit-learn's svd_flip."""
    values, vectors = jnp.linalg.eigh(mat)
    values = values[::-1][:n_components]
    vectors = vectors[:, ::-1][:, :n_components]
    pivot = jnp.argmax(jnp.abs(vectors), axis=0)
    signs = jnp.sign(vectors[pivot, jnp.arange(n_components)])
    return values, vectors * jnp.where(signs == 0, 1.0, signs)


def _rank_svd(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Thin SVD X = U S Vᵀ with the directions beyond the numerical rank (s ≤ max(n, d)·eps·s_max) switched off.

    Returns (U, s, Vᵀ, keep); every use below multiplies by ``keep``, so the dropped directions contribute nothing.
    """
    u, sv, vt = jnp.linalg.svd(x, full_matrices=False)
    rcond = max(x.shape) * jnp.finfo(x.dtype).eps
    keep = sv > rcond * sv[0]
    return u, sv, vt, keep


def _ridge_factors(sv: jax.Array, keep: jax.Array, lam: float) -> tuple[jax.Array, jax.Array]:
    """(s/(s² + λ), s²/(s² + λ)) on the kept directions, 0 elsewhere: W = V diag(first) UᵀY, Ŷ = U diag(second) UᵀY."""
    denom = sv * sv + lam
    return jnp.where(keep, sv / denom, 0.0), jnp.where(keep, sv * sv / denom, 0.0)


@functools.partial(jax.jit, static_argnames=("n_components", "space", "tol", "ridge_alpha"))
def _pcovr_core(
    x: jax.Array, y: jax.Array, alpha: jax.Array, *, n_components: int, space: str, tol: float, ridge_alpha: float
) -> PCovR:
    u, sv, vt, keep = _rank_svd(x)  # the first LAPACK call; eigh below depends on it
    w_factor, hat_factor = _ridge_factors(sv, keep, ridge_alpha)
    uty = u.T @ y
    w = vt.T @ (w_factor[:, None] * uty)  # ridge weights (d, p) without intercept
    yhat = u @ (hat_factor[:, None] * uty)  # = X W
    if space == "feature":
        xtx = x.T @ x
        keep_c = keep & (sv * sv > tol)  # scikit-matter's tol on the eigenvalues s² of XᵀX, within the rank
        inv_root = jnp.where(keep_c, 1.0 / jnp.where(keep_c, sv, 1.0), 0.0)
        c_isqrt = (vt.T * inv_root) @ vt
        c_y = vt.T @ (jnp.where(keep_c, hat_factor, 0.0)[:, None] * uty)  # (XᵀX)^(−1/2) XᵀŶ
        c_tilde = (1.0 - alpha) * (c_y @ c_y.T) + alpha * xtx
        values, vectors = _top_eigh(c_tilde, n_components)
        keep = values > tol
        root = jnp.where(keep, jnp.sqrt(jnp.where(keep, values, 1.0)), 0.0)
        pxt = c_isqrt @ vectors * root
    else:
        k_tilde = alpha * (x @ x.T) + (1.0 - alpha) * (yhat @ yhat.T)
        values, vectors = _top_eigh(k_tilde, n_components)
        keep = values > tol
        inv_root = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, values, 1.0)), 0.0)
        p = alpha * x.T + (1.0 - alpha) * (w @ yhat.T)
        pxt = p @ (vectors * inv_root)
    return PCovR(pxt=pxt, mean=x.mean(0), eigenvalues=values, space=space)


def pcovr(
    x: Any,
    y: Any,
    *,
    alpha: float = 0.5,
    n_components: int = 2,
    space: str = "auto",
    tol: float = 1e-12,
    ridge_alpha: float = 1e-6,
) -> PCovR:
    """Fit PCovR of features ``x`` (n, d) with targets ``y`` (n,) or (n, p); matches scikit-matter 0.4.1
    ``PCovR(mixing=alpha, n_components=n_components, space=space, tol=tol)`` with its default regressor.

    Args:
      x: (n, d) features, centred and scaled by the caller (e.g. ``center_scale_total_variance``).
      y: (n,) or (n, p) targets.
      alpha: mixing α in [0, 1]: 1 is PCA of X, 0 is the regression of Y alone.
      n_components: latent dimensions, 1 ≤ n_components ≤ min(n, d).
      space: ``"feature"`` (eigenproblem d×d), ``"sample"`` (n×n) or ``"auto"``: feature when n > d, else sample.
      tol: eigenvalues ≤ tol count as zero (scikit-matter's ``tol``).
      ridge_alpha: regularisation of the Ridge regression giving Ŷ (scikit-matter's default regressor uses 1e-6).

    Returns:
      A :class:`PCovR` whose ``transform`` projects new rows into the fitted latent space. scikit-matter switches
      to a randomised SVD when max(n, d) > 500; this always solves the eigenproblem exactly (deterministic).
    """
    x = as_features(x, "x", min_rows=2)
    y_arr = as_real_array(y, "y")
    if y_arr.ndim == 1:
        y_arr = y_arr[:, None]
    y = as_features(y_arr, "y", min_rows=2)
    check_same_n(x, y, ("x", "y"))
    if space not in _SPACES:
        raise ValueError(f"`space` must be one of {_SPACES}, got {space!r}.")
    n, d = x.shape
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
        raise ValueError(f"`n_components` must be an integer, got {n_components!r}.")
    if not 1 <= n_components <= min(n, d):
        raise ValueError(
            f"`n_components`={n_components} must satisfy 1 <= n_components <= min(n, d) = {min(n, d)}; "
            "lower it or pass more samples/features."
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` (the mixing parameter) must lie in [0, 1], got {alpha}.")
    if space == "auto":
        space = "feature" if n > d else "sample"
    dtype = jnp.result_type(x.dtype, y.dtype)
    return _pcovr_core(
        x.astype(dtype),
        y.astype(dtype),
        jnp.asarray(alpha, dtype=dtype),
        n_components=int(n_components),
        space=space,
        tol=float(tol),
        ridge_alpha=float(ridge_alpha),
    )
