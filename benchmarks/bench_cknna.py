"""CKNNA and mutual kNN: jaxalign against the dense algorithms of platonic-rep, on the same float32 embeddings.

The anchor is ``dense_reference.py``: numpy ports of platonic-rep's ``cknna`` and ``mutual_knn`` (dense N x N
kernels, dense top-k masks, dense HSIC with N x N matrix products — O(N²) memory, O(N³) time), run on the same
float32 arrays. jaxalign builds one exact top-k graph per embedding (tiled, O(tile·N) memory) and evaluates every
HSIC term as a sparse sum over the N·k mask entries. The "from graphs" row reuses precomputed graphs, as an M x M
model matrix does (M graph searches instead of M²).

    python benchmarks/bench_cknna.py [--sizes 2000 10000] [--k 25]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dense_reference as dense
from harness import HEADER, embeddings, measure, row

from jaxalign.metrics.cknna import cknna
from jaxalign.neighbors import knn


def run(sizes: tuple[int, ...] = (2000, 10000), k: int = 25, repeat: int = 2) -> list[str]:
    """One table row per (metric, N): the dense platonic-rep algorithm vs jaxalign on the (N, 256/128) pair."""
    try:  # written alongside this benchmark; the CKNNA rows do not depend on it
        from jaxalign.metrics.knn_overlap import mutual_knn
    except ImportError:
        mutual_knn = None
    rows = []
    for n in sizes:
        x, y = embeddings(n)
        rows.append(
            row(
                f"CKNNA k={k} vs dense platonic-rep algorithm (numpy, float32)",
                n,
                measure(lambda x=x, y=y: dense.cknna(x, y, k), warmup=False),
                measure(lambda x=x, y=y: cknna(x, y, k=k), repeat=repeat),
            )
        )
        gx, gy = knn(x, k), knn(y, k)
        rows.append(
            row(
                f"CKNNA k={k} from precomputed graphs",
                n,
                None,
                measure(lambda gx=gx, gy=gy: cknna(None, None, k=k, graph_x=gx, graph_y=gy), repeat=repeat),
            )
        )
        if mutual_knn is not None:
            rows.append(
                row(
                    f"mutual kNN k={k} vs dense platonic-rep algorithm (numpy, float32)",
                    n,
                    measure(lambda x=x, y=y: dense.mutual_knn(x, y, k), warmup=False),
                    measure(lambda x=x, y=y: mutual_knn(x, y, k=k), repeat=repeat),
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--k", type=int, default=25)
    args = parser.parse_args()
    print(HEADER)
    print("\n".join(run(tuple(args.sizes), k=args.k)))


if __name__ == "__main__":
    main()
