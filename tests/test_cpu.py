"""jaxalign.cpu: the BLAS behind jax's LAPACK kernels is limited, numpy's BLAS is not, and the limit is undone; the
memory maps of compiled programs stay below the process's allowance however many shapes a study compiles."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import threadpoolctl

from jaxalign.cpu import lapack_blas, limit_lapack_threads, memory_maps, release_compiled_programs


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


# ---- memory maps of compiled programs -------------------------------------------------------------------------------

#: A study in a fresh process: dCor for 16 feature widths (a new compilation each), then a kNN graph, the process's
#: allowance replaced by ``allowed`` (its start plus room for about eight widths); with ``auto`` False the automatic
#: check is switched off, as before it existed. Prints the most maps held and the worst error against float64 numpy.
STUDY = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jax
    jax.config.update("jax_enable_x64", True)
    import jaxalign.cpu as cpu
    from jaxalign import knn
    from jaxalign.metrics import dcor

    auto = sys.argv[1] == "1"
    start = cpu.memory_maps()[0]
    allowed = start + 1500
    real = cpu.release_compiled_programs
    cpu.release_compiled_programs = lambda fraction=0.5, allowed=allowed: real(fraction, allowed=allowed)
    if not auto:
        cpu.check_compiled_programs = lambda: None
        import jaxalign._checks
        jaxalign._checks.check_compiled_programs = cpu.check_compiled_programs

    def dcor64(x, y):
        def centred(z):
            d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
            return d - d.mean(0) - d.mean(1)[:, None] + d.mean()
        a, b = centred(x), centred(y)
        return np.sqrt((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))

    rng = np.random.default_rng(0)
    y = rng.normal(size=(60, 7))
    most, error = 0, 0.0
    for width in range(8, 24):
        x = rng.normal(size=(60, width))
        error = max(error, abs(float(dcor(x, y)) - dcor64(x, y)))
        most = max(most, cpu.memory_maps()[0])
    graph = knn(x, 5, metric="euclidean")  # the engine compiles and runs again after the caches were emptied
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1) + np.diag(np.full(60, np.inf))
    assert (np.asarray(graph.indices) == np.argsort(d2, 1, kind="stable")[:, :5]).all()
    print(json.dumps({"most": most, "allowed": allowed, "error": error}))
    """
)


def _study(auto: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", STUDY, "1" if auto else "0"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.skipif(memory_maps() is None, reason="no /proc here: memory maps are not counted")
def test_compiled_programs_stay_within_the_allowed_memory_maps():
    """Without the automatic check the study passes its allowance (as it passes vm.max_map_count in a long session,
    where XLA:CPU then segfaults inside compilation); with it, the study stays below and every value is right."""
    off, on = _study(auto=False), _study(auto=True)
    assert off["most"] > off["allowed"]
    assert on["most"] < on["allowed"]
    assert on["error"] < 1e-12 and off["error"] < 1e-12


@pytest.mark.skipif(memory_maps() is None, reason="no /proc here: memory maps are not counted")
def test_release_empties_the_caches_and_programs_compile_again(monkeypatch):
    import gc

    import jaxalign.cpu

    monkeypatch.setattr(jaxalign.cpu, "_warned", False)  # it warns once per process, maybe already in an earlier test
    jax.clear_caches()
    gc.collect()
    base = memory_maps()[0]  # this process's maps that are not jax's compiled programs (whatever ran before)
    f = jax.jit(lambda v: v * 2 + 1)
    assert float(f(1.0)) == 3.0
    held, allowed = memory_maps()
    assert 0 < held <= allowed
    assert not release_compiled_programs(allowed=10 * held)
    assert f._cache_size() == 1
    with pytest.warns(RuntimeWarning, match="vm.max_map_count"):  # the maps left (~base) are not jax's programs
        assert release_compiled_programs(allowed=base)  # held > base / 2: release; after it, still above base / 2
    assert f._cache_size() == 0
    assert float(f(2.0)) == 5.0


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        release_compiled_programs(fraction)
