"""jaxalign: representational alignment of scientific foundation models, in JAX."""

from jaxalign import preprocessing
from jaxalign.neighbors import NeighborGraph, knn
from jaxalign.tiling import map_row_tiles, row_mesh

__version__ = "0.1.0"
__all__ = ["NeighborGraph", "knn", "map_row_tiles", "preprocessing", "row_mesh"]
