"""Stage 7 — figures: every plot of both seeds, drawn with :mod:`jaxalign.plots` and saved as PNG and SVG.

:func:`figure_plan` lists the figures a run can draw from its results (stem, title, one line on how to read it,
and a function drawing it); :func:`draw_figures` draws them into a directory. The experiment app draws into a
temporary directory of the cache and renames it into place, so a rerun with the same results copies the finished
figures instead of drawing them again.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.stages.tree import BASELINE_FAMILY
from experiments.watchdog import beat

__all__ = ["Figure", "cross_plan", "draw_figures", "figure_plan", "representative_pairs"]

#: per-structure intrinsic-dimension estimates above this are degenerate (equidistant neighbours) and not drawn.
LOCAL_ID_CAP = 1000.0


@dataclasses.dataclass(frozen=True)
class Figure:
    """One planned figure: file ``stem``, ``title`` (as in the papers), ``how_to_read`` and a ``draw()`` thunk."""

    stem: str
    title: str
    how_to_read: str
    draw: Callable[[], Any]


def representative_pairs(names: Sequence[str], families: Sequence[str], limit: int = 8) -> list[tuple[str, str]]:
    """A few model pairs for line plots: one within-family pair per family, then cross-family pairs between the
    first models of each family, then pairs with the random baseline; at most ``limit``."""
    first: dict[str, str] = {}
    for n, f in zip(names, families, strict=True):
        first.setdefault(f, n)
    within, cross, random = [], [], []
    for f in first:
        members = [n for n, g in zip(names, families, strict=True) if g == f]
        if len(members) >= 2 and f != BASELINE_FAMILY:
            within.append((members[0], members[1]))
    for f, g in itertools.combinations(first, 2):
        pair = (first[f], first[g])
        (random if BASELINE_FAMILY in (f, g) else cross).append(pair)
    out = within[:3] + cross[:3] + random[:2]
    return out[:limit]


def _metric_label(name: str, k_main: int) -> str:
    labels = {
        "cknna": f"CKNNA (k = {k_main})",
        "mutual_knn": "mutual kNN",
        "cka": "CKA (linear)",
        "unbiased_cka": "unbiased CKA",
        "dcor": "distance correlation",
    }
    if name.startswith("ii@"):
        return f"information imbalance Δ(row → column), k = {name[3:]}"
    return labels.get(name, name)


#: Where seed 000 shows each further metric matrix (App. A defines them all; only dCor has its own figure).
SEED000_SOURCE = {
    "dcor": "Fig. C8",
    "mutual_knn": "App. A (no figure in seed 000)",
    "cka": "App. A (no figure in seed 000)",
    "unbiased_cka": "App. A (no figure in seed 000)",
}


def figure_plan(results: Mapping[str, Any]) -> list[Figure]:
    """The figures the results support, in report order."""
    from jaxalign.plots import alignment as pa
    from jaxalign.plots import energy as pe
    from jaxalign.plots import intrinsic_dimension as pid
    from jaxalign.plots import maps as pm
    from jaxalign.plots import reconstruction as pr
    from jaxalign.plots.style import SEQUENTIAL_CMAP
    from jaxalign.plots.tree import plot_tree
    from jaxalign.tree import Tree

    names: list[str] = list(results["models"])
    families: list[str] = list(results["families"])
    mats = results["matrices"]
    k_main = int(mats["cknna_k_main"])
    settings = results.get("figure_settings") or {}
    meta = results.get("metadata") or {}
    include_self = bool(settings.get("family_include_self", False))
    fam = dict(zip(names, families, strict=True))
    plan: list[Figure] = []

    # --- seed 000 Fig. 1A / 1C and the other metric matrices
    plan.append(
        Figure(
            "fig1a_cknna_heatmap",
            f"Fig. 1A / C6 — CKNNA (k = {k_main}) between every pair of models",
            "Brighter = more similar neighbourhoods; white lines separate model families (colour strips).",
            lambda: pa.alignment_heatmap(
                mats["cknna"], names, families=fam, title=f"CKNNA (k = {k_main})", cbar_label=f"CKNNA (k = {k_main})"
            ),
        )
    )
    plan.append(
        Figure(
            "fig1c_cknna_family_heatmap",
            "Fig. 1C / C6 — CKNNA condensed to model families",
            (
                "Cell (a, b) is the mean CKNNA over the block of families a and b, each model with itself included "
                "as in seed 000"
                if include_self
                else "Cell (a, b) is the mean CKNNA between distinct models of families a and b"
            )
            + "; the outlined diagonal is within-family alignment.",
            lambda: pa.family_heatmap(
                mats["cknna"],
                names,
                fam,
                title=f"CKNNA (k = {k_main}) by family",
                cbar_label=f"mean CKNNA (k = {k_main})",
                include_self=include_self,
            ),
        )
    )
    for metric in ("mutual_knn", "cka", "unbiased_cka", "dcor"):
        plan.append(
            Figure(
                f"figC_{metric}_heatmap",
                f"{SEED000_SOURCE[metric]} — {_metric_label(metric, k_main)} between every pair of models",
                "Same layout as Fig. 1A for another alignment measure; compare its ordering of pairs with CKNNA's.",
                functools.partial(
                    pa.alignment_heatmap,
                    mats[metric],
                    names,
                    families=fam,
                    title=_metric_label(metric, k_main),
                    cbar_label=_metric_label(metric, k_main),
                ),
            )
        )
    for k in mats["ii_k"]:
        plan.append(
            Figure(
                f"figC_information_imbalance_k{k}_heatmap",
                f"App. A.4 (seed 000 draws it as Fig. 2B / C9 planes) — information imbalance Δ(row → column), k = {k}",
                "Low Δ(A→B) means A's neighbourhoods predict B's; compare a cell with its mirror to see which model is "
                "more informative.",
                functools.partial(
                    pa.alignment_heatmap,
                    mats[f"ii@{k}"],
                    names,
                    families=fam,
                    title=f"Δ(row → column), k = {k}",
                    cbar_label=f"information imbalance (k = {k}; lower = more aligned)",
                    cmap=f"{SEQUENTIAL_CMAP}_r",  # reversed: aligned pairs take the CKNNA heatmaps' colour
                ),
            )
        )

    # --- Fig. 1B alignment vs energy error
    energy = results.get("energy") or {}
    per_structure = settings.get("energy_unit") == "ev_per_structure"  # seed 000 eqs. 1–4; else meV/atom
    n_params = results.get("n_params") or {}
    mae = energy.get("mae_ev" if per_structure else "mae_mev_atom") or {}
    if len(mae) >= 2:
        best = min(mae, key=mae.get)
        col = names.index(best)
        err = np.array([mae.get(n, np.nan) for n in names])
        # Fig. 1B measures alignment with CKNNA; Fig. 3 with dCor, a global measure, for out-of-distribution inputs
        for stem, title, key, label in (
            ("fig1b_alignment_vs_energy_error", "Fig. 1B", "cknna", f"CKNNA (k = {k_main})"),
            ("fig3_dcor_vs_energy_error", "Fig. 3", "dcor", "dCor"),
        ):
            plan.append(
                Figure(
                    stem,
                    f"{title} — {label} with the most accurate model ({best}) against energy error",
                    f"x: {label} with {best}; y: energy-regression MAE against the {energy['reference']} reference; "
                    "point area grows with the model's parameter count. Points falling from left to right mean that "
                    "better models align more with the best one.",
                    functools.partial(
                        pa.alignment_vs_energy_error,
                        mats[key][:, col],
                        err,
                        names,
                        families=fam,
                        reference_name=best,
                        n_params=[float(n_params.get(n) or np.nan) for n in names],
                        xlabel=f"{label} with {best}",
                        ylabel="energy MAE (eV per structure)" if per_structure else "energy MAE (meV/atom)",
                    ),
                )
            )

    # --- Figs. B2–B4: how the energy-regression error is built
    fits = (energy.get("composition_fit") or {}).get("models") or {}
    if fits:
        n_fit = len((energy.get("composition_fit") or {}).get("rows") or [])
        plan.append(
            Figure(
                "figB2_composition_fits",
                "Fig. B2 — each model's energies against their linear compositional fit",
                f"One panel per model with an energy head, {n_fit} structures: x the model's energy, y the "
                "least-squares fit of those energies by element counts plus a constant (seed 000 eq. 1); the title "
                "gives the mean "
                "distance to y = x — what the fit leaves is the structural energy the error compares.",
                functools.partial(
                    pe.parity_grid,
                    {m: (np.asarray(f["energy"]), np.asarray(f["fit"])) for m, f in fits.items()},
                    xlabel="model energy (eV per structure)",
                    ylabel="linear compositional fit (eV per structure)",
                ),
            )
        )
        plan.append(
            Figure(
                "figB3_composition_deviations",
                "Fig. B3 — deviations from the compositional fit: reference against model",
                f"x: the {energy['reference']} reference's deviation from its own compositional fit, ΔE_true; y: the "
                "model's, ΔE_f (seed 000 eqs. 2–3); the energy-regression MAE is the mean |ΔE_f − ΔE_true| (eq. 4).",
                functools.partial(
                    pe.parity_grid,
                    {m: (np.asarray(f["reference_deviation"]), np.asarray(f["deviation"])) for m, f in fits.items()},
                    xlabel="reference deviation ΔE_true (eV per structure)",
                    ylabel="model deviation ΔE_f (eV per structure)",
                ),
            )
        )
        plan.append(
            Figure(
                "figB4_energy_error_by_level_of_theory",
                "Fig. B4 — energy-regression error of each model, by the level of theory it was trained on",
                f"Bars: MAE against the {energy['reference']} reference, smallest on top; colour: the DFT level of "
                "theory of the model's training data (extractors.metadata; models.meta.<id>.level_of_theory corrects "
                "it).",
                functools.partial(
                    pe.energy_error_bars,
                    mae,
                    groups={m: (meta.get(m) or {}).get("level_of_theory", "—") for m in mae},
                    xlabel="energy MAE (eV per structure)" if per_structure else "energy MAE (meV/atom)",
                ),
            )
        )

    # --- Fig. 1D CKNNA vs dCor
    plan.append(
        Figure(
            "fig1d_cknna_vs_dcor",
            "Fig. 1D — CKNNA against distance correlation, one point per model pair",
            "Agreement of a local (CKNNA) and a global (dCor) measure; the title gives the Spearman rank correlation.",
            lambda: pa.metric_scatter(
                mats["cknna"],
                mats["dcor"],
                names,
                xlabel=f"CKNNA (k = {k_main})",
                ylabel="distance correlation",
                families=fam,
            ),
        )
    )

    # --- Fig. 1E intrinsic dimension
    ids = results.get("intrinsic_dimension") or {}
    if ids:
        # a point whose k neighbours sit at (nearly) one distance (binary fingerprints) has a degenerate estimate
        # (→ ∞); such values are shown as n/a rather than stretching the axis over many decades
        local = {n: np.asarray(ids[n]["local_mle"], dtype=float) for n in names}
        local = {n: np.where(v <= LOCAL_ID_CAP, v, np.nan) for n, v in local.items()}
        glob = {n: float(ids[n]["twonn"]) for n in names}
        spread = max(glob.values()) / max(min(glob.values()), 1e-9)
        symmetry = {n: meta[n]["equivariance"] for n in names if n in meta} if len(meta) == len(names) else {}
        order = {"invariant": 0, "equivariant": 1, "neither": 2}
        by_symmetry = sorted(names, key=lambda n: order.get(symmetry.get(n, ""), 3)) if symmetry else names
        plan.append(
            Figure(
                "fig1e_intrinsic_dimension_violins",
                "Fig. 1E / C7 — intrinsic dimension of each model's embedding",
                f"Violins: per-structure Levina–Bickel estimates (k = {ids['k']}; values above {LOCAL_ID_CAP:g}, from "
                "neighbours at one distance, count as n/a); diamonds: TwoNN on all structures"
                + ("; colour: the architecture's equivariance, as seed 000 groups them" if symmetry else "")
                + ". The random baseline should sit far above the trained models.",
                lambda: pid.intrinsic_dimension_violins(
                    {n: local[n] for n in by_symmetry},
                    families=symmetry or fam,
                    global_values=glob,
                    global_label="TwoNN (all structures)",
                    logy=spread > 20,
                    ylabel=f"intrinsic dimension (local MLE, k = {ids['k']})",
                ),
            )
        )

    # --- Fig. 2B information-imbalance planes coloured by other metrics; Fig. C9 planes at every k, by family
    index_pairs = list(itertools.combinations(range(len(names)), 2))

    def plane(k: int, **kwargs: Any) -> Any:
        mat = mats[f"ii@{k}"]
        kwargs.setdefault("same_family", [families[i] == families[j] for i, j in index_pairs])
        return pa.information_imbalance_plane(
            [mat[i, j] for i, j in index_pairs],
            [mat[j, i] for i, j in index_pairs],
            [(names[i], names[j]) for i, j in index_pairs],
            **kwargs,
        )

    how = (
        "Each point is a model pair (A, B) at (Δ(A→B), Δ(B→A)): near the origin they carry the same information, "
        "near (1, 1) none in common; off the diagonal one model is more informative."
    )
    colourings = [("cknna", f"CKNNA (k = {k_main})", f"CKNNA (k = {k_main})"), ("dcor", "dCor", "dCor")]
    if "id_cor" in mats:
        colourings.append(("id_cor", "I_d Cor", "$I_d$ Cor"))
    if index_pairs and mats["ii_k"]:
        k = mats["ii_k"][-1]
        for key, label, bar_label in colourings:
            plan.append(
                Figure(
                    f"fig2b_information_imbalance_plane_k{k}_{key}",
                    f"Fig. 2B — information-imbalance plane (k = {k}) coloured by {label}",
                    how + f" Colour: the pair's {label}; circles: same family, triangles: different families.",
                    functools.partial(
                        plane,
                        k,
                        color=[mats[key][i, j] for i, j in index_pairs],
                        color_label=bar_label,
                        title=f"information imbalance, k = {k}",
                    ),
                )
            )
    groupings = [("family", [families[i] == families[j] for i, j in index_pairs], ("same family", "different family"))]
    if len(meta) == len(names):
        shared = [bool(set(meta[names[i]]["training_data"]) & set(meta[names[j]]["training_data"]))
                  for i, j in index_pairs]  # fmt: skip
        same_symmetry = [meta[names[i]]["equivariance"] == meta[names[j]]["equivariance"] for i, j in index_pairs]
        groupings = [
            ("training_data", shared, ("shared training data", "no shared training data")),
            ("equivariance", same_symmetry, ("same equivariance", "different equivariance")),
        ]
    for k in mats["ii_k"] if index_pairs else []:
        for key, groups, labels in groupings:
            plan.append(
                Figure(
                    f"figC9_information_imbalance_plane_k{k}_{key}",
                    f"Fig. C9 — information-imbalance plane (k = {k}), {labels[0]} vs {labels[1]}",
                    how,
                    functools.partial(
                        plane, k, title=f"information imbalance, k = {k}", same_family=groups, group_labels=labels
                    ),
                )
            )

    # --- Fig. 1F tree (computed by the tree stage, drawn from its Newick text)
    tree_result = results.get("tree") or {}
    if tree_result:

        def draw_tree() -> Any:
            tree = Tree.from_newick(tree_result["newick"])
            return plot_tree(tree, families=fam, title=f"model tree from CKNNA (k = {k_main})").figure

        left_out = tree_result.get("excluded") or []
        plan.append(
            Figure(
                "fig1f_model_tree",
                "Fig. 1F — evolutionary tree of the models",
                "Neighbour-joining tree of the Jensen–Shannon distances between the models' CKNNA profiles; models on "
                "nearby branches see the structures alike."
                + (f" Left out, as in seed 000: {', '.join(left_out)}." if left_out else ""),
                draw_tree,
            )
        )

    # --- Fig. 2A / 2D maps
    maps = results.get("maps") or {}
    ood = results.get("ood_mask")
    if maps:
        size = results.get("n_atoms")
        umap = results.get("umap") or {}
        kinds = [
            ("fig2a_structure_maps", "Fig. 2A — 2-D PCovR maps of the structures, one per model", "PCov", maps,
             "Each point is a structure, coloured by its number of atoms; out-of-distribution (strained) structures "
             "are circled in red. Compare how models arrange the same structures."),
            ("fig2a_structure_maps_umap", "Fig. 2A (UMAP) — 2-D UMAP maps of the structures, one per model", "UMAP",
             umap, "As above with UMAP (15 neighbours) instead of PCovR: local neighbourhoods are kept, distances "
             "between clusters are not meaningful."),
        ]  # fmt: skip
        for stem, title, axis, coords, how_to_read in kinds:
            if not coords:
                continue
            plan.append(
                Figure(
                    stem,
                    title,
                    how_to_read,
                    functools.partial(
                        pm.map_grid,
                        {n: coords[n] for n in names if n in coords},
                        color=None if size is None else np.asarray(size, float),
                        color_label="atoms per structure",
                        ood_mask=ood,
                        log_color=True,
                        xlabel=f"{axis} 1",
                        ylabel=f"{axis} 2",
                    ),
                )
            )
        per = energy.get("per_structure") or {}
        if per:
            emaps = {n: maps[n] for n in names if n in per}
            # robust colour limits: exact zeros (a composition seen once is fitted exactly) and a few huge errors
            # would otherwise stretch the log scale over many decades
            flat = np.concatenate([np.asarray(per[n], float) for n in emaps])
            flat = flat[np.isfinite(flat) & (flat > 0)]
            lo, hi = np.percentile(flat, [5, 99]) if flat.size else (None, None)
            plan.append(
                Figure(
                    "fig2d_energy_error_maps",
                    "Fig. 2D — the same maps coloured by each model's energy error",
                    f"Colour: |ΔE_ref − ΔE_model| per atom against the {energy['reference']} reference (log scale); "
                    "bright clusters, often the circled out-of-distribution structures, are where a model fails.",
                    lambda: pm.map_grid(
                        emaps,
                        color={n: np.asarray(per[n]) for n in emaps},
                        color_label="|energy error| (meV/atom)",
                        ood_mask=ood,
                        log_color=True,
                        vmin=lo,
                        vmax=hi,
                        xlabel="PCov 1",
                        ylabel="PCov 2",
                    ),
                )
            )

    # --- seed 003 Fig. 9: PCovR maps of κ̃(1) and φ(K) descriptors, by subset and by energy
    cm = results.get("cumulant_maps") or {}
    if cm.get("models"):
        order, phi_k = int(cm["order"]), f"φ({int(cm['order'])})"
        panels = {f"{m}: {label}": cm[f"{tag}:{m}"] for m in cm["models"] for tag, label in
                  (("phi1", "κ̃(1)"), ("phiK", phi_k))}  # fmt: skip
        target = "PCA (no energy target)" if cm["energy_per_atom"] is None else f"PCovR (α = {cm['alpha']:g})"
        plan.append(
            Figure(
                "fig9_cumulant_maps_by_subset",
                f"Fig. 9 (seed 003) — {target} maps of mean-feature κ̃(1) and cumulant {phi_k} descriptors",
                "Each model's structures mapped from the mean of its atom features (κ̃(1)) and from the cumulants "
                f"up to order {order} ({phi_k}), coloured by the subset of the dataset (a structure id's first part). "
                "Seed 003: the mean-only maps share a motif across models; the higher-order maps become "
                "model-specific.",
                functools.partial(
                    pm.map_grid, panels, groups=cm["subset"], group_label="subset", ncols=2,
                    xlabel="PCov 1", ylabel="PCov 2",
                ),
            )
        )  # fmt: skip
        if cm["energy_per_atom"] is not None:
            plan.append(
                Figure(
                    "fig9_cumulant_maps_by_energy",
                    f"Fig. 9 (seed 003, bottom row) — the {phi_k} maps coloured by energy per atom, their PCovR target",
                    "Colour: the composition-detrended reference energy per atom (eV/atom), the PCovR target (seed "
                    "003 colours by cohesive energy; the linear fit in the element counts absorbs the isolated-atom "
                    "energies). A smooth gradient across the map means the descriptor orders structures by energy.",
                    functools.partial(
                        pm.map_grid,
                        {m: cm[f"phiK:{m}"] for m in cm["models"]},
                        color=np.asarray(cm["energy_per_atom"], float),
                        color_label="energy per atom, composition-detrended (eV/atom)",
                        xlabel="PCov 1",
                        ylabel="PCov 2",
                    ),
                )
            )

    # --- seed 003 reconstruction
    rec = results.get("reconstruction") or {}
    for level in rec.get("levels", []):
        for measure in ("gfre", "lfre"):
            what = "atomic environments" if level == "atom" else f"cumulant descriptors φ({rec['order']})"
            plan.append(
                Figure(
                    f"fig_s003_{measure}_{level}",
                    f"Seed 003 Fig. 1–3 — {measure.upper()} between models, {what}",
                    "Cell (row i, column j): error reconstructing model j's features from model i's (0 = perfect, "
                    "≈ 1 = nothing); compare a cell with its mirror to see which feature space holds more.",
                    functools.partial(
                        pr.reconstruction_heatmap,
                        rec[f"{level}_{measure}"],
                        rec["models"],
                        title=f"{measure.upper()} ({what})",
                        cbar_label=measure.upper(),
                    ),
                )
            )
    # --- seed 003 Figs. S3, S9: several layers of one model in one run (ids MODEL@LAYER)
    layers: dict[str, list[str]] = {}
    for m in rec.get("models", []):
        layers.setdefault(m.partition("@")[0], []).append(m)
    for base, members in layers.items():
        if len(members) < 2 or "atom_gfre" not in rec:
            continue
        idx = [list(rec["models"]).index(m) for m in members]
        for measure in ("gfre", "lfre"):
            plan.append(
                Figure(
                    f"figS9_layers_{measure}_{base}",
                    f"Seed 003 Figs. S3, S9 — {measure.upper()} between the layers of {base}, atomic environments",
                    "Cell (row i, column j): error reconstructing layer j's atom features from layer i's. Seed 003: "
                    "backbone features reconstruct the last layer better than the reverse (they hold more).",
                    functools.partial(
                        pr.reconstruction_heatmap,
                        np.asarray(rec[f"atom_{measure}"])[np.ix_(idx, idx)],
                        members,
                        title=f"{measure.upper()} between layers of {base}",
                        cbar_label=measure.upper(),
                    ),
                )
            )
    for m in rec.get("order_models", []):
        plan.append(
            Figure(
                f"fig8_cumulant_orders_{m}",
                f"Seed 003 Fig. 8 — GFRE between cumulant orders, {m}",
                "Cell (i, j): GFRE of φ(j) from φ(i). φ(i) contains φ(j) for j < i, so the lower triangle is near 0; "
                "the upper triangle shows what each higher cumulant adds.",
                functools.partial(
                    pr.cumulant_order_heatmap, rec[f"order:{m}"], rec["orders"], title=f"{m}: φ(i) → φ(j)"
                ),
            )
        )
        if f"single:{m}" in rec:
            plan.append(
                Figure(
                    f"fig8_single_orders_{m}",
                    f"Seed 003 Fig. 8, single orders — GFRE between cumulants κ̃i → κ̃j, {m}",
                    "Cell (i, j): GFRE of the order-j cumulant alone from the order-i cumulant alone. Unlike φ, single "
                    "orders are not nested, so neither triangle is 0 by construction: the first row shows how much "
                    "of each higher order the mean (κ̃1) leaves unexplained.",
                    functools.partial(
                        pr.cumulant_order_heatmap,
                        rec[f"single:{m}"],
                        rec["orders"],
                        title=f"{m}: κ̃i → κ̃j",
                        single=True,
                    ),
                )
            )

    # --- Fig. A1 CKNNA vs k
    ks = list(mats["cknna_k"])
    if len(ks) >= 2:
        pairs = representative_pairs(names, families)
        ks_plot = ks + ([int(mats["n"]) - 1] if mats.get("full_k") else [])
        fields = [f"cknna@{k}" for k in ks] + (["cknna@full"] if mats.get("full_k") else [])
        values = {(a, b): [mats[f][names.index(a), names.index(b)] for f in fields] for a, b in pairs}
        asym = {(a, b): mats["unbiased_cka"][names.index(a), names.index(b)] for a, b in pairs}
        plan.append(
            Figure(
                "figA1_cknna_vs_k",
                "Fig. A1 — CKNNA as a function of k for representative model pairs",
                "Solid lines: CKNNA at each k (log axis, last point k = N − 1); dashed: unbiased CKA, which CKNNA "
                "reaches at k = N − 1.",
                lambda: pr.cknna_vs_k(ks_plot, values, asymptotes=asym, title="CKNNA vs k"),
            )
        )
    return plan


def draw_figures(plan: Sequence[Figure], out_dir: str | Path, *, progress: bool = True) -> list[dict[str, str]]:
    """Draw every planned figure into ``out_dir`` (PNG + SVG); returns ``[{stem, title, how_to_read}]``."""
    import sys

    from tqdm import tqdm

    from jaxalign.plots.style import save_figure

    out_dir = Path(out_dir)
    done = []
    for fig_spec in tqdm(plan, desc="figures", disable=not progress, file=sys.stderr, leave=False):
        beat()
        fig = fig_spec.draw()
        fig = getattr(fig, "figure", fig)
        save_figure(fig, out_dir / fig_spec.stem)
        try:
            import matplotlib.pyplot as plt

            plt.close(fig)
        except Exception:
            pass
        done.append({"stem": fig_spec.stem, "title": fig_spec.title, "how_to_read": fig_spec.how_to_read})
    return done


def cross_plan(cross: Mapping[str, Any]) -> list[Figure]:
    """The figures of a study of several datasets (seed 000 Figs. 1E, 2A, 2C, 2D), from
    :func:`experiments.stages.cross_dataset.analyse`."""
    from jaxalign.plots import alignment as pa
    from jaxalign.plots import intrinsic_dimension as pid
    from jaxalign.plots import maps as pm

    plan: list[Figure] = []
    names = list(cross["datasets"])
    meta = cross.get("metadata") or {}

    # --- Fig. 1E: the models' intrinsic dimension per dataset, grouped by equivariance
    by_group: dict[str, np.ndarray] = {}
    groups: dict[str, str] = {}
    for n in names:
        ids = cross["intrinsic_dimension"][n]
        for g in ("invariant", "equivariant", "neither"):
            vals = [
                v
                for m, v in ids.items()
                if (meta.get(m) or {}).get("equivariance") == g
                and cross["families"].get(m) != BASELINE_FAMILY
                and np.isfinite(v)
            ]
            if vals:
                label = f"{n}\n{g} ({len(vals)})"
                by_group[label] = np.asarray(vals, float)
                groups[label] = g
    if by_group:
        plan.append(
            Figure(
                "fig1e_intrinsic_dimension_per_dataset",
                "Fig. 1E — intrinsic dimension of the models' embeddings per dataset, by equivariance",
                "Each violin is the spread over the models of one equivariance class of their TwoNN intrinsic "
                "dimension on one dataset (count in brackets; a class with one model is a dot; the random baseline "
                "is left out). Seed 000 finds I_d set mostly by the dataset, in a narrow band across architectures, "
                "and lower for invariant models.",
                lambda: pid.intrinsic_dimension_violins(
                    by_group,
                    families=groups,
                    title="intrinsic dimension per dataset",
                    ylabel="TwoNN intrinsic dimension (one value per model)",
                ),
            )
        )

    # --- Fig. 2A / C5: joint maps of every dataset, coloured by dataset; Fig. 2D: the same coloured by energy error
    maps = cross.get("maps") or {}
    if maps:
        labels = np.asarray(cross.get("map_datasets", names))[np.asarray(maps["dataset"], int)]
        models = [m for m in cross["map_models"] if f"pcovr:{m}" in maps]
        alpha = float(maps["pcovr_alpha"])
        linear = ("PCov", f"PCovR (α = {alpha:g}, target: energy per atom)") if alpha < 1 else ("PC", "PCA")
        out_rows = np.array([cross["distribution"][n] == "out" for n in labels])
        for kind, axis, what in (("umap", "UMAP", "UMAP (15 neighbours)"), ("pcovr", *linear)):
            coords = {m: maps[f"{kind}:{m}"] for m in models if f"{kind}:{m}" in maps}
            if not coords:
                continue
            plan.append(
                Figure(
                    f"fig2a_joint_maps_{kind}",
                    f"Fig. 2A / C5 — the datasets in one {axis} map per model",
                    f"Each point is a structure, coloured by its dataset; each model's map is one {what} of the union "
                    "of the datasets' structures, so how far apart the datasets lie is how differently the model "
                    "represents them (seed 000: molecules fall far outside the materials).",
                    functools.partial(
                        pm.map_grid,
                        coords,
                        groups=labels,
                        group_label="dataset",
                        xlabel=f"{axis} 1",
                        ylabel=f"{axis} 2",
                    ),
                )
            )
        errors = {m: np.asarray(maps[f"energy_error:{m}"]) for m in models if f"energy_error:{m}" in maps}
        kind = "umap" if any(f"umap:{m}" in maps for m in errors) else "pcovr"
        if errors:
            mapped = cross.get("map_datasets", names)
            mae = {m: np.mean([cross["energy_mae"][n].get(m, np.nan) for n in mapped]) for m in errors}
            order = sorted(errors, key=lambda m: mae[m])
            pos = np.concatenate([v[v > 0] for v in errors.values()])
            lo, hi = np.percentile(pos, [2, 98]) if pos.size else (None, None)
            plan.append(
                Figure(
                    "fig2d_joint_energy_error_maps",
                    "Fig. 2D — the joint maps coloured by each model's energy error",
                    "Colour: |ΔE_ref − ΔE_model| per atom, each structure against its own dataset's reference (log "
                    "scale); circled: structures of the out-of-distribution dataset. Panels from the lowest mean "
                    "error; seed 000 finds the error grows where structures leave the in-distribution cluster.",
                    functools.partial(
                        pm.map_grid,
                        {m: maps[f"{kind}:{m}"] for m in order},
                        color=errors,
                        color_label="|energy error| (meV/atom)",
                        ood_mask=out_rows if out_rows.any() else None,
                        log_color=True,
                        vmin=lo,
                        vmax=hi,
                        xlabel=f"{'UMAP' if kind == 'umap' else linear[0]} 1",
                        ylabel=f"{'UMAP' if kind == 'umap' else linear[0]} 2",
                    ),
                )
            )

    # --- Fig. 2C: each model pair's alignment in vs out of distribution
    a, b = cross["in"], cross["out"]
    models = list(cross["in_out_models"])
    fams = dict(zip(models, cross["in_out_families"], strict=True))
    tag = ("in distribution", "out of distribution") if cross["marked"] else ("", "")
    metrics = [("cknna", "CKNNA"), ("dcor", "distance correlation")]
    if cross.get("ii_k") is not None:
        metrics.append((f"ii@{cross['ii_k']}", f"information imbalance Δ (k = {cross['ii_k']})"))
    if len(models) >= 2:
        for key, label in metrics:
            plan.append(
                Figure(
                    f"fig2c_in_vs_out_{key.replace('@', '_k')}",
                    f"Fig. 2C — {label} of every model pair on {a} against {b}",
                    f"Each point is a model pair ({'ordered: row → column' if key.startswith('ii') else 'unordered'}); "
                    "the dashed line is equal alignment on both datasets. Seed 000: local alignment (CKNNA) is higher "
                    "in distribution, global alignment (information imbalance nearer 0, dCor) out of distribution.",
                    functools.partial(
                        pa.metric_scatter,
                        cross[f"{key}:{a}"],
                        cross[f"{key}:{b}"],
                        models,
                        xlabel=f"{label}, {a}" + (f" ({tag[0]})" if tag[0] else ""),
                        ylabel=f"{label}, {b}" + (f" ({tag[1]})" if tag[1] else ""),
                        families=fams,
                        diagonal=True,
                        title=f"{label}: {a} vs {b}",
                    ),
                )
            )
    return plan
