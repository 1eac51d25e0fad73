"""Batched LAPACK users never deadlock on jaxlib >= 0.10 (issue 9; see jaxalign/_lapack.py for the mechanism).

Two kinds of check: (1) structural — in the compiled HLO of every batched program (vmapped local fits of LFRE,
Ridge2FoldCV on tall and wide data, PCovR, SVCCA, GFRE/GFRD), the LAPACK custom calls of each computation are
totally ordered by data dependencies, so at most one runs at a time; (2) liveness — the programs run in a fresh
interpreter at sizes that deadlocked before the fix (LFRE N = 800, 64 → 128 features, k = 64), on one device and
sharded over two and four CPU devices, and must return within a generous limit (minutes for seconds of work).
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import reconstruction, ridge
from jaxalign.metrics.svcca import _svcca
from jaxalign.projection import _pcovr_core

ROOT = Path(__file__).resolve().parents[1]
LIVENESS_S = 600

_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_CALLEES = re.compile(r"(?:calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def _parse(hlo: str) -> dict[str, dict[str, tuple[set[str], set[str], bool]]]:
    """computation → instruction → (operand names, callee computations, is a LAPACK custom call)."""
    comps: dict[str, dict[str, tuple[set[str], set[str], bool]]] = {}
    current = None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = comps.setdefault(header.group(1), {})
            continue
        instr = _INSTR.match(line)
        if instr and current is not None:
            name, rest = instr.groups()
            callees = set(_CALLEES.findall(rest))
            for group in _BRANCHES.findall(rest):
                callees |= {c.strip().lstrip("%") for c in group.split(",")}
            operands = set(re.findall(r"%([\w.\-]+)", rest)) - callees
            current[name] = (operands, callees, 'custom_call_target="lapack_' in rest)
    return comps


def unordered_lapack_pairs(hlo: str) -> list[tuple[str, str, str]]:
    """(computation, a, b) for every two LAPACK-bearing instructions that no data dependency orders."""
    comps = _parse(hlo)

    @functools.cache
    def bears(comp: str) -> bool:
        return any(
            lapack or any(bears(c) for c in callees if c in comps) for _, callees, lapack in comps[comp].values()
        )

    bad = []
    for comp, instrs in comps.items():
        ancestors: dict[str, set[str]] = {}

        def up(name: str, instrs=instrs, ancestors=ancestors) -> set[str]:
            if name not in ancestors:
                ancestors[name] = set()
                for op in instrs[name][0] & instrs.keys():
                    ancestors[name] |= {op} | up(op)
            return ancestors[name]

        heavy = [
            n for n, (_, callees, lapack) in instrs.items() if lapack or any(bears(c) for c in callees if c in comps)
        ]
        bad += [(comp, a, b) for a, b in itertools.combinations(heavy, 2) if a not in up(b) and b not in up(a)]
    return bad


def _count_lapack(hlo: str) -> int:
    return hlo.count('custom_call_target="lapack_')


def test_checker_flags_two_independent_batched_factorisations():
    """The checker itself can fail: two vmapped QRs of independent inputs are unordered."""

    def two(a, b):
        return jnp.linalg.qr(a)[1].sum() + jnp.linalg.qr(b)[1].sum()

    a = jnp.ones((8, 6, 4))
    hlo = jax.jit(jax.vmap(two)).lower(a, a + 1).compile().as_text()
    assert unordered_lapack_pairs(hlo)


def _rng_pair(n, dx, dy, batch=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n,) if batch is None else (batch, n)
    return rng.normal(size=(*shape, dx)), rng.normal(size=(*shape, dy))


def _programs():
    """name → (jitted function, args) of every batched program with LAPACK calls."""
    alphas = jnp.asarray(ridge.DEFAULT_ALPHAS)
    out = {}
    for name, (n, dx, dy) in {"wide": (20, 40, 6), "tall": (40, 5, 3), "square": (16, 16, 4)}.items():
        x, y = _rng_pair(n, dx, dy, batch=3)
        q = np.random.default_rng(1).normal(size=(3, dx))
        out[f"vmap ridge fit ({name})"] = (jax.vmap(lambda a, b: ridge.fit_ridge2fold(a, b, alphas).weights), (x, y))
        out[f"vmap ridge fit_predict ({name})"] = (
            jax.vmap(lambda a, b, c: ridge.fit_predict_ridge2fold(a, b, c, alphas)),
            (x, y, q),
        )
    for k, dx in ((20, 40), (12, 12), (30, 4)):  # row-space rotation, wide folds, tall folds
        x, y = _rng_pair(80, dx, 6)
        train, test = jnp.arange(40), jnp.arange(40, 80)
        fn = functools.partial(
            reconstruction._pointwise_lfre, k=k, random_state=ridge.SEED, shuffle=True, tile=8, mesh=None
        )
        out[f"lfre tile (k={k}, d={dx})"] = (fn, (x, y, train, test, alphas))
    x, y = _rng_pair(30, 8, 3, batch=3)
    for space in ("feature", "sample"):
        core = functools.partial(_pcovr_core, n_components=2, space=space, tol=1e-12, ridge_alpha=1e-6)
        out[f"vmap pcovr ({space})"] = (jax.vmap(lambda a, b, core=core: core(a, b, 0.5).pxt), (x, y))
    x, y = _rng_pair(30, 8, 6, batch=3)
    out["vmap svcca"] = (jax.vmap(lambda a, b: _svcca(a, b, q=3)[0]), (x, y))
    for distortion in (False, True):
        core = functools.partial(
            reconstruction._pointwise_global, distortion=distortion, random_state=ridge.SEED, shuffle=True
        )
        x, y = _rng_pair(40, 4, 6, batch=3)
        out[f"vmap gfr{'d' if distortion else 'e'}"] = (
            jax.vmap(lambda a, b, core=core: core(a, b, jnp.arange(20), jnp.arange(20, 40), alphas)),
            (x, y),
        )
    return out


PROGRAMS = _programs()


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_lapack_calls_form_one_chain(name):
    fn, args = PROGRAMS[name]
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    assert _count_lapack(hlo) >= 1, f"{name}: expected LAPACK calls in the compiled program"
    assert unordered_lapack_pairs(hlo) == [], f"{name}: LAPACK calls that may run concurrently"


_LIVENESS = textwrap.dedent(
    """
    import functools, sys
    import jax, jax.numpy as jnp, numpy as np
    from jaxalign import reconstruction, ridge
    from jaxalign.metrics.svcca import _svcca
    from jaxalign.projection import _pcovr_core

    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 64)).astype(np.float32)
    y = rng.normal(size=(800, 128)).astype(np.float32)
    print("lfre", float(reconstruction.lfre(x, y, k=64)), flush=True)
    print("lfre tall folds", float(reconstruction.lfre(x[:, :8], y, k=64)), flush=True)
    if len(jax.devices()) == 1:
        xs = jnp.asarray(rng.normal(size=(400, 64, 32)), jnp.float32)
        ys = jnp.asarray(rng.normal(size=(400, 64, 24)), jnp.float32)
        core = functools.partial(_pcovr_core, n_components=2, space="feature", tol=1e-12, ridge_alpha=1e-6)
        for _ in range(3):
            print("pcovr", float(jax.jit(jax.vmap(lambda a, b: core(a, b, 0.5).pxt.sum()))(xs, ys).sum()), flush=True)
            print("svcca", float(jax.jit(jax.vmap(lambda a, b: _svcca(a, b, q=8)[0]))(xs, ys).sum()))
            fit = jax.jit(jax.vmap(lambda a, b: ridge.fit_ridge2fold(a, b, jnp.asarray(ridge.DEFAULT_ALPHAS)).weights))
            print("ridge", float(fit(xs, ys).sum()), float(fit(xs[:, :20], ys[:, :20, :5]).sum()))
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_batched_factorisations_return(devices):
    """Liveness: the sizes that hung under jax 0.10.2 return (a limit of minutes for seconds of work)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LIVENESS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=LIVENESS_S
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"deadlock: no result within {LIVENESS_S} s on {devices} device(s); output so far: {exc.stdout}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("done")
