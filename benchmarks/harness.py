"""Timing and peak-memory measurement shared by every benchmark.

``measure(fn, ...)`` runs ``fn`` once to warm up (JAX compiles there; reported as ``first_s``), then ``repeat`` more
times, and samples the process RSS every 2 ms on a thread to report the peak RSS *above the level before the call*
(XLA buffers are invisible to tracemalloc, so RSS is the honest measure). Anchors and jaxalign run in the same
process on the same arrays, except anchors that need their own interpreter (DADApy: ``anchors/dadapy_runner.py``),
which their worker process times the same way around the anchor call only; :func:`external` takes those numbers.
Results print as one table row per comparison.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import psutil

_PROC = psutil.Process()


@dataclasses.dataclass(frozen=True)
class Measurement:
    seconds: float  # best warm wall time
    first_s: float  # first call (includes JAX compilation)
    peak_mib: float  # peak RSS above the pre-call level
    value: Any


def _block(out: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, out)


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    gc.collect()
    base = _PROC.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _PROC.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    out = _block(fn())
    elapsed = time.perf_counter() - t0
    stop.set()
    thread.join()
    peak[0] = max(peak[0], _PROC.memory_info().rss)
    return elapsed, (peak[0] - base) / 2**20, out


def measure(fn: Callable[[], Any], *, repeat: int = 1, warmup: bool = True) -> Measurement:
    """Time ``fn()``; with ``warmup`` the first call is reported separately and excluded from ``seconds``."""
    first, mem, out = _timed(fn)
    if not warmup:
        return Measurement(first, first, mem, out)
    times = []
    for _ in range(repeat):
        t, m, out = _timed(fn)
        times.append(t)
        mem = max(mem, m)
    return Measurement(min(times), first, mem, out)


def external(value: Any, seconds: float, peak_mib: float) -> Measurement:
    """A measurement taken in another process (an anchor under its own interpreter): one cold call, reported as
    ``measure(fn, warmup=False)`` reports an in-process one."""
    return Measurement(seconds, seconds, peak_mib, value)


def row(name: str, n: int, anchor: Measurement | None, ours: Measurement) -> str:
    """One markdown table row: metric, N, anchor s, jaxalign s, ratio, peak MiB (anchor / jaxalign), values."""
    if anchor is None:
        return f"| {name} | {n} | — | {ours.seconds:.2f} | — | — / {ours.peak_mib:.0f} | {_fmt(ours.value)} |"
    ratio = anchor.seconds / ours.seconds
    return (
        f"| {name} | {n} | {anchor.seconds:.2f} | {ours.seconds:.2f} | {ratio:.1f}× | "
        f"{anchor.peak_mib:.0f} / {ours.peak_mib:.0f} | {_fmt(anchor.value)} / {_fmt(ours.value)} |"
    )


HEADER = (
    "| metric | N | anchor s | jaxalign s | speed-up | peak MiB anchor / jaxalign | value anchor / jaxalign |\n"
    "|---|---|---|---|---|---|---|"
)


def _fmt(v: Any) -> str:
    arr = np.atleast_1d(np.asarray(v, dtype=float))
    return ", ".join(f"{a:.6g}" for a in arr[:2])


def embeddings(n: int, dx: int = 256, dy: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two related float32 embeddings of the same n samples: noisy nonlinear views of a 16-d latent."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 16))
    x = np.tanh(z @ rng.normal(size=(16, dx)) / 4) + 0.1 * rng.normal(size=(n, dx))
    y = np.sin(z @ rng.normal(size=(16, dy)) / 4) + 0.1 * rng.normal(size=(n, dy))
    return x.astype(np.float32), y.astype(np.float32)


def sizes_main(run: Callable[[tuple[int, ...]], list[str]], doc: str, default: Sequence[int] = (2000, 10000)) -> None:
    """The command line of a benchmark whose only option is ``--sizes``: print the table of ``run(sizes)``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(default))
    args = parser.parse_args()
    print(HEADER)
    print("\n".join(run(tuple(args.sizes))))
