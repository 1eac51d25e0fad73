"""The experiment pipeline behind ``python experiments/run.py``: for each dataset of the study, dataset →
extraction → matrices → significance → intrinsic dimension → I_d Cor → tree → reconstruction → energy errors →
maps; then the cross-dataset analyses (when the study has several datasets), figures and one report.

:func:`run_pipeline` takes the resolved Hydra configuration as a plain dict and a run directory. A study is one
dataset (``+dataset=NAME``) or several (``datasets``, the default: the embedded molecules and crystals); each model
runs on the datasets it can read (:func:`extractors.metadata.unreadable`: a SMILES model not on crystals), and each
dataset is compared on the models that embed it. Every stage reads its result from the cache when its content key
matches (see :mod:`experiments.cache`), so a rerun recomputes nothing and a killed run resumes; each stage prints
one summary line and appends it to ``stage_log.jsonl`` (with its dataset). The run directory receives
``results/<dataset>/`` (matrices as ``.npz`` and ``.csv``, ``results.json``, ``tree.nwk``),
``results/cross_dataset/``, ``figures/<dataset>/`` and ``figures/cross_dataset/`` (PNG + SVG), ``report.md`` and
``report.html``.

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
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cache import StageLog, atomic_write_bytes, content_key, read_json, write_json, write_npz
from experiments.features import align_models
from experiments.stages import cross_dataset, figures, report
from experiments.stages.context import Context
from experiments.stages.dataset import DatasetStage, prepare_dataset
from experiments.stages.energy import energy_errors
from experiments.stages.extraction import extract_models
from experiments.stages.id_correlation import id_correlations
from experiments.stages.intrinsic_dimension import intrinsic_dimensions
from experiments.stages.maps import cumulant_maps, structure_maps, umap_maps
from experiments.stages.matrices import alignment_matrices
from experiments.stages.reconstruction import reconstruction
from experiments.stages.significance import significance
from experiments.stages.tree import model_tree
from experiments.watchdog import Watchdog, WatchdogConfig

__all__ = ["dataset_configs", "run_pipeline", "setup_jax"]

REPO = Path(__file__).resolve().parents[1]


def setup_jax(cache_dir: Path, cfg: Mapping[str, Any]) -> int:
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


def _save_results(out: Path, results: Mapping[str, Any]) -> None:
    """One dataset's results in ``out``: ``matrices.npz`` and ``csv/``, ``significance.npz``, ``reconstruction.npz``,
    ``results.json`` and ``tree.nwk``."""
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
        "dataset": results["dataset"],
        "distribution": results["distribution"],
        "coverage": results["coverage"],
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
def _stage(log: StageLog, dog: Watchdog, name: str, dataset: str | None = None) -> Iterator[dict[str, Any]]:
    """``log.stage(name, dataset)`` under the watchdog; a stage it stops is appended to the log as ``stalled``."""
    with log.stage(name, dataset) as entry:

        def stalled(message: str, seconds: float) -> None:
            log.append({**entry, "summary": message, "seconds": round(seconds, 3), "status": "stalled"})

        with dog.watch(name if dataset is None else f"{dataset}/{name}", stalled):
            yield entry


#: the directory of the run's cross-dataset results and figures (not a dataset name).
CROSS = "cross_dataset"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def dataset_configs(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's datasets, name → dataset config, in order: ``dataset`` alone when the run has it (``+dataset=X``),
    else the ``datasets`` mapping of the study (the default: the embedded molecules and crystals)."""
    single = cfg.get("dataset")
    if single:
        return {str(single.get("name") or "dataset"): dict(single)}
    many = cfg.get("datasets") or {}
    if not isinstance(many, Mapping) or not many:
        raise ValueError(
            "the run has no dataset: use the default study (datasets=default), one dataset (+dataset=NAME "
            "dataset.path=...) or add datasets with +dataset@datasets.NAME=OPTION."
        )
    for name, dcfg in many.items():
        if not _NAME.match(str(name)) or name == CROSS:
            raise ValueError(
                f"datasets.{name}: a dataset's name must be letters, digits, '_', '.' or '-' (and not {CROSS!r}); "
                "rename it."
            )
        if not isinstance(dcfg, Mapping):
            raise ValueError(f"datasets.{name} must be a dataset config (e.g. +dataset@datasets.{name}=omat24).")
    return {str(k): dict(v) for k, v in many.items()}


def _readable_models(
    stages: Mapping[str, DatasetStage],
    configs: Mapping[str, Mapping[str, Any]],
    models_cfg: Mapping[str, Any],
    *,
    compare: bool = True,
) -> tuple[dict[str, dict[str, str | None]], dict[str, str]]:
    """Which model runs on which dataset: (model → dataset → why it does not run there, None when it does; left-out
    dataset → why). A model does not run on a dataset whose records it cannot read, or whose ``models`` list (its
    config: model ids and modalities) leaves it out. When the run ``compare``s (it does not stop after extraction), a
    dataset with fewer than two models to compare is left out of a study that keeps another; a study that keeps none,
    and a model that runs on no dataset kept, are errors naming them."""
    from experiments.stages.extraction import check_models
    from extractors.metadata import model_meta, unreadable
    from extractors.registry import base_id, split_layer

    ids = list(models_cfg["ids"])
    specs = check_models(ids, dict(models_cfg.get("python") or {}), envs=models_cfg.get("envs", "auto"))
    overrides = dict(models_cfg.get("meta") or {})
    modality = {m: model_meta(m, specs[m].family, overrides.get(m)).modality for m in ids}
    names = {m: {m, split_layer(m)[0], base_id(m), modality[m]} for m in ids}  # what a dataset's `models` matches
    out: dict[str, dict[str, str | None]] = {m: {} for m in ids}
    for name, ds in stages.items():
        chosen = configs[name].get("models")
        chosen = None if chosen is None else {str(c) for c in chosen}
        records = ds.records()
        for m in ids:
            if chosen is not None and not names[m] & chosen:
                out[m][name] = f"not in datasets.{name}.models"
                continue
            reasons = [unreadable(modality[m], r) for r in records]
            out[m][name] = (
                None
                if any(r is None for r in reasons)
                else f"reads {modality[m]}; none of the {len(records)} structures has it ({reasons[0]})"
            )

    def run_nowhere() -> None:
        for m, per in out.items():
            if all(per.values()):
                where = "; ".join(f"{d}: {why}" for d, why in per.items())
                raise ValueError(
                    f"model {m!r} is run on no dataset of this run ({where}); drop it from models.ids or add a "
                    "dataset it reads."
                )

    run_nowhere()
    if not compare:  # extraction only: one model on one dataset is a run
        return out, {}
    run_on = {name: [m for m in ids if out[m][name] is None] for name in stages}
    left_out = {
        name: f"fewer than two of the run's models run on it ({', '.join(ms) or 'none'})"
        for name, ms in run_on.items()
        if len(ms) < 2
    }
    if len(left_out) == len(stages):
        raise ValueError(
            "; ".join(f"dataset {name!r}: {why}" for name, why in left_out.items())
            + ": add models that read it to models.ids (or widen its `models` list)."
        )
    for per in out.values():
        for name in left_out:
            per[name] = per[name] or f"dataset left out: {left_out[name]}"
    run_nowhere()
    return out, left_out


@dataclasses.dataclass
class DatasetRun:
    """One dataset of the study: its drawn records, extraction runs, aligned models, analysis context and results."""

    name: str
    config: dict[str, Any]
    stage: DatasetStage
    runs: list[Any] = dataclasses.field(default_factory=list)
    aligned: Any = None
    ctx: Context | None = None
    results: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        return self.stage.summary


def _analyse(
    d: DatasetRun, cfg: Mapping[str, Any], cache_dir: Path, stage: Any, rank: int, progress: bool
) -> dict[str, Any]:
    """Every analysis stage of one dataset (matrices … maps); returns its results (only the sweeps' on rank > 0)."""
    debug = dict(cfg.get("debug") or {})
    acfg = dict(cfg["analysis"])
    s = d.summary
    try:
        aligned = align_models(d.runs, s["n_selected"], min_coverage=float(acfg.get("min_coverage", 0.5)))
    except ValueError as err:
        raise ValueError(f"dataset {d.name!r}: {err}") from None
    ctx = Context(aligned, acfg, cache_dir / "analysis", progress=progress, fail_after=debug.get("fail_after_items"))
    d.aligned, d.ctx = aligned, ctx
    with stage("matrices", d.name) as e:
        mats = alignment_matrices(ctx, e)
        e["summary"] = f"N = {aligned.n} common structures; " + e["summary"]
    with stage("significance", d.name) as e:
        sig = significance(ctx, mats, e)
    if rank:  # the sweeps above are the stages the processes share; process 0 does the rest
        return {"process": rank, "matrices": mats, "significance": sig}
    metadata = _metadata(cfg["models"], aligned)
    with stage("intrinsic_dimension", d.name) as e:
        ids = intrinsic_dimensions(ctx, e)
    with stage("id_correlation", d.name) as e:
        idcor = id_correlations(ctx, e)
        if idcor:
            mats = {**mats, "id_cor": idcor["corr"], "id_cor_p": idcor["p"]}
    with stage("tree", d.name) as e:
        params = {"tree": acfg.get("tree") or {}, "cknna": acfg.get("cknna") or {}, "families": aligned.families}
        compute = functools.partial(model_tree, acfg, aligned.models, aligned.families, mats["cknna"])
        tree = _cached_json(ctx, "tree", params, compute, e)
        if not e["cached"]:
            e["computed"] += 1
        left_out = f" (left out: {', '.join(tree['excluded'])})" if tree and tree["excluded"] else ""
        e["summary"] = f"{len(tree['models'])} models{left_out}" if tree else "skipped: fewer than 3 models"
    with stage("reconstruction", d.name) as e:
        rec = reconstruction(ctx, e)
    with stage("energy", d.name) as e:
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
    with stage("maps", d.name) as e:
        maps = structure_maps(ctx, energy.get("target"), e)
        umap = umap_maps(ctx, e)
        if umap:
            e["summary"] += " and UMAP maps"
        cmaps = cumulant_maps(ctx, energy.get("target"), e)

    id_of = {r["id"]: r for r in s["records"]}
    results: dict[str, Any] = {
        "dataset": d.name,
        "distribution": d.config.get("distribution"),
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
        "cumulant_maps": cmaps,
        "metadata": metadata,
        "coverage": {m: float(c) for m, c in aligned.coverage.items()},
        "n_params": {r.model: r.info.get("n_params") for r in d.runs if r.model in aligned.models},
        "ood_mask": np.array([id_of[i]["split"] == "ood" for i in aligned.ids.tolist()]),
        "n_atoms": np.array([id_of[i]["n_atoms"] for i in aligned.ids.tolist()]),
    }
    results["figure_settings"] = {
        "family_include_self": bool((acfg.get("condensed") or {}).get("include_self", False)),
        "energy_unit": str((acfg.get("energy") or {}).get("unit", "mev_per_atom")),
    }
    results["checks"] = report.qualitative_checks(results)
    return results


def _draw(cache_dir: Path, run_dir: Path, plan: Sequence[Any], digest: str, progress: bool, e: dict) -> list:
    """Draw ``plan`` into the cache (keyed by the results' and the plotting code's digest) and copy it into the run;
    returns the drawn figures' ``[{stem, title, how_to_read}]``."""
    sources = [*(REPO / "jaxalign" / "plots").glob("*.py"), *(REPO / "experiments" / "stages").glob("figures*.py")]
    fkey = content_key("figures", {"results": digest, "code": _source_digest(sources)})
    fdir = cache_dir / "figures" / fkey
    if not (fdir / "figures.json").exists():
        tmp = cache_dir / "figures" / f".{fkey}.tmp{os.getpid()}"  # per process: runs may share the cache
        shutil.rmtree(tmp, ignore_errors=True)
        drawn = figures.draw_figures(plan, tmp, progress=progress)
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
    shutil.copytree(fdir, run_dir / "figures", dirs_exist_ok=True)
    return read_json(fdir / "figures.json")


def run_pipeline(cfg: Mapping[str, Any], run_dir: str | Path, *, command: str = "") -> dict[str, Any]:
    """Run every stage for the resolved configuration ``cfg`` and write the results into ``run_dir``; returns
    dataset name → its results (and ``cross_dataset`` → the cross-dataset analyses when the study has several)."""
    from extractors.faults import ensure_writable

    run_dir = ensure_writable(run_dir, "set hydra.run.dir= to a writable directory")
    cache_dir = ensure_writable(Path(cfg["cache_dir"]), "set cache_dir= to a writable directory")
    progress = bool(cfg.get("progress", True))
    debug = dict(cfg.get("debug") or {})
    stop_after = debug.get("stop_after")
    if stop_after not in (None, "dataset", "extraction"):
        raise ValueError(f"debug.stop_after must be null, 'dataset' or 'extraction', got {stop_after!r}.")
    configs = dataset_configs(cfg)
    rank = setup_jax(cache_dir, cfg)
    if rank:  # under jax.distributed only process 0 writes the run's results; the others log beside them
        run_dir = ensure_writable(run_dir / f"process{rank}", "set hydra.run.dir= to a writable directory")
    log = StageLog(run_dir / "stage_log.jsonl")
    dog = Watchdog(WatchdogConfig.from_mapping(cfg.get("watchdog")), dump_path=run_dir / "watchdog_stacks.txt")
    stage = functools.partial(_stage, log, dog)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()

    study: dict[str, DatasetRun] = {}
    for name, dcfg in configs.items():
        with stage("dataset", name) as e:
            ds, cached = prepare_dataset(dcfg, cache_dir)
            e["cached" if cached else "computed"] += 1
            s = ds.summary
            e["summary"] = (
                f"{s['n_selected']} structures drawn from {s['n_read']} ({s['label']}; {s['n_molecules']} "
                f"molecules, {s['n_periodic']} periodic, {s['atoms_total']} atoms)"
            )
        study[name] = DatasetRun(name, dcfg, ds)
    if stop_after == "dataset":
        return {name: {"dataset": d.summary} for name, d in study.items()}
    readable, left_out = _readable_models(
        {n: d.stage for n, d in study.items()}, configs, cfg["models"], compare=stop_after != "extraction"
    )
    for name, why in left_out.items():
        with stage("extraction", name) as e:
            e["summary"] = f"dataset left out of the study: {why}"
        del study[name]

    for d in study.values():
        with stage("extraction", d.name) as e:
            unread = {m: why[d.name] for m, why in readable.items() if why[d.name]}
            d.runs = extract_models(
                d.stage, cfg["models"], cache_dir, cfg.get("extraction") or {}, progress=progress, unread=unread
            )
            for r in d.runs:
                if r.unread is None:
                    e["cached" if r.cached else "computed"] += 1
            failed = [r.model for r in d.runs if r.path is None and r.unread is None]
            e["summary"] = f"{len(d.runs) - len(unread)} models on {d.summary['n_selected']} structures"
            if unread:
                e["summary"] += f"; not run (unreadable or left out by its models list): {sorted(unread)}"
            e["summary"] += f"; failed: {failed}" if failed else ""
            e["models"] = {r.model: r.info.get("wall_s") for r in d.runs if r.unread is None}
    if stop_after == "extraction":
        return {name: {"dataset": d.summary, "extraction": d.runs} for name, d in study.items()}

    for d in study.values():
        d.results = _analyse(d, cfg, cache_dir, stage, rank, progress)
    if rank:
        return {name: d.results for name, d in study.items()}
    for d in study.values():
        _save_results(run_dir / "results" / d.name, d.results)
    cross: dict[str, Any] = {}
    if len(study) > 1:
        with stage("cross_dataset") as e:
            cross = cross_dataset.analyse(study, cfg["analysis"], cache_dir / "analysis", e)
        cross_dataset.save(run_dir / "results" / CROSS, cross)

    with stage("figures") as e:
        plan = [
            dataclasses.replace(f, stem=f"{d.name}/{f.stem}")
            for d in study.values()
            for f in figures.figure_plan(d.results)
        ]
        if cross:
            plan += [dataclasses.replace(f, stem=f"{CROSS}/{f.stem}") for f in figures.cross_plan(cross)]
        digest = _digest({"datasets": {n: d.results for n, d in study.items()}, "cross": cross})
        drawn = _draw(cache_dir, run_dir, plan, digest, progress, e)
        e["summary"] = f"{len(drawn)} figures (PNG + SVG) in {run_dir / 'figures'}"

    with stage("report") as e:
        import yaml

        contexts = {}
        for d in study.values():
            preprocessing = ", ".join(map(str, cfg["analysis"].get("preprocessing") or [])) or "no preprocessing"
            notes = [
                f"Alignment metrics use the pooled structure features after {preprocessing}; kNN graphs are computed "
                "once per model and reused for every pair and k. Features are rotated into their row space and "
                "zero-padded to one shared width before the metrics (an isometry: inner products and distances are "
                "unchanged), so each metric compiles once.",
            ]
            if d.aligned.excluded:
                notes.append(
                    "Left out of the comparison: " + "; ".join(f"{m}: {r}" for m, r in d.aligned.excluded.items())
                )
            contexts[d.name] = {
                "dataset": d.summary,
                "model_rows": _model_rows(d.runs, d.aligned),
                "energy_note": _energy_note(d.results["energy"]),
                "notes": notes,
            }
        context = {
            "run_dir": str(run_dir),
            "started": started,
            "total_s": time.perf_counter() - t0,
            "command": command or "python experiments/run.py",
            "stages": log.stages,
            "datasets": contexts,
            "config_yaml": yaml.safe_dump(dict(cfg), sort_keys=False),
        }
        results = {d.name: d.results for d in study.values()}
        md, htm = report.write_report(run_dir, results, cross, context, drawn)
        checks = [c for r in results.values() for c in r["checks"]] + list(cross.get("checks") or [])
        e["summary"] = f"{md.name} and {htm.name}; qualitative checks: {report.check_tally(checks)}"
    return {**results, **({CROSS: cross} if cross else {})}
