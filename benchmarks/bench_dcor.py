"""Distance correlation: jaxalign against dcor 0.7 on the same embeddings.

The anchor is called as a user would: ``dcor.distance_correlation(x, y)`` and ``dcor.u_distance_correlation_sqr``
on float64 numpy arrays (dcor's naive method for multivariate data builds and double-centres dense N x N distance
matrices); its one-time numba compilation is done on a tiny input before timing, as jaxalign's compilation is
excluded by the warm-up. jaxalign runs on the float32 arrays (its default dtype) in one tiled pass: O(tile·N)
memory. The last row computes the biased and bias-corrected statistics from one shared pass of per-row sums.

    python benchmarks/bench_dcor.py [--sizes 2000 10000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dcor as dcor_anchor
import numpy as np
from harness import HEADER, embeddings, measure, row

from jaxalign.metrics.dcor import dcor, dcor_from_sums, distance_row_sums, u_dcor_sqr


def _both_from_one_pass(x, y):
    sums = distance_row_sums(x, y)
    return dcor_from_sums(*sums), dcor_from_sums(*sums, unbiased=True)


def run(sizes: tuple[int, ...] = (2000, 10000), repeat: int = 2) -> list[str]:
    """One table row per (statistic, N): dcor 0.7 on float64 copies vs jaxalign on the float32 (N, 256/128) pair."""
    rows = []
    tiny = np.random.default_rng(0).normal(size=(8, 2))
    dcor_anchor.distance_correlation(tiny, tiny)  # compile dcor's numba kernels outside the timings
    dcor_anchor.u_distance_correlation_sqr(tiny, tiny)
    for n in sizes:
        x, y = embeddings(n)
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        rows.append(
            row(
                "dCor vs dcor.distance_correlation (float64 arrays)",
                n,
                measure(lambda x64=x64, y64=y64: dcor_anchor.distance_correlation(x64, y64), warmup=False),
                measure(lambda x=x, y=y: dcor(x, y), repeat=repeat),
            )
        )
        rows.append(
            row(
                "u_dCor² vs dcor.u_distance_correlation_sqr (float64 arrays)",
                n,
                measure(lambda x64=x64, y64=y64: dcor_anchor.u_distance_correlation_sqr(x64, y64), warmup=False),
                measure(lambda x=x, y=y: u_dcor_sqr(x, y), repeat=repeat),
            )
        )
        rows.append(
            row("dCor² and u_dCor² from one shared pass", n, None, measure(lambda x=x, y=y: _both_from_one_pass(x, y)))
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    args = parser.parse_args()
    print(HEADER)
    print("\n".join(run(tuple(args.sizes))))


if __name__ == "__main__":
    main()
