"""What every analysis stage shares: the :class:`Context` (aligned models, the ``analysis`` config, the cache
directory, checkpointed item runs) and the keys that make cached results reusable only by the same code and data.

Every analysis stage is cached under a content key made of the compared models' extraction keys, the common
structure ids, the preprocessing, the library versions, the analysis code's digest and the stage's own section of
``analysis``; its items are checkpointed as they finish, so a killed run resumes after the last saved item and a
rerun reads the finished result.

Matrix conventions: entry [i, j] is metric(model i, model j); for the asymmetric measures the row is the source:
information imbalance [i, j] = Δ(i → j), reconstruction errors [i, j] = error of reconstructing j from i.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cache import Checkpoint, content_key, read_json, write_json
from experiments.features import Aligned, compact, compact_width, preprocess
from experiments.watchdog import beat

__all__ = ["Context", "InjectedFailure", "code_digest", "pair_matrix", "progress_bar", "seeded_rows"]


class InjectedFailure(RuntimeError):
    """Raised by ``debug.fail_after_items`` (tests kill a run mid-stage this way)."""


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("jax", "jaxlib", "numpy", "jaxalign"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@functools.cache
def code_digest() -> str:
    """sha256 of the analysis code (jaxalign without its plots, and this package's analysis modules): part of every
    analysis key, so results computed by older code are never reused."""
    import hashlib

    root = Path(__file__).resolve().parents[2]
    files = [p for p in (root / "jaxalign").rglob("*.py") if "plots" not in p.parts]
    stages = ("context", "graphs", "matrices", "significance", "intrinsic_dimension", "id_correlation")
    later = ("reconstruction", "energy", "maps", "cross_dataset")
    files += [root / "experiments" / "stages" / f"{name}.py" for name in (*stages, *later)]
    files.append(root / "experiments" / "features.py")
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def seeded_rows(n: int, cap: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subsample of at most ``cap`` of ``n`` rows (all of them when ``n <= cap`` or ``cap``
    is None): how every stage that works on a subsample draws it."""
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(cap), replace=False))


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False
    )


@dataclasses.dataclass
class Context:
    """What every analysis stage needs: the aligned models, the ``analysis`` config, where to cache, and the
    failure-injection counter."""

    aligned: Aligned
    cfg: Mapping[str, Any]
    root: Path
    progress: bool = True
    fail_after: int | None = None
    computed: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.base = {
            "models": list(zip(self.aligned.models, self.aligned.keys, strict=True)),
            "ids": _ids_digest(self.aligned.ids),
            "preprocessing": list(self.cfg.get("preprocessing") or []),
            "versions": _versions(),
            "code": code_digest(),
        }
        self._features: dict[str, np.ndarray] = {}
        self._compact: dict[str, np.ndarray] = {}

    @property
    def models(self) -> list[str]:
        return self.aligned.models

    @property
    def n(self) -> int:
        return self.aligned.n

    def key(self, stage: str, params: Any) -> str:
        return content_key(stage, {"base": self.base, "params": params})

    def tick(self) -> None:
        self.computed += 1
        if self.fail_after is not None and self.computed >= self.fail_after:
            raise InjectedFailure(f"debug.fail_after_items={self.fail_after}: stopping after {self.computed} items")

    # -- features ------------------------------------------------------------------------------------------------
    def features(self, model: str) -> np.ndarray:
        """Pooled features after ``analysis.preprocessing`` (float32)."""
        if model not in self._features:
            emb = self.aligned.embeddings[model]
            self._features[model] = preprocess(emb.features, self.cfg.get("preprocessing") or [])
        return self._features[model]

    def compact_features(self, model: str) -> np.ndarray:
        """:meth:`features` compacted to the width shared by every model (see :func:`experiments.features.compact`)."""
        if model not in self._compact:
            dims = [self.aligned.embeddings[m].features.shape[1] for m in self.models]
            self._compact[model] = compact(self.features(model), compact_width(self.n, dims))
        return self._compact[model]

    # -- item runner ---------------------------------------------------------------------------------------------
    def run_items(
        self,
        name: str,
        key: str,
        items: Sequence[tuple[str, Callable[[], Any]]],
        entry: dict[str, Any],
    ) -> dict[str, Any]:
        """Compute each ``(item, thunk)`` not yet saved under ``key``; returns item → value. The finished result is
        written to ``<root>/<name>-<key>.json`` and a rerun reads it back."""
        final = self.root / f"{name}-{key}.json"
        if final.exists():
            entry["cached"] += len(items)
            return read_json(final)["values"]
        partial = self.root / f"{name}-{key}.partial.json"
        with Checkpoint(partial, key) as ck:
            done = sum(item in ck for item, _ in items)
            bar = progress_bar(len(items), done, name, self.progress)
            try:
                for item, thunk in items:
                    if item in ck:
                        entry["cached"] += 1
                        continue
                    ck.put(item, _plain(thunk()))
                    entry["computed"] += 1
                    bar.update(1)
                    beat()
                    self.tick()
            finally:
                bar.close()
            values = {item: ck.get(item) for item, _ in items}
        write_json(final, {"key": key, "values": values})
        partial.unlink(missing_ok=True)
        return values


def _ids_digest(ids: np.ndarray) -> str:
    from jaxalign.io import structure_ids_sha256

    return structure_ids_sha256(ids.tolist())


def _plain(value: Any) -> Any:
    """jax/numpy scalars and arrays → JSON-able floats and lists (NaN stays NaN)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    arr = np.asarray(value)
    if arr.ndim == 0:
        return float(arr) if arr.dtype.kind == "f" else arr.item()
    return arr.astype(float).tolist() if arr.dtype.kind == "f" else arr.tolist()


def pair_matrix(
    values: Mapping[str, Any], names: Sequence[str], field: str, *, symmetric: bool, prefix: str = ""
) -> np.ndarray:
    """(M, M) matrix of ``values[f"{prefix}{a}|{b}"][field]`` (NaN where an item is missing)."""
    m = len(names)
    out = np.full((m, m), np.nan)
    for i in range(m):
        for j in range(m):
            item = f"{prefix}{names[i]}|{names[j]}"
            if item in values:
                out[i, j] = values[item][field] if field else values[item]
                if symmetric:
                    out[j, i] = out[i, j]
    return out
