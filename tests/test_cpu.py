"""jaxalign.cpu: the BLAS behind jax's LAPACK kernels is limited, numpy's BLAS is not, and the limit is undone."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import threadpoolctl

from jaxalign.cpu import lapack_blas, limit_lapack_threads


def _numpy_blas_threads() -> list[int]:
    np.linalg.svd(np.ones((4, 4)))
    return [
        i["num_threads"]
        for i in threadpoolctl.threadpool_info()
        if i["user_api"] == "blas" and "scipy" not in i["filepath"]
    ]


def test_limit_applies_to_scipys_blas_only_and_restores():
    if not lapack_blas():
        pytest.skip("scipy links a shared system BLAS here; there is no bundled copy to limit")
    before = [i["num_threads"] for i in lapack_blas()]
    numpy_before = _numpy_blas_threads()
    with limit_lapack_threads(1):
        assert [i["num_threads"] for i in lapack_blas()] == [1] * len(before)
        assert _numpy_blas_threads() == numpy_before
        # jax's LAPACK kernels still work (and give the same factorisation) under the limit
        a = jnp.asarray(np.random.default_rng(0).normal(size=(50, 20)))
        np.testing.assert_allclose(
            jnp.linalg.svd(a, compute_uv=False), np.linalg.svd(np.asarray(a), compute_uv=False), rtol=1e-5
        )
    assert [i["num_threads"] for i in lapack_blas()] == before


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_count(threads):
    with pytest.raises(ValueError, match="threads"):
        limit_lapack_threads(threads)
