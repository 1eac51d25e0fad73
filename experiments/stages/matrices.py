"""Stage: the model × model alignment matrices — CKNNA (with its k sweep), mutual kNN, CKA, unbiased CKA, dCor and
information imbalance from one :func:`jaxalign.sweep.pairwise_matrices` call (per-model neighbour graphs, then passes
over row tiles that serve every pair at once), journaled under ``<cache>/analysis/sweep``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments.cache import read_npz, write_npz
from experiments.stages.context import Context, progress_bar
from experiments.stages.graphs import model_graphs
from experiments.watchdog import beat


def cknna_ks(cfg: Mapping[str, Any], n: int) -> tuple[list[int], bool]:
    """The k sweep and whether k = N − 1 is added. Sweep values above N/2 are dropped: there the masks cover most
    of the kernel and the masked unbiased HSIC of a few hundred samples swings wildly (the seeds use k ≤ N/20);
    the configured ``cknna.k`` is kept whenever k ≤ N − 2."""
    ck = cfg.get("cknna") or {}
    main = int(ck.get("k", 25))
    ks = {int(k) for k in (ck.get("k_sweep") or []) if 2 <= int(k) <= n // 2}
    ks = sorted(ks | ({main} if 2 <= main <= n - 2 else set()))
    full = bool(ck.get("full_k", True)) and n <= int(ck.get("full_k_max_n", 5000))
    return ks, full


class _SweepProgress:
    """One progress bar per pass of the sweep; counts computed and cached units, beats the watchdog and ticks the
    failure-injection counter after each computed unit."""

    def __init__(self, ctx: Context, entry: dict[str, Any]) -> None:
        self.ctx, self.entry, self.bars = ctx, entry, {}

    def __call__(self, label: str, done: int, total: int, cached: bool) -> None:
        if label not in self.bars:
            self.bars[label] = progress_bar(total, 0, f"matrices: {label}", self.ctx.progress)
        self.bars[label].update(1)
        self.entry["cached" if cached else "computed"] += 1
        if not cached:
            beat()
            self.ctx.tick()
        if done == total:
            self.bars.pop(label).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def alignment_matrices(ctx: Context, entry: dict[str, Any]) -> dict[str, Any]:
    """CKNNA (k and the k sweep), mutual kNN, CKA, unbiased CKA, dCor and information imbalance for every model
    pair, from one :func:`jaxalign.sweep.pairwise_matrices` call whose units are journaled under the cache (per-model
    graphs keyed by the model's features, distance-pass units by the model set). CKNNA(k = N − 1) is computed
    separately from the inner-product graphs alone (the masked sparse sums), for the report's check against unbiased
    CKA. Returns name → (M, M) matrix, plus ``cknna_k`` (the sweep's ks) and ``ii_k``."""
    from jaxalign.metrics import cknna
    from jaxalign.sweep import pairwise_matrices

    cfg, n, names = ctx.cfg, ctx.n, ctx.models
    ks, full = cknna_ks(cfg, n)
    k_mutual = min(int((cfg.get("mutual_knn") or {}).get("k", 25)), n - 1)
    ii_ks = [k for k in (int(k) for k in (cfg.get("information_imbalance") or {}).get("k", [1])) if 1 <= k <= n - 1]
    exponent = float((cfg.get("dcor") or {}).get("exponent", 1.0))
    params = {"ks": ks, "full": full, "mutual": k_mutual, "ii": ii_ks, "exponent": exponent}
    final = ctx.root / f"matrices-{ctx.key('matrices', params)}.npz"
    m = len(names)
    if final.exists():
        stored = read_npz(final)
        entry["cached"] += 1
    else:
        progress = _SweepProgress(ctx, entry)
        try:
            swept = pairwise_matrices(
                {name: ctx.compact_features(name) for name in names},
                metrics=("cknna", "mutual_knn", "cka", "unbiased_cka", "dcor", "information_imbalance")
                if ks
                else ("mutual_knn", "cka", "unbiased_cka", "dcor", "information_imbalance"),
                k=ks or k_mutual,
                mutual_k=k_mutual,
                ii_k=ii_ks,
                exponent=exponent,
                journal=ctx.root / "sweep",
                progress=progress,
            )
        finally:
            progress.close()
        stored = {f"cknna@{k}": swept[f"cknna@{k}"] for k in ks}
        stored.update({name: swept[name] for name in ("mutual_knn", "cka", "unbiased_cka", "dcor")})
        stored.update({f"ii@{k}": swept[f"information_imbalance@{k}"] for k in ii_ks})
        if full:
            graphs = model_graphs(ctx, entry, ip=True)
            mat = np.full((m, m), np.nan)
            for i in range(m):
                for j in range(m):
                    gi, gj = graphs[names[i]][0], graphs[names[j]][0]
                    mat[i, j] = float(cknna(None, None, k=n - 1, graph_x=gi, graph_y=gj))
            stored["cknna@full"] = mat
        write_npz(final, stored)
    result: dict[str, Any] = {"cknna_k": ks, "ii_k": ii_ks, "full_k": full, "n": n, **stored}
    k_main = int((cfg.get("cknna") or {}).get("k", 25))
    result["cknna"] = result.get(f"cknna@{k_main}", result[f"cknna@{ks[-1]}"] if ks else result["cknna@full"])
    result["cknna_k_main"] = k_main if f"cknna@{k_main}" in result else (ks[-1] if ks else n - 1)
    entry["summary"] = (
        f"{m} models × {m}, N = {n}: CKNNA (k = {result['cknna_k_main']}, sweep {ks}{' + N−1' if full else ''}), "
        f"mutual kNN, CKA, unbiased CKA, dCor, Δ (k = {ii_ks})"
    )
    return result
