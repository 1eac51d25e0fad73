"""The main job: ``python experiments/run.py`` (every offline model on the embedded default study: its molecules
and its crystals as two datasets) or ``python experiments/run.py +dataset=omat24 dataset.path=DIR`` (one dataset of
real data). ``+experiment=finetune`` runs seed 003's fine-tuning study instead (:mod:`experiments.finetune`).

Hydra composes ``conf/config.yaml``: the study's datasets (``datasets``: name → dataset config, default
``conf/datasets/default.yaml``; ``+dataset=<name>`` adds a single ``dataset`` that replaces them), a model set
(``models=<set>``) and an analysis preset (``analysis=<preset>``). Everything else is a dotted override
(``datasets.molecules.n=60 analysis.cknna.k=10 models.ids=[random,soap,morgan]``). ``-m`` sweeps, e.g. ``-m
models=default,mlip analysis=default,seed000``; ``hydra/launcher=slurm`` sends the jobs to a SLURM cluster
(conf/hydra/launcher/slurm.yaml).

Results land in the Hydra run directory (``outputs/<dataset or study>/<date>_<time>`` by default): ``report.html``,
``report.md``, ``figures/`` and ``results/``. Computations are cached under ``cache_dir`` (default
``outputs/cache``) by content, so a rerun recomputes nothing and an interrupted run resumes.

Errors the user fixes — a bad dataset or configuration, a model that embeds nothing, an unwritable or full
``cache_dir`` — print one ``error: ...`` line naming the file or setting and the fix, and exit with code 2
(:func:`run_app`). SIGTERM and SIGHUP stop the run like Ctrl-C: the running extraction processes are ended first.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig, OmegaConf

#: what an error about a file the app writes tells the user to change.
WRITE_FIX = "point cache_dir= (or hydra.run.dir=) at another directory"


def error_line(err: BaseException) -> str | None:
    """The ``error: ...`` line for an error the user fixes, or None for a crash (which keeps its traceback)."""
    from experiments.stages.context import InjectedFailure
    from experiments.stages.extraction import ExtractionError
    from extractors.faults import one_line, output_error

    if isinstance(err, (ExtractionError, InjectedFailure)):  # a crashed extraction keeps the child's last lines
        return f"error: {err}"
    if isinstance(err, ValueError):  # DatasetError, UsageError, and configuration problems found by the stages
        return f"error: {one_line(err)}"
    if isinstance(err, OSError):
        mapped = output_error(err, err.filename or "the output directory", WRITE_FIX)
        return None if mapped is None else f"error: {one_line(mapped)}"
    return None


def run_app(cfg: Mapping[str, Any], run_dir: Path, *, command: str = "") -> int:
    """Run the pipeline on the resolved configuration ``cfg``; 0 when done, 2 (with its one line on stderr) for an
    error the user fixes. Anything else propagates."""
    from experiments.pipeline import run_pipeline

    try:
        if cfg.get("finetune") is not None:  # +experiment=finetune
            from experiments.finetune import run_finetune

            run_finetune(cfg, run_dir, command=command)
        else:
            run_pipeline(cfg, run_dir, command=command)
    except Exception as err:
        line = error_line(err)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    return 0


def _stop(signum: int, _frame: Any) -> None:
    """SIGTERM/SIGHUP: unwind like Ctrl-C (a running extraction ends its process group on the way out)."""
    print(f"\n[app] stopped by {signal.Signals(signum).name}; rerunning the same command resumes", file=sys.stderr)
    raise SystemExit(128 + signum)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    from jaxalign.cpu import limit_lapack_threads

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:  # a launcher's own handler stays
            signal.signal(sig, _stop)
    logging.getLogger("jax").setLevel(logging.WARNING)  # Hydra sets the root logger to INFO
    limit_lapack_threads()  # an application owns its process: keep scipy's BLAS off the cores XLA uses
    hc = HydraConfig.get()
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["cache_dir"] = to_absolute_path(str(plain["cache_dir"]))
    command = " ".join(["python experiments/run.py", *hc.overrides.task])
    run_dir = Path(hc.runtime.output_dir)
    code = run_app(plain, run_dir, command=command)
    if code:
        sys.exit(code)
    if (run_dir / "report.html").exists():
        print(f"report: {run_dir / 'report.html'}", file=sys.stderr)


if __name__ == "__main__":
    main()
