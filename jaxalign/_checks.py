"""Input validation shared by every public function.

Checks that need concrete values (finiteness, variance, duplicates) run only when the input is concrete; under
``jax.jit`` the shapes are still checked and the value checks are the caller's job.

Input kinds (:func:`as_features`): float32 and float64 are kept (float64 becomes float32 when x64 is off); integers and
bools are rounded to float64 by numpy, then to the working float, never through int32; half precision (float16,
bfloat16, float8) becomes float32; complex input raises ``ValueError`` naming the argument.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.cpu import check_compiled_programs

__all__ = [
    "as_features",
    "as_real_array",
    "check_k",
    "check_same_n",
    "check_variance",
    "is_concrete",
    "non_finite_rows",
    "raise_non_finite",
    "working_float",
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


def working_float() -> np.dtype:
    """The float dtype jaxalign computes in: float64 under ``jax_enable_x64``, float32 otherwise."""
    return np.dtype(jnp.result_type(float))


class _ComplexInput(ValueError):
    """Complex input: raised as is by :func:`as_features` (not reworded as a conversion failure)."""


def _complex_error(name: str) -> ValueError:
    return _ComplexInput(
        f"`{name}` is complex; pass real features, e.g. np.abs({name}) or "
        f"np.concatenate([{name}.real, {name}.imag], 1)."
    )


def _real_dtype(dtype: Any, name: str) -> np.dtype | None:
    """The float dtype an input of ``dtype`` is converted to, or None to keep it (the input-kind rules).

    - bool, signed and unsigned integers: the working float (float64 under x64, float32 otherwise), through float64;
    - floats narrower than 32 bits (float16, bfloat16, float8): float32, which holds each of their values exactly;
    - floats wider than 64 bits (longdouble): float64 (then jax's rule: float32 when x64 is off);
    - float32, float64: kept (jax turns float64 into float32 when x64 is off);
    - complex: ``ValueError`` naming ``name`` (the imaginary part would be dropped silently).
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise _complex_error(name)
    if dtype.kind in "biu":
        return working_float()
    if jnp.issubdtype(dtype, jnp.floating):
        if dtype.itemsize < 4:
            return np.dtype(np.float32)
        if dtype.itemsize > 8:
            return np.dtype(np.float64)
    return None


def _numpy_to_jax(arr: np.ndarray, name: str) -> jax.Array:
    """A numpy array as a real floating jax array: integers and bools rounded to float64 by numpy (exact for
    |v| <= 2**53) and then to the working float, never through int32 (jax would wrap int64 values beyond 2**31)."""
    target = _real_dtype(arr.dtype, name)
    if target is not None:
        if arr.dtype.kind in "biu":
            arr = arr.astype(np.float64)
        arr = arr.astype(target)
    return jnp.asarray(arr)


def _jax_to_float(arr: jax.Array, name: str) -> jax.Array:
    """A jax array as a real floating one (same rules; a jax integer array already holds exact values)."""
    target = _real_dtype(arr.dtype, name)
    return arr if target is None else arr.astype(target)


def _torch_to_jax(t: Any, name: str) -> jax.Array:
    """A torch tensor as a real floating jax array: CPU tensors through numpy, others through DLPack.

    Integer and bool tensors become float64 in torch first (exact for |v| <= 2**53), half-precision ones
    (float16, bfloat16) float32, so no dtype reaches jax that it would narrow or numpy could not hold.
    """
    t = t.detach()
    if t.is_complex():
        raise _complex_error(name)
    if not t.is_floating_point():
        t = t.double()
    elif t.element_size() < 4:
        t = t.float()
    if t.device.type == "cpu":
        return _numpy_to_jax(t.numpy(), name)
    return _jax_to_float(jnp.from_dlpack(t), name)


def as_real_array(x: Any, name: str = "x") -> jax.Array:
    """``x`` (numpy, jax, torch, nested lists) as a real floating jax array under the input-kind rules of
    :func:`_real_dtype`; complex input raises ``ValueError`` naming ``name``.

    Every public function's inputs pass through here, so this is also where the automatic check on the memory maps
    of compiled programs runs (:func:`jaxalign.cpu.check_compiled_programs`)."""
    check_compiled_programs()
    if isinstance(x, jax.Array):
        return _jax_to_float(x, name)
    if type(x).__module__.startswith("torch"):
        return _torch_to_jax(x, name)
    return _numpy_to_jax(np.asarray(x), name)


def as_features(x: Any, name: str = "x", *, min_rows: int = 2, check_finite: bool = True) -> jax.Array:
    """Return ``x`` as a 2-D real floating jax array of shape (N, d), validated.

    numpy, jax and torch (via dlpack) inputs are accepted. Input kinds:

    - float32 stays float32; float64 stays float64 when ``jax_enable_x64`` is on (and becomes float32 otherwise);
    - integer and boolean input is rounded to float64 by numpy (exact for |v| <= 2**53, so int64 values beyond
      2**31 keep their sign and magnitude) and then to the working float (float32 by default, float64 under x64);
    - half precision (float16, bfloat16, float8) is upcast to float32, so results equal the float32 ones on the same
      values (half-precision sums overflow and lose the digits the metrics need);
    - complex input raises ``ValueError`` (its imaginary part would be dropped).

    Raises ``ValueError`` naming ``name`` for None, complex, ragged, non-2-D, empty or too short (< ``min_rows``)
    input and for rows holding NaN or inf. ``check_finite=False`` leaves the NaN/inf check to a caller that fuses
    :func:`non_finite_rows` into one pass with its own value checks (one host transfer instead of several).
    """
    if x is None:
        raise ValueError(f"`{name}` is None; pass an (N, d) array of features.")
    try:
        arr = as_real_array(x, name)
    except _ComplexInput:
        raise
    except (TypeError, ValueError) as err:  # ragged lists, objects, strings
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
    if not jnp.issubdtype(arr.dtype, jnp.floating):  # e.g. an object array of numbers
        raise ValueError(f"`{name}` has dtype {arr.dtype}; pass real numeric (N, d) features.")
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
