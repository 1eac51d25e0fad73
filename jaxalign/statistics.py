"""Significance and uncertainty of a whole study's matrices: a permutation null and bootstrap confidence intervals.

Seed 000 reads alignment against one random-baseline model; a null *distribution* says which cells exceed chance.

- :func:`permutation_null`: each draw shuffles the rows of every model with a permutation of its own (fresh per
  model and draw), which keeps every embedding's geometry and breaks the row correspondence, and recomputes every
  matrix with :func:`jaxalign.sweep.pairwise_matrices` (one sweep per draw). Per cell: the null mean and standard
  deviation and the permutation p-value p = (1 + #{null at least as aligned as observed}) / (1 + draws) (Phipson &
  Smyth 2010, "Permutation p-values should never be zero"), "aligned" meaning larger for the similarity metrics and
  smaller for information imbalance (Δ ≈ 0 when the source predicts the target, ≈ 1 without information). The
  diagonal (a model against itself) is not tested: its p-values are NaN. ``draws_per_sweep = B > 1`` batches the
  draws like the matrices instead: the shuffled copies of B draws join the M originals in one sweep that computes only
  the cells between originals and copies (``between``), draw d of cell (a, b) being metric(x_a, P_db x_b) — the same
  null distribution. On this project's 2-core CPU the batched form was slower (M = 8, N = 2,000, 16 draws: 43 s vs
  28 s warm; it computes both directions of every cell), so one sweep per draw is the default; batching is for
  devices where per-sweep overheads dominate.
- :func:`bootstrap`: each draw resamples the rows with replacement (one resample shared by all models, so pairs stay
  paired) and recomputes every matrix; per cell the percentile interval at ``level`` and the bootstrap standard error.
  Resampled rows are exact duplicates: the kNN metrics break their ties by index and information imbalance ranks them
  exactly, as on any data with duplicates. Each draw has its own rows, so each is one sweep (draws run in sequence).

Both run on ``rows`` structures drawn once without replacement (a documented subsample: the null of a 50,000-row
study is well estimated on a few thousand rows at a fraction of the cost); ``rows=None`` uses all. Sweeps of the
same shapes reuse one set of compiled programs. Draws are seeded per index (and per model), so a result does not
depend on how the draws are batched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign.sweep import pairwise_matrices

__all__ = ["MatrixInterval", "MatrixNull", "bootstrap", "permutation_null"]

#: Metrics for which a smaller value means more shared information.
LOWER_IS_ALIGNED = ("information_imbalance",)


@dataclasses.dataclass(frozen=True)
class MatrixNull:
    """Permutation null of one (M, M) matrix: ``observed`` on the subsample, null ``mean`` and ``std``, ``p_value``
    (one-sided, towards alignment), and the (draws, M, M) ``draws``."""

    observed: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    p_value: np.ndarray
    draws: np.ndarray

    def significant(self, alpha: float = 0.05) -> np.ndarray:
        """(M, M) bool: cells whose p-value is at most ``alpha``."""
        return self.p_value <= alpha


@dataclasses.dataclass(frozen=True)
class MatrixInterval:
    """Bootstrap of one (M, M) matrix: ``observed``, percentile interval [``low``, ``high``] at ``level``, standard
    error ``std`` and the (draws, M, M) ``draws``."""

    observed: np.ndarray
    low: np.ndarray
    high: np.ndarray
    std: np.ndarray
    level: float
    draws: np.ndarray


def _check_draws(draws: int, name: str = "draws") -> int:
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {draws!r}.")
    return int(draws)


def _named(features: Sequence[Any] | Mapping[str, Any]) -> dict[str, np.ndarray]:
    if isinstance(features, Mapping):
        return {str(k): np.asarray(v) for k, v in features.items()}
    return {str(i): np.asarray(v) for i, v in enumerate(features)}


def _subsample(feats: dict[str, np.ndarray], rows: int | None, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = next(iter(feats.values())).shape[0]
    if rows is None or rows >= n:
        return feats
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 4:
        raise ValueError(f"`rows` must be an integer >= 4 (or None for all {n} rows), got {rows!r}.")
    take = np.sort(rng.choice(n, size=int(rows), replace=False))
    return {k: v[take] for k, v in feats.items()}


def _matrices(feats: dict[str, np.ndarray], kwargs: dict) -> dict[str, np.ndarray]:
    out = pairwise_matrices(feats, **kwargs)
    out.pop("models")
    return out


def _observed_and_draws(
    features: Any, rows: int | None, seed: int, draws: int, redraw: Any, sweep: dict
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The matrices on the seeded subsample and, per name, the (draws, M, M) matrices of ``redraw(feats, n, draw)``."""
    feats = _subsample(_named(features), rows, np.random.default_rng(seed))
    observed = _matrices(feats, sweep)
    n = next(iter(feats.values())).shape[0]
    samples: dict[str, list[np.ndarray]] = {name: [] for name in observed}
    for draw in range(draws):
        for name, mat in _matrices(redraw(feats, n, draw), sweep).items():
            samples[name].append(mat)
    return observed, {name: np.stack(mats) for name, mats in samples.items()}


def permutation_null(
    features: Sequence[Any] | Mapping[str, Any],
    *,
    draws: int = 100,
    rows: int | None = 2000,
    seed: int = 0,
    draws_per_sweep: int | None = None,
    **sweep: Any,
) -> dict[str, MatrixNull]:
    """Permutation null of every matrix of :func:`~jaxalign.sweep.pairwise_matrices` (module docstring).

    Args:
      features: as for :func:`~jaxalign.sweep.pairwise_matrices`.
      draws: number of permutations (the smallest attainable p-value is 1/(draws + 1)).
      rows: structures of the subsample the null is computed on (None: all).
      seed: seeds the subsample and, with the draw's and the model's index, each permutation.
      draws_per_sweep: None or 1 for one sweep per draw; B > 1 batches B draws' shuffled copies in one sweep.
      sweep: keyword arguments of :func:`~jaxalign.sweep.pairwise_matrices` (metrics, k, ii_k, ...; not journal,
        not between).

    Returns:
      name → :class:`MatrixNull` for every matrix the sweep returns.

    Raises:
      ValueError: for a bad ``draws``, ``rows`` or ``draws_per_sweep``, and as the sweep for bad features.
    """
    draws = _check_draws(draws)
    if "between" in sweep or "journal" in sweep:
        raise ValueError("`between` and `journal` are set by the null itself; leave them out.")
    feats = _subsample(_named(features), rows, np.random.default_rng(seed))
    names = list(feats)
    m, n = len(names), next(iter(feats.values())).shape[0]
    per = 1 if draws_per_sweep is None else _check_draws(draws_per_sweep, "draws_per_sweep")
    observed = _matrices(feats, sweep)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in observed}

    def shuffled(draw: int, j: int, x: np.ndarray) -> np.ndarray:
        return x[np.random.default_rng([seed, draw, j]).permutation(n)]

    for first in range(0, draws, per):
        batch = range(first, min(draws, first + per))
        if per == 1:
            swept = _matrices({name: shuffled(first, j, x) for j, (name, x) in enumerate(feats.items())}, sweep)
            for name, mat in swept.items():
                samples[name].append(mat)
            continue
        copies = {f"{name}~{draw}": shuffled(draw, j, x) for draw in batch for j, (name, x) in enumerate(feats.items())}
        swept = _matrices({**feats, **copies}, {**sweep, "between": (names, list(copies))})
        for name, mat in swept.items():
            for b, _ in enumerate(batch):
                samples[name].append(mat[:m, m * (b + 1) : m * (b + 2)])  # (original a, copy of b)
    out = {}
    for name, obs in observed.items():
        null = np.stack(samples[name])
        lower = name.startswith(LOWER_IS_ALIGNED)
        extreme = (null <= obs) if lower else (null >= obs)
        p = (1.0 + extreme.sum(0)) / (1.0 + draws)
        np.fill_diagonal(p, np.nan)  # a model against itself: not tested
        out[name] = MatrixNull(obs, null.mean(0), null.std(0, ddof=1) if draws > 1 else np.zeros_like(obs), p, null)
    return out


def bootstrap(
    features: Sequence[Any] | Mapping[str, Any],
    *,
    draws: int = 100,
    rows: int | None = 2000,
    level: float = 0.95,
    seed: int = 0,
    **sweep: Any,
) -> dict[str, MatrixInterval]:
    """Bootstrap percentile intervals of every matrix of :func:`~jaxalign.sweep.pairwise_matrices` (module
    docstring); arguments as :func:`permutation_null`, plus ``level`` ∈ (0, 1)."""
    draws = _check_draws(draws)
    if isinstance(level, bool) or not isinstance(level, float | int) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"`level` must be a number in (0, 1), got {level!r}.")

    def resample(feats: dict[str, np.ndarray], n: int, draw: int) -> dict[str, np.ndarray]:
        take = np.random.default_rng([seed, draw, 1]).integers(0, n, size=n)
        return {k: v[take] for k, v in feats.items()}

    observed, samples = _observed_and_draws(features, rows, seed, draws, resample, sweep)
    tail = (1.0 - float(level)) / 2.0
    out = {}
    for name, obs in observed.items():
        boot = samples[name]
        low, high = np.quantile(boot, [tail, 1.0 - tail], axis=0)
        std = boot.std(0, ddof=1) if draws > 1 else np.zeros_like(obs)
        out[name] = MatrixInterval(obs, low, high, std, float(level), boot)
    return out
