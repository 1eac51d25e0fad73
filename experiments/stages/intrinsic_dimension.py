"""Stage: intrinsic dimension of each model's embedding — TwoNN, MLE and per-structure Levina–Bickel estimates
(seed 000 Fig. 1E, C7)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from experiments.stages.context import Context
from experiments.stages.graphs import model_graphs


def intrinsic_dimensions(ctx: Context, entry: dict[str, Any]) -> dict[str, Any]:
    """TwoNN and MLE per model, plus per-point Levina–Bickel estimates (for the violins)."""
    import warnings

    import jax

    from jaxalign.metrics import mle_id, twonn
    from jaxalign.metrics.intrinsic_dimension import distinct_neighbor_distances

    id_cfg = ctx.cfg.get("intrinsic_dimension") or {}
    k = min(int(id_cfg.get("mle_k", 20)), ctx.n - 2)
    graphs = model_graphs(ctx, {"computed": 0, "cached": 0}, ip=False)
    distinct = jax.jit(distinct_neighbor_distances, static_argnames=("k",))

    def one(model: str) -> dict[str, Any]:
        _, ge = graphs[model]
        x = ctx.compact_features(model)
        has_dup = bool((np.asarray(ge.values[:, 0]) == 0).any())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d2 = twonn(x) if has_dup else twonn(x, graph=ge)  # with x: log ratios from exact differences
            dm = mle_id(x, k=k) if has_dup else mle_id(x, k=k, graph=ge)
        dist, keep, complete = (np.asarray(a) for a in distinct(ge.indices, ge.values, k=k))
        with np.errstate(divide="ignore", invalid="ignore"):
            local = (k - 1) / np.log(dist[:, -1:] / dist).sum(1)
        local = np.where(complete, local, np.nan)[keep]
        return {"twonn": d2, "mle": dm, "local_mle": local, "n_distinct": int(keep.sum())}

    items = [(m, functools.partial(one, m)) for m in ctx.models]
    values = ctx.run_items(
        "intrinsic_dimension", ctx.key("intrinsic_dimension", {"k": k, "id": dict(id_cfg)}), items, entry
    )
    entry["summary"] = "TwoNN " + ", ".join(f"{m} {values[m]['twonn']:.1f}" for m in ctx.models)
    return {"k": k, **{m: values[m] for m in ctx.models}}
