"""One extraction run: dataset → records → batches → chunks → the embedding file.

Order of work: read the dataset; apply the optional filters (seed 003: drop single-atom structures; drop
structures the model cannot embed); draw the seeded subsample of N; let the extractor ``prepare`` on the kept
records; then embed chunk by chunk. Each chunk (``chunk_size`` records, embedded in batches of ``batch_size``) is
written atomically to a work directory next to the output; a run that finds the work directory of the *same* run
(same model, dataset, options and record ids) resumes after its last finished chunk. A batch that raises is retried
one record at a time, so a failing structure becomes a failure record (id and reason) and never takes the others
with it. When every chunk is done the file is assembled, written to a temporary name and renamed into place, and
the work directory is removed.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import Embedded, Extractor
from extractors.datasets import Record, filter_records, load_dataset, subsample
from extractors.embedding_file import FORMAT, concat, ids_sha256, meta_json, read_npz, write_npz
from extractors.registry import build_extractor

__all__ = ["ExtractionStopped", "output_path", "run_extraction"]


class ExtractionStopped(RuntimeError):
    """Raised when ``max_chunks`` chunks were written and more remain; run again to resume."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "dataset"


def dataset_tag(dataset: str, n: int | None, seed: int) -> str:
    """File-name tag of a dataset spec (``default``, ``default-ood``, ``qm9-dsgdb9nsd``) plus ``-n<N>-s<seed>``."""
    kind, sep, rest = dataset.partition(":")
    if dataset.startswith("default"):
        tag = _slug(dataset)
    elif sep and "/" not in kind and "\\" not in kind:
        tag = f"{kind}-{_slug(Path(rest).stem)}"
    else:
        tag = _slug(Path(dataset).stem)
    return tag if n is None else f"{tag}-n{n}-s{seed}"


def output_path(
    out_dir: str | Path, model: str, dataset: str, layer: str, *, n: int | None = None, seed: int = 0
) -> Path:
    """``<out>/<model>__<dataset tag>__<layer>.npz`` — one file per (model, dataset, layer)."""
    return Path(out_dir) / f"{_slug(model)}__{dataset_tag(dataset, n, seed)}__{_slug(layer)}.npz"


# --------------------------------------------------------------------------------------------------- embedding
def _embed_isolated(extractor: Extractor, batch: Sequence[Record]) -> list[Embedded | str]:
    """Embed a batch; on an exception, embed each record alone so only the failing ones become failure strings."""
    try:
        out = extractor.embed(batch)
        if len(out) != len(batch):
            raise RuntimeError(f"extractor returned {len(out)} results for {len(batch)} records")
        return list(out)
    except Exception as err:
        if len(batch) == 1:
            return [f"{type(err).__name__}: {err}"]
        return [_embed_isolated(extractor, [r])[0] for r in batch]


def _validate(emb: Embedded, record: Record) -> str | None:
    if not np.all(np.isfinite(emb.features)):
        return "non-finite features"
    if emb.atom_features is not None:
        if emb.atom_features.shape[0] != record.n_atoms:
            return f"{emb.atom_features.shape[0]} atom feature rows for {record.n_atoms} atoms"
        if not np.all(np.isfinite(emb.atom_features)):
            return "non-finite atom features"
    if emb.energy is not None and not np.isfinite(emb.energy):
        return "non-finite energy"
    return None


def _embed_chunk(
    extractor: Extractor, records: Sequence[Record], batch_size: int, atom_features: bool, with_numbers: bool, bar: Any
) -> dict[str, Any]:
    rows: list[tuple[Record, Embedded]] = []
    failures: list[dict[str, str]] = []
    todo = []
    for r in records:
        reason = extractor.check(r)
        if reason is None:
            todo.append(r)
        else:
            failures.append({"id": r.id, "reason": reason})
            bar.update(1)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        for r, res in zip(batch, _embed_isolated(extractor, batch), strict=True):
            reason = res if isinstance(res, str) else _validate(res, r)
            if reason is None:
                rows.append((r, res))  # type: ignore[arg-type]
            else:
                failures.append({"id": r.id, "reason": reason})
        bar.update(len(batch))
    order = {r.id: i for i, r in enumerate(records)}
    failures.sort(key=lambda f: order[f["id"]])
    chunk: dict[str, Any] = {
        "features": np.stack([e.features for _, e in rows]).astype(np.float32)
        if rows
        else np.zeros((0, 0), np.float32),
        "structure_ids": np.array([r.id for r, _ in rows], dtype=str),
        "failures": json.dumps(failures),
    }
    if extractor.atomistic and atom_features:
        chunk["atom_features"] = (
            np.concatenate([e.atom_features for _, e in rows]).astype(np.float32)
            if rows
            else np.zeros((0, 0), np.float32)
        )
    if with_numbers:
        chunk["n_atoms"] = np.array([r.n_atoms for r, _ in rows], dtype=np.int64)
        chunk["numbers"] = (
            np.concatenate([r.atoms.numbers for r, _ in rows]).astype(np.int64) if rows else np.zeros(0, np.int64)
        )
    if extractor.has_energy:
        chunk["energy"] = np.array([e.energy for _, e in rows], dtype=np.float64)
    return chunk


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit="struct", file=sys.stderr, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------- run
@dataclasses.dataclass(frozen=True)
class _Plan:
    records: list[Record]
    dropped: list[dict[str, str]]


def _plan(
    extractor: Extractor,
    dataset: str,
    dataset_options: dict[str, Any],
    n: int | None,
    seed: int,
    drop_single_atoms: bool,
    drop_unsupported: bool,
    records: Sequence[Record] | None,
) -> _Plan:
    recs = list(records) if records is not None else load_dataset(dataset, **dataset_options)
    dropped: list[dict[str, str]] = []
    if drop_single_atoms:
        recs, dropped = filter_records(recs, min_atoms=2)
    if drop_unsupported:
        kept = []
        for r in recs:
            reason = extractor.check(r)
            (kept.append(r) if reason is None else dropped.append({"id": r.id, "reason": reason}))
        recs = kept
    return _Plan(subsample(recs, n, seed=seed), dropped)


def run_extraction(
    model: str,
    dataset: str,
    out_dir: str | Path,
    *,
    n: int | None = None,
    seed: int = 0,
    layer: str = "last",
    batch_size: int = 16,
    chunk_size: int = 256,
    options: dict[str, Any] | None = None,
    dataset_options: dict[str, Any] | None = None,
    drop_single_atoms: bool = False,
    drop_unsupported: bool = False,
    atom_features: bool = True,
    name: str | None = None,
    progress: bool = True,
    max_chunks: int | None = None,
    extractor: Extractor | None = None,
    records: Sequence[Record] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> Path:
    """Extract ``model`` on ``dataset`` into ``out_dir`` and return the path of the finished embedding file.

    ``n``/``seed``: seeded subsample; ``options``: passed to the model family's ``build`` (e.g. ``device``, SOAP
    ``species``); ``drop_single_atoms``/``drop_unsupported``: seed 003's filters, applied before subsampling (the
    dropped ids are listed in the metadata; without them unsupported structures become failure records);
    ``atom_features=False`` skips per-atom arrays. ``max_chunks`` stops (raising :class:`ExtractionStopped`)
    after that many newly written chunks; ``on_chunk(i)`` is called after chunk ``i`` is on disk. ``extractor`` and
    ``records`` let a caller reuse a loaded model or an in-memory dataset.

    The file's ``meta`` records: ``format``, ``model``, ``family``, ``model_config``, ``layer``, ``pooling``,
    ``dataset``, ``dataset_options``, ``n``, ``seed``, ``filters``, ``n_structures``, ``n_requested``,
    ``structure_ids_sha256`` (sha256 of the ordered ids in the file), ``requested_ids_sha256``, ``failures`` and
    ``dropped`` (``{"id", "reason"}`` lists), ``extractor_args``, ``model_info``, ``package_versions``, ``python``
    and ``created`` (UTC, when the run first started).
    """
    options = dict(options or {})
    dataset_options = dict(dataset_options or {})
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size ({batch_size}) and chunk_size ({chunk_size}) must be positive.")
    if extractor is None:
        extractor = build_extractor(model, layer=layer, **options)
    plan = _plan(extractor, dataset, dataset_options, n, seed, drop_single_atoms, drop_unsupported, records)
    recs = plan.records
    if not recs:
        raise ValueError(f"dataset {dataset!r} has no records left to embed (after filters and subsampling).")
    extractor.prepare(recs)
    with_numbers = all(r.atoms is not None for r in recs)

    out_dir = Path(out_dir)
    target = out_dir / f"{name}.npz" if name else output_path(out_dir, model, dataset, layer, n=n, seed=seed)
    work = target.with_name(f".{target.stem}.work")
    requested_sha = ids_sha256(r.id for r in recs)
    extractor_args = {
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "options": options,
        "atom_features": atom_features,
    }
    filters = {"drop_single_atoms": drop_single_atoms, "drop_unsupported": drop_unsupported}
    key = hashlib.sha256(
        meta_json(
            {
                "format": FORMAT,
                "model": model,
                "dataset": dataset,
                "dataset_options": dataset_options,
                "layer": layer,
                "n": n,
                "seed": seed,
                "filters": filters,
                "extractor_args": extractor_args,
                "requested_ids_sha256": requested_sha,
                "package_versions": extractor.package_versions(),
            }
        ).encode()
    ).hexdigest()
    state_file = work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    if state is None or state.get("key") != key:
        if work.exists():
            print(f"[extractors] discarding work dir of a different run: {work}", file=sys.stderr)
            shutil.rmtree(work)
        work.mkdir(parents=True)
        state = {"key": key, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        state_file.write_text(json.dumps(state))

    n_chunks = -(-len(recs) // chunk_size)
    chunk_files = [work / f"chunk_{i:06d}.npz" for i in range(n_chunks)]
    done = [f.exists() for f in chunk_files]
    initial = sum(min(chunk_size, len(recs) - i * chunk_size) for i in range(n_chunks) if done[i])
    if initial:
        print(f"[extractors] resuming {target.name}: {sum(done)}/{n_chunks} chunks done", file=sys.stderr)
    bar = _progress(len(recs), initial, model, progress)
    written = 0
    try:
        for i, f in enumerate(chunk_files):
            if done[i]:
                continue
            if max_chunks is not None and written >= max_chunks:
                raise ExtractionStopped(f"stopped after {written} chunk(s); {n_chunks - i} remain in {work}")
            part = recs[i * chunk_size : (i + 1) * chunk_size]
            write_npz(f, _embed_chunk(extractor, part, batch_size, atom_features, with_numbers, bar))
            written += 1
            if on_chunk is not None:
                on_chunk(i)
    finally:
        bar.close()

    chunks = [read_npz(f) for f in chunk_files]
    failures = [x for c in chunks for x in json.loads(str(c["failures"]))]
    ids = [str(s) for c in chunks for s in c["structure_ids"]]
    if not ids:
        raise RuntimeError(f"no structure of {dataset!r} could be embedded by {model}; first failures: {failures[:5]}")

    def cat(key: str, dtype: Any) -> np.ndarray:
        parts = [c[key] for c in chunks if len(c[key])]
        dim = parts[0].shape[1] if parts and parts[0].ndim == 2 else None
        return concat(parts, dim, dtype)

    arrays: dict[str, Any] = {"features": cat("features", np.float32)}
    if "atom_features" in chunks[0]:
        arrays["atom_features"] = cat("atom_features", np.float32)
    if "n_atoms" in chunks[0]:
        arrays["n_atoms"] = cat("n_atoms", np.int64)
        arrays["numbers"] = cat("numbers", np.int64)
    if "energy" in chunks[0]:
        arrays["energy"] = cat("energy", np.float64)
    arrays["structure_ids"] = np.array(ids, dtype=str)
    meta = {
        "format": FORMAT,
        "model": model,
        "family": extractor.spec.family,
        "model_config": extractor.spec.config,
        "layer": layer,
        "pooling": extractor.pooling,
        "dataset": dataset,
        "dataset_options": dataset_options,
        "n": n,
        "seed": seed,
        "filters": filters,
        "n_structures": len(ids),
        "n_requested": len(recs),
        "structure_ids_sha256": ids_sha256(ids),
        "requested_ids_sha256": requested_sha,
        "failures": failures,
        "dropped": plan.dropped,
        "extractor_args": extractor_args,
        "model_info": extractor.info(),
        "package_versions": extractor.package_versions(),
        "python": platform.python_version(),
        "created": state["created"],
    }
    arrays["meta"] = meta_json(meta)
    write_npz(target, arrays)
    shutil.rmtree(work)
    if failures:
        print(f"[extractors] {len(failures)} structure(s) failed; see meta['failures'] in {target}", file=sys.stderr)
    return target
