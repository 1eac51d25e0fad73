"""The main job: ``python experiments/run.py`` (every offline model on the embedded default dataset) or
``python experiments/run.py +dataset=omat24 dataset.path=DIR`` (real data).

Hydra composes ``conf/config.yaml``: the embedded dataset (``conf/dataset/default.yaml``, loaded as plain config so
that ``+dataset=<name>`` can append any other dataset file over it), a model set (``models=<set>``) and an analysis
preset (``analysis=<preset>``). Everything else is a dotted override (``dataset.n=200 analysis.cknna.k=10
models.ids=[random,soap,morgan]``). ``-m`` sweeps, e.g. ``-m +dataset=default,qm9 dataset.path=... models=default,
mlip``; ``hydra/launcher=slurm`` sends the jobs to a SLURM cluster (conf/hydra/launcher/slurm.yaml).

Results land in the Hydra run directory (``outputs/<dataset>/<date>_<time>`` by default): ``report.html``,
``report.md``, ``figures/`` and ``results/``. Computations are cached under ``cache_dir`` (default
``outputs/cache``) by content, so a rerun recomputes nothing and an interrupted run resumes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    from experiments.analysis import InjectedFailure
    from experiments.data import DatasetError
    from experiments.extraction import ExtractionError
    from experiments.pipeline import run_pipeline
    from jaxalign.cpu import limit_lapack_threads

    logging.getLogger("jax").setLevel(logging.WARNING)  # Hydra sets the root logger to INFO
    limit_lapack_threads()  # an application owns its process: keep scipy's BLAS off the cores XLA uses
    hc = HydraConfig.get()
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["cache_dir"] = to_absolute_path(str(plain["cache_dir"]))
    command = " ".join(["python experiments/run.py", *hc.overrides.task])
    try:
        run_pipeline(plain, Path(hc.runtime.output_dir), command=command)
    except (DatasetError, ExtractionError, InjectedFailure) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except ValueError as err:  # configuration problems found by the stages (unknown preprocessing, too few models)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {Path(hc.runtime.output_dir) / 'report.html'}", file=sys.stderr)


if __name__ == "__main__":
    main()
