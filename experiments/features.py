"""From embedding files to aligned feature matrices: coverage, common structures, preprocessing, compaction.

Every model embeds the same drawn structures, but some fail on some of them (SMILES models on crystals, SevenNet
on polonium). A model that embeds fewer than ``min_coverage`` of the structures is left out of the comparison
(listed in the report); the others are restricted to the structures they all embedded, in dataset order.

:func:`compact` rewrites a feature matrix X (N × d) as [X V, 0] (N × W), V an orthonormal basis of X's row space:
every inner product x_i·x_j and distance ‖x_i − x_j‖ is unchanged, so every metric here (kernels, kNN graphs,
distance correlation, information imbalance, intrinsic dimension, linear reconstruction errors) gives the same
value, but all models share one shape and each jit-compiled metric compiles once instead of once per pair of
feature dimensions (on a small machine compilation otherwise dominates). Identical rows stay bitwise identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Aligned", "align_models", "compact", "compact_width", "preprocess"]

#: Largest N for which features are compacted to one shared width (the work per pair then grows like N·W²).
COMPACT_MAX_N = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class Aligned:
    """The models compared and their embeddings restricted to their common structures.

    ``models`` (ids, in configuration order), ``families``, ``keys`` (extraction content keys), ``embeddings``
    (model → :class:`jaxalign.io.Embedding` on the common structures), ``ids`` (the common structure ids),
    ``excluded`` (model → why it was left out), ``coverage`` (model → fraction of drawn structures embedded).
    """

    models: list[str]
    families: list[str]
    keys: list[str]
    embeddings: dict[str, Any]
    ids: np.ndarray
    excluded: dict[str, str]
    coverage: dict[str, float]

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    def family(self, model: str) -> str:
        return self.families[self.models.index(model)]


def align_models(runs: Sequence[Any], n_drawn: int, *, min_coverage: float, min_structures: int = 10) -> Aligned:
    """Load the embedding files of ``runs`` (:class:`experiments.stages.extraction.ModelRun`), drop models below
    ``min_coverage`` and restrict the rest to their common structures."""
    from jaxalign.io import intersect, load_embedding

    excluded: dict[str, str] = {}
    coverage: dict[str, float] = {}
    kept = []
    for run in runs:
        if run.unread is not None:
            excluded[run.model] = f"not run on this dataset: {run.unread}"
            continue
        if run.path is None:
            excluded[run.model] = f"extraction failed: {run.error}"
            continue
        emb = load_embedding(run.path)
        coverage[run.model] = emb.n / n_drawn
        if emb.n / n_drawn < min_coverage:
            excluded[run.model] = (
                f"embedded {emb.n} of {n_drawn} structures ({emb.n / n_drawn:.0%} < analysis.min_coverage="
                f"{min_coverage:g})"
            )
            continue
        kept.append((run, emb))
    if len(kept) < 2:
        raise ValueError(
            f"fewer than two models left to compare (excluded: {excluded or 'none'}); add models or lower "
            "analysis.min_coverage."
        )
    embeddings = intersect(*(e for _, e in kept))
    ids = embeddings[0].structure_ids
    if len(ids) < min_structures:
        worst = sorted(coverage.items(), key=lambda kv: kv[1])[:3]
        raise ValueError(
            f"the models share only {len(ids)} structures (need ≥ {min_structures}); lowest coverage: {worst}. "
            "Drop those models, raise analysis.min_coverage, or raise dataset.n."
        )
    return Aligned(
        models=[r.model for r, _ in kept],
        families=[r.family for r, _ in kept],
        keys=[r.key for r, _ in kept],
        embeddings={r.model: e for (r, _), e in zip(kept, embeddings, strict=True)},
        ids=ids,
        excluded=excluded,
        coverage=coverage,
    )


def _preprocessor(step: Any) -> Callable[[Any], Any]:
    from jaxalign import preprocessing

    if isinstance(step, str):
        name, kwargs = step, {}
    elif isinstance(step, Mapping) and len(step) == 1:
        name, kwargs = next(iter(step.items()))
        kwargs = dict(kwargs or {})
    else:
        raise ValueError(f"analysis.preprocessing entries are names or {{name: {{arg: value}}}}, got {step!r}.")
    allowed = ("l2_normalize", "clamp_quantile", "max_normalize", "center_scale_total_variance")
    if name not in allowed:
        raise ValueError(f"unknown preprocessing step {name!r}; choose from {allowed}.")
    fn = getattr(preprocessing, name)
    return lambda x: fn(x, **kwargs)


def preprocess(x: np.ndarray, steps: Sequence[Any]) -> np.ndarray:
    """Apply the ``analysis.preprocessing`` steps (jaxalign.preprocessing functions) in order; float32 out."""
    out: Any = np.asarray(x, dtype=np.float32)
    for step in steps:
        out = _preprocessor(step)(out)
    return np.asarray(out, dtype=np.float32)


def compact_width(n: int, dims: Sequence[int]) -> int | None:
    """The shared width W = min(N, max d) when N ≤ :data:`COMPACT_MAX_N`, else None (no compaction)."""
    return min(n, max(dims)) if n <= COMPACT_MAX_N else None


def compact(x: np.ndarray, width: int | None) -> np.ndarray:
    """[X V, 0] with V an orthonormal basis of X's row space, zero-padded to ``width`` columns (float32).

    Inner products and distances between rows are preserved to float32 rounding; identical rows stay identical
    (computed once from the distinct rows). ``width=None`` returns X unchanged.
    """
    x = np.asarray(x, dtype=np.float32)
    if width is None:
        return x
    unique, inverse = np.unique(x, axis=0, return_inverse=True)
    u64 = unique.astype(np.float64)
    if unique.shape[1] <= width:
        rotated = u64
    else:
        _, s, vt = np.linalg.svd(u64, full_matrices=False)
        rank = int((s > s[0] * max(u64.shape) * np.finfo(np.float64).eps).sum()) if s.size and s[0] > 0 else 0
        if rank > width:
            raise ValueError(f"rank {rank} exceeds the compaction width {width}")
        rotated = u64 @ vt[:rank].T
    out = np.zeros((unique.shape[0], width), dtype=np.float64)
    out[:, : rotated.shape[1]] = rotated
    return out.astype(np.float32)[np.asarray(inverse).reshape(-1)]
