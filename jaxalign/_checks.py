"""Input validation shared by every public function.

Checks that need concrete values (finiteness, variance, duplicates) run only when the input is concrete; under
``jax.jit`` the shapes are still checked and the value checks are the caller's job.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "as_features",
    "check_k",
    "check_same_n",
    "check_variance",
    "is_concrete",
    "non_finite_rows",
    "raise_non_finite",
]


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer inside ``jit``/``grad``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def non_finite_rows(x: jax.Array) -> jax.Array:
    """Number of rows of ``x`` holding a NaN or an inf (traceable: fuse it into a caller's own check pass)."""
    return jnp.sum(~jnp.isfinite(x).all(axis=1))


def raise_non_finite(name: str, bad: int) -> None:
    """The error for ``bad`` > 0 rows of ``name`` holding NaN or inf."""
    if bad:
        raise ValueError(f"`{name}` contains NaN or inf in {bad} row(s); drop or impute those rows first.")


_non_finite_rows_jit = jax.jit(non_finite_rows)


def _to_jax(x: Any) -> jax.Array:
    if isinstance(x, jax.Array):
        return x
    if type(x).__module__.startswith("torch"):
        x = x.detach()
        if x.device.type == "cpu":
            return jnp.asarray(x.numpy())
        return jnp.from_dlpack(x)
    return jnp.asarray(np.asarray(x))


def as_features(x: Any, name: str = "x", *, min_rows: int = 2, check_finite: bool = True) -> jax.Array:
    """Return ``x`` as a 2-D floating jax array of shape (N, d), validated.

    numpy, jax and torch (via dlpack) inputs are accepted. float32 stays float32; float64 stays float64 when
    ``jax_enable_x64`` is on (and becomes float32 otherwise); integer and boolean inputs become the default float.
    ``check_finite=False`` leaves the NaN/inf check to a caller that fuses :func:`non_finite_rows` into one pass with
    its own value checks (one host transfer instead of several).
    """
    if x is None:
        raise ValueError(f"`{name}` is None; pass an (N, d) array of features.")
    try:
        arr = _to_jax(x)
    except (TypeError, ValueError) as err:  # ragged lists, objects
        raise ValueError(
            f"`{name}` could not be converted to an array ({err}); pass a rectangular (N, d) array, not a ragged list."
        ) from None
    if arr.ndim != 2:
        raise ValueError(
            f"`{name}` must be 2-D (N samples, d features), got shape {arr.shape}; "
            "reshape a 1-D vector with x[:, None]."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {arr.shape}); pass at least one feature and {min_rows} rows.")
    if arr.shape[0] < min_rows:
        raise ValueError(f"`{name}` has {arr.shape[0]} rows; this estimator needs at least {min_rows}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if check_finite and is_concrete(arr):
        raise_non_finite(name, int(_non_finite_rows_jit(arr)))
    return arr


def check_same_n(x: jax.Array, y: jax.Array, names: tuple[str, str] = ("x", "y")) -> None:
    """Both embeddings must describe the same N samples."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`{names[0]}` has {x.shape[0]} rows but `{names[1]}` has {y.shape[0]}; row i of both must describe "
            "the same sample, so pass embeddings of the same N samples in the same order."
        )


def check_k(k: int, n: int, name: str = "k", *, low: int = 1, high: int | None = None) -> int:
    """``low <= k <= high`` (default high = n - 1: the number of other points)."""
    high = n - 1 if high is None else high
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"`{name}` must be an integer, got {k!r}.")
    if not low <= int(k) <= high:
        raise ValueError(
            f"`{name}`={k} is out of range for N={n}: it must satisfy {low} <= {name} <= {high} "
            f"(a point has only N-1 = {n - 1} neighbours); lower `{name}` or pass more samples."
        )
    return int(k)


def check_variance(x: jax.Array, name: str = "x") -> None:
    """Reject an embedding whose rows are all identical (zero total variance)."""
    if is_concrete(x) and float(jnp.abs(x - x[:1]).max()) == 0.0:
        raise ValueError(
            f"`{name}` has zero variance (all rows identical); the metric is undefined. "
            "Check that the features were extracted correctly."
        )
