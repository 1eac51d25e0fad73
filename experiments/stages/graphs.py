"""Per-model neighbour graphs the stages share (intrinsic dimension's Euclidean graph, CKNNA at k = N − 1),
cached as .npz under ``<cache>/analysis/graphs``."""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.cache import read_npz, write_npz
from experiments.stages.context import Context
from experiments.watchdog import beat


def model_graphs(ctx: Context, entry: dict[str, Any], *, ip: bool) -> dict[str, tuple[Any, Any]]:
    """Per model: the Euclidean graph (intrinsic dimension) and, with ``ip``, the inner-product graph at k = N − 1
    (the report's CKNNA(k = N − 1) check); cached as .npz."""
    from jaxalign import NeighborGraph, knn

    n = ctx.n
    ii_ks = [int(k) for k in (ctx.cfg.get("information_imbalance") or {}).get("k", [1])]
    id_cfg = ctx.cfg.get("intrinsic_dimension") or {}
    k_base = max([*ii_ks, int(id_cfg.get("mle_k", 20)), 2])
    out = {}
    for model in ctx.models:
        # identical rows (e.g. one fingerprint for a molecule and its strained copy) must be skipped to reach k
        # distinct neighbours: widen the Euclidean graph by the largest multiplicity
        _, counts = np.unique(ctx.compact_features(model), axis=0, return_counts=True)
        k_eu = min(n - 1, (k_base + 1) * int(counts.max()) + int(id_cfg.get("duplicate_margin", 8)))
        k_ip = n - 1 if ip else 0
        key = ctx.key("graphs", {"model": model, "k_ip": k_ip, "k_eu": k_eu})
        path = ctx.root / "graphs" / f"{model}-{key}.npz"
        if path.exists():
            z = read_npz(path)
            entry["cached"] += 1
        else:
            x = ctx.compact_features(model)
            ge = knn(x, k_eu, metric="euclidean")
            z = {"eu_i": ge.indices, "eu_v": ge.values}
            if k_ip:
                gi = knn(x, k_ip, metric="ip")
                z.update(ip_i=gi.indices, ip_v=gi.values)
            write_npz(path, z)
            entry["computed"] += 1
            beat()
        ip_graph = NeighborGraph(z["ip_i"], z["ip_v"], "ip", True) if "ip_i" in z else None
        out[model] = (ip_graph, NeighborGraph(z["eu_i"], z["eu_v"], "euclidean", True))
    return out
