"""Alignment metrics between two embeddings of the same N samples, and intrinsic dimension of one.

Every function is pure and jit-compiled inside; kNN metrics accept precomputed :class:`jaxalign.NeighborGraph`
values (``graph_x=``, ``graph_y=``, ``graph=``) so one neighbour search per embedding serves them all.
"""

from jaxalign.metrics.cknna import cknna
from jaxalign.metrics.dcor import dcor, dcor_sqr, u_dcor_sqr
from jaxalign.metrics.id_correlation import IdCorrelation, id_correlation, id_correlation_features
from jaxalign.metrics.information_imbalance import information_imbalance
from jaxalign.metrics.intrinsic_dimension import mle_id, twonn
from jaxalign.metrics.kernel import cka, unbiased_cka
from jaxalign.metrics.knn_overlap import cycle_knn, edit_distance_knn, lcs_knn, mutual_knn
from jaxalign.metrics.svcca import svcca

__all__ = [
    "IdCorrelation",
    "cka",
    "cknna",
    "cycle_knn",
    "dcor",
    "dcor_sqr",
    "edit_distance_knn",
    "id_correlation",
    "id_correlation_features",
    "information_imbalance",
    "lcs_knn",
    "mle_id",
    "mutual_knn",
    "svcca",
    "twonn",
    "u_dcor_sqr",
    "unbiased_cka",
]
