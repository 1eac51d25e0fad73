"""Evolutionary tree: neighbour joining against scikit-bio 0.7.0 ``nj``, and the seed-000 JSD distance.

The inputs are tree-like: the path distances of a random binary tree on M leaves with 5 % multiplicative noise
(symmetrised), so NJ has a real topology to find. ``neighbor_joining`` replays scikit-bio's algorithm operation for
operation in numpy (same tree and Newick text); scikit-bio scans the Q matrix in Cython, so the anchor is expected
to stay ahead — this row shows by how much. ``jsd_distance`` (JAX, row tiles of tile·M² values) is timed against
scipy's ``jensenshannon`` applied row by row (the direct way to write the seed's formula), on
C = exp(−D) of the same tree.

    python benchmarks/bench_tree.py [--sizes 200 500 1000]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure, row, sizes_main

from jaxalign.tree import Tree, jsd_distance, neighbor_joining


def tree_distances(m: int, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """(m, m) path distances of a random binary tree (branch lengths U[0.05, 1]) times (1 + noise·N(0, 1))."""
    rng = np.random.default_rng(seed)
    children: list[tuple[int, ...]] = [()] * m
    active = list(range(m))
    while len(active) > 3:
        a, b = sorted(rng.choice(len(active), size=2, replace=False))
        children.append((active[a], active[b]))
        active[a] = len(children) - 1
        active[b] = active[-1]
        active.pop()
    children.append(tuple(active))
    lengths = (*rng.uniform(0.05, 1.0, size=len(children) - 1), 0.0)
    truth = Tree(
        (*(f"m{i}" for i in range(m)), *([None] * (len(children) - m))), tuple(children), lengths, len(children) - 1
    )
    d = truth.leaf_distances() * (1 + noise * rng.normal(size=(m, m)))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


def _jsd_scipy(c: np.ndarray, alpha: float = 0.5, eps: float = 1e-8) -> np.ndarray:
    """The seed's formula with scipy, one row of D at a time (scipy's jensenshannon is sqrt(JSD))."""
    from scipy.spatial.distance import jensenshannon

    m = len(c)
    r = (c + eps) / (c.sum(1, keepdims=True) + m * eps)
    k = (c.T + eps) / (c.T.sum(1, keepdims=True) + m * eps)
    with np.errstate(invalid="ignore"):  # sqrt of a rounding-level negative JSD on the diagonal (set to 0 below)
        d = np.stack(
            [
                alpha * jensenshannon(r[i][None], r, base=2, axis=1)
                + (1 - alpha) * jensenshannon(k[i][None], k, base=2, axis=1)
                for i in range(m)
            ]
        )
    np.fill_diagonal(d, 0.0)
    return d


def run(sizes: tuple[int, ...] = (200, 500, 1000), repeat: int = 2) -> list[str]:
    """Rows: NJ (scikit-bio vs jaxalign; value = total branch length) and the JSD distance (value = mean D)."""
    from skbio import DistanceMatrix
    from skbio.tree import nj

    rows = []
    for m in sizes:
        d = tree_distances(m)
        dm = DistanceMatrix(d)
        rows.append(
            row(
                "neighbor joining vs scikit-bio nj (float64)",
                m,
                measure(lambda dm=dm: nj(dm).descending_branch_length(), repeat=repeat),
                measure(lambda d=d: neighbor_joining(d).total_branch_length(), repeat=repeat),
            )
        )
        c = np.exp(-d)
        rows.append(
            row(
                "jsd_distance vs scipy jensenshannon row by row",
                m,
                measure(lambda c=c: _jsd_scipy(c).mean(), warmup=False),
                measure(lambda c=c: jsd_distance(c).mean(), repeat=repeat),
            )
        )
    return rows


def main() -> None:
    sizes_main(run, __doc__, (200, 500, 1000))


if __name__ == "__main__":
    main()
