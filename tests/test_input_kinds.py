"""Input kinds and degenerate inputs (issue 10, kinds 2 and 6): every public function returns the value it gives on the
same numbers as float64 (or, for half precision, float32) numpy arrays, or a ValueError that names the argument.

Conversion rules under test (``jaxalign._checks.as_features``): integers and bools are rounded to float64 by numpy,
then to the working float (float32 by default, float64 under x64), never through int32; float16/bfloat16 become
float32; complex input is refused. Degenerate inputs: a constant embedding in the kNN-overlap metrics and SVCCA, and
equal neighbour distances (a lattice) in TwoNN and MLE, raise. The regression tests are the cases of blocks 2 and 8 of
``../shared/cases/numerics.py``, run as that script runs them: float32, x64 off.
"""

from __future__ import annotations

import re
import warnings

import jax
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxalign as ja
import jaxalign.metrics as M
from jaxalign.energy import energy_regression_mae
from jaxalign.preprocessing import (
    center_scale_total_variance,
    clamp_quantile,
    l2_normalize,
    max_normalize,
    mean_pool,
)
from jaxalign.projection import pcovr

N, DX, DY = 16, 3, 4
LATTICE = np.array([[i, j] for i in range(30) for j in range(30)], float)  # numerics.py block 8


@pytest.fixture
def float32_default():
    """jax's default (x64 off), as numerics.py runs; conftest turns x64 on for the rest of the session."""
    with jax.enable_x64(False):
        yield


# ---------------------------------------------------------------------------------------------------------------------
# Block 2: int64 beyond 2**31


def test_int64_beyond_int32_keeps_sign_and_magnitude(float32_default):
    out = l2_normalize(np.array([[3_000_000_000, 1]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.asarray(out), [[1.0, 1 / 3e9]], rtol=1e-6)


def test_int64_beyond_int32_under_x64_is_float64():
    out = l2_normalize(np.array([[3_000_000_000, 1]]))
    assert out.dtype == np.float64
    np.testing.assert_allclose(np.asarray(out), [[1.0, 1 / 3e9]], rtol=1e-15)


def test_uint64_and_int64_extremes_round_through_float64(float32_default):
    big = np.array([[2**63 - 1, 1], [2**62, -(2**40)]], np.int64)
    np.testing.assert_array_equal(np.asarray(ja.knn(big, 1).values), np.asarray(ja.knn(big.astype(float), 1).values))
    u = np.array([[2**64 - 1, 0], [2**33, 5]], np.uint64)
    np.testing.assert_array_equal(np.asarray(clamp_quantile(u, 1.0)), u.astype(np.float64).astype(np.float32))


def test_jax_and_torch_integer_and_half_inputs(float32_default):
    torch = pytest.importorskip("torch")
    x = np.array([[3_000_000_000, 1], [-7, 2**40]], np.int64)
    want = np.asarray(l2_normalize(x.astype(np.float64)))
    np.testing.assert_array_equal(np.asarray(l2_normalize(torch.from_numpy(x))), want)
    h = np.array([[1.5, -2.0], [60000.0, 3.0]], np.float16)
    for half in (torch.from_numpy(h), torch.from_numpy(h).to(torch.bfloat16), jax.numpy.asarray(h)):
        out = l2_normalize(half)
        assert out.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(l2_normalize(torch.from_numpy(h))), l2_normalize(h.astype(np.float32)))
    with pytest.raises(ValueError, match=r"`x` is complex"):
        l2_normalize(torch.ones(3, 2, dtype=torch.complex64))


# ---------------------------------------------------------------------------------------------------------------------
# Block 8: lattice, constant embedding, complex, half precision


@pytest.mark.parametrize("algorithm", ["base", "ml"])
def test_twonn_lattice_raises(float32_default, algorithm):
    with pytest.raises(ValueError, match=r"`x` has 900 of 900 points .*μ = T_2/T_1 = 1.*general position.*mle_id"):
        M.twonn(LATTICE, algorithm=algorithm)
    with pytest.raises(ValueError, match=r"`graph` has 900 of 900 points"):
        M.twonn(None, algorithm=algorithm, graph=ja.knn(LATTICE, 2, metric="euclidean"))


def test_twonn_lattice_under_jit_returns_nan_as_documented(float32_default):
    g = ja.knn(LATTICE, 2, metric="euclidean")
    assert np.isnan(float(jax.jit(lambda gr: M.twonn(None, graph=gr))(g)))


def _mle_reference(x: np.ndarray, k: int, comb: str) -> float:
    """Levina–Bickel MLE from dense float64 distances (scikit-dimension's formulas)."""
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    t = np.sort(d, axis=1)[:, :k]
    log_sum = np.log(t[:, -1:] / t).sum(1)
    with np.errstate(divide="ignore"):
        m = (k - 1) / log_sum
    return {"mle": (k - 1) / log_sum.mean(), "mean": m.mean(), "median": np.median(m)}[comb]


@pytest.mark.parametrize("comb", ["mle", "mean", "median"])
def test_mle_id_lattice(float32_default, comb):
    # k = 20 spans several distance shells: a finite value, the formula's
    ref = _mle_reference(LATTICE, 20, comb)
    np.testing.assert_allclose(float(M.mle_id(LATTICE, k=20, comb=comb)), ref, rtol=1e-5)
    # k = 3: 896 of 900 points see three neighbours at distance 1, so m_k = 2/0
    if comb == "mle":  # pooled: finite (the 4 corners), as the formula gives
        np.testing.assert_allclose(float(M.mle_id(LATTICE, k=3, comb=comb)), _mle_reference(LATTICE, 3, comb), 1e-5)
    else:
        assert np.isinf(_mle_reference(LATTICE, 3, comb))
        with pytest.raises(ValueError, match=r"`x` has 896 of 900 points whose k=3 nearest .*Raise `k`"):
            M.mle_id(LATTICE, k=3, comb=comb)


def test_every_point_on_equal_distances_raises_for_pooled_mle(float32_default):
    # two far-apart regular tetrahedra: every point's 3 nearest neighbours are at exactly sqrt(8)
    tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    x = np.concatenate([tetra, tetra + 100])
    with pytest.raises(ValueError, match=r"`x` has 8 of 8 points whose k=3 nearest neighbours are all equally far"):
        M.mle_id(x, k=3)
    with pytest.raises(ValueError, match=r"`x` has 8 of 8 points whose first and second nearest"):
        M.twonn(x, algorithm="ml")


OVERLAP = {"mutual_knn": M.mutual_knn, "cycle_knn": M.cycle_knn, "lcs_knn": M.lcs_knn,
           "edit_distance_knn": M.edit_distance_knn}  # fmt: skip


@pytest.mark.parametrize("name", [*OVERLAP, "svcca"])
def test_constant_embedding_raises(float32_default, name):
    other = np.random.default_rng(1234).standard_normal((50, 6)).astype(np.float32)
    const = np.ones((50, 8), np.float32)
    call = (lambda a, b: M.svcca(a, b, q=3)) if name == "svcca" else (lambda a, b: OVERLAP[name](a, b, k=5))
    with pytest.raises(ValueError, match=r"`x` has zero variance \(all rows identical\)"):
        call(const, other)
    with pytest.raises(ValueError, match=r"`y` has zero variance \(all rows identical\)"):
        call(other, const)


@pytest.mark.parametrize("name", OVERLAP)
def test_constant_embedding_graph_is_taken_as_given(float32_default, name):
    const = np.ones((50, 8), np.float32)
    g = ja.knn(const, 5)
    value = float(OVERLAP[name](None, None, k=5, graph_x=g, graph_y=g))
    assert np.isfinite(value)


def test_complex_raises_naming_the_argument(float32_default):
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match=re.escape("`x` is complex; pass real features, e.g. np.abs(x) or")):
        M.cka(x + 1j * x, x)
    with pytest.raises(ValueError, match=r"`y` is complex"):
        M.dcor(x, jax.numpy.asarray(x * 1j))
    with pytest.raises(ValueError, match=r"`features` is complex"):
        mean_pool(x.astype(np.complex64), np.zeros(20, int))


def _half_pair() -> tuple[np.ndarray, np.ndarray]:
    """numerics.py block 8's float16 pair: its generator after the draws of blocks 1–5."""
    rng = np.random.default_rng(0)
    for size in ((300, 4), (300, 6), (6, 20), (20, 1), (300, 32), (300, 1, 32)):
        rng.normal(size=size)
    rng.random((300, 64)), rng.random((300, 32))
    h = (rng.normal(size=(300, 64)) * 30).astype(np.float16)
    return h, (np.tanh(h.astype(float) / 30) * 50).astype(np.float16)


@pytest.mark.parametrize("half", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_cka_dcor_equal_float32(float32_default, half):
    h, h2 = _half_pair()
    h, h2 = h.astype(half), h2.astype(half)
    f, f2 = h.astype(np.float32), h2.astype(np.float32)
    for metric in (M.cka, M.dcor):
        got = metric(h, h2)
        assert got.dtype == np.float32
        assert float(got) == float(metric(f, f2))
    if half == np.float16:  # numerics.py block 8's right values (float32 on the same numbers)
        np.testing.assert_allclose([float(M.cka(h, h2)), float(M.dcor(h, h2))], [0.942294, 0.981328], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Index arguments of preprocessing


def test_fit_rows_and_segment_ids_are_checked():
    x = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(ValueError, match=r"`fit_rows` holds indices outside \[-6, 6\)"):
        center_scale_total_variance(x, fit_rows=[0, 6])
    with pytest.raises(ValueError, match=r"`fit_rows` is a boolean mask of shape \(5,\)"):
        center_scale_total_variance(x, fit_rows=np.ones(5, bool))
    with pytest.raises(ValueError, match=r"`fit_rows` must hold integers"):
        center_scale_total_variance(x, fit_rows=[0.0, 1.0])
    np.testing.assert_allclose(
        center_scale_total_variance(x, fit_rows=np.arange(6) < 3), center_scale_total_variance(x, fit_rows=[0, 1, 2])
    )
    with pytest.raises(ValueError, match=r"`segment_ids` holds ids outside \[0, 2\)"):
        mean_pool(x, np.array([0, 0, 1, 1, 2, 2]), num_segments=2)
    with pytest.raises(ValueError, match=r"`segment_ids` holds ids outside"):
        mean_pool(x, np.array([0, 0, 1, 1, -1, 2]))
    with pytest.raises(ValueError, match=r"`segment_ids` must hold integers"):
        mean_pool(x, np.zeros(6))
    pooled = jax.jit(lambda f, s: mean_pool(f, s, num_segments=2))(x, np.array([0, 0, 0, 1, 1, 1]))
    np.testing.assert_allclose(pooled, [x[:3].mean(0), x[3:].mean(0)])


# ---------------------------------------------------------------------------------------------------------------------
# Property: every public function, every input kind, against the same values as float64 (float32 for half) numpy


def _pair(metric):
    return lambda x, y: metric(x, y)


def _single(fn):
    return lambda x, y: fn(x)


SINGLE = {"twonn", "twonn_ml", "mle_id", "knn", "knn_euclidean", "l2_normalize", "clamp_quantile", "max_normalize",
          "center_scale_total_variance", "mean_pool"}  # fmt: skip
SEGMENTS = np.repeat(np.arange(4), N // 4)
COMPOSITION = np.repeat([[1, 0], [0, 1], [1, 1], [2, 1]], N // 4, axis=0)
FUNCTIONS = {
    "cka": _pair(M.cka),
    "cka_rbf": lambda x, y: M.cka(x, y, kernel="rbf", sigma=1e3),
    "unbiased_cka": _pair(M.unbiased_cka),
    "cknna": lambda x, y: M.cknna(x, y, k=4),
    "cknna_biased": lambda x, y: M.cknna(x, y, k=4, unbiased=False),
    "mutual_knn": lambda x, y: M.mutual_knn(x, y, k=4),
    "cycle_knn": lambda x, y: M.cycle_knn(x, y, k=4),
    "lcs_knn": lambda x, y: M.lcs_knn(x, y, k=4),
    "edit_distance_knn": lambda x, y: M.edit_distance_knn(x, y, k=4),
    "svcca": lambda x, y: M.svcca(x, y, q=2),
    "dcor": _pair(M.dcor),
    "dcor_sqr": _pair(M.dcor_sqr),
    "u_dcor_sqr": _pair(M.u_dcor_sqr),
    "information_imbalance": lambda x, y: M.information_imbalance(x, y, k=2),
    "twonn": _single(M.twonn),
    "twonn_ml": _single(lambda x: M.twonn(x, algorithm="ml")),
    "mle_id": _single(lambda x: M.mle_id(x, k=4)),
    "knn": _single(lambda x: (ja.knn(x, 3).indices, ja.knn(x, 3).values)),
    "knn_euclidean": _single(lambda x: ja.knn(x, 3, metric="euclidean").values),
    "l2_normalize": _single(l2_normalize),
    "clamp_quantile": _single(clamp_quantile),
    "max_normalize": _single(max_normalize),
    "center_scale_total_variance": _single(center_scale_total_variance),
    "mean_pool": _single(lambda x: mean_pool(x, SEGMENTS)),
    "pcovr": lambda x, y: pcovr(x, y[:, 0], n_components=1).eigenvalues,
    "energy_regression_mae": lambda x, y: energy_regression_mae(y[:, 0], x[:, :2], COMPOSITION),
}

INT_SCALES = (1, 3_000_000_000, 2**33 + 1)  # values beyond 2**31 wrap when converted through int32


def _kind_arrays(kind: str, d: int) -> st.SearchStrategy[np.ndarray]:
    """(N, d) arrays of one input kind."""
    shape = (N, d)
    if kind == "int64":
        ints = hnp.arrays(np.int64, shape, elements=st.integers(-50, 50))
        return st.tuples(ints, st.sampled_from(INT_SCALES)).map(lambda t: t[0] * t[1])
    if kind == "int32":
        return hnp.arrays(np.int32, shape, elements=st.integers(-(2**31), 2**31 - 1))
    if kind == "uint8_binary":
        return hnp.arrays(np.uint8, shape, elements=st.integers(0, 1))
    if kind == "bool":
        return hnp.arrays(np.bool_, shape)
    floats = st.floats(-1000, 1000, width=16, allow_subnormal=False)
    if kind == "float16":
        return hnp.arrays(np.float16, shape, elements=floats)
    if kind == "bfloat16":
        return hnp.arrays(np.float16, shape, elements=floats).map(lambda a: a.astype(ml_dtypes.bfloat16))
    return hnp.arrays(np.float64, shape, elements=st.floats(-1e6, 1e6, allow_subnormal=False))


KINDS = ("int64", "int32", "uint8_binary", "bool", "float16", "bfloat16", "float64")


def _reference_values(a: np.ndarray) -> np.ndarray:
    """The same numbers in the dtype the rules promise equality with: float32 for half precision, else float64."""
    return a.astype(np.float32 if a.dtype.kind not in "biu" and a.dtype.itemsize < 4 else np.float64)


def _outcome(fn, x, y):
    """("value", arrays) or ("error", message) of one call."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate rows (binary features): both calls warn alike
            return "value", [np.asarray(v) for v in jax.tree.leaves(fn(x, y))]
    except ValueError as err:
        return "error", str(err)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", FUNCTIONS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), x64=st.booleans())
def test_input_kind_equals_float_reference(name, kind, data, x64):
    fn = FUNCTIONS[name]
    x = data.draw(_kind_arrays(kind, DX), label="x")
    y = data.draw(_kind_arrays(kind, DY), label="y")
    with jax.enable_x64(x64):
        got = _outcome(fn, x, y)
        want = _outcome(fn, _reference_values(x), _reference_values(y))
    assert got[0] == want[0], (got, want)
    if got[0] == "error":
        assert got[1] == want[1]
        assert re.search(r"`\w+`", got[1]), got[1]  # names the argument
        return
    for g, w in zip(got[1], want[1], strict=True):
        assert g.dtype == w.dtype  # half precision computes in float32, integers in the working float
        rtol = 1e-4 if w.dtype == np.float32 else 1e-10
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(np.abs(w).max(initial=0)))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_complex_input_is_refused(float32_default, name):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, DX)), rng.normal(size=(N, DY))
    with pytest.raises(ValueError, match=r"`(x|features|e_pred)` is complex; pass real features"):
        FUNCTIONS[name](x + 0.5j, y)
    if name not in SINGLE:
        with pytest.raises(ValueError, match=r"`(y|e_true)` is complex; pass real features"):
            FUNCTIONS[name](x, y.astype(np.complex64))
