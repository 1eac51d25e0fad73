"""One model's extraction, run as its own process: ``python -m experiments.extract --records R --model M ...``.

The experiment app draws the dataset once (reading, filters, seeded subsample) and pickles the chosen records;
each model then runs in a fresh interpreter (its own environment when ``--python`` is given: the parent launches
that interpreter instead) that unpickles them and hands them to :func:`extractors.runner.run_extraction`, which
embeds chunk by chunk (a killed run resumes after its last finished chunk) and renames the finished embedding file
into place. A sidecar ``<name>.json`` records the model's parameter count and the load and embedding times.

It starts by arranging to die with the app (:func:`extractors.faults.die_with_parent`: the app passes its pid), so a
killed app leaves no extraction running; then checks the output directory and the device before loading the model.

Exit codes: 0 done, 2 a problem the user fixes — bad arguments, a device torch does not have, an output directory
that cannot be written, a full disk, a model that embedded no structure (one ``error: ...`` line on stderr; the app
turns it into its own one-line error) — 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["count_parameters", "main"]

#: printed before the message when every structure failed, so the parent can say so plainly.
ALL_FAILED = "ALL-STRUCTURES-FAILED:"


def count_parameters(obj: Any) -> int | None:
    """Number of parameters of the torch modules held by an extractor (its attributes, one level of lists/dicts and
    a calculator's ``models``); None when it holds none (SOAP, Morgan, random)."""
    try:
        import torch
    except ImportError:
        return None
    seen: dict[int, Any] = {}

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, torch.nn.Module):
            seen.setdefault(id(value), value)
        elif depth < 2 and isinstance(value, (list, tuple)):
            for v in value:
                visit(v, depth + 1)
        elif depth < 2 and isinstance(value, dict):
            for v in value.values():
                visit(v, depth + 1)
        elif depth < 1 and hasattr(value, "__dict__") and not isinstance(value, type):
            for v in vars(value).values():
                visit(v, depth + 1)

    for v in vars(obj).values():
        visit(v, 0)
    if not seen:
        return None
    params = {id(p): p for m in seen.values() for p in m.parameters()}
    return int(sum(p.numel() for p in params.values()))


def _parse_opts(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = json.loads(value)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.extract", description=__doc__)
    p.add_argument("--records", required=True, type=Path, help="pickled list of extractors.datasets.Record")
    p.add_argument("--dataset", required=True, help="dataset label written into the file's metadata")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--name", required=True, help="output file stem")
    p.add_argument("--layer", default="last")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=JSON", help="model option")
    p.add_argument("--no-atom-features", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    return p


_FIX = "choose another cache_dir"


def _error_text(err: Exception, out: Path) -> str | None:
    """The text of the ``error:`` line for a problem the user fixes (None for a crash)."""
    from extractors.faults import output_error
    from extractors.runner import NothingToEmbed

    if isinstance(err, OSError):  # writing the sidecar (the runner maps its own writes)
        mapped = output_error(err, out, _FIX)
        return None if mapped is None else str(mapped)
    if isinstance(err, NothingToEmbed):
        return f"{ALL_FAILED} {err.detail}"
    return str(err)  # extractors.faults.UsageError and the registry's argument errors


def main(argv: list[str] | None = None) -> int:
    from extractors.faults import die_with_parent, one_line

    die_with_parent()
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except (ValueError, OSError) as err:
        text = _error_text(err, args.out)
        if text is None:
            raise
        print(f"error: {one_line(text)}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from extractors.faults import UsageError, check_device, ensure_writable

    options = _parse_opts(args.opt)
    check_device(options.get("device"))
    ensure_writable(args.out, _FIX)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from extractors.registry import build_extractor
    from extractors.runner import run_extraction

    with open(args.records, "rb") as fh:
        records = pickle.load(fh)
    start = time.perf_counter()
    try:
        extractor = build_extractor(args.model, layer=args.layer, **options)
    except RuntimeError as err:  # a family's own refusal to load (e.g. weights not given)
        raise UsageError(str(err)) from None
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    path = run_extraction(
        args.model,
        args.dataset,
        args.out,
        layer=args.layer,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        options=options,
        atom_features=not args.no_atom_features,
        name=args.name,
        progress=not args.no_progress,
        extractor=extractor,
        records=records,
        out_option="cache_dir",  # the app's setting: its message says what to change
    )
    sidecar = {
        "model": args.model,
        "load_s": round(load_s, 3),
        "embed_s": round(time.perf_counter() - start, 3),
        "n_params": count_parameters(extractor),
        "python": platform.python_version(),
        "interpreter": sys.executable,
    }
    from extractors.faults import atomic_target  # not experiments.cache: a family environment has no jax

    with atomic_target(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
