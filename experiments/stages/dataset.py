"""Stage 1 — the dataset: read, filter, draw the seeded subsample of N, pickle the records, summarise.

The records are drawn once per (dataset, filters, N, seed) and shared by every model's extraction process, so all
embeddings describe the same structures in the same order. Readers are those of :mod:`extractors.datasets` (``default``,
``proteins``, ``extxyz``, ``asedb``, ``qm9``, ``pdb``, ``smiles``); a directory given for ``extxyz`` or ``asedb`` is
read file by file (OMat24, OMol25 and sAlex ship as directories of ``.aselmdb`` shards). The cache key holds the
dataset's description, the path's size and modification time (so a changed file is re-read), the filters, N, the seed
and the reader's package versions. An extended XYZ frame ASE cannot parse stops the run with one line naming the file,
frame and line, unless ``dataset.skip_bad_frames=true``: then it is left out, counted among the dropped records and
listed in the summary (``skipped_frames``).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cache import atomic_write_bytes, content_key, read_json, write_json
from experiments.watchdog import beat

__all__ = [
    "FORMATS",
    "DatasetError",
    "DatasetStage",
    "prepare_dataset",
    "read_dataset_files",
    "read_records",
    "records_digest",
]

FORMATS = ("default", "proteins", "extxyz", "asedb", "qm9", "pdb", "smiles")
#: Formats read from data shipped with the installed packages (no ``path``): ASE's collections, MDAnalysisTests'
#: protein structures.
EMBEDDED = ("default", "proteins")
#: Packages whose versions decide what a format reads (part of the dataset's cache key).
_READER_PACKAGES = {"pdb": ("biopython",), "proteins": ("biopython", "MDAnalysisTests")}
_DIR_PATTERNS = {"extxyz": ("*.xyz", "*.extxyz"), "asedb": ("*.aselmdb", "*.db", "*.json")}


class DatasetError(ValueError):
    """The dataset cannot be read or selects no structure; the message says which setting to change."""


@dataclasses.dataclass(frozen=True)
class DatasetStage:
    """The drawn dataset: ``key`` (content key), ``records_path`` (pickled records), ``summary`` (JSON-able)."""

    key: str
    records_path: Path
    summary: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.summary["label"])

    def records(self) -> list[Any]:
        with open(self.records_path, "rb") as fh:
            return pickle.load(fh)


# --------------------------------------------------------------------------------------------------- reading
def _path(cfg: Mapping[str, Any]) -> Path:
    name, fmt = cfg.get("name"), cfg.get("format")
    raw = cfg.get("path")
    if raw in (None, "", "???"):
        raise DatasetError(
            f"dataset {name!r} (format {fmt!r}) needs a path: add `dataset.path=/path/to/data` to the command line, "
            "e.g. `python experiments/run.py +dataset=omat24 dataset.path=DIR`."
        )
    path = Path(str(raw)).expanduser().resolve()
    if not path.exists():
        raise DatasetError(f"dataset {name!r}: path {path} does not exist; check `dataset.path`.")
    return path


def _files(path: Path, fmt: str) -> list[Path]:
    if path.is_dir() and fmt in _DIR_PATTERNS:
        files = sorted({f for pat in _DIR_PATTERNS[fmt] for f in path.glob(pat) if f.is_file()})
        if not files:
            raise DatasetError(f"directory {path} holds no {' / '.join(_DIR_PATTERNS[fmt])} file for format {fmt!r}.")
        return files
    return [path]


def _stat(path: Path, fmt: str) -> list[list[Any]]:
    """(name, size, mtime) of the dataset's files: part of the cache key, so edited data is re-read."""
    if fmt in EMBEDDED:
        return []
    path = _path({"path": str(path)})
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith("-lock"))
    else:
        files = [path]
    return [
        [str(f.relative_to(path)) if path.is_dir() else f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files
    ]


def read_records(cfg: Mapping[str, Any]) -> list[Any]:
    """All records of the dataset described by ``cfg`` (keys ``name``, ``format``, ``path``, ``split``,
    ``options``, ``skip_bad_frames``), in the reader's order."""
    return read_dataset_files(cfg)[0]


def read_dataset_files(cfg: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """:func:`read_records` and the unreadable extended-XYZ frames it skipped (``skip_bad_frames``; without it
    the first one is a one-line error naming the file, frame and line)."""
    from extractors.datasets import read_dataset

    fmt = cfg.get("format", "default")
    if fmt not in FORMATS:
        raise DatasetError(f"dataset.format must be one of {FORMATS}, got {fmt!r}.")
    options = dict(cfg.get("options") or {})
    if fmt == "default":
        split = cfg.get("split")
        return read_dataset("default" if not split else f"default:{split}", **options).records, []
    if fmt == "proteins":
        return read_dataset("proteins", **options).records, []
    path = _path(cfg)
    records: list[Any] = []
    skipped: list[Any] = []
    for f in _files(path, fmt):
        read = read_dataset(f"{fmt}:{f}", skip_bad_frames=bool(cfg.get("skip_bad_frames", False)), **options)
        records.extend(read.records)
        skipped.extend(read.skipped)
        beat()
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in collections.Counter(ids).items() if c > 1)
        raise DatasetError(f"dataset {cfg.get('name')!r}: record id {dup!r} occurs more than once across files.")
    return records, skipped


# --------------------------------------------------------------------------------------------------- filters
def _element_numbers(elements: Sequence[Any] | None) -> set[int] | None:
    if elements is None:
        return None
    from ase.data import atomic_numbers

    out = set()
    for e in elements:
        if isinstance(e, str):
            if e not in atomic_numbers:
                raise DatasetError(f"dataset.filters.elements: unknown element symbol {e!r}.")
            out.add(atomic_numbers[e])
        else:
            out.add(int(e))
    return out


def apply_filters(records: Sequence[Any], filters: Mapping[str, Any]) -> tuple[list[Any], dict[str, int]]:
    """Keep records passing ``filters`` (``min_atoms``, ``max_atoms``, ``elements``, ``require_energy``);
    returns the kept records and the count of dropped records per reason."""
    min_atoms = int(filters.get("min_atoms") or 0)
    max_atoms = filters.get("max_atoms")
    allowed = _element_numbers(filters.get("elements"))
    need_energy = bool(filters.get("require_energy", False))
    kept, dropped = [], collections.Counter()
    for r in records:
        atoms = r.atoms
        if atoms is not None and len(atoms) < min_atoms:
            dropped[f"fewer than {min_atoms} atoms"] += 1
        elif atoms is not None and max_atoms is not None and len(atoms) > int(max_atoms):
            dropped[f"more than {max_atoms} atoms"] += 1
        elif atoms is not None and allowed is not None and not set(int(z) for z in atoms.numbers) <= allowed:
            dropped["element outside filters.elements"] += 1
        elif need_energy and r.energy is None:
            dropped["no reference energy"] += 1
        else:
            kept.append(r)
    return kept, dict(dropped)


# --------------------------------------------------------------------------------------------------- digest, summary
def records_digest(records: Sequence[Any]) -> str:
    """sha256 of the records' content (ids, atomic numbers, positions, cells, SMILES, sequences, energies)."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.id.encode() + b"\0")
        if r.atoms is not None:
            h.update(np.ascontiguousarray(r.atoms.numbers, dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(r.atoms.positions, dtype=np.float64).tobytes())
            h.update(np.ascontiguousarray(r.atoms.cell[:], dtype=np.float64).tobytes())
            h.update(np.asarray(r.atoms.pbc, dtype=np.int8).tobytes())
        for text in (r.smiles, r.sequence):
            h.update(b"\1" + (text or "").encode())
        h.update(repr(r.energy).encode())
    return h.hexdigest()


def _summary(label: str, cfg: Mapping[str, Any], n_read: int, dropped: dict[str, int], recs: Sequence[Any]) -> dict:
    with_atoms = [r for r in recs if r.atoms is not None]
    n_atoms = np.array([len(r.atoms) for r in with_atoms], dtype=np.int64)
    elements: collections.Counter[str] = collections.Counter()
    for r in with_atoms:
        elements.update(set(r.atoms.get_chemical_symbols()))
    periodic = sum(bool(r.atoms.pbc.any()) for r in with_atoms)
    energies = [r.energy for r in recs if r.energy is not None]
    rows = [
        {
            "id": r.id,
            "formula": r.atoms.get_chemical_formula() if r.atoms is not None else "",
            "n_atoms": r.n_atoms,
            "periodic": bool(r.atoms.pbc.any()) if r.atoms is not None else False,
            "split": r.split or "",
            "group": r.id.split("/")[0] if "/" in r.id else (r.split or ""),
            "energy": r.energy,
        }
        for r in recs
    ]
    return {
        "label": label,
        "name": cfg.get("name"),
        "format": cfg.get("format"),
        "path": None if cfg.get("format") in EMBEDDED else str(_path(cfg)),
        "n": cfg.get("n"),
        "seed": cfg.get("seed"),
        "filters": dict(cfg.get("filters") or {}),
        "n_read": n_read,
        "dropped": dropped,
        "n_selected": len(recs),
        "n_with_atoms": len(with_atoms),
        "n_periodic": periodic,
        "n_molecules": len(with_atoms) - periodic,
        "atoms_total": int(n_atoms.sum()) if n_atoms.size else 0,
        "atoms_min": int(n_atoms.min()) if n_atoms.size else 0,
        "atoms_median": float(np.median(n_atoms)) if n_atoms.size else 0.0,
        "atoms_max": int(n_atoms.max()) if n_atoms.size else 0,
        "elements": dict(sorted(elements.items(), key=lambda kv: -kv[1])),
        "n_with_energy": len(energies),
        "splits": dict(collections.Counter(r.split for r in recs if r.split)),
        "records": rows,
    }


# --------------------------------------------------------------------------------------------------- stage
def prepare_dataset(cfg: Mapping[str, Any], cache_dir: str | Path) -> tuple[DatasetStage, bool]:
    """Draw the dataset described by ``cfg`` (cached); returns the stage result and whether it was cached."""
    from extractors.base import versions
    from extractors.datasets import BACKBONE_ATOMS, Record

    cfg = dict(cfg)
    fmt = cfg.get("format", "default")
    if fmt not in FORMATS:
        raise DatasetError(f"dataset.format must be one of {FORMATS}, got {fmt!r}.")
    n = cfg.get("n")
    if n is not None and (isinstance(n, bool) or int(n) < 4):
        raise DatasetError(f"dataset.n={n!r}: the metrics need at least 4 structures (or null for all).")
    filters = dict(cfg.get("filters") or {})
    path = None if fmt in EMBEDDED else str(_path(cfg))
    key = content_key(
        "dataset",
        {
            "name": cfg.get("name"),
            "format": fmt,
            "path": path,
            "files": _stat(Path(path), fmt) if path else [],
            "split": cfg.get("split"),
            "options": dict(cfg.get("options") or {}),
            "skip_bad_frames": bool(cfg.get("skip_bad_frames", False)),
            "filters": filters,
            "n": n,
            "seed": int(cfg.get("seed", 0)),
            "versions": versions(("ase", "ase-db-backends", *_READER_PACKAGES.get(fmt, ()))),
            "record": [[f.name for f in dataclasses.fields(Record)], BACKBONE_ATOMS],  # the pickle's layout
        },
    )
    label = f"{cfg.get('name')}-n{n if n is not None else 'all'}-s{int(cfg.get('seed', 0))}"
    root = Path(cache_dir) / "datasets" / f"{label}-{key}"
    records_path, summary_path = root / "records.pkl", root / "summary.json"
    if records_path.exists() and summary_path.exists():
        return DatasetStage(key, records_path, read_json(summary_path)), True

    from extractors.datasets import subsample

    records, skipped = read_dataset_files(cfg)
    if not records:
        raise DatasetError(f"dataset {cfg.get('name')!r} is empty: the reader found no record at {path}.")
    if skipped:
        print(
            f"[dataset] skipped {len(skipped)} unreadable frame(s) (dataset.skip_bad_frames), e.g. "
            f"{skipped[0].describe()}; listed in the report's dataset summary",
            file=sys.stderr,
        )
    kept, dropped = apply_filters(records, filters)
    if not kept:
        raise DatasetError(
            f"dataset {cfg.get('name')!r}: all {len(records)} records were removed by dataset.filters={filters} "
            f"(dropped: {dropped}); relax the filters."
        )
    chosen = subsample(kept, None if n is None else int(n), seed=int(cfg.get("seed", 0)))
    if skipped:
        dropped = {"unreadable frame (dataset.skip_bad_frames)": len(skipped), **dropped}
    summary = _summary(label, cfg, len(records), dropped, chosen)
    summary["skipped_frames"] = [b.as_record() for b in skipped]
    summary["digest"] = records_digest(chosen)
    atomic_write_bytes(records_path, pickle.dumps(chosen, protocol=4))
    write_json(summary_path, summary)
    return DatasetStage(key, records_path, summary), False
