"""Command line: ``python -m extractors list``, ``run``, ``label`` and ``finetune``.

``label`` writes structures with a potential's energies and forces; ``finetune`` trains one of seed 003's
strategies from a JSON spec (:mod:`extractors.finetune`).

Exit codes: 0 done, 2 a problem the user fixes (one ``error: ...`` line on stderr naming the file, frame, directory
or option and the fix: see :mod:`extractors.faults`), 3 stopped by ``--max-chunks`` or ``--max-epochs`` (run again
to resume), 1 a crash (a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from extractors.faults import UsageError, child_env, die_with_parent, one_line

__all__ = ["main"]

_EXIT_STOPPED = 3


def _parse_opts(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--opt/--dataset-opt expects KEY=VALUE, got {pair!r}.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m extractors", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list registered models and their status")
    ls.add_argument("--json", action="store_true", help="machine-readable output (metadata included)")
    ls.add_argument("--long", action="store_true", help="also each model's metadata (architecture, training data, …)")
    lay = sub.add_parser("layers", help="the layers each model offers (the default, `last`, first)")
    lay.add_argument("models", nargs="*", help="model ids (default: one model of every family)")
    run = sub.add_parser("run", help="extract embeddings into DIR/<model>__<dataset>__<layer>.npz")
    run.add_argument("--model", required=True, help="model id (see `list`)")
    run.add_argument("--dataset", required=True, help="default | default:id | default:ood | KIND:PATH | PATH")
    run.add_argument("--out", required=True, type=Path, help="output directory")
    run.add_argument("--python", help="run under this interpreter (an environment holding the model's packages)")
    run.add_argument("--n", type=int, help="seeded subsample of N structures")
    run.add_argument("--seed", type=int, default=0, help="subsampling seed (default 0)")
    run.add_argument("--layer", default="last", help="layer to read (default: last)")
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--chunk-size", type=int, default=256, help="structures per resumable chunk")
    run.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="model option (JSON value)")
    run.add_argument("--dataset-opt", action="append", default=[], metavar="KEY=VALUE", help="dataset reader option")
    run.add_argument("--drop-single-atoms", action="store_true", help="seed 003 filter: drop 1-atom structures")
    run.add_argument("--drop-unsupported", action="store_true", help="drop structures the model cannot embed")
    run.add_argument(
        "--skip-bad-frames",
        action="store_true",
        help="extended XYZ: skip frames ASE cannot parse (listed in meta['dropped']) instead of stopping",
    )
    run.add_argument("--no-atom-features", action="store_true", help="skip per-atom arrays")
    run.add_argument("--name", help="output file stem (default <model>__<dataset>__<layer>)")
    run.add_argument("--max-chunks", type=int, help="stop after writing this many chunks (resume later)")
    run.add_argument("--threads", type=int, help="torch intra-op threads")
    run.add_argument("--no-progress", action="store_true")
    lab = sub.add_parser("label", help="write structures with a potential's energies and forces (extended XYZ)")
    lab.add_argument("--model", required=True, help="a model with an ASE calculator (7net-0, chgnet-0.3.0, ...)")
    lab.add_argument("--data", required=True, type=Path, help="structures (any file ASE reads)")
    lab.add_argument("--out", required=True, type=Path, help="labelled extended XYZ file")
    lab.add_argument("--python", help="run under this interpreter")
    lab.add_argument("--threads", type=int, help="torch intra-op threads")
    ft = sub.add_parser("finetune", help="train one fine-tuning strategy of seed 003 (extractors.finetune)")
    ft.add_argument("--spec", required=True, type=Path, help="JSON file of extractors.finetune.FinetuneSpec")
    ft.add_argument("--out", required=True, type=Path, help="checkpoint directory (a rerun resumes)")
    ft.add_argument("--python", help="run under this interpreter")
    ft.add_argument("--threads", type=int, help="torch intra-op threads")
    ft.add_argument("--max-epochs", type=int, help="stop after this many epochs (exit 3; run again to resume)")
    ft.add_argument("--no-progress", action="store_true")
    return p


def _list(as_json: bool, long: bool = False) -> int:
    from extractors.metadata import model_meta
    from extractors.registry import UNAVAILABLE, available, specs

    rows = []
    for spec in specs().values():
        missing = available(spec)
        meta = model_meta(spec.id, spec.family)
        rows.append(
            {
                "id": spec.id,
                "family": spec.family,
                "status": spec.status,
                "here": "yes" if not missing else "missing " + ",".join(missing),
                "description": spec.description,
                "architecture": meta.architecture,
                "modality": meta.modality,
                "training data": ", ".join(meta.training_data) or "—",
                "level of theory": meta.level_of_theory,
                "equivariance": meta.equivariance,
                "energy head": "yes" if meta.energy_head else "no",
                "citation": meta.citation,
            }
        )
    for model, (what, why) in UNAVAILABLE.items():
        keys = ("family", "architecture", "modality", "training data", "level of theory", "equivariance")
        row = {"id": model, "status": "unavailable", "here": "no", "description": f"{what}; {why}"}
        rows.append({**row, **dict.fromkeys((*keys, "energy head", "citation"), "—")})
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    cols: tuple[str, ...] = ("id", "family", "status", "here", "description")
    if long:
        cols = ("id", "status", "architecture", "modality", "training data", "level of theory", "equivariance",
                "energy head", "citation")  # fmt: skip
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols).rstrip())
    if long:
        print("(parameter counts are measured when a model is loaded: n_params in each embedding file's metadata)")
    return 0


def _reexec(python: str, argv: list[str]) -> int:
    """Run the same command under ``python`` with this package importable; return its exit code. The child ends
    when this process dies (:func:`~extractors.faults.die_with_parent`)."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--python":
            skip = True
        elif not a.startswith("--python="):
            args.append(a)
    root = str(Path(__file__).resolve().parents[1])
    env = child_env()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.call([python, "-m", "extractors", *args], env=env)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.python:
        if not os.access(args.python, os.X_OK):
            raise UsageError(f"--python {args.python} is not an executable interpreter.")
        return _reexec(args.python, argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.command == "label":
        from extractors.finetune import label

        print(label(args.model, args.data, args.out))
        return 0
    if args.command == "finetune":
        from extractors.finetune import FinetuneSpec, finetune

        try:
            spec = FinetuneSpec.from_mapping(json.loads(args.spec.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"--spec {args.spec}: {err}") from None
        if not finetune(spec, args.out, progress=not args.no_progress, max_epochs=args.max_epochs)["done"]:
            print(f"[extractors] stopped after --max-epochs {args.max_epochs}; run again to resume", file=sys.stderr)
            return _EXIT_STOPPED
        print(args.out)
        return 0
    options = _parse_opts(args.opt)
    dataset_options = _parse_opts(args.dataset_opt)
    from extractors.runner import ExtractionStopped, run_extraction

    try:
        path = run_extraction(
            args.model,
            args.dataset,
            args.out,
            n=args.n,
            seed=args.seed,
            layer=args.layer,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            options=options,
            dataset_options=dataset_options,
            drop_single_atoms=args.drop_single_atoms,
            drop_unsupported=args.drop_unsupported,
            skip_bad_frames=args.skip_bad_frames,
            atom_features=not args.no_atom_features,
            name=args.name,
            progress=not args.no_progress,
            max_chunks=args.max_chunks,
        )
    except ExtractionStopped as stop:
        print(f"[extractors] {stop}", file=sys.stderr)
        return _EXIT_STOPPED
    print(path)
    return 0


def _layers(models: list[str]) -> int:
    """Print each model's layers (``MODEL@LAYER`` ids); without models, one line block per family."""
    from extractors.registry import base_id, get_spec, layers, specs

    table = specs()
    if not models:
        first: dict[str, str] = {}
        for spec in table.values():
            first.setdefault(spec.family, spec.id)
        models = list(first.values())
    for model in models:
        offered = layers(model)
        print(f"{model} (family {get_spec(base_id(model)).family})")
        for i, (name, what) in enumerate(offered.items()):
            print(f"  {name:<22s} {what}" + ("  [default]" if i == 0 else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list(args.json, args.long)
    if args.command == "layers":
        try:
            return _layers(args.models)
        except ValueError as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            return 2
    die_with_parent()
    try:
        return _run(args, argv)
    except ValueError as err:  # UsageError and the readers' and registry's argument errors
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
