"""Stage 8 — the report: ``report.md`` and a self-contained ``report.html`` (figures embedded as base64 PNG).

Both are rendered from one list of blocks (headings, paragraphs, tables, figures, code), so they say the same
thing. :func:`qualitative_checks` evaluates the seeds' findings on this run's numbers with an explicit pass/fail
rule each.
"""

from __future__ import annotations

import base64
import html
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cache import atomic_write_bytes
from experiments.stages.tree import BASELINE_FAMILY

__all__ = ["check_tally", "qualitative_checks", "write_report"]

#: "random-baseline intrinsic dimension ≫ models'": the baseline's TwoNN must exceed the models' median by this.
ID_RATIO = 3.0
#: "the highest order is not redundant": GFRE(φ(M−1) → κ̃_M) must reach this (seed 003: φ(7) → φ(8) above 0.3).
SATURATION_GFRE = 0.3
#: CKNNA(k = N − 1) and unbiased CKA agree to this absolute difference (float32 arithmetic).
CKA_TOL = 1e-4


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ; 0 (no monotone trend) where either side is constant."""
    from scipy.stats import spearmanr

    if np.ptp(np.asarray(a, float)) == 0 or np.ptp(np.asarray(b, float)) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def _offdiag_pairs(names: Sequence[str]) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(len(names)), 2))


def qualitative_checks(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The seeds' qualitative findings, each with its numbers and a pass/fail verdict (None = not evaluable)."""
    names, fams = list(results["models"]), list(results["families"])
    mats = results["matrices"]
    pairs = _offdiag_pairs(names)
    checks: list[dict[str, Any]] = []

    # 1. CKNNA rises with k over k ≤ N/10 (seed 000 went to N/20), more than it does for pairs with the random
    # baseline: near k ≈ N/2 every pair's CKNNA rises, random ones too, so that range proves nothing.
    n = int(mats["n"])
    ks = [int(k) for k in mats["cknna_k"] if int(k) <= n / 10]
    model_pairs = [(i, j) for i, j in pairs if BASELINE_FAMILY not in (fams[i], fams[j])]
    random_pairs = [(i, j) for i, j in pairs if (fams[i] == BASELINE_FAMILY) != (fams[j] == BASELINE_FAMILY)]
    if len(ks) >= 3 and model_pairs and random_pairs:
        means = [float(np.nanmean([mats[f"cknna@{k}"][i, j] for i, j in model_pairs])) for k in ks]
        rand = [float(np.nanmean([mats[f"cknna@{k}"][i, j] for i, j in random_pairs])) for k in ks]
        rho = _spearman(ks, means)
        rise, rand_rise = means[-1] - means[0], rand[-1] - rand[0]
        checks.append(
            {
                "finding": "CKNNA rises with k (seed 000 Fig. A1)",
                "numbers": "mean CKNNA, model pairs / pairs with the random baseline: "
                + ", ".join(f"k={k}: {v:.3f} / {r:.3f}" for k, v, r in zip(ks, means, rand, strict=True)),
                "rule": f"over k ≤ N/10 = {n // 10}: Spearman ρ(k, mean CKNNA of model pairs) ≥ 0.8 and their rise "
                "from the smallest to the largest k above the random pairs' rise",
                "value": f"ρ = {rho:.2f}; rise {rise:+.3f} vs random {rand_rise:+.3f}",
                "passed": bool(rho >= 0.8 and rise > rand_rise),
            }
        )
    else:
        checks.append(
            _not_evaluable(
                "CKNNA rises with k (seed 000 Fig. A1)",
                f"needs ≥ 3 values of k ≤ N/10 (this run: {ks}), two models and the random baseline",
            )
        )

    # 2. within-family > cross-family > random.
    c = mats["cknna"]
    within = [c[i, j] for i, j in pairs if fams[i] == fams[j] and fams[i] != BASELINE_FAMILY]
    cross = [c[i, j] for i, j in pairs if fams[i] != fams[j] and BASELINE_FAMILY not in (fams[i], fams[j])]
    rand = [c[i, j] for i, j in pairs if (fams[i] == BASELINE_FAMILY) != (fams[j] == BASELINE_FAMILY)]
    if within and cross and rand:
        w, x, r = (float(np.nanmean(v)) for v in (within, cross, rand))
        checks.append(
            {
                "finding": "within-family > cross-family > random alignment (seed 000 Fig. 1A/C)",
                "numbers": f"mean CKNNA (k = {mats['cknna_k_main']}): within {w:.3f} ({len(within)} pairs), "
                f"cross {x:.3f} ({len(cross)}), with random {r:.3f} ({len(rand)})",
                "rule": "within > cross > random",
                "value": f"{w:.3f} > {x:.3f} > {r:.3f}",
                "passed": bool(w > x > r),
            }
        )
    else:
        checks.append(
            _not_evaluable(
                "within-family > cross-family > random alignment",
                "needs a family with ≥ 2 models, two families and the random baseline",
            )
        )

    # 3. random-baseline ID ≫ models'.
    ids = results.get("intrinsic_dimension") or {}
    base = [n for n, f in zip(names, fams, strict=True) if f == BASELINE_FAMILY]
    others = [n for n, f in zip(names, fams, strict=True) if f != BASELINE_FAMILY]
    if ids and base and others:
        rid = float(np.mean([ids[n]["twonn"] for n in base]))
        med = float(np.median([ids[n]["twonn"] for n in others]))
        checks.append(
            {
                "finding": "random-baseline intrinsic dimension ≫ the models' (seed 000 Fig. 1E)",
                "numbers": f"TwoNN: random {rid:.1f}; models median {med:.1f} (range "
                f"{min(ids[n]['twonn'] for n in others):.1f}–{max(ids[n]['twonn'] for n in others):.1f})",
                "rule": f"random ≥ {ID_RATIO:g} × models' median",
                "value": f"ratio {rid / med:.1f}",
                "passed": bool(rid >= ID_RATIO * med),
            }
        )
    else:
        checks.append(_not_evaluable("random-baseline intrinsic dimension ≫ models'", "needs the random model"))

    # 4–5. Cumulant orders, compared where they are not nested (φ(i) holds φ(j) for j < i, so GFRE(φ(8) → φ(1)) is
    # 0 by construction): single orders κ̃_j alone as targets.
    rec = results.get("reconstruction") or {}
    orders = [int(o) for o in rec.get("orders") or []]
    order_models = [m for m in rec.get("order_models") or [] if f"single:{m}" in rec and f"next:{m}" in rec]
    finding = "lower cumulant orders cannot reconstruct higher ones, errors growing with the order (seed 003 Fig. 8)"
    if order_models and orders == sorted(orders) and orders[:1] == [1] and len(orders) >= 4:
        rows = [(m, [float(rec[f"single:{m}"][0, b]) for b in range(1, len(orders))]) for m in order_models]
        rhos = [(m, _spearman(orders[1:], errs)) for m, errs in rows]
        checks.append(
            {
                "finding": finding,
                "numbers": "; ".join(
                    f"{m}: GFRE(κ̃1 → κ̃j) " + ", ".join(f"j={j}: {e:.3f}" for j, e in zip(orders[1:], errs, strict=True))
                    for m, errs in rows
                ),
                "rule": "Spearman ρ(j, GFRE(κ̃1 → κ̃j)) ≥ 0.8 for every model",
                "value": ", ".join(f"{m} ρ = {r:.2f}" for m, r in rhos),
                "passed": bool(all(r >= 0.8 for _, r in rhos)),
            }
        )
    else:
        checks.append(_not_evaluable(finding, "needs atomistic models and cumulant orders 1 and ≥ 3 more"))
    finding = "the highest cumulant order is not redundant: its lower orders cannot rebuild it (seed 003 §III F)"
    if order_models and len(orders) >= 2:
        below, top = sorted(orders)[-2:]
        target = f"κ̃{top}" if top == below + 1 else f"κ̃{below + 1}…κ̃{top}"
        rows = [(m, float(rec[f"next:{m}"])) for m in order_models]
        checks.append(
            {
                "finding": finding,
                "numbers": "; ".join(f"{m}: GFRE(φ({below}) → {target}) {e:.3f}" for m, e in rows),
                "rule": f"≥ {SATURATION_GFRE:g} for every model (seed 003: φ(7) → φ(8) still above 0.3)",
                "value": f"min {min(e for _, e in rows):.3f}",
                "passed": bool(all(e >= SATURATION_GFRE for _, e in rows)),
            }
        )
    else:
        checks.append(_not_evaluable(finding, "needs atomistic models and two cumulant orders"))

    # 5. CKNNA(k = N − 1) equals unbiased CKA.
    if mats.get("full_k"):
        diff = np.abs(mats["cknna@full"] - mats["unbiased_cka"])
        worst = float(np.nanmax(diff))
        checks.append(
            {
                "finding": "CKNNA(k = N − 1) equals unbiased CKA (Huh et al. 2024, seed 000 ref. 15: every α = 1)",
                "numbers": f"max |CKNNA(k = {int(mats['n']) - 1}) − unbiased CKA| over {diff.size} entries = "
                f"{worst:.2e}",
                "rule": f"≤ {CKA_TOL:g}",
                "value": f"{worst:.1e}",
                "passed": bool(worst <= CKA_TOL),
            }
        )
    else:
        checks.append(_not_evaluable("CKNNA(k = N − 1) equals unbiased CKA", "k = N − 1 not computed (N too large)"))
    return checks


def check_tally(checks: Sequence[Mapping[str, Any]]) -> str:
    """ "p/e pass, f fail" over the e evaluated checks (the failures named, never left to subtraction), with the
    n/a ones counted apart (not as failures)."""
    evaluated = [c for c in checks if c["passed"] is not None]
    passed = sum(bool(c["passed"]) for c in evaluated)
    tally = f"{passed}/{len(evaluated)} pass"
    failed = len(evaluated) - passed
    skipped = len(checks) - len(evaluated)
    return tally + (f", {failed} fail" if failed else "") + (f", {skipped} n/a" if skipped else "")


def _not_evaluable(finding: str, why: str) -> dict[str, Any]:
    return {"finding": finding, "numbers": why, "rule": "", "value": "n/a", "passed": None}


# --------------------------------------------------------------------------------------------------- blocks
def format_cell(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "—"
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def _matrix_table(
    mat: np.ndarray, rows: Sequence[str], cols: Sequence[str], marks: np.ndarray | None = None
) -> tuple[list[str], list[list[str]]]:
    """A matrix as a table; ``marks`` (bool, same shape) appends "*" to the marked cells."""
    marks = np.zeros(mat.shape, bool) if marks is None else marks
    body = [
        [r, *(format_cell(x) + ("*" if marks[i, j] else "") for j, x in enumerate(mat[i]))] for i, r in enumerate(rows)
    ]
    return ["", *cols], body


def _significance_blocks(sig: Mapping[str, Any], names: Sequence[str], titles: Mapping[str, str]) -> list:
    """The permutation null's verdict per matrix: significant off-diagonal cells and the pairs that are not."""
    m = len(names)
    off = ~np.eye(m, dtype=bool)
    b: list = [
        ("h", 3, "Significance above a permutation null"),
        (
            "p",
            f"Each matrix below marks with * the cells whose value exceeds a permutation null at p ≤ {sig['alpha']} "
            f"(one-sided; smaller is more aligned for Δ): {sig['draws']} draws, each with every model's structures "
            f"shuffled by a permutation of its own, on a seeded subsample of {sig['rows']} structures, where the "
            "observed value is recomputed for the comparison (jaxalign.statistics.permutation_null; the smallest "
            f"attainable p is {1 / (sig['draws'] + 1):.3f}). The diagonal (a model against itself) is not tested.",
        ),
    ]
    rows = []
    for key in sig["keys"]:
        p = np.asarray(sig[f"{key}:p"])
        hit = (p <= sig["alpha"]) & off
        missing = [f"{names[i]} → {names[j]}" for i, j in zip(*np.nonzero(~hit & off), strict=True)]
        shown = ", ".join(missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
        rows.append([titles.get(key, key), f"{int(hit.sum())} / {m * (m - 1)}", shown or "—"])
    b.append(("table", ["matrix", "significant cells (off-diagonal)", "not significant (row → column)"], rows))
    return b


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def _check_rows(results: Mapping[str, Mapping[str, Any]], cross: Mapping[str, Any]) -> list[list[str]]:
    rows = [
        [name, c["finding"], c["numbers"], c["rule"], c["value"], _verdict(c["passed"])]
        for name, res in results.items()
        for c in res["checks"]
    ]
    rows += [
        ["across datasets", c["finding"], c["numbers"], c["rule"], c["value"], _verdict(c["passed"])]
        for c in cross.get("checks") or []
    ]
    return rows


def _coverage_blocks(results: Mapping[str, Mapping[str, Any]], contexts: Mapping[str, Any]) -> list:
    """Which models each dataset compares (the study's models per dataset, seed-000 style), with coverage."""
    names = list(results)
    models: list[str] = []
    for ctx in contexts.values():
        models += [r["model"] for r in ctx["model_rows"] if r["model"] not in models]
    rows = []
    for m in models:
        row = [m]
        for n in names:
            r = next((r for r in contexts[n]["model_rows"] if r["model"] == m), None)
            n_drawn = contexts[n]["dataset"]["n_selected"]
            if r is None:
                row.append("—")
            elif r["status"] == "compared":
                row.append(f"compared ({r['embedded']}/{n_drawn})")
            else:
                row.append(r["status"])
        rows.append(row)
    return [
        ("h", 2, "Models per dataset"),
        (
            "p",
            "Each model runs on the datasets it can read (a SMILES model reads molecules, not crystals; "
            "extractors.metadata.unreadable) and each dataset is compared on the models that embed it, restricted to "
            "the structures they all embed: 'compared (embedded/drawn)'.",
        ),
        ("table", ["model", *names], rows),
    ]


def build_blocks(
    results: Mapping[str, Mapping[str, Any]],
    cross: Mapping[str, Any],
    context: Mapping[str, Any],
    figures: Sequence[Mapping[str, str]],
) -> list:
    """The report as a list of blocks: ("h", level, text), ("p", text), ("table", header, rows), ("fig", stem,
    title, how_to_read, level), ("code", text). ``results``: dataset name → its results; ``cross``: the
    cross-dataset analyses (empty for one dataset)."""
    names = list(results)
    multi = len(names) > 1
    shift = 1 if multi else 0
    label = "study of " + ", ".join(names) if multi else context["datasets"][names[0]]["dataset"]["label"]
    b: list[tuple] = [("h", 1, f"jaxalign experiment report — {label}")]
    b.append(
        (
            "p",
            f"Run directory `{context['run_dir']}`, started {context['started']}, finished in "
            f"{context['total_s']:.0f} s. Command: `{context['command']}`.",
        )
    )

    b.append(("h", 2, "Qualitative findings of the seeds, evaluated on this run"))
    checks = [c for res in results.values() for c in res["checks"]] + list(cross.get("checks") or [])
    b.append(("p", f"{check_tally(checks)}; n/a: the run lacks what the check needs (not a failure)."))
    b.append(("table", ["dataset", "finding", "numbers", "rule", "value", "verdict"], _check_rows(results, cross)))

    b.append(("h", 2, "Stages"))
    rows = [
        [s.get("dataset", ""), s["stage"], f"{s['seconds']:.1f}", str(s["computed"]), str(s["cached"]), s["summary"]]
        for s in context["stages"]
    ]
    b.append(("table", ["dataset", "stage", "seconds", "computed", "cached", "summary"], rows))

    if multi:
        b.append(("h", 2, "Datasets of the study"))
        rows = []
        for n in names:
            ds = context["datasets"][n]["dataset"]
            rows.append(
                [
                    n,
                    results[n].get("distribution") or "—",
                    f"{ds['name']} / {ds['format']}",
                    format_cell(ds["n_selected"]),
                    format_cell(results[n]["n_structures"]),
                    str(len(results[n]["models"])),
                ]
            )
        head = ["dataset", "distribution", "config / format", "drawn", "compared", "models compared"]
        b.append(("table", head, rows))
        b += _coverage_blocks(results, context["datasets"])
        shown = [f for f in figures if f["stem"].startswith("cross_dataset/")]
        if shown:
            b.append(("h", 2, "Across datasets"))
            b.append(
                (
                    "p",
                    f"In- vs out-of-distribution comparisons use {cross['in']} and {cross['out']}"
                    + (
                        " (their `distribution: in` / `out`)."
                        if cross["marked"]
                        else " (no dataset sets `distribution: in/out`: the study's first two)."
                    )
                    + f" Joint maps of {', '.join(cross.get('map_datasets', cross['datasets']))}: the "
                    f"{len(cross['map_models'])} models compared on every one whose features have one width on all"
                    + (
                        " (left out: " + "; ".join(f"{m}: {why}" for m, why in cross["map_left_out"].items()) + ")"
                        if cross["map_left_out"]
                        else ""
                    )
                    + "".join(
                        f"; dataset {n} left out of the maps: {why}"
                        for n, why in (cross.get("map_datasets_left_out") or {}).items()
                    )
                    + ".",
                )
            )
            for f in shown:
                b.append(("fig", f["stem"], f["title"], f["how_to_read"], 3))

    for n in names:
        if multi:
            b.append(("h", 2, f"Dataset: {n}"))
        b += _dataset_blocks(
            results[n], context["datasets"][n], [f for f in figures if f["stem"].startswith(f"{n}/")], shift
        )

    b.append(("h", 2, "Notes"))
    for n in names:
        for note in context["datasets"][n]["notes"]:
            b.append(("p", (f"{n}: " if multi else "") + note))
    b.append(("h", 2, "Configuration"))
    b.append(("code", context["config_yaml"]))
    return b


def _dataset_blocks(
    results: Mapping[str, Any], context: Mapping[str, Any], figures: Sequence[Mapping[str, str]], shift: int
) -> list:
    """One dataset's sections (dataset, models, figures, matrices, …); headings one level deeper in a study."""
    names = list(results["models"])
    ds = context["dataset"]
    b: list[tuple] = []
    b.append(("h", 2 + shift, "Dataset"))
    elements = ", ".join(f"{e} ({n})" for e, n in list(ds["elements"].items())[:25])
    rows = [
        ["name / format", f"{ds['name']} / {ds['format']}"],
        ["path", ds["path"] or "embedded: ASE collections (reader options in the configuration below)"],
        ["records read", format_cell(ds["n_read"])],
        ["filters", str(ds["filters"])],
        ["dropped by filters", str(ds["dropped"] or "none")],
        ["drawn (N, seed)", f"{ds['n_selected']} (N = {ds['n']}, seed {ds['seed']})"],
        ["compared (embedded by every model kept)", format_cell(results["n_structures"])],
        ["molecules / periodic", f"{ds['n_molecules']} / {ds['n_periodic']}"],
        ["atoms per structure (min / median / max)", f"{ds['atoms_min']} / {ds['atoms_median']:g} / {ds['atoms_max']}"],
        ["splits", str(ds["splits"] or "—")],
        ["reference energies", f"{ds['n_with_energy']} of {ds['n_selected']}"],
        ["elements (structures containing)", elements + (" …" if len(ds["elements"]) > 25 else "")],
    ]
    b.append(("table", ["", ""], rows))

    b.append(("h", 2 + shift, "Models"))
    rows = []
    for m in context["model_rows"]:
        rows.append(
            [
                m["model"],
                m["family"],
                format_cell(m["n_params"]),
                format_cell(m["dim"]),
                format_cell(m["atom_dim"]),
                f"{m['embedded']}/{ds['n_selected']}",
                m["failures"],
                format_cell(m["wall_s"], 1),
                "cached" if m["cached"] else "run",
                m["status"],
            ]
        )
    b.append(
        (
            "table",
            [
                "model",
                "family",
                "parameters",
                "feature dim",
                "atom dim",
                "embedded",
                "failures",
                "extraction s",
                "this run",
                "status",
            ],
            rows,
        )
    )
    b.append(
        (
            "p",
            "Extraction time is the wall time of the model's own process (loading included) when it ran; "
            "'cached' means this run reused the file. Failures are structures the model could not embed "
            "(unsupported elements, SMILES that RDKit cannot derive); such structures leave the comparison.",
        )
    )
    meta = results.get("metadata") or {}
    if meta:
        b.append(("h", 3 + shift, "Model metadata (extractors.metadata; corrections: models.meta.<id>.<field>)"))
        head = ["model", "architecture", "modality", "training data", "level of theory", "equivariance", "energy head"]
        rows = [
            [m, d["architecture"], d["modality"], ", ".join(d["training_data"]) or "—", d["level_of_theory"],
             d["equivariance"], "yes" if d["energy_head"] else "no"]
            for m, d in meta.items()
        ]  # fmt: skip
        b.append(("table", head, rows))

    b.append(("h", 2 + shift, "Figures"))
    for f in figures:
        b.append(("fig", f["stem"], f["title"], f["how_to_read"], 3 + shift))

    b.append(("h", 2 + shift, "Matrices"))
    mats = results["matrices"]
    k_main = mats["cknna_k_main"]
    tables = [
        ("cknna", f"CKNNA (k = {k_main})"),
        ("mutual_knn", "mutual kNN"),
        ("cka", "CKA (linear)"),
        ("unbiased_cka", "unbiased CKA"),
        ("dcor", "distance correlation"),
    ]
    if mats.get("full_k"):
        tables.append(("cknna@full", f"CKNNA (k = N − 1 = {int(mats['n']) - 1})"))
    tables += [(f"ii@{k}", f"information imbalance Δ(row → column), k = {k}") for k in mats["ii_k"]]
    sig = results.get("significance")
    if sig:
        b += _significance_blocks(sig, names, dict(tables))
    if "id_cor" in mats:
        tables.append(("id_cor", "intrinsic-dimension correlation I_d Cor (* significant by its own permutation test)"))
    for key, title in tables:
        marks = None
        if sig and f"{key}:p" in sig and (key != "cknna" or int(sig["k"]) == int(k_main)):
            marks = np.asarray(sig[f"{key}:p"]) <= sig["alpha"]
        if key == "id_cor":
            marks = np.asarray(mats["id_cor_p"]) <= float(results["id_correlation"]["alpha"])
        b.append(("h", 3 + shift, title + (" (* significant)" if marks is not None and key != "id_cor" else "")))
        b.append(("table", *_matrix_table(mats[key], names, names, marks)))
    rec = results.get("reconstruction") or {}
    for level in rec.get("levels", []):
        for measure in ("gfre", "lfre"):
            what = "atom level" if level == "atom" else f"cumulant level, φ({rec['order']})"
            b.append(("h", 3 + shift, f"{measure.upper()} ({what}), row = source, column = target"))
            b.append(("table", *_matrix_table(rec[f"{level}_{measure}"], rec["models"], rec["models"])))
    for m in rec.get("order_models", []):
        labels = [f"φ({o})" for o in rec["orders"]]
        b.append(("h", 3 + shift, f"GFRE between cumulant orders, {m} (row = source)"))
        b.append(("table", *_matrix_table(rec[f"order:{m}"], labels, labels)))
    if rec.get("levels"):
        comps = ", ".join(f"{m} {p}" for m, p in rec["components_cumulant"].items())
        b.append(
            (
                "p",
                f"Reconstruction: {rec['n_atoms_used']} atomic environments (seeded subsample) for the atom "
                f"level; scikit-matter's 50/50 split; LFRE with k = min(d_source, d_target) on at most "
                f"{rec['lfre_max_test']} test points. Cumulant descriptors are computed from each model's atom "
                f"features reduced to their leading principal components (φ({rec['order']}): {comps}; "
                f"cumulant-order matrices: {rec['components_orders']}), so that a descriptor has fewer "
                "columns than there are training structures and the linear reconstruction is determined.",
            )
        )

    ids = results.get("intrinsic_dimension") or {}
    if ids:
        b.append(("h", 3 + shift, "Intrinsic dimension"))
        rows = [
            [
                m,
                format_cell(ids[m]["twonn"], 2),
                format_cell(ids[m]["mle"], 2),
                format_cell(float(np.nanmedian(ids[m]["local_mle"])), 2),
                format_cell(ids[m]["n_distinct"]),
            ]
            for m in names
        ]
        b.append(("table", ["model", "TwoNN", f"MLE (k = {ids['k']})", "median local MLE", "distinct rows"], rows))
    energy = results.get("energy") or {}
    if energy.get("models"):
        b.append(("h", 3 + shift, "Energy-regression error"))
        rows = [
            [m, format_cell(energy["mae_ev"][m], 4), format_cell(energy["mae_mev_atom"][m], 2)]
            for m in energy["models"]
        ]
        b.append(("table", ["model", "MAE (eV per structure)", "MAE (meV/atom)"], rows))
        b.append(("p", context["energy_note"]))

    return b


# --------------------------------------------------------------------------------------------------- rendering
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[tuple], figure_dir: str) -> str:
    out = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            out.append(f"{'#' * blk[1]} {blk[2]}\n")
        elif kind == "p":
            out.append(f"{blk[1]}\n")
        elif kind == "table":
            header, rows = blk[1], blk[2]
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out.extend("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows)
            out.append("")
        elif kind == "fig":
            _, stem, title, how, level = blk
            out.append(
                f"{'#' * level} {title}\n\n![{title}]({figure_dir}/{stem}.png)\n\n*How to read:* {how} "
                f"([SVG]({figure_dir}/{stem}.svg))\n"
            )
        elif kind == "code":
            out.append(f"```yaml\n{blk[1].rstrip()}\n```\n")
    return "\n".join(out)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2} tr:nth-child(even) td{background:#fafafa}
td.PASS{background:#d9f2d9!important;font-weight:bold} td.FAIL{background:#f8d7d7!important;font-weight:bold}
figure{margin:1.2em 0 2em} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444} pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.8em}
code{background:#f3f3f3;padding:0 .2em}
"""


def _inline(text: str) -> str:
    """Escape, then render `code` spans."""
    parts = html.escape(str(text)).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: Sequence[tuple], figure_dir: Path, title: str) -> str:
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
    ]
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            out.append(f"<h{blk[1]}>{_inline(blk[2])}</h{blk[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline(blk[1])}</p>")
        elif kind == "table":
            header, rows = blk[1], blk[2]
            out.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr>")
            for r in rows:
                cells = "".join(
                    f"<td class='{c}'>{_inline(c)}</td>" if c in ("PASS", "FAIL") else f"<td>{_inline(c)}</td>"
                    for c in r
                )
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
        elif kind == "fig":
            _, stem, ftitle, how, level = blk
            data = base64.b64encode((figure_dir / f"{stem}.png").read_bytes()).decode()
            out.append(
                f"<figure><h{level}>{_inline(ftitle)}</h{level}><img alt='{html.escape(ftitle)}' "
                f"src='data:image/png;base64,{data}'><figcaption><b>How to read:</b> {_inline(how)}"
                "</figcaption></figure>"
            )
        elif kind == "code":
            out.append(f"<pre>{html.escape(blk[1])}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(
    run_dir: str | Path,
    results: Mapping[str, Mapping[str, Any]],
    cross: Mapping[str, Any],
    context: Mapping[str, Any],
    figures: Sequence[Mapping[str, str]],
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir`` (atomically); figures are read from
    ``run_dir/figures``. ``results``: dataset name → results; ``cross``: the cross-dataset analyses or {}."""
    run_dir = Path(run_dir)
    blocks = build_blocks(results, cross, context, figures)
    md = atomic_write_bytes(run_dir / "report.md", render_markdown(blocks, "figures").encode())
    page = render_html(blocks, run_dir / "figures", str(blocks[0][2]))
    htm = atomic_write_bytes(run_dir / "report.html", page.encode())
    return md, htm
