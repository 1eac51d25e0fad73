"""Intrinsic-dimension correlation I_d Cor (Basile, Acevedo, Bortolussi, Anselmi & Rodriguez 2025, "Intrinsic
dimension correlation: uncovering nonlinear connections in multimodal representations", arXiv 2406.15812; seed 000
Fig. 2B colours its information-imbalance planes by it).

Two representations of the same N samples that share information occupy, side by side, fewer dimensions than the
sum of their own: with I_x, I_y the intrinsic dimensions of X and Y and I_xy that of the concatenation [X, Y]
(columns side by side),

    I_d Cor = (I_x + I_y − I_xy) / (I_x + I_y − min(I_x, I_y)) = (I_x + I_y − I_xy) / max(I_x, I_y),

0 for independent representations (I_xy = I_x + I_y) and 1 when one determines the other (I_xy = max). Its
significance is a permutation test: each draw shuffles the rows of Y (breaking the pairing, keeping both geometries),
and p = (1 + #{draws with I_xy^π ≤ I_xy}) / (1 + draws) (Phipson & Smyth 2010; the authors count strict <, the same
for continuous estimates). Every intrinsic dimension here is :func:`jaxalign.metrics.twonn` (the authors' estimator:
TwoNN, linear fit through the origin on the 90% smallest μ, DADApy's conventions), duplicates dropped. As in the
authors' code, each representation is first standardised (columns to zero mean and unit standard deviation, ddof 1)
and its rows L2-normalised, so neither dominates the concatenation by scale.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxalign._checks import as_features
from jaxalign.metrics.intrinsic_dimension import twonn
from jaxalign.preprocessing import l2_normalize, standardize

__all__ = ["IdCorrelation", "id_correlation", "id_correlation_features"]


@dataclasses.dataclass(frozen=True)
class IdCorrelation:
    """Result of :func:`id_correlation`: ``corr`` (I_d Cor), ``p_value`` of the permutation test, the intrinsic
    dimensions ``id_x``, ``id_y`` and ``id_joint`` (of [X, Y]), and the permuted joint dimensions ``null`` (draws,)
    with their ``null_mean`` and ``null_std``."""

    corr: float
    p_value: float
    id_x: float
    id_y: float
    id_joint: float
    null: np.ndarray
    null_mean: float
    null_std: float


def id_correlation_features(x: Any) -> jax.Array:
    """A representation as :func:`id_correlation` compares it (``standardize=True``): columns standardised
    (:func:`jaxalign.preprocessing.standardize`), then rows L2-normalised (:func:`jaxalign.preprocessing.l2_normalize`).
    (N, d) → (N, d). Prepare once, then pass ``standardize=False`` (e.g. after an isometric compaction)."""
    return l2_normalize(standardize(x))


def id_correlation(
    x: Any,
    y: Any,
    *,
    draws: int = 100,
    seed: int = 0,
    standardize: bool = True,
    tile: int | None = None,
    mesh: Mesh | str | None = "auto",
) -> IdCorrelation:
    """I_d Cor of X and Y with its permutation p-value (module docstring).

    Args:
      x, y: (N, d_x) and (N, d_y) features of the same N samples (N ≥ 4 distinct rows after preparation).
      draws: permutations of Y's rows for the p-value (0: no test, p-value NaN). The smallest attainable p-value
        is 1/(1 + draws).
      seed: seeds the permutations.
      standardize: standardise the columns and L2-normalise the rows of each representation first, as the authors
        do (False: use the features as given).
      tile, mesh: passed to the neighbour searches (:func:`jaxalign.knn`).

    Raises:
      ValueError: naming the argument, for bad features (complex, NaN/inf, different N, fewer than 4 rows) or a
        negative ``draws``.

    Returns:
      :class:`IdCorrelation`. Cost: (2 + draws + 1) TwoNN estimates, each one exact 2-NN search (O(N²·d)); run it on
      a subsample of a large study (e.g. 1,000–5,000 rows).
    """
    x = as_features(x, "x", min_rows=4)
    y = as_features(y, "y", min_rows=4)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` has {x.shape[0]} rows and `y` has {y.shape[0]}; pass the same N samples in both.")
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 0:
        raise ValueError(f"`draws` must be a non-negative integer, got {draws!r}.")
    dtype = jnp.result_type(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
    if standardize:
        x, y = id_correlation_features(x), id_correlation_features(y)

    def dimension(a: jax.Array) -> float:
        with warnings.catch_warnings():  # duplicates (e.g. repeated fingerprints) are dropped, as for every TwoNN
            warnings.simplefilter("ignore", UserWarning)
            return float(twonn(a, tile=tile, mesh=mesh))

    id_x, id_y = dimension(x), dimension(y)
    id_joint = dimension(jnp.concatenate([x, y], axis=1))
    rng = np.random.default_rng(seed)
    null = np.array([dimension(jnp.concatenate([x, y[rng.permutation(y.shape[0])]], axis=1)) for _ in range(draws)])
    corr = (id_x + id_y - id_joint) / max(id_x, id_y)
    p_value = (1.0 + np.sum(null <= id_joint)) / (1.0 + draws) if draws else float("nan")
    return IdCorrelation(
        corr=float(corr),
        p_value=float(p_value),
        id_x=id_x,
        id_y=id_y,
        id_joint=id_joint,
        null=null,
        null_mean=float(null.mean()) if draws else float("nan"),
        null_std=float(null.std(ddof=1)) if draws > 1 else float("nan"),
    )
