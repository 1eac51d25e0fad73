"""Information imbalance: jaxalign against DADApy 0.3.4's exact full-rank computation on the same embeddings.

The anchor is ``MetricComparisons(coordinates=x).return_information_imbalace(y, k=1, subset_size=N)``: with one subset
of all N points DADApy ranks every point with a full N-neighbour scikit-learn search in each space (two N x N index
and distance matrices each) and a Python loop over points. jaxalign builds the two k-NN graphs with the tiled
engine and ranks in one tiled pass (O(tile·N + N·k) memory). Extra rows: k = 50 (seed 000's range) and both
directions from precomputed graphs, jaxalign only. DADApy runs under its own interpreter (anchors/dadapy_runner.py,
the ``dadapy`` environment, built on first use): its seconds and peak MiB are measured inside that worker process
around the DADApy call only.

    python benchmarks/bench_information_imbalance.py [--sizes 2000 10000]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository root, for anchors/
from harness import embeddings, external, measure, row, sizes_main

from anchors.dadapy_runner import information_imbalance_call, timed
from jaxalign.metrics.information_imbalance import information_imbalance
from jaxalign.neighbors import knn


def _from_graphs(x, y, graph_x, graph_y):
    return information_imbalance(x, y, k=50, graph_x=graph_x, graph_y=graph_y)


def run(sizes: tuple[int, ...] = (2000, 10000), repeat: int = 2) -> list[str]:
    """One table row per (call, N) on the float32 (N, 256) vs (N, 128) pair."""
    rows = []
    for n in sizes:
        x, y = embeddings(n)
        rows.append(
            row(
                "information imbalance k=1 vs DADApy return_information_imbalace (subset = all N)",
                n,
                external(*timed(information_imbalance_call(x, y, k=1))),
                measure(lambda x=x, y=y: information_imbalance(x, y, k=1), repeat=repeat),
            )
        )
        rows.append(
            row("information imbalance k=50", n, None, measure(lambda x=x, y=y: information_imbalance(x, y, k=50)))
        )
        graph_x, graph_y = knn(x, 50, metric="euclidean"), knn(y, 50, metric="euclidean")
        rows.append(
            row(
                "information imbalance k=50 from precomputed graphs",
                n,
                None,
                measure(lambda x=x, y=y, gx=graph_x, gy=graph_y: _from_graphs(x, y, gx, gy), repeat=repeat),
            )
        )
    return rows


def main() -> None:
    sizes_main(run, __doc__)


if __name__ == "__main__":
    main()
