"""Stage — across datasets (seed 000 Figs. 1E, 2A–D): what a study of several datasets shows that one cannot.

* **Joint maps** (Fig. 2A, C5): each model compared on every mapped dataset, whose features have one width on all
  of them (SOAP's basis depends on the dataset's species, so its vectors of two datasets are not comparable), embeds a
  seeded subsample of every dataset's structures (``analysis.cross_dataset.map_rows`` per dataset; the paper used
  15,000), preprocessed together (``analysis.preprocessing`` over the union), and is mapped to 2-D by PCovR
  (α = ``analysis.maps.alpha``; target: each structure's composition-detrended energy per atom from its dataset's
  energy stage; a PCA, α = 1, when a dataset has none) and, when ``umap-learn`` is installed, by UMAP as in the
  paper. The same rows carry each model's per-structure energy error (Fig. 2D over two datasets). The mapped datasets
  are the study's, less those that would leave fewer than two models (the random baseline aside) on every one: a
  dataset read by other models (the default study's proteins) is left out of the maps, with the reason.
* **In vs out of distribution** (Fig. 2C): the datasets marked ``distribution: in`` and ``distribution: out`` (else
  the study's first two) and, for every pair of models compared on both, its CKNNA, dCor and information imbalance
  on each.
* **Checks that can fail**: local alignment (CKNNA) higher in distribution for most pairs, and model pairs closer to
  the information-imbalance origin out of distribution (seed 000 §3.3: "data-dominated in-distribution,
  architecture-dominated out-of-distribution"); the random baseline is left out of both.

Cached under a content key of every dataset's analysis key, so a rerun recomputes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cache import content_key, read_npz, write_json, write_npz
from experiments.features import preprocess
from experiments.stages.context import seeded_rows
from experiments.stages.tree import BASELINE_FAMILY
from experiments.watchdog import beat

__all__ = ["analyse", "in_out_pair", "save"]

#: the pair metrics Fig. 2C compares in and out of distribution (information imbalance at the smallest k).
PAIR_METRICS = ("cknna", "dcor")


def in_out_pair(study: Mapping[str, Any]) -> tuple[str, str]:
    """(in-distribution dataset, out-of-distribution dataset): the first marked ``in`` and the first marked
    ``out`` (``datasets.<name>.distribution``), else the study's first two datasets in order."""
    names = list(study)
    dist = {n: study[n].config.get("distribution") for n in names}
    first_in = next((n for n in names if dist[n] == "in"), None)
    first_out = next((n for n in names if dist[n] == "out"), None)
    if first_in and first_out:
        return first_in, first_out
    return names[0], names[1]


def _shared(study: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The models compared on every dataset of ``names``, in the first dataset's order."""
    first = list(study[names[0]].results["models"])
    return [m for m in first if all(m in study[n].results["models"] for n in names[1:])]


def _mappable(study: Mapping[str, Any], names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The models compared on every dataset of ``names`` whose features have one width on all of them, and why each
    other model compared on all of them is left out."""
    everywhere = _shared(study, names)
    widths = {m: {study[n].aligned.embeddings[m].features.shape[1] for n in names} for m in everywhere}
    left = {
        m: f"its features differ in width between the datasets ({sorted(widths[m])}: a dataset-dependent basis, "
        "e.g. SOAP's species)"
        for m in everywhere
        if len(widths[m]) != 1
    }
    return [m for m in everywhere if m not in left], left


def _map_datasets(study: Mapping[str, Any], names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The datasets of the joint maps: ``names``, dropping (one at a time, the one whose removal keeps the most models)
    those that leave fewer than two mappable models besides the random baseline, down to two datasets; and why."""

    def models(ns: Sequence[str]) -> list[str]:
        return [m for m in _mappable(study, ns)[0] if study[ns[0]].aligned.family(m) != "baseline"]

    keep, left = list(names), {}
    while len(keep) > 2 and len(models(keep)) < 2:
        drop = max(reversed(keep), key=lambda n: len(models([k for k in keep if k != n])))
        rest = [k for k in keep if k != drop]
        left[drop] = (
            f"{len(models(keep))} model(s) besides the random baseline map on all of {', '.join(keep)}, "
            f"{len(models(rest))} without {drop}"
        )
        keep = rest
    return keep, left


def _joint_maps(
    study: Mapping[str, Any],
    names: Sequence[str],
    models: Sequence[str],
    cfg: Mapping[str, Any],
    root: Path,
    entry: dict[str, Any],
) -> dict[str, np.ndarray]:
    from jaxalign.preprocessing import center_scale_total_variance
    from jaxalign.projection import pcovr

    ccfg = dict(cfg.get("cross_dataset") or {})
    cap, seed = int(ccfg.get("map_rows", 1000)), int(ccfg.get("seed", 0))
    rows = {n: seeded_rows(study[n].aligned.n, cap, seed) for n in names}
    setting = (cfg.get("maps") or {}).get("umap", "auto")
    try:
        import umap
    except ImportError:
        umap = None
    use_umap = umap is not None and setting not in (False, "false")
    targets = [study[n].results["energy"].get("target") for n in names]
    alpha, y = 1.0, None  # PCovR's energy target: every dataset's composition-detrended energy per atom, else a PCA
    if all(tg is not None for tg in targets):
        y = np.concatenate([np.asarray(tg, float)[rows[n]] / np.asarray(study[n].results["n_atoms"], float)[rows[n]]
                            for tg, n in zip(targets, names, strict=True)])  # fmt: skip
        if np.isfinite(y).all() and y.std() > 0:
            alpha, y = float((cfg.get("maps") or {}).get("alpha", 0.5)), (y - y.mean()) / y.std()
        else:
            y = None
    params = {
        "alpha": alpha,
        "y": None if y is None else content_key("y", {"y": np.round(y, 8).tolist()}),
        "datasets": {n: study[n].ctx.key("cross", {}) for n in names},
        "models": list(models),
        "rows": {n: int(r.size) for n, r in rows.items()},
        "seed": seed,
        "umap": getattr(umap, "__version__", None) if use_umap else None,
    }
    path = root / f"cross-maps-{content_key('cross-maps', params)}.npz"
    if path.exists():
        entry["cached"] += len(models)
        return read_npz(path)
    out: dict[str, np.ndarray] = {
        "dataset": np.concatenate([np.full(rows[n].size, i) for i, n in enumerate(names)]),
        "pcovr_alpha": np.asarray(alpha),
    }
    steps = cfg.get("preprocessing") or []
    for m in models:
        x = np.concatenate([study[n].aligned.embeddings[m].features[rows[n]] for n in names])
        x = preprocess(x, steps)
        xs = np.asarray(center_scale_total_variance(x), dtype=np.float32)
        target = np.zeros(len(xs), np.float32) if y is None else y.astype(np.float32)
        out[f"pcovr:{m}"] = np.asarray(pcovr(xs, target, alpha=alpha, n_components=2).transform(xs), np.float32)
        if use_umap:
            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=0, n_jobs=1)
            out[f"umap:{m}"] = np.asarray(reducer.fit_transform(x), dtype=np.float32)
        err = [study[n].results["energy"].get("per_structure", {}).get(m) for n in names]
        if all(e is not None for e in err):
            out[f"energy_error:{m}"] = np.concatenate([np.asarray(e)[rows[n]] for e, n in zip(err, names, strict=True)])
        entry["computed"] += 1
        beat()
    write_npz(path, out)
    return read_npz(path)


def _pair_values(results: Mapping[str, Any], models: Sequence[str], key: str) -> np.ndarray:
    """(M, M) submatrix of ``key`` over ``models`` (rows: source, for the asymmetric measures)."""
    idx = [list(results["models"]).index(m) for m in models]
    return np.asarray(results["matrices"][key], dtype=np.float64)[np.ix_(idx, idx)]


def _checks(cross: Mapping[str, Any]) -> list[dict[str, Any]]:
    a, b = cross["in"], cross["out"]
    models, fams = cross["in_out_models"], cross["in_out_families"]
    m = len(models)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m) if BASELINE_FAMILY not in (fams[i], fams[j])]
    marked = cross["marked"]
    where = f"{a} (in) vs {b} (out)" if marked else f"{a} vs {b} (no `distribution: in/out` set: the first two)"
    checks = []
    finding = "Local alignment is higher in distribution (seed 000 Fig. 2C)"
    if pairs and marked:
        ca, cb = cross[f"cknna:{a}"], cross[f"cknna:{b}"]
        higher = sum(ca[i, j] > cb[i, j] for i, j in pairs)
        checks.append(
            {
                "finding": finding,
                "numbers": f"{where}: CKNNA higher in distribution for {higher} of {len(pairs)} model pairs (mean "
                f"{np.mean([ca[i, j] for i, j in pairs]):.3f} vs {np.mean([cb[i, j] for i, j in pairs]):.3f})",
                "rule": "more than half of the model pairs (random baseline left out)",
                "value": f"{higher / len(pairs):.0%}",
                "passed": bool(higher > len(pairs) / 2),
            }
        )
    else:
        checks.append(_na(finding, where, pairs))
    finding = "Out of distribution, models share more information (seed 000 Fig. 2B)"
    k = cross["ii_k"]
    if pairs and marked and k is not None:
        ia, ib = cross[f"ii@{k}:{a}"], cross[f"ii@{k}:{b}"]
        mean_a = float(np.mean([(ia[i, j] + ia[j, i]) / 2 for i, j in pairs]))
        mean_b = float(np.mean([(ib[i, j] + ib[j, i]) / 2 for i, j in pairs]))
        checks.append(
            {
                "finding": finding,
                "numbers": f"{where}: mean information imbalance (Δ(a→b) + Δ(b→a))/2 at k = {k} over "
                f"{len(pairs)} model pairs: {mean_a:.3f} in, {mean_b:.3f} out",
                "rule": "model pairs nearer the origin of the information-imbalance plane out of distribution",
                "value": f"{mean_b - mean_a:+.3f}",
                "passed": bool(mean_b < mean_a),
            }
        )
    else:
        checks.append(_na(finding, where, pairs))
    return checks


def _na(finding: str, where: str, pairs: Sequence[Any]) -> dict[str, Any]:
    why = "needs one dataset marked `distribution: in` and one `out`" if pairs else "needs two trained models"
    return {"finding": finding, "numbers": f"{where}: {why}", "rule": "", "value": "n/a", "passed": None}


def analyse(study: Mapping[str, Any], cfg: Mapping[str, Any], root: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The cross-dataset analyses of a study (module docstring). ``study``: dataset name →
    :class:`experiments.pipeline.DatasetRun` with its results; ``cfg``: the ``analysis`` config."""
    names = list(study)
    a, b = in_out_pair(study)
    dist = {n: study[n].config.get("distribution") for n in names}
    everywhere = _shared(study, names)
    pair_models = _shared(study, [a, b])
    out: dict[str, Any] = {
        "datasets": names,
        "distribution": dist,
        "n_structures": {n: int(study[n].results["n_structures"]) for n in names},
        "in": a,
        "out": b,
        "marked": dist[a] == "in" and dist[b] == "out",
        "shared_models": everywhere,
        "families": {
            m: f for n in names for m, f in zip(study[n].results["models"], study[n].results["families"], strict=True)
        },
        "in_out_models": pair_models,
        "in_out_families": [study[a].aligned.family(m) for m in pair_models],
        "intrinsic_dimension": {
            n: {
                m: float(v["twonn"])
                for m, v in (study[n].results["intrinsic_dimension"] or {}).items()
                if isinstance(v, Mapping)
            }
            for n in names
        },
        "energy_mae": {n: dict((study[n].results["energy"] or {}).get("mae_mev_atom") or {}) for n in names},
        "metadata": {m: d for n in names for m, d in (study[n].results.get("metadata") or {}).items()},
    }
    ks = [sorted(int(k) for k in study[n].results["matrices"]["ii_k"]) for n in (a, b)]
    out["ii_k"] = ks[0][0] if ks[0] and ks[0] == ks[1] else None
    for n in (a, b):
        for key in (*PAIR_METRICS, *([f"ii@{out['ii_k']}"] if out["ii_k"] is not None else [])):
            out[f"{key}:{n}"] = _pair_values(study[n].results, pair_models, key)
    map_names, out["map_datasets_left_out"] = _map_datasets(study, names)
    mappable, out["map_left_out"] = _mappable(study, map_names)
    out["map_datasets"] = map_names
    out["map_models"] = mappable
    out["maps"] = _joint_maps(study, map_names, mappable, cfg, root, entry) if mappable else {}
    out["checks"] = _checks(out)
    entry["summary"] = (
        f"{len(names)} datasets; {len(everywhere)} models on every one (joint maps of "
        f"{len(out['maps'].get('dataset', []))} structures of {', '.join(map_names)}, {len(mappable)} models); "
        f"in vs out: {a} vs {b}, "
        f"{len(pair_models)} models"
    )
    return out


def save(out_dir: Path, cross: Mapping[str, Any]) -> None:
    """``cross.json`` (datasets, models, checks, I_d and energy errors per dataset) and ``maps.npz``."""
    plain = {k: v for k, v in cross.items() if not isinstance(v, np.ndarray) and k != "maps"}
    write_json(out_dir / "cross.json", plain)
    arrays = {k: v for k, v in cross.items() if isinstance(v, np.ndarray)}
    write_npz(out_dir / "pairs.npz", {**arrays, "models": np.array(cross["in_out_models"])})
    if cross.get("maps"):
        write_npz(out_dir / "maps.npz", {**cross["maps"], "datasets": np.array(cross["datasets"])})
