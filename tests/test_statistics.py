"""jaxalign.statistics: the permutation null separates related from independent models; bootstrap intervals
shrink with more rows."""

from __future__ import annotations

import numpy as np
import pytest

from jaxalign.statistics import bootstrap, permutation_null

SWEEP = {"metrics": ("dcor", "information_imbalance", "cknna"), "k": 5}


def _study(n: int, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    return {
        "a": np.tanh(z @ rng.normal(size=(3, 6))) + 0.1 * rng.normal(size=(n, 6)),
        "b": np.sin(z @ rng.normal(size=(3, 5))) + 0.1 * rng.normal(size=(n, 5)),
        "random": rng.normal(size=(n, 6)),
    }


def test_permutation_null_separates_related_from_independent():
    null = permutation_null(_study(80, seed=4), draws=19, rows=None, **SWEEP)
    assert set(null) >= {"dcor", "information_imbalance", "cknna"}
    independent = []
    for name in ("dcor", "information_imbalance", "cknna"):
        res = null[name]
        assert res.draws.shape == (19, 3, 3)
        assert res.p_value[0, 1] == pytest.approx(1 / 20)  # a ~ b: no permutation comes close
        assert res.significant(0.05)[0, 1]
        assert np.isnan(np.diag(res.p_value)).all()  # a model against itself is not tested
        independent += [res.p_value[0, 2], res.p_value[1, 2], res.p_value[2, 0], res.p_value[2, 1]]
    # independent pairs look like their null: p-values spread over (0, 1], not piled at the minimum
    assert np.median(independent) > 0.2, independent
    # the null of dCor sits near its small-sample bias, far below the related pair
    assert null["dcor"].mean[0, 1] < 0.7 * null["dcor"].observed[0, 1]


def test_draws_are_seeded_per_index():
    first = permutation_null(_study(40), draws=3, rows=30, seed=5, metrics=("dcor",))["dcor"]
    again = permutation_null(_study(40), draws=3, rows=30, seed=5, metrics=("dcor",))["dcor"]
    np.testing.assert_array_equal(first.draws, again.draws)
    other = permutation_null(_study(40), draws=3, rows=30, seed=6, metrics=("dcor",))["dcor"]
    assert not np.array_equal(first.draws, other.draws)


def test_batching_the_draws_does_not_change_them():
    """Batched draws (originals against shuffled copies) are the same draws however many share a sweep, and the
    batched null separates the related pair like one sweep per draw."""
    kwargs = {"draws": 4, "rows": 30, "seed": 2, **SWEEP}
    one = permutation_null(_study(40), draws_per_sweep=2, **kwargs)
    three = permutation_null(_study(40), draws_per_sweep=3, **kwargs)
    for name in ("dcor", "information_imbalance", "cknna"):
        np.testing.assert_allclose(three[name].draws, one[name].draws, rtol=1e-12, atol=1e-15, err_msg=name)
        assert three[name].p_value[0, 1] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="`draws_per_sweep`"):
        permutation_null(_study(20), draws_per_sweep=0)
    with pytest.raises(ValueError, match="`between`"):
        permutation_null(_study(20), between=(["a"], ["b"]))


def test_bootstrap_intervals_shrink_with_rows():
    wide = bootstrap(_study(200), draws=30, rows=40, metrics=("dcor",))["dcor"]
    narrow = bootstrap(_study(200), draws=30, rows=200, metrics=("dcor",))["dcor"]
    for res in (wide, narrow):
        assert np.all(res.low <= res.high)
        off = ~np.eye(3, dtype=bool)
        assert np.all(res.std[off] > 0)
    assert narrow.std[0, 2] < wide.std[0, 2]  # ~1/sqrt(rows)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`draws`"):
        permutation_null(_study(20), draws=0)
    with pytest.raises(ValueError, match="`level`"):
        bootstrap(_study(20), level=1.5)
    with pytest.raises(ValueError, match="`rows`"):
        bootstrap(_study(20), rows=2)
