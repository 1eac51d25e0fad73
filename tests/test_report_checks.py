"""The report's qualitative checks: each one passes on numbers that show the seed's finding, fails on numbers that
contradict it, and says n/a (counted apart, not as a failure) when the run lacks what it needs."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.stages.report import SATURATION_GFRE, check_tally, qualitative_checks

NAMES = ["a1", "a2", "b1", "random"]
FAMILIES = ["a", "a", "b", "baseline"]
KS = [2, 5, 10, 25, 50, 100]
N = 1000


def _cknna(model: float, random: float) -> np.ndarray:
    """4 x 4 CKNNA: ``model`` between the three models, ``random`` with the baseline."""
    mat = np.full((4, 4), model)
    mat[3, :] = mat[:, 3] = random
    np.fill_diagonal(mat, 1.0)
    return mat


def _results(*, model_rise: float = 0.2, random_rise: float = 0.0, within: float = 0.6, cross: float = 0.4,
             single_growth: float = 0.05, next_gfre: float = 0.5, random_id: float = 40.0,
             cka_gap: float = 0.0) -> dict:  # fmt: skip
    mats = {"cknna_k": KS, "n": N, "cknna_k_main": 25}
    for i, k in enumerate(KS):
        mats[f"cknna@{k}"] = _cknna(0.3 + model_rise * i / (len(KS) - 1), 0.05 + random_rise * i / (len(KS) - 1))
    c = _cknna(cross, 0.05)
    c[0, 1] = c[1, 0] = within
    mats["cknna"] = c
    mats["unbiased_cka"] = _cknna(0.5, 0.02)
    mats["full_k"] = True
    mats["cknna@full"] = mats["unbiased_cka"] + cka_gap
    orders = [1, 2, 3, 4, 5]
    single = 0.2 + single_growth * np.add.outer(np.zeros(5), np.arange(5))
    rec = {"orders": orders, "order_models": ["a1"], "single:a1": single, "next:a1": next_gfre}
    ids = {n: {"twonn": v} for n, v in zip(NAMES, [8.0, 9.0, 10.0, random_id], strict=True)}
    return {"models": NAMES, "families": FAMILIES, "matrices": mats, "intrinsic_dimension": ids,
            "reconstruction": rec}  # fmt: skip


def _verdicts(results: dict) -> dict[str, bool | None]:
    return {c["finding"].split(" (")[0]: c["passed"] for c in qualitative_checks(results)}


def test_every_check_passes_on_numbers_that_show_the_finding():
    checks = qualitative_checks(_results())
    assert len(checks) == 6
    assert [c["passed"] for c in checks] == [True] * 6, [(c["finding"], c["value"]) for c in checks]
    assert check_tally(checks) == "6/6 pass"


@pytest.mark.parametrize(
    ("change", "index"),
    [
        ({"model_rise": -0.1}, 0),  # CKNNA falls with k
        ({"model_rise": 0.1, "random_rise": 0.2}, 0),  # rises, but no more than the random pairs do
        ({"within": 0.3}, 1),  # within-family below cross-family
        ({"random_id": 12.0}, 2),  # the random baseline's I_d not ≫ the models'
        ({"single_growth": -0.05}, 3),  # lower orders rebuild higher ones better as the order grows
        ({"next_gfre": SATURATION_GFRE / 2}, 4),  # the highest order is redundant
        ({"cka_gap": 1e-2}, 5),  # CKNNA(k = N − 1) is not unbiased CKA
    ],
)
def test_each_check_fails_when_the_numbers_contradict_it(change, index):
    checks = qualitative_checks(_results(**change))
    assert checks[index]["passed"] is False, checks[index]
    assert [c["passed"] for i, c in enumerate(checks) if i != index] == [True] * 5
    assert check_tally(checks) == "5/6 pass, 1 fail"


def test_cknna_rise_is_judged_below_n_over_10_only():
    """A rise that appears only at k > N/10 (where random pairs rise too) does not count."""
    results = _results(model_rise=0.0)
    mats = results["matrices"]
    mats["cknna_k"] = [*KS, 400]
    mats["cknna@400"] = _cknna(0.9, 0.8)  # the spike near N/2 that random pairs share
    assert qualitative_checks(results)[0]["passed"] is False


def test_checks_that_cannot_be_evaluated_say_n_a_and_are_not_failures():
    results = _results()
    results["models"], results["families"] = NAMES[:3], FAMILIES[:3]  # no random baseline
    results["matrices"] = {key: (value[:3, :3] if isinstance(value, np.ndarray) else value)
                           for key, value in results["matrices"].items()}  # fmt: skip
    results["reconstruction"] = {}
    checks = qualitative_checks(results)
    assert [c["passed"] for c in checks] == [None, None, None, None, None, True]
    assert all(c["value"] == "n/a" and c["numbers"] for c in checks[:5])
    assert check_tally(checks) == "1/1 pass, 5 n/a"
