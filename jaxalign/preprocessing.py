"""Composable preprocessing of (N, d) embeddings (SPEC §1). Each is a pure function of the array."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxalign._checks import as_features, is_concrete

__all__ = ["center_scale_total_variance", "clamp_quantile", "l2_normalize", "max_normalize", "mean_pool"]


def l2_normalize(x: Any, eps: float = 1e-12) -> jax.Array:
    """Rows divided by their Euclidean norm, x_i / max(‖x_i‖, eps) (platonic-rep normalises before every metric)."""
    x = as_features(x, "x", min_rows=1)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), eps)


def clamp_quantile(x: Any, q: float = 0.95) -> jax.Array:
    """Clamp |x| at the exact q-quantile of |X|: the element at index int(q·N·d) of the sorted |X|.

    This is platonic-rep's ``remove_outliers(feats, q, exact=True)``; ``q = 1`` returns ``x`` unchanged.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"`q` must lie in (0, 1], got {q}.")
    x = as_features(x, "x", min_rows=1)
    if q == 1.0:
        return x
    flat = jnp.sort(jnp.abs(x).reshape(-1))
    bound = flat[int(q * flat.size)]
    return jnp.clip(x, -bound, bound)


def max_normalize(x: Any) -> jax.Array:
    """Each row divided by its largest absolute element (seed 000 App. A: "normalized to a maximum element of 1")."""
    x = as_features(x, "x", min_rows=1)
    peak = jnp.abs(x).max(axis=1, keepdims=True)
    if is_concrete(peak) and bool((peak == 0).any()):
        raise ValueError("`x` has an all-zero row; max_normalize would divide by zero. Drop or fix that row.")
    return x / peak


def center_scale_total_variance(x: Any, *, fit_rows: Any = None) -> jax.Array:
    """(x − mean) / sqrt(Σ_j var_j) with ddof 0, so the total variance is 1 (seed 003 §II).

    This is scikit-matter's ``StandardFlexibleScaler(column_wise=False)``. ``fit_rows`` (indices or a boolean
    mask) selects the rows the mean and variance are fitted on, e.g. the training rows.
    """
    x = as_features(x, "x", min_rows=1)
    ref = x if fit_rows is None else x[jnp.asarray(fit_rows)]
    mean = ref.mean(0)
    total_var = ((ref - mean) ** 2).mean(0).sum()
    if is_concrete(total_var) and float(total_var) < 1e-12:
        raise ValueError(
            f"`x` has total variance {float(total_var):.3g} < 1e-12 on the fitted rows; it cannot be scaled. "
            "Check for constant features."
        )
    return (x - mean) / jnp.sqrt(total_var)


def mean_pool(features: Any, segment_ids: Any, num_segments: int | None = None) -> jax.Array:
    """Mean of the rows of ``features`` that share a segment id (per-structure pooling of per-atom features).

    ``segment_ids`` is (n_rows,) int in ``[0, num_segments)``; every segment must own at least one row.
    """
    feats = as_features(features, "features", min_rows=1)
    seg = jnp.asarray(segment_ids)
    if seg.shape != (feats.shape[0],):
        raise ValueError(
            f"`segment_ids` must have shape ({feats.shape[0]},) (one id per row of `features`), got {seg.shape}."
        )
    if num_segments is None:
        if not is_concrete(seg):
            raise ValueError("`num_segments` must be given when `segment_ids` is traced (under jit).")
        num_segments = int(seg.max()) + 1
    counts = jax.ops.segment_sum(jnp.ones_like(seg, dtype=feats.dtype), seg, num_segments)
    if is_concrete(counts) and bool((counts == 0).any()):
        empty = int((counts == 0).sum())
        raise ValueError(f"{empty} segment(s) own no rows; `segment_ids` must cover 0..num_segments-1.")
    return jax.ops.segment_sum(feats, seg, num_segments) / counts[:, None]
