"""Signed-root cumulant descriptors (SPEC §7) against the anchor values and a per-structure numpy loop."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign.descriptors import cumulant_descriptors, cumulants, signed_root
from jaxalign.preprocessing import mean_pool

REF_KEY = "signed_root_cumulants(order=8)"

# κk = Σ coefficient · Π μ_j (seed 003 eqs. S1–S9), written out independently of the implementation.
TERMS = {
    2: [(1, (2,))],
    3: [(1, (3,))],
    4: [(1, (4,)), (-3, (2, 2))],
    5: [(1, (5,)), (-10, (2, 3))],
    6: [(1, (6,)), (-15, (2, 4)), (-10, (3, 3)), (30, (2, 2, 2))],
    7: [(1, (7,)), (-21, (2, 5)), (-35, (3, 4)), (210, (3, 2, 2))],
    8: [(1, (8,)), (-28, (2, 6)), (-56, (3, 5)), (-35, (4, 4)), (420, (4, 2, 2)), (560, (3, 3, 2)), (-630, (2,) * 4)],
}


def naive_cumulants(x: np.ndarray, sizes: np.ndarray, order: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure loop in float64: cumulants (S, order, d) and their conditioning scale.

    The scale of κk is the same sum with |coefficients| and absolute moments mean|ξ − ξ̄|^j: the size of the terms
    that cancel, so |rounding error of κk| ≲ ε·scale. It makes tolerances relative for every order.
    """
    kappa, scale = [], []
    start = 0
    for n in sizes:
        a = np.asarray(x[start : start + n], dtype=np.float64)
        start += n
        mean = a.mean(0)
        c = a - mean
        mu = {j: (c**j).mean(0) for j in range(2, order + 1)}
        nu = {j: (np.abs(c) ** j).mean(0) for j in range(2, order + 1)}
        ks, ss = [mean], [np.abs(mean)]
        for k in range(2, order + 1):
            ks.append(sum(cf * np.prod([mu[j] for j in t], axis=0) for cf, t in TERMS[k]))
            ss.append(sum(abs(cf) * np.prod([nu[j] for j in t], axis=0) for cf, t in TERMS[k]))
        kappa.append(np.stack(ks))
        scale.append(np.stack(ss))
    return np.array(kappa), np.array(scale)


def unroot(phi: np.ndarray, order: int) -> np.ndarray:
    """Invert the signed root: (S, order·d) descriptors → (S, order, d) cumulants."""
    blocks = phi.reshape(phi.shape[0], order, -1)
    k = np.arange(1, order + 1)[None, :, None]
    return np.sign(blocks) * np.abs(blocks) ** k


@pytest.fixture(scope="module")
def ref_case(inputs, expected_pypi):
    x, sizes = inputs["cumulant_feats"], inputs["cumulant_sizes"]
    expected = np.asarray(expected_pypi["cumulants"][REF_KEY])
    return x, sizes, expected


def test_reference_cumulants(ref_case):
    """All entries agree in cumulant space to rounding level; well-conditioned descriptors to rtol 1e-6.

    Documented difference: the two-atom structure's odd cumulants are 0 in exact arithmetic (two points are
    symmetric about their mean). Both the anchor and we produce rounding noise (|κ| ~ 1e-17) there, whose signed
    root (up to ~1e-3) is meaningless, so those entries are compared as cumulants only.
    """
    x, sizes, expected = ref_case
    ours = np.asarray(cumulant_descriptors(x, sizes, order=8))
    assert ours.shape == expected.shape == (len(sizes), 8 * x.shape[1])
    kappa, scale = naive_cumulants(x, sizes)
    np.testing.assert_array_less(np.abs(unroot(ours, 8) - unroot(expected, 8)), 1e-12 * scale + 1e-300)
    well = (np.abs(kappa) > 1e-9 * scale).reshape(ours.shape)
    assert (~well).sum() <= 3 * x.shape[1]  # only the odd orders 3, 5, 7 of the symmetric two-atom structure
    np.testing.assert_allclose(ours[well], expected[well], rtol=1e-6)


def test_matches_naive_loop(ref_case):
    x, sizes, _ = ref_case
    kappa, scale = naive_cumulants(x, sizes)
    ours = np.asarray(cumulants(x, sizes))
    np.testing.assert_array_less(np.abs(ours - kappa), 1e-12 * scale + 1e-300)


def test_float32_close_to_float64(ref_case):
    """float32 vs float64 on the same (float32) values: cumulants to 1e-4 of their scale, descriptors rtol 1e-4
    wherever the cumulant is not within 1 % of cancelling (the signed root is ill-conditioned near 0)."""
    x, sizes, _ = ref_case
    x32 = x.astype(np.float32)
    kappa, scale = naive_cumulants(x32, sizes)
    k32 = cumulants(x32, sizes)
    assert k32.dtype == jnp.float32
    np.testing.assert_array_less(np.abs(np.asarray(k32, np.float64) - kappa), 1e-4 * scale)
    d32 = np.asarray(cumulant_descriptors(x32, sizes), np.float64)
    d64 = np.asarray(cumulant_descriptors(x32.astype(np.float64), sizes))
    well = (np.abs(kappa) > 1e-2 * scale).reshape(d64.shape)
    np.testing.assert_allclose(d32[well], d64[well], rtol=1e-4)


def test_order_one_is_mean_pool(ref_case):
    x, sizes, _ = ref_case
    seg = np.repeat(np.arange(len(sizes)), sizes)
    np.testing.assert_allclose(cumulant_descriptors(x, sizes, order=1), mean_pool(x, seg), rtol=1e-12)


def test_identical_atoms_give_mean_then_zeros():
    row = np.array([0.3, -1.7, 2.5])
    x = np.concatenate([np.tile(row, (5, 1)), [[1.0, 2.0, 3.0]], np.tile(-row, (3, 1))])
    phi = np.asarray(cumulant_descriptors(x, [5, 1, 3])).reshape(3, 8, 3)
    np.testing.assert_allclose(phi[:, 0], [row, [1.0, 2.0, 3.0], -row], rtol=1e-12)
    np.testing.assert_allclose(phi[:, 1:], 0.0, atol=1e-12)


def _ragged(draw_sizes: list[int], d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.asarray(draw_sizes)
    x = rng.standard_t(df=5, size=(sizes.sum(), d)) * rng.uniform(0.1, 3.0, size=d) + rng.normal(size=d)
    return x, sizes


SIZES = st.lists(st.integers(1, 10), min_size=1, max_size=6)


def test_prefix_property(ref_case):
    """φ(M) is the prefix of φ(8) (checked for M = 1, 3, 7: each order is a separate compilation, so XLA may fuse and
    round the float64 sums apart by ~1e-13; not bit equality)."""
    x, sizes, _ = ref_case
    d = x.shape[1]
    full = np.asarray(cumulant_descriptors(x, sizes, order=8))
    for order in (1, 3, 7):
        prefix = np.asarray(cumulant_descriptors(x, sizes, order=order))
        np.testing.assert_allclose(full[:, : order * d], prefix, rtol=1e-12, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(sizes=SIZES, d=st.integers(1, 4), seed=st.integers(0, 2**16), data=st.data())
def test_batch_independence_and_atom_permutation(sizes, d, seed, data):
    """A structure's descriptor depends only on its own atoms, in any order, wherever it sits in the batch."""
    x, sizes = _ragged(sizes, d, seed)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    kappa = np.asarray(cumulants(x, sizes))
    _, scale = naive_cumulants(x, sizes)
    tol = 1e-12 * scale + 1e-300
    # one structure alone
    s = data.draw(st.integers(0, len(sizes) - 1), label="structure")
    alone = np.asarray(cumulants(x[starts[s] : starts[s] + sizes[s]], sizes[s : s + 1]))
    np.testing.assert_array_less(np.abs(alone[0] - kappa[s]), tol[s])
    # structures reordered and atoms shuffled within each structure
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sizes))
    rows = np.concatenate([starts[i] + rng.permutation(sizes[i]) for i in order])
    shuffled = np.asarray(cumulants(x[rows], sizes[order]))
    np.testing.assert_array_less(np.abs(shuffled - kappa[order]), tol[order])


def test_gradient_is_finite_where_cumulants_vanish():
    """A one-atom structure has κ_k = 0 for k ≥ 2: the signed root's slope is infinite there; ours is 0."""
    x = np.random.default_rng(0).normal(size=(7, 3))
    sizes = np.array([1, 4, 2])
    grad = jax.grad(lambda a: cumulant_descriptors(a, sizes).sum())(jnp.asarray(x))
    assert bool(jnp.isfinite(grad).all())
    g0 = jax.grad(lambda k: signed_root(k, 3))(0.0)
    assert float(g0) == 0.0
    # away from 0 the gradient is the analytic one: d/dκ κ^(1/3) = κ^(-2/3) / 3
    np.testing.assert_allclose(jax.grad(lambda k: signed_root(k, 3))(8.0), 8.0 ** (-2 / 3) / 3, rtol=1e-12)
    np.testing.assert_allclose(jax.grad(lambda k: signed_root(k, 3))(-8.0), 8.0 ** (-2 / 3) / 3, rtol=1e-12)


def test_under_jit():
    x = np.random.default_rng(1).normal(size=(9, 2))
    sizes = np.array([4, 5])
    eager = cumulant_descriptors(x, sizes, order=5)
    jitted = jax.jit(lambda a, n: cumulant_descriptors(a, n, order=5))(jnp.asarray(x), jnp.asarray(sizes))
    np.testing.assert_allclose(jitted, eager, rtol=1e-12)


@pytest.mark.parametrize(
    ("n_atoms", "match"),
    [
        ([3, 3], "sums to 6"),
        ([4, 3, 0], "fewer than 1 atom"),
        ([5, 3, -1], "fewer than 1 atom"),
        ([[3, 4]], "1-D"),
        ([], "1-D"),
        ([3.5, 3.5], "integers"),
        (None, "None"),
    ],
)
def test_bad_n_atoms(n_atoms, match):
    x = np.zeros((7, 2))
    with pytest.raises(ValueError, match=rf"`n_atoms`.*{match}|{match}.*`n_atoms`"):
        cumulant_descriptors(x, n_atoms)


@pytest.mark.parametrize("order", [0, 9, 2.0, True])
def test_bad_order(order):
    with pytest.raises(ValueError, match="`order`"):
        cumulant_descriptors(np.zeros((3, 2)), [3], order=order)


def test_bad_features():
    with pytest.raises(ValueError, match="`atom_features`"):
        cumulant_descriptors(np.array([[0.0, np.nan], [1.0, 2.0]]), [2])
    with pytest.raises(ValueError, match="`atom_features`"):
        cumulant_descriptors(np.zeros(5), [5])


def test_sharded_matches_single_device():
    """With 4 (forced CPU) devices the atoms are split across them; the cumulants equal the single-device path's."""
    script = textwrap.dedent(
        """
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        from jaxalign.descriptors import cumulants
        from jaxalign.tiling import row_mesh
        assert jax.device_count() == 4
        rng = np.random.default_rng(0)
        sizes = rng.integers(1, 9, size=13)
        x = rng.normal(size=(sizes.sum(), 3))
        single = np.asarray(cumulants(x, sizes, mesh=None))
        sharded = np.asarray(cumulants(x, sizes, mesh="auto"))
        two = np.asarray(cumulants(x, sizes, mesh=row_mesh(jax.devices()[:2])))
        assert sharded.shape == single.shape == (13, 8, 3)
        np.testing.assert_allclose(sharded, single, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(two, single, rtol=1e-10, atol=1e-10)
        print("ok")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


# ---------------------------------------------------------------------------------------------------------------------
# Against exact rational arithmetic (issue 10, numerics block 7)
#
# Signed-root cumulants against exact rational arithmetic: exact zeros and accuracy (issue 10, numerics block 7).
#
# The reference evaluates the same formulas (population central moments, κ1..κ8 of seed 003 eqs. S1–S9) with
# ``fractions.Fraction`` on the exact binary values of the float inputs, so a cumulant that vanishes in exact arithmetic
# is exactly 0 there; only the final root is taken in float64. Tolerances are stated in units of the structure's scale
# u_k = T_k^(1/k), T_k = Σ|coefficient|·Π ν_j with ν_j = mean|ξ − ξ̄|^j (the size of the terms that cancel in κ_k), so
# "1e-6" is absolute for features of order 1 (as in the anchor's tolerance) and scales with the features.

EXACT_KEY = "signed_root_cumulants(order=8) exact"
ORDER = 8
U64 = 2.0**-53


def exact_cumulants(x: np.ndarray, sizes: np.ndarray) -> tuple[list, list]:
    """Exact κ1..κ8 and conditioning sums T1..T8 (Fractions), nested [structure][order − 1][feature]."""
    kappa, scale = [], []
    start = 0
    for n in sizes:
        block = x[start : start + n]
        start += n
        ks, ts = [[None] * x.shape[1] for _ in range(ORDER)], [[None] * x.shape[1] for _ in range(ORDER)]
        for f in range(x.shape[1]):
            values = [Fraction(float(v)) for v in block[:, f]]  # the exact binary value of every input
            mean = sum(values) / n
            centred = [v - mean for v in values]
            mu = {j: sum(c**j for c in centred) / n for j in range(2, ORDER + 1)}
            nu = {j: sum(abs(c) ** j for c in centred) / n for j in range(2, ORDER + 1)}
            ks[0][f], ts[0][f] = mean, sum(abs(v) for v in values) / n
            for k in range(2, ORDER + 1):
                ks[k - 1][f] = sum(cf * math.prod(mu[j] for j in t) for cf, t in TERMS[k])
                ts[k - 1][f] = sum(abs(cf) * math.prod(nu[j] for j in t) for cf, t in TERMS[k])
        kappa.append(ks)
        scale.append(ts)
    return kappa, scale


def exact_signed_root(value: Fraction, k: int) -> float:
    """sign(κ)·|κ|^(1/k) of an exact value, rounded once to float64 before the root."""
    if value == 0:
        return 0.0
    return math.copysign(float(abs(value)) ** (1.0 / k), value)


def unit(scale: Fraction, k: int) -> float:
    return float(scale) ** (1.0 / k)


# ---------------------------------------------------------------------------------------------------------------------
# Generated structures: 2–6 atoms, 1–3 features, exact symmetric configurations (odd cumulants exactly 0), integer
# ties, generic floats, large offsets with a small symmetric spread; scales 2^-20…2^20 (≈ 1e-6…1e6) and 10^-6…10^6.

POW2 = st.integers(-20, 20).map(lambda e: 2.0**e)


@st.composite
def column(draw: st.DrawFn, n: int) -> list[float]:
    """One feature of one structure, n values.

    - ``symmetric`` / ``offset``: centre ± integer offsets (and the centre for odd n) times 2^e, exact in float32 and
      float64, small or large (2^18…2^20) centre: odd cumulants exactly 0 and computed without any rounding;
    - ``pairs``: a generic pair (a, b), possibly on a large offset, repeated n//2 times (plus one generic value for odd
      n): symmetric about (a + b)/2, which is usually not a float, so the computed mean is rounded and the odd cumulants
      only vanish through the round-off rule;
    - ``ties``: small integers with repeats times 2^e; ``generic``: floats in [−1, 1] times 10^p.
    """
    kind = draw(st.sampled_from(["symmetric", "offset", "pairs", "ties", "generic"]))
    generic = st.floats(-1, 1, width=32, allow_subnormal=False)
    if kind == "generic":
        scale = 10.0 ** draw(st.integers(-6, 6))
        return [v * scale for v in draw(st.lists(generic, min_size=n, max_size=n))]
    if kind == "pairs":
        scale = 10.0 ** draw(st.integers(-6, 6))
        offset = draw(st.sampled_from([0.0, 1e3, 12345.678, 1e6 + 0.1])) * scale
        a, b, c = (offset + draw(generic) * scale for _ in range(3))
        values = [a, b] * (n // 2) + [c] * (n % 2)
    else:
        scale = draw(POW2)
        if kind == "ties":
            return [float(v) * scale for v in draw(st.lists(st.integers(-4, 4), min_size=n, max_size=n))]
        centre = draw(st.integers(-8, 8)) if kind == "symmetric" else draw(st.integers(2**18, 2**20))
        offsets = draw(st.lists(st.integers(0, 64), min_size=n // 2, max_size=n // 2))
        ints = [centre + j for j in offsets] + [centre - j for j in offsets] + [centre] * (n % 2)
        values = [float(v) * scale for v in ints]
    order = draw(st.permutations(range(n)))
    return [values[i] for i in order]


@st.composite
def structures(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    sizes = draw(st.lists(st.integers(2, 6), min_size=1, max_size=3))
    d = draw(st.integers(1, 3))
    blocks = [np.array([draw(column(n)) for _ in range(d)]).T for n in sizes]
    return np.concatenate(blocks), np.array(sizes)


def _check_against_exact(x: np.ndarray, sizes: np.ndarray, phi: np.ndarray, kappa: np.ndarray, rtol: float) -> None:
    """Exact zeros where κ = 0; φ within ``rtol``·u_k where κ is well above round-off (|κ| ≥ 1e-8·T)."""
    ex_kappa, ex_scale = exact_cumulants(x, sizes)
    phi = phi.reshape(len(sizes), ORDER, -1)
    for s, n in enumerate(sizes):
        for k in range(1, ORDER + 1):
            for f in range(x.shape[1]):
                exact, scale = ex_kappa[s][k - 1][f], ex_scale[s][k - 1][f]
                where = f"structure {s} (n={n}), order {k}, feature {f}: exact κ = {float(exact):.3e}"
                if k >= 2 and exact == 0:
                    assert phi[s, k - 1, f] == 0.0 and kappa[s, k - 1, f] == 0.0, f"{where}, got φ = {phi[s, k - 1, f]}"
                elif abs(exact) >= Fraction(1, 10**8) * scale:
                    err = abs(float(phi[s, k - 1, f]) - exact_signed_root(exact, k))
                    tiny = np.finfo(phi.dtype).tiny  # XLA:CPU flushes subnormal results to 0
                    assert err <= rtol * unit(scale, k) + tiny, f"{where}: |Δφ| = {err:.3e}, unit {unit(scale, k):.3e}"


@settings(max_examples=40, deadline=None)
@given(structures())
def test_float64_matches_exact_arithmetic(case):
    """float64 inputs: exact zeros, 1e-6·u_k elsewhere above round-off, and everywhere the documented rule: a kept κk
    is within B_k = 2k(n + 6)(1 + ρ)^k·2⁻⁵³·T_k of the exact value, a zeroed one within 2·B_k of 0 (ρ ≪ 1 here; 1.01
    allows for it)."""
    x, sizes = case
    phi = np.asarray(cumulant_descriptors(x, sizes))
    kappa = np.asarray(cumulants(x, sizes))
    assert phi.dtype == kappa.dtype == np.float64
    _check_against_exact(x, sizes, phi, kappa, rtol=1e-6)
    ex_kappa, ex_scale = exact_cumulants(x, sizes)
    for s, n in enumerate(sizes):
        for k in range(2, ORDER + 1):
            for f in range(x.shape[1]):
                bound = 2 * k * (n + 6) * 1.01**k * U64 * float(ex_scale[s][k - 1][f])
                got = kappa[s, k - 1, f]
                err = abs(Fraction(float(got)) - ex_kappa[s][k - 1][f])
                assert float(err) <= (2 if got == 0 else 1) * bound, (
                    f"structure {s}, order {k}, feature {f}: |Δκ| {float(err):.2e}, B_k {bound:.2e}, κ = {got}"
                )


@settings(max_examples=30, deadline=None)
@given(structures())
def test_float32_matches_exact_arithmetic(case):
    """float32 inputs with jax_enable_x64 off: exact zeros, and φ within 1e-4 (relative to u_k) of the exact root of
    the float32 values' cumulants wherever those are well above round-off."""
    x, sizes = case
    x32 = x.astype(np.float32)
    with jax.enable_x64(False):
        phi = np.asarray(cumulant_descriptors(x32, sizes))
        kappa = np.asarray(cumulants(x32, sizes))
    assert phi.dtype == np.float32
    _check_against_exact(x32, sizes, phi, kappa, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# Fixed cases


def test_numerics_block7_two_atoms():
    """../shared/cases/numerics.py block 7: a two-atom structure is symmetric about its mean, so κ3, κ5, κ7 are
    exactly 0 (float32 gave −0.002 … 0.17 before); the even orders are those of ±h (h = half the distance):
    h, −2^(1/4)·h, 16^(1/6)·h, −272^(1/8)·h.
    """
    f = np.array([[0.3, -1.2], [1.1, 0.4]])
    with jax.enable_x64(False):
        phi32 = np.asarray(cumulant_descriptors(f, np.array([2]), order=8)).reshape(8, 2)
    phi64 = np.asarray(cumulant_descriptors(f, np.array([2]), order=8)).reshape(8, 2)
    assert phi32.dtype == np.float32 and phi64.dtype == np.float64
    for phi in (phi32, phi64):
        assert (phi[[2, 4, 6]] == 0.0).all(), phi[[2, 4, 6]]
    np.testing.assert_allclose(phi32[[1, 3, 5, 7]], phi64[[1, 3, 5, 7]], rtol=1e-6)
    h = np.abs(f[1] - f[0]) / 2
    expected = np.array([h, -(2 ** (1 / 4)) * h, 16 ** (1 / 6) * h, -(272 ** (1 / 8)) * h])
    np.testing.assert_allclose(phi64[[1, 3, 5, 7]], expected, rtol=1e-14)
    np.testing.assert_allclose(phi64[0], f.mean(0), rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_exact_key(inputs, expected_pypi, dtype):
    """Anchor key computed by rational arithmetic: atol 1e-6 on the signed roots, its 18 exact zeros exactly (float32
    features: the same zeros, values to 1e-4)."""
    x, sizes = inputs["cumulant_feats"], inputs["cumulant_sizes"]
    expected = np.asarray(expected_pypi["cumulants"][EXACT_KEY])
    assert (expected == 0).sum() == 18
    with jax.enable_x64(dtype == np.float64):
        ours = np.asarray(cumulant_descriptors(x.astype(dtype), sizes, order=8))
    assert ours.dtype == dtype and ours.shape == expected.shape
    np.testing.assert_array_equal(ours == 0, expected == 0)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6 if dtype == np.float64 else 1e-4)


def test_offset_features_keep_small_spread():
    """A large common offset must not leak into the cumulants. Six atoms at 1e6 + 0.1 + O(1e-3), symmetric about a
    centre that is not a float: the float64 mean is rounded (checked), the shift is corrected by the first moment
    about it, so κ3, κ5, κ7 are exactly 0 and the even orders exact to 1e-6·u_k."""
    a = 1e6 + 0.1
    b = a + 2.0**-10 + np.spacing(a)  # odd number of ulps apart: (a + b)/2 is not representable
    x = np.array([a, b, a - 2.0**-9, b + 2.0**-9, a, b])[:, None]
    sizes = np.array([6])
    ex_kappa, ex_scale = exact_cumulants(x, sizes)
    assert Fraction(float(x.mean())) != ex_kappa[0][0][0]  # the mean is not exact in float64
    phi = np.asarray(cumulant_descriptors(x, sizes)).reshape(8)
    for k in range(1, 9):
        exact = ex_kappa[0][k - 1][0]
        assert (exact == 0) == (k in (3, 5, 7))
        if exact == 0:
            assert phi[k - 1] == 0.0, (k, phi[k - 1])
        else:
            assert abs(phi[k - 1] - exact_signed_root(exact, k)) <= 1e-6 * unit(ex_scale[0][k - 1][0], k), k


def test_jit_and_grad_with_x64_off():
    """The float64 moments are also used when traced (jit, grad) with jax_enable_x64 off; results stay float32."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 2)).astype(np.float32)
    sizes = np.array([2, 3, 4])
    with jax.enable_x64(False):
        eager = cumulant_descriptors(x, sizes)
        jitted = jax.jit(lambda a: cumulant_descriptors(a, sizes))(x)
        grad = jax.grad(lambda a: cumulant_descriptors(a, sizes).sum())(x)
    assert eager.dtype == jitted.dtype == grad.dtype == np.float32
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
    assert (np.asarray(jitted).reshape(3, 8, 2)[0, [2, 4, 6]] == 0).all()  # the two-atom structure, traced
    grad64 = jax.grad(lambda a: cumulant_descriptors(a, sizes).sum())(x.astype(np.float64))
    np.testing.assert_allclose(grad, grad64, rtol=1e-4, atol=1e-5)
