"""Stage 2 — extraction: one subprocess per model, each cached under its content key.

The key of a model's embedding file holds the dataset key and the digest of the drawn records, the model id, layer
and options, the installed versions of the model's packages and the embedding-file format. A model whose file
exists is not run again; a killed extraction resumes from the chunks the runner left on disk (same key, same work
directory). Models run one after another by default (each uses every core); ``jobs > 1`` runs several at once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.cache import content_key, read_json, write_json
from experiments.data import DatasetStage
from experiments.extract import ALL_FAILED
from experiments.watchdog import beat, child

__all__ = ["ExtractionError", "ModelRun", "check_models", "extract_models"]

REPO = Path(__file__).resolve().parents[1]


class ExtractionError(RuntimeError):
    """A model could not be extracted; the message names the model and the reason."""


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """One model's extraction: its embedding file, sidecar facts and whether it came from the cache."""

    model: str
    family: str
    key: str
    path: Path | None
    cached: bool
    info: dict[str, Any]
    error: str | None = None


def check_models(ids: Sequence[str], pythons: Mapping[str, str]) -> dict[str, Any]:
    """Validate the model ids against the registry before anything runs; returns id → ModelSpec.

    Unknown ids, duplicates and models whose packages are missing here (and that have no interpreter in
    ``models.python``) are errors naming the fix.
    """
    from extractors.registry import available, specs

    table = specs()
    if not ids:
        raise ExtractionError("models.ids is empty; list at least two models (see `python -m extractors list`).")
    dup = [m for m, c in collections.Counter(ids).items() if c > 1]
    if dup:
        raise ExtractionError(f"models.ids lists {dup} more than once.")
    unknown = [m for m in ids if m not in table]
    if unknown:
        raise ExtractionError(
            f"unknown model id(s) {unknown}; known: {', '.join(table)} (see `python -m extractors list`)."
        )
    for m in ids:
        missing = available(table[m])
        if missing and m not in pythons:
            raise ExtractionError(
                f"model {m!r} needs {missing}, missing from this interpreter; install them or give an interpreter "
                f"that has them: models.python.{m}=/path/to/env/bin/python."
            )
    return {m: table[m] for m in ids}


def _key(spec: Any, dataset: DatasetStage, layer: str, options: Mapping[str, Any], extraction: Mapping) -> str:
    from extractors.base import versions
    from extractors.embedding_file import FORMAT

    return content_key(
        "extract",
        {
            "dataset": dataset.key,
            "records": dataset.summary["digest"],
            "model": spec.id,
            "config": spec.config,
            "layer": layer,
            "options": dict(options),
            "versions": versions(spec.packages),
            "format": FORMAT,
            "atom_features": bool(extraction.get("atom_features", True)),
        },
    )


def _pump(stream: Any, sink: Any, tail: collections.deque) -> None:
    """Copy a child's stderr to ours as it comes (progress bars stay live) and keep its last lines; the child's output
    is the watchdog's heartbeat."""
    buf = b""
    for chunk in iter(lambda: stream.read1(4096), b""):
        beat()
        if sink is not None:
            sink.write(chunk)
            sink.flush()
        buf += chunk
        *lines, buf = buf.replace(b"\r", b"\n").split(b"\n")
        tail.extend(line for line in lines if line.strip())
    if buf.strip():
        tail.append(buf)


def _run_one(
    spec: Any,
    dataset: DatasetStage,
    out_dir: Path,
    key: str,
    *,
    layer: str,
    options: Mapping[str, Any],
    python: str,
    extraction: Mapping[str, Any],
    progress: bool,
) -> dict[str, Any]:
    import json

    cmd = [
        python,
        "-m",
        "experiments.extract",
        "--records",
        str(dataset.records_path),
        "--dataset",
        dataset.label,
        "--model",
        spec.id,
        "--out",
        str(out_dir),
        "--name",
        key,
        "--layer",
        layer,
        "--batch-size",
        str(int(extraction.get("batch_size", 16))),
        "--chunk-size",
        str(int(extraction.get("chunk_size", 128))),
    ]
    cmd += [f"--opt={k}={json.dumps(v)}" for k, v in options.items()]
    if not extraction.get("atom_features", True):
        cmd.append("--no-atom-features")
    if extraction.get("threads"):
        cmd += ["--threads", str(int(extraction["threads"]))]
    if not progress:
        cmd.append("--no-progress")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tail: collections.deque = collections.deque(maxlen=25)
    sink = getattr(sys.stderr, "buffer", None) if progress else None
    with child(proc.pid):  # the watchdog counts its CPU time and kills it if the stage stalls
        pump = threading.Thread(target=_pump, args=(proc.stderr, sink, tail), daemon=True)
        pump.start()
        stdout = proc.stdout.read()
        proc.wait()
        pump.join()
    wall = time.perf_counter() - start
    text = "\n".join(line.decode(errors="replace") for line in tail)
    if proc.returncode != 0:
        if ALL_FAILED in text:
            reason = text.split(ALL_FAILED, 1)[1].strip()
            raise ExtractionError(
                f"model {spec.id!r} failed on every structure of dataset {dataset.label!r}: {reason} — drop it from "
                "models.ids or choose a dataset it supports."
            )
        raise ExtractionError(
            f"extraction of model {spec.id!r} on {dataset.label!r} exited with code {proc.returncode}:\n{text}"
        )
    path = Path(stdout.decode().strip().splitlines()[-1])
    sidecar_path = path.with_suffix(".json")
    info = read_json(sidecar_path) if sidecar_path.exists() else {}
    info["wall_s"] = round(wall, 3)
    write_json(sidecar_path, info)
    return info


def extract_models(
    dataset: DatasetStage,
    models: Mapping[str, Any],
    cache_dir: str | Path,
    extraction: Mapping[str, Any],
    *,
    progress: bool = True,
) -> list[ModelRun]:
    """Extract every model of ``models`` (config keys ``ids``, ``layer``, ``options``, ``python``) on ``dataset``.

    Returns one :class:`ModelRun` per model in ``ids`` order. With ``extraction.on_error == "skip"`` a failing model
    is reported (``error``) and the others go on; by default (``"raise"``) the first failure stops the run.
    """
    ids = list(models["ids"])
    pythons = dict(models.get("python") or {})
    specs = check_models(ids, pythons)
    layers = dict(models.get("layers") or {})
    all_options = dict(models.get("options") or {})
    jobs = max(1, int(extraction.get("jobs", 1)))
    on_error = extraction.get("on_error", "raise")
    if on_error not in ("raise", "skip"):
        raise ExtractionError(f"extraction.on_error must be 'raise' or 'skip', got {on_error!r}.")

    plans = []
    for m in ids:
        layer = str(layers.get(m, models.get("layer", "last")))
        options = dict(all_options.get(m) or {})
        key = _key(specs[m], dataset, layer, options, extraction)
        out_dir = Path(cache_dir) / "embeddings" / m
        plans.append((m, layer, options, key, out_dir))

    def run(plan: tuple) -> ModelRun:
        m, layer, options, key, out_dir = plan
        path = out_dir / f"{key}.npz"
        if path.exists():
            sidecar = path.with_suffix(".json")
            return ModelRun(m, specs[m].family, key, path, True, read_json(sidecar) if sidecar.exists() else {})
        try:
            info = _run_one(
                specs[m],
                dataset,
                out_dir,
                key,
                layer=layer,
                options=options,
                python=pythons.get(m, sys.executable),
                extraction=extraction,
                progress=progress and jobs == 1,
            )
        except ExtractionError as err:
            if on_error == "raise":
                raise
            print(f"[extraction] {err}", file=sys.stderr)
            return ModelRun(m, specs[m].family, key, None, False, {}, error=str(err))
        return ModelRun(m, specs[m].family, key, path, False, info)

    if jobs == 1:
        return [run(p) for p in plans]
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(run, plans))
