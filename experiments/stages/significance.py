"""Stage: which matrix cells exceed chance — a permutation null of every metric (seed 000's single random baseline
becomes a null distribution)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments.cache import read_npz, write_npz
from experiments.stages.context import Context
from experiments.watchdog import beat

#: The matrices the permutation null covers, as the sweep names them → as the app's matrices name them.
NULL_METRICS = {"cknna": "cknna", "mutual_knn": "mutual_knn", "cka": "cka", "unbiased_cka": "unbiased_cka",
                "dcor": "dcor"}  # fmt: skip


def significance(ctx: Context, mats: Mapping[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Which cells of the matrices exceed chance: :func:`jaxalign.statistics.permutation_null` (config
    ``significance``: ``draws`` permutations on a seeded subsample of ``rows`` structures, level ``alpha``) for the
    configured ``metrics`` (default all) — CKNNA at the main k, mutual kNN, CKA, unbiased CKA, dCor, and information
    imbalance at every configured k. Returns the subsample size, draws, alpha and per matrix key the (M, M)
    p-values, null means and standard deviations (on the subsample; the observed values there too), cached as
    .npz."""
    from jaxalign.statistics import permutation_null

    cfg = ctx.cfg.get("significance") or {}
    draws, alpha, seed = int(cfg.get("draws", 49)), float(cfg.get("alpha", 0.05)), int(cfg.get("seed", 0))
    rows = min(int(cfg.get("rows", 1000)), ctx.n)
    wanted = [str(name) for name in cfg.get("metrics", [*NULL_METRICS, "information_imbalance"])]
    unknown = [name for name in wanted if name not in (*NULL_METRICS, "information_imbalance")]
    if unknown:
        raise ValueError(
            f"analysis.significance.metrics has unknown {unknown}; choose from "
            f"{[*NULL_METRICS, 'information_imbalance']}."
        )
    null_metrics = tuple(name for name in NULL_METRICS if name in wanted)
    ii_ks = [k for k in mats["ii_k"] if k <= rows - 1] if "information_imbalance" in wanted else []
    k = min(int(mats["cknna_k_main"]), rows - 2)
    k_mutual = min(int((ctx.cfg.get("mutual_knn") or {}).get("k", 25)), rows - 1)
    exponent = float((ctx.cfg.get("dcor") or {}).get("exponent", 1.0))
    params = {"draws": draws, "rows": rows, "seed": seed, "k": k, "mutual": k_mutual, "ii": ii_ks, "p": exponent,
              "metrics": list(null_metrics)}  # fmt: skip
    path = ctx.root / f"significance-{ctx.key('significance', params)}.npz"
    if path.exists():
        stored = read_npz(path)
        entry["cached"] += 1
    else:

        def progress(label: str, done: int, total: int, cached: bool) -> None:
            beat()

        null = permutation_null(
            {name: ctx.compact_features(name) for name in ctx.models},
            draws=draws,
            rows=rows,
            seed=seed,
            metrics=null_metrics + (("information_imbalance",) if ii_ks else ()),
            k=k,
            mutual_k=k_mutual,
            ii_k=ii_ks or (1,),
            exponent=exponent,
            progress=progress,
        )
        keys = {name: NULL_METRICS[name] for name in null_metrics}
        keys.update({f"information_imbalance@{kk}": f"ii@{kk}" for kk in ii_ks})
        stored = {}
        for name, key in keys.items():
            res = null[name]
            stored.update({f"{key}:p": res.p_value, f"{key}:mean": res.mean, f"{key}:std": res.std})
            stored[f"{key}:observed"] = res.observed
        write_npz(path, stored)
        entry["computed"] += 1
    keys = sorted({name.split(":")[0] for name in stored})
    m = len(ctx.models)
    off = ~np.eye(m, dtype=bool)
    counts = {key: int((stored[f"{key}:p"][off] <= alpha).sum()) for key in keys}
    entry["summary"] = (
        f"{draws} permutations on {rows} structures, alpha = {alpha}: significant off-diagonal cells "
        + ", ".join(f"{key} {c}/{m * (m - 1)}" for key, c in counts.items())
    )
    out: dict[str, Any] = {"draws": draws, "rows": rows, "alpha": alpha, "k": k, "keys": keys}
    out.update({name: np.asarray(v) for name, v in stored.items()})
    return out
