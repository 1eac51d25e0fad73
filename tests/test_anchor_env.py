"""The anchor environments of extractors.envs (torch-free, without this repository; DADApy's) and their runner.

Unit level, no network: venv creation and pip are replaced by fakes that record what would be installed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from anchors import dadapy_runner
from extractors import envs


class _FakeBuilder:
    """Stands in for venv.EnvBuilder: makes the interpreter file only."""

    def __init__(self, **_: object) -> None:
        pass

    def create(self, directory: Path) -> None:
        (Path(directory) / "bin").mkdir(parents=True)
        (Path(directory) / "bin" / "python").touch()


@pytest.fixture
def pip_calls(monkeypatch, tmp_path) -> list[list[str]]:
    """Environments under tmp_path, built by fakes; the list of every ``pip install`` argument list."""
    calls: list[list[str]] = []
    monkeypatch.setenv(envs.ENV_VAR, str(tmp_path))
    monkeypatch.setattr(envs.venv, "EnvBuilder", _FakeBuilder)
    monkeypatch.setattr(envs, "_pip", lambda python, args, quiet: calls.append(list(args)))
    monkeypatch.setattr(envs, "_installed", lambda python, names: dict.fromkeys(names, "fake"))
    return calls


def _marker(name: str) -> dict:
    return json.loads((envs.env_dir(name) / envs.MARKER).read_text())


def test_dadapy_env_is_declared_torch_free_and_pinned():
    env = envs.spec("dadapy")
    assert "dadapy" in envs.families() and envs.ANCHOR_ENVS["dadapy"] == env
    assert env.base == "none" and not env.install_repo and env.remove == ()
    assert env.install() == env.requirements == envs.DADAPY_REQUIREMENTS == envs.requirements("dadapy")
    pins = dict(r.split("==") for r in env.install())
    assert len(pins) == len(env.install())  # every requirement is an exact pin
    assert "torch" not in pins and pins["dadapy"] == "0.3.4" and pins["jax"] == pins["jaxlib"] == "0.4.30"
    assert int(pins["numpy"].split(".")[0]) == 1  # DADApy's extensions are built against numpy 1.x
    assert {"optax", "flax"} <= set(pins)  # imported by `import dadapy`


def test_family_envs_keep_the_torch_base():
    """Every family environment starts from a base that pins torch: the main one (torch 2.13, its CPU wheel on disk),
    or the torch its library needs (fairchem-core 1.x: torch 2.4.1)."""
    for name in set(envs.families()) - set(envs.ANCHOR_ENVS):
        env = envs.spec(name)
        assert env.install_repo and env.base in ("torch", "torch-2.4"), (name, env.base)
        assert env.install() == (*envs.BASES[env.base], *envs.requirements(name))
        assert any(r.startswith("torch==") for r in envs.BASES[env.base])
    assert {n for n in envs.families() if envs.spec(n).base != "torch"} - set(envs.ANCHOR_ENVS) == {"fairchem-v1"}
    assert envs.spec("mace", extra=("x==1",)).requirements == (*envs.requirements("mace"), "x==1")
    with pytest.raises(ValueError, match="no environment 'no-such-env' is declared"):
        envs.spec("no-such-env")


def test_spec_hash_follows_the_spec():
    env = envs.spec("dadapy")
    assert envs.spec_hash(env) == envs.spec_hash(envs.spec("dadapy"))  # deterministic
    changed = [
        dataclasses.replace(env, requirements=(*env.requirements[:-1], "scikit-learn==1.8.1")),
        dataclasses.replace(env, base="torch"),
        dataclasses.replace(env, remove=("seaborn",)),
        dataclasses.replace(env, install_repo=True),
        dataclasses.replace(env, compiled=("torch-scatter==2.1.2",)),
    ]
    hashes = {envs.spec_hash(e) for e in [env, *changed]}
    assert len(hashes) == 1 + len(changed)
    assert envs.spec_hash(dataclasses.replace(env, family="other")) == envs.spec_hash(env)  # only contents count


def test_create_anchor_env_installs_only_its_requirements(pip_calls):
    python = envs.create("dadapy")
    assert python == envs.env_dir("dadapy") / "bin" / "python" == envs.find_python("dadapy")
    assert pip_calls == [list(envs.DADAPY_REQUIREMENTS)]  # no torch base, no `-e <this repository>`
    marker = _marker("dadapy")
    assert marker["base"] == "none" and marker["repository"] is None
    assert marker["spec_hash"] == envs.spec_hash(envs.spec("dadapy")) and envs.is_current("dadapy")


def test_create_family_env_keeps_base_and_repository(pip_calls):
    envs.create("mace")
    assert pip_calls == [[*envs.BASE_REQUIREMENTS, *envs.requirements("mace")], ["--no-deps", "-e", str(envs.ROOT)]]
    assert _marker("mace")["base"] == "torch" and envs.is_current("mace")


def test_current_env_is_kept_and_stale_one_rebuilt(pip_calls, monkeypatch):
    envs.create("dadapy")
    envs.create("dadapy")
    assert len(pip_calls) == 1  # current: kept
    envs.create("dadapy", force=True)
    assert len(pip_calls) == 2

    marker_path = envs.env_dir("dadapy") / envs.MARKER
    for stale in ({**_marker("dadapy"), "spec_hash": "0123456789abcdef"}, {}):  # another spec; a marker without one
        marker_path.write_text(json.dumps(stale))
        assert envs.find_python("dadapy") is not None and not envs.is_current("dadapy")
        envs.create("dadapy")
        assert envs.is_current("dadapy")
    assert len(pip_calls) == 4

    bumped = dataclasses.replace(envs.ANCHOR_ENVS["dadapy"], requirements=(*envs.DADAPY_REQUIREMENTS, "tqdm==4.67.1"))
    monkeypatch.setitem(envs.ANCHOR_ENVS, "dadapy", bumped)
    assert not envs.is_current("dadapy")  # the declared requirements changed
    envs.create("dadapy")
    assert pip_calls[-1] == list(bumped.requirements) and envs.is_current("dadapy") and len(pip_calls) == 5
    assert not envs.is_current("dadapy", extra=("x==1",))


def test_failed_build_leaves_nothing(pip_calls, monkeypatch):
    def fail(python, args, quiet):
        raise RuntimeError("pip failed")

    monkeypatch.setattr(envs, "_pip", fail)
    with pytest.raises(RuntimeError, match="pip failed"):
        envs.create("dadapy")
    assert not envs.env_dir("dadapy").exists() and envs.find_python("dadapy") is None


def test_list_shows_anchor_envs_and_staleness(pip_calls, capsys):
    assert envs.main(["list"]) == 0
    assert any(ln.startswith("dadapy") and ln.endswith("not created") for ln in capsys.readouterr().out.splitlines())
    envs.create("dadapy")
    (envs.env_dir("dadapy") / envs.MARKER).write_text("{}")
    assert envs.main(["list"]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("dadapy")]
    assert line.endswith(f"{envs.find_python('dadapy')} (stale)") and "dadapy==0.3.4" in line


def test_runner_names_env_and_command_when_the_build_fails(monkeypatch):
    def fail(name, root=None):
        raise RuntimeError("no network")

    monkeypatch.setattr(envs, "create", fail)
    with pytest.raises(RuntimeError, match=r"'dadapy' anchor environment.*python -m extractors\.envs create dadapy"):
        dadapy_runner.twonn(np.zeros((5, 2)))


def test_runner_packs_each_array_once_as_json_calls():
    x, y = np.arange(6.0).reshape(3, 2), np.ones((3, 1), np.float32)
    calls = [
        dadapy_runner.twonn_call(x),
        dadapy_runner.twonn_call(x, "ml", 1),
        dadapy_runner.information_imbalance_call(x, y, k=np.int64(2)),
    ]
    arrays, listed = dadapy_runner._pack(calls)
    assert list(arrays) == ["a0", "a1"] and arrays["a1"].dtype == np.float32
    assert listed == [
        {"function": "twonn", "arrays": ["a0"], "options": {"algorithm": "base", "mu_fraction": 0.9}},
        {"function": "twonn", "arrays": ["a0"], "options": {"algorithm": "ml", "mu_fraction": 1.0}},
        {"function": "information_imbalance", "arrays": ["a0", "a1"], "options": {"k": 2}},
    ]
    assert json.loads(json.dumps(listed)) == listed  # plain JSON


def test_worker_env_drops_main_jax_settings():
    environ = {"PATH": "/bin", "JAX_ENABLE_X64": "1", "XLA_FLAGS": "--xla_foo", "OMP_NUM_THREADS": "2"}
    assert dadapy_runner._worker_env(environ) == {"PATH": "/bin", "OMP_NUM_THREADS": "2"}
