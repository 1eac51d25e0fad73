"""jaxalign.sweep.pairwise_matrices: every (M, M) matrix equals the pairwise public functions; sharded over 4 host
devices and over two jax.distributed processes it gives the same matrices; a sweep killed with SIGKILL resumes from
its journal without recomputing a finished unit and ends with identical matrices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxalign.metrics as M
from jaxalign.journal import Journal
from jaxalign.sweep import pairwise_matrices

REPO = Path(__file__).resolve().parents[1]

#: The study in miniature: shared latent structure seen through different widths, an off-centre model, a binary
#: fingerprint (exact ties) and a model with duplicated rows (distance 0 between distinct structures).
DATA = textwrap.dedent(
    """
    import numpy as np

    def study(n=90, dtype=np.float64):
        rng = np.random.default_rng(7)
        base = rng.normal(size=(n, 4))
        out = {}
        for i, d in enumerate((8, 5, 8)):
            out[f"mlip{i}"] = np.tanh(base @ rng.normal(size=(4, d))) + 0.2 * rng.normal(size=(n, d))
        out["offset"] = base @ rng.normal(size=(4, 8)) + 40.0
        out["fingerprint"] = (base @ rng.normal(size=(4, 8)) > 0.3).astype(float)
        dup = rng.normal(size=(n, 5))
        dup[1::9] = dup[::9][: len(dup[1::9])]
        out["duplicates"] = dup
        return {k: v.astype(dtype) for k, v in out.items()}
    """
)
namespace: dict = {}
exec(DATA, namespace)
study = namespace["study"]

KS, MUTUAL_K, II_K = (6, 3), 4, (1, 5)


def _pairwise(feats: dict, name: str) -> np.ndarray:
    xs = list(feats.values())
    fns = {
        "cknna": lambda a, b: M.cknna(a, b, k=KS[0]),
        "cknna@3": lambda a, b: M.cknna(a, b, k=3),
        "mutual_knn": lambda a, b: M.mutual_knn(a, b, k=MUTUAL_K),
        "cka": M.cka,
        "unbiased_cka": M.unbiased_cka,
        "dcor": M.dcor,
        "information_imbalance@1": lambda a, b: M.information_imbalance(a, b, k=1)[0],
        "information_imbalance@5": lambda a, b: M.information_imbalance(a, b, k=5)[0],
    }
    return np.array([[float(fns[name](a, b)) for b in xs] for a in xs])


def _sweep(feats: dict, **kwargs) -> dict:
    kwargs = {"k": KS, "mutual_k": MUTUAL_K, "ii_k": II_K, "unit_rows": 40, "tile": 16, **kwargs}
    return pairwise_matrices(feats, **kwargs)


@pytest.fixture(scope="module")
def swept64():
    with jax.enable_x64(True):
        feats = {k: v for k, v in study().items() if k in ("mlip0", "offset", "fingerprint", "duplicates")}
        return feats, _sweep(feats)


NAMES = ["cknna", "cknna@3", "mutual_knn", "cka", "unbiased_cka", "dcor", "information_imbalance@1",
         "information_imbalance@5"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_float64_matrices_equal_the_pairwise_functions(swept64, name):
    feats, got = swept64
    with jax.enable_x64(True):
        want = _pairwise(feats, name)
    np.testing.assert_allclose(got[name], want, rtol=1e-10, atol=1e-12)
    assert list(got["models"]) == list(feats)


def test_float32_matrices_equal_the_pairwise_functions():
    feats = {k: v for k, v in study(dtype=np.float32).items() if k in ("mlip1", "offset", "fingerprint")}
    got = _sweep(feats)
    for name in ("cknna", "mutual_knn", "cka", "unbiased_cka", "dcor", "information_imbalance@1"):
        want = _pairwise(feats, name)
        atol = 0 if name.startswith(("information", "mutual")) else 1e-6  # counts are exact
        np.testing.assert_allclose(got[name], want, rtol=0, atol=atol, err_msg=name)


def test_plain_keys_and_subsets():
    feats = study(n=40)
    got = pairwise_matrices(feats, metrics=("dcor", "information_imbalance"), ii_k=(5, 1), unit_rows=13)
    assert set(got) == {"models", "dcor", "information_imbalance", "information_imbalance@1", "information_imbalance@5"}
    np.testing.assert_array_equal(got["information_imbalance"], got["information_imbalance@5"])  # the first given
    diag = np.diag(got["information_imbalance@1"])
    assert np.all(diag <= 2 / 40 + 1e-7)  # Δ(A→A) = (k+1)/N without ties (fewer with tied first neighbours)
    np.testing.assert_allclose(np.diag(got["dcor"]), 1.0, rtol=1e-6)


def test_bad_input_is_refused_with_the_argument_named():
    feats = study(n=30)
    with pytest.raises(ValueError, match="`metrics`"):
        pairwise_matrices(feats, metrics=("cknna", "svcca"))
    with pytest.raises(ValueError, match="features\\['short'\\]"):
        pairwise_matrices({**feats, "short": feats["offset"][:20]})
    with pytest.raises(ValueError, match="features\\['flat'\\]"):
        pairwise_matrices({**feats, "flat": np.ones((30, 3))})
    with pytest.raises(ValueError, match="`k`"):
        pairwise_matrices(feats, k=30)
    with pytest.raises(ValueError, match="`ii_k`"):
        pairwise_matrices(feats, metrics=("information_imbalance",), ii_k=0)
    with pytest.raises(ValueError, match="`features`"):
        pairwise_matrices([])
    with pytest.raises(ValueError, match="`exponent`"):
        pairwise_matrices(feats, metrics=("dcor",), exponent=2.0)


# ---- devices, processes, interruption ------------------------------------------------------------------------------

WORKER = DATA + textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np

    mode, out = sys.argv[1], sys.argv[2]
    if mode == "distributed":
        import jax
        jax.distributed.initialize(
            coordinator_address=f"localhost:{sys.argv[3]}", num_processes=2, process_id=int(sys.argv[4])
        )
    from jaxalign.sweep import pairwise_matrices

    kwargs = dict(k=(6, 3), mutual_k=4, ii_k=(1, 5), unit_rows=20, tile=8)
    progress = None
    if mode == "kill":  # SIGKILL after the second unit of the distance pass has been journaled
        def progress(label, done, total, cached):
            if label == "distance pass" and done == 2:
                os.kill(os.getpid(), signal.SIGKILL)
    if mode in ("kill", "resume"):
        kwargs["journal"] = sys.argv[3]
    models = {k: v for k, v in study(n=70, dtype=np.float32).items() if k in ("mlip1", "fingerprint", "duplicates")}
    res = pairwise_matrices(models, progress=progress, **kwargs)
    np.savez(out, **{k: v for k, v in res.items() if k != "models"})
    """
)


def _run_worker(tmp_path: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, str(script), *args], env=full_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _wait(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)  # liveness limit: each run takes seconds
    return proc.returncode, out


@pytest.fixture(scope="module")
def reference():
    """The worker's sweep in this process: one process, one device."""
    models = {k: v for k, v in study(n=70, dtype=np.float32).items() if k in ("mlip1", "fingerprint", "duplicates")}
    res = pairwise_matrices(models, k=(6, 3), mutual_k=4, ii_k=(1, 5), unit_rows=20, tile=8, mesh=None)
    return {k: v for k, v in res.items() if k != "models"}


def _same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        if name.startswith(("information", "mutual", "cknna")):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)  # exact counts / same sparse sums
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_four_host_devices_equal_one(tmp_path, reference):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    code, out = _wait(_run_worker(tmp_path, "plain", str(tmp_path / "four.npz"), env=env))
    assert code == 0, out
    _same(dict(np.load(tmp_path / "four.npz")), reference)


def test_two_distributed_processes_equal_one(tmp_path, reference):
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = str(sock.getsockname()[1])
    procs = [_run_worker(tmp_path, "distributed", str(tmp_path / f"p{i}.npz"), port, str(i)) for i in range(2)]
    for proc in procs:
        code, out = _wait(proc)
        assert code == 0, out
    for i in range(2):  # every process returns the full matrices
        _same(dict(np.load(tmp_path / f"p{i}.npz")), reference)


def test_sigkill_resumes_without_recomputing_finished_units(tmp_path, reference):
    journal = tmp_path / "journal"
    code, out = _wait(_run_worker(tmp_path, "kill", str(tmp_path / "killed.npz"), str(journal)))
    assert code == -9, out
    assert not (tmp_path / "killed.npz").exists()
    finished = {p.name: p.stat().st_ino for p in journal.glob("*.npz")}
    passes = [name for name in finished if name.startswith("pass-")]
    assert len(passes) == 2 and len(finished) == 2 + 3 + 1  # two pass units, the three models' graphs, the pairs
    assert not list(journal.glob(".*tmp*"))  # no half-written file left behind

    code, out = _wait(_run_worker(tmp_path, "resume", str(tmp_path / "resumed.npz"), str(journal)))
    assert code == 0, out
    for name, inode in finished.items():  # a recomputed unit would have been renamed into place: a new inode
        assert (journal / name).stat().st_ino == inode, name
    assert len(Journal(journal).units()) == 3 + 1 + 4  # every pass unit of N = 70 rows by 20, now finished
    _same(dict(np.load(tmp_path / "resumed.npz")), reference)
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npz")["dcor"], reference["dcor"])


def test_journal_units_are_keyed_by_content(tmp_path):
    feats = study(n=40)
    first = pairwise_matrices(feats, metrics=("dcor",), journal=tmp_path, unit_rows=20)
    units = Journal(tmp_path).units()
    changed = {**feats, "offset": feats["offset"] * 2 + 1}  # dCor is invariant: same values, new content
    again = pairwise_matrices(changed, metrics=("dcor",), journal=tmp_path, unit_rows=20)
    assert len(Journal(tmp_path).units()) == 2 * len(units)  # the changed model makes every unit new
    np.testing.assert_allclose(again["dcor"], first["dcor"], rtol=1e-5)


def test_between_computes_the_cells_of_two_groups(swept64):
    feats, full = swept64
    with jax.enable_x64(True):
        got = _sweep(feats, between=(["offset"], ["mlip0", "duplicates"]))
    cells = np.zeros((4, 4), bool)
    cells[1, [0, 3]] = cells[[0, 3], 1] = True  # offset is model 1
    for name in NAMES:
        np.testing.assert_allclose(got[name][cells], full[name][cells], rtol=1e-12, atol=1e-14, err_msg=name)
        assert np.isnan(got[name][~cells]).all(), name
    with pytest.raises(ValueError, match=r"`between\[1\]`"):
        pairwise_matrices(feats, between=(["offset"], ["svcca"]))
    with pytest.raises(ValueError, match="`between`"):
        pairwise_matrices(feats, between=["offset"])


def test_a_changed_model_set_computes_only_the_new_rows_and_columns(tmp_path, swept64, monkeypatch):
    import jaxalign.sweep as sweep

    feats, full = swept64
    names = list(feats)
    with jax.enable_x64(True):
        _sweep({k: feats[k] for k in names[:3]}, journal=tmp_path)  # three models first
        seen = []
        real = sweep._pass_unit
        monkeypatch.setattr(sweep, "_pass_unit", lambda *a, **kw: seen.append(kw["cells"]) or real(*a, **kw))
        spied = sweep._pair_matrices
        monkeypatch.setattr(sweep, "_pair_matrices", lambda *a: seen.append(a[2]) or spied(*a))
        got = _sweep(feats, journal=tmp_path)  # then the fourth joins
    assert seen and all(c.left == (3,) and c.right == (0, 1, 2, 3) for c in seen)  # only its row and column
    for name in NAMES:
        np.testing.assert_allclose(got[name], full[name], rtol=1e-10, atol=1e-12, err_msg=name)
    seen.clear()
    with jax.enable_x64(True):
        sub = _sweep({k: feats[k] for k in names[1:]}, journal=tmp_path)  # a subset: all of it from the journal
    assert seen == []
    for name in NAMES:
        np.testing.assert_allclose(sub[name], full[name][1:, 1:], rtol=1e-10, atol=1e-12, err_msg=name)
