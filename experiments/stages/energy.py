"""Stage: energy-regression errors of the models with an energy head (seed 000 eqs. 1–4), for Figs. 1B and 3, the
error maps of Fig. 2D, and the composition fits of Figs. B2–B4 (each model's energies, their linear compositional
fit and the deviations from it, on a seeded subsample of :data:`FIT_ROWS` structures)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments.stages.context import Context, seeded_rows

#: structures (a seeded subsample) whose composition fits are kept for seed 000 Figs. B2 and B3 (the paper: 1,000).
FIT_ROWS = 1000


def _residuals(e: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """E − (wᵀc + b), least squares (seed 000 eqs. 1–3)."""
    design = np.concatenate([comp, np.ones((comp.shape[0], 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, e, rcond=None)
    return e - design @ coef


def energy_errors(ctx: Context, dataset_summary: Mapping[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Energy-regression MAE per model with energies (seed 000 eqs. 1–4) against ``analysis.energy.reference``:
    ``dataset`` (reference energies in the data), ``consensus`` (for each model, the median over the *other*
    energy models of their composition-detrended energies) or a model id; ``auto`` = dataset when every structure
    has one, else consensus. Also per-structure |ΔE_ref − ΔE_f| per atom, for the error maps."""
    from jaxalign.energy import composition_matrix, energy_regression_mae

    ref_sel = (ctx.cfg.get("energy") or {}).get("reference", "auto")
    models = [m for m in ctx.models if ctx.aligned.embeddings[m].energy is not None]

    def skip(reason: str) -> dict[str, Any]:
        entry["summary"] = f"skipped: {reason}"
        return {"models": [], "reference": None, "target": None, "note": reason}

    if not models:
        return skip("no compared model predicts energies")
    first = ctx.aligned.embeddings[models[0]]
    if first.numbers is None:
        return skip("the dataset has no 3D structures (no compositions)")
    comp = np.asarray(composition_matrix(first.numbers, first.n_atoms)[0], dtype=np.float64)
    n_atoms = first.n_atoms.astype(np.float64)
    ref_energy = {r["id"]: r["energy"] for r in dataset_summary.get("records", [])}
    e_data = np.array([np.nan if ref_energy.get(i) is None else ref_energy[i] for i in ctx.aligned.ids.tolist()])
    if ref_sel == "auto":
        ref_sel = "dataset" if np.isfinite(e_data).all() else "consensus"
    if ref_sel == "dataset" and not np.isfinite(e_data).all():
        raise ValueError("analysis.energy.reference=dataset but some structures have no reference energy.")
    if ref_sel not in ("dataset", "consensus") and ref_sel not in models:
        raise ValueError(f"analysis.energy.reference={ref_sel!r}: use auto, dataset, consensus or one of {models}.")
    if ref_sel == "consensus" and len(models) < 2:
        return skip(f"no reference energies in the data and a consensus needs ≥ 2 energy models (have {models})")
    energies = {m: np.asarray(ctx.aligned.embeddings[m].energy, dtype=np.float64) for m in models}
    detrended = {m: _residuals(e, comp) for m, e in energies.items()}
    out: dict[str, Any] = {
        "models": models,
        "reference": ref_sel,
        "mae_ev": {},
        "mae_mev_atom": {},
        "per_structure": {},
    }
    shown = seeded_rows(len(n_atoms), FIT_ROWS)
    out["composition_fit"] = {"rows": shown.tolist(), "models": {}}
    for m in models:
        if ref_sel == "dataset":
            ref = e_data
        elif ref_sel == "consensus":
            ref = np.median(np.stack([detrended[o] for o in models if o != m]), axis=0)
        else:
            ref = energies[ref_sel]
        mae = float(energy_regression_mae(ref, energies[m], comp))
        ref_dev = _residuals(ref, comp)
        per = np.abs(ref_dev - detrended[m]) / n_atoms * 1000.0
        out["composition_fit"]["models"][m] = {  # seed 000 Figs. B2, B3 on a seeded subsample
            "energy": energies[m][shown],
            "fit": (energies[m] - detrended[m])[shown],
            "deviation": detrended[m][shown],
            "reference_deviation": ref_dev[shown],
        }
        out["mae_ev"][m] = mae
        out["mae_mev_atom"][m] = float(per.mean())
        out["per_structure"][m] = per
    if ref_sel == "dataset":
        out["target"] = _residuals(e_data, comp)
    elif ref_sel == "consensus":
        out["target"] = np.median(np.stack(list(detrended.values())), axis=0)
    else:
        out["target"] = detrended[ref_sel]
    entry["computed"] += len(models)
    best = min(out["mae_mev_atom"], key=out["mae_mev_atom"].get)
    entry["summary"] = (
        f"{len(models)} models vs {ref_sel} reference; lowest error {best} ({out['mae_mev_atom'][best]:.1f} meV/atom)"
    )
    return out
