"""Extractors: real models run as separate processes that write validated embedding files (SPEC §12).

``python -m extractors list`` shows every registered model and its status; ``python -m extractors run --model M
--dataset D --out DIR`` writes ``DIR/<model>__<dataset>__<layer>.npz``, optionally under another interpreter
(``--python``) because real models pin conflicting dependencies. This package imports only numpy (and ASE for
datasets); each model family loads its own packages when built. ``jaxalign.io`` reads the files.
"""

from extractors.base import Embedded, Extractor, ModelSpec
from extractors.datasets import Record, filter_records, load_dataset, subsample
from extractors.embedding_file import ids_sha256, write_npz
from extractors.registry import build_extractor, get_spec, specs
from extractors.runner import ExtractionStopped, output_path, run_extraction

__all__ = [
    "Embedded",
    "ExtractionStopped",
    "Extractor",
    "ModelSpec",
    "Record",
    "build_extractor",
    "filter_records",
    "get_spec",
    "ids_sha256",
    "load_dataset",
    "output_path",
    "run_extraction",
    "specs",
    "subsample",
    "write_npz",
]
