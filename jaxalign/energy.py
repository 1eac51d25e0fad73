"""Energy regression MAE: agreement of energies after removing their composition trend (SPEC §11).

Seed 000 (Edamadaka et al., "Universally converging representations of matter across scientific foundation
models", eqs. 1–4) compares a model's energy predictions E_f with reference energies E on the part that composition
alone does not explain. With c_i the element counts of structure i:

  fit E ≈ wᵀc + b by least squares (reference energies), ΔE = E − (wᵀc + b);
  fit E_f ≈ w_fᵀc + b_f by least squares (each model separately), ΔE_f = E_f − (w_fᵀc + b_f);
  MAE_f = mean_i |ΔE_i − ΔE_f,i|.

Both fits share the design matrix A = [C, 1], so all models are one least-squares solve with several right-hand
sides (the residual is the projection onto the complement of A's column space; a rank-deficient A, e.g. constant
structure size, is handled by the minimum-norm solution and changes no residual). A model whose predictions differ
from E by any linear function of composition scores 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._checks import as_features, as_real_array
from jaxalign.descriptors import segment_ids

__all__ = ["composition_matrix", "energy_regression_mae"]


def composition_matrix(
    numbers: Any, n_atoms: Any, elements: Sequence[int] | None = None
) -> tuple[jax.Array, tuple[int, ...]]:
    """Element counts per structure: ``(C, elements)`` with C[i, e] = atoms of ``elements[e]`` in structure i.

    Args:
      numbers: (n_atoms_total,) int atomic numbers, atoms of each structure stored consecutively.
      n_atoms: (n_structures,) int atoms per structure (each ≥ 1, summing to n_atoms_total).
      elements: the atomic numbers to count, in column order (default: the sorted distinct ``numbers``). An atom
        whose element is not listed is an error.

    Returns:
      C, (n_structures, n_elements) in the default float dtype, and the element tuple.
    """
    z = np.asarray(numbers)
    if z.ndim != 1 or z.size == 0:
        raise ValueError(f"`numbers` must be a non-empty 1-D array of atomic numbers, got shape {z.shape}.")
    if not np.issubdtype(z.dtype, np.integer):
        if not np.issubdtype(z.dtype, np.floating) or not np.all(z == np.round(z)):
            raise ValueError(f"`numbers` must hold integer atomic numbers, got dtype {z.dtype}.")
        z = z.astype(np.int64)
    counts = np.asarray(n_atoms)
    if counts.ndim != 1 or counts.size == 0 or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(
            f"`n_atoms` must be a non-empty 1-D integer array (atoms per structure), got shape {counts.shape} "
            f"and dtype {counts.dtype}."
        )
    if (counts < 1).any() or int(counts.sum()) != z.size:
        raise ValueError(
            f"`n_atoms` must be ≥ 1 per structure and sum to len(numbers) = {z.size}, got a sum of "
            f"{int(counts.sum())} and {int((counts < 1).sum())} empty structure(s)."
        )
    elems = np.unique(z) if elements is None else np.asarray(list(elements), dtype=np.int64)
    if elems.ndim != 1 or elems.size == 0 or np.unique(elems).size != elems.size:
        raise ValueError(f"`elements` must be a non-empty list of distinct atomic numbers, got {elements!r}.")
    missing = np.setdiff1d(np.unique(z), elems)
    if missing.size:
        raise ValueError(
            f"`numbers` contains element(s) {missing.tolist()} that are not in `elements`; add them or drop "
            "those structures."
        )
    column = np.searchsorted(np.sort(elems), z)
    column = np.argsort(elems)[column]  # position in the caller's element order
    comp = _counts(jnp.asarray(column, dtype=jnp.int32), jnp.asarray(counts, dtype=jnp.int32), n_elements=elems.size)
    return comp, tuple(int(e) for e in elems)


@functools.partial(jax.jit, static_argnames=("n_elements",))
def _counts(column: jax.Array, n_atoms: jax.Array, *, n_elements: int) -> jax.Array:
    seg = segment_ids(n_atoms, column.shape[0])
    one_hot = jax.nn.one_hot(column, n_elements, dtype=jnp.result_type(float))
    return jax.ops.segment_sum(one_hot, seg, n_atoms.shape[0], indices_are_sorted=True)


def _as_energies(e: Any, name: str, n: int | None) -> jax.Array:
    arr = as_real_array(e, name)
    if arr.ndim not in (1, 2):
        raise ValueError(f"`{name}` must be (n_structures,) or (n_structures, n_models), got shape {arr.shape}.")
    arr2 = as_features(arr[:, None] if arr.ndim == 1 else arr, name, min_rows=1)
    if n is not None and arr2.shape[0] != n:
        raise ValueError(
            f"`{name}` has {arr2.shape[0]} structures but `e_true` has {n}; pass energies of the same structures "
            "in the same order."
        )
    return arr2


@jax.jit
def _mae_core(e_true: jax.Array, e_pred: jax.Array, composition: jax.Array) -> jax.Array:
    design = jnp.concatenate([composition, jnp.ones((composition.shape[0], 1), composition.dtype)], axis=1)
    targets = jnp.concatenate([e_true, e_pred], axis=1)
    coef, *_ = jnp.linalg.lstsq(design, targets)
    delta = targets - design @ coef  # ΔE for the reference (column 0) and for every model
    return jnp.abs(delta[:, :1] - delta[:, 1:]).mean(0)


def energy_regression_mae(e_true: Any, e_pred: Any, composition: Any) -> jax.Array:
    """Seed 000 energy regression MAE: mean |ΔE_true − ΔE_pred| after separate least-squares fits wᵀc + b.

    Args:
      e_true: (n_structures,) reference energies.
      e_pred: (n_structures,) predictions of one model, or (n_structures, n_models) of several.
      composition: (n_structures, n_elements) element counts (:func:`composition_matrix`).

    Returns:
      A scalar MAE for 1-D ``e_pred``, else one MAE per model, (n_models,). Units are those of the energies.
    """
    e_true = as_real_array(e_true, "e_true")
    if e_true.ndim != 1:
        raise ValueError(f"`e_true` must be 1-D (one energy per structure), got shape {e_true.shape}.")
    true2 = _as_energies(e_true, "e_true", None)
    n = true2.shape[0]
    pred_arr = as_real_array(e_pred, "e_pred")
    pred2 = _as_energies(pred_arr, "e_pred", n)
    comp = as_features(composition, "composition", min_rows=1)
    if comp.shape[0] != n:
        raise ValueError(
            f"`composition` has {comp.shape[0]} rows but there are {n} energies; pass one composition row per "
            "structure, in the same order."
        )
    n_params = comp.shape[1] + 1
    if n <= n_params:
        raise ValueError(
            f"{n} structures cannot separate the {n_params} parameters of the composition fit (one per element "
            "and an intercept): the residuals would all be 0. Pass more structures than elements + 1."
        )
    dtype = jnp.result_type(true2.dtype, pred2.dtype, comp.dtype)
    mae = _mae_core(true2.astype(dtype), pred2.astype(dtype), comp.astype(dtype))
    return mae[0] if pred_arr.ndim == 1 else mae
