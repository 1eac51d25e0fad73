"""Dataset readers: each on a small file written here in the real format; the default set; filters; sampling."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

pytest.importorskip("ase")

from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from extractors.datasets import (
    HARTREE_TO_EV,
    Record,
    backbone,
    filter_records,
    load_dataset,
    read_default,
    structure_text,
    subsample,
)

# Two molecules in the layout of QM9's dsgdb9nsd_*.xyz files (Ramakrishnan et al. 2014): count, 'gdb' property
# line, atoms with Mulliken charges (note the Mathematica '*^' exponent), frequencies, SMILES pair, InChI pair.
QM9_METHANE = """5
gdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t0.5048\t35.3641\t0.044749\t\
-40.47893\t-40.476062\t-40.475117\t-40.498597\t6.469\t
C\t-0.0126981359\t 1.0858041578\t 0.0080009958\t-0.535689
H\t 0.002150416\t-0.0060313176\t 0.0019761204\t 0.133921
H\t 1.0117308433\t 1.4637511618\t 0.0002765748\t 0.133922
H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 0.133923
H\t-0.5238136345\t 1.4379326443\t 0.9063972942\t 0.133923
1341.307\t1341.3284\t1341.365\t1562.6731\t1562.7453\t3038.3205\t3151.6034\t3151.6788\t3151.7078
C\tC\t
InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4
"""
QM9_WATER = """3
gdb 3\t799.58812\t437.90386\t282.94545\t1.8511\t6.31\t-0.2928\t0.0687\t0.3615\t19.0002\t0.021375\t\
-76.404702\t-76.401867\t-76.400922\t-76.422349\t6.002\t
O\t-0.0343604951\t 0.9775395708\t 0.0076015923\t-0.589706
H\t 0.0647664923\t 0.0205721989\t 2.1*^-6\t 0.294853
H\t 0.8717903737\t 1.3007924048\t 0.0006931336\t 0.294853
1591.0274\t3892.7573\t3988.0081
O\tO\t
InChI=1S/H2O/h1H2\tInChI=1S/H2O/h1H2
"""

PDB_TEXT = """\
HEADER    TEST PROTEIN
ATOM      1  N   MET A   1      11.104   6.134  -6.504  1.00  0.00           N
ATOM      2  CA  MET A   1      11.639   6.071  -5.147  1.00  0.00           C
ATOM      3  C   MET A   1      10.500   5.900  -4.100  1.00  0.00           C
ATOM      4  N   GLY A   2       9.200   6.000  -4.500  1.00  0.00           N
ATOM      5  CA  GLY A   2       8.100   5.800  -3.600  1.00  0.00           C
HETATM    6  N   MSE A   3       7.000   5.500  -4.300  1.00  0.00           N
HETATM    7  CA  MSE A   3       5.800   5.300  -3.500  1.00  0.00           C
ATOM      8  N   LYS B   1       1.000   2.000   3.000  1.00  0.00           N
ATOM      9  CA  LYS B   1       1.500   2.500   3.500  1.00  0.00           C
ATOM     10  CA  TRP B   2       4.500   2.500   3.500  1.00  0.00           C
HETATM   11  O   HOH B 101       0.000   0.000   0.000  1.00  0.00           O
END
"""


def test_default_dataset_splits_and_ids():
    recs = read_default()
    assert len(recs) == 3 * (162 + 22 + 71)
    ids = [r.id for r in recs]
    assert len(set(ids)) == len(ids)
    assert ids[:3] == [ids[0], f"{ids[0]}/rattle0", f"{ids[0]}/strain0"]
    ood = load_dataset("default:ood")
    assert {r.split for r in ood} == {"ood"} and len(ood) == 255
    assert len(load_dataset("default:id")) == 510
    again = read_default()
    for a, b in zip(recs[::50], again[::50], strict=True):
        np.testing.assert_array_equal(a.atoms.positions, b.atoms.positions)
    by_id = {r.id: r for r in recs}
    base, rattled, strained = by_id["g2/CH4"], by_id["g2/CH4/rattle0"], by_id["g2/CH4/strain0"]
    assert 0 < np.abs(rattled.atoms.positions - base.atoms.positions).max() < 0.2
    assert np.abs(strained.atoms.positions - base.atoms.positions).max() > 0.05
    si, si_strained = by_id["dcdft/Si"], by_id["dcdft/Si/strain0"]
    np.testing.assert_allclose(np.abs(np.diag(si_strained.atoms.cell) / np.diag(si.atoms.cell) - 1), 0.12, atol=1e-12)
    other_seed = {r.id: r for r in read_default(seed=1)}
    assert not np.allclose(other_seed["g2/CH4/rattle0"].atoms.positions, rattled.atoms.positions)


def test_filters_and_subsample():
    recs = read_default(n_rattled=0, n_strained=0)
    kept, dropped = filter_records(recs, min_atoms=2)
    assert len(dropped) == 14 + 2  # g2's 14 isolated atoms, dcdft's 1-atom S and Po cells
    assert all(len(r.atoms) >= 2 for r in kept)
    kept2, dropped2 = filter_records(kept, allowed_numbers=range(1, 84))
    assert [d["id"] for d in dropped2] == ["dcdft/Rn"] and "[86]" in dropped2[0]["reason"]
    assert len(kept2) == len(kept) - 1
    sample = subsample(recs, 20, seed=3)
    assert len(sample) == 20 and [r.id for r in sample] == [r.id for r in subsample(recs, 20, seed=3)]
    order = {r.id: i for i, r in enumerate(recs)}
    assert [order[r.id] for r in sample] == sorted(order[r.id] for r in sample)
    assert [r.id for r in subsample(recs, 20, seed=4)] != [r.id for r in sample]
    assert subsample(recs, 10_000) == recs
    with pytest.raises(ValueError, match="`n`"):
        subsample(recs, 0)


def test_extxyz_reader(tmp_path):
    from ase.io import write

    frames = [molecule("H2O"), bulk("Cu", "fcc", a=3.6, cubic=True)]
    frames[0].calc = SinglePointCalculator(frames[0], energy=-14.2)
    frames[1].info["REF_energy"] = -3.5
    path = tmp_path / "mad.xyz"
    write(path, frames, format="extxyz")
    recs = load_dataset(str(path))
    assert [r.id for r in recs] == ["mad:0", "mad:1"]
    assert [r.energy for r in recs] == [-14.2, -3.5]
    np.testing.assert_allclose(recs[1].atoms.cell, frames[1].cell)
    assert recs[1].atoms.pbc.all() and recs[0].atoms.get_chemical_formula() == "H2O"


@pytest.mark.parametrize("suffix", [".db", ".aselmdb"])
def test_asedb_reader(tmp_path, suffix):
    import ase.db

    if suffix == ".aselmdb":
        pytest.importorskip("ase_db_backends")
    path = tmp_path / f"omat{suffix}"
    with ase.db.connect(str(path)) as db:
        a = bulk("Si", "diamond", a=5.43)
        a.calc = SinglePointCalculator(a, energy=-10.8, forces=np.zeros((2, 3)))
        db.write(a)
        db.write(molecule("NH3"), energy_ref=1.0)
    recs = load_dataset(f"asedb:{path}")
    assert [r.id for r in recs] == ["omat:1", "omat:2"]
    assert recs[0].energy == pytest.approx(-10.8) and recs[1].energy is None
    assert recs[0].atoms.get_chemical_formula() == "Si2" and len(recs[1].atoms) == 4


def test_qm9_reader_directory_and_archive(tmp_path):
    d = tmp_path / "qm9"
    d.mkdir()
    (d / "dsgdb9nsd_000003.xyz").write_text(QM9_WATER)
    (d / "dsgdb9nsd_000001.xyz").write_text(QM9_METHANE)
    recs = load_dataset(str(d))
    assert [r.id for r in recs] == ["gdb_1", "gdb_3"]
    assert [r.smiles for r in recs] == ["C", "O"]
    assert recs[0].energy == pytest.approx(-40.47893 * HARTREE_TO_EV)
    assert recs[1].atoms.get_chemical_formula() == "H2O"
    assert recs[1].atoms.positions[1, 2] == pytest.approx(2.1e-6)
    archive = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        for f in sorted(d.iterdir()):
            tar.add(f, arcname=f.name)
    from_tar = load_dataset(f"qm9:{archive}")
    assert [r.id for r in from_tar] == ["gdb_1", "gdb_3"]
    np.testing.assert_array_equal(from_tar[0].atoms.positions, recs[0].atoms.positions)
    (d / "dsgdb9nsd_000004.xyz").write_text("3\nnot a property line\n")
    with pytest.raises(ValueError, match="not a QM9 xyz file"):
        load_dataset(f"qm9:{d}")


def test_pdb_and_mmcif_readers(tmp_path):
    pytest.importorskip("Bio")
    from Bio.PDB import MMCIFIO, PDBParser

    pdb = tmp_path / "1tst.pdb"
    pdb.write_text(PDB_TEXT)
    recs = load_dataset(str(pdb))
    assert [(r.id, r.sequence) for r in recs] == [("1tst_A", "MGM"), ("1tst_B", "KW")]
    np.testing.assert_allclose(recs[0].ca_coords[0], [11.639, 6.071, -5.147], atol=1e-3)
    assert recs[1].ca_coords.shape == (2, 3) and recs[0].atoms is None
    assert recs[1].backbone_coords.shape == (2, 5, 3)  # N, CA, C, O, CB; NaN where the file has no such atom
    np.testing.assert_array_equal(recs[0].backbone_coords[:, 1], recs[0].ca_coords)
    assert np.isnan(recs[0].backbone_coords[:, 3]).all() and not np.isnan(recs[0].backbone_coords[0, :3]).any()
    np.testing.assert_array_equal(recs[0].residue_numbers, [1, 2, 3])
    assert backbone(recs[0]).shape == (3, 3, 3) and backbone(recs[0], 4).shape == (3, 4, 3)
    assert backbone(recs[0], 6) is None and backbone(Record(id="x", sequence="M")) is None
    io = MMCIFIO()
    io.set_structure(PDBParser(QUIET=True).get_structure("1tst", str(pdb)))
    cif_dir = tmp_path / "cif"
    cif_dir.mkdir()
    io.save(str(cif_dir / "1tst.cif"))
    cif = load_dataset(f"pdb:{cif_dir}")
    assert [(r.id, r.sequence) for r in cif] == [("1tst_A", "MGM"), ("1tst_B", "KW")]
    np.testing.assert_allclose(cif[1].ca_coords, recs[1].ca_coords, atol=1e-3)


def test_smiles_csv_reader(tmp_path):
    path = tmp_path / "mols.csv"
    path.write_text("Name,SMILES,energy\naspirin,CC(=O)Oc1ccccc1C(=O)O,-1.5\nethanol,CCO,\n")
    recs = load_dataset(str(path))
    assert [(r.id, r.smiles, r.energy) for r in recs] == [
        ("aspirin", "CC(=O)Oc1ccccc1C(=O)O", -1.5),
        ("ethanol", "CCO", None),
    ]
    nocol = tmp_path / "bad.csv"
    nocol.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no 'smiles' column"):
        load_dataset(f"smiles:{nocol}")
    dup = tmp_path / "dup.csv"
    dup.write_text("id,smiles\nx,C\nx,CC\n")
    with pytest.raises(ValueError, match="duplicate record id 'x'"):
        load_dataset(str(dup))


def test_dispatch_errors(tmp_path):
    odd = tmp_path / "data.unknown"
    odd.write_text("")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_dataset(str(odd))
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(f"extxyz:{tmp_path / 'none.xyz'}")
    with pytest.raises(ValueError, match="`split`"):
        read_default(split="train")


def test_structure_text():
    text = structure_text(molecule("H2O"))
    lines = text.splitlines()
    assert lines[:2] == ["3", "H2O"] and lines[2].startswith("O ") and len(lines) == 5
    si = structure_text(bulk("Si", "diamond", a=5.43))
    assert 'Lattice="0.000 2.715 2.715' in si.splitlines()[1]
    assert Record(id="x", atoms=Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])).n_atoms == 2


def test_gzipped_structures_and_heavy_atoms(tmp_path):
    """``.pdb.gz``/``.cif.gz`` read like the plain files (ids without the endings); ``atoms=True`` gives each chain
    its heavy atoms (hydrogens dropped), in file order, from the residues its sequence lists."""
    import gzip

    pytest.importorskip("Bio")
    from extractors.datasets import read_pdb

    plain = tmp_path / "1tst.pdb"
    plain.write_text(PDB_TEXT)
    packed = tmp_path / "gz"
    packed.mkdir()
    (packed / "1tst.pdb.gz").write_bytes(gzip.compress(PDB_TEXT.encode()))
    (packed / "notes.txt").write_text("not a structure")
    a, b = load_dataset(str(plain)), load_dataset(f"pdb:{packed}")
    assert [r.id for r in b] == ["1tst_A", "1tst_B"] == [r.id for r in a]
    np.testing.assert_array_equal(np.nan_to_num(b[0].backbone_coords), np.nan_to_num(a[0].backbone_coords))
    assert load_dataset(str(packed / "1tst.pdb.gz"))[1].sequence == "KW"
    h = "ATOM     12  H   LYS B   1       1.100   2.100   3.100  1.00  0.00           H"
    (tmp_path / "1tsh.pdb").write_text(PDB_TEXT.replace("END", f"{h}\nEND"))
    heavy = read_pdb(tmp_path / "1tsh.pdb", atoms=True)
    assert len(heavy[1].atoms) == 3  # N, CA of LYS and CA of TRP: the hydrogen and the water left out
    lines = [ln for ln in PDB_TEXT.splitlines() if ln.startswith(("ATOM", "HETATM"))]
    for rec in heavy:
        chain = rec.id.split("_")[1]
        rows = [ln for ln in lines if ln[21] == chain and ln[76:78].strip() not in ("H", "D")]
        rows = [ln for ln in rows if ln[17:20] != "HOH"]
        expect = np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in rows])
        np.testing.assert_allclose(rec.atoms.positions, expect, atol=1e-3)
        assert not rec.atoms.pbc.any() and "H" not in rec.atoms.get_chemical_symbols()
    assert read_pdb(packed, exclude=("1tst",)) == []


def test_embedded_proteins_match_mdanalysis():
    """The embedded protein dataset: 50 real chains of MDAnalysisTests' data/dssp, each chain's residue count and
    heavy-atom positions equal to what MDAnalysis (an independent PDB reader) finds in the same file. Several files
    repeat side-chain atoms (same residue, name and position, no element column): one atom each, not two at zero
    distance; hydrogens are named by their name when the element column is blank."""
    mda = pytest.importorskip("MDAnalysis")
    from extractors.datasets import proteins_directory, read_dataset

    records = read_dataset("proteins").records
    assert len(records) == 50 and len({r.id for r in records}) == 50
    assert min(len(r.sequence) for r in records) >= 79 and max(len(r.sequence) for r in records) <= 173
    repeated = 0
    for rec in records[::3]:
        stem, chain = rec.id.rsplit("_", 1)
        u = mda.Universe(str(proteins_directory() / f"{stem}.pdb.gz"))
        protein = u.select_atoms(f"protein and chainID {chain}")
        assert protein.residues.n_residues == len(rec.sequence), rec.id
        seen, keep, again = set(), [], 0
        for i, (resid, name) in enumerate(zip(protein.resids, protein.names, strict=True)):
            if name.lstrip("0123456789").startswith(("H", "D")):
                continue
            if (resid, name) in seen:
                again += 1
                continue
            seen.add((resid, name))
            keep.append(i)
        repeated += again > 0
        np.testing.assert_allclose(rec.atoms.positions, protein[keep].positions, atol=1e-3, err_msg=rec.id)
        np.testing.assert_allclose(rec.ca_coords, protein.select_atoms("name CA").positions, atol=1e-3)
        assert (
            np.linalg.norm(rec.atoms.positions[:, None] - rec.atoms.positions[None], axis=-1)[
                np.triu_indices(len(rec.atoms), 1)
            ].min()
            > 0.5
        ), rec.id
    assert repeated  # the sample holds files with repeated atoms
