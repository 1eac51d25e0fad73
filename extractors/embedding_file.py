"""Writing the embedding file of SPEC §12 and its chunks.

The file is an uncompressed ``.npz`` written by :func:`write_npz`: arrays are stored in a fixed order with a fixed
zip timestamp, to a temporary name in the target directory that is fsync'ed and then renamed into place, so a
reader never sees a half file and the same content always gives the same bytes (a resumed extraction produces a
file identical to an uninterrupted one). Arrays (N structures, A atoms in total):

- ``features`` (N, d) float32, pooled per structure;
- ``atom_features`` (A, d_atom) float32 and ``n_atoms`` (N,) int64 — atomistic models;
- ``numbers`` (A,) int64 and ``n_atoms`` — whenever every structure has atoms (compositions);
- ``energy`` (N,) float64 — the model's own prediction, eV;
- ``structure_ids`` (N,) unicode;
- ``meta`` 0-d unicode, a JSON object (see :func:`extractors.runner.run_extraction`).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "ids_sha256", "read_npz", "write_npz"]

FORMAT = "jaxalign-embedding/1"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def ids_sha256(ids: Iterable[str]) -> str:
    """sha256 hex digest of the ordered structure ids: each id UTF-8 encoded and followed by a newline."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, str):
        return np.array(value)
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError("object arrays are not allowed in an embedding file (they would need pickle)")
    return arr


def write_npz(path: str | Path, arrays: Mapping[str, Any]) -> Path:
    """Write ``arrays`` to ``path`` atomically and deterministically (temporary name, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, value in arrays.items():
                    info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
                    info.external_attr = 0o644 << 16
                    with zf.open(info, "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, _as_array(value), allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None:  # a failed write or fsync names no file: name the target (e.g. "disk full")
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` written by :func:`write_npz` (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def concat(parts: Sequence[np.ndarray], dim: int | None, dtype: Any) -> np.ndarray:
    """Concatenate along axis 0; an empty list gives an empty (0,) or (0, dim) array of ``dtype``."""
    if parts:
        return np.concatenate(parts).astype(dtype, copy=False)
    return np.zeros((0,) if dim is None else (0, dim), dtype=dtype)


def meta_json(meta: Mapping[str, Any]) -> str:
    """Canonical JSON (sorted keys) so identical metadata gives identical bytes."""
    return json.dumps(meta, sort_keys=True, default=str)
