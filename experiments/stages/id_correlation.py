"""Stage: intrinsic-dimension correlation of every model pair with its permutation p-value (Basile et al. 2025;
seed 000 Fig. 2B colours the information-imbalance planes by it), on a seeded subsample of the structures."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from experiments.features import compact, compact_width
from experiments.stages.context import Context, pair_matrix, seeded_rows


def id_correlations(ctx: Context, entry: dict[str, Any]) -> dict[str, Any]:
    """I_d Cor and its p-value for every unordered model pair (config ``analysis.id_correlation``: ``rows``
    structures drawn once with ``seed``, ``draws`` permutations per pair; ``enabled: false`` skips the stage).
    Each model is standardised and row-normalised as the authors do (:func:`jaxalign.metrics.id_correlation_features`)
    and then compacted to one shared width (an isometry), so every pair's searches reuse one compilation.
    Returns the (M, M) symmetric matrices ``corr`` and ``p`` (diagonal NaN), ``rows``, ``draws`` and ``alpha``."""
    from jaxalign.metrics import id_correlation, id_correlation_features

    cfg = dict(ctx.cfg.get("id_correlation") or {})
    if not cfg.get("enabled", True) or len(ctx.models) < 2:
        entry["summary"] = "skipped" + (" (analysis.id_correlation.enabled=false)" if len(ctx.models) >= 2 else "")
        return {}
    draws, seed = int(cfg.get("draws", 49)), int(cfg.get("seed", 0))
    take = seeded_rows(ctx.n, int(cfg.get("rows", 1000)), seed)
    rows = take.size
    names = ctx.models

    @functools.cache
    def prepared(model: str) -> np.ndarray:
        dims = [ctx.features(m).shape[1] for m in names]
        x = np.asarray(id_correlation_features(ctx.features(model)[take]), dtype=np.float32)
        return compact(x, compact_width(rows, dims))

    def pair(i: int, j: int) -> dict[str, float]:
        pair_seed = seed * 100_003 + i * len(names) + j  # a permutation stream of its own per pair
        res = id_correlation(prepared(names[i]), prepared(names[j]), draws=draws, seed=pair_seed, standardize=False)
        return {"corr": res.corr, "p": res.p_value, "id_joint": res.id_joint, "null_mean": res.null_mean}

    items = [(f"{names[i]}|{names[j]}", functools.partial(pair, i, j))
             for i in range(len(names)) for j in range(i + 1, len(names))]  # fmt: skip
    values = ctx.run_items("id_correlation", ctx.key("id_correlation", {**cfg, "rows": rows}), items, entry)
    alpha = float(cfg.get("alpha", 0.05))
    out: dict[str, Any] = {"rows": rows, "draws": draws, "alpha": alpha}
    for field in ("corr", "p"):
        out[field] = pair_matrix(values, names, field, symmetric=True)
    upper = np.triu(np.ones((len(names),) * 2, bool), 1)
    entry["summary"] = (
        f"{int(upper.sum())} pairs on {rows} structures, {draws} permutations each: "
        f"{int((out['p'][upper] <= alpha).sum())} significant at p ≤ {alpha}"
    )
    return out
