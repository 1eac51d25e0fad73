"""Intrinsic dimension: jaxalign TwoNN and MLE against DADApy 0.3.4 and scikit-dimension 0.5.0.

Same float32 embedding (d = 256) for both sides; every timing includes the neighbour search, as a user calls it:
``Data(x).compute_id_2NN()`` (DADApy searches maxk = min(100, N−1) neighbours with scikit-learn, then fits) vs
``twonn(x)`` (2 neighbours from the tiled engine), and ``MLE().fit(x, n_neighbors=20)`` (scikit-learn kNN, then a
Python loop over points) vs ``mle_id(x, k=20)``. A last row times both jaxalign estimators sharing one 20-NN graph.
DADApy runs under its own interpreter (anchors/dadapy_runner.py, the ``dadapy`` environment, built on first use):
its seconds and peak MiB are measured inside that worker process around the DADApy call only.

    python benchmarks/bench_intrinsic_dimension.py [--sizes 2000 10000]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository root, for anchors/
import skdim
from harness import embeddings, external, measure, row, sizes_main

from anchors.dadapy_runner import timed, twonn_call
from jaxalign.metrics.intrinsic_dimension import mle_id, twonn
from jaxalign.neighbors import knn


def _skdim_mle(x):
    return skdim.id.MLE().fit(x, n_neighbors=20, comb="mle").dimension_


def _shared_graph(x):
    graph = knn(x, 20, metric="euclidean")
    return twonn(None, graph=graph), mle_id(None, k=20, graph=graph)


def run(sizes: tuple[int, ...] = (2000, 10000), repeat: int = 2) -> list[str]:
    """One table row per (estimator, N): anchor and jaxalign on the same float32 (N, 256) embedding."""
    rows = []
    for n in sizes:
        x, _ = embeddings(n, 256, 8)
        rows.append(
            row(
                "TwoNN (base, mu_fraction 0.9) vs DADApy compute_id_2NN",
                n,
                external(*timed(twonn_call(x, algorithm="base", mu_fraction=0.9))),
                measure(lambda x=x: twonn(x), repeat=repeat),
            )
        )
        rows.append(
            row(
                "MLE (k=20, comb=mle) vs skdim MLE",
                n,
                measure(lambda x=x: _skdim_mle(x), warmup=False),
                measure(lambda x=x: mle_id(x, k=20), repeat=repeat),
            )
        )
        rows.append(row("TwoNN + MLE sharing one 20-NN graph", n, None, measure(lambda x=x: _shared_graph(x))))
    return rows


def main() -> None:
    sizes_main(run, __doc__)


if __name__ == "__main__":
    main()
