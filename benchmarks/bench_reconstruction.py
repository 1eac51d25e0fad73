"""Feature reconstruction: jaxalign GFRE / GFRD / LFRE against scikit-matter 0.4.1 (SPEC §8).

Same float32 embeddings for both sides (X: d = 256, Y: d = 128, ``harness.embeddings``) and scikit-matter's defaults
on both (seeded 50/50 split, total-variance scaling, Ridge2FoldCV). scikit-matter fits LFRE's local ridges one test
point at a time (about 20 ms each), so at large N the LFRE comparison runs both libraries on the same explicit subset
of the test set (the first ``anchor_points`` test indices, same train set; no extrapolation) and a second row times
jaxalign alone on the full test set. ``run_seed003_scale`` times LFRE at seed 003's size: 170,000 train environments,
1,000 test points, d = 128, k = min(d_X, d_Y) = 128 (jaxalign only). LFRE values may differ by ~1e-3 in float32:
scikit-matter inverts the round-off singular value of each rank-deficient neighbourhood (k ≤ d), jaxalign drops it
and matches scikit-matter's float64 value instead.

The script first calls :func:`jaxalign.cpu.limit_lapack_threads` (the README's CPU setting: scipy's bundled OpenBLAS,
which backs jax's LAPACK kernels, on one thread so it does not compete with XLA's thread pool). scikit-matter runs on
numpy's own OpenBLAS, a separate library whose threads are not touched; ``--no-limit`` skips the call.

    python benchmarks/bench_reconstruction.py [--sizes 2000 10000] [--anchor-points 1000]
    python benchmarks/bench_reconstruction.py --seed003 [--n-train 170000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from harness import HEADER, embeddings, measure, row
from skmatter.metrics import (
    global_reconstruction_distortion,
    global_reconstruction_error,
    local_reconstruction_error,
)

from jaxalign.cpu import limit_lapack_threads
from jaxalign.reconstruction import gfrd, gfre, lfre, train_test_indices

DX, DY = 256, 128
#: the global measures take ~0.1 s, so both sides are timed alike: one warm-up call, then the best of this many.
GLOBAL_REPEAT = 10


def _lfre_rows(x, y, n: int, k: int, anchor_points: int, repeat: int) -> list[str]:
    """LFRE(X→Y, k): anchor and jaxalign on the same test subset, then jaxalign on the full test set."""
    train, test = train_test_indices(n)
    subset = test[:anchor_points]
    label = f"LFRE X256→Y128 (k={k}) vs skmatter local_reconstruction_error"
    if subset.size < test.size:
        label += f", both on {subset.size} of {test.size} test points"
    rows = [
        row(
            label,
            n,
            measure(lambda: local_reconstruction_error(x, y, k, train_idx=train, test_idx=subset), warmup=False),
            measure(lambda: lfre(x, y, k=k, train_idx=train, test_idx=subset), repeat=repeat),
        )
    ]
    if subset.size < test.size:
        rows.append(
            row(
                f"LFRE X256→Y128 (k={k}), jaxalign on all {test.size} test points",
                n,
                None,
                measure(lambda: lfre(x, y, k=k), repeat=repeat),
            )
        )
    return rows


def run(sizes: tuple[int, ...] = (2000, 10000), anchor_points: int = 1000, repeat: int = 2) -> list[str]:
    """Table rows per N: GFRE (both directions), GFRD (128→256, where the anchor runs), LFRE k=20 and k=128."""
    rows = []
    for n in sizes:
        x, y = embeddings(n, DX, DY)
        rows.append(
            row(
                "GFRE X256→Y128 vs skmatter global_reconstruction_error",
                n,
                measure(lambda x=x, y=y: global_reconstruction_error(x, y), repeat=GLOBAL_REPEAT),
                measure(lambda x=x, y=y: gfre(x, y), repeat=GLOBAL_REPEAT),
            )
        )
        rows.append(
            row(
                "GFRE Y128→X256 vs skmatter global_reconstruction_error",
                n,
                measure(lambda x=x, y=y: global_reconstruction_error(y, x), repeat=GLOBAL_REPEAT),
                measure(lambda x=x, y=y: gfre(y, x), repeat=GLOBAL_REPEAT),
            )
        )
        rows.append(
            row(
                "GFRD Y128→X256 vs skmatter global_reconstruction_distortion",
                n,
                measure(lambda x=x, y=y: global_reconstruction_distortion(y, x), repeat=GLOBAL_REPEAT),
                measure(lambda x=x, y=y: gfrd(y, x), repeat=GLOBAL_REPEAT),
            )
        )
        for k in (20, min(DX, DY)):
            rows += _lfre_rows(x, y, n, k, anchor_points, repeat)
    return rows


def run_seed003_scale(n_train: int = 170_000, n_test: int = 1_000, d: int = 128, repeat: int = 1) -> list[str]:
    """LFRE at seed 003's scale: ``n_train`` train environments, ``n_test`` test points, d = 128, k = d (jaxalign)."""
    x, y = embeddings(n_train + n_test, d, d)
    train, test = np.arange(n_train), np.arange(n_train, n_train + n_test)
    return [
        row(
            f"LFRE seed-003 scale: {n_train} train / {n_test} test, d={d}, k={d} (jaxalign only)",
            n_train + n_test,
            None,
            measure(lambda: lfre(x, y, k=d, train_idx=train, test_idx=test), repeat=repeat),
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 10000])
    parser.add_argument("--anchor-points", type=int, default=1000, help="test points the LFRE anchor is timed on")
    parser.add_argument("--seed003", action="store_true", help="also run LFRE at seed 003's scale (jaxalign only)")
    parser.add_argument("--n-train", type=int, default=170_000, help="train environments of the seed-003 run")
    parser.add_argument("--n-test", type=int, default=1_000, help="test points of the seed-003 run")
    parser.add_argument("--no-limit", action="store_true", help="leave scipy's BLAS threads as they are")
    args = parser.parse_args()
    if not args.no_limit:
        limit_lapack_threads()
    print(HEADER)
    rows = run(tuple(args.sizes), args.anchor_points) if args.sizes else []
    if args.seed003:
        rows += run_seed003_scale(args.n_train, args.n_test)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
