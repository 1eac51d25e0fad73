"""DADApy 0.3.4, the TwoNN and information-imbalance anchor, run under its own interpreter.

DADApy's compiled extensions need numpy<2 and it pins jax==0.4.30, so it cannot live in the main environment
(numpy 2, the newest jax). It runs in the torch-free ``dadapy`` environment of :mod:`extractors.envs`, built on the
first call when missing or stale (a few minutes; ``python -m extractors.envs create dadapy`` builds it ahead).
:func:`run_calls` runs a batch in one subprocess: the arrays go to an .npz, the calls to a JSON list,
``anchors/dadapy_worker.py`` runs them and writes JSON results (no pickle). Each result carries the value and the
wall seconds and peak RSS growth measured inside the worker around the DADApy call only.

    from anchors.dadapy_runner import information_imbalance, run_calls, twonn, twonn_call

    twonn(x)                                    # Data(x).compute_id_2NN(algorithm="base", mu_fraction=0.9)[0]
    information_imbalance(x, y, k=1)            # [Δ(X→Y), Δ(Y→X)] from exact full ranks
    run_calls([twonn_call(x), twonn_call(x, "ml")])  # many calls, one subprocess
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from extractors import envs

__all__ = [
    "ENV",
    "WORKER",
    "Call",
    "Result",
    "information_imbalance",
    "information_imbalance_call",
    "interpreter",
    "run_calls",
    "timed",
    "twonn",
    "twonn_call",
]

#: The extractors.envs environment DADApy runs in.
ENV = "dadapy"
WORKER = Path(__file__).with_name("dadapy_worker.py")


class Call(NamedTuple):
    """One DADApy call: a function of the worker (``twonn`` or ``information_imbalance``), its array arguments
    and its keyword options (JSON values)."""

    function: str
    arrays: tuple[np.ndarray, ...]
    options: Mapping[str, Any]


class Result(NamedTuple):
    """A call's value, and the wall seconds and peak RSS growth (MiB) of the DADApy call inside the worker."""

    value: Any
    seconds: float
    peak_mib: float


def twonn_call(x: Any, algorithm: str = "base", mu_fraction: float = 0.9) -> Call:
    """``Data(x, verbose=False).compute_id_2NN(algorithm=algorithm, mu_fraction=mu_fraction)[0]``, x as given."""
    return Call("twonn", (np.asarray(x),), {"algorithm": algorithm, "mu_fraction": float(mu_fraction)})


def information_imbalance_call(x: Any, y: Any, k: int) -> Call:
    """[Δ(X→Y), Δ(Y→X)]: ``MetricComparisons(coordinates=x).return_information_imbalace(y, k, subset_size=N)``."""
    return Call("information_imbalance", (np.asarray(x), np.asarray(y)), {"k": int(k)})


def interpreter(root: str | os.PathLike | None = None) -> Path:
    """The ``dadapy`` environment's python, built first when it is missing or stale; RuntimeError naming the
    environment and the command to build it when that fails."""
    try:
        return envs.create(ENV, root)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
        raise RuntimeError(
            f"the {ENV!r} anchor environment ({envs.env_dir(ENV, root)}) is missing or stale and could not be built;"
            f" build it with `python -m extractors.envs create {ENV} --verbose` (set ${envs.ENV_VAR} to put it"
            f" elsewhere). The error was: {err}"
        ) from err


def _pack(calls: Sequence[Call]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The .npz arrays (each distinct array once, named ``a0``, ``a1``, …) and the JSON call list naming them."""
    names: dict[int, str] = {}
    arrays: dict[str, np.ndarray] = {}
    for a in (a for call in calls for a in call.arrays):
        if id(a) not in names:
            names[id(a)] = f"a{len(names)}"
            arrays[names[id(a)]] = a
    listed = [
        {"function": call.function, "arrays": [names[id(a)] for a in call.arrays], "options": dict(call.options)}
        for call in calls
    ]
    return arrays, listed


def _worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: the caller's without JAX and XLA settings, which are for the main environment's
    jax and may be unknown to jax 0.4.30."""
    return {k: v for k, v in environ.items() if not k.startswith(("JAX_", "XLA_"))}


def run_calls(calls: Sequence[Call], root: str | os.PathLike | None = None) -> list[Result]:
    """Run ``calls`` in one worker process under the dadapy environment's python; their results, in order."""
    python = interpreter(root)
    arrays, listed = _pack(calls)
    with tempfile.TemporaryDirectory(prefix="jaxalign-dadapy-") as tmp:
        paths = [Path(tmp) / name for name in ("inputs.npz", "calls.json", "results.json")]
        np.savez(paths[0], **arrays)
        paths[1].write_text(json.dumps(listed))
        cmd = [str(python), "-I", str(WORKER), *map(str, paths)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(os.environ))
        if done.returncode:
            tail = done.stderr[-3000:]
            raise RuntimeError(f"the DADApy worker failed (exit {done.returncode}) under {python}:\n{tail}")
        return [Result(**r) for r in json.loads(paths[2].read_text())]


def timed(call: Call, root: str | os.PathLike | None = None) -> Result:
    """One call in a fresh worker process: (value, seconds, peak RSS growth in MiB), measured inside the worker."""
    return run_calls([call], root)[0]


def twonn(x: Any, algorithm: str = "base", mu_fraction: float = 0.9) -> float:
    """DADApy's TwoNN intrinsic dimension of ``x`` (rows = points)."""
    return run_calls([twonn_call(x, algorithm, mu_fraction)])[0].value


def information_imbalance(x: Any, y: Any, k: int) -> np.ndarray:
    """DADApy's exact information imbalances [Δ(X→Y), Δ(Y→X)] of two representations of the same rows."""
    return np.asarray(run_calls([information_imbalance_call(x, y, k)])[0].value)
