"""CPU thread settings: keep the BLAS behind jax's LAPACK kernels from competing with XLA's own thread pool.

On CPU, jax runs its matrix products on XLA's intra-op thread pool, while its LAPACK kernels (QR, SVD, eigh, …) call
the OpenBLAS that scipy bundles (jaxlib takes them from ``scipy.linalg.cython_lapack``). That OpenBLAS starts its own
threads, which busy-wait after every call and take the cores XLA's pool is about to use. Measured on a 2-core box,
GFRE at N = 10,000 (two 2500×256 QRs and three 256×256 SVDs between matrix products) runs about 1.3× faster with
scipy's OpenBLAS on one thread; batched small factorisations (LFRE) are unchanged.

Nothing here runs at import: :func:`limit_lapack_threads` is opt-in, because it also makes ``scipy.linalg`` calls of
the whole process single-threaded (numpy's own BLAS is a separate library and is not touched). The experiments app
and the reconstruction benchmark call it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import scipy.linalg  # noqa: F401  (loads scipy's BLAS so threadpoolctl can see it)
import threadpoolctl

__all__ = ["lapack_blas", "limit_lapack_threads"]


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
