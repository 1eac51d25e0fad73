"""The experiment pipeline behind ``python experiments/run.py``: dataset → extraction → matrices → intrinsic
dimension → reconstruction → energy errors → maps → figures → report.

:func:`run_pipeline` takes the resolved Hydra configuration as a plain dict and a run directory. Every stage reads
its result from the cache when its content key matches (see :mod:`experiments.cache`), so a rerun recomputes
nothing and a killed run resumes; each stage prints one summary line and appends it to ``stage_log.jsonl``. The run
directory receives ``results/`` (matrices as ``.npz`` and ``.csv``, ``results.json``), ``figures/`` (PNG + SVG),
``report.md`` and ``report.html``.

Every stage runs under the watchdog (:mod:`experiments.watchdog`, config ``watchdog``): a stage that makes no
progress for ``watchdog.stall_s`` seconds ends the run with one ``error: stage ...`` line and exit code 2, and is
recorded in ``stage_log.jsonl`` with status ``stalled``.

The run and cache directories are checked for writing before any stage (one ``error: ...`` line otherwise). Runs may
share a cache: every file is written under a per-process temporary name and renamed, and extraction holds a lock per
model file (see :mod:`experiments.stages.extraction`). ``debug.stop_after`` (tests) ends the run after the dataset or
the extraction stage.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cache import StageLog, atomic_write_bytes, content_key, read_json, write_json, write_npz
from experiments.features import align_models
from experiments.stages import figures, report
from experiments.stages.context import Context
from experiments.stages.dataset import prepare_dataset
from experiments.stages.energy import energy_errors
from experiments.stages.extraction import extract_models
from experiments.stages.id_correlation import id_correlations
from experiments.stages.intrinsic_dimension import intrinsic_dimensions
from experiments.stages.maps import structure_maps, umap_maps
from experiments.stages.matrices import alignment_matrices
from experiments.stages.reconstruction import reconstruction
from experiments.stages.significance import significance
from experiments.stages.tree import model_tree
from experiments.watchdog import Watchdog, WatchdogConfig

__all__ = ["run_pipeline"]

REPO = Path(__file__).resolve().parents[1]


def _setup_jax(cache_dir: Path, cfg: Mapping[str, Any]) -> int:
    """Persistent XLA compilation cache under the cache directory (a rerun compiles nothing either); with
    ``distributed``, one jax process per host (:func:`jax.distributed.initialize`). Returns this process's index:
    every process runs the stages up to the sweeps (matrices, significance), whose work units they share; process 0
    alone goes on to the rest and writes the run directory."""
    import jax

    dist = cfg.get("distributed") or False
    if dist is not False and not jax.distributed.is_initialized():
        if dist is True:
            jax.distributed.initialize()
        elif isinstance(dist, Mapping):
            jax.distributed.initialize(**dict(dist))
        else:
            raise ValueError(
                f"distributed must be false, true or a mapping of jax.distributed.initialize's arguments, got {dist!r}."
            )

    where = cfg.get("jax_compilation_cache", True)
    if where:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir / "xla" if where is True else Path(where)))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return jax.process_index()


def _digest(obj: Any) -> str:
    """sha256 of the canonical JSON of a nested structure (arrays as lists): equal for a computed and a cached run."""
    from experiments.cache import _json_default

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def _source_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def _metadata(models_cfg: Mapping[str, Any], aligned: Any) -> dict[str, dict[str, Any]]:
    """Each compared model's registry metadata with the run's corrections (``models.meta.<id>.<field>``)."""
    from extractors.metadata import model_meta

    overrides = dict(models_cfg.get("meta") or {})
    unknown = sorted(set(overrides) - set(aligned.models) - set(models_cfg.get("ids") or []))
    if unknown:
        raise ValueError(f"models.meta names models this run does not have: {unknown}; use ids from models.ids.")
    out = {}
    for m in aligned.models:
        try:
            out[m] = model_meta(m, aligned.family(m), overrides.get(m)).as_dict()
        except ValueError as err:
            raise ValueError(f"models.meta.{m}: {err}") from None
    return out


def _model_rows(runs: Sequence[Any], aligned: Any) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "model": run.model,
            "family": run.family,
            "cached": run.cached,
            "n_params": run.info.get("n_params"),
            "wall_s": run.info.get("wall_s"),
            "load_s": run.info.get("load_s"),
            "dim": None,
            "atom_dim": None,
            "embedded": 0,
            "failures": "—",
            "status": "compared",
        }
        if run.path is not None:
            with np.load(run.path) as z:
                meta = json.loads(str(z["meta"]))
                row["dim"] = int(z["features"].shape[1])
                if "atom_features" in z.files:
                    row["atom_dim"] = int(z["atom_features"].shape[1])
            fails = meta.get("failures") or []
            row["embedded"] = int(meta["n_structures"])
            if fails:
                row["failures"] = f"{len(fails)} (e.g. {fails[0]['id']}: {fails[0]['reason'][:80]})"
            else:
                row["failures"] = "0"
        if run.model in aligned.excluded:
            row["status"] = "left out: " + aligned.excluded[run.model]
        rows.append(row)
    return rows


def _save_results(run_dir: Path, results: Mapping[str, Any]) -> None:
    out = run_dir / "results"
    names = list(results["models"])
    mats = {k: v for k, v in results["matrices"].items() if isinstance(v, np.ndarray)}
    write_npz(out / "matrices.npz", {**mats, "models": np.array(names)})
    for key, mat in mats.items():
        lines = ["," + ",".join(names)] + [
            f"{n}," + ",".join(f"{x:.6g}" for x in row) for n, row in zip(names, mat, strict=True)
        ]
        (out / "csv").mkdir(parents=True, exist_ok=True)
        (out / "csv" / f"{key.replace('@', '_k')}.csv").write_text("\n".join(lines) + "\n")
    sig = results.get("significance") or {}
    sig_arrays = {k: v for k, v in sig.items() if isinstance(v, np.ndarray)}
    if sig_arrays:
        write_npz(out / "significance.npz", {**sig_arrays, "models": np.array(names)})
    rec = results.get("reconstruction") or {}
    rec_arrays = {k: v for k, v in rec.items() if isinstance(v, np.ndarray)}
    if rec_arrays:
        write_npz(out / "reconstruction.npz", {**rec_arrays, "models": np.array(rec.get("models", []))})
    summary = {
        "models": names,
        "families": results["families"],
        "n_structures": results["n_structures"],
        "structure_ids": list(results["structure_ids"]),
        "intrinsic_dimension": {
            m: {k: v for k, v in d.items() if k != "local_mle"}
            for m, d in (results["intrinsic_dimension"] or {}).items()
            if isinstance(d, Mapping)
        },
        "energy": {k: v for k, v in (results["energy"] or {}).items() if k not in ("per_structure", "target")},
        "checks": results["checks"],
        "cknna_k": results["matrices"]["cknna_k_main"],
        "cknna_k_sweep": results["matrices"]["cknna_k"],
        "significance": {k: v for k, v in sig.items() if not isinstance(v, np.ndarray)},
        "id_correlation": dict(results.get("id_correlation") or {}),
        "metadata": results.get("metadata") or {},
    }
    write_json(out / "results.json", summary)
    if results.get("tree"):
        atomic_write_bytes(out / "tree.nwk", (results["tree"]["newick"] + "\n").encode())


def _energy_note(energy: Mapping[str, Any]) -> str:
    ref = energy.get("reference")
    base = (
        "Energy-regression MAE (seed 000 eqs. 1–4): the reference energies and each model's energies are "
        "separately fitted by a linear function of the element counts plus a constant, and the MAE compares the "
        "residuals. "
    )
    if ref == "dataset":
        return base + "Reference: the dataset's own energies."
    if ref == "consensus":
        return base + (
            "Reference: the dataset has no reference energies (the embedded default set has none), so each model is "
            "compared with the consensus of the others — the per-structure median, over every other model with an "
            "energy head, of their composition-detrended energies (leave-one-out, so no model is compared with "
            "itself). A low error therefore means agreement with the other potentials, not with DFT."
        )
    return base + f"Reference: the energies predicted by {ref} (its own error is 0 by construction)."


def _cached_json(ctx: Context, name: str, params: Any, compute: Any, entry: dict[str, Any]) -> Any:
    path = ctx.root / f"{name}-{ctx.key(name, params)}.json"
    if path.exists():
        entry["cached"] += 1
        return read_json(path)
    write_json(path, compute())
    return read_json(path)  # the same representation as a cached run gets


@contextlib.contextmanager
def _stage(log: StageLog, dog: Watchdog, name: str) -> Iterator[dict[str, Any]]:
    """``log.stage(name)`` under the watchdog; a stage it stops is appended to the log with status ``stalled``."""
    with log.stage(name) as entry:

        def stalled(message: str, seconds: float) -> None:
            log.append({**entry, "summary": message, "seconds": round(seconds, 3), "status": "stalled"})

        with dog.watch(name, stalled):
            yield entry


def run_pipeline(cfg: Mapping[str, Any], run_dir: str | Path, *, command: str = "") -> dict[str, Any]:
    """Run every stage for the resolved configuration ``cfg`` and write the results into ``run_dir``."""
    from extractors.faults import ensure_writable

    run_dir = ensure_writable(run_dir, "set hydra.run.dir= to a writable directory")
    cache_dir = ensure_writable(Path(cfg["cache_dir"]), "set cache_dir= to a writable directory")
    progress = bool(cfg.get("progress", True))
    debug = dict(cfg.get("debug") or {})
    stop_after = debug.get("stop_after")
    if stop_after not in (None, "dataset", "extraction"):
        raise ValueError(f"debug.stop_after must be null, 'dataset' or 'extraction', got {stop_after!r}.")
    rank = _setup_jax(cache_dir, cfg)
    if rank:  # under jax.distributed only process 0 writes the run's results; the others log beside them
        run_dir = ensure_writable(run_dir / f"process{rank}", "set hydra.run.dir= to a writable directory")
    log = StageLog(run_dir / "stage_log.jsonl")
    dog = Watchdog(WatchdogConfig.from_mapping(cfg.get("watchdog")), dump_path=run_dir / "watchdog_stacks.txt")
    stage = functools.partial(_stage, log, dog)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()

    with stage("dataset") as e:
        ds, cached = prepare_dataset(cfg["dataset"], cache_dir)
        e["cached" if cached else "computed"] += 1
        s = ds.summary
        e["summary"] = (
            f"{s['n_selected']} structures drawn from {s['n_read']} ({s['label']}; {s['n_molecules']} "
            f"molecules, {s['n_periodic']} periodic, {s['atoms_total']} atoms)"
        )

    if stop_after == "dataset":
        return {"dataset": s}
    with stage("extraction") as e:
        runs = extract_models(ds, cfg["models"], cache_dir, cfg.get("extraction") or {}, progress=progress)
        for r in runs:
            e["cached" if r.cached else "computed"] += 1
        failed = [r.model for r in runs if r.path is None]
        e["summary"] = f"{len(runs)} models on {s['n_selected']} structures" + (f"; failed: {failed}" if failed else "")
        e["models"] = {r.model: r.info.get("wall_s") for r in runs}

    if stop_after == "extraction":
        return {"dataset": s, "extraction": runs}
    acfg = dict(cfg["analysis"])
    aligned = align_models(runs, s["n_selected"], min_coverage=float(acfg.get("min_coverage", 0.5)))
    ctx = Context(aligned, acfg, cache_dir / "analysis", progress=progress, fail_after=debug.get("fail_after_items"))
    metadata = _metadata(cfg["models"], aligned)

    with stage("matrices") as e:
        mats = alignment_matrices(ctx, e)
        e["summary"] = f"N = {aligned.n} common structures; " + e["summary"]
    with stage("significance") as e:
        sig = significance(ctx, mats, e)
    if rank:  # the sweeps above are the stages the processes share; process 0 does the rest
        return {"process": rank, "matrices": mats, "significance": sig}
    with stage("intrinsic_dimension") as e:
        ids = intrinsic_dimensions(ctx, e)
    with stage("id_correlation") as e:
        idcor = id_correlations(ctx, e)
        if idcor:
            mats = {**mats, "id_cor": idcor["corr"], "id_cor_p": idcor["p"]}
    with stage("tree") as e:
        params = {"tree": acfg.get("tree") or {}, "cknna": acfg.get("cknna") or {}, "families": aligned.families}
        compute = functools.partial(model_tree, acfg, aligned.models, aligned.families, mats["cknna"])
        tree = _cached_json(ctx, "tree", params, compute, e)
        if not e["cached"]:
            e["computed"] += 1
        left_out = f" (left out: {', '.join(tree['excluded'])})" if tree and tree["excluded"] else ""
        e["summary"] = f"{len(tree['models'])} models{left_out}" if tree else "skipped: fewer than 3 models"
    with stage("reconstruction") as e:
        rec = reconstruction(ctx, e)
    with stage("energy") as e:
        energy = _cached_json(
            ctx,
            "energy",
            acfg.get("energy") or {},
            lambda: energy_errors(ctx, s, {"computed": 0, "summary": ""}),
            e,
        )
        if not e["cached"]:
            e["computed"] += 1
        mae = energy.get("mae_mev_atom") or {}
        if mae:
            best = min(mae, key=mae.get)
            e["summary"] = f"{len(mae)} models vs the {energy['reference']} reference; lowest error {best} "
            e["summary"] += f"({mae[best]:.1f} meV/atom)"
        else:
            e["summary"] = f"skipped: {energy.get('note')}"
    with stage("maps") as e:
        maps = structure_maps(ctx, energy.get("target"), e)
        umap = umap_maps(ctx, e)
        if umap:
            e["summary"] += " and UMAP maps"

    id_of = {r["id"]: r for r in s["records"]}
    results: dict[str, Any] = {
        "models": aligned.models,
        "families": aligned.families,
        "n_structures": aligned.n,
        "structure_ids": aligned.ids.tolist(),
        "matrices": mats,
        "significance": sig,
        "intrinsic_dimension": ids,
        "id_correlation": {k: v for k, v in idcor.items() if k in ("rows", "draws", "alpha")},
        "reconstruction": rec,
        "tree": tree,
        "energy": energy,
        "maps": maps,
        "umap": umap,
        "metadata": metadata,
        "n_params": {r.model: r.info.get("n_params") for r in runs if r.model in aligned.models},
        "ood_mask": np.array([id_of[i]["split"] == "ood" for i in aligned.ids.tolist()]),
        "n_atoms": np.array([id_of[i]["n_atoms"] for i in aligned.ids.tolist()]),
    }
    results["figure_settings"] = {
        "family_include_self": bool((acfg.get("condensed") or {}).get("include_self", False)),
        "energy_unit": str((acfg.get("energy") or {}).get("unit", "mev_per_atom")),
    }
    results["checks"] = report.qualitative_checks(results)
    _save_results(run_dir, results)

    with stage("figures") as e:
        sources = [*(REPO / "jaxalign" / "plots").glob("*.py"), REPO / "experiments" / "stages" / "figures.py"]
        fkey = content_key("figures", {"results": _digest(results), "code": _source_digest(sources)})
        fdir = cache_dir / "figures" / fkey
        if not (fdir / "figures.json").exists():
            tmp = cache_dir / "figures" / f".{fkey}.tmp{os.getpid()}"  # per process: runs may share the cache
            shutil.rmtree(tmp, ignore_errors=True)
            drawn = figures.draw_figures(figures.figure_plan(results), tmp, progress=progress)
            write_json(tmp / "figures.json", drawn)
            if fdir.exists() and not (fdir / "figures.json").exists():
                shutil.rmtree(fdir, ignore_errors=True)  # an unfinished directory of an older layout
            try:
                tmp.rename(fdir)
            except OSError:  # another run sharing the cache renamed the same figures into place first
                shutil.rmtree(tmp, ignore_errors=True)
            e["computed"] += len(drawn)
        else:
            e["cached"] += len(read_json(fdir / "figures.json"))
        drawn = read_json(fdir / "figures.json")
        shutil.copytree(fdir, run_dir / "figures", dirs_exist_ok=True)
        e["summary"] = f"{len(drawn)} figures (PNG + SVG) in {run_dir / 'figures'}"

    with stage("report") as e:
        import yaml

        notes = [
            "Alignment metrics use the pooled structure features after "
            + (", ".join(map(str, acfg.get("preprocessing") or [])) or "no preprocessing")
            + "; kNN graphs are computed "
            "once per model and reused for every pair and k. Features are rotated into their row space and "
            "zero-padded to one shared width before the metrics (an isometry: inner products and distances are "
            "unchanged), so each metric compiles once.",
        ]
        if aligned.excluded:
            notes.append("Left out of the comparison: " + "; ".join(f"{m}: {r}" for m, r in aligned.excluded.items()))
        context = {
            "dataset": s,
            "run_dir": str(run_dir),
            "started": started,
            "total_s": time.perf_counter() - t0,
            "command": command or "python experiments/run.py",
            "stages": log.stages,
            "model_rows": _model_rows(runs, aligned),
            "energy_note": _energy_note(energy),
            "notes": notes,
            "config_yaml": yaml.safe_dump(dict(cfg), sort_keys=False),
        }
        md, htm = report.write_report(run_dir, results, context, drawn)
        e["summary"] = f"{md.name} and {htm.name}; qualitative checks: {report.check_tally(results['checks'])}"
    return results
