"""I_d Cor (Basile et al. 2025) against an independent numpy evaluation of its definition, and its behaviour at the
two ends (independent and functionally dependent representations) and on bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from jaxalign.metrics import id_correlation


def _twonn_reference(x: np.ndarray, fraction: float = 0.9) -> float:
    """TwoNN by its definition (Facco et al. 2017; the I_d Cor authors' linear fit through the origin)."""
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    r = np.sort(d, axis=1)[:, :2]
    mu = np.sort(r[:, 1] / r[:, 0])
    n = mu.size
    keep = int(np.floor(n * fraction))
    xs = np.log(mu[:keep])
    ys = -np.log(1.0 - np.arange(1, keep + 1) / n)
    return float(xs @ ys / (xs @ xs))


def _prepare(x: np.ndarray) -> np.ndarray:
    x = (x - x.mean(0)) / x.std(0, ddof=1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _views(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: 3-d latent embedded nonlinearly in 12 dims; y: another nonlinear view of the same latent; z: independent."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    x = np.tanh(latent @ rng.normal(size=(3, 12)))
    y = np.sin(latent @ rng.normal(size=(3, 8)))
    z = np.tanh(rng.normal(size=(n, 3)) @ rng.normal(size=(3, 8)))
    return x, y, z


def test_values_follow_the_definition():
    x, y, _ = _views()
    got = id_correlation(x, y, draws=0)
    px, py = _prepare(x), _prepare(y)
    ix, iy = _twonn_reference(px), _twonn_reference(py)
    ixy = _twonn_reference(np.concatenate([px, py], axis=1))
    assert got.id_x == pytest.approx(ix, rel=1e-6)
    assert got.id_y == pytest.approx(iy, rel=1e-6)
    assert got.id_joint == pytest.approx(ixy, rel=1e-6)
    assert got.corr == pytest.approx((ix + iy - ixy) / max(ix, iy), rel=1e-6)
    assert np.isnan(got.p_value) and got.null.shape == (0,)


def test_shared_latent_is_correlated_and_significant_independent_is_not():
    x, y, z = _views()
    shared = id_correlation(x, y, draws=19, seed=1)
    independent = id_correlation(x, z, draws=19, seed=1)
    # TwoNN underestimates the joint dimension of independent views at this N (I_xy < I_x + I_y), so their I_d Cor
    # is not 0: the permutation null is what tells them apart
    assert shared.corr > independent.corr + 0.3
    assert shared.p_value == pytest.approx(1 / 20)  # no permutation is as low-dimensional as the real pairing
    assert independent.p_value > 0.05
    assert abs(independent.id_joint - independent.null_mean) < 2 * independent.null_std
    assert shared.null.shape == (19,) and shared.null_mean > shared.id_joint
    assert id_correlation(x, x[:, ::-1], draws=0).corr == pytest.approx(1.0, abs=0.05)  # one determines the other


def test_seeded_and_float32_close_to_float64():
    x, y, _ = _views(300)
    a = id_correlation(x, y, draws=5, seed=3)
    b = id_correlation(x, y, draws=5, seed=3)
    np.testing.assert_array_equal(a.null, b.null)
    c = id_correlation(x.astype(np.float32), y.astype(np.float32), draws=0)
    assert c.corr == pytest.approx(a.corr, abs=1e-4)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.zeros((10, 3)) + np.arange(10)[:, None], np.ones((9, 2))), {}, "same N"),
        ((np.random.default_rng(0).normal(size=(10, 3)),) * 2, {"draws": -1}, "draws"),
        ((np.full((10, 3), np.nan), np.ones((10, 2))), {}, "`x`"),
    ],
)
def test_bad_input_names_the_argument(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        id_correlation(*args, **kwargs)
