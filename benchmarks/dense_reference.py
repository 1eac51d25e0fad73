"""Dense numpy ports of platonic-rep's kernel and kNN alignment algorithms: the benchmark anchor.

platonic-rep's ``metrics.py`` (Huh et al. 2024, "The Platonic Representation Hypothesis", commit dcd76ba) needs
torch; these functions follow its algorithms step for step in numpy — dense N x N kernels K = X Xᵀ, L = Y Yᵀ,
dense top-k masks scattered into N x N arrays, dense HSIC with N x N matrix products (O(N³) time, O(N²) memory) —
so the benchmarks can time the anchor's approach side by side with jaxalign on the same arrays, and the tests can
check that the port reproduces ``expected_platonic.json``. They compute in the input's float dtype (float32 or
float64). Written for jaxalign from the published algorithm; not a copy of platonic-rep's code.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

__all__ = ["cka", "cknna", "hsic_biased", "hsic_unbiased", "mutual_knn"]


def _float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """trace(K H L H), H = I − 11ᵀ/n (no 1/(n−1)² factor, as in platonic-rep)."""
    n = k.shape[0]
    h = np.eye(n, dtype=k.dtype) - k.dtype.type(1.0 / n)
    return np.trace(k @ h @ l @ h)


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. (2012) eq. 5: [Σ K̃∘L̃ᵀ + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2·1ᵀK̃L̃1/(n−2)] / (n(n−3))."""
    m = k.shape[0]
    kt = k.copy()
    lt = l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    value = (kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2 * (kt @ lt).sum() / (m - 2)
    return value / (m * (m - 3))


def cka(x: np.ndarray, y: np.ndarray, kernel: str = "ip", sigma: float = 1.0, unbiased: bool = False) -> float:
    """HSIC(K, L) / (sqrt(HSIC(K, K)·HSIC(L, L)) + 1e-6) with dense kernels."""
    x, y = _float(x), _float(y)
    if kernel == "ip":
        k, l = x @ x.T, y @ y.T  # noqa: E741
    elif kernel == "rbf":

        def rbf(a: np.ndarray) -> np.ndarray:
            d2 = cdist(a, a, "sqeuclidean").astype(a.dtype)
            return np.exp(-d2 / (2 * sigma**2))

        k, l = rbf(x), rbf(y)  # noqa: E741
    else:
        raise ValueError(f"`kernel` must be 'ip' or 'rbf', got {kernel!r}.")
    hsic = hsic_unbiased if unbiased else hsic_biased
    return hsic(k, l) / (np.sqrt(hsic(k, k) * hsic(l, l)) + 1e-6)


def _topk_mask(s: np.ndarray, topk: int) -> np.ndarray:
    """Dense 0/1 mask with ones at the ``topk`` largest entries of every row (the scatter of torch.topk)."""
    n = s.shape[0]
    idx = np.argpartition(-s, topk - 1, axis=1)[:, :topk]
    mask = np.zeros((n, n), dtype=s.dtype)
    mask[np.arange(n)[:, None], idx] = 1
    return mask


def cknna(x: np.ndarray, y: np.ndarray, topk: int | None = None, unbiased: bool = True) -> float:
    """platonic-rep CKNNA: HSIC of the kernels masked by mutual top-k neighbourhoods, normalised like CKA.

    Top-k by inner product, with the diagonal set to −inf first when ``unbiased`` (self excluded); mask = M_K ∘ M_L;
    sim(K, L) = HSIC(mask∘K, mask∘L) (unbiased HSIC when ``unbiased`` else biased);
    CKNNA = sim(K, L) / (sqrt(sim(K, K)·sim(L, L)) + 1e-6). ``topk=None`` means N − 1.
    """
    x, y = _float(x), _float(y)
    n = x.shape[0]
    topk = n - 1 if topk is None else topk
    if topk < 2:
        raise ValueError("CKNNA requires topk >= 2")
    k, l = x @ x.T, y @ y.T  # noqa: E741
    hsic = hsic_unbiased if unbiased else hsic_biased

    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        if unbiased:
            a_hat, b_hat = a.copy(), b.copy()
            np.fill_diagonal(a_hat, -np.inf)
            np.fill_diagonal(b_hat, -np.inf)
        else:
            a_hat, b_hat = a, b
        mask = _topk_mask(a_hat, topk) * _topk_mask(b_hat, topk)
        return hsic(mask * a, mask * b)

    sim_kl = similarity(k, l)
    sim_kk = similarity(k, k)
    sim_ll = similarity(l, l)
    return sim_kl / (np.sqrt(sim_kk * sim_ll) + 1e-6)


def mutual_knn(x: np.ndarray, y: np.ndarray, topk: int) -> float:
    """platonic-rep mutual kNN: mean over rows of |topk_X(i) ∩ topk_Y(i)| / k.

    Neighbours are the top-k inner products after filling the diagonal of X Xᵀ with −1e8; the overlap is the row
    sum of the product of the two dense masks.
    """
    x, y = _float(x), _float(y)

    def mask(a: np.ndarray) -> np.ndarray:
        s = a @ a.T
        np.fill_diagonal(s, -1e8)
        return _topk_mask(s, topk)

    acc = (mask(x) * mask(y)).sum(axis=1) / topk
    return acc.mean()
