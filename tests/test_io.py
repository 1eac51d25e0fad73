"""jaxalign.io: embedding files (SPEC §12) written by the extractors' writer, loaded and validated here.

Only numpy and jax are needed: files are produced by ``extractors.run_extraction`` with the seeded random baseline
(no model packages) or by ``extractors.embedding_file.write_npz`` directly.
"""

from __future__ import annotations

import json
import zipfile

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from extractors import Record, ids_sha256, run_extraction
from extractors.embedding_file import FORMAT, meta_json, read_npz, write_npz
from jaxalign import knn
from jaxalign.io import (
    Embedding,
    check_aligned,
    intersect,
    load_aligned,
    load_embedding,
    structure_ids_sha256,
    torch_to_jax,
)


def _records(n: int, prefix: str = "s") -> list[Record]:
    return [Record(id=f"{prefix}{i}") for i in range(n)]


def _random_file(tmp_path, records, name="r", **kw):
    return run_extraction("random", "toy", tmp_path, records=records, name=name, progress=False, **kw)


def _atomistic_arrays(n_atoms=(2, 3, 1), d=4, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    n_atoms = np.asarray(n_atoms, np.int64)
    a = int(n_atoms.sum())
    atom = rng.normal(size=(a, d)).astype(np.float32)
    owner = np.repeat(np.arange(len(n_atoms)), n_atoms)
    feats = np.stack([atom[owner == i].mean(0) for i in range(len(n_atoms))])
    ids = [f"m{i}" for i in range(len(n_atoms))]
    meta = {"format": FORMAT, "model": "toy", "layer": "last", "n_structures": len(ids)}
    meta["structure_ids_sha256"] = ids_sha256(ids)
    return {
        "features": feats,
        "atom_features": atom,
        "n_atoms": n_atoms,
        "numbers": rng.integers(1, 10, size=a).astype(np.int64),
        "energy": rng.normal(size=len(n_atoms)),
        "structure_ids": np.array(ids),
        "meta": meta_json(meta),
    }


def test_round_trip_random_baseline_into_jaxalign(tmp_path):
    records = _records(23)
    path = _random_file(tmp_path, records, chunk_size=5, batch_size=3)
    emb = load_embedding(path)
    assert emb.features.shape == (23, 256) and emb.features.dtype == np.float32
    assert emb.structure_ids.tolist() == [r.id for r in records]
    assert emb.ids_sha256 == structure_ids_sha256(r.id for r in records) == ids_sha256(r.id for r in records)
    assert emb.meta["model"] == "random" and emb.meta["layer"] == "last" and emb.meta["n_structures"] == 23
    assert emb.atom_features is None and emb.energy is None
    # the features go straight into jaxalign: kNN graph equals brute force
    x = emb.jax_features().astype(jnp.float64)
    graph = knn(x, k=3, metric="euclidean")
    d = np.linalg.norm(emb.features[:, None].astype(np.float64) - emb.features[None].astype(np.float64), axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(np.sort(np.asarray(graph.indices), 1), np.sort(np.argsort(d, 1)[:, :3], 1))


def test_atomistic_file_fields_and_compositions(tmp_path):
    arrays = _atomistic_arrays()
    path = write_npz(tmp_path / "a.npz", arrays)
    emb = load_embedding(path)
    np.testing.assert_array_equal(emb.atom_offsets(), [0, 2, 5, 6])
    comp = emb.compositions()
    assert comp.shape == (3, int(arrays["numbers"].max()) + 1)
    np.testing.assert_array_equal(comp.sum(1), arrays["n_atoms"])
    sub = emb.take([2, 0])
    np.testing.assert_array_equal(
        sub.atom_features, np.concatenate([arrays["atom_features"][5:6], arrays["atom_features"][:2]])
    )
    assert sub.ids_sha256 == structure_ids_sha256(["m2", "m0"])
    with pytest.raises(ValueError, match="max_z"):
        emb.compositions(max_z=0)


def test_structure_order_mismatch_detected(tmp_path):
    recs = _records(10)
    a = _random_file(tmp_path, recs, name="a")
    b = _random_file(tmp_path, recs[::-1], name="b")
    with pytest.raises(ValueError, match=r"structure order mismatch.*row 0: 's0' vs 's9'"):
        load_aligned(a, b)
    c = _random_file(tmp_path, recs[:7], name="c")
    with pytest.raises(ValueError, match="prefix"):
        check_aligned(load_embedding(a), load_embedding(c))
    ea, eb = load_aligned(a, a)
    assert ea.ids_sha256 == eb.ids_sha256
    # intersect keeps common ids in the first file's order; the random rows follow their ids
    xa, xb, xc = intersect(load_embedding(a), load_embedding(b), load_embedding(c))
    check_aligned(xa, xb, xc)
    assert xa.structure_ids.tolist() == [f"s{i}" for i in range(7)]
    np.testing.assert_array_equal(xa.features, xb.features)


def test_truncated_and_corrupt_files_raise(tmp_path):
    path = _random_file(tmp_path, _records(6))
    data = path.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_embedding(trunc)
    flipped = bytearray(data)
    flipped[len(data) // 4] ^= 0xFF  # inside the stored features: the zip CRC no longer matches
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_embedding(bad)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_embedding(garbage)
    with pytest.raises(ValueError, match="does not exist"):
        load_embedding(tmp_path / "missing.npz")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda a: a.pop("structure_ids"), "missing array"),
        (lambda a: a.__setitem__("meta", "{not json"), "not valid JSON"),
        (lambda a: a.__setitem__("meta", json.dumps({"format": "other"})), "meta.format"),
        (lambda a: a.__setitem__("structure_ids", np.array(["m0", "mX", "m2"])), "hash"),
        (lambda a: a.__setitem__("structure_ids", np.array(["m0", "m0", "m2"])), "duplicates"),
        (lambda a: a["features"].__setitem__((1, 0), np.nan), "NaN or inf"),
        (lambda a: a.__setitem__("features", a["features"][:2]), "structure_ids"),
        (lambda a: a.__setitem__("atom_features", a["atom_features"][:-1]), "n_atoms` sums to 6"),
        (lambda a: a.__setitem__("numbers", a["numbers"][:-1]), "`numbers` has 5 rows"),
        (lambda a: a.__setitem__("energy", np.array([0.0, np.inf, 1.0])), "energy"),
        (lambda a: a.pop("n_atoms"), "without `n_atoms`"),
        (lambda a: a.__setitem__("features", np.zeros((3, 0), np.float32)), "non-empty"),
    ],
)
def test_invalid_contents_raise(tmp_path, edit, match):
    arrays = _atomistic_arrays()
    edit(arrays)
    path = write_npz(tmp_path / "x.npz", arrays)
    with pytest.raises(ValueError, match=match):
        load_embedding(path)


def test_writer_is_atomic_and_deterministic(tmp_path):
    arrays = _atomistic_arrays()
    p1 = write_npz(tmp_path / "one.npz", arrays)
    p2 = write_npz(tmp_path / "two.npz", arrays)
    assert p1.read_bytes() == p2.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "two.npz"]  # no temporary left behind
    with zipfile.ZipFile(p1) as zf:
        assert [i.filename for i in zf.infolist()] == [f"{k}.npy" for k in arrays]
    back = read_npz(p1)
    np.testing.assert_array_equal(back["atom_features"], arrays["atom_features"])
    with pytest.raises(TypeError, match="object arrays"):
        write_npz(tmp_path / "obj.npz", {"x": np.array([{"a": 1}], dtype=object)})
    assert not (tmp_path / "obj.npz").exists()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), min_size=1, max_size=12),
        min_size=1,
        max_size=20,
        unique=True,
    ),
    st.data(),
)
def test_hash_and_intersect_properties(ids, data):
    """The jaxalign and extractor hashes agree; intersect of a file with a permuted subset keeps rows by id."""
    assert structure_ids_sha256(ids) == ids_sha256(ids)
    rng = np.random.default_rng(len(ids))
    feats = rng.normal(size=(len(ids), 3)).astype(np.float32)
    meta = {"format": FORMAT, "structure_ids_sha256": structure_ids_sha256(ids), "n_structures": len(ids)}
    full = Embedding(features=feats, structure_ids=np.array(ids), meta=meta)
    perm = data.draw(st.permutations(range(len(ids))))
    keep = perm[: data.draw(st.integers(1, len(ids)))]
    part = full.take(keep)
    a, b = intersect(full, part)
    check_aligned(a, b)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.structure_ids.tolist() == [i for i in ids if i in set(part.structure_ids.tolist())]


def test_torch_to_jax_dlpack():
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(torch_to_jax(t)), t.numpy())
    np.testing.assert_array_equal(np.asarray(torch_to_jax(t.T)), t.T.numpy())  # non-contiguous view
    g = torch.ones(2, 3, requires_grad=True) * 2.0
    out = torch_to_jax(g, copy=True)
    assert out.shape == (2, 3) and float(out.sum()) == 12.0
    with pytest.raises(ValueError, match=r"torch\.Tensor"):
        torch_to_jax(np.ones(3))
