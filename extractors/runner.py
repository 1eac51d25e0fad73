"""One extraction run: dataset → records → batches → chunks → the embedding file.

Order of work: read the dataset; apply the optional filters (seed 003: drop single-atom structures; drop
structures the model cannot embed); draw the seeded subsample of N; let the extractor ``prepare`` on the kept
records; then embed chunk by chunk. Each chunk (``chunk_size`` records, embedded in batches of ``batch_size``) is
written atomically to a work directory next to the output; a run that finds the work directory of the *same* run
(same model, dataset, options and record ids) resumes after its last finished chunk. A batch that raises is retried
one record at a time, so a failing structure becomes a failure record (id and reason) and never takes the others
with it; an extractor may also return the reason for a record it refuses (CHGNet's isolated atoms). When every chunk
is done the file is assembled, written to a temporary name and renamed into place, and the work directory is removed.

One process at a time writes a given file: the run holds a lock next to it (``.<name>.lock``) and a second run
stops with a "cache in use" error. Problems the user fixes are one-line errors (:class:`~extractors.faults.UsageError`),
found before the model loads where possible (device, output directory, dataset); such an error also removes the
work directory, while a crash or a kill leaves it for the next run to resume.
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
from extractors.datasets import DatasetRead, Record, filter_records, read_dataset, subsample
from extractors.embedding_file import FORMAT, concat, ids_sha256, meta_json, read_npz, write_npz
from extractors.faults import UsageError, check_device, ensure_writable, exclusive_lock, output_error
from extractors.registry import build_extractor

__all__ = ["ExtractionStopped", "NothingToEmbed", "output_path", "run_extraction"]


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
class NothingToEmbed(UsageError):
    """No structure of the dataset can be embedded: every one was dropped by the filters or failed in the model.
    ``detail`` is the message without its lead and fix (how many, and an example)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class _Job:
    """What identifies a run besides its records: the settings written to the file's ``meta`` and hashed into the
    work directory's key."""

    model: str
    dataset: str
    dataset_options: dict[str, Any]
    layer: str
    n: int | None
    seed: int
    filters: dict[str, bool]
    extractor_args: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Plan:
    records: list[Record]
    dropped: list[dict[str, str]]


def _read(
    dataset: str, dataset_options: dict[str, Any], records: Sequence[Record] | None, skip_bad_frames: bool
) -> DatasetRead:
    """The dataset's records (``records`` when given) and the unreadable frames skipped, reported on stderr."""
    if records is not None:
        return DatasetRead(list(records), [])
    read = read_dataset(dataset, skip_bad_frames=skip_bad_frames, **dataset_options)
    if read.skipped:
        first = read.skipped[0]
        more = f" and {len(read.skipped) - 1} more" if len(read.skipped) > 1 else ""
        print(
            f"[extractors] skipped {len(read.skipped)} unreadable frame(s) of {dataset}: frame {first.frame} "
            f"(line {first.line}){more}; listed in meta['dropped']",
            file=sys.stderr,
        )
    return read


def _plan(
    extractor: Extractor,
    read: DatasetRead,
    dataset: str,
    n: int | None,
    seed: int,
    drop_single_atoms: bool,
    drop_unsupported: bool,
) -> _Plan:
    recs = read.records
    dropped: list[dict[str, str]] = [b.as_record() for b in read.skipped]
    if drop_single_atoms:
        recs, gone = filter_records(recs, min_atoms=2)
        dropped += gone
    if drop_unsupported:
        kept = []
        for r in recs:
            reason = extractor.check(r)
            (kept.append(r) if reason is None else dropped.append({"id": r.id, "reason": reason}))
        recs = kept
    if not recs:
        example = f" (e.g. {dropped[0]['id']}: {dropped[0]['reason']})" if dropped else ""
        detail = f"all {len(dropped)} were dropped by the filters{example}"
        raise NothingToEmbed(
            f"no structure of {dataset} is left to embed by {extractor.spec.id}: {detail}; drop --drop-unsupported "
            "/ --drop-single-atoms or choose a dataset the model supports.",
            detail,
        )
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
    skip_bad_frames: bool = False,
    atom_features: bool = True,
    name: str | None = None,
    progress: bool = True,
    max_chunks: int | None = None,
    extractor: Extractor | None = None,
    records: Sequence[Record] | None = None,
    on_chunk: Callable[[int], None] | None = None,
    out_option: str = "--out",
) -> Path:
    """Extract ``model`` on ``dataset`` into ``out_dir`` and return the path of the finished embedding file.

    ``n``/``seed``: seeded subsample; ``options``: passed to the model family's ``build`` (e.g. ``device``, SOAP
    ``species``); ``drop_single_atoms``/``drop_unsupported``: seed 003's filters, applied before subsampling (the
    dropped ids are listed in the metadata; without them unsupported structures become failure records);
    ``skip_bad_frames``: leave out extended-XYZ frames ASE cannot parse (listed in ``dropped``) instead of stopping;
    ``atom_features=False`` skips per-atom arrays. ``max_chunks`` stops (raising :class:`ExtractionStopped`)
    after that many newly written chunks; ``on_chunk(i)`` is called after chunk ``i`` is on disk. ``extractor`` and
    ``records`` let a caller reuse a loaded model or an in-memory dataset.

    Problems the user fixes raise :class:`~extractors.faults.UsageError` (one line) before the model is loaded
    where possible: a device torch does not have, an output directory that cannot be written (``out_option`` names
    the setting to change in the message), an unreadable dataset; then no structure left to embed or none embedded
    (:class:`NothingToEmbed`), a full disk, and another process writing the same file (:class:`CacheBusy`: one
    lock per output file). Such an error removes the run's work directory; a crash or a kill keeps it to resume.

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
        check_device(options.get("device"))
    out_dir = Path(out_dir)
    fix = f"choose another {out_option}"
    ensure_writable(out_dir, fix)
    read = _read(dataset, dataset_options, records, skip_bad_frames)
    if extractor is None:
        extractor = build_extractor(model, layer=layer, **options)
    plan = _plan(extractor, read, dataset, n, seed, drop_single_atoms, drop_unsupported)
    target = out_dir / f"{name}.npz" if name else output_path(out_dir, model, dataset, layer, n=n, seed=seed)
    lock = target.with_name(f".{target.stem}.lock")

    def busy(holder: str) -> str:
        return f"{target} is being written by {holder} (cache in use, lock {lock.name}); wait for it or {fix}."

    job = _Job(
        model=model,
        dataset=dataset,
        dataset_options=dataset_options,
        layer=layer,
        n=n,
        seed=seed,
        filters={
            "drop_single_atoms": drop_single_atoms,
            "drop_unsupported": drop_unsupported,
            "skip_bad_frames": skip_bad_frames,
        },
        extractor_args={
            "batch_size": batch_size,
            "chunk_size": chunk_size,
            "options": options,
            "atom_features": atom_features,
        },
    )
    with exclusive_lock(lock, wait=False, busy=busy):
        for stale in out_dir.glob(f".{target.name}.tmp*"):  # left by a killed writer; the lock excludes live ones
            stale.unlink(missing_ok=True)
        work = target.with_name(f".{target.stem}.work")
        try:
            return _extract(extractor, plan, job, target, work, progress, max_chunks, on_chunk)
        except UsageError:
            shutil.rmtree(work, ignore_errors=True)
            raise
        except OSError as err:
            mapped = output_error(err, out_dir, fix)
            if mapped is None:
                raise
            shutil.rmtree(work, ignore_errors=True)
            raise mapped from None


def _extract(
    extractor: Extractor,
    plan: _Plan,
    job: _Job,
    target: Path,
    work: Path,
    progress: bool,
    max_chunks: int | None,
    on_chunk: Callable[[int], None] | None,
) -> Path:
    """The chunked, resumable embedding into ``work`` and the assembly of ``target`` (under the output's lock)."""
    recs = plan.records
    extractor.prepare(recs)
    with_numbers = all(r.atoms is not None for r in recs)
    requested_sha = ids_sha256(r.id for r in recs)
    batch_size, chunk_size = job.extractor_args["batch_size"], job.extractor_args["chunk_size"]
    atom_features = job.extractor_args["atom_features"]
    settings = {
        "format": FORMAT,
        "model": job.model,
        "dataset": job.dataset,
        "dataset_options": job.dataset_options,
        "layer": job.layer,
        "n": job.n,
        "seed": job.seed,
        "filters": job.filters,
        "extractor_args": job.extractor_args,
    }
    key = hashlib.sha256(
        meta_json(
            {**settings, "requested_ids_sha256": requested_sha, "package_versions": extractor.package_versions()}
        ).encode()
    ).hexdigest()
    state_file = work / "state.json"
    try:
        state = json.loads(state_file.read_text()) if state_file.exists() else None
    except (OSError, json.JSONDecodeError):
        state = None
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
    bar = _progress(len(recs), initial, job.model, progress)
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
        example = f" (e.g. {failures[0]['id']}: {failures[0]['reason']})" if failures else ""
        detail = f"all {len(failures)} failed{example}"
        raise NothingToEmbed(
            f"no structure of {job.dataset} could be embedded by {job.model}: {detail}; choose a model that "
            "supports these structures or a dataset this model supports.",
            detail,
        )

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
        **settings,
        "family": extractor.spec.family,
        "model_config": extractor.spec.config,
        "pooling": extractor.pooling,
        "n_structures": len(ids),
        "n_requested": len(recs),
        "structure_ids_sha256": ids_sha256(ids),
        "requested_ids_sha256": requested_sha,
        "failures": failures,
        "dropped": plan.dropped,
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
