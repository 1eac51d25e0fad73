"""Study-scale sweeps: jaxalign.sweep.pairwise_matrices against the app's former loop over model pairs.

Cases (issue 11), each printed as a markdown table:

- ``pairs``: M models of the same N rows, widths 256 and 128 alternating, float32: the whole metric set (CKNNA k = 25,
  mutual kNN k = 25, CKA, unbiased CKA, dCor, information imbalance k = 1) by the sweep vs the pair loop the app ran
  before (one call of each pairwise function per pair, from cached per-model graphs). The inner-product graphs are
  built once before either is timed ("graphs cached in both"); the Euclidean neighbours of information imbalance
  are in both timings (the loop builds one graph per model, the sweep finds them in its distance pass); values are
  compared entry by entry.
- ``scale``: one sweep at study scale (default M = 16, N = 50,000), graphs included: wall time, peak RSS, the time of
  each stage, and the distance pass's GEMM work as a fraction of this box's measured ``jnp.dot`` rate.
- ``devices``: the same sweep (smaller, cold: compilation included) under 1, 2 and 4 forced host devices (each in
  its own process).
- ``null``: :func:`jaxalign.statistics.permutation_null` of the whole metric set (M models, N rows, D draws): one
  whole sweep per draw (the default) vs three draws' shuffled copies batched in one sweep; cold and warm.
- ``project``: the full seed-000 study (60 models x 5 datasets x N = 50,000) from each stage's warm cost measured at
  the study's own shape: 16 of the 60 inner-product searches, the pairs stage at 8 and 16 models (fitted
  lin·M + quad·M²), three tiles of the distance pass over all 60 models at the sweep's tile for that shape.
- ``parts``: where one tile of that pass spends its time (products, squared distances, dCor's roots, the Gram, then
  the pass with dCor only, information imbalance only and both), each step timed over four tiles in one scan.

    python benchmarks/bench_sweep.py pairs [--m 10 --n 10000]
    python benchmarks/bench_sweep.py scale [--m 16 --n 50000]
    python benchmarks/bench_sweep.py devices [--m 8 --n 5000]
    python benchmarks/bench_sweep.py null [--m 8 --n 2000 --draws 16]
    python benchmarks/bench_sweep.py project [--m 60 --n 50000]
    python benchmarks/bench_sweep.py parts [--m 60 --n 50000]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jax
import jax.numpy as jnp
import numpy as np
from harness import measure

import jaxalign.metrics as M
from jaxalign import knn
from jaxalign.metrics.dcor import dcor_from_sums, distance_row_sums
from jaxalign.sweep import _cells, _pair_matrices, _pass_tile_size, _pass_unit, _prepare, pairwise_matrices

METRICS = ("cknna", "mutual_knn", "cka", "unbiased_cka", "dcor", "information_imbalance")
K = 25


def study(m: int, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """M related float32 embeddings of n rows: noisy nonlinear views of one 16-d latent, widths 256/128."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 16)).astype(np.float32)
    out = {}
    for i in range(m):
        d = 256 if i % 2 == 0 else 128
        w = rng.normal(size=(16, d)).astype(np.float32) / 4
        x = np.tanh(z @ w) if i % 3 else np.sin(z @ w)
        out[f"model{i:02d}"] = (x + 0.1 * rng.normal(size=(n, d)).astype(np.float32)).astype(np.float32)
    return out


def dot_rate(n: int = 10_000, tile: int = 512, d: int = 256) -> float:
    """This box's float32 GEMM rate (flop/s) on the distance pass's shape: (tile x d)·(d x n)."""
    a = jnp.ones((tile, d), jnp.float32)
    b = jnp.ones((d, n), jnp.float32)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    t = measure(lambda: f(a, b), repeat=5).seconds
    return 2.0 * tile * d * n / t


def pair_loop(feats: dict[str, np.ndarray], graphs: dict) -> dict[str, np.ndarray]:
    """The app's matrices stage before the sweep: every pairwise function once per pair (i ≤ j), from the cached
    inner-product graphs and the Euclidean graphs it builds once per model (the sweep finds its Euclidean neighbours
    inside its own distance pass, so each side's timing includes them)."""
    names = list(feats)
    m = len(names)
    euclidean = {name: knn(x, 1, metric="euclidean") for name, x in feats.items()}
    out = {name: np.full((m, m), np.nan) for name in METRICS}
    for i in range(m):
        for j in range(i, m):
            (gia, gea), (gib, geb) = (graphs[names[i]], euclidean[names[i]]), (graphs[names[j]], euclidean[names[j]])
            xa, xb = feats[names[i]], feats[names[j]]
            values = {
                "cknna": (
                    M.cknna(None, None, k=K, graph_x=gia, graph_y=gib),
                    M.cknna(None, None, k=K, graph_x=gib, graph_y=gia),
                ),
                "mutual_knn": M.mutual_knn(None, None, k=K, graph_x=gia, graph_y=gib),
                "cka": M.cka(xa, xb),
                "unbiased_cka": M.unbiased_cka(xa, xb),
                "dcor": jnp.sqrt(jnp.clip(dcor_from_sums(*distance_row_sums(xa, xb)), 0.0)),
                "information_imbalance": M.information_imbalance(xa, xb, k=1, graph_x=gea, graph_y=geb),
            }
            for name, value in values.items():
                if name in ("cknna", "information_imbalance"):
                    out[name][i, j], out[name][j, i] = (float(v) for v in value)
                else:
                    out[name][i, j] = out[name][j, i] = float(value)
    return out


def case_pairs(m: int, n: int) -> list[str]:
    feats = study(m, n)
    graphs = {name: knn(x, K, metric="ip") for name, x in feats.items()}
    with tempfile.TemporaryDirectory() as tmp:
        # the sweep's own graph units, journaled once: both timings below start from cached graphs
        pairwise_matrices(feats, metrics=("mutual_knn",), k=K, journal=tmp)
        graph_units = {p.name: p.read_bytes() for p in Path(tmp).glob("graph-*.npz")}

        def sweep():
            with tempfile.TemporaryDirectory() as run:
                for name, data in graph_units.items():
                    (Path(run) / name).write_bytes(data)
                return pairwise_matrices(feats, metrics=METRICS, k=K, journal=run)

        ours = measure(sweep, repeat=1)
    loop = measure(lambda: pair_loop(feats, graphs), repeat=1)
    rows = [
        "| metric set | M | N | pair loop s (first) | sweep s (first) | speed-up | peak MiB loop / sweep | max |Δ| |",
        "|---|---|---|---|---|---|---|---|",
    ]
    worst = max(float(np.nanmax(np.abs(ours.value[k] - loop.value[k]))) for k in METRICS)
    rows.append(
        f"| all six | {m} | {n} | {loop.seconds:.1f} ({loop.first_s:.1f}) | {ours.seconds:.1f} ({ours.first_s:.1f}) "
        f"| {loop.seconds / ours.seconds:.1f}× | {loop.peak_mib:.0f} / {ours.peak_mib:.0f} | {worst:.1e} |"
    )
    for k in METRICS:
        rows.append(f"|   {k} | | | | | | | {float(np.nanmax(np.abs(ours.value[k] - loop.value[k]))):.1e} |")
    return rows


class _Stages:
    """Wall time of each stage of one sweep, from its progress callback."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last = self.start
        self.seconds: dict[str, float] = {}

    def __call__(self, label: str, done: int, total: int, cached: bool) -> None:
        now = time.perf_counter()
        self.seconds[label] = self.seconds.get(label, 0.0) + now - self.last
        self.last = now


def _gemm_flops(feats: dict[str, np.ndarray], n: int) -> dict[str, float]:
    """Matrix-product work of the two all-pairs stages: each model's (N x d)·(d x N) block (once in the graphs'
    inner-product search, once in the distance pass) and the pass's M x M Gram."""
    m = len(feats)
    blocks = sum(2.0 * n * n * x.shape[1] for x in feats.values())
    return {"graphs": blocks, "distance pass": blocks + 2.0 * m * m * n * n}


def sweep_timing(m: int, n: int, *, warm: bool = False, tile: int | None = None) -> dict:
    """One sweep's wall time, peak RSS and per-stage times; ``warm``: after one untimed run of the same shapes (the
    compiled programs reused, nothing journaled reused); ``tile``: the distance pass's rows per tile."""
    feats = study(m, n)
    kwargs = {"metrics": METRICS, "k": K, "tile": tile}
    if warm:
        with tempfile.TemporaryDirectory() as tmp:
            pairwise_matrices(feats, journal=tmp, **kwargs)
    stages = _Stages()
    with tempfile.TemporaryDirectory() as tmp:
        run = functools.partial(pairwise_matrices, feats, journal=tmp, progress=stages, **kwargs)
        got = measure(run, warmup=False)
    stages.seconds["pairs and assembly"] = got.seconds - sum(stages.seconds.values())
    return {"m": m, "n": n, "seconds": got.seconds, "peak_mib": got.peak_mib, "stages": stages.seconds,
            "gemm_flops": _gemm_flops(feats, n)}  # fmt: skip


def case_scale(m: int, n: int) -> list[str]:
    rate = dot_rate()
    t = sweep_timing(m, n)
    rate = max(rate, dot_rate())  # the box's rate: the better of before and after (another tenant may slow one)
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in t["stages"].items())
    fractions = ", ".join(
        f"{stage} {flops / t['stages'][stage] / 1e9:.1f} GFLOP/s = {flops / t['stages'][stage] / rate:.0%}"
        for stage, flops in t["gemm_flops"].items()
    )
    return [
        "| M | N | wall s | peak RSS MiB | stages | jnp.dot GFLOP/s | matrix-product rate of the stage / jnp.dot |",
        "|---|---|---|---|---|---|---|",
        f"| {m} | {n} | {t['seconds']:.0f} | {t['peak_mib']:.0f} | {stages} | {rate / 1e9:.1f} | {fractions} |",
    ]


def case_devices(m: int, n: int) -> list[str]:
    rows = ["| devices | M | N | wall s | distance pass s |", "|---|---|---|---|---|"]
    for count in (1, 2, 4):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}
        code = f"import json, bench_sweep as b; print(json.dumps(b.sweep_timing({m}, {n})))"
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parent, capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        t = json.loads(out.strip().splitlines()[-1])
        rows.append(f"| {count} | {m} | {n} | {t['seconds']:.1f} | {t['stages'].get('distance pass', 0):.1f} |")
    return rows


def case_null(m: int, n: int, draws: int) -> list[str]:
    from jaxalign.statistics import permutation_null

    feats = study(m, n)
    kwargs = {"metrics": METRICS, "k": K}

    def batched(seed: int) -> None:
        permutation_null(feats, draws=draws, rows=None, seed=seed, draws_per_sweep=3, **kwargs)

    def loop(seed: int) -> None:  # the default: one whole sweep per draw, every model shuffled
        permutation_null(feats, draws=draws, rows=None, seed=seed, **kwargs)

    rows = ["| null | M | N | draws | first s | warm s | peak MiB |", "|---|---|---|---|---|---|---|"]
    for name, fn in (("one sweep per draw (default)", loop), ("batched, 3 draws per sweep", batched)):
        first = measure(lambda fn=fn: fn(0), warmup=False)
        warm = measure(lambda fn=fn: fn(1), warmup=False)
        rows.append(
            f"| {name} | {m} | {n} | {draws} | {first.seconds:.1f} | {warm.seconds:.1f} | {warm.peak_mib:.0f} |"
        )
    return rows


def case_project(m: int = 60, n: int = 50_000, *, graph_models: int = 16, pass_tiles: int = 3) -> list[str]:
    """The full seed-000 study (m models x 5 datasets x n rows) from each stage's cost measured at the study's own
    shape — not fitted from smaller N, where the pass's blocks fit in cache and its cost per entry is lower:

    - graphs: one inner-product search per model; ``graph_models`` of the m models timed (both widths), the mean
      per width times its number of models;
    - pairs (CKA, unbiased CKA, mutual kNN, CKNNA from features and graphs): the stage at 8 and 16 of those models
      (warm), fitted as lin·M + quad·M² and evaluated at m;
    - distance pass (dCor + information imbalance, Euclidean neighbours included): ``pass_tiles`` tiles of all m
      models at the tile the sweep gives this shape (warm), times the number of tiles.
    """
    feats = study(m, n)
    arrays = [jnp.asarray(v) for v in feats.values()]
    rate = dot_rate()

    graphs, seconds = [], {}
    for i in range(graph_models):
        jax.block_until_ready(knn(arrays[i], K, metric="ip"))  # compiles on the first of each width
        t0 = time.perf_counter()
        g = jax.block_until_ready(knn(arrays[i], K, metric="ip"))
        seconds.setdefault(arrays[i].shape[1], []).append(time.perf_counter() - t0)
        graphs.append({"ip_i": g.indices, "ip_v": g.values})
    widths = [x.shape[1] for x in arrays]
    graph_s = sum(float(np.mean(seconds[d])) for d in widths)

    def pairs(count: int) -> float:
        cells = _cells(None, list(feats)[:count])
        return measure(lambda: _pair_matrices(arrays[:count], graphs[:count], cells, METRICS, (K,), K, None)).seconds

    (a_m, a), (b_m, b) = ((c, pairs(c)) for c in (8, 16))
    quad = max(0.0, (b * a_m - a * b_m) / (b_m * b_m * a_m - a_m * a_m * b_m))
    lin = max(0.0, (b - quad * b_m * b_m) / b_m)
    pair_s = lin * m + quad * m * m

    tile = _pass_tile_size(n, m, 1, None)
    spaces = tuple(_prepare(x, exponent=1.0) for x in arrays)
    rows = jnp.arange(pass_tiles * tile, dtype=jnp.int32)
    unit = functools.partial(_pass_unit, rows, spaces, jnp.int32(0), length=rows.shape[0], exponent=1.0,
                             ii_k=(1,), dcor=True, cells=_cells(None, list(feats)), tile=tile, mesh=None)  # fmt: skip
    per_tile = measure(unit).seconds / pass_tiles  # warm: the first call compiles
    pass_s = per_tile * -(-n // tile)
    pass_flops = 2.0 * tile * n * (sum(widths) + m * m)  # every model's block and the M x M Gram, per tile
    search_flops = 2.0 * n * n * float(np.mean([arrays[i].shape[1] for i in range(graph_models)]))
    search_rate = search_flops / float(np.mean([t for ts in seconds.values() for t in ts]))

    total = graph_s + pair_s + pass_s
    return [
        f"| stage | measured | one dataset ({m} models, N = {n:,}) | matrix-product rate / jnp.dot |",
        "|---|---|---|---|",
        f"| graphs | {graph_models} searches: "
        + ", ".join(f"d = {d} {np.mean(ts):.1f} s" for d, ts in sorted(seconds.items()))
        + f" | {graph_s / 60:.0f} min | {search_rate / 1e9:.1f} GFLOP/s = {search_rate / rate:.0%} |",
        f"| pairs | M = {a_m} {a:.1f} s, M = {b_m} {b:.1f} s ({lin:.3f}·M + {quad:.4f}·M²) | "
        f"{pair_s / 60:.0f} min | — |",
        f"| distance pass | {pass_tiles} tiles of {tile} rows: {per_tile:.2f} s per tile | {pass_s / 60:.0f} min | "
        f"{pass_flops / per_tile / 1e9:.1f} GFLOP/s = {pass_flops / per_tile / rate:.0%} |",
        f"| **5 datasets, this CPU** (jnp.dot {rate / 1e9:.1f} GFLOP/s) | | **{5 * total / 3600:.1f} h** | |",
    ]


def case_parts(m: int = 60, n: int = 50_000, *, tiles: int = 4) -> list[str]:
    """Where one tile of the distance pass spends its time, at the study's shape and tile: ``tiles`` tiles in one
    ``lax.scan`` (buffers reused, as in the sweep) of progressively more of the pass — the distance products alone,
    their expansion to squared distances, dCor's shifted square roots, the models-last copy and the M x M Gram —
    then the pass itself with dCor only, information imbalance only (its Euclidean top-k and exact rank counts), and
    both."""
    from jaxalign.metrics.dcor import _safe_power
    from jaxalign.sweep import _pass_tile
    from jaxalign.tiling import pairwise_block

    feats = study(m, n)
    spaces = tuple(_prepare(jnp.asarray(x), exponent=1.0) for x in feats.values())
    cells = _cells(None, list(feats))
    tile = _pass_tile_size(n, m, 1, None)
    rows = jnp.arange(tiles * tile, dtype=jnp.int32).reshape(tiles, tile)
    valid = jnp.ones(tile, bool)

    def scanned(fn: Callable[[jax.Array, tuple], Any]) -> Callable[[], Any]:
        """fn over the tiles in one scan; the models' operands are arguments, not constants baked into the program."""

        def run(rows: jax.Array, spaces: tuple) -> jax.Array:
            def total(carry: jax.Array, r: jax.Array) -> tuple[jax.Array, None]:
                out = fn(r, spaces)
                return carry + sum(jnp.sum(v).astype(jnp.float32) for v in jax.tree_util.tree_leaves(out)), None

            return jax.lax.scan(total, jnp.float32(0), rows)[0]

        compiled = jax.jit(run)
        return lambda: compiled(rows, spaces)

    def powers(r: jax.Array, spaces: tuple) -> list[jax.Array]:
        diag = r[:, None] == jnp.arange(n)[None, :]
        out = []
        for sp in spaces:
            block = jnp.where(diag, 0.0, pairwise_block(sp.frame.rows[r], sp.frame.rows, "sqeuclidean"))
            out.append(_safe_power(block * sp.frame.factor**2, 0.5) - sp.frame.shift)
        return out

    def gram(r: jax.Array, spaces: tuple) -> jax.Array:
        left = jnp.stack(powers(r, spaces), -1).reshape(-1, m)
        return jnp.matmul(left.T, left, precision=jax.lax.Precision.HIGHEST)

    def pass_tile(dcor: bool, ii_k: tuple[int, ...]) -> Callable[[jax.Array, tuple], Any]:
        part = functools.partial(_pass_tile, length=tile, exponent=1.0, ii_k=ii_k, dcor=dcor, cells=cells)
        return lambda r, spaces: part(r, valid, spaces, jnp.int32(0))

    highest = jax.lax.Precision.HIGHEST
    steps = [
        ("distance products (M blocks of tile x N)",
         lambda r, sps: [jnp.matmul(sp.frame.rows[r], sp.frame.rows.T, precision=highest) for sp in sps]),
        ("+ squared-distance expansion",
         lambda r, sps: [pairwise_block(sp.frame.rows[r], sp.frame.rows, "sqeuclidean") for sp in sps]),
        ("+ dCor's shifted square roots", powers),
        ("+ models-last copy and M x M Gram", gram),
        ("pass: dCor only", pass_tile(True, ())),
        ("pass: information imbalance only (top-k, rank counts)", pass_tile(False, (1,))),
        ("pass: both (the sweep's tile)", pass_tile(True, (1,))),
    ]  # fmt: skip
    rows_out = [f"| step (M = {m}, N = {n:,}, tile {tile}) | ms per tile |", "|---|---|"]
    for name, fn in steps:
        rows_out.append(f"| {name} | {measure(scanned(fn)).seconds / tiles * 1e3:.0f} |")
    return rows_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=("pairs", "scale", "devices", "null", "project", "parts"))
    parser.add_argument("--m", type=int)
    parser.add_argument("--n", type=int)
    parser.add_argument("--draws", type=int, default=16)
    args = parser.parse_args()
    if args.case == "pairs":
        rows = case_pairs(args.m or 10, args.n or 10_000)
    elif args.case == "scale":
        rows = case_scale(args.m or 16, args.n or 50_000)
    elif args.case == "devices":
        rows = case_devices(args.m or 8, args.n or 5000)
    elif args.case == "null":
        rows = case_null(args.m or 8, args.n or 2000, args.draws)
    elif args.case == "parts":
        rows = case_parts(args.m or 60, args.n or 50_000)
    else:
        rows = case_project(args.m or 60, args.n or 50_000)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
