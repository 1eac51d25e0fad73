"""Loading and validating embedding files (SPEC §12), and handing torch tensors to JAX.

An embedding file is the ``.npz`` that ``python -m extractors run`` writes for one (model, dataset, layer):
``features`` (N, d) float32, optional ``atom_features`` (A, d_atom) with ``n_atoms`` (N,) and ``numbers`` (A,),
optional ``energy`` (N,) float64, ``structure_ids`` (N,) and a JSON ``meta`` whose ``structure_ids_sha256`` is the
sha256 of the ordered ids (each UTF-8 encoded and followed by a newline). Row i of two embeddings describes the
same structure only if both files carry the same hash, so :func:`check_aligned` compares hashes before any metric
is computed and names the first row where the orders differ; :func:`intersect` keeps the structures common to all
files (e.g. after per-structure failures) in the first file's order.

Only numpy is needed to load; :func:`torch_to_jax` imports nothing from torch and uses DLPack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Embedding",
    "check_aligned",
    "intersect",
    "load_aligned",
    "load_embedding",
    "structure_ids_sha256",
    "torch_to_jax",
]

_FORMAT_PREFIX = "jaxalign-embedding/"
_REQUIRED = ("features", "structure_ids", "meta")


def structure_ids_sha256(ids: Iterable[str]) -> str:
    """sha256 hex digest of the ordered structure ids: each id UTF-8 encoded and followed by ``\\n``."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class Embedding:
    """A validated embedding file held in host memory (numpy arrays).

    ``features`` (N, d); ``structure_ids`` (N,) str; ``meta`` the decoded JSON; ``atom_features`` (A, d_atom),
    ``n_atoms`` (N,), ``numbers`` (A,) and ``energy`` (N,) when the file has them; ``path`` where it was read.
    """

    features: np.ndarray
    structure_ids: np.ndarray
    meta: Mapping[str, Any]
    atom_features: np.ndarray | None = None
    n_atoms: np.ndarray | None = None
    numbers: np.ndarray | None = None
    energy: np.ndarray | None = None
    path: Path | None = None

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def ids_sha256(self) -> str:
        return str(self.meta["structure_ids_sha256"])

    @property
    def name(self) -> str:
        """``model/layer on dataset`` (or the file name), for messages."""
        meta = self.meta
        label = f"{meta.get('model', '?')}/{meta.get('layer', '?')} on {meta.get('dataset', '?')}"
        return f"{self.path.name} ({label})" if self.path is not None else label

    def jax_features(self) -> jax.Array:
        """``features`` as a jax array."""
        return jnp.asarray(self.features)

    def atom_offsets(self) -> np.ndarray:
        """(N + 1,) offsets: the atoms of structure i are rows ``offsets[i]:offsets[i + 1]``."""
        if self.n_atoms is None:
            raise ValueError(f"{self.name} has no per-atom arrays (`n_atoms` is missing); the model is not atomistic.")
        return np.concatenate([[0], np.cumsum(self.n_atoms)])

    def compositions(self, max_z: int | None = None) -> np.ndarray:
        """(N, max_z + 1) element counts c_i[z] from ``numbers`` (the composition vectors of SPEC §11)."""
        if self.numbers is None or self.n_atoms is None:
            raise ValueError(f"{self.name} has no `numbers`; compositions need a dataset of 3D structures.")
        max_z = int(self.numbers.max()) if max_z is None else int(max_z)
        if self.numbers.size and int(self.numbers.max()) > max_z:
            raise ValueError(f"`max_z`={max_z} is below the largest atomic number {int(self.numbers.max())}.")
        owner = np.repeat(np.arange(self.n), self.n_atoms)
        counts = np.zeros((self.n, max_z + 1), dtype=np.int64)
        np.add.at(counts, (owner, self.numbers), 1)
        return counts

    def take(self, rows: Sequence[int] | np.ndarray) -> Embedding:
        """The embedding restricted to ``rows`` (in that order); the metadata hash is updated to match."""
        rows = np.asarray(rows, dtype=np.int64)
        ids = self.structure_ids[rows]
        meta = {**self.meta, "structure_ids_sha256": structure_ids_sha256(ids), "n_structures": len(rows)}
        kw: dict[str, Any] = {"features": self.features[rows], "structure_ids": ids, "meta": meta, "path": self.path}
        if self.energy is not None:
            kw["energy"] = self.energy[rows]
        if self.n_atoms is not None:
            offsets = self.atom_offsets()
            atom_rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in rows]) if len(rows) else []
            atom_rows = np.asarray(atom_rows, dtype=np.int64)
            kw["n_atoms"] = self.n_atoms[rows]
            if self.numbers is not None:
                kw["numbers"] = self.numbers[atom_rows]
            if self.atom_features is not None:
                kw["atom_features"] = self.atom_features[atom_rows]
        return Embedding(**kw)


def _corrupt(path: Path, err: BaseException) -> ValueError:
    return ValueError(
        f"embedding file {path} is truncated or corrupt ({type(err).__name__}: {err}); the extractor renames a file "
        "into place only when complete, so re-copy it or re-run the extraction."
    )


def _read(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k.removesuffix(".npy"): z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as err:
        raise _corrupt(path, err) from None


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"embedding file {path}: {what}. Re-run the extraction; the file does not follow SPEC §12.")


def _validate(path: Path, arrays: dict[str, np.ndarray]) -> Embedding:
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise _bad(path, f"missing array(s) {missing} (has {sorted(arrays)})")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as err:
        raise _bad(path, f"`meta` is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith(_FORMAT_PREFIX):
        raise _bad(path, f"`meta.format` should start with {_FORMAT_PREFIX!r}")
    x = arrays["features"]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0 or not np.issubdtype(x.dtype, np.floating):
        raise _bad(path, f"`features` must be a non-empty (N, d) float array, got shape {x.shape} dtype {x.dtype}")
    n = x.shape[0]
    ids = arrays["structure_ids"]
    if ids.shape != (n,) or ids.dtype.kind != "U":
        raise _bad(path, f"`structure_ids` must be ({n},) strings, got shape {ids.shape} dtype {ids.dtype}")
    if len(set(ids.tolist())) != n:
        raise _bad(path, "`structure_ids` has duplicates")
    digest = structure_ids_sha256(ids.tolist())
    if meta.get("structure_ids_sha256") != digest or meta.get("n_structures") != n:
        raise _bad(
            path,
            f"`meta` says {meta.get('n_structures')} structures with id hash {meta.get('structure_ids_sha256')}, "
            f"but the file holds {n} with hash {digest}",
        )
    if not np.isfinite(x).all():
        raise _bad(path, f"`features` has NaN or inf in {int((~np.isfinite(x)).any(axis=1).sum())} row(s)")
    kw: dict[str, Any] = {"features": x, "structure_ids": ids, "meta": meta, "path": path}
    if "energy" in arrays:
        e = arrays["energy"]
        if e.shape != (n,) or not np.isfinite(e).all():
            raise _bad(path, f"`energy` must be ({n},) finite values, got shape {e.shape}")
        kw["energy"] = e
    if "n_atoms" in arrays:
        counts = arrays["n_atoms"]
        if counts.shape != (n,) or counts.dtype.kind not in "iu" or (counts < 1).any():
            raise _bad(path, f"`n_atoms` must be ({n},) positive integers, got shape {counts.shape}")
        total = int(counts.sum())
        kw["n_atoms"] = counts
        for key in ("numbers", "atom_features"):
            if key in arrays and arrays[key].shape[0] != total:
                raise _bad(path, f"`{key}` has {arrays[key].shape[0]} rows but `n_atoms` sums to {total}")
        if "numbers" in arrays:
            z = arrays["numbers"]
            if z.ndim != 1 or z.dtype.kind not in "iu" or (z.size and (z.min() < 0 or z.max() > 118)):
                raise _bad(path, "`numbers` must be a 1-D array of atomic numbers")
            kw["numbers"] = z
        if "atom_features" in arrays:
            a = arrays["atom_features"]
            if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
                raise _bad(path, f"`atom_features` must be a finite (A, d) float array, got shape {a.shape}")
            kw["atom_features"] = a
    elif "atom_features" in arrays or "numbers" in arrays:
        raise _bad(path, "per-atom arrays without `n_atoms`")
    return Embedding(**kw)


def load_embedding(path: str | Path) -> Embedding:
    """Read and validate one embedding file.

    Raises ValueError for a missing, truncated or corrupt file, a missing array, shapes that disagree, NaN/inf
    values, duplicate ids, or ids whose hash does not match ``meta.structure_ids_sha256``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"embedding file {path} does not exist; run `python -m extractors run ...` to create it.")
    return _validate(path, _read(path))


def check_aligned(*embeddings: Embedding) -> None:
    """All embeddings must list the same structures in the same order (equal structure-id hashes).

    The error names both files and the first differing row; :func:`intersect` restricts them to common ids.
    """
    if len(embeddings) < 2:
        return
    ref = embeddings[0]
    for other in embeddings[1:]:
        if other.ids_sha256 == ref.ids_sha256:
            continue
        a, b = ref.structure_ids, other.structure_ids
        m = min(len(a), len(b))
        diff = np.nonzero(a[:m] != b[:m])[0]
        where = (
            f"first difference at row {int(diff[0])}: {str(a[diff[0]])!r} vs {str(b[diff[0]])!r}"
            if diff.size
            else f"one is a prefix of the other ({len(a)} vs {len(b)} rows)"
        )
        raise ValueError(
            f"structure order mismatch: {ref.name} and {other.name} do not list the same structures in the same "
            f"order ({where}); rows must describe the same samples. Use jaxalign.io.intersect(...) to keep the "
            "common structures, or extract both from the same dataset, N and seed."
        )


def load_aligned(*paths: str | Path) -> tuple[Embedding, ...]:
    """Load several files and check that their structure ids agree (see :func:`check_aligned`)."""
    embeddings = tuple(load_embedding(p) for p in paths)
    check_aligned(*embeddings)
    return embeddings


def intersect(*embeddings: Embedding) -> tuple[Embedding, ...]:
    """Restrict every embedding to the structures present in all of them, in the first one's order."""
    if not embeddings:
        return ()
    common = set(embeddings[0].structure_ids.tolist())
    for e in embeddings[1:]:
        common &= set(e.structure_ids.tolist())
    order = [i for i in embeddings[0].structure_ids.tolist() if i in common]
    if not order:
        raise ValueError("the embeddings share no structure id; they come from different datasets.")
    out = []
    for e in embeddings:
        index = {s: k for k, s in enumerate(e.structure_ids.tolist())}
        out.append(e.take([index[s] for s in order]))
    return tuple(out)


def torch_to_jax(tensor: Any, *, copy: bool = False) -> jax.Array:
    """A torch tensor as a jax array through DLPack (zero-copy on the same device).

    The tensor is detached and made contiguous first. Without ``copy`` the jax array may share the tensor's
    memory: do not modify the tensor in place afterwards (JAX assumes immutable buffers), or pass ``copy=True``.
    """
    if not hasattr(tensor, "__dlpack__") or not hasattr(tensor, "detach"):
        raise ValueError(f"`tensor` must be a torch.Tensor, got {type(tensor).__name__}; use jnp.asarray for arrays.")
    t = tensor.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    t = t.contiguous()
    if copy:
        t = t.clone()
    return jnp.from_dlpack(t)
