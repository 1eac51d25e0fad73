"""Stage 2 — extraction: one subprocess per model, each cached under its content key.

The key of a model's embedding file holds the dataset key and the digest of the drawn records, the model id, layer
and options, the installed versions of the model's packages and the embedding-file format. A model whose file
exists is not run again; a killed extraction resumes from the chunks the runner left on disk (same key, same work
directory). Models run one after another by default (each uses every core); ``jobs > 1`` runs several at once.

Runs sharing a cache do not collide: a model's extraction holds a lock next to its file (another run extracting the
same model on the same records waits for it, then reads the file from the cache), and every file is written under a
per-process temporary name. An extraction process leads its own process group and dies with the app
(:func:`extractors.faults.die_with_parent`); an app that is interrupted or stopped ends the groups of its running
extractions (:func:`experiments.watchdog.terminate_children`) before it exits. A child's own ``error: ...`` line is
turned into one line of the app's :class:`ExtractionError` (and not echoed as well).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.cache import content_key, read_json, write_json
from experiments.extract import ALL_FAILED
from experiments.stages.dataset import DatasetStage
from experiments.watchdog import beat, child, terminate_children
from extractors.faults import child_env, ensure_writable, exclusive_lock
from extractors.registry import base_id, split_layer

__all__ = [
    "ENV_MODES",
    "ExtractionError",
    "ModelRun",
    "check_models",
    "extract_models",
    "model_interpreters",
    "run_child",
]

REPO = Path(__file__).resolve().parents[2]


class ExtractionError(RuntimeError):
    """A model could not be extracted; the message names the model and the reason."""


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """One model's extraction: its embedding file, sidecar facts and whether it came from the cache; ``unread`` says
    why the model did not run at all (it reads none of the dataset's records, e.g. a SMILES model on crystals)."""

    model: str
    family: str
    key: str
    path: Path | None
    cached: bool
    info: dict[str, Any]
    error: str | None = None
    unread: str | None = None


#: ``models.envs``: ``auto`` builds a missing model's declared environment; ``off`` never builds one.
ENV_MODES = ("auto", "off")


def _env_mode(envs: Any) -> str:
    mode = ("auto" if envs else "off") if isinstance(envs, bool) or envs is None else envs
    if mode not in ENV_MODES:
        raise ExtractionError(f"models.envs must be one of {ENV_MODES}, got {envs!r}.")
    return str(mode)


def check_models(ids: Sequence[str], pythons: Mapping[str, str], *, envs: Any = "auto") -> dict[str, Any]:
    """Validate the model ids against the registry before anything runs; returns id → ModelSpec.

    Unknown ids, duplicates and models whose packages are missing here, that have no interpreter in
    ``models.python`` and (with ``envs="off"``, or for a family that declares none) no environment the app can
    build, are errors naming the fix.
    """
    from extractors.registry import available, environment, get_spec, specs

    mode = _env_mode(envs)
    table = specs()
    if not ids:
        raise ExtractionError("models.ids is empty; list at least two models (see `python -m extractors list`).")
    dup = [m for m, c in collections.Counter(ids).items() if c > 1]
    if dup:
        raise ExtractionError(f"models.ids lists {dup} more than once.")
    base = {m: split_layer(m)[0] for m in ids}
    unknown = [m for m in ids if base_id(m) not in table]
    if unknown:
        raise ExtractionError(
            f"unknown model id(s) {unknown}; known: {', '.join(table)} (see `python -m extractors list`; a layer "
            "is written MODEL@LAYER)."
        )
    for m in ids:
        spec = table[base_id(m)]
        missing = available(spec)
        if not missing or m in pythons or base[m] in pythons:
            continue
        env = environment(spec)
        if env is None or mode == "off":
            built = f"; or models.envs=auto to let the app build its {env!r} environment" if env else ""
            raise ExtractionError(
                f"model {m!r} needs {missing}, missing from this interpreter; install them or give an interpreter "
                f"that has them: models.python.{m}=/path/to/env/bin/python{built}."
            )
    return {m: get_spec(base[m]) for m in ids}


def model_interpreters(
    ids: Sequence[str], specs: Mapping[str, Any], pythons: Mapping[str, str], *, envs: Any = "auto"
) -> dict[str, tuple[str, dict[str, str] | None]]:
    """id → (interpreter, package versions or None) for every model: ``models.python`` when given; this
    interpreter when it has the model's packages (versions None: read here); else the model's declared environment
    (:func:`extractors.registry.environment`), created once under ``$JAXALIGN_ENVS`` (locked, so concurrent runs
    take turns; rebuilt when its pins change; ``python -m extractors.envs create NAME`` builds it ahead) with the
    versions its marker records. Call :func:`check_models` first."""
    from extractors import envs as family_envs
    from extractors.registry import available, environment

    mode = _env_mode(envs)
    out: dict[str, tuple[str, dict[str, str] | None]] = {}
    built: dict[str, tuple[str, dict[str, str]]] = {}
    for m in ids:
        given = pythons.get(m) or pythons.get(split_layer(m)[0])
        spec = specs[m]
        if given or not available(spec) or mode == "off":
            out[m] = (str(given or sys.executable), None)
            continue
        name = environment(spec)
        if name not in built:
            if not family_envs.is_current(name):
                where = family_envs.env_dir(name)
                print(
                    f"[extraction] building the {name!r} environment for {m} at {where} (once)",
                    file=sys.stderr,
                )
            python = family_envs.create(name)
            built[name] = (str(python), family_envs.marker(name).get("versions", {}))
        out[m] = built[name]
    return out


def _key(
    spec: Any,
    dataset: DatasetStage,
    layer: str,
    options: Mapping[str, Any],
    extraction: Mapping,
    env_versions: Mapping[str, str] | None,
) -> str:
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
            "versions": dict(env_versions) if env_versions is not None else versions(spec.packages),
            "format": FORMAT,
            "atom_features": bool(extraction.get("atom_features", True)),
        },
    )


_ERROR = b"error: "
_SEGMENT = re.compile(rb"[^\r\n]*[\r\n]?")


class _HideErrors:
    """Filters a child's stderr as it streams: every segment (ended by a newline or a carriage return, so progress
    bars pass live) is forwarded except the child's ``error: ...`` lines, which the app reports as one of its own."""

    def __init__(self) -> None:
        self.pending = b""
        self.show: bool | None = None  # None: the current segment is still undecided

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for piece in _SEGMENT.findall(data):
            if not piece:
                continue
            ended = piece[-1:] in (b"\r", b"\n")
            if self.show is None:
                self.pending += piece
                body = self.pending.rstrip(b"\r\n")
                if body.startswith(_ERROR):
                    self.show = False
                elif ended or not _ERROR.startswith(body):
                    self.show = True
                    out += self.pending
                if self.show is not None:
                    self.pending = b""
            elif self.show:
                out += piece
            if ended:
                self.show = None
        return bytes(out)

    def close(self) -> bytes:
        rest, self.pending = self.pending, b""
        return b"" if self.show is False or rest.startswith(_ERROR) else rest


def _pump(stream: Any, sink: Any, tail: collections.deque) -> None:
    """Copy a child's stderr to ours as it comes (progress bars stay live; its ``error:`` lines held back) and keep
    its last lines; the child's output is the watchdog's heartbeat."""
    buf = b""
    shown = _HideErrors()
    for chunk in iter(lambda: stream.read1(4096), b""):
        beat()
        if sink is not None:
            sink.write(shown.feed(chunk))
            sink.flush()
        buf += chunk
        *lines, buf = buf.replace(b"\r", b"\n").split(b"\n")
        tail.extend(line for line in lines if line.strip())
    if sink is not None:
        sink.write(shown.close())
        sink.flush()
    if buf.strip():
        tail.append(buf)


def _child_error(spec: Any, dataset: DatasetStage, returncode: int, lines: Sequence[str]) -> ExtractionError:
    """The app's one-line error for a failed extraction process: from the child's last ``error: ...`` line, or its
    exit code and last lines (a crash)."""
    said = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
    if said and ALL_FAILED in said[-1]:
        reason = said[-1].split(ALL_FAILED, 1)[1].strip()
        return ExtractionError(
            f"model {spec.id!r} failed on every structure of dataset {dataset.label!r}: {reason} — drop it from "
            "models.ids or choose a dataset it supports."
        )
    if said:
        return ExtractionError(f"model {spec.id!r} on dataset {dataset.label!r}: {said[-1]}")
    head = f"extraction of model {spec.id!r} on {dataset.label!r} exited with code {returncode}"
    return ExtractionError(head + ":\n" + "\n".join(lines))


def run_child(cmd: Sequence[str], *, progress: bool) -> tuple[int, str, list[str]]:
    """Run a torch-side command (``python -m extractors ...``) in its own process group with this repository
    importable: its stderr streams to ours when ``progress`` (its ``error:`` lines held back for the app to report),
    the watchdog counts its CPU time, and an interrupt ends it. Returns (exit code, stdout, its last stderr lines)."""
    env = child_env()  # the child dies with this process
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        list(cmd), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    tail: collections.deque = collections.deque(maxlen=25)
    sink = getattr(sys.stderr, "buffer", None) if progress else None
    with child(proc.pid):  # the watchdog counts its CPU time and kills it if the stage stalls
        try:
            pump = threading.Thread(target=_pump, args=(proc.stderr, sink, tail), daemon=True)
            pump.start()
            stdout = proc.stdout.read()
            proc.wait()
            pump.join()
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): the child is in its own group, end it here
            terminate_children([proc.pid])
            raise
    return proc.returncode, stdout.decode(errors="replace"), [line.decode(errors="replace") for line in tail]


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
    start = time.perf_counter()
    code, stdout, tail = run_child(cmd, progress=progress)
    wall = time.perf_counter() - start
    if code != 0:
        raise _child_error(spec, dataset, code, tail)
    path = Path(stdout.strip().splitlines()[-1])
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
    unread: Mapping[str, str] | None = None,
) -> list[ModelRun]:
    """Extract every model of ``models`` (config keys ``ids``, ``layer``, ``options``, ``python``) on ``dataset``.

    Returns one :class:`ModelRun` per model in ``ids`` order; a model in ``unread`` (model → why it reads none of the
    dataset's records) does not run and its run says why. With ``extraction.on_error == "skip"`` a failing model
    is reported (``error``) and the others go on; by default (``"raise"``) the first failure stops the run.
    """
    ids = list(models["ids"])
    pythons = dict(models.get("python") or {})
    envs = models.get("envs", "auto")
    specs = check_models(ids, pythons, envs=envs)
    interpreters = model_interpreters([m for m in ids if m not in (unread or {})], specs, pythons, envs=envs)
    layers = dict(models.get("layers") or {})
    all_options = dict(models.get("options") or {})
    jobs = max(1, int(extraction.get("jobs", 1)))
    on_error = extraction.get("on_error", "raise")
    if on_error not in ("raise", "skip"):
        raise ExtractionError(f"extraction.on_error must be 'raise' or 'skip', got {on_error!r}.")

    plans = []
    for m in ids:
        base, named = split_layer(m)
        if named is not None and m in layers:
            raise ExtractionError(f"model {m!r} names its layer in its id; drop models.layers.{m}.")
        layer = named or str(layers.get(m, models.get("layer", "last")))
        options = dict(all_options.get(m) or all_options.get(base) or {})
        python, env_versions = interpreters.get(m, (sys.executable, None))
        key = _key(specs[m], dataset, layer, options, extraction, env_versions)
        out_dir = Path(cache_dir) / "embeddings" / m
        plans.append((m, layer, options, key, out_dir, python))

    def cached(m: str, key: str, path: Path) -> ModelRun:
        sidecar = path.with_suffix(".json")
        return ModelRun(m, specs[m].family, key, path, True, read_json(sidecar) if sidecar.exists() else {})

    def run(plan: tuple) -> ModelRun:
        m, layer, options, key, out_dir, python = plan
        if m in (unread or {}):
            return ModelRun(m, specs[m].family, key, None, False, {}, unread=unread[m])
        path = out_dir / f"{key}.npz"
        if path.exists():
            return cached(m, key, path)

        def waiting(holder: str) -> None:
            print(f"[extraction] {m}: waiting for {holder}, extracting it into the same cache", file=sys.stderr)

        try:
            ensure_writable(out_dir, "set cache_dir= to a writable directory")
            with exclusive_lock(out_dir / f".{key}.extracting.lock", wait=True, on_wait=waiting, poll=beat):
                if path.exists():  # another run finished it while this one waited
                    return cached(m, key, path)
                info = _run_one(
                    specs[m],
                    dataset,
                    out_dir,
                    key,
                    layer=layer,
                    options=options,
                    python=python,
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
        try:
            return list(pool.map(run, plans))
        except BaseException:  # the worker threads wait on their children: end those before the pool joins them
            terminate_children()
            raise
