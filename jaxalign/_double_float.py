"""Double-float arithmetic: a value carried as an unevaluated pair hi + lo of working floats (about twice the bits).

Error-free transformations (Knuth's TwoSum; products from exact partial products) summed as pairs, as in Ogita, Rump
& Oishi 2005, "Accurate sum and dot product", SIAM J. Sci. Comput. 26(6). Used where a float32 (or float64) result
must be right beyond its working precision: CKNNA's cancelling HSIC sums, and the keys that decide neighbour ranks
the fast distance blocks cannot (:mod:`jaxalign._exact`).

Robust to XLA's rewrites: products are formed from halves whose products are exact in the working float, so fusing a
product with the next addition into one FMA (which XLA:CPU may do) changes nothing; Dekker's ``a·b − fl(a·b)`` is not
used, because contracting it with the rounded product inside silently breaks it. Sums go through one XLA reduce whose
combiner is a TwoSum, so any association order XLA picks is accurate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "DD",
    "accurate_dot",
    "accurate_sqdist",
    "add",
    "div",
    "fast_two_sum",
    "less",
    "lift",
    "mul",
    "neg",
    "power_of_two_above",
    "scale",
    "split",
    "sum",
    "two_prod",
    "two_sum",
]

DD = tuple[jax.Array, jax.Array]  # value = hi + lo, |lo| ≤ ulp(hi)/2 once normalised

#: Low stored mantissa bits cleared by :func:`split`: hi keeps 12 (float32) or 26 (float64) significant bits, so
#: hi·hi, hi·lo (and, in float32, lo·lo) are exact in the working float.
_CLEARED = {jnp.dtype(jnp.float32): (jnp.int32, 12), jnp.dtype(jnp.float64): (jnp.int64, 27)}


def power_of_two_above(value: jax.Array) -> jax.Array:
    """2**e with value = f·2**e, f ∈ [0.5, 1) (so |value| < 2**e): dividing by it is exact; 1 for 0."""
    _, exponent = jnp.frexp(jnp.where(value != 0, value, 1.0))
    return jnp.ldexp(jnp.ones_like(value), exponent)


def two_sum(a: jax.Array, b: jax.Array) -> DD:
    """a + b = s + e exactly (Knuth, TAOCP vol. 2, §4.2.2)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def fast_two_sum(a: jax.Array, b: jax.Array) -> DD:
    """a + b = s + e exactly when |a| ≥ |b| (or a = 0)."""
    s = a + b
    return s, b - (s - a)


def split(a: jax.Array) -> DD:
    """a = hi + lo exactly, hi being ``a`` with its low mantissa bits masked off (:data:`_CLEARED`)."""
    int_type, bits = _CLEARED[jnp.dtype(a.dtype)]
    masked = jax.lax.bitcast_convert_type(a, int_type) & int_type(-(1 << bits))
    hi = jax.lax.stop_gradient(jax.lax.bitcast_convert_type(masked, a.dtype))
    return hi, a - hi


def two_prod(a: jax.Array, b: jax.Array) -> DD:
    """a·b as a normalised double-float from the four partial products of the halves (:func:`split`).

    The three leading partial products are exact, the last (≤ 2⁻²⁴ of a·b in float32, 2⁻⁵² in float64) is rounded
    once, so the pair is a·b to ~2⁻⁴⁶ (float32) or ~2⁻¹⁰⁴ (float64) relative.
    """
    ah, al = split(a)
    bh, bl = split(b)
    s, e1 = two_sum(ah * bh, ah * bl)
    s, e2 = two_sum(s, al * bh)
    return fast_two_sum(s, (e1 + e2) + al * bl)


def lift(x: jax.Array) -> DD:
    """x as a double-float (lo = 0)."""
    return x, jnp.zeros_like(x)


def neg(x: DD) -> DD:
    return -x[0], -x[1]


def add(x: DD, y: DD) -> DD:
    """x + y, normalised."""
    s, e = two_sum(x[0], y[0])
    return fast_two_sum(s, e + (x[1] + y[1]))


def mul(x: DD, y: DD) -> DD:
    """x · y, normalised (the lo·lo term dropped)."""
    p, e = two_prod(x[0], y[0])
    return fast_two_sum(p, e + (x[0] * y[1] + x[1] * y[0]))


def scale(x: DD, factor: float) -> DD:
    """x · factor for a factor exact in the working float (e.g. an integer below 2**24)."""
    return mul(x, lift(jnp.asarray(factor, x[0].dtype)))


def div(x: DD, den: float) -> DD:
    """x / den for a float ``den``, to double-float accuracy (one correction step)."""
    den_f = jnp.asarray(den, x[0].dtype)
    q = x[0] / den_f
    r = add(x, mul(lift(q), lift(-den_f)))
    return fast_two_sum(q, (r[0] + r[1]) / den_f)


def less(x: DD, y: DD) -> jax.Array:
    """x < y for normalised double-floats (lexicographic on (hi, lo))."""
    return (x[0] < y[0]) | ((x[0] == y[0]) & (x[1] < y[1]))


@jax.custom_jvp
def _reduce_last(hi: jax.Array, lo: jax.Array) -> DD:
    zero = jnp.zeros((), hi.dtype)
    return jax.lax.reduce((hi, lo), (zero, zero), add, (hi.ndim - 1,))


@_reduce_last.defjvp
def _reduce_last_jvp(primals: DD, tangents: DD) -> tuple[DD, DD]:
    out = _reduce_last(*primals)
    d_hi, d_lo = tangents
    return out, ((d_hi + d_lo).sum(-1), jnp.zeros_like(out[1]))


def sum(x: DD, axis: int | None = None) -> DD:
    """Σ x along ``axis`` (all axes if None) as a normalised double-float: one XLA reduce whose combiner is a TwoSum,
    accurate to ~2u² Σ|x| · log n whatever order XLA adds in. Differentiable (the derivative of the plain sum)."""
    hi, lo = x
    if axis is None:
        return _reduce_last(hi.reshape(-1), lo.reshape(-1))
    return _reduce_last(jnp.moveaxis(hi, axis, -1), jnp.moveaxis(lo, axis, -1))


def accurate_dot(a: jax.Array, b: jax.Array) -> DD:
    """a · b over the last axis (broadcast) as a double-float from exact products (Ogita, Rump & Oishi's Dot2)."""
    return sum(two_prod(a, b), axis=-1)


def accurate_sqdist(a: jax.Array, b: jax.Array) -> DD:
    """‖a − b‖² over the last axis (broadcast) as a double-float: a − b = s + e exactly (TwoSum), s² as a pair, 2se
    added, e² (< u²s²) dropped; relative error about d·u² (float64-like for float32 input)."""
    s, e = two_sum(a, -b)
    p, pe = two_prod(s, s)
    return sum((p, pe + 2.0 * s * e), axis=-1)
