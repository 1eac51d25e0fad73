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


def cumulant_maps(ctx: Context, target: np.ndarray | None, entry: dict[str, Any]) -> dict[str, Any]:
    """Seed 003 Fig. 9: PCovR maps of the structure descriptors built from the mean atom features (κ̃(1)) and from
    the cumulants up to the highest of ``analysis.reconstruction.cumulant_orders`` (φ(8), as in the seed), for one
    model per MLIP family
    (at most four), with the energy per atom as the PCovR target (α = ``analysis.maps.alpha``). The seed's target is
    the cohesive energy; here it is the composition-detrended reference energy per atom (the linear fit in the
    element counts absorbs the isolated-atom energies). The cumulants use the full atom features (no PCA, §III F).
    Returns ``{"models", "order", "subset", "energy_per_atom", "phi1:<m>", "phiK:<m>"}`` or {} (fewer than one
    model with atom features and energies)."""
    from experiments.stages.reconstruction import reconstruction_models
    from jaxalign.descriptors import cumulant_descriptors
    from jaxalign.preprocessing import center_scale_total_variance
    from jaxalign.projection import pcovr

    models = list({ctx.aligned.family(m): m for m in reversed(reconstruction_models(ctx))}.values())[::-1][:4]
    if not models:
        return {}
    rc = ctx.cfg.get("reconstruction") or {}
    order = max(2, *(int(o) for o in rc.get("cumulant_orders") or [rc.get("cumulant_order") or 8]))
    alpha = float((ctx.cfg.get("maps") or {}).get("alpha", 0.5))
    n_atoms = ctx.aligned.embeddings[models[0]].n_atoms.astype(np.float64)
    y = None if target is None else np.asarray(target, dtype=np.float64) / n_atoms
    if y is None or not np.isfinite(y).all() or y.std() == 0:
        y, alpha = None, 1.0
    key = ctx.key("cumulant_maps", {"models": models, "order": order, "alpha": alpha, "y": None if y is None else
                                    content_key("y", {"y": np.round(y, 8).tolist()})})  # fmt: skip
    path = ctx.root / f"cumulant-maps-{key}.npz"
    if path.exists():
        entry["cached"] += len(models)
        out = read_npz(path)
    else:
        ys = np.zeros(ctx.n, np.float32) if y is None else ((y - y.mean()) / y.std()).astype(np.float32)
        out = {}
        for m in models:
            emb = ctx.aligned.embeddings[m]
            a = np.asarray(emb.atom_features, dtype=np.float32)
            phi = np.asarray(cumulant_descriptors(a, emb.n_atoms, order=order), dtype=np.float32)
            width = emb.atom_features.shape[1]
            for tag, x in (("phi1", phi[:, :width]), ("phiK", phi)):
                xs = np.asarray(center_scale_total_variance(x), dtype=np.float32)
                out[f"{tag}:{m}"] = np.asarray(pcovr(xs, ys, alpha=alpha, n_components=2).transform(xs))
            entry["computed"] += 1
            beat()
        write_npz(path, out)
    subset = np.array([str(i).split("/")[0] for i in ctx.aligned.ids.tolist()])
    entry["summary"] += f"; κ̃(1) and φ({order}) PCovR maps for {', '.join(models)}"
    return {"models": models, "order": order, "alpha": alpha, "subset": subset, "energy_per_atom": y, **out}
