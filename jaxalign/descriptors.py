"""Structure-level descriptors from per-atom features: signed-root cumulants (SPEC §7).

A structure S owns the atom environments ξ_i (rows of a per-atom feature array). Its descriptor summarises the
distribution of those rows feature by feature (seed 003: Bhattacharjee et al., "Comparing the latent features of
universal machine-learning interatomic potentials", §III F and SI XII, eqs. 11–19 and S1–S9):

  mean ξ̄ = mean_i ξ_i, population central moments μ_k = mean_i (ξ_i − ξ̄)^k (elementwise),

  κ1 = ξ̄,  κ2 = μ2,  κ3 = μ3,  κ4 = μ4 − 3μ2²,  κ5 = μ5 − 10μ2μ3,  κ6 = μ6 − 15μ2μ4 − 10μ3² + 30μ2³,
  κ7 = μ7 − 21μ2μ5 − 35μ3μ4 + 210μ3μ2²,
  κ8 = μ8 − 28μ2μ6 − 56μ3μ5 − 35μ4² + 420μ4μ2² + 560μ3²μ2 − 630μ2⁴,

and the signed root κ̃k = sign(κk)·|κk|^(1/k) puts every order on the scale of the features. The descriptor of
order M is φ(M) = [κ̃1, …, κ̃M] concatenated, shape (order·d,); φ(1) is mean pooling.

Ragged batches are handled with segment ids built from ``n_atoms`` (atoms of a structure are stored consecutively):
one ``segment_sum`` pass for the means, one for the central powers, no Python loop over structures. On several
devices the *atoms* are split evenly across them (``shard_map``); each device reduces its rows into partial
per-structure sums and a ``psum`` adds them, so load balance does not depend on structure sizes.

Conditioning: the signed root has an infinite slope at 0, so a cumulant that is zero in exact arithmetic (every odd
order of a symmetric distribution, e.g. any two-atom structure) becomes |rounding error|^(1/k) after the root. In
float32 that can reach ~0.1·σ at order 7; compare raw :func:`cumulants` (scaled by σ^k), not descriptors, when
checking precision. The root's gradient is defined as 0 where κ = 0.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxalign._checks import as_features, is_concrete
from jaxalign.preprocessing import mean_pool
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


def _kappas(mean: jax.Array, mu: dict[int, jax.Array], order: int) -> list[jax.Array]:
    """κ1..κ_order from the mean and central moments μ2..μ_order (seed 003 eqs. S1–S9)."""
    formulas = {
        2: lambda: mu[2],
        3: lambda: mu[3],
        4: lambda: mu[4] - 3 * mu[2] ** 2,
        5: lambda: mu[5] - 10 * mu[2] * mu[3],
        6: lambda: mu[6] - 15 * mu[2] * mu[4] - 10 * mu[3] ** 2 + 30 * mu[2] ** 3,
        7: lambda: mu[7] - 21 * mu[2] * mu[5] - 35 * mu[3] * mu[4] + 210 * mu[3] * mu[2] ** 2,
        8: lambda: (
            mu[8]
            - 28 * mu[2] * mu[6]
            - 56 * mu[3] * mu[5]
            - 35 * mu[4] ** 2
            + 420 * mu[4] * mu[2] ** 2
            + 560 * mu[3] ** 2 * mu[2]
            - 630 * mu[2] ** 4
        ),
    }
    return [mean] + [formulas[k]() for k in range(2, order + 1)]


def _central_power_sums(x: jax.Array, seg: jax.Array, mean: jax.Array, num_segments: int, order: int) -> jax.Array:
    """Σ_{i∈S} (ξ_i − ξ̄_S)^k for k = 2..order: (num_segments, order − 1, d). Powers are formed on the fly."""
    centred = x - mean[seg]
    power = centred
    sums = [jnp.zeros((num_segments, 0, x.shape[1]), x.dtype)]
    for _ in range(2, order + 1):
        power = power * centred
        sums.append(jax.ops.segment_sum(power, seg, num_segments, indices_are_sorted=True)[:, None])
    return jnp.concatenate(sums, axis=1)


def _moments_sharded(x: jax.Array, seg: jax.Array, num_segments: int, order: int, mesh: Mesh) -> tuple[Any, Any]:
    """Per-structure sums Σξ and Σ(ξ − ξ̄)^k with the atom rows split over the devices of ``mesh``."""
    axis = mesh.axis_names[0]
    n_dev = mesh.devices.size
    pad = -x.shape[0] % n_dev
    # Padded rows belong to an extra segment (index num_segments) that is dropped at the end.
    x = jnp.pad(x, ((0, pad), (0, 0)))
    seg = jnp.pad(seg, (0, pad), constant_values=num_segments)
    counts = jax.ops.segment_sum(jnp.ones_like(seg, dtype=x.dtype), seg, num_segments + 1, indices_are_sorted=True)
    counts = jnp.maximum(counts, 1)[:, None]

    def local(x_loc: jax.Array, seg_loc: jax.Array, counts: jax.Array) -> tuple[jax.Array, jax.Array]:
        total = jax.ops.segment_sum(x_loc, seg_loc, num_segments + 1, indices_are_sorted=True)
        mean = jax.lax.psum(total, axis) / counts
        power_sums = _central_power_sums(x_loc, seg_loc, mean, num_segments + 1, order)
        return mean, jax.lax.psum(power_sums, axis)

    mean, power_sums = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(axis), PartitionSpec(axis), PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec()),
        check_vma=False,
    )(x, seg, counts)
    return mean[:num_segments], power_sums[:num_segments]


@functools.partial(jax.jit, static_argnames=("order", "mesh"))
def _cumulants_core(x: jax.Array, n_atoms: jax.Array, *, order: int, mesh: Mesh | None) -> jax.Array:
    num_segments = n_atoms.shape[0]
    seg = segment_ids(n_atoms, x.shape[0])
    counts = n_atoms.astype(x.dtype)[:, None, None]
    if mesh is None or mesh.devices.size == 1:
        mean = mean_pool(x, seg, num_segments)
        power_sums = _central_power_sums(x, seg, mean, num_segments, order)
    else:
        mean, power_sums = _moments_sharded(x, seg, num_segments, order, mesh)
    moments = power_sums / counts
    mu = {k: moments[:, k - 2] for k in range(2, order + 1)}
    return jnp.stack(_kappas(mean, mu, order), axis=1)


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
    """Per-structure cumulants κ1..κ_order of every feature: (n_structures, order, d).

    κ1 is the mean, κ2..κ8 follow seed 003 eqs. S1–S9 from population central moments (module docstring).

    Args:
      atom_features: (n_atoms_total, d) per-atom features, atoms of each structure stored consecutively.
      n_atoms: (n_structures,) int, atoms per structure (each ≥ 1, summing to n_atoms_total).
      order: highest cumulant order, 1..8.
      mesh: a 1-D mesh whose devices split the atom rows, ``"auto"`` (all devices when there are several) or None.
    """
    order = _check_order(order)
    x = as_features(atom_features, "atom_features", min_rows=1)
    counts = _check_n_atoms(n_atoms, x.shape[0])
    return _cumulants_core(x, counts, order=order, mesh=resolve_mesh(mesh))


def cumulant_descriptors(
    atom_features: Any, n_atoms: Any, *, order: int = MAX_ORDER, mesh: Mesh | str | None = "auto"
) -> jax.Array:
    """Signed-root cumulant descriptor φ(order) = [κ̃1, …, κ̃_order] per structure: (n_structures, order·d).

    κ̃k = sign(κk)·|κk|^(1/k) (seed 003 eq. 19), blocks of d columns in order 1..order; φ(M) is the prefix of
    φ(M+1) and φ(1) is mean pooling. Arguments as for :func:`cumulants`.
    """
    kappa = cumulants(atom_features, n_atoms, order=order, mesh=mesh)
    return _signed_roots(kappa)


@jax.jit
def _signed_roots(kappa: jax.Array) -> jax.Array:
    n_structures, order, d = kappa.shape
    blocks = [signed_root(kappa[:, k - 1], k) for k in range(1, order + 1)]
    return jnp.concatenate(blocks, axis=1).reshape(n_structures, order * d)
