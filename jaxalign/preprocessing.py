"""Composable preprocessing of (N, d) embeddings (SPEC §1). Each is a pure function of the array.

Features go through :func:`jaxalign._checks.as_features`: integer and bool input is rounded to float64 by numpy and
then to the working float (float32 by default, float64 under ``jax_enable_x64``), never through int32; float16 and
bfloat16 become float32; complex input raises ``ValueError``. Index arguments (``fit_rows``, ``segment_ids``) are
checked on the host when concrete: integers in range (or a boolean mask of the right length), never wrapped to int32
or clamped by a gather.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._checks import as_features, is_concrete

__all__ = ["center_scale_total_variance", "clamp_quantile", "l2_normalize", "max_normalize", "mean_pool", "standardize"]


def l2_normalize(x: Any, eps: float = 1e-12) -> jax.Array:
    """Rows divided by their Euclidean norm, x_i / max(‖x_i‖, eps) (platonic-rep normalises before every metric)."""
    x = as_features(x, "x", min_rows=1)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), eps)


def standardize(x: Any) -> jax.Array:
    """Columns to zero mean and unit standard deviation (ddof 1, as torch's ``std``), (x − mean_j) / std_j; a constant
    column becomes 0 (I_d Cor standardises each representation this way, Basile et al. 2025)."""
    x = as_features(x, "x", min_rows=2)
    centred = x - x.mean(0)
    std = centred.std(0, ddof=1)
    return centred / jnp.where(std > 0, std, 1.0)


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
    mask) selects the rows the mean and variance are fitted on, e.g. the training rows; out-of-range indices, a
    mask of the wrong length or a non-integer index raise ``ValueError``.
    """
    x = as_features(x, "x", min_rows=1)
    ref = x if fit_rows is None else x[_row_selection(fit_rows, x.shape[0])]
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

    ``segment_ids`` is (n_rows,) int in ``[0, num_segments)``; every segment must own at least one row. Ids of a
    non-integer dtype, negative or >= ``num_segments`` raise ``ValueError`` (``segment_sum`` would drop those rows).
    """
    feats = as_features(features, "features", min_rows=1)
    seg = _segment_ids(segment_ids, feats.shape[0], num_segments)
    if num_segments is None:
        if not is_concrete(seg):
            raise ValueError("`num_segments` must be given when `segment_ids` is traced (under jit).")
        num_segments = int(seg.max()) + 1
    counts = jax.ops.segment_sum(jnp.ones_like(seg, dtype=feats.dtype), seg, num_segments)
    if is_concrete(counts) and bool((counts == 0).any()):
        empty = int((counts == 0).sum())
        raise ValueError(f"{empty} segment(s) own no rows; `segment_ids` must cover 0..num_segments-1.")
    return jax.ops.segment_sum(feats, seg, num_segments) / counts[:, None]


# --------------------------------------------------------------------------------------------------------------------
# Index arguments


def _integer_host_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind not in "iu":
        raise ValueError(f"`{name}` must hold integers, got dtype {arr.dtype}; pass e.g. np.asarray({name}, int).")
    return arr


def _row_selection(fit_rows: Any, n: int) -> Any:
    """``fit_rows`` as an index into N rows: a boolean mask of length N or integers in [-N, N).

    A traced (jit) index is returned as is; a concrete one is validated on the host, because a jax gather clamps
    out-of-range indices silently and jnp.asarray would wrap int64 values beyond 2**31.
    """
    if isinstance(fit_rows, jax.Array) and not is_concrete(fit_rows):
        return fit_rows
    rows = np.asarray(fit_rows)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise ValueError(f"`fit_rows` is a boolean mask of shape {rows.shape}; it must have shape ({n},).")
        if not rows.any():
            raise ValueError("`fit_rows` selects no row; select at least one row to fit on.")
        return rows
    rows = _integer_host_array(rows, "fit_rows")
    if rows.size == 0:
        raise ValueError("`fit_rows` selects no row; select at least one row to fit on.")
    if rows.min() < -n or rows.max() >= n:
        raise ValueError(f"`fit_rows` holds indices outside [-{n}, {n}) for `x` with N={n} rows.")
    return rows.astype(np.int32)


def _segment_ids(segment_ids: Any, n_rows: int, num_segments: int | None) -> jax.Array:
    """``segment_ids`` as an int32 jax array of shape (n_rows,), validated on the host when concrete.

    Concrete ids must be integers in [0, num_segments) (or [0, 2**31) when ``num_segments`` is None); traced ids
    must have an integer dtype and are taken as they are.
    """
    traced = isinstance(segment_ids, jax.Array) and not is_concrete(segment_ids)
    seg = segment_ids if traced else np.asarray(segment_ids)
    if seg.shape != (n_rows,):
        raise ValueError(f"`segment_ids` must have shape ({n_rows},) (one id per row of `features`), got {seg.shape}.")
    if traced:
        if not jnp.issubdtype(seg.dtype, jnp.integer):
            raise ValueError(f"`segment_ids` must hold integers, got dtype {seg.dtype}.")
        return seg
    seg = _integer_host_array(seg, "segment_ids")
    high = np.iinfo(np.int32).max if num_segments is None else int(num_segments)
    if seg.min() < 0 or seg.max() >= high:
        raise ValueError(
            f"`segment_ids` holds ids outside [0, {high}) (min {seg.min()}, max {seg.max()}); ids must number the "
            "segments 0..num_segments-1."
        )
    return jnp.asarray(seg.astype(np.int32))
