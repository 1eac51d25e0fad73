"""Row tiles sharded over 4 forced host devices give the same results as one device.

XLA's device count is fixed when JAX starts, so the comparison runs in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from jaxalign import knn, row_mesh
    from jaxalign import metrics as M
    from jaxalign.descriptors import cumulant_descriptors
    from jaxalign.reconstruction import lfre

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(203, 12))
    y = np.tanh(x @ rng.normal(size=(12, 7))) + 0.1 * rng.normal(size=(203, 7))
    sizes = np.array([3, 7, 1, 12, 5] * 8)
    atoms = rng.normal(size=(int(sizes.sum()), 4))
    mesh = row_mesh()
    calls = {
        "knn_ip": lambda m: knn(x, 7, tile=16, mesh=m).values,
        "knn_euclidean": lambda m: knn(x, 7, metric="euclidean", tile=16, mesh=m).values,
        "cknna": lambda m: M.cknna(x, y, k=10, tile=16, mesh=m),
        "mutual_knn": lambda m: M.mutual_knn(x, y, k=10, tile=16, mesh=m),
        "cka_rbf": lambda m: M.cka(x, y, kernel="rbf", sigma=3.0, tile=16, mesh=m),
        "dcor": lambda m: M.dcor(x, y, tile=16, mesh=m),
        "u_dcor_sqr": lambda m: M.u_dcor_sqr(x, y, tile=16, mesh=m),
        "information_imbalance": lambda m: M.information_imbalance(x, y, k=3, tile=16, mesh=m),
        "twonn": lambda m: M.twonn(x, tile=16, mesh=m),
        "mle_id": lambda m: M.mle_id(x, k=10, tile=16, mesh=m),
        "lfre": lambda m: lfre(x, y, k=20, mesh=m),
        "cumulants": lambda m: cumulant_descriptors(atoms, sizes, mesh=m),
    }
    out = {}
    for name, call in calls.items():
        single = np.asarray(call(None), dtype=float)
        sharded = np.asarray(call(mesh), dtype=float)
        out[name] = float(np.max(np.abs(single - sharded) / (np.abs(single) + 1e-12)))
    print(json.dumps(out))
    """
)


def test_four_host_devices_match_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rel = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rel) == 12
    bad = {name: err for name, err in rel.items() if not err <= 1e-10}
    assert not bad, f"sharded results differ from one device: {bad}"
