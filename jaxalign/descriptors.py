"""Structure-level descriptors from per-atom features: signed-root cumulants (SPEC §7).

A structure S owns the atom environments ξ_i (rows of a per-atom feature array). Its descriptor summarises the
distribution of those rows feature by feature (seed 003: Chorna, Tisi, Malosso, How, Ceriotti & Chong, "Comparing
the latent features of universal machine-learning interatomic potentials", §III F and SI XII, eqs. 11–19 and
S1–S9):

  mean ξ̄ = mean_i ξ_i, population central moments μ_k = mean_i (ξ_i − ξ̄)^k (elementwise),

  κ1 = ξ̄,  κ2 = μ2,  κ3 = μ3,  κ4 = μ4 − 3μ2²,  κ5 = μ5 − 10μ2μ3,  κ6 = μ6 − 15μ2μ4 − 10μ3² + 30μ2³,
  κ7 = μ7 − 21μ2μ5 − 35μ3μ4 + 210μ3μ2²,
  κ8 = μ8 − 28μ2μ6 − 56μ3μ5 − 35μ4² + 420μ4μ2² + 560μ3²μ2 − 630μ2⁴,

and the signed root κ̃k = sign(κk)·|κk|^(1/k) puts every order on the scale of the features. The descriptor of
order M is φ(M) = [κ̃1, …, κ̃M] concatenated, shape (order·d,); φ(1) is mean pooling.

Ragged batches are handled with segment ids built from ``n_atoms`` (atoms of a structure are stored consecutively):
one ``segment_sum`` pass for the means, then one loop over chunks of atom rows that scatter-adds the powers
(ξ_i − a)^1..(ξ_i − a)^K' into per-structure sums, no Python loop over structures. On several devices the *atoms* are
split evenly across them (``shard_map``); each device reduces its rows into partial per-structure sums and a ``psum``
adds them, so load balance does not depend on structure sizes.

Precision. Moments are accumulated in float64 whatever the input dtype and the global ``jax_enable_x64`` setting (the
computation runs under ``jax.enable_x64``; float32 values are exact in float64); the cumulants and their roots are
formed in float64 and only the result is cast back to the features' dtype. Per structure and feature the shift a is
the float64 mean rounded to the input dtype (for float32 input ξ − a is then exact in float64 unless their magnitudes
differ by more than a factor ~2^29), the raw moments m_j = mean (ξ_i − a)^j are summed for j = 1..K' (K' = order
rounded up to even), the first one refines the mean, κ1 = a + m1, and the central moments follow by the binomial shift
μ_j = Σ_i C(j,i) m_{j−i} (−m1)^i, so that the rounding of the mean never enters the higher cumulants.

Round-off and exact zeros. The signed root has an infinite slope at 0: a cumulant that is zero in exact arithmetic
(every odd order of a symmetric distribution, e.g. any two-atom structure) would come out as |rounding error|^(1/k),
up to ~0.1·σ at order 7 in float32. Every κk (k ≥ 2) whose computed magnitude is at most its round-off bound

  B_k = 2k(n + 6)(1 + ρ)^k · u · T_k,   T_k = Σ_t |c_t| Π_{j∈t} ν_j,   u = 2^−53,

is therefore set to exactly 0 (so is its root). Here κk = Σ_t c_t Π_{j∈t} μ_j are the terms above and T_k is the sum
of their absolute values, with ν_j ≥ mean |ξ_i − a|^j (ν_j = m_j for even j; ν_j = (ν_{j−1} ν_{j+1})^½ for odd j by
Cauchy–Schwarz), n the number of atoms and ρ = |m1| / m2^½ ≤ 1 (the shift error in units of the spread; ≈ 0).

Derivation, to first order in u: each power (ξ_i − a)^j carries a relative error ≤ (2j − 1)u (centring and j − 1
products), the n-term sum (in any order) adds ≤ (n − 1)u Σ_i |ξ_i − a|^j and the division u, so
|m̂_j − m_j| ≤ (n + 2j − 1)u ν_j; the error of m1 enters μ_j through the binomial shift with weight
≤ j(1 + ρ)^(j−1) ν_j / ν_1 (Lyapunov: ν_1^i ν_{j−i} ≤ ν_j), and evaluating the shift adds ≤ 2(j + 1)u, so
|μ̂_j − μ_j| ≤ (j + 1)(n + 5)(1 + ρ)^j u ν_j. A term of κk has factors with Σ j = k and at most k/2 of them, so its
relative error is ≤ (3k/2)(n + 5)u, plus ≤ (k/2 + 7)u for its products and the ≤ 7-term sum: below 2k(n + 6)u.
Hence |κ̂_k − κ_k| ≤ B_k: a cumulant that is exactly 0 is returned as 0; one that is kept is within B_k of the exact
value for the input numbers; one that is zeroed was within 2·B_k of 0 (its root below (2B_k)^(1/k): ≈ 2e-5·σ at order
3, 0.05–0.07·σ at order 8 for 2–20 atoms). B_k is a worst case; observed errors stay below ~0.1·B_k (tests compare
with exact rational arithmetic). κ1 is never zeroed: its "root" is the identity, so its round-off, ≤ (n + 2)u·mean|ξ|,
is not amplified. The root's gradient is 0 where κ = 0, so zeroed cumulants have gradient 0.

Range: float64 powers of |ξ − ξ̄| up to the 8th stay finite and normal for float32 inputs; raw cumulants cast back to
float32 overflow beyond |ξ − ξ̄| ≈ 6e4 and underflow below ≈ 1e-5 at order 8 (the descriptors, rooted in float64, do
not).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxalign._checks import as_features, is_concrete
from jaxalign.tiling import resolve_mesh

__all__ = ["MAX_ORDER", "cumulant_descriptors", "cumulants", "segment_ids", "signed_root"]

#: Highest cumulant order with a formula (seed 003 eqs. S1–S9).
MAX_ORDER = 8


def signed_root(kappa: jax.Array, k: int) -> jax.Array:
    """sign(κ)·|κ|^(1/k), with value and gradient 0 where κ = 0 (the exact slope there is infinite)."""
    if k == 1:
        return kappa
    nonzero = kappa != 0
    magnitude = jnp.where(nonzero, jnp.abs(kappa), 1.0)
    return jnp.where(nonzero, jnp.sign(kappa) * magnitude ** (1.0 / k), 0.0)


def segment_ids(n_atoms: jax.Array, total: int) -> jax.Array:
    """Structure index of every atom row: ``[0]*n_0 + [1]*n_1 + …`` of static length ``total`` (= Σ n_atoms)."""
    n_atoms = jnp.asarray(n_atoms)
    return jnp.repeat(jnp.arange(n_atoms.shape[0], dtype=jnp.int32), n_atoms, total_repeat_length=total)


# κk = Σ_t coefficient_t · Π_{j∈t} μ_j (seed 003 eqs. S1–S9); one table serves the cumulants and their round-off
# bounds (the same sums with |coefficients| and absolute moments).
_TERMS: dict[int, tuple[tuple[int, tuple[int, ...]], ...]] = {
    2: ((1, (2,)),),
    3: ((1, (3,)),),
    4: ((1, (4,)), (-3, (2, 2))),
    5: ((1, (5,)), (-10, (2, 3))),
    6: ((1, (6,)), (-15, (2, 4)), (-10, (3, 3)), (30, (2, 2, 2))),
    7: ((1, (7,)), (-21, (2, 5)), (-35, (3, 4)), (210, (3, 2, 2))),
    8: (
        (1, (8,)),
        (-28, (2, 6)),
        (-56, (3, 5)),
        (-35, (4, 4)),
        (420, (4, 2, 2)),
        (560, (3, 3, 2)),
        (-630, (2, 2, 2, 2)),
    ),
}

#: Unit round-off of float64, the precision the moments are accumulated in.
_UNIT_ROUNDOFF = 2.0**-53

#: Elements (rows × d) of one chunk of atom rows in the float64 power loop: cache-sized on CPU (measured best at
#: 1024 × 128), larger on accelerators.
_CHUNK_ELEMENTS = {"cpu": 2**17}
_CHUNK_ELEMENTS_DEFAULT = 2**22


def _polynomial(k: int, moments: dict[int, jax.Array], absolute: bool) -> jax.Array:
    """κk from central moments (``absolute=False``), or its conditioning sum T_k = Σ|coefficient|·Π ν_j."""
    total = None
    for coefficient, factors in _TERMS[k]:
        term = functools.reduce(jnp.multiply, [moments[j] for j in factors])
        term = (abs(coefficient) if absolute else coefficient) * term
        total = term if total is None else total + term
    return total


def _power_sums(
    x: jax.Array, seg: jax.Array, shift: jax.Array, num_segments: int, powers: int, chunk: int
) -> jax.Array:
    """Σ_{i∈S} (ξ_i − a_S)^k for k = 1..powers in float64: (num_segments, powers, d).

    The rows are processed in chunks of ``chunk`` (a loop), so the float64 powers never exist for all atoms at once;
    each chunk is scatter-added into the per-structure sums. The last chunk is moved back to end at the last row and
    the rows it shares with the previous chunk contribute 0 (segment ids stay sorted).
    """
    n_rows, d = x.shape
    chunk = max(1, min(chunk, n_rows))
    n_chunks = -(-n_rows // chunk)
    offsets = jnp.arange(chunk)

    def body(i: jax.Array, acc: jax.Array) -> jax.Array:
        start = jnp.minimum(i * chunk, n_rows - chunk)
        rows = jax.lax.dynamic_slice_in_dim(x, start, chunk)
        ids = jax.lax.dynamic_slice_in_dim(seg, start, chunk)
        centred = rows.astype(jnp.float64) - shift[ids].astype(jnp.float64)
        centred = jnp.where((start + offsets >= i * chunk)[:, None], centred, 0.0)
        power = centred
        for k in range(powers):  # one scatter per power: XLA:CPU fuses each power into its scatter (3x faster)
            power = centred if k == 0 else power * centred
            acc = acc.at[ids, k].add(power, indices_are_sorted=True, mode="drop")
        return acc

    init = jnp.zeros((num_segments, powers, d), jnp.float64)
    return jax.lax.fori_loop(0, n_chunks, body, init)


def _shift_and_power_sums(
    x: jax.Array, seg: jax.Array, counts: jax.Array, num_segments: int, powers: int, chunk: int, axis: str | None
) -> tuple[jax.Array, jax.Array]:
    """The per-structure shift a (mean rounded to the input dtype) and the float64 power sums about it.

    With ``axis`` the rows are this device's share and partial sums are added over the mesh axis (``psum``).
    """

    def reduce(v: jax.Array) -> jax.Array:
        return v if axis is None else jax.lax.psum(v, axis)

    total = reduce(jax.ops.segment_sum(x.astype(jnp.float64), seg, num_segments, indices_are_sorted=True))
    shift = (total / counts).astype(x.dtype)
    return shift, reduce(_power_sums(x, seg, shift, num_segments, powers, chunk))


def _moments_sharded(
    x: jax.Array, seg: jax.Array, num_segments: int, powers: int, chunk: int, mesh: Mesh
) -> tuple[Any, Any]:
    """:func:`_shift_and_power_sums` with the atom rows split over the devices of ``mesh``."""
    axis = mesh.axis_names[0]
    n_dev = mesh.devices.size
    pad = -x.shape[0] % n_dev
    # Padded rows belong to an extra segment (index num_segments) that is dropped at the end.
    x = jnp.pad(x, ((0, pad), (0, 0)))
    seg = jnp.pad(seg, (0, pad), constant_values=num_segments)
    counts = jax.ops.segment_sum(jnp.ones_like(seg, dtype=jnp.float64), seg, num_segments + 1, indices_are_sorted=True)
    counts = jnp.maximum(counts, 1)[:, None]

    def local(x_loc: jax.Array, seg_loc: jax.Array, counts: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _shift_and_power_sums(x_loc, seg_loc, counts, num_segments + 1, powers, chunk, axis)

    shift, power_sums = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(axis), PartitionSpec(axis), PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )(x, seg, counts)
    return shift[:num_segments], power_sums[:num_segments]


def _cumulants_from_power_sums(shift: jax.Array, power_sums: jax.Array, n_atoms: jax.Array, order: int) -> jax.Array:
    """κ1..κ_order (float64) from the sums Σ(ξ − a)^k, with every κk (k ≥ 2) inside its round-off bound set to 0."""
    n = n_atoms.astype(jnp.float64)[:, None]
    m = {j: power_sums[:, j - 1] / n for j in range(1, power_sums.shape[1] + 1)}
    delta = m[1]
    mean = shift.astype(jnp.float64) + delta
    if order == 1:
        return mean[:, None]
    # Central moments by the binomial shift from a to the mean: μj = Σ_i C(j,i) m_{j−i} (−δ)^i, where the last two
    # terms combine to (1 − j)(−δ)^j because m1 = δ.
    neg = [jnp.ones_like(delta), -delta]
    for _ in range(2, order + 1):
        neg.append(neg[-1] * neg[1])
    mu = {}
    for j in range(2, order + 1):
        total = m[j]
        for i in range(1, j - 1):
            total = total + math.comb(j, i) * m[j - i] * neg[i]
        mu[j] = total + (1 - j) * neg[j]
    # Round-off bound (module docstring): B_k = 2k(n + 6)(1 + ρ)^k · u · T_k with absolute moments ν about a.
    m = {j: jax.lax.stop_gradient(v) for j, v in m.items()}
    nu = {j: m[j] for j in m if j % 2 == 0}
    for j in range(3, order + 1, 2):
        nu[j] = jnp.sqrt(nu[j - 1] * nu[j + 1])  # Cauchy–Schwarz: mean|c|^j ≤ sqrt(mean c^(j−1) · mean c^(j+1))
    positive = m[2] > 0
    rho = jnp.where(positive, jnp.abs(m[1]) / jnp.sqrt(jnp.where(positive, m[2], 1.0)), 0.0)
    rho = jnp.minimum(rho, 1.0)
    kappas = [mean]
    for k in range(2, order + 1):
        kappa = _polynomial(k, mu, absolute=False)
        bound = 2 * k * (n + 6) * (1 + rho) ** k * _UNIT_ROUNDOFF * _polynomial(k, nu, absolute=True)
        kappas.append(jnp.where(jnp.abs(kappa) <= bound, 0.0, kappa))
    return jnp.stack(kappas, axis=1)


def _n_powers(order: int) -> int:
    """Power sums needed for ``order``: m1 alone for the mean, else rounded up to even, so that every odd absolute
    moment of the round-off bound has its Cauchy–Schwarz neighbour above."""
    return 1 if order == 1 else order + order % 2


@functools.partial(jax.jit, static_argnames=("order", "mesh", "chunk", "roots"))
def _cumulants_core(
    x: jax.Array, n_atoms: jax.Array, *, order: int, mesh: Mesh | None, chunk: int, roots: bool
) -> jax.Array:
    """Cumulants (``roots=False``) or signed roots, computed in float64 and returned in the dtype of ``x``.

    Must be traced with 64-bit types enabled (:func:`_float64_call`)."""
    num_segments = n_atoms.shape[0]
    powers = _n_powers(order)
    seg = segment_ids(n_atoms, x.shape[0])
    if mesh is None or mesh.devices.size == 1:
        counts = n_atoms.astype(jnp.float64)[:, None]
        shift, power_sums = _shift_and_power_sums(x, seg, counts, num_segments, powers, chunk, None)
    else:
        shift, power_sums = _moments_sharded(x, seg, num_segments, powers, chunk, mesh)
    kappa = _cumulants_from_power_sums(shift, power_sums, n_atoms, order)
    out = _signed_roots(kappa) if roots else kappa
    return out.astype(x.dtype)


def _float64_call(x: jax.Array, counts: jax.Array, order: int, mesh: Mesh | str | None, roots: bool) -> jax.Array:
    """Run :func:`_cumulants_core` with 64-bit types enabled whatever the global ``jax_enable_x64`` setting."""
    budget = _CHUNK_ELEMENTS.get(jax.default_backend(), _CHUNK_ELEMENTS_DEFAULT)
    chunk = max(1, budget // x.shape[1])
    mesh = resolve_mesh(mesh)
    with jax.enable_x64(True):
        return _cumulants_core(x, counts, order=order, mesh=mesh, chunk=chunk, roots=roots)


def _check_order(order: int) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= int(order) <= MAX_ORDER:
        raise ValueError(f"`order` must be an integer in 1..{MAX_ORDER} (formulas exist up to κ8), got {order!r}.")
    return int(order)


def _check_n_atoms(n_atoms: Any, n_rows: int) -> jax.Array:
    if n_atoms is None:
        raise ValueError("`n_atoms` is None; pass the number of atoms of every structure, shape (n_structures,).")
    counts = n_atoms if isinstance(n_atoms, jax.Array) else np.asarray(n_atoms)
    if counts.ndim != 1 or counts.shape[0] == 0:
        raise ValueError(
            f"`n_atoms` must be a non-empty 1-D array (one count per structure), got shape {counts.shape}."
        )
    if not jnp.issubdtype(counts.dtype, jnp.integer):
        if not is_concrete(counts) or not bool(np.all(np.asarray(counts) == np.round(np.asarray(counts)))):
            raise ValueError(f"`n_atoms` must hold integers (atoms per structure), got dtype {counts.dtype}.")
        counts = np.asarray(counts).astype(np.int64)
    if is_concrete(counts):
        host = np.asarray(counts)
        if (host < 1).any():
            raise ValueError(
                f"`n_atoms` has {int((host < 1).sum())} structure(s) with fewer than 1 atom; every structure needs "
                "at least one atom row. Drop empty structures first."
            )
        if int(host.sum()) != n_rows:
            raise ValueError(
                f"`n_atoms` sums to {int(host.sum())} but `atom_features` has {n_rows} rows; the counts must add up "
                "to the number of atom rows (atoms of a structure stored consecutively)."
            )
    return jnp.asarray(counts, dtype=jnp.int32)


def cumulants(
    atom_features: Any, n_atoms: Any, *, order: int = MAX_ORDER, mesh: Mesh | str | None = "auto"
) -> jax.Array:
    """Per-structure cumulants κ1..κ_order of every feature: (n_structures, order, d), in the features' dtype.

    κ1 is the mean, κ2..κ8 follow seed 003 eqs. S1–S9 from population central moments (module docstring). The
    moments are accumulated in float64 (also for float32 input and with ``jax_enable_x64`` off) and every κk (k ≥ 2)
    within its round-off bound of 0 is returned as exactly 0 (module docstring, "Round-off and exact zeros"). Raw
    cumulants of float32 features overflow float32 beyond |ξ − ξ̄| ≈ 6e4 and underflow below ≈ 1e-5 at order 8 (use
    the descriptors, whose roots are taken in float64). Works under ``jit`` and ``grad``.

    Args:
      atom_features: (n_atoms_total, d) per-atom features, atoms of each structure stored consecutively.
      n_atoms: (n_structures,) int, atoms per structure (each ≥ 1, summing to n_atoms_total).
      order: highest cumulant order, 1..8.
      mesh: a 1-D mesh whose devices split the atom rows, ``"auto"`` (all devices when there are several) or None.

    Raises:
      ValueError: ``order`` outside 1..8; ``atom_features`` not a finite 2-D real array; ``n_atoms`` missing, not 1-D
        integers, with a structure of < 1 atom, or not summing to the number of rows.
    """
    order = _check_order(order)
    x = as_features(atom_features, "atom_features", min_rows=1)
    counts = _check_n_atoms(n_atoms, x.shape[0])
    return _float64_call(x, counts, order, mesh, roots=False)


def cumulant_descriptors(
    atom_features: Any, n_atoms: Any, *, order: int = MAX_ORDER, mesh: Mesh | str | None = "auto"
) -> jax.Array:
    """Signed-root cumulant descriptor φ(order) = [κ̃1, …, κ̃_order] per structure: (n_structures, order·d).

    κ̃k = sign(κk)·|κk|^(1/k) (seed 003 eq. 19), blocks of d columns in order 1..order; φ(M) is the prefix of
    φ(M+1) and φ(1) is mean pooling. Cumulants and roots are computed in float64 and returned in the features'
    dtype; cumulants within their round-off bound of 0 give exactly 0 (module docstring). Arguments and errors as for
    :func:`cumulants`.
    """
    order = _check_order(order)
    x = as_features(atom_features, "atom_features", min_rows=1)
    counts = _check_n_atoms(n_atoms, x.shape[0])
    return _float64_call(x, counts, order, mesh, roots=True)


def _signed_roots(kappa: jax.Array) -> jax.Array:
    n_structures, order, d = kappa.shape
    blocks = [signed_root(kappa[:, k - 1], k) for k in range(1, order + 1)]
    return jnp.concatenate(blocks, axis=1).reshape(n_structures, order * d)
