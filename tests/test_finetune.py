"""Seed 003's fine-tuning study (issue 13 item 5): the five strategies on a real CHGNet 0.3.0, resumable training,
checkpoints as model ids, labelling with SevenNet-0, the analysis' checks, and ``+experiment=finetune`` end to end.

Training data are small real structures: EMT-labelled metal supercells (ASE's own calculator) for the training
loop, SevenNet-0 labels in the app, as the experiment uses them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.cache import read_json  # noqa: E402
from experiments.finetune import finetune_checks  # noqa: E402
from experiments.stages.finetune import (  # noqa: E402
    FinetuneConfig,
    checkpoint_models,
    fine_tuning_structures,
    split_structures,
)
from extractors.faults import UsageError  # noqa: E402


# ------------------------------------------------------------------------------------------------- data, config
def test_fine_tuning_structures_are_strained_rattled_supercells() -> None:
    import ase.collections

    frames = fine_tuning_structures(("dcdft",), copies=2, min_atoms=8, rattle=0.05, strain=0.03, seed=1)
    ids = [a.info["id"] for a in frames]
    assert len(ids) == len(set(ids)) == 2 * sum(1 for a in ase.collections.dcdft if a.pbc.all())
    ref = {name: a for name, a in zip(ase.collections.dcdft.names, ase.collections.dcdft, strict=True)}
    for a in frames:
        assert a.pbc.all() and len(a) >= 8
        base = ref[a.info["id"].split("/")[1]]
        reps = round((len(a) / len(base)) ** (1 / 3))
        eps = np.linalg.solve(base.repeat(reps).cell[:], a.cell[:]) - np.eye(3)
        assert np.allclose(eps, eps.T, atol=1e-9) and np.abs(eps).max() <= 0.03 + 1e-12
        assert np.abs(eps).max() > 1e-4  # strained, not a copy
    again = fine_tuning_structures(("dcdft",), copies=2, seed=1)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(frames, again, strict=True))
    other = fine_tuning_structures(("dcdft",), copies=2, seed=2)
    assert not np.array_equal(frames[0].positions, other[0].positions)
    drawn = fine_tuning_structures(("dcdft",), copies=2, seed=1, n=10)
    assert len(drawn) == 10 and {a.info["id"] for a in drawn} <= set(ids)
    with pytest.raises(ValueError, match="no collection"):
        fine_tuning_structures(("nope",))
    with pytest.raises(ValueError, match=r"structures.n=2"):
        fine_tuning_structures(("dcdft",), n=2)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"epochs": 2, "nonsense": 1}, "unknown key"),
        ({"strategies": ["ff", "lora"]}, "choose from"),
        ({"strategies": []}, "choose from"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"epochs": 0}, "at least 1 epoch"),
        ({"labeller": None}, "finetune.source=FILE"),
    ],
)
def test_config_errors_name_the_setting(cfg: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FinetuneConfig.from_mapping(cfg)


def test_split_and_checkpoint_ids() -> None:
    from extractors.base import WEIGHTS_PATH
    from extractors.metadata import model_meta
    from extractors.registry import base_id, get_spec, split_layer

    train, test = split_structures(50, 0.2, seed=3)
    assert len(test) == 10 and sorted(train + test) == list(range(50))
    assert split_structures(50, 0.2, seed=3) == (train, test) and split_structures(50, 0.2, seed=4) != (train, test)
    with pytest.raises(ValueError, match="at least 4"):
        split_structures(3, 0.2, seed=0)

    fc = FinetuneConfig.from_mapping({"strategies": ["ff", "bespoke"], "epochs": 3, "keep": [0, 2, 7]})
    assert fc.saved == (0, 2, 3)
    trained = {s: {"checkpoints": {e: f"/ck/{s}/epoch_{e:04d}.pth.tar" for e in fc.saved}} for s in fc.strategies}
    plan = checkpoint_models(fc, trained)
    assert plan["pretrained"] == "chgnet-0.3.0@head"
    assert plan["final"] == {"ff": "chgnet-0.3.0~ff-e0003@head", "bespoke": "chgnet-0.3.0~bespoke-e0003@head"}
    assert len(plan["ids"]) == 1 + 2 * 3 and plan["options"]["chgnet-0.3.0~ff-e0002@head"] == {
        "weights": "/ck/ff/epoch_0002.pth.tar"
    }
    mid = "chgnet-0.3.0~ff-e0002@head"
    base, layer = split_layer(mid)
    spec = get_spec(base)
    assert (spec.id, spec.family, spec.status, layer) == ("chgnet-0.3.0~ff-e0002", "chgnet", WEIGHTS_PATH, "head")
    assert spec.config == get_spec("chgnet-0.3.0").config and base_id(mid) == "chgnet-0.3.0"
    assert model_meta(mid, "chgnet") == model_meta("chgnet-0.3.0", "chgnet")
    for bad in ("chgnet-0.3.0~", "nope~ff-e0001"):
        with pytest.raises(UsageError, match="unknown model"):
            get_spec(bad)


def _result(sym_gfre: dict[str, float], start: dict[str, float], e_mae: dict[str, float]) -> dict:
    names = list(sym_gfre)
    m = 1 + len(names)
    g = np.zeros((m, m))
    for i, s in enumerate(names, start=1):
        g[0, i] = g[i, 0] = sym_gfre[s]
    return {
        "reconstruction": {"gfre": g.tolist(), "trajectories": {s: {"gfre_to_final": [start[s], 0.0]} for s in names}},
        "models": {"final": {s: f"x~{s}" for s in names}},
        "training": {s: {"history": [{"e_mae": 20.0}, {"e_mae": e_mae[s]}]} for s in names},
    }


def test_finetune_checks_pass_and_fail_on_the_numbers() -> None:
    good = finetune_checks(_result({"ff": 0.05, "htl": 0.1, "bespoke": 0.4}, {"ff": 0.02, "htl": 0.2,
                                   "bespoke": 0.6}, {"ff": 5.0, "htl": 8.0, "bespoke": 300.0}))  # fmt: skip
    assert [c["passed"] for c in good] == [True, True, True]
    bad = finetune_checks(_result({"ff": 0.5, "htl": 0.1, "bespoke": 0.4}, {"ff": 0.02, "htl": 0.7,
                                  "bespoke": 0.6}, {"ff": 25.0, "htl": 8.0, "bespoke": 3.0}))  # fmt: skip
    assert [c["passed"] for c in bad] == [False, False, False]
    assert "FF 0.500" in bad[0]["numbers"] and "HTL 0.700" in bad[1]["numbers"]
    alone = finetune_checks(_result({"htl": 0.1}, {"htl": 0.2}, {"htl": 8.0}))
    assert [c["passed"] for c in alone] == [None, None]  # no bespoke to compare with; htl's epoch 0 is not pretrained


# ------------------------------------------------------------------------------------------------- torch side
def _emt_set(path: Path, n: int = 6) -> Path:
    import ase.io
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        a = bulk(("Cu", "Al", "Ni")[i % 3], "fcc", a=(3.61, 4.05, 3.52)[i % 3], cubic=True).repeat((2, 1, 1))
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        a.info["id"] = f"emt/{i}"
        frames.append(a)
    ase.io.write(str(path), frames, format="extxyz")
    return path


def test_initial_model_trains_what_each_strategy_names() -> None:
    import torch
    from chgnet.model import CHGNet

    from extractors.finetune import STRATEGIES, initial_model

    ref = dict(CHGNet.load(model_name="0.3.0", verbose=False).named_parameters())
    for name, strategy in STRATEGIES.items():
        model = initial_model(strategy, "0.3.0", seed=0)
        params = dict(model.named_parameters())
        trained = {k for k, p in params.items() if p.requires_grad}
        head = {k for k in params if k.startswith("mlp.")}
        if strategy.head_only:
            assert trained == head, name
        else:
            assert trained == {k for k in params if not k.startswith("composition_model.")}, name
        same = {k for k in params if torch.equal(params[k], ref[k])}
        assert {k for k in params if k.startswith("composition_model.")} <= same, name  # AtomRef kept in every one
        backbone = set(params) - head - {k for k in params if k.startswith("composition_model.")}
        assert (backbone <= same) == strategy.pretrained, name
        assert (head <= same) == (strategy.pretrained and not strategy.new_head), name
        assert not (head & same) or not strategy.new_head, name


def test_training_resumes_bit_exactly_and_checkpoints_are_models(tmp_path: Path) -> None:
    """An hf run stopped after epoch 1 and resumed equals an uninterrupted one weight for weight; its checkpoints
    load through the CHGNet extractor's weights option: epoch 0 is the pretrained model, and head-only training moves
    the head features (layer head) but not the backbone's (layer last)."""
    import torch

    from extractors.datasets import read_extxyz
    from extractors.finetune import FinetuneSpec, finetune
    from extractors.registry import build_extractor

    data = _emt_set(tmp_path / "emt.xyz")
    spec = FinetuneSpec(str(data), "hf", train=(0, 1, 2, 3), test=(4, 5), epochs=2, keep=(0,), batch_size=2,
                        learning_rate=0.01)  # fmt: skip
    whole = finetune(spec, tmp_path / "whole", progress=False)
    assert whole["done"] and [h["epoch"] for h in whole["history"]] == [0, 1, 2]
    part = finetune(spec, tmp_path / "parts", progress=False, max_epochs=1)
    assert not part["done"] and not (tmp_path / "parts" / "history.json").exists()
    rest = finetune(spec, tmp_path / "parts", progress=False)
    assert rest["done"] and json.dumps(rest["history"]) == json.dumps(whole["history"])  # NaN-safe equality
    a = torch.load(tmp_path / "whole" / "epoch_0002.pth.tar", weights_only=False)["model"]["state_dict"]
    b = torch.load(tmp_path / "parts" / "epoch_0002.pth.tar", weights_only=False)["model"]["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "whole").glob("epoch_*")) == ["epoch_0000.pth.tar", "epoch_0002.pth.tar"]
    with pytest.raises(UsageError, match="another fine-tuning run"):
        finetune(FinetuneSpec(**{**spec.__dict__, "epochs": 3}), tmp_path / "whole", progress=False)

    records = read_extxyz(data, id_key="id")
    feats = {}
    for tag, weights in (("pre", None), ("e0", "epoch_0000"), ("e2", "epoch_0002")):
        for layer in ("head", "last"):
            opts = {} if weights is None else {"weights": str(tmp_path / "whole" / f"{weights}.pth.tar")}
            ex = build_extractor("chgnet-0.3.0", layer=layer, **opts)
            feats[tag, layer] = np.concatenate([e.atom_features for e in ex.embed(records)])
    assert feats["pre", "head"].shape == (48, 64) and not np.allclose(feats["pre", "head"], feats["pre", "last"])
    for layer in ("head", "last"):
        np.testing.assert_array_equal(feats["e0", layer], feats["pre", layer])
    np.testing.assert_allclose(feats["e2", "last"], feats["pre", "last"], rtol=0, atol=1e-6)  # backbone frozen
    assert np.abs(feats["e2", "head"] - feats["pre", "head"]).max() > 1e-3  # the head moved
    with pytest.raises(UsageError, match="does not exist"):
        build_extractor("chgnet-0.3.0", weights=str(tmp_path / "missing.pth.tar"))
    with pytest.raises(ValueError, match="layers are"):
        build_extractor("chgnet-0.3.0", layer="nope")


def test_label_leaves_out_what_the_potential_refuses(tmp_path: Path) -> None:
    import ase.io
    from ase.build import bulk

    from extractors.finetune import label

    cu, po = bulk("Cu", "fcc", a=3.61).repeat(2), bulk("Po", "sc", a=3.35).repeat(2)
    cu.info["id"], po.info["id"] = "cu", "po"
    ase.io.write(str(tmp_path / "in.xyz"), [cu, po], format="extxyz")
    out = label("7net-0", tmp_path / "in.xyz", tmp_path / "out.xyz")
    frames = ase.io.read(str(out), index=":")
    assert [a.info["id"] for a in frames] == ["cu"]
    assert np.isfinite(frames[0].get_potential_energy()) and frames[0].get_forces().shape == (8, 3)
    skipped = json.loads((tmp_path / "out.xyz.skipped.json").read_text())
    assert [s["id"] for s in skipped] == ["po"] and "84" in skipped[0]["reason"]
    ase.io.write(str(tmp_path / "po.xyz"), [po], format="extxyz")
    with pytest.raises(UsageError, match="labelled none"):
        label("7net-0", tmp_path / "po.xyz", tmp_path / "po-out.xyz")
    assert not (tmp_path / "po-out.xyz").exists()
    with pytest.raises(UsageError, match="no ASE calculator"):
        label("soap", tmp_path / "in.xyz", tmp_path / "x.xyz")


# ------------------------------------------------------------------------------------------------- the app
def _app(*overrides: str, root: Path, run: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "experiments" / "run.py"), "+experiment=finetune", *overrides,
           f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / run}", f"jax_compilation_cache={root / 'xla'}",
           "progress=false"]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)


def test_finetune_experiment_two_epochs_end_to_end(tmp_path: Path) -> None:
    """``+experiment=finetune`` with one strategy for two epochs: SevenNet-0 labels, training, every checkpoint
    extracted as a model, Figs. 5, 6 and S8 and the report; a rerun computes nothing."""
    small = ["finetune.strategies=[ff]", "finetune.epochs=2", "finetune.keep=[0,1]", "finetune.structures.n=10",
             "finetune.background.n=16"]  # fmt: skip
    first = _app(*small, root=tmp_path, run="r1")
    assert first.returncode == 0, first.stderr[-3000:]
    res = read_json(tmp_path / "r1" / "results" / "finetune.json")
    assert [h["epoch"] for h in res["training"]["ff"]["history"]] == [0, 1, 2]
    assert res["models"]["ids"] == ["chgnet-0.3.0@head"] + [f"chgnet-0.3.0~ff-e000{e}@head" for e in (0, 1, 2)]
    traj = res["reconstruction"]["trajectories"]["ff"]
    assert traj["epochs"] == [0, 1, 2] and traj["gfre_to_final"][-1] == 0.0
    assert 0 < traj["gfre_to_final"][0] < 0.5  # two epochs of fine-tuning moved the features, a little
    assert traj["gfre_from_pretrained"][0] < 1e-3  # epoch 0 of full fine-tuning is the pretrained model
    g = np.asarray(res["reconstruction"]["gfre"])
    assert g.shape == (2, 2) and np.isfinite(g).all() and 0 < g[0, 1] < 0.5
    assert res["checks"][0]["passed"] is None  # no bespoke model to compare with
    for stem in ("fig5_gfre_finetuned", "fig5_lfre_finetuned", "fig6_trajectory_gfre", "fig6_trajectory_lfre",
                 "figS8_projections", "finetune_test_errors"):  # fmt: skip
        assert (tmp_path / "r1" / "figures" / f"{stem}.png").stat().st_size > 1000, stem
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "Fig. 5: GFRE among the final models" in md and "figures/figS8_projections.png" in md

    again = _app(*small, root=tmp_path, run="r2")
    assert again.returncode == 0, again.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "r2" / "stage_log.jsonl").read_text().splitlines()]
    assert sum(e["computed"] for e in log if e["stage"] not in ("figures", "report")) == 0, log

    bad = _app("finetune.strategies=[lora]", root=tmp_path, run="r3")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: finetune.strategies")
