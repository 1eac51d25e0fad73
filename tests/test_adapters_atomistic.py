"""Atomistic adapters with real loading code (MACE, Orb, fairchem UMA/eSEN, PET-MAD/UPET, DPA-3, MatterSim).

Each family is tested on a tiny randomly initialised model of its real architecture, built with the library's own
classes and saved in the format of its released checkpoints, then loaded through the adapter's real loading path
(the same call a pretrained file takes). On two molecules and a crystal: shapes, finite values, pooled features =
mean of the per-atom ones, batched = one at a time, features = the layer read on the library's own prediction path,
the energy = the library's ASE calculator's, an unsupported element recorded per structure, and a full extraction
into an embedding file.

The families' packages pin conflicting dependencies, so they live in per-family environments
(``python -m extractors.envs create FAMILY``). The ``test_inner_<family>_*`` tests run wherever the family's package
is importable; in the main environment ``test_family_in_its_environment`` re-runs them under the family's
interpreter, building MACE's environment when it is missing and skipping the others' (saying how to create them).
This module imports only numpy, pytest, ase and extractors, so it runs under any family interpreter (with
``--noconftest``: tests/conftest.py needs jax).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ase")

from ase.build import bulk, molecule

from extractors import Record, build_extractor, envs, run_extraction
from extractors.embedding_file import read_npz
from extractors.faults import UsageError

ROOT = Path(__file__).resolve().parents[1]
ENERGY_RTOL, ENERGY_ATOL = 1e-5, 1e-5  # the adapter's energy vs the library calculator's (float32 models)
FEATURE_RTOL, FEATURE_ATOL = 1e-5, 1e-5  # batched vs one at a time, adapter vs the library's own path (float32)
FAMILIES = {  # family → the import that tells its package is here
    "mace": "mace",
    "orb": "orb_models",
    "fairchem": "fairchem.core",
    "petmad": "upet",
    "dpa3": "deepmd",
    "mattersim": "mattersim",
}
#: Further environments of a family (``EXTRA_ENVS``) → (the import that tells its package is here, the prefix of its
#: ``test_inner_<prefix>_*`` tests): EquiformerV2 under fairchem-core 1.x.
EXTRA_ENVIRONMENTS = {"fairchem-v1": ("fairchem.core.common.relaxation.ase_utils", "eqv2")}
#: Families whose environment this test builds when it is missing (about a minute: MACE pins e3nn==0.4.4, which
#: SevenNet in the main environment cannot share). The others' packages are heavier or pin an older torch: their tests
#: skip, saying how to build the environment.
BUILT_ON_DEMAND = frozenset({"mace"})
TINY_Z = (1, 6, 7, 8, 14)  # the elements the tiny models know (H, C, N, O, Si)


def _here(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _is_fairchem_v1() -> bool:
    """fairchem-core 1.x here (EquiformerV2's OCPCalculator), not 2.x."""
    try:
        return importlib.metadata.version("fairchem-core").startswith("1.")
    except importlib.metadata.PackageNotFoundError:
        return False


def _mol(name: str):
    a = molecule(name)
    a.center(vacuum=4.0)
    return a


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return [
        Record(id="CH4", atoms=_mol("CH4")),
        Record(id="H2O", atoms=_mol("H2O")),
        Record(id="Si", atoms=bulk("Si", "diamond", a=5.43)),
    ]


def _check_common(ext, records, d: int | None = None) -> list:
    """Shapes, finiteness, pooling and batched = one at a time; returns the batched embeddings."""
    emb = ext.embed(records)
    assert len(emb) == len(records)
    dims = {e.atom_features.shape[1] for e in emb}
    assert len(dims) == 1 and (d is None or dims == {d}), dims
    for r, e in zip(records, emb, strict=True):
        assert e.atom_features.shape[0] == len(r.atoms)
        assert e.features.shape == (e.atom_features.shape[1],)
        assert np.isfinite(e.atom_features).all() and np.isfinite(e.features).all() and np.isfinite(e.energy)
        np.testing.assert_allclose(e.features, e.atom_features.mean(axis=0), rtol=1e-6, atol=1e-7)
        alone = ext.embed([r])[0]
        np.testing.assert_allclose(alone.atom_features, e.atom_features, rtol=FEATURE_RTOL, atol=FEATURE_ATOL)
        np.testing.assert_allclose(alone.energy, e.energy, rtol=ENERGY_RTOL, atol=ENERGY_ATOL)
    assert np.ptp(np.stack([e.features for e in emb]), axis=0).max() > 0  # structures are told apart
    return emb


def _check_energy(emb, records, calc) -> None:
    for r, e in zip(records, emb, strict=True):
        atoms = r.atoms.copy()
        atoms.calc = calc
        np.testing.assert_allclose(e.energy, atoms.get_potential_energy(), rtol=ENERGY_RTOL, atol=ENERGY_ATOL)


def _check_file(ext, model, records, tmp_path, unsupported: bool = True) -> None:
    """A full extraction into an embedding file; an element the tiny model does not know becomes a failure record."""
    recs = list(records)
    if unsupported:
        recs.append(Record(id="Cu", atoms=bulk("Cu", "fcc", a=3.6)))
    path = run_extraction(model, "inline", tmp_path, extractor=ext, records=recs, progress=False, name="out")
    data = read_npz(path)
    meta = json.loads(str(data["meta"]))
    assert [str(s) for s in data["structure_ids"]] == [r.id for r in records]
    assert data["atom_features"].shape[0] == int(data["n_atoms"].sum()) == sum(len(r.atoms) for r in records)
    assert np.isfinite(data["features"]).all() and np.isfinite(data["energy"]).all()
    assert meta["model_info"]["layer_detail"]
    if unsupported:
        reason = meta["failures"][0]["reason"]
        assert [f["id"] for f in meta["failures"]] == ["Cu"] and ("29" in reason or "Cu" in reason), reason


def _needs_weights(model: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match="weights"):
        build_extractor(model)


# --------------------------------------------------------------------------------------------------- environments
def test_envs_declarations(tmp_path, monkeypatch):
    declared = envs.families()
    for family in FAMILIES:
        assert family in declared
        assert any("==" in r for r in envs.requirements(family))  # the family's package is pinned
    assert envs.requirements("fairchem-v1") == ("fairchem-core==1.10.0", "scipy==1.14.1")
    assert envs.spec("fairchem-v1").base == "torch-2.4" and "torch-sparse==0.6.18" in envs.spec("fairchem-v1").compiled
    assert "torch==2.13.0" in envs.BASE_REQUIREMENTS
    with pytest.raises(ValueError, match="no environment"):
        envs.requirements("no-such-family")
    monkeypatch.setenv(envs.ENV_VAR, str(tmp_path))
    assert envs.envs_root() == tmp_path and envs.env_dir("mace") == tmp_path / "mace"
    assert envs.envs_root(tmp_path / "x") == tmp_path / "x"
    assert envs.find_python("mace") is None  # no environment there
    (tmp_path / "mace" / "bin").mkdir(parents=True)
    (tmp_path / "mace" / "bin" / "python").touch()
    assert envs.find_python("mace") is None  # half made: no marker
    (tmp_path / "mace" / envs.MARKER).write_text("{}")
    assert envs.find_python("mace") == tmp_path / "mace" / "bin" / "python"
    monkeypatch.delenv(envs.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert envs.envs_root() == tmp_path / "cache" / "jaxalign" / "envs"


def test_envs_cli_path(tmp_path):
    env = {**os.environ, envs.ENV_VAR: str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "extractors.envs", "path", "mace"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 1 and "no mace environment" in done.stderr


@pytest.mark.parametrize("family", sorted(FAMILIES) + sorted(EXTRA_ENVIRONMENTS))
def test_family_in_its_environment(family):
    """Run this file's ``test_inner_<family>`` tests (``test_inner_<prefix>`` of an extra environment) under the
    environment's own interpreter."""
    module, prefix = EXTRA_ENVIRONMENTS.get(family, (FAMILIES.get(family), family))
    if _here(module) and (family not in EXTRA_ENVIRONMENTS or _is_fairchem_v1()):
        pytest.skip(f"{family}'s package is importable here: its test_inner_{prefix}_* tests run in this session")
    python = envs.find_python(family)
    if python is None and family in BUILT_ON_DEMAND:
        python = envs.create(family)  # a failed build fails the test with pip's error
    if python is None:
        pytest.skip(
            f"no {family} environment under {envs.envs_root()}: create it with `python -m extractors.envs create "
            f"{family}` (or set {envs.ENV_VAR})"
        )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # -o addopts=: the family environment has no pytest-xdist (the main run's -n 2 is not for it)
    cmd = [
        str(python),
        "-m",
        "pytest",
        str(Path(__file__)),
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "--noconftest",
        "-o",
        "addopts=",
    ]
    done = subprocess.run(
        [*cmd, "-k", f"test_inner_{prefix}_"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, tail
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], tail


# --------------------------------------------------------------------------------------------------- MACE
@pytest.fixture(scope="module")
def mace_file(tmp_path_factory):
    pytest.importorskip("mace")
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 loads its constants with torch.load
    import torch
    from e3nn import o3
    from mace import modules

    torch.manual_seed(0)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=4.0,
        num_bessel=4,
        num_polynomial_cutoff=5,
        max_ell=2,
        interaction_cls=block,
        interaction_cls_first=block,
        num_interactions=2,
        num_elements=len(TINY_Z),
        hidden_irreps=o3.Irreps("8x0e+8x1o"),
        MLP_irreps=o3.Irreps("4x0e"),
        atomic_energies=np.linspace(-1.0, -5.0, len(TINY_Z)),
        avg_num_neighbors=8.0,
        atomic_numbers=list(TINY_Z),
        correlation=2,
        gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    path = tmp_path_factory.mktemp("mace") / "tiny.model"
    torch.save(model, path)  # the released .model files are torch.save-d modules
    return path


@pytest.mark.parametrize(("invariants_only", "layer"), [(True, "last"), (False, "layer1")])
def test_inner_mace_descriptors(mace_file, records, invariants_only, layer):
    """``all`` = get_descriptors' whole array; one layer = its columns (8x0e+8x1o: 8 invariants or 32 channels per
    non-last layer; the last layer has 8 invariants)."""
    full = build_extractor("mace", weights=str(mace_file), layer="all", invariants_only=invariants_only)
    one = build_extractor("mace", weights=str(mace_file), layer=layer, invariants_only=invariants_only)
    widths = [8, 8] if invariants_only else [32, 8]
    assert full.widths == widths
    cols = slice(widths[0], sum(widths)) if layer == "last" else slice(0, widths[0])
    emb_full = _check_common(full, records, sum(widths))
    emb_one = _check_common(one, records, cols.stop - cols.start)
    for r, e_full, e_one in zip(records, emb_full, emb_one, strict=True):
        desc = full.calc.get_descriptors(r.atoms, invariants_only=invariants_only)
        np.testing.assert_allclose(e_full.atom_features, desc, rtol=FEATURE_RTOL, atol=FEATURE_ATOL)
        np.testing.assert_allclose(e_one.atom_features, desc[:, cols], rtol=FEATURE_RTOL, atol=FEATURE_ATOL)
    _check_energy(emb_full, records, full.calc)


def test_inner_mace_file_and_errors(mace_file, records, tmp_path):
    ext = build_extractor("mace-mp-0-medium", weights=str(mace_file))
    _check_file(ext, "mace-mp-0-medium", records, tmp_path)
    with pytest.raises(ValueError, match="layer"):
        build_extractor("mace", weights=str(mace_file), layer="layer3")
    _needs_weights("mace")
    from extractors.models.mace import _cache_path

    if not _cache_path("mp", "medium")[0].is_file():  # a released file in MACE's cache would be loaded instead
        _needs_weights("mace-mp-0-medium")


# --------------------------------------------------------------------------------------------------- Orb
@pytest.fixture(scope="module")
def orb_file(tmp_path_factory):
    pytest.importorskip("orb_models")
    import torch
    from orb_models.forcefield import pretrained

    torch.manual_seed(0)
    model = pretrained.orb_v3_direct_architecture()  # the released architecture (random weights)
    path = tmp_path_factory.mktemp("orb") / "orb-v3-direct-20-omat.ckpt"
    torch.save(model.state_dict(), path)  # the released .ckpt files are state dicts
    return path


def test_inner_orb_features(orb_file, records, tmp_path):
    from orb_models.forcefield.calculator import ORBCalculator

    ext = build_extractor("orb-v3-direct-20-omat", weights=str(orb_file))
    emb = _check_common(ext, records, 256)
    calc = ORBCalculator(ext.model, device="cpu")
    _check_energy(emb, records, calc)
    for r, e in zip(records, emb, strict=True):  # node_features on the calculator's own path
        seen = []
        handle = ext.model.model.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
        try:
            atoms = r.atoms.copy()
            atoms.calc = ORBCalculator(ext.model, device="cpu")
            atoms.get_potential_energy()
        finally:
            handle.remove()
        np.testing.assert_allclose(
            e.atom_features, seen[0]["node_features"].numpy(), rtol=FEATURE_RTOL, atol=FEATURE_ATOL
        )
    _check_file(ext, "orb-v3-direct-20-omat", records, tmp_path, unsupported=False)
    # no released checkpoint in cached_path's cache → a clear error naming the option (and no download attempt)
    with pytest.raises(UsageError, match=r"no local checkpoint\. Download https://.*--opt weights=PATH"):
        build_extractor("orb-v3-conservative-inf-omat")


def test_inner_orb_randomized(orb_file, records):
    """Seed 000's "Orb V3 OMat Direct 20 Randomized": the library's direct-20 OMat architecture (25,644,479
    parameters, the table's count) with seeded random weights; a seed gives the same model (the file the fixture
    saved under seed 0 holds the same weights), another seed another; no weights file is taken."""
    import torch

    ext = build_extractor("orb-v3-direct-20-omat-randomized")
    assert sum(p.numel() for p in ext.model.parameters()) == 25_644_479
    assert ext.model.system_config.max_num_neighbors == 20 and ext.model.system_config.radius == 6.0
    saved = torch.load(orb_file, weights_only=True)
    state = ext.model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    emb = _check_common(ext, records, 256)
    np.testing.assert_allclose(
        emb[0].features,
        build_extractor("orb-v3-direct-20-omat", weights=str(orb_file)).embed(records[:1])[0].features,
        rtol=FEATURE_RTOL,
        atol=FEATURE_ATOL,
    )
    other = build_extractor("orb-v3-direct-20-omat-randomized", seed=1).embed(records[:1])[0].features
    assert not np.allclose(other, emb[0].features, atol=1e-3)
    assert ext.info()["weights"] is None
    with pytest.raises(ValueError, match="takes no weights file"):
        build_extractor("orb-v3-direct-20-omat-randomized", weights=str(orb_file))


# --------------------------------------------------------------------------------------------------- fairchem
def _fairchem_checkpoint(path: Path) -> Path:
    """A tiny UMA: the MoLE backbone (2 experts, omat + omol), a dataset-specific MLP_EFS_Head and its tasks, saved as
    the MLIPInferenceCheckpoint the released .pt files are."""
    import hydra
    import torch
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    datasets = {"omat": "omat", "omol": "omol"}
    backbone = {
        "model": "fairchem.core.models.uma.escn_moe.eSCNMDMoeBackbone",
        "num_experts": 2,
        "use_composition_embedding": True,
        "sphere_channels": 8,
        "lmax": 2,
        "mmax": 2,
        "otf_graph": True,
        "max_neighbors": 30,
        "cutoff": 5.0,
        "edge_channels": 8,
        "num_distance_basis": 16,
        "direct_forces": False,
        "regress_forces": True,
        "regress_stress": True,
        "num_layers": 2,
        "hidden_channels": 8,
        "act_type": "gate",
        "dataset_mapping": datasets,
    }
    head = {
        "module": "fairchem.core.models.uma.escn_moe.DatasetSpecificMoEWrapper",
        "head_cls": "fairchem.core.models.uma.escn_md.MLP_EFS_Head",
        "dataset_mapping": datasets,
        "head_kwargs": {"wrap_property": False},
    }
    model_config = {
        "_target_": "fairchem.core.models.base.HydraModel",
        "backbone": backbone,
        "heads": {"efs": head},
        "pass_through_head_outputs": True,
        "model_id": "UMA-1.2",
    }

    def task(ds, prop, level, dim):
        out = {
            "_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task",
            "name": f"{ds}_{prop}",
            "level": level,
            "property": prop,
            "out_spec": {
                "_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec",
                "dim": dim,
                "dtype": "float32",
            },
            "normalizer": {
                "_target_": "fairchem.core.modules.normalization.normalizer.Normalizer",
                "mean": 0.0,
                "rmsd": 1.5,
            },
            "datasets": [ds],
        }
        if prop == "energy":
            out["element_references"] = {
                "_target_": "fairchem.core.modules.normalization.element_references.ElementReferences",
                "element_references": {"_target_": "torch.DoubleTensor", "_args_": [list(-np.linspace(0, 3, 101))]},
            }
        return out

    tasks = [
        task(ds, p, lv, d)
        for ds in datasets
        for p, lv, d in (("energy", "system", [1]), ("forces", "atom", [3]), ("stress", "system", [1, 9]))
    ]
    torch.manual_seed(0)
    model = hydra.utils.instantiate(model_config)
    ema = torch.optim.swa_utils.AveragedModel(model)
    torch.save(
        MLIPInferenceCheckpoint(
            model_config=copy.deepcopy(model_config),
            model_state_dict=model.state_dict(),
            ema_state_dict=ema.state_dict(),
            tasks_config=tasks,
        ),
        path,
    )
    return path


@pytest.fixture(scope="module")
def fairchem_file(tmp_path_factory):
    pytest.importorskip("fairchem.core")
    return _fairchem_checkpoint(tmp_path_factory.mktemp("fairchem") / "tiny_uma.pt")


def test_inner_fairchem_features(fairchem_file, records, tmp_path):
    from fairchem.core import FAIRChemCalculator

    per_task = {}
    for task in ("omat", "omol"):
        ext = build_extractor("fairchem", weights=str(fairchem_file), task=task)
        emb = per_task[task] = _check_common(ext, records, 8)
        calc = FAIRChemCalculator(ext.unit, task_name=task)
        _check_energy(emb, records, calc)
        for r, e in zip(records, emb, strict=True):  # the embeddings output on the calculator's own path
            seen = []
            handle = ext.unit.model.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
            try:
                atoms = r.atoms.copy()
                atoms.calc = FAIRChemCalculator(ext.unit, task_name=task)
                atoms.get_potential_energy()
            finally:
                handle.remove()
            ref = seen[0][f"{task}_embeddings"]["embeddings"][:, 0].detach().numpy()
            np.testing.assert_allclose(e.atom_features, ref, rtol=FEATURE_RTOL, atol=FEATURE_ATOL)
    assert not np.allclose(per_task["omat"][0].atom_features, per_task["omol"][0].atom_features, atol=1e-4)
    l1 = build_extractor("fairchem", weights=str(fairchem_file), task="omat", layer="last_l1").embed(records)
    np.testing.assert_allclose(
        l1[0].atom_features[:, :8], per_task["omat"][0].atom_features, rtol=FEATURE_RTOL, atol=FEATURE_ATOL
    )
    assert l1[0].atom_features.shape[1] == 4 * 8
    _check_file(ext, "fairchem", records, tmp_path, unsupported=False)
    with pytest.raises(ValueError, match="task"):
        build_extractor("fairchem", weights=str(fairchem_file), task="oc20")
    _needs_weights("fairchem")


# --------------------------------------------------------------------------------------------------- EquiformerV2
@pytest.fixture(scope="module")
def eqv2_files(tmp_path_factory):
    """Tiny EquiformerV2 models (one block, 8 channels, l ≤ 2) built by fairchem-core 1.x's own model registry (its
    ``hydra`` model: the EquiformerV2 backbone and heads, and the DeNS backbone and heads of the ``eqv2-dens-*``
    rows), saved in the released checkpoints' layout (``config`` + ``state_dict``) that OCPCalculator loads; model id
    → file."""
    if not _is_fairchem_v1():
        pytest.skip("EquiformerV2 needs fairchem-core 1.x: run in its environment (python -m extractors.envs create "
                    "fairchem-v1)")  # fmt: skip
    import torch
    from fairchem.core.common.registry import registry
    from fairchem.core.common.utils import setup_imports

    setup_imports()  # fills the registry, as the library's trainers do
    out = {}
    for model, kind, head in (
        ("eqv2-31m-omat", "equiformer_v2_backbone", ("equiformer_v2_energy_head", "equiformer_v2_force_head")),
        ("eqv2-dens-31m-mp", "equiformer_v2_dens_backbone", ("eqV2_DeNS_scalar_head", "eqV2_DeNS_vector_head")),
    ):
        backbone = {
            "model": kind, "use_pbc": True, "regress_forces": True, "otf_graph": True, "max_neighbors": 20,
            "max_radius": 6.0, "max_num_elements": 96, "num_layers": 1, "sphere_channels": 8, "attn_hidden_channels": 8,
            "num_heads": 2, "attn_alpha_channels": 4, "attn_value_channels": 4, "ffn_hidden_channels": 8,
            "lmax_list": [2], "mmax_list": [1], "grid_resolution": 8, "num_sphere_samples": 16, "edge_channels": 8,
            "num_distance_basis": 16, "alpha_drop": 0.0, "drop_path_rate": 0.0,
        }  # fmt: skip
        heads = {"energy": {"module": head[0]}, "forces": {"module": head[1]}}
        config = {
            "trainer": "ocp",
            "model": {"name": "hydra", "backbone": backbone, "heads": heads, "otf_graph": True},
            "dataset": {"src": "none", "format": "ase_db"},
            "task": {},
            "outputs": {
                "energy": {"property": "energy", "shape": 1, "level": "system"},
                "forces": {
                    "property": "forces",
                    "shape": 3,
                    "level": "atom",
                    "train_on_free_atoms": True,
                    "eval_on_free_atoms": True,
                },
            },
            "loss_functions": [
                {"energy": {"fn": "mae", "coefficient": 1}},
                {"forces": {"fn": "l2mae", "coefficient": 1}},
            ],
            "evaluation_metrics": {"metrics": {"energy": ["mae"], "forces": ["mae"]}},
            "optim": {
                "batch_size": 1,
                "eval_batch_size": 1,
                "num_workers": 0,
                "max_epochs": 1,
                "optimizer": "AdamW",
                "optimizer_params": {},
                "lr_initial": 1e-4,
            },
        }
        torch.manual_seed(0)
        net = registry.get_model_class("hydra")(backbone=copy.deepcopy(backbone), heads=heads, otf_graph=True)
        state = {f"module.{k}": v for k, v in net.state_dict().items()}  # the trainers' DataParallel-style keys
        out[model] = tmp_path_factory.mktemp("eqv2") / f"{model}.pt"
        torch.save({"config": config, "state_dict": state, "normalizers": {}, "amp": None, "ema": None}, out[model])
    return out


def test_inner_eqv2_features(eqv2_files, records, tmp_path):
    """EquiformerV2 rows (fairchem-core 1.x), plain and DeNS: the backbone's L = 0 node embedding per atom through
    the library's OCPCalculator(checkpoint_path=...), batched = one at a time, the energy equal to the calculator's,
    the features equal to the calculator's own single-structure pass."""
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    for model, path in eqv2_files.items():
        ext = build_extractor(model, weights=str(path))
        emb = _check_common(ext, records, 8)
        calc = OCPCalculator(checkpoint_path=str(path), cpu=True, seed=0)
        _check_energy(emb, records, calc)
        own = getattr(calc.trainer.model, "module", calc.trainer.model)  # the calculator's own copy of the weights
        for r, e in zip(records, emb, strict=True):
            seen = []
            handle = own.backbone.register_forward_hook(
                lambda _m, _i, out, seen=seen: seen.append(out["node_embedding"].embedding[:, 0].detach())
            )
            try:
                atoms = r.atoms.copy()
                atoms.calc = calc
                atoms.get_potential_energy()
            finally:
                handle.remove()
            np.testing.assert_allclose(e.atom_features, seen[0].numpy(), rtol=FEATURE_RTOL, atol=FEATURE_ATOL)
        _check_file(ext, model, records, tmp_path / model, unsupported=False)
    _needs_weights("eqv2-31m-omat")


# --------------------------------------------------------------------------------------------------- PET-MAD / UPET
@pytest.fixture(scope="module")
def pet_file(tmp_path_factory):
    pytest.importorskip("upet")
    import torch
    from metatrain.pet import PET
    from metatrain.utils.architectures import get_default_hypers
    from metatrain.utils.data import DatasetInfo
    from metatrain.utils.data.target_info import get_energy_target_info

    hypers = copy.deepcopy(get_default_hypers("pet")["model"])
    hypers.update(d_pet=8, d_head=8, d_node=8, d_feedforward=16, num_heads=2, num_gnn_layers=1, num_attention_layers=1)
    info = DatasetInfo(
        length_unit="Angstrom",
        atomic_types=list(TINY_Z),
        targets={"energy": get_energy_target_info("energy", {"quantity": "energy", "unit": "eV"})},
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pet") / "tiny.ckpt"
    torch.save(PET(hypers, info).get_checkpoint(), path)  # metatrain's checkpoint format, as the released .ckpt
    return path


def test_inner_petmad_features(pet_file, records, tmp_path):
    from metatomic.torch import ModelOutput
    from upet.ase import UPETCalculator

    last = build_extractor("upet", weights=str(pet_file))
    backbone = build_extractor("upet", weights=str(pet_file), layer="backbone")
    emb = _check_common(last, records)
    _check_common(backbone, records)
    calc = UPETCalculator(checkpoint_path=str(pet_file), device="cpu")
    _check_energy(emb, records, calc)
    for r, e in zip(records, emb, strict=True):  # the output on the calculator's own single-structure path
        out = calc._base_calculator.run_model(r.atoms, {last.output: ModelOutput(per_atom=True)})
        np.testing.assert_allclose(
            e.atom_features, out[last.output].block().values.numpy(), rtol=FEATURE_RTOL, atol=FEATURE_ATOL
        )
    assert last.output == "mtt::aux::energy_last_layer_features"
    _check_file(last, "upet", records, tmp_path)
    with pytest.raises(ValueError, match="layer"):
        build_extractor("upet", weights=str(pet_file), layer="middle")
    _needs_weights("upet")


def test_inner_petmad_dos(records, tmp_path):
    """PET-MAD-DOS on a tiny PET with a 12-bin density-of-states target, loaded by upet's own get_pet_mad_dos: the
    DOS head's last-layer features (and the backbone's) equal the library's output for each structure alone, batched
    or not; no energy; dtype and variant are refused."""
    pytest.importorskip("upet")
    import torch
    from metatomic.torch import ModelOutput
    from metatomic_ase import MetatomicCalculator
    from metatrain.pet import PET
    from metatrain.utils.architectures import get_default_hypers
    from metatrain.utils.data import DatasetInfo
    from metatrain.utils.data.target_info import get_generic_target_info
    from upet.ase.dos import get_pet_mad_dos

    hypers = copy.deepcopy(get_default_hypers("pet")["model"])
    hypers.update(d_pet=8, d_head=8, d_node=8, d_feedforward=16, num_heads=2, num_gnn_layers=1, num_attention_layers=1)
    dos = {"quantity": "", "unit": "", "type": "scalar", "num_subtargets": 12, "sample_kind": "system"}
    info = DatasetInfo(
        length_unit="Angstrom",
        atomic_types=list(TINY_Z),
        targets={"mtt::dos": get_generic_target_info("mtt::dos", dos)},
    )
    torch.manual_seed(0)
    path = tmp_path / "tiny-dos.ckpt"
    torch.save(PET(hypers, info).get_checkpoint(), path)
    for layer, output in (("last", "mtt::aux::dos_last_layer_features"), ("backbone", "feature")):
        ext = build_extractor("pet-mad-dos", weights=str(path), layer=layer)
        assert ext.output == output and not ext.has_energy and ext.info()["energy_output"] is None
        emb = ext.embed(records)
        calc = MetatomicCalculator(get_pet_mad_dos(version="1.0", model_path=str(path)), additional_outputs={})
        for r, e in zip(records, emb, strict=True):
            assert e.energy is None and e.atom_features.shape == (len(r.atoms), 16)
            alone = calc.run_model(r.atoms, {output: ModelOutput(per_atom=True)})[output].block().values.numpy()
            np.testing.assert_allclose(e.atom_features, alone, rtol=FEATURE_RTOL, atol=FEATURE_ATOL)
            np.testing.assert_allclose(e.features, alone.mean(axis=0), rtol=FEATURE_RTOL, atol=FEATURE_ATOL)
    with pytest.raises(ValueError, match="takes neither dtype nor variant"):
        build_extractor("pet-mad-dos", weights=str(path), variant="r2scan")
    _needs_weights("pet-mad-dos")


# --------------------------------------------------------------------------------------------------- DPA-3
@pytest.fixture(scope="module")
def dpa3_file(tmp_path_factory):
    pytest.importorskip("deepmd")
    from extractors.models.dpa3 import import_deepmd_pt

    import_deepmd_pt()
    import torch
    from ase.data import chemical_symbols
    from deepmd.pt.model.model import get_model
    from deepmd.pt.train.wrapper import ModelWrapper
    from deepmd.utils.argcheck import model_args

    params = {
        "type_map": [chemical_symbols[z] for z in TINY_Z],
        "descriptor": {
            "type": "dpa3",
            "repflow": {
                "n_dim": 8,
                "e_dim": 8,
                "a_dim": 4,
                "nlayers": 2,
                "e_rcut": 4.0,
                "e_rcut_smth": 3.5,
                "e_sel": 30,
                "a_rcut": 3.5,
                "a_rcut_smth": 3.0,
                "a_sel": 10,
                "axis_neuron": 4,
            },
            "precision": "float32",
        },
        "fitting_net": {"neuron": [16, 16], "precision": "float32"},
    }
    params = model_args().normalize_value(params, trim_pattern="_*")
    torch.manual_seed(0)
    state, branches = {}, {}
    for head in ("Omat24", "MPtrj"):  # a multi-task checkpoint, as DPA-3.1-3M.pt: one branch per head
        wrapper = ModelWrapper(get_model(copy.deepcopy(params)), model_params=params)
        state.update(
            {
                k.replace("model.Default.", f"model.{head}."): v
                for k, v in wrapper.state_dict().items()
                if k.startswith("model.Default.")
            }
        )
        branches[head] = copy.deepcopy(params)
    state["_extra_state"] = {"model_params": {"model_dict": branches}, "train_infos": {"lr": 1e-3, "step": 0}}
    path = tmp_path_factory.mktemp("dpa3") / "tiny.pt"
    torch.save({"model": state}, path)
    return path


def test_inner_dpa3_features(dpa3_file, records, tmp_path):
    from deepmd.calculator import DP

    omat = build_extractor("dpa-3.1-3m-omat24", weights=str(dpa3_file))
    emb = _check_common(omat, records, 16)
    _check_energy(emb, records, DP(str(dpa3_file), head="Omat24"))
    desc = _check_common(build_extractor("dpa-3.1-3m-omat24", weights=str(dpa3_file), layer="backbone"), records, 8)
    assert not np.allclose(desc[0].features[:8], emb[0].features[:8])
    other = build_extractor("dpa3", weights=str(dpa3_file), head="mptrj").embed(records)  # head names: any case
    assert not np.allclose(other[0].atom_features, emb[0].atom_features, atol=1e-4)
    _check_file(omat, "dpa-3.1-3m-omat24", records, tmp_path)
    with pytest.raises(AssertionError, match="head"):
        build_extractor("dpa3", weights=str(dpa3_file), head="nope")
    _needs_weights("dpa3")


# --------------------------------------------------------------------------------------------------- MatterSim
@pytest.fixture(scope="module")
def mattersim_file(tmp_path_factory):
    pytest.importorskip("mattersim")
    import torch
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet

    torch.manual_seed(0)
    model = M3Gnet(num_blocks=2, units=16, max_l=2, max_n=2, cutoff=5.0, threebody_cutoff=4.0, device="cpu")
    path = tmp_path_factory.mktemp("mattersim") / "tiny.pth"
    torch.save({"model_name": "m3gnet", "model_args": model.get_model_args(), "model": model.state_dict()}, path)
    return path


def test_inner_mattersim_features(mattersim_file, records, tmp_path):
    from mattersim.forcefield.potential import MatterSimCalculator

    ext = build_extractor("mattersim-v1.0.0-1m", weights=str(mattersim_file))
    emb = _check_common(ext, records, 16)
    calc = MatterSimCalculator(potential=ext.potential, device="cpu")
    _check_energy(emb, records, calc)
    for r, e in zip(records, emb, strict=True):  # input of model.final on the calculator's own path
        seen = []
        handle = ext.potential.model.final.register_forward_pre_hook(lambda _m, a, seen=seen: seen.append(a[0]))
        try:
            atoms = r.atoms.copy()
            atoms.calc = MatterSimCalculator(potential=ext.potential, device="cpu")
            atoms.get_potential_energy()
        finally:
            handle.remove()
        np.testing.assert_allclose(e.atom_features, seen[0].detach().numpy(), rtol=FEATURE_RTOL, atol=FEATURE_ATOL)
    _check_file(ext, "mattersim-v1.0.0-1m", records, tmp_path, unsupported=False)
    if not (Path("~/.local/mattersim/pretrained_models").expanduser() / "mattersim-v1.0.0-5M.pth").exists():
        _needs_weights("mattersim-v1.0.0-5m")
