"""``python experiments/distill.py``: distil a teacher's representation into a small equinox student with an
alignment loss (seed 000 §3.2), one orbax checkpoint per epoch, and report how each checkpoint relates to the final
student and to the teacher (the trajectories of seed 003 §III D). See :mod:`experiments.stages.distillation`.

Hydra composes ``conf/distill.yaml`` (the embedded dataset, the model set's layers/options, the ``distill``
section); overrides as in ``run.py`` (``distill.loss=dcor dataset.n=null``). The run directory receives
``report.md``, ``report.html``, ``figures/`` and ``results/distill.json``; the checkpoints live in the cache, so a
rerun (or one with more epochs) resumes. Errors the user fixes print one ``error: ...`` line and exit with code 2.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig, OmegaConf


def run_distill(cfg: Mapping[str, Any], run_dir: Path, *, command: str = "") -> dict[str, Any]:
    """Every step of the distillation study for the resolved config ``cfg``; writes the run directory."""
    import numpy as np

    from experiments.cache import StageLog, content_key, write_json
    from experiments.features import align_models, preprocess
    from experiments.pipeline import setup_jax
    from experiments.stages import figures, report
    from experiments.stages.dataset import prepare_dataset
    from experiments.stages.distillation import DistillConfig, evaluate, train
    from experiments.stages.extraction import extract_models
    from extractors.faults import ensure_writable

    run_dir = ensure_writable(run_dir, "set hydra.run.dir= to a writable directory")
    cache_dir = ensure_writable(Path(cfg["cache_dir"]), "set cache_dir= to a writable directory")
    dcfg = DistillConfig.from_mapping(cfg["distill"])
    setup_jax(cache_dir, cfg)
    log = StageLog(run_dir / "stage_log.jsonl")
    t0 = time.perf_counter()
    progress = bool(cfg.get("progress", True))

    with log.stage("dataset") as e:
        ds, cached = prepare_dataset(cfg["dataset"], cache_dir)
        e["cached" if cached else "computed"] += 1
        e["summary"] = f"{ds.summary['n_selected']} structures ({ds.summary['label']})"
    with log.stage("extraction") as e:
        models = {**dict(cfg.get("models") or {}), "ids": [dcfg.teacher, dcfg.input]}
        runs = extract_models(ds, models, cache_dir, cfg.get("extraction") or {}, progress=progress)
        for r in runs:
            e["cached" if r.cached else "computed"] += 1
        e["summary"] = f"teacher {dcfg.teacher}, input {dcfg.input}"
    aligned = align_models(runs, ds.summary["n_selected"], min_coverage=0.5, min_structures=8)
    x = preprocess(aligned.embeddings[dcfg.input].features, ["center_scale_total_variance"])
    y = np.asarray(aligned.embeddings[dcfg.teacher].features, dtype=np.float32)
    n = aligned.n
    perm = np.random.default_rng(dcfg.seed).permutation(n)
    n_test = max(4, round(dcfg.test_fraction * n))
    test_rows, train_rows = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    if train_rows.size < 4:
        raise ValueError(f"only {train_rows.size} training structures; raise dataset.n or lower distill.test_fraction.")
    params = {k: v for k, v in dataclasses_asdict(dcfg).items() if k != "epochs"}
    key = content_key("distill", {"models": aligned.keys, "ids": aligned.ids.tolist(), "cfg": params})
    ckpt = cache_dir / "distill" / key

    with log.stage("training") as e:
        steps = train(x, y, train_rows, dcfg, ckpt, e)
        e["summary"] = f"{dcfg.epochs} epochs of {dcfg.loss} loss on {train_rows.size} structures; checkpoints {ckpt}"
    with log.stage("evaluation") as e:
        ev = evaluate(x, y, test_rows, steps, dcfg, ckpt)
        e["computed"] += len(steps)
        e["summary"] = (
            f"CKA with {dcfg.teacher} on {test_rows.size} test structures: {ev['cka_teacher'][0]:.3f} before, "
            f"{ev['cka_teacher'][-1]:.3f} after"
        )
    result = {"config": dataclasses_asdict(dcfg), "n_train": int(train_rows.size), "n_test": int(test_rows.size),
              "checkpoints": str(ckpt), **ev}  # fmt: skip
    write_json(run_dir / "results" / "distill.json", result)

    with log.stage("figures") as e:
        plan = _figure_plan(ev, dcfg)
        drawn = figures.draw_figures(plan, run_dir / "figures", progress=progress)
        e["computed"] += len(drawn)
    with log.stage("report") as e:
        blocks = _report_blocks(ev, dcfg, drawn, result, log.stages, time.perf_counter() - t0, command)
        (run_dir / "report.md").write_text(report.render_markdown(blocks, "figures"))
        (run_dir / "report.html").write_text(report.render_html(blocks, run_dir / "figures", str(blocks[0][2])))
        e["summary"] = "report.md and report.html"
    return result


def dataclasses_asdict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


def _figure_plan(ev: Mapping[str, Any], cfg: Any) -> list[Any]:
    import functools

    from experiments.stages.figures import Figure
    from jaxalign.plots.training import training_curves

    steps = ev["steps"]
    return [
        Figure(
            "distill_alignment_with_teacher",
            f"Alignment of each checkpoint with the teacher ({cfg.teacher})",
            "CKA and CKNNA between the student's embedding of the test structures and the teacher's; step 0 is the "
            "untrained student. Rising curves: the alignment loss transfers the teacher's geometry.",
            functools.partial(training_curves, steps, {"CKA": ev["cka_teacher"], f"CKNNA (k = {ev['k']})":
                              ev["cknna_teacher"]}, ylabel="alignment with the teacher", title="alignment curves"),
        ),
        Figure(
            "distill_trajectory",
            "Trajectory: each checkpoint against the final student (seed 003 Fig. 6 style)",
            "GFRE from each checkpoint to the final student and back, and LFRE to it, on the test structures: how far "
            "the representation still moves. The last checkpoint's values are the floor of the measure on this many "
            "test structures (a ridge fit on half of them), not 0, when the features are wider than that.",
            functools.partial(training_curves, steps, {"GFRE(checkpoint → final)": ev["gfre_to_final"],
                              "GFRE(final → checkpoint)": ev["gfre_from_final"],
                              f"LFRE(checkpoint → final, k = {ev['k_lfre']})": ev["lfre_to_final"]},
                              ylabel="reconstruction error", title="distance to the final student"),
        ),
        Figure(
            "distill_training_loss",
            f"Training loss ({cfg.loss})",
            "Mean minibatch loss per epoch on the training structures (1 − similarity).",
            functools.partial(training_curves, steps, {"train": ev["train_loss"]}, ylabel=f"{cfg.loss} loss"),
        ),
    ]  # fmt: skip


def _report_blocks(ev, cfg, drawn, result, stages, total_s, command) -> list:
    from experiments.stages.report import format_cell

    b: list[tuple] = [("h", 1, f"jaxalign distillation report — {cfg.input} → {cfg.teacher} ({cfg.loss} loss)")]
    b.append(("p", f"Finished in {total_s:.0f} s. Command: `{command or 'python experiments/distill.py'}`. "
                   f"{result['n_train']} training and {result['n_test']} test structures; checkpoints in "
                   f"`{result['checkpoints']}` (orbax, one per epoch; a rerun resumes after the last)."))  # fmt: skip
    b.append(("h", 2, "Before and after"))
    rows = [[name, format_cell(ev[key][0]), format_cell(ev[key][-1])] for name, key in (
        ("CKA with the teacher", "cka_teacher"), (f"CKNNA (k = {ev['k']}) with the teacher", "cknna_teacher"),
        ("GFRE(student → teacher)", "gfre_to_teacher"), ("GFRE(teacher → student)", "gfre_from_teacher"))]  # fmt: skip
    b.append(("table", ["", "untrained (step 0)", f"final (epoch {ev['steps'][-1]})"], rows))
    b.append(("h", 2, "Per checkpoint"))
    keys = ["train_loss", "cka_teacher", "cknna_teacher", "cka_final", "gfre_to_final", "gfre_from_final",
            "lfre_to_final", "gfre_to_teacher"]  # fmt: skip
    rows = [[str(s), *(format_cell(ev[k][i]) for k in keys)] for i, s in enumerate(ev["steps"])]
    b.append(("table", ["epoch", *keys], rows))
    b.append(("h", 2, "Figures"))
    for f in drawn:
        b.append(("fig", f["stem"], f["title"], f["how_to_read"], 3))
    b.append(("h", 2, "Stages"))
    b.append(("table", ["stage", "seconds", "computed", "cached", "summary"],
              [[s["stage"], f"{s['seconds']:.1f}", str(s["computed"]), str(s["cached"]), s["summary"]]
               for s in stages]))  # fmt: skip
    return b


@hydra.main(config_path="conf", config_name="distill", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    from experiments.run import error_line

    logging.getLogger("jax").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    hc = HydraConfig.get()
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["cache_dir"] = to_absolute_path(str(plain["cache_dir"]))
    run_dir = Path(hc.runtime.output_dir)
    try:
        run_distill(plain, run_dir, command=" ".join(["python experiments/distill.py", *hc.overrides.task]))
    except Exception as err:
        line = error_line(err)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)
    print(f"report: {run_dir / 'report.html'}", file=sys.stderr)


if __name__ == "__main__":
    main()
