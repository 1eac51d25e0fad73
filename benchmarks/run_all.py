"""Every anchor-vs-jaxalign benchmark in one table (markdown), for the README.

    python benchmarks/run_all.py [--sizes 2000 10000] [--out benchmarks/results.md]

Each comparison runs the anchor and jaxalign on the same data in one process (see harness.py), except DADApy, which
needs numpy<2 and runs in its own interpreter, timed inside it around the call (anchors/dadapy_runner.py); the
paper-scale
run (``paper_scale.py``) and the seed-003-scale LFRE are separate because they take minutes each.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import HEADER

MODULES = (
    "bench_cknna",
    "bench_dcor",
    "bench_information_imbalance",
    "bench_intrinsic_dimension",
    "bench_reconstruction",
    "bench_tree",
    "bench_descriptors",
)

#: Benchmarks whose size is the number of samples N (the tree's is the number of models, the descriptors' the
#: seed-003 atom count: they keep their own defaults).
SIZED_BY_N = frozenset(MODULES[:5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--only", nargs="*", default=list(MODULES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import jax

    lines = [f"Machine: {platform.processor() or platform.machine()}, jax {jax.__version__}, {jax.devices()}", HEADER]
    print("\n".join(lines), flush=True)
    for name in args.only:
        module = importlib.import_module(name)
        rows = module.run(sizes=tuple(args.sizes)) if name in SIZED_BY_N else module.run()
        for r in rows:
            print(r, flush=True)
        lines += rows
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
