"""SVCCA: singular vector canonical correlation analysis (Raghu et al. 2017, NeurIPS; platonic-rep ``svcca``).

Each embedding is centred, its columns divided by their standard deviation (ddof 1, as ``torch.std``) plus 1e-8, and
reduced to its top-q left singular vectors U (N, q). SVCCA is the mean of the q canonical correlations between U_X
and U_Y. The columns of U have zero mean (they span the range of a centred matrix) and are orthonormal, so CCA needs
no iteration: the canonical correlations are the singular values of U_Xᵀ U_Y (the cosines of the principal angles
between the two subspaces; Björck & Golub 1973).

Deliberate difference from the anchor: platonic-rep takes U from the *randomised* ``torch.svd_lowrank``, runs
scikit-learn's iterative (NIPALS) ``CCA`` on it and adds 1e-10 Gaussian noise before ``np.corrcoef``; its value
depends on the random state and on the NIPALS tolerance, so no anchor value exists. Here U comes from a deterministic
``jnp.linalg.svd`` and the correlations are exact; the result equals what the anchor converges to.

Input: features follow :func:`jaxalign._checks.as_features` (integers through float64, half precision as float32,
complex refused); a constant embedding raises ``ValueError`` eagerly (its standardised matrix is 0, so it has no
singular directions).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._checks import as_features, check_same_n, check_variance, is_concrete
from jaxalign._lapack import after

__all__ = ["svcca"]


def _top_left_singular_vectors(x: jax.Array, q: int, *, wait: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Top-q left singular vectors of the centred, column-standardised ``x`` and its singular values; the SVD starts
    after ``wait`` exists (one LAPACK call at a time under vmap, see :mod:`jaxalign._lapack`)."""
    x = x - x.mean(axis=0)
    x = x / (x.std(axis=0, ddof=1) + 1e-8)
    u, s, _ = jnp.linalg.svd(x if wait is None else after(x, wait), full_matrices=False)
    return u[:, :q], s


@functools.partial(jax.jit, static_argnames=("q",))
def _svcca(x: jax.Array, y: jax.Array, *, q: int) -> tuple[jax.Array, jax.Array]:
    ux, sx = _top_left_singular_vectors(x, q)
    uy, sy = _top_left_singular_vectors(y, q, wait=ux)
    rho = jnp.linalg.svd(ux.T @ uy, compute_uv=False)
    # Smallest kept singular value relative to the largest: ~eps means U holds arbitrary null-space directions.
    conditioning = jnp.stack([sx[q - 1] / sx[0], sy[q - 1] / sy[0]])
    return rho.mean(), conditioning


def svcca(x: Any, y: Any, *, q: int = 10) -> jax.Array:
    """Mean canonical correlation between the top-q singular subspaces of ``x`` and ``y`` (SVCCA).

    With X̃ = (X − mean) / (std_ddof1 + 1e-8) column-wise and U_X its top-q left singular vectors (likewise U_Y),
    SVCCA = mean of the singular values of U_Xᵀ U_Y, i.e. of the q canonical correlations.

    Args:
      x: (N, d_x) features.
      y: (N, d_y) features.
      q: number of singular directions kept (platonic-rep ``cca_dim``, default 10); 1 <= q <= min(N−1, d_x, d_y)
        (a centred matrix has rank at most N−1).

    Raises:
      ValueError: naming the argument, for bad features (complex, NaN/inf, N mismatch, all rows identical), ``q``
        out of range, or fewer than q non-degenerate singular directions (checked eagerly, not under ``jit``).

    Returns:
      A scalar in [0, 1]; 1 when the two top-q subspaces coincide. Invariant to translating, rescaling or permuting
      the columns of either input.
    """
    x = as_features(x, "x")
    y = as_features(y, "y")
    check_same_n(x, y)
    check_variance(x, "x")
    check_variance(y, "y")
    n = x.shape[0]
    q_max = min(n - 1, x.shape[1], y.shape[1])
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 1 <= q <= q_max:
        raise ValueError(
            f"`q`={q!r} must be an integer with 1 <= q <= min(N-1, d_x, d_y) = {q_max} (N={n}, d_x={x.shape[1]}, "
            f"d_y={y.shape[1]}): a centred embedding has at most that many singular directions; lower `q`."
        )
    dtype = jnp.result_type(x.dtype, y.dtype)
    value, conditioning = _svcca(x.astype(dtype), y.astype(dtype), q=int(q))
    if is_concrete(conditioning):
        tol = max(n, x.shape[1], y.shape[1]) * float(jnp.finfo(dtype).eps)
        for name, ratio in zip(("x", "y"), conditioning.tolist(), strict=True):
            if not ratio > tol:
                raise ValueError(
                    f"`{name}` has fewer than q={q} non-degenerate singular directions after centring and scaling "
                    f"(σ_q/σ_1 = {ratio:.1e}), so its top-q subspace is not defined; lower `q`."
                )
    return value
