"""Run a batch of DADApy 0.3.4 calls; executed by ``anchors.dadapy_runner`` under the dadapy environment's python.

    python -I dadapy_worker.py INPUTS.npz CALLS.json RESULTS.json

``CALLS.json`` is a list of ``{"function": "twonn" | "information_imbalance", "arrays": [names in INPUTS.npz],
"options": {...}}``; ``RESULTS.json`` gets one ``{"value", "seconds", "peak_mib"}`` per call, in order. Each call is
timed alone: wall seconds around the DADApy call only, and the peak RSS above the level before it (sampled every
2 ms on a thread, as benchmarks/harness.py does). Standard library, numpy and dadapy only: this repository is not
installed in that environment.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from dadapy import Data, MetricComparisons

_PAGE = os.sysconf("SC_PAGE_SIZE")


def twonn(x: np.ndarray, algorithm: str = "base", mu_fraction: float = 0.9) -> float:
    """``Data(x).compute_id_2NN(algorithm, mu_fraction)``'s intrinsic dimension."""
    return float(Data(x, verbose=False).compute_id_2NN(algorithm=algorithm, mu_fraction=mu_fraction)[0])


def information_imbalance(x: np.ndarray, y: np.ndarray, k: int) -> list[float]:
    """[Δ(X→Y), Δ(Y→X)] from exact full ranks: ``return_information_imbalace`` with one subset of all N points."""
    with warnings.catch_warnings():  # "Subset size greater than the dataset size": the full-rank path we want
        warnings.simplefilter("ignore")
        ij, ji = MetricComparisons(coordinates=x).return_information_imbalace(y, k=k, subset_size=x.shape[0])
    return [float(ij[0]), float(ji[0])]


FUNCTIONS: dict[str, Callable] = {"twonn": twonn, "information_imbalance": information_imbalance}


def _rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE


def timed(fn: Callable[[], object]) -> dict:
    """``fn()``'s value, wall seconds and peak RSS growth in MiB."""
    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    peak[0] = max(peak[0], _rss())
    return {"value": value, "seconds": seconds, "peak_mib": (peak[0] - base) / 2**20}


def main(inputs: str, calls: str, results: str) -> None:
    """Run every call of ``calls`` on the arrays of ``inputs``; write their timed results to ``results``."""
    with np.load(inputs) as z:
        arrays = {name: z[name] for name in z.files}
    out = []
    for call in json.loads(Path(calls).read_text()):
        args = [arrays[name] for name in call["arrays"]]
        out.append(timed(lambda call=call, args=args: FUNCTIONS[call["function"]](*args, **call["options"])))
    Path(results).write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
