"""Distance correlation: jaxalign against dcor 0.7 on the same embeddings.

The anchor is called as a user would: ``dcor.distance_correlation(x, y)`` and ``dcor.u_distance_correlation_sqr``
on float64 numpy arrays (dcor's naive method for multivariate data builds and double-centres dense N x N distance
matrices); its one-time numba compilation is done on a tiny input before timing, as jaxalign's compilation is
excluded by the warm-up. jaxalign runs on the float32 arrays (its default dtype) in one tiled pass: O(tile·N)
memory. The last row computes the biased and bias-corrected statistics from one shared pass of per-row sums.

    python benchmarks/bench_dcor.py [--sizes 2000 10000]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dcor as dcor_anchor
import numpy as np
from harness import embeddings, measure, row, sizes_main
from scipy.spatial.distance import cdist

from jaxalign.metrics.dcor import dcor, dcor_from_sums, distance_row_sums, u_dcor_sqr

#: dcor's multivariate path broadcasts (N, N, d) float64 differences; above this it cannot run on a 24 GiB box.
NAIVE_LIMIT_BYTES = 8 * 2**30


def _dcor_on_cdist(x64, y64, unbiased):
    """dcor's own centring and products on scipy distance matrices: the fastest way to use the anchor at large N
    (dense N×N, float64)."""
    a, b = cdist(x64, x64), cdist(y64, y64)
    center, product = (dcor_anchor.u_centered, dcor_anchor.u_product) if unbiased else (
        dcor_anchor.double_centered, dcor_anchor.mean_product)  # fmt: skip
    a, b = center(a), center(b)
    value = product(a, b) / np.sqrt(product(a, a) * product(b, b))
    return value if unbiased else np.sqrt(max(value, 0.0))


def _anchor(x64, y64, unbiased):
    """(row label, callable): dcor's public function when its (N, N, d) intermediate fits, else _dcor_on_cdist."""
    n, d = x64.shape
    if n * n * d * 8 <= NAIVE_LIMIT_BYTES:
        fn = dcor_anchor.u_distance_correlation_sqr if unbiased else dcor_anchor.distance_correlation
        return "dcor." + fn.__name__, lambda: fn(x64, y64)
    gib = n * n * d * 8 / 2**30
    return (f"dcor centring on scipy cdist (dcor.{'u' if unbiased else 'distance'}_... needs {gib:.0f} GiB here)",
            lambda: _dcor_on_cdist(x64, y64, unbiased))  # fmt: skip


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
        for unbiased, ours in ((False, dcor), (True, u_dcor_sqr)):
            label, anchor = _anchor(x64, y64, unbiased)
            stat = "u_dCor²" if unbiased else "dCor"
            rows.append(
                row(
                    f"{stat} vs {label} (float64 arrays)",
                    n,
                    measure(anchor, warmup=False),
                    measure(lambda x=x, y=y, ours=ours: ours(x, y), repeat=repeat),
                )
            )
        rows.append(
            row("dCor² and u_dCor² from one shared pass", n, None, measure(lambda x=x, y=y: _both_from_one_pass(x, y)))
        )
    return rows


def main() -> None:
    sizes_main(run, __doc__)


if __name__ == "__main__":
    main()
