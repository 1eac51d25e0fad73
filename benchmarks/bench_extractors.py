"""Throughput of every offline extractor: structures per second, batched vs one structure at a time.

Run in the extractors environment, e.g.::

    python benchmarks/bench_extractors.py --n 256 --batch-size 32            # every offline-ready model
    python benchmarks/bench_extractors.py --models chgnet-0.3.0 7net-0 --n 64
    $(python -m extractors.envs path proteinmpnn) benchmarks/bench_extractors.py --models proteinmpnn-vanilla \
        --dataset pdb:DIR --n 32     # protein chains of a directory of PDB files

Records are a seeded subsample of the embedded default dataset (or of ``--dataset SPEC``, any
``extractors.datasets.load_dataset`` spec) (molecules, dimers and elemental crystals with their
perturbed copies), restricted to those the model accepts (``Extractor.check``) and, for SMILES models, to those
whose SMILES can be derived. Each mode gets two untimed warm-up batches, then embeds the same records; the table
gives the model load time, structures/s for both modes and the speed-up. Wall times, on whatever cores torch uses
(``--threads`` sets them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extractors import build_extractor, specs
from extractors.base import OFFLINE_READY, Extractor
from extractors.datasets import Record, load_dataset, read_default, subsample
from extractors.registry import available


def _usable(ext: Extractor, records: Sequence[Record]) -> list[Record]:
    out = []
    for r in records:
        if ext.check(r) is not None:
            continue
        try:
            ext.embed([r])
        except Exception:
            continue
        out.append(r)
    return out


def _rate(ext: Extractor, records: Sequence[Record], batch_size: int) -> float:
    for _ in range(2):  # warm-up: lazy init, allocator, TorchScript profiling runs
        ext.embed(records[:batch_size])
    t0 = time.perf_counter()
    for start in range(0, len(records), batch_size):
        ext.embed(records[start : start + batch_size])
    return len(records) / (time.perf_counter() - t0)


def bench(model: str, n: int, batch_size: int, seed: int, dataset: str | None = None) -> dict:
    t0 = time.perf_counter()
    ext = build_extractor(model)
    load_s = time.perf_counter() - t0
    pool = subsample(load_dataset(dataset) if dataset else read_default(), 4 * n, seed=seed)
    ext.prepare(pool)
    records = _usable(ext, pool)[:n]
    batched = _rate(ext, records, batch_size)
    single = _rate(ext, records, 1)
    return {
        "model": model,
        "n": len(records),
        "load_s": load_s,
        "batched_per_s": batched,
        "single_per_s": single,
        "speedup": batched / single,
        "atoms_per_structure": sum(r.n_atoms or len(r.sequence or "") for r in records)  # residues for proteins
        / max(len(records), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", help="model ids (default: every offline-ready model installed here)")
    p.add_argument("--n", type=int, default=64, help="structures per model (default 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", help="a dataset spec, e.g. pdb:DIR (default: the embedded default dataset)")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    table = specs()
    models = args.models or [m for m, s in table.items() if s.status == OFFLINE_READY and not available(s)]
    rows = []
    print(f"| model | N | atoms/struct | load s | batched ({args.batch_size}) struct/s | single struct/s | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in models:
        r = bench(model, args.n, args.batch_size, args.seed, args.dataset)
        rows.append(r)
        print(
            f"| {model} | {r['n']} | {r['atoms_per_structure']:.1f} | {r['load_s']:.1f} | {r['batched_per_s']:.1f} | "
            f"{r['single_per_s']:.1f} | {r['speedup']:.2f}× |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
