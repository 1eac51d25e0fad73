"""Paper-scale run (seed 000: N = 50,000 samples, d = 256, k = 25): wall time and peak RSS per metric.

Each metric runs in a fresh interpreter so its peak RSS (``ru_maxrss``, the whole process: Python, JAX, data) is its
own. The dense anchors cannot run here: one N×N float64 matrix is N²·8 B = 18.6 GiB at N = 50,000, and platonic-rep's
CKNNA holds K, L, two float32 masks and their products (≥ 4 such matrices ≈ 56 GiB with float32 masks); dcor,
DADApy and scikit-dimension build full N×N distance matrices (18.6 GiB each) or N×(N−1) rank matrices.

    python benchmarks/paper_scale.py [--n 50000] [--d 256] [--k 25]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    sys.path.insert(0, "benchmarks")
    from harness import embeddings
    from jaxalign import knn, metrics as M
    n, d, k, name = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    x, y = embeddings(n, d, d // 2)
    calls = {
        "knn graph (ip)": lambda: knn(x, k).values,
        "cknna": lambda: M.cknna(x, y, k=k),
        "mutual_knn": lambda: M.mutual_knn(x, y, k=k),
        "twonn": lambda: M.twonn(x),
        "mle_id": lambda: M.mle_id(x, k=20),
        "information_imbalance": lambda: M.information_imbalance(x, y, k=1),
        "dcor": lambda: M.dcor(x, y),
    }
    t0 = time.perf_counter()
    value = np.asarray(calls[name]())
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"name": name, "wall_s": wall, "peak_rss_gib": rss, "value": value.ravel()[:2].tolist()}))
    """
)
NAMES = ("knn graph (ip)", "cknna", "mutual_knn", "twonn", "mle_id", "information_imbalance", "dcor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--only", nargs="*", default=list(NAMES))
    args = parser.parse_args()
    print(f"N = {args.n}, d = {args.d} vs {args.d // 2}, float32, k = {args.k}; wall includes JAX compilation")
    print("| metric | N | wall s | peak RSS GiB | value |\n|---|---|---|---|---|")
    for name in args.only:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.n), str(args.d), str(args.k), name],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln or "error" in ln]
            print(f"| {name} | {args.n} | failed | — | {(errors or proc.stderr.splitlines() or ['?'])[-1]} |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        value = ", ".join(f"{v:.5g}" for v in r["value"])
        print(f"| {name} | {args.n} | {r['wall_s']:.1f} | {r['peak_rss_gib']:.2f} | {value} |", flush=True)
    gib = args.n**2 * 8 / 2**30
    print(f"\nOne dense N×N float64 matrix at N = {args.n}: {gib:.1f} GiB (the anchors need several).")


if __name__ == "__main__":
    main()
