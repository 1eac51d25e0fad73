"""Stage: 2-D maps of the structures per model — PCovR against the energy target, and UMAP when installed
(seed 000 Fig. 2A, C5; seed 003's PCovR maps)."""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.cache import content_key, read_npz, write_npz
from experiments.stages.context import Context
from experiments.watchdog import beat


def structure_maps(ctx: Context, target: np.ndarray | None, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """2-D PCovR map of the structures per model (α = ``analysis.maps.alpha``; target: the reference energy
    residual when there is one, else a PCA, α = 1)."""
    from jaxalign.preprocessing import center_scale_total_variance
    from jaxalign.projection import pcovr

    alpha = float((ctx.cfg.get("maps") or {}).get("alpha", 0.5))
    y = np.zeros(ctx.n) if target is None else np.asarray(target, dtype=np.float64)
    if target is None or not np.isfinite(y).all() or y.std() == 0:
        y, alpha = np.zeros(ctx.n), 1.0
    else:
        y = (y - y.mean()) / y.std()
    key = ctx.key("maps", {"alpha": alpha, "y": content_key("y", {"y": np.round(y, 8).tolist()})})
    path = ctx.root / f"maps-{key}.npz"
    entry["summary"] = f"PCovR (α = {alpha:g}) maps of {ctx.n} structures for {len(ctx.models)} models"
    if path.exists():
        entry["cached"] += len(ctx.models)
        return read_npz(path)
    out = {}
    for m in ctx.models:
        x = np.asarray(center_scale_total_variance(ctx.compact_features(m)), dtype=np.float32)
        fit = pcovr(x, y.astype(np.float32), alpha=alpha, n_components=2)
        out[m] = np.asarray(fit.transform(x))
        entry["computed"] += 1
        beat()
    write_npz(path, out)
    return out


def umap_maps(ctx: Context, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """2-D UMAP embedding of the structures per model when ``umap-learn`` is installed (``analysis.maps.umap``:
    ``auto`` = when importable, ``false`` = never); empty otherwise."""
    setting = (ctx.cfg.get("maps") or {}).get("umap", "auto")
    if setting is False or setting == "false":
        return {}
    try:
        import umap
    except ImportError:
        if setting is True:
            raise ValueError(
                "analysis.maps.umap=true but umap-learn is not installed (pip install umap-learn)."
            ) from None
        return {}
    n_neighbors = min(15, ctx.n - 1)
    key = ctx.key("umap", {"n_neighbors": n_neighbors, "version": getattr(umap, "__version__", "?")})
    path = ctx.root / f"umap-{key}.npz"
    if path.exists():
        entry["cached"] += len(ctx.models)
        return read_npz(path)
    out = {}
    for m in ctx.models:
        reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=0, n_jobs=1)  # seeded: one thread
        out[m] = np.asarray(reducer.fit_transform(ctx.features(m)), dtype=np.float32)
        entry["computed"] += 1
        beat()
    write_npz(path, out)
    return out
