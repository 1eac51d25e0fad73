"""jaxalign: representational alignment of scientific foundation models, in JAX.

- :mod:`jaxalign.metrics` — CKA, CKNNA, kNN overlaps, SVCCA, distance correlation, information imbalance, TwoNN/MLE.
- :func:`jaxalign.knn` — the neighbour engine: one exact, tiled, sharded kNN graph per embedding, reused by all.
- :mod:`jaxalign.reconstruction` — GFRE/GFRD/LFRE (scikit-matter conventions); :mod:`jaxalign.ridge`.
- :mod:`jaxalign.descriptors`, :mod:`jaxalign.projection`, :mod:`jaxalign.energy`, :mod:`jaxalign.tree` — cumulant
  descriptors, PCovR, energy-error baseline, the evolutionary tree of models.
- :mod:`jaxalign.cpu` — keep jax's LAPACK kernels from oversubscribing the cores XLA uses.
- :mod:`jaxalign.sweep` — every model x model matrix of a study in passes over row tiles, resumable
  (:mod:`jaxalign.journal`), sharded over devices and hosts; :mod:`jaxalign.statistics` — permutation nulls and
  bootstrap intervals of those matrices.
- :mod:`jaxalign.io` — embedding files written by the extractor processes; :mod:`jaxalign.plots` — figures.
"""

from jaxalign import (
    cpu,
    descriptors,
    energy,
    io,
    journal,
    metrics,
    preprocessing,
    projection,
    reconstruction,
    ridge,
    statistics,
    sweep,
    tree,
)
from jaxalign.neighbors import NeighborGraph, knn
from jaxalign.tiling import map_row_tiles, row_mesh

__version__ = "0.1.0"
__all__ = [
    "NeighborGraph",
    "cpu",
    "descriptors",
    "energy",
    "io",
    "journal",
    "knn",
    "map_row_tiles",
    "metrics",
    "preprocessing",
    "projection",
    "reconstruction",
    "ridge",
    "row_mesh",
    "statistics",
    "sweep",
    "tree",
]
