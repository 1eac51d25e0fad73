"""CPU runtime limits: the BLAS behind jax's LAPACK kernels, and the memory maps XLA's compiled programs hold.

**Threads.** Keep the BLAS behind jax's LAPACK kernels from competing with XLA's own thread pool.

On CPU, jax runs its matrix products on XLA's intra-op thread pool, while its LAPACK kernels (QR, SVD, eigh, …) call
the OpenBLAS that scipy bundles (jaxlib takes them from ``scipy.linalg.cython_lapack``). That OpenBLAS starts its own
threads, which busy-wait after every call and take the cores XLA's pool is about to use. Measured on a 2-core box,
GFRE at N = 10,000 (two 2500×256 QRs and three 256×256 SVDs between matrix products) runs about 1.3× faster with
scipy's OpenBLAS on one thread; batched small factorisations (LFRE) are unchanged.

Nothing here runs at import: :func:`limit_lapack_threads` is opt-in, because it also makes ``scipy.linalg`` calls of
the whole process single-threaded (numpy's own BLAS is a separate library and is not touched). The experiments app
and the reconstruction benchmark call it.

**Compiled programs.** XLA:CPU loads every kernel of a compiled program into its own memory pages: about three memory
maps per kernel (code, constants, data), so one metric at one input shape holds 100–400 maps. Linux allows a process
``vm.max_map_count`` maps (65,530 by default); past it, mapping the next kernel fails and the process dies with a
segmentation fault inside compilation. A study compiles each metric again for every new feature width — a loop over
60 models of different widths reaches the limit after a few hundred shapes. :func:`release_compiled_programs` empties
jax's caches of compiled programs once the process holds more than half of its allowed maps; every public function
calls it on concrete input, after at least :data:`CHECK_EVERY_COMPILES` compilations since the last look (reading
``/proc/self/maps`` costs about a millisecond). Later calls compile again, once per shape. Linux only; elsewhere
nothing is counted or freed.
"""

from __future__ import annotations

import gc
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import jax
import scipy.linalg  # noqa: F401  (loads scipy's BLAS so threadpoolctl can see it)
import threadpoolctl

__all__ = [
    "CHECK_EVERY_COMPILES",
    "lapack_blas",
    "limit_lapack_threads",
    "memory_maps",
    "release_compiled_programs",
]


def _scipy_blas() -> threadpoolctl.ThreadpoolController:
    """The BLAS libraries loaded from inside scipy's own wheel (empty when scipy links a shared system BLAS)."""
    controller = threadpoolctl.ThreadpoolController()
    paths = [lib.filepath for lib in controller.lib_controllers if lib.user_api == "blas" and "scipy" in lib.filepath]
    return controller.select(filepath=paths)


def lapack_blas() -> list[dict]:
    """threadpoolctl's records of the BLAS that scipy bundles (the one behind jax's CPU LAPACK kernels)."""
    return _scipy_blas().info()


def limit_lapack_threads(threads: int = 1) -> AbstractContextManager[Any]:
    """Limit scipy's bundled BLAS, which jax's CPU LAPACK kernels use, to ``threads`` threads.

    Returns a threadpoolctl limiter: ``.restore_original_limits()`` undoes it, and it works as a context manager
    (``with limit_lapack_threads(): ...``). A scipy built against a system BLAS shared with numpy has no bundled
    copy; then nothing is changed (the limiter restores nothing).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"`threads` must be a positive integer, got {threads!r}.")
    return _scipy_blas().limit(limits=threads)


# ---- memory maps of compiled programs -------------------------------------------------------------------------------

#: Compilations between two looks at the process's memory maps by the automatic check.
CHECK_EVERY_COMPILES = 16
#: jax's monitoring event for one XLA compilation (``jax._src.dispatch.BACKEND_COMPILE_EVENT``).
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = CHECK_EVERY_COMPILES  # compilations since the last look: the first concrete call looks
_warned = False


def _count_compile(event: str, duration_secs: float, **kwargs: Any) -> None:
    global _compiles
    if event == _COMPILE_EVENT:
        _compiles += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)


def memory_maps() -> tuple[int, int] | None:
    """``(held, allowed)``: the memory maps this process holds (lines of ``/proc/self/maps``) and the most it may
    hold (``/proc/sys/vm/max_map_count``); ``None`` where Linux's ``/proc`` is not available."""
    try:
        allowed = int(Path("/proc/sys/vm/max_map_count").read_text())
        with open("/proc/self/maps", "rb") as f:
            held = sum(1 for _ in f)
    except (OSError, ValueError):
        return None
    return held, allowed


def release_compiled_programs(fraction: float = 0.5, *, allowed: int | None = None) -> bool:
    """Empty jax's caches of compiled programs (:func:`jax.clear_caches`) when this process holds more than
    ``fraction`` of the memory maps it may hold; return whether it did.

    ``allowed`` replaces ``vm.max_map_count`` (for tests and for a process that leaves room to other libraries).
    Programs still referenced elsewhere stay loaded; the next call of each jitted function compiles it again. Warns
    (``RuntimeWarning``, once) when emptying the caches leaves the process above ``fraction``: the maps are then held
    by something else. Raises ``ValueError`` for ``fraction`` outside (0, 1].
    """
    global _compiles, _warned
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1], got {fraction!r}.")
    _compiles = 0
    maps = memory_maps()
    if maps is None:
        return False
    held, limit = maps[0], allowed if allowed is not None else maps[1]
    if held <= fraction * limit:
        return False
    jax.clear_caches()
    gc.collect()
    after = memory_maps()
    if after is not None and after[0] > fraction * limit and not _warned:
        _warned = True
        warnings.warn(
            f"this process holds {after[0]} memory maps of the {limit} it may hold after jax's compiled programs were "
            "released; raise vm.max_map_count (sysctl) if it fails inside compilation.",
            RuntimeWarning,
            stacklevel=2,
        )
    return True


def _top_level() -> bool:
    """No trace (``jit``, ``grad``, ``vmap``) is running: only then may the caches be emptied. False when this jax
    has no way to tell (the automatic check then does nothing; explicit calls still work)."""
    try:
        from jax._src.core import trace_state_clean
    except ImportError:
        return False
    return trace_state_clean()


def check_compiled_programs() -> None:
    """The automatic check every public function makes on its input: :func:`release_compiled_programs` after
    :data:`CHECK_EVERY_COMPILES` compilations since the last look, outside any trace; nothing otherwise."""
    if _compiles >= CHECK_EVERY_COMPILES and _top_level():
        release_compiled_programs()
