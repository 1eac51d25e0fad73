"""A journal of finished work units: one ``.npz`` per unit, written atomically, so long computations resume.

A sweep over row tiles (:mod:`jaxalign.sweep`) splits its passes into units (a range of rows of one pass, one
model's neighbour graph, ...) whose results are small arrays. Each finished unit is written to
``<root>/<unit>.npz`` through a temporary file in the same directory, ``fsync`` and ``os.replace`` (atomic on POSIX),
so a process killed at any instant (SIGKILL included) leaves either no file or the whole file. A rerun reads the
finished units back and computes only the others; two processes sharing one journal may compute the same unit, and
the last rename wins with identical content. Unit names carry the content key of everything the unit depends on, so
a stale unit is never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Journal", "atomic_write_bytes", "content_key", "read_npz", "write_npz"]

_UNIT_NAME = re.compile(r"^[A-Za-z0-9_.@=+-]+$")


def content_key(kind: str, payload: Mapping[str, Any]) -> str:
    """A 20-hex-digit key: sha256 of ``kind`` and the canonical JSON of ``payload`` (sorted keys, ``str`` fallback)."""
    canonical = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(f"{kind}\0{canonical}".encode()).hexdigest()[:20]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
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


def write_npz(path: str | Path, arrays: Mapping[str, Any]) -> Path:
    """Atomically write ``arrays`` (no pickle) to an uncompressed ``.npz``."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by :func:`write_npz` (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclasses.dataclass(frozen=True)
class Journal:
    """Finished units under ``root``: ``get`` a unit's arrays (None if not finished), ``put`` them once computed.

    Attributes:
      root: the directory (created on the first ``put``).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"`journal` {str(self.root)!r} exists and is not a directory; pass a directory path.")

    def path(self, unit: str) -> Path:
        if not _UNIT_NAME.match(unit):
            raise ValueError(f"unit name {unit!r} must match {_UNIT_NAME.pattern}")
        return self.root / f"{unit}.npz"

    def get(self, unit: str) -> dict[str, np.ndarray] | None:
        path = self.path(unit)
        return read_npz(path) if path.exists() else None

    def put(self, unit: str, arrays: Mapping[str, Any]) -> None:
        write_npz(self.path(unit), arrays)

    def units(self) -> list[str]:
        """Names of the finished units, sorted."""
        return sorted(p.stem for p in self.root.glob("*.npz")) if self.root.is_dir() else []
