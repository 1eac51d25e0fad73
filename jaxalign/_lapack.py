"""One LAPACK call at a time: explicit data dependencies between the factorisations of one program.

Why: from jaxlib 0.10 a *batched* LAPACK call on the CPU (``geqrf``/``orgqr``/``gesdd``/``syevd``/``potrf`` under
``vmap``) splits its batch over XLA's intra-op thread pool (``ParallelBatchMap``) and blocks its own pool thread
until the pieces finish. XLA's thunk executor runs independent operations concurrently on that same pool, so when
as many batched LAPACK calls are ready at once as the pool has threads (two on a 2-core machine: e.g. the QRs of
the two folds of a local Ridge2FoldCV fit, or the ``orgqr`` forming Q beside the SVD of R), every pool thread
waits on pieces that no thread is left to run: the program deadlocks, using no CPU, forever. Unbatched calls run
inline and never wait.

The fix is structural, not a version pin: every factorisation in a program that may be batched takes an input
that depends on the outputs of the previous one (:func:`after`), so the LAPACK calls form one chain and at most
one of them is running at any time. ``optimization_barrier`` cannot do this: XLA removes barriers before
scheduling.

Programs sharded over several CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``) run one copy per
device at the same time, all on the same pool, where no chain can order them; there :func:`map_fits` runs the fits
one at a time on each device (an unbatched LAPACK call never waits on the pool; the devices supply the
parallelism). ``tests/test_lapack_chain.py`` checks the chain in the compiled HLO of every batched user (LFRE's
local fits, Ridge2FoldCV, PCovR, SVCCA) and runs them at sizes that deadlocked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

__all__ = ["after", "map_fits", "shares_cpu_pool"]


def after(x: jax.Array, *deps: jax.Array) -> jax.Array:
    """``x``, as a value XLA can only compute once every array in ``deps`` exists.

    Evaluated as x + 0·t with t the first element of each dependency (replaced by 0 when it is not finite, so an
    inf or NaN upstream, e.g. a triangular solve of a singular R whose result is then discarded, cannot leak into
    x): the value is x exactly (a −0.0 becomes +0.0), and the dependency is real, so no compiler may drop it.
    Costs one elementwise add over x. Works under ``jit``, ``vmap`` and ``grad`` (the gradient flows to x only).
    """
    for dep in deps:
        t = jax.lax.stop_gradient(jnp.ravel(dep)[0]).astype(x.dtype)
        x = x + 0 * jnp.where(jnp.isfinite(t), t, 0)
    return x


def shares_cpu_pool(mesh: Mesh | None) -> bool:
    """True when ``mesh`` puts several CPU devices to work at once (they share one XLA intra-op thread pool)."""
    return mesh is not None and mesh.devices.size > 1 and any(d.platform == "cpu" for d in mesh.devices.flat)


def map_fits(fn: Callable[..., Any], *args: Any, mesh: Mesh | None) -> Any:
    """``jax.vmap(fn)(*args)``: one batched LAPACK call per factorisation of ``fn`` (chained with :func:`after`).

    On a mesh of several CPU devices (:func:`shares_cpu_pool`), ``jax.lax.map`` instead: each device runs its fits one
    at a time, so no device's LAPACK call waits on a pool that the other devices' calls hold.
    """
    if shares_cpu_pool(mesh):
        return jax.lax.map(lambda a: fn(*a), args)
    return jax.vmap(fn)(*args)
