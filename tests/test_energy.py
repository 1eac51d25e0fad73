"""Energy regression MAE (SPEC §11, seed 000 eqs. 1–4): numpy least squares and invariance properties.

There is no anchor value for this metric; the tests check it against an explicit numpy computation of the
definition and against properties that follow from it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign.energy import composition_matrix, energy_regression_mae


def numpy_mae(e_true: np.ndarray, e_pred: np.ndarray, comp: np.ndarray) -> float:
    """Definition, step by step: two separate least-squares fits E ≈ wᵀc + b, residuals, mean |difference|."""
    design = np.column_stack([comp, np.ones(len(comp))])
    fit_true = design @ np.linalg.lstsq(design, e_true, rcond=None)[0]
    fit_pred = design @ np.linalg.lstsq(design, e_pred, rcond=None)[0]
    return float(np.mean(np.abs((e_true - fit_true) - (e_pred - fit_pred))))


def dataset(n: int, n_elements: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    comp = rng.integers(0, 6, size=(n, n_elements)).astype(float)
    per_element = rng.normal(-3.0, 1.5, size=n_elements)
    e_true = comp @ per_element + 0.2 * rng.normal(size=n)
    return comp, e_true, rng.normal(size=n)


def test_composition_matrix_counts():
    numbers = np.array([1, 1, 8, 6, 1, 1, 1, 1, 8, 8, 1, 6, 8])  # H2O, CH4, O2, HCO
    comp, elements = composition_matrix(numbers, [3, 5, 2, 3])
    assert elements == (1, 6, 8)
    np.testing.assert_array_equal(comp, [[2, 0, 1], [4, 1, 0], [0, 0, 2], [1, 1, 1]])
    comp, elements = composition_matrix(numbers, [3, 5, 2, 3], elements=[8, 1, 6, 7])
    assert elements == (8, 1, 6, 7)
    np.testing.assert_array_equal(comp, [[1, 2, 0, 0], [0, 4, 1, 0], [2, 0, 0, 0], [1, 1, 1, 0]])
    assert comp.dtype == jnp.result_type(float)


@pytest.mark.parametrize(
    ("numbers", "n_atoms", "elements", "match"),
    [
        ([1, 1, 8], [2, 2], None, "`n_atoms`"),
        ([1, 1, 8], [3, 0], None, "`n_atoms`"),
        ([1, 1, 8], [3], [1, 6], r"`numbers` contains element\(s\) \[8\]"),
        ([1.5, 1, 8], [3], None, "`numbers`"),
        ([[1, 1, 8]], [3], None, "`numbers`"),
        ([1, 1, 8], [3], [1, 1, 8], "`elements`"),
    ],
)
def test_composition_matrix_bad_input(numbers, n_atoms, elements, match):
    with pytest.raises(ValueError, match=match):
        composition_matrix(numbers, n_atoms, elements)


def test_matches_numpy_definition():
    comp, e_true, noise = dataset(60, 4, seed=0)
    e_pred = e_true + 0.3 * noise + 0.01 * e_true**2
    np.testing.assert_allclose(energy_regression_mae(e_true, e_pred, comp), numpy_mae(e_true, e_pred, comp), rtol=1e-10)


def test_several_models_vectorised():
    comp, e_true, noise = dataset(50, 3, seed=1)
    models = np.column_stack([e_true + noise, e_true - 2 * noise, e_true + comp @ [1.0, -2.0, 0.5] + 3.0, noise])
    mae = energy_regression_mae(e_true, models, comp)
    assert mae.shape == (4,)
    expected = [numpy_mae(e_true, models[:, m], comp) for m in range(4)]
    np.testing.assert_allclose(mae, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mae[1], 2 * mae[0], rtol=1e-10)  # ΔE is linear in the predictions


def test_rank_deficient_composition():
    """Every structure has the same number of atoms: the columns of [C, 1] are dependent; residuals are unique."""
    rng = np.random.default_rng(2)
    a = rng.integers(0, 9, size=40)
    comp = np.column_stack([a, 8 - a]).astype(float)
    e_true = comp @ [-2.0, -5.0] + rng.normal(size=40)
    e_pred = e_true + rng.normal(size=40)
    np.testing.assert_allclose(energy_regression_mae(e_true, e_pred, comp), numpy_mae(e_true, e_pred, comp), rtol=1e-10)


@settings(max_examples=10, deadline=None)
@given(
    n=st.integers(8, 40),
    n_elements=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    shift=st.floats(-50, 50),
    weights=st.lists(st.floats(-10, 10), min_size=4, max_size=4),
)
def test_composition_linear_offsets_are_invisible(n, n_elements, seed, shift, weights):
    """E_pred = E_true + wᵀc + b scores 0 for any w, b; adding noise scores > 0 and the MAE is never negative."""
    comp, e_true, noise = dataset(n, n_elements, seed)
    offset = comp @ np.asarray(weights[:n_elements]) + shift
    scale = 1.0 + np.abs(e_true).max() + np.abs(offset).max()
    assert float(energy_regression_mae(e_true, e_true + offset, comp)) <= 1e-10 * scale
    noisy = energy_regression_mae(e_true, e_true + offset + noise, comp)
    assert float(noisy) >= 0.0
    np.testing.assert_allclose(noisy, numpy_mae(e_true, e_true + offset + noise, comp), rtol=1e-8, atol=1e-10 * scale)


def test_float32_close_to_float64():
    comp, e_true, noise = dataset(80, 3, seed=3)
    e_pred = e_true + 0.5 * noise
    m64 = energy_regression_mae(e_true, e_pred, comp)
    m32 = energy_regression_mae(e_true.astype(np.float32), e_pred.astype(np.float32), comp.astype(np.float32))
    assert m32.dtype == jnp.float32
    np.testing.assert_allclose(m32, m64, rtol=1e-4)


def test_bad_inputs():
    comp, e_true, noise = dataset(10, 3, seed=4)
    with pytest.raises(ValueError, match="`e_pred` has 9 structures"):
        energy_regression_mae(e_true, e_true[:9], comp)
    with pytest.raises(ValueError, match="`composition` has 9 rows"):
        energy_regression_mae(e_true, noise, comp[:9])
    with pytest.raises(ValueError, match="`e_pred` contains NaN"):
        energy_regression_mae(e_true, np.where(np.arange(10) == 2, np.nan, noise), comp)
    with pytest.raises(ValueError, match="`e_true` contains NaN"):
        energy_regression_mae(np.where(np.arange(10) == 2, np.inf, e_true), noise, comp)
    with pytest.raises(ValueError, match="`e_true` must be 1-D"):
        energy_regression_mae(e_true[:, None], noise, comp)
    with pytest.raises(ValueError, match="more structures than elements"):
        energy_regression_mae(e_true[:4], noise[:4], comp[:4])
    with pytest.raises(ValueError, match="`composition`"):
        energy_regression_mae(e_true, noise, comp[:, 0])
