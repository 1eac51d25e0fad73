"""``python experiments/run.py +experiment=finetune``: seed 003's fine-tuning study (§III D, Figs. 4–6, S8) on
CHGNet 0.3.0 — five training strategies on a labelled fine-tuning set, every checkpoint embedded like any model,
then the reconstruction errors among the final models and the pretrained one (Fig. 5), each checkpoint against its
own final model (Fig. 6) and PCovR projections of the fine-tuning set inside another dataset's space (Fig. S8).

The steps are :mod:`experiments.stages.finetune`; ``conf/experiment/finetune.yaml`` documents the settings. The run
directory receives ``report.md``, ``report.html``, ``figures/`` and ``results/finetune.json``; labels, checkpoints,
embeddings and analyses live in the cache, so a rerun recomputes nothing and an interrupted one resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["finetune_checks", "run_finetune"]

#: seed 003's abbreviations (Fig. 5 axis labels).
SHORT = {"ff": "FF", "hf": "HF", "ftl": "FTL", "htl": "HTL", "bespoke": "bespoke"}


def _dataset_cfg(name: str, path: Path) -> dict[str, Any]:
    return {
        "name": name,
        "format": "extxyz",
        "path": str(path),
        "options": {"id_key": "id"},
        "n": None,
        "seed": 0,
        "filters": {},
        "skip_bad_frames": False,
        "split": None,
    }


def _aligned(runs: Sequence[Any], n: int) -> Any:
    from experiments.features import align_models

    return align_models(runs, n, min_coverage=0.9, min_structures=4)


def run_finetune(cfg: Mapping[str, Any], run_dir: Path, *, command: str = "") -> dict[str, Any]:
    """Every step of the fine-tuning study for the resolved config ``cfg``; writes the run directory."""
    from experiments.cache import StageLog, read_json, write_json
    from experiments.pipeline import setup_jax
    from experiments.stages import figures, report
    from experiments.stages import finetune as ft
    from experiments.stages.dataset import prepare_dataset
    from experiments.stages.extraction import extract_models
    from extractors.faults import ensure_writable

    run_dir = ensure_writable(run_dir, "set hydra.run.dir= to a writable directory")
    cache_dir = ensure_writable(Path(cfg["cache_dir"]), "set cache_dir= to a writable directory")
    fc = ft.FinetuneConfig.from_mapping(cfg["finetune"])
    setup_jax(cache_dir, cfg)
    log = StageLog(run_dir / "stage_log.jsonl")
    t0 = time.perf_counter()
    progress = bool(cfg.get("progress", True))
    extraction = dict(cfg.get("extraction") or {})

    with log.stage("fine-tuning set") as e:
        data, cached = ft.labelled_set(fc, cache_dir, progress=progress)
        ds, _ = prepare_dataset(_dataset_cfg("finetune", data), cache_dir)
        e["cached" if cached else "computed"] += 1
        n = int(ds.summary["n_selected"])
        train, test = ft.split_structures(n, fc.test_fraction, fc.seed)
        note = data.with_name(data.name + ".skipped.json")
        left_out = read_json(note) if note.exists() else []
        e["summary"] = (
            f"{n} structures ({ds.summary['atoms_total']} atoms), labels by {fc.labeller or 'the file'} "
            f"({len(left_out)} it refused left out); "
            f"{len(train)} train, {len(test)} test"
        )
    with log.stage("training") as e:
        trained = ft.train_strategies(fc, data, train, test, cache_dir, e, progress=progress)
        e["summary"] = f"{', '.join(fc.strategies)}: {fc.epochs} epochs each, checkpoints at epochs {list(fc.saved)}"
    plan = ft.checkpoint_models(fc, trained)
    models = {"ids": plan["ids"], "options": plan["options"], "layer": fc.layer}
    with log.stage("extraction", "finetune") as e:
        runs = extract_models(ds, models, cache_dir, extraction, progress=progress)
        for r in runs:
            e["cached" if r.cached else "computed"] += 1
        e["summary"] = f"{len(runs)} models (the pretrained one and every checkpoint) on the fine-tuning set"
    aligned = _aligned(runs, n)

    with log.stage("reconstruction") as e:
        study = ft.reconstruction_study(aligned, plan, dict(fc.reconstruction), cache_dir, e)
        e["summary"] = (
            f"GFRE/LFRE on {study['n_environments']} atom environments ({study['n_test']} test); "
            f"{sum(len(p) for p in plan['by_strategy'].values())} checkpoints against their final model"
        )

    finals = [plan["pretrained"], *plan["final"].values()]
    proj: dict[str, Any] = {}
    if fc.background is not None:
        with log.stage("background", str(fc.background.get("name"))) as e:
            bg_drawn, _ = prepare_dataset(dict(fc.background), cache_dir)
            bg_path, cached = ft.labelled_background(fc, bg_drawn, cache_dir, progress=progress)
            e["cached" if cached else "computed"] += 1
            bg, _ = prepare_dataset(_dataset_cfg(f"{fc.background.get('name')}-labelled", bg_path), cache_dir)
            bg_models = {"ids": finals, "options": plan["options"], "layer": fc.layer}
            bg_runs = extract_models(bg, bg_models, cache_dir, extraction, progress=progress)
            for r in bg_runs:
                e["cached" if r.cached else "computed"] += 1
            e["summary"] = f"{bg.summary['n_selected']} structures labelled by {fc.labeller}, {len(finals)} models"
        with log.stage("projections") as e:
            bg_aligned = _aligned(bg_runs, int(bg.summary["n_selected"]))
            ft_final = _aligned([r for r in runs if r.model in finals], n)
            proj = ft.projections(bg_aligned, ft_final, finals, (bg.summary, ds.summary), fc.pcovr_alpha, cache_dir, e)
            e["summary"] = f"PCovR (α = {fc.pcovr_alpha:g}) fitted on {bg_aligned.n} structures, {n} projected"

    result = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(fc).items()},
        "n_structures": n,
        "left_out": left_out,
        "n_train": len(train),
        "n_test": len(test),
        "data": str(data),
        "training": {s: {"history": t["history"], "dir": t["dir"]} for s, t in trained.items()},
        "models": plan,
        "reconstruction": study,
    }
    result["checks"] = finetune_checks(result)
    write_json(run_dir / "results" / "finetune.json", result)

    with log.stage("figures") as e:
        drawn = figures.draw_figures(_figure_plan(result, proj, fc), run_dir / "figures", progress=progress)
        e["computed"] += len(drawn)
    with log.stage("report") as e:
        blocks = _report_blocks(result, fc, drawn, log.stages, time.perf_counter() - t0, command)
        (run_dir / "report.md").write_text(report.render_markdown(blocks, "figures"))
        (run_dir / "report.html").write_text(report.render_html(blocks, run_dir / "figures", str(blocks[0][2])))
        e["summary"] = "report.md and report.html"
    return result


def _sym(rec: Mapping[str, Any], a: int, b: int) -> float:
    g = np.asarray(rec["gfre"])
    return float((g[a, b] + g[b, a]) / 2)


def finetune_checks(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Seed 003's fine-tuning findings on this run's numbers, each with a verdict (None = not evaluable):
    pre-training bias (Fig. 5), the fine-tuned models' head start (Fig. 6) and that training fitted the labels
    (Table S6)."""
    from extractors.finetune import STRATEGIES

    rec, plan, hist = result["reconstruction"], result["models"], result["training"]
    strategies = list(plan["final"])
    tuned = [s for s in strategies if STRATEGIES[s].pretrained]
    checks = []
    if "bespoke" in strategies and tuned:
        idx = {s: 1 + i for i, s in enumerate(strategies)}
        bespoke = _sym(rec, 0, idx["bespoke"])
        values = {s: _sym(rec, 0, idx[s]) for s in tuned}
        checks.append(
            {
                "finding": "pre-training bias: fine-tuned models stay nearest the pretrained one (seed 003 Fig. 5)",
                "numbers": "mean of GFRE(model → pretrained) and GFRE(pretrained → model): "
                + ", ".join(f"{SHORT[s]} {v:.3f}" for s, v in values.items())
                + f", bespoke {bespoke:.3f}",
                "rule": "every fine-tuned strategy below the bespoke model",
                "value": f"max fine-tuned {max(values.values()):.3f} vs bespoke {bespoke:.3f}",
                "passed": bool(max(values.values()) < bespoke),
            }
        )
        start = {s: rec["trajectories"][s]["gfre_to_final"][0] for s in strategies}
        checks.append(
            {
                "finding": "fine-tuned strategies start nearer their final model than bespoke (seed 003 Fig. 6)",
                "numbers": "GFRE(epoch 0 → final): " + ", ".join(f"{SHORT[s]} {v:.3f}" for s, v in start.items()),
                "rule": "every fine-tuned strategy's epoch-0 GFRE below the bespoke model's",
                "value": f"max fine-tuned {max(start[s] for s in tuned):.3f} vs bespoke {start['bespoke']:.3f}",
                "passed": bool(max(start[s] for s in tuned) < start["bespoke"]),
            }
        )
    else:
        checks.append(
            {
                "finding": "pre-training bias (seed 003 Figs. 5, 6)",
                "numbers": "needs the bespoke strategy and a fine-tuned one",
                "rule": "",
                "value": "n/a",
                "passed": None,
            }
        )
    keeps_head = [s for s in strategies if STRATEGIES[s].pretrained and not STRATEGIES[s].new_head]
    if keeps_head and tuned and "e_mae" in hist[keeps_head[0]]["history"][0]:
        before = hist[keeps_head[0]]["history"][0]["e_mae"]
        after = {s: hist[s]["history"][-1]["e_mae"] for s in strategies}
        checks.append(
            {
                "finding": "fine-tuning fits the new labels: test energy error below the pretrained model's (Table S6)",
                "numbers": f"test energy MAE (meV/atom): pretrained {before:.2f}; "
                + ", ".join(f"{SHORT[s]} {v:.2f}" for s, v in after.items()),
                "rule": "every fine-tuned strategy's final test energy MAE below the pretrained model's (bespoke "
                "shown, not judged: from random weights it needs far more epochs, seed 003: 1,000)",
                "value": f"max fine-tuned {max(after[s] for s in tuned):.2f} vs {before:.2f}",
                "passed": bool(max(after[s] for s in tuned) < before),
            }
        )
    else:
        checks.append(
            {
                "finding": "fine-tuning fits the new labels (Table S6)",
                "numbers": "needs ff or hf (epoch 0 = the pretrained model) and test structures",
                "rule": "",
                "value": "n/a",
                "passed": None,
            }
        )
    return checks


def _figure_plan(result: Mapping[str, Any], proj: Mapping[str, Any], fc: Any) -> list[Any]:
    from experiments.stages.figures import Figure
    from jaxalign.plots.maps import map_grid
    from jaxalign.plots.reconstruction import reconstruction_heatmap
    from jaxalign.plots.training import training_curves

    rec, plan = result["reconstruction"], result["models"]
    names = ["pretrained", *(SHORT[s] for s in plan["final"])]
    traj = {s: rec["trajectories"][s] for s in plan["final"]}  # the strategies' order (JSON sorts keys)
    epochs = next(iter(traj.values()))["epochs"]
    hist = {s: t["history"] for s, t in result["training"].items()}
    plan_out = [
        Figure(
            "fig5_gfre_finetuned",
            "Fig. 5 (GFRE): final models and the pretrained one",
            f"GFRE(source → target) of the {fc.layer} atom features on the fine-tuning set's environments. In seed 003 "
            "the fine-tuned models stay near the pretrained one (pre-training bias) and the bespoke model is "
            "farthest; the first check above says whether this run agrees.",
            functools.partial(
                reconstruction_heatmap,
                np.asarray(rec["gfre"]),
                names,
                cbar_label="GFRE",
                title="GFRE among fine-tuned models",
            ),
        ),
        Figure(
            "fig5_lfre_finetuned",
            "Fig. 5 (LFRE): final models and the pretrained one",
            "LFRE(source → target), k = the smaller feature width: how well local neighbourhoods of one space map "
            "onto the other's.",
            functools.partial(
                reconstruction_heatmap,
                np.asarray(rec["lfre"]),
                names,
                cbar_label="LFRE",
                title="LFRE among fine-tuned models",
            ),
        ),
        Figure(
            "fig6_trajectory_gfre",
            "Fig. 6 (GFRE): each checkpoint against its own final model",
            "GFRE(checkpoint → final model of the same strategy) over training. In seed 003 the "
            "fine-tuned strategies start low (pre-conditioned by the pretrained model) and the bespoke model high; "
            "the second check above says whether this run agrees.",
            functools.partial(
                training_curves,
                epochs,
                {SHORT[s]: t["gfre_to_final"] for s, t in traj.items()},
                ylabel="GFRE(checkpoint → final)",
                title="GFRE along training",
            ),
        ),
        Figure(
            "fig6_trajectory_lfre",
            "Fig. 6 (LFRE): each checkpoint against its own final model",
            "LFRE(checkpoint → final model of the same strategy) over training.",
            functools.partial(
                training_curves,
                epochs,
                {SHORT[s]: t["lfre_to_final"] for s, t in traj.items()},
                ylabel="LFRE(checkpoint → final)",
                title="LFRE along training",
            ),
        ),
        Figure(
            "finetune_drift_from_pretrained",
            "Drift: GFRE(pretrained → checkpoint) over training",
            "How much of each checkpoint's features the pretrained model's features still reconstruct: 0 at "
            "epoch 0 for FF and HF (they start as the pretrained model), rising as training moves away.",
            functools.partial(
                training_curves,
                epochs,
                {SHORT[s]: t["gfre_from_pretrained"] for s, t in traj.items()},
                ylabel="GFRE(pretrained → checkpoint)",
                title="distance from the pretrained model",
            ),
        ),
    ]
    if all("e_mae" in h[0] for h in hist.values()):
        all_epochs = [row["epoch"] for row in next(iter(hist.values()))]
        plan_out.append(
            Figure(
                "finetune_test_errors",
                "Test energy error along training (seed 003 Table S6 at each epoch)",
                "Energy MAE (meV/atom) on the held-out structures after each epoch; epoch 0 is the starting model.",
                functools.partial(
                    training_curves,
                    all_epochs,
                    {SHORT[s]: [r["e_mae"] for r in h] for s, h in hist.items()},
                    ylabel="test energy MAE (meV/atom)",
                    title="test error",
                    logy=True,
                ),
            )
        )
    if proj:
        finals = [plan["pretrained"], *plan["final"].values()]
        label = dict(zip(finals, names, strict=True))
        plan_out.append(
            Figure(
                "figS8_projections",
                "Fig. S8: PCovR projections of the fine-tuning set in another dataset's space",
                f"Per model, PCovR (α = {fc.pcovr_alpha:g}) of structure features (mean and standard deviation of the "
                f"{fc.layer} atom features) fitted on the background dataset (grey) with its labelled energy per "
                "atom as target (seed 003: the cohesive energy); the fine-tuning structures are projected into that "
                "space, coloured by their labelled energy per atom. Similar panels: the models share the pretrained "
                "model's global structure.",
                functools.partial(
                    map_grid,
                    {label[m]: proj[f"ft:{m}"] for m in finals},
                    color=proj["ft_energy"],
                    color_label="energy (eV/atom)",
                    cmap="viridis",
                    background={label[m]: proj[f"bg:{m}"] for m in finals},
                    background_label="background dataset (fit)",
                    title="fine-tuning set in the background's PCovR space",
                ),
            )
        )
    return plan_out


def _report_blocks(result, fc, drawn, stages, total_s, command) -> list:
    from experiments.stages.report import check_tally, format_cell

    rec, plan, hist = result["reconstruction"], result["models"], result["training"]
    b: list[tuple] = [("h", 1, f"jaxalign fine-tuning report — {fc.base} ({fc.layer} features), seed 003 §III D")]
    b.append(
        (
            "p",
            f"Finished in {total_s:.0f} s. Command: `{command or 'python experiments/run.py +experiment=finetune'}`. "
            f"{result['n_structures']} structures in the fine-tuning set ({result['n_train']} train, "
            f"{result['n_test']} test), labels by {fc.labeller or 'the file'}"
            + (
                f" ({len(result['left_out'])} structures it refused left out, e.g. {result['left_out'][0]['id']}: "
                f"{result['left_out'][0]['reason'][:80]})"
                if result["left_out"]
                else ""
            )
            + f"; {fc.epochs} epochs per "
            f"strategy (Adam, learning rate {fc.learning_rate:g} with cosine decay, batch {fc.batch_size}); "
            f"checkpoints at epochs {list(fc.saved)} are models `{fc.base}~STRATEGY-eNNNN@{fc.layer}`.",
        )
    )
    b.append(("h", 2, "Checks"))
    b.append(("p", check_tally(result["checks"])))
    b.append(
        (
            "table",
            ["finding", "numbers", "rule", "value", "verdict"],
            [
                [
                    c["finding"],
                    c["numbers"],
                    c["rule"],
                    c["value"],
                    {True: "PASS", False: "FAIL", None: "n/a"}[c["passed"]],
                ]
                for c in result["checks"]
            ],
        )
    )
    b.append(("h", 2, "Test errors (seed 003 Table S6)"))
    rows = []
    keeps = [s for s, t in hist.items() if t["history"][0].get("e_mae") is not None]
    for s, t in hist.items():
        first, last = t["history"][0], t["history"][-1]
        rows.append(
            [
                SHORT[s],
                *(format_cell(last.get(k), 2) for k in ("e_mae", "e_rmse", "f_mae", "f_rmse")),
                format_cell(first.get("e_mae"), 2),
            ]
        )
    b.append(
        (
            "table",
            [
                "model",
                "energy MAE (meV/atom)",
                "energy RMSE",
                "force MAE (meV/Å)",
                "force RMSE",
                "energy MAE at epoch 0",
            ],
            rows,
        )
    )
    if not keeps:
        b.append(("p", "No test structures: errors not measured."))
    names = ["pretrained", *(SHORT[s] for s in plan["final"])]
    for key, title in (("gfre", "GFRE"), ("lfre", "LFRE")):
        b.append(("h", 2, f"Fig. 5: {title} among the final models (row → column)"))
        mat = np.asarray(rec[key])
        b.append(("table", ["", *names], [[r, *(format_cell(x) for x in mat[i])] for i, r in enumerate(names)]))
    b.append(
        (
            "p",
            f"{rec['n_environments']} atom environments: {rec['n_test']} test ({rec['n_lfre_test']} for LFRE), "
            f"the rest train; features scaled on {rec['scale']} rows.",
        )
    )
    b.append(("h", 2, "Fig. 6: each checkpoint against its own final model"))
    traj = {s: rec["trajectories"][s] for s in plan["final"]}  # the strategies' order (JSON sorts keys)
    epochs = next(iter(traj.values()))["epochs"]
    b.append(
        (
            "table",
            ["strategy", *(f"e{e}" for e in epochs)],
            [[f"{SHORT[s]} GFRE", *(format_cell(v) for v in t["gfre_to_final"])] for s, t in traj.items()]
            + [[f"{SHORT[s]} LFRE", *(format_cell(v) for v in t["lfre_to_final"])] for s, t in traj.items()],
        )
    )
    b.append(("h", 2, "Figures"))
    for f in drawn:
        b.append(("fig", f["stem"], f["title"], f["how_to_read"], 3))
    b.append(("h", 2, "Stages"))
    b.append(
        (
            "table",
            ["stage", "seconds", "computed", "cached", "summary"],
            [[s["stage"], f"{s['seconds']:.1f}", str(s["computed"]), str(s["cached"]), s["summary"]] for s in stages],
        )
    )
    return b
