"""jaxalign._double_float against exact rational arithmetic, in float32 and float64, compiled (where XLA may fuse a
product with the next addition) and eager, on magnitudes from 1e-12 to 1e12 with cancelling signs."""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign import _double_float as df

DTYPES = (np.float32, np.float64)
#: Relative accuracy promised for a double-float result: ~2u² (u the unit round-off), with room for a few roundings.
ACCURACY = {np.float32: 2.0**-44, np.float64: 2.0**-100}


def _value(pair) -> Fraction:
    hi, lo = (np.asarray(a) for a in pair)
    return Fraction(float(hi)) + Fraction(float(lo))


def _vectors(dtype, size: int):
    """Vectors mixing magnitudes 1e-12…1e12, signs and near-cancelling pairs (the adversarial part)."""
    mag = st.floats(-12, 12).map(lambda e: 10.0**e)
    entry = st.tuples(mag, st.sampled_from([-1.0, 1.0])).map(lambda t: t[0] * t[1])
    return st.lists(entry, min_size=size, max_size=size).map(lambda v: np.asarray(v, dtype))


def _close(got: Fraction, exact: Fraction, scale: Fraction, dtype) -> bool:
    return abs(got - exact) <= ACCURACY[dtype] * scale


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_two_prod_and_split_are_exact(dtype, data):
    a = data.draw(_vectors(dtype, 8))
    b = data.draw(_vectors(dtype, 8))
    hi, lo = df.split(jnp.asarray(a))
    for h, low, v in zip(hi, lo, a, strict=True):
        assert Fraction(float(h)) + Fraction(float(low)) == Fraction(float(v))
    for fn in (df.two_prod, jax.jit(df.two_prod)):
        p, e = fn(jnp.asarray(a), jnp.asarray(b))
        for i in range(8):
            exact = Fraction(float(a[i])) * Fraction(float(b[i]))
            assert _close(_value((p[i], e[i])), exact, abs(exact), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_accurate_dot_sum_and_sqdist(dtype, data):
    a = data.draw(_vectors(dtype, 16))
    b = data.draw(_vectors(dtype, 16))
    b = np.where(np.arange(16) % 4 == 0, a, b).astype(dtype)  # exact cancellation in some differences
    fa, fb = [Fraction(float(v)) for v in a], [Fraction(float(v)) for v in b]
    for fn in (df.accurate_dot, jax.jit(df.accurate_dot)):
        products = [x * y for x, y in zip(fa, fb, strict=True)]
        exact = sum(products)
        assert _close(_value(fn(jnp.asarray(a), jnp.asarray(b))), exact, sum(map(abs, products)), dtype)
    for fn in (df.accurate_sqdist, jax.jit(df.accurate_sqdist)):
        exact = sum((x - y) ** 2 for x, y in zip(fa, fb, strict=True))
        assert _close(_value(fn(jnp.asarray(a), jnp.asarray(b))), exact, exact, dtype)
    total = df.sum(df.lift(jnp.asarray(a)))
    assert _close(_value(total), sum(fa), sum(abs(x) for x in fa), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_division_and_comparison(dtype):
    x = df.add(df.lift(jnp.asarray(1.0, dtype)), df.lift(jnp.asarray(np.finfo(dtype).eps / 8, dtype)))
    q = df.div(x, 3.0)
    exact = (Fraction(1) + Fraction(float(np.finfo(dtype).eps)) / 8) / 3
    assert _close(_value(q), exact, exact, dtype)
    assert bool(df.less(df.lift(jnp.asarray(1.0, dtype)), x)) and not bool(df.less(x, x))


def test_sum_is_differentiable_as_the_plain_sum():
    grad = jax.grad(lambda v: df.sum(df.lift(v))[0])(jnp.arange(4.0))
    np.testing.assert_array_equal(grad, np.ones(4))
