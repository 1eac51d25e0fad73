"""Dataset readers: ordered records with stable ids.

Every reader returns a list of :class:`Record` in a fixed order; the id of a record depends only on the source data
(file name, row id, index), never on sampling, so two extractions of the same dataset line up row by row. A dataset
is named by a spec string, parsed by :func:`load_dataset`:

==================  =====================================================================================
``default``         ASE's g2 (162 molecules), s22 (22 dimers) and dcdft (71 elemental crystals) plus seeded
                    rattled (in-distribution) and strained (out-of-distribution) copies; ``default:id`` and
                    ``default:ood`` select one split.
``extxyz:PATH``     extended XYZ (MAD, LPS): one record per frame.
``asedb:PATH``      ASE database: ``.db`` (SQLite), ``.json``, ``.aselmdb`` (OMat24, OMol25, sAlex; read through
                    ``ase-db-backends``).
``qm9:PATH``        QM9 in its original archive format: a directory of ``dsgdb9nsd_*.xyz`` files or the
                    ``.tar``/``.tar.bz2`` archive (SMILES from the file's SMILES line, energy U0 from its property
                    line, converted from hartree to eV).
``proteins``        the embedded protein dataset: 50 single-chain PDB entries shipped by MDAnalysisTests, one record
                    per chain (sequence, backbone and heavy atoms).
``pdb:PATH``        RCSB mmCIF/PDB file (``.gz`` too) or directory: one record per protein chain (sequence, Cα and
                    backbone coordinates).
``smiles:PATH``     CSV with a ``smiles`` column (optional ``id`` and ``energy`` columns).
==================  =====================================================================================

A bare path is read by its extension. Extended XYZ frames are parsed one by one (:func:`read_extxyz_frames`): a
frame ASE cannot parse is named (file, frame, line) in a :class:`BadFrameError`, or skipped and reported with
``skip_bad_frames`` (:func:`read_dataset`); an empty file is an error. :func:`filter_records` implements seed 003's
filters (drop single-atom structures and structures with elements a model does not support) and :func:`subsample`
the seeded draw of N.
Only numpy and ASE are imported at module level; RDKit and Biopython load when their reader runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.faults import UsageError

__all__ = [
    "BACKBONE_ATOMS",
    "HARTREE_TO_EV",
    "BadFrame",
    "BadFrameError",
    "DatasetRead",
    "Record",
    "backbone",
    "checked_frames",
    "filter_records",
    "load_dataset",
    "proteins_directory",
    "read_asedb",
    "read_dataset",
    "read_default",
    "read_extxyz",
    "read_extxyz_frames",
    "read_pdb",
    "read_proteins",
    "read_qm9",
    "read_smiles_csv",
    "structure_text",
    "subsample",
]

HARTREE_TO_EV = 27.211386245988  # CODATA 2018, as ase.units.Hartree
_ENERGY_KEYS = ("energy", "REF_energy", "dft_energy", "total_energy", "Energy")


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One sample of a dataset.

    ``atoms`` is an ``ase.Atoms`` (None for SMILES-only and protein records), ``smiles`` the SMILES when the data
    gives one, ``sequence`` the one-letter protein sequence, ``ca_coords`` the (L, 3) Cα coordinates,
    ``backbone_coords`` the (L, 5, 3) N, CA, C, O, CB coordinates (NaN for a missing atom, e.g. glycine's CB;
    structure models read them through :func:`backbone`), ``residue_numbers`` the (L,) residue sequence numbers
    of the file (gaps in them are missing residues), ``energy`` the reference energy in eV when the data has it,
    ``split`` ``"id"``/``"ood"`` for the default dataset.
    """

    id: str
    atoms: Any = None
    smiles: str | None = None
    sequence: str | None = None
    ca_coords: np.ndarray | None = None
    backbone_coords: np.ndarray | None = None
    residue_numbers: np.ndarray | None = None
    energy: float | None = None
    split: str | None = None

    @property
    def n_atoms(self) -> int:
        return 0 if self.atoms is None else len(self.atoms)


# --------------------------------------------------------------------------------------------------- default set
#: the ASE collections of the embedded default dataset, in reading order.
COLLECTIONS = ("g2", "s22", "dcdft")
#: The backbone atoms a protein record stores per residue, in order (``Record.backbone_coords``).
BACKBONE_ATOMS = ("N", "CA", "C", "O", "CB")


def _ase_collections() -> list[tuple[str, Any]]:
    from ase.collections import dcdft, g2, s22

    out: list[tuple[str, Any]] = []
    for tag, coll in (("g2", g2), ("s22", s22), ("dcdft", dcdft)):
        out.extend((f"{tag}/{name}", coll[name]) for name in coll.names)
    return out


def _rattled(atoms: Any, rng: np.random.Generator, stdev: float) -> Any:
    new = atoms.copy()
    new.positions = new.positions + rng.normal(scale=stdev, size=new.positions.shape)
    return new


def _strained(atoms: Any, rng: np.random.Generator, strain: float, stdev: float) -> Any:
    """Scale by ``1 ± strain`` (a random sign per axis; about the centroid for molecules), then rattle."""
    new = atoms.copy()
    factors = 1.0 + strain * rng.choice([-1.0, 1.0], size=3)
    if new.pbc.any():
        new.set_cell(new.cell[:] * factors[None, :], scale_atoms=True)
    else:
        centre = new.positions.mean(axis=0)
        new.positions = centre + (new.positions - centre) * factors[None, :]
    return _rattled(new, rng, stdev)


def read_default(
    *,
    split: str | None = None,
    seed: int = 0,
    n_rattled: int = 1,
    n_strained: int = 1,
    rattle: float = 0.02,
    strain: float = 0.12,
    ood_rattle: float = 0.1,
    collections: Sequence[str] = COLLECTIONS,
) -> list[Record]:
    """The embedded default dataset: ASE's g2, s22 and dcdft collections plus seeded perturbed copies.

    ``collections`` selects among ``"g2"`` (162 molecules), ``"s22"`` (22 dimers) and ``"dcdft"`` (71 elemental
    crystals); the default study reads the molecules and the crystals as two datasets. Each of the 255 originals
    gives ``n_rattled`` copies rattled by ``rattle`` Å (Gaussian, in-distribution: split
    ``"id"``, with the original) and ``n_strained`` copies strained by ``strain`` along each axis and rattled by
    ``ood_rattle`` Å (out-of-distribution: split ``"ood"``). Copy j of original i uses
    ``default_rng([seed, i, j, kind])``, so ids and coordinates do not depend on which records are kept.
    """
    if split not in (None, "id", "ood"):
        raise ValueError(f"`split` must be None, 'id' or 'ood', got {split!r}.")
    if isinstance(collections, str) or not collections or not set(collections) <= set(COLLECTIONS):
        raise ValueError(f"`collections` must be a non-empty list drawn from {list(COLLECTIONS)}, got {collections!r}.")
    records: list[Record] = []
    for i, (name, atoms) in enumerate(_ase_collections()):
        if name.split("/")[0] not in collections:
            continue  # i counts every original, so a structure's copies do not depend on the selection
        records.append(Record(id=name, atoms=atoms, split="id"))
        for j in range(n_rattled):
            rng = np.random.default_rng([seed, i, j, 0])
            records.append(Record(id=f"{name}/rattle{j}", atoms=_rattled(atoms, rng, rattle), split="id"))
        for j in range(n_strained):
            rng = np.random.default_rng([seed, i, j, 1])
            new = _strained(atoms, rng, strain, ood_rattle)
            records.append(Record(id=f"{name}/strain{j}", atoms=new, split="ood"))
    if split is not None:
        records = [r for r in records if r.split == split]
    return records


# --------------------------------------------------------------------------------------------------- file readers
def _atoms_energy(atoms: Any) -> float | None:
    calc = getattr(atoms, "calc", None)
    if calc is not None and "energy" in getattr(calc, "results", {}):
        return float(calc.results["energy"])
    for key in _ENERGY_KEYS:
        if key in atoms.info:
            return float(atoms.info[key])
    return None


@dataclasses.dataclass(frozen=True)
class BadFrame:
    """A frame of an extended XYZ file that ASE cannot parse: its would-be record ``id``, the file, the frame index
    (from 0, as in the ids), the line where the frame starts (from 1) and the reason."""

    id: str
    path: str
    frame: int
    line: int
    reason: str

    def describe(self) -> str:
        return f"{self.path} frame {self.frame} (line {self.line}): {self.reason}"

    def as_record(self) -> dict[str, str]:
        """The ``{"id", "reason"}`` entry of an embedding file's ``dropped`` list."""
        return {"id": self.id, "reason": f"unreadable frame {self.frame} (line {self.line}): {self.reason}"}


class BadFrameError(UsageError):
    """An extended XYZ file holds frames ASE cannot parse (or breaks the frame structure); one line names the first
    frame, its line and the fix."""


#: how a message names the option that skips unreadable frames (extractor CLI and app).
SKIP_HINT = "--skip-bad-frames (app: dataset.skip_bad_frames=true)"


@dataclasses.dataclass(frozen=True)
class DatasetRead:
    """What :func:`read_dataset` read: the records and the frames it skipped (``skip_bad_frames``)."""

    records: list[Record]
    skipped: list[BadFrame]


def _open_text(path: Path) -> Any:
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt")
    if path.suffix == ".bz2":
        import bz2

        return bz2.open(path, "rt")
    if path.suffix in (".xz", ".lzma"):
        import lzma

        return lzma.open(path, "rt")
    return open(path)


def _extxyz_chunks(fh: Any, path: Path) -> Iterable[tuple[int, int, str | None, str]]:
    """Split an extended XYZ stream into frames: yields ``(frame, first line, problem, text)``.

    A frame is a count line, a comment line, that many atom lines and up to three ``VEC`` lines (ASE's layout);
    blank lines between frames are skipped. A count line that is not a non-negative integer loses the frame
    boundaries, so it raises :class:`BadFrameError`; a file that ends inside a frame yields that last frame with a
    ``problem``.
    """
    lineno, frame, prev_start, pending = 0, 0, None, None

    def next_line() -> str:
        nonlocal lineno, pending
        if pending is not None:
            line, pending = pending, None
        else:
            line = fh.readline()
        lineno += 1 if line else 0
        return line

    while True:
        header = next_line()
        if not header:
            return
        if not header.strip():
            continue
        start = lineno
        try:
            natoms = int(header)
            if natoms < 0:
                raise ValueError
        except ValueError:
            hint = (
                f"; frame {frame - 1} (from line {prev_start}) may hold fewer or more atom lines than its count says"
                if frame
                else ""
            )
            raise BadFrameError(
                f"{path} line {start}: expected the atom count of frame {frame}, got {header.strip()[:60]!r}{hint}; "
                "fix the file (a frame whose boundaries are lost cannot be skipped)."
            ) from None
        lines = [header]
        for _ in range(natoms + 1):
            line = next_line()
            if not line:
                got = max(len(lines) - 2, 0)
                yield frame, start, f"the file ends inside the frame ({got} of {natoms} atom lines)", ""
                return
            lines.append(line)
        for _ in range(3):
            line = next_line()
            if line.lstrip().startswith("VEC"):
                lines.append(line)
            else:
                pending, lineno = line, lineno - (1 if line else 0)
                break
        yield frame, start, None, "".join(lines)
        frame, prev_start = frame + 1, start


def read_extxyz_frames(path: str | Path, *, id_key: str | None = None) -> DatasetRead:
    """Every frame of an extended XYZ file (plain, ``.gz``, ``.bz2`` or ``.xz``) parsed on its own, so that a frame
    ASE cannot parse (a 6-value ``stress``, a malformed number, a wrong column count) becomes a :class:`BadFrame`
    instead of ending the read. Ids as in :func:`read_extxyz`. Raises :class:`BadFrameError` when the frame
    structure itself is broken (a count line that is not an integer)."""
    from ase.io.extxyz import read_xyz

    path = Path(path)
    records: list[Record] = []
    bad: list[BadFrame] = []
    with _open_text(path) as fh:
        for i, line, problem, text in _extxyz_chunks(fh, path):
            default_id = f"{path.stem}:{i}"
            if problem is None:
                try:
                    atoms = next(read_xyz(io.StringIO(text), 0))
                    rid = str(atoms.info[id_key]) if id_key and id_key in atoms.info else default_id
                    smiles = atoms.info.get("smiles")
                    records.append(Record(id=rid, atoms=atoms, smiles=smiles, energy=_atoms_energy(atoms)))
                    continue
                except Exception as err:
                    problem = " ".join(str(err).split()) or type(err).__name__
            bad.append(BadFrame(default_id, str(path), i, line, problem))
    return DatasetRead(records, bad)


def checked_frames(path: str | Path, read: DatasetRead, skip_bad_frames: bool) -> list[Record]:
    """The records of ``read`` (from :func:`read_extxyz_frames` on ``path``), or the one-line
    :class:`BadFrameError`: unreadable frames without ``skip_bad_frames`` (the first named, the others counted), or a
    file with no readable frame at all."""
    bad = read.skipped
    if bad and not skip_bad_frames:
        more = f"; {len(bad) - 1} more unreadable frame(s) after it" if len(bad) > 1 else ""
        raise BadFrameError(
            f"{bad[0].describe()}{more}; fix the frame, or skip unreadable frames and list them in the output with "
            f"{SKIP_HINT}."
        )
    if not read.records:
        what = f"all {len(bad)} of its frames are unreadable" if bad else "it holds no frame (empty file)"
        raise BadFrameError(f"extended XYZ file {path}: {what}; check the path or regenerate the file.")
    return read.records


def read_extxyz(path: str | Path, *, id_key: str | None = None, skip_bad_frames: bool = False) -> list[Record]:
    """Extended XYZ: one record per frame, id ``<stem>:<frame>`` (or ``atoms.info[id_key]``), energy from the
    attached calculator or ``info['energy' | 'REF_energy' | ...]``.

    A frame ASE cannot parse raises :class:`BadFrameError` naming it, unless ``skip_bad_frames`` (then it is left
    out; :func:`read_dataset` reports which). A file without any readable frame raises too.
    """
    return checked_frames(path, read_extxyz_frames(path, id_key=id_key), skip_bad_frames)


def read_asedb(path: str | Path, *, selection: str | None = None) -> list[Record]:
    """ASE database (``.db``, ``.json``, ``.aselmdb`` via ``ase-db-backends``): id ``<stem>:<row id>``, energy
    from the row's stored calculator results or its ``energy`` key-value pair."""
    import ase.db

    path = Path(path)
    if not path.exists():
        raise ValueError(f"ASE database {path} does not exist.")
    kind = "aselmdb" if path.suffix == ".aselmdb" else "extract_from_name"
    out = []
    with ase.db.connect(str(path), type=kind) as db:
        for row in db.select(selection):
            atoms = row.toatoms()
            energy = row.get("energy")
            kv = row.get("key_value_pairs", {}) or {}
            if energy is None and "energy" in kv:
                energy = kv["energy"]
            smiles = kv.get("smiles")
            out.append(
                Record(
                    id=f"{path.stem}:{row.id}",
                    atoms=atoms,
                    smiles=smiles,
                    energy=None if energy is None else float(energy),
                )
            )
    return out


_QM9_FLOAT = re.compile(r"\*\^")


def _qm9_float(token: str) -> float:
    return float(_QM9_FLOAT.sub("e", token))


def parse_qm9_xyz(text: str, name: str) -> Record:
    """One QM9 ``dsgdb9nsd_NNNNNN.xyz`` file (Ramakrishnan et al. 2014 format).

    Line 1: number of atoms n; line 2: ``gdb <index>`` and 15 properties (A, B, C, μ, α, HOMO, LUMO, gap, ⟨R²⟩,
    ZPVE, U0, U, H, G, Cv; energies in hartree); n lines ``element x y z charge`` (``*^`` exponents); then
    harmonic frequencies, the SMILES line (GDB-17 SMILES, B3LYP-relaxed SMILES) and the InChI line. The record
    takes the relaxed-geometry SMILES and U0 in eV.
    """
    from ase import Atoms

    lines = text.strip("\n").splitlines()
    try:
        n = int(lines[0].split()[0])
        props = lines[1].split()
        if props[0] != "gdb" or len(props) < 17:
            raise ValueError(f"property line should start with 'gdb' and hold 17 fields, got {lines[1]!r}")
        index = int(props[1])
        u0 = _qm9_float(props[12])
        symbols, positions = [], []
        for line in lines[2 : 2 + n]:
            tok = line.split()
            symbols.append(tok[0])
            positions.append([_qm9_float(t) for t in tok[1:4]])
        smiles_tok = lines[3 + n].split()
    except (IndexError, ValueError) as err:
        raise ValueError(f"{name} is not a QM9 xyz file ({err}).") from None
    smiles = smiles_tok[-1] if smiles_tok else None
    atoms = Atoms(symbols=symbols, positions=np.asarray(positions))
    return Record(id=f"gdb_{index}", atoms=atoms, smiles=smiles, energy=u0 * HARTREE_TO_EV)


def read_qm9(path: str | Path) -> list[Record]:
    """QM9 from a directory of ``*.xyz`` files or a ``.tar``/``.tar.bz2`` archive of them, sorted by gdb index."""
    path = Path(path)
    records = []
    if path.is_dir():
        for f in sorted(path.glob("*.xyz")):
            records.append(parse_qm9_xyz(f.read_text(), f.name))
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".xyz"):
                    text = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
                    records.append(parse_qm9_xyz(text, member.name))
    elif path.suffix == ".xyz":
        records.append(parse_qm9_xyz(path.read_text(), path.name))
    else:
        raise ValueError(f"QM9 path {path} is neither a directory of .xyz files nor a tar archive.")
    records.sort(key=lambda r: int(r.id.split("_")[1]))
    return records


def _protein_records(structure: Any, stem: str, *, atoms: bool = False) -> list[Record]:
    from Bio.Data.PDBData import protein_letters_3to1_extended
    from Bio.PDB.Polypeptide import is_aa

    out = []
    model = next(iter(structure))  # first model (NMR files hold several)
    for chain in model:
        seq, ca, backbone, numbers, heavy = [], [], [], [], []
        for res in chain:
            if "CA" not in res or not is_aa(res, standard=False):  # waters, ligands, residues without a CA
                continue
            seq.append(protein_letters_3to1_extended.get(res.get_resname().upper(), "X"))
            ca.append(res["CA"].coord)
            backbone.append([res[a].coord if a in res else np.full(3, np.nan) for a in BACKBONE_ATOMS])
            numbers.append(res.id[1])
            heavy.extend((a.element.capitalize(), a.coord) for a in res if a.element not in ("H", "D"))
        if seq:
            out.append(
                Record(
                    id=f"{stem}_{chain.id}",
                    atoms=_heavy_atoms(heavy) if atoms else None,
                    sequence="".join(seq),
                    ca_coords=np.asarray(ca, float),
                    backbone_coords=np.asarray(backbone, float),
                    residue_numbers=np.asarray(numbers, np.int64),
                )
            )
    return out


def _heavy_atoms(heavy: list[tuple[str, np.ndarray]]) -> Any:
    from ase import Atoms

    symbols = [s for s, _ in heavy]
    return Atoms(symbols=symbols, positions=np.asarray([x for _, x in heavy], float), pbc=False)


def backbone(record: Record, atoms: int = 3) -> np.ndarray | None:
    """The record's first ``atoms`` backbone atoms per residue as float32 (L, atoms, 3) — 3: N, CA, C (ESM-IF1,
    ESM3); 4: N, CA, C, O (ProteinMPNN); 5: and CB (Foldseek 3Di) — or None when the record has no backbone or
    fewer atoms per residue."""
    coords = getattr(record, "backbone_coords", None)
    if coords is None:
        return None
    coords = np.asarray(coords, dtype=np.float32)
    if coords.ndim != 3 or coords.shape[2] != 3 or coords.shape[1] < atoms:
        return None
    return coords[:, :atoms]


#: File endings :func:`read_pdb` reads (gzip-compressed too), and which parser each needs.
PDB_SUFFIXES = {".cif": "mmCIF", ".pdb": "PDB", ".ent": "PDB"}


def _pdb_kind(path: Path) -> tuple[str, str] | None:
    """(stem, parser kind) of a structure file, ``.gz`` stripped; None for other files."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(name).suffix.lower()
    return (Path(name).stem, PDB_SUFFIXES[suffix]) if suffix in PDB_SUFFIXES else None


def read_pdb(path: str | Path, *, atoms: bool = False, exclude: Sequence[str] = ()) -> list[Record]:
    """RCSB mmCIF (``.cif``) or PDB (``.pdb``/``.ent``) file, plain or gzip-compressed (``.gz``), or a directory
    of them: one record per chain of the first model with its one-letter sequence (non-standard residues mapped,
    e.g. MSE → M), Cα and backbone coordinates. Waters and ligands are skipped. Ids are ``<file stem>_<chain id>``.

    ``atoms=True`` also gives each record the chain's heavy atoms (hydrogens dropped, first alternate location,
    no cell) as ``Record.atoms``, so structure descriptors such as SOAP read it; ``exclude`` lists file stems to
    leave out of a directory."""
    import gzip
    import warnings

    from Bio.PDB import MMCIFParser, PDBParser
    from Bio.PDB.PDBExceptions import PDBConstructionWarning

    path = Path(path)
    files = sorted(p for p in path.iterdir() if _pdb_kind(p)) if path.is_dir() else [path]
    out = []
    for f in files:
        stem, kind = _pdb_kind(f) or (f.stem, "PDB")
        if stem in exclude:
            continue
        parser = MMCIFParser(QUIET=True) if kind == "mmCIF" else PDBParser(QUIET=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PDBConstructionWarning)
            try:
                with gzip.open(f, "rt") if f.name.endswith(".gz") else open(f) as fh:
                    structure = parser.get_structure(stem, fh)
            except Exception as err:
                raise ValueError(f"{f} could not be parsed as {kind}: {err}") from None
        out.extend(_protein_records(structure, stem, atoms=atoms))
    return out


#: MDAnalysisTests' files in its ``data/dssp`` folder that are not one real chain each: a fragment with wrong
#: hydrogens and a deliberately broken copy of 1mr1D.
_NOT_PROTEINS = ("wrong_hydrogens", "1mr1D_failing")


def proteins_directory() -> Path:
    """The folder of real protein structures the embedded protein dataset reads: the 50 single-chain PDB entries
    (79–173 residues) MDAnalysisTests ships for its secondary-structure tests (``MDAnalysisTests/data/dssp``)."""
    import importlib.util

    found = importlib.util.find_spec("MDAnalysisTests")  # located, not imported (that imports MDAnalysis)
    if found is None or not found.submodule_search_locations:
        raise UsageError(
            "the embedded protein dataset reads the PDB files of the MDAnalysisTests package, which is not "
            'installed; install it with `pip install -c constraints.txt -e ".[experiments]"`.'
        )
    return Path(next(iter(found.submodule_search_locations))).resolve() / "data" / "dssp"


def read_proteins(*, atoms: bool = True) -> list[Record]:
    """The embedded protein dataset: one record per chain of :func:`proteins_directory`'s 50 PDB entries, read by
    :func:`read_pdb` (``atoms``: with each chain's heavy atoms, 609–1,444 per chain)."""
    return read_pdb(proteins_directory(), atoms=atoms, exclude=_NOT_PROTEINS)


def read_smiles_csv(
    path: str | Path, *, smiles_column: str | None = None, id_column: str | None = None
) -> list[Record]:
    """CSV of SMILES: the column named ``smiles`` (any case) or ``smiles_column``; ids from ``id_column`` (default
    a column named ``id``/``name``, else ``<stem>:<row>``); an ``energy`` column becomes the reference energy."""
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {f.lower(): f for f in reader.fieldnames or []}
        scol = smiles_column or fields.get("smiles")
        if scol is None:
            raise ValueError(f"{path} has no 'smiles' column (columns: {reader.fieldnames}); pass smiles_column=.")
        icol = id_column or fields.get("id") or fields.get("name")
        ecol = fields.get("energy")
        out = []
        for i, row in enumerate(reader):
            rid = row[icol] if icol else f"{path.stem}:{i}"
            energy = float(row[ecol]) if ecol and row[ecol] not in ("", None) else None
            out.append(Record(id=str(rid), smiles=row[scol].strip(), energy=energy))
    return out


# --------------------------------------------------------------------------------------------------- dispatch
_READERS: dict[str, Callable[..., list[Record]]] = {
    "extxyz": read_extxyz,
    "asedb": read_asedb,
    "qm9": read_qm9,
    "pdb": read_pdb,
    "smiles": read_smiles_csv,
}


def _kind_from_path(path: Path) -> str:
    suffixes = "".join(path.suffixes)
    if path.suffix in (".db", ".aselmdb", ".json"):
        return "asedb"
    if _pdb_kind(path):
        return "pdb"
    if path.suffix == ".csv":
        return "smiles"
    if ".tar" in suffixes or (path.is_dir() and any(path.glob("dsgdb9nsd_*.xyz"))):
        return "qm9"
    if path.is_dir() and any(_pdb_kind(p) for p in path.iterdir()):
        return "pdb"
    if path.suffix in (".xyz", ".extxyz") or any(
        suffixes.endswith(f"{x}{c}") for x in (".xyz", ".extxyz") for c in (".gz", ".bz2", ".xz")
    ):
        return "extxyz"
    raise ValueError(
        f"cannot tell the format of {path}; name it explicitly, e.g. 'extxyz:{path}' "
        f"(known: default, {', '.join(_READERS)})."
    )


def read_dataset(spec: str, *, skip_bad_frames: bool = False, **options: Any) -> DatasetRead:
    """Read the dataset named by ``spec`` (see the module docstring); ``options`` go to its reader.

    ``skip_bad_frames`` (extended XYZ): leave out the frames ASE cannot parse and return them in
    :attr:`DatasetRead.skipped`; without it the first one raises :class:`BadFrameError`. Other formats ignore it.
    """
    if spec in ("default", "default:id", "default:ood"):
        split = spec.split(":")[1] if ":" in spec else None
        return DatasetRead(read_default(split=split, **options), [])
    if spec == "proteins":
        return DatasetRead(read_proteins(**options), [])
    kind, sep, rest = spec.partition(":")
    if sep and kind in _READERS:
        path = Path(rest)
    else:
        path = Path(spec)
        kind = _kind_from_path(path)
    if not path.exists():
        raise ValueError(f"dataset path {path} does not exist.")
    skipped: list[BadFrame] = []
    if kind == "extxyz":
        read = read_extxyz_frames(path, **options)
        records, skipped = checked_frames(path, read, skip_bad_frames), read.skipped
    else:
        records = _READERS[kind](path, **options)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"dataset {spec!r} has duplicate record id {dup!r}; ids must be unique.")
    return DatasetRead(records, skipped)


def load_dataset(spec: str, **options: Any) -> list[Record]:
    """The records of :func:`read_dataset` (``options`` may include ``skip_bad_frames``)."""
    return read_dataset(spec, **options).records


def filter_records(
    records: Iterable[Record],
    *,
    min_atoms: int = 2,
    allowed_numbers: Sequence[int] | None = None,
) -> tuple[list[Record], list[dict[str, str]]]:
    """Seed 003's filters: drop structures with fewer than ``min_atoms`` atoms and, when ``allowed_numbers`` is
    given, structures with any other element. Records without atoms pass. Returns (kept, dropped records as
    ``{"id", "reason"}``)."""
    allowed = None if allowed_numbers is None else set(int(z) for z in allowed_numbers)
    kept, dropped = [], []
    for r in records:
        if r.atoms is not None:
            if len(r.atoms) < min_atoms:
                dropped.append({"id": r.id, "reason": f"{len(r.atoms)} atom(s) < min_atoms={min_atoms}"})
                continue
            if allowed is not None:
                bad = sorted(set(int(z) for z in r.atoms.numbers) - allowed)
                if bad:
                    dropped.append({"id": r.id, "reason": f"unsupported atomic numbers {bad}"})
                    continue
        kept.append(r)
    return kept, dropped


def subsample(records: Sequence[Record], n: int | None, *, seed: int = 0) -> list[Record]:
    """A seeded draw of ``n`` records without replacement, kept in dataset order (all when ``n`` is None or
    ≥ the dataset size)."""
    if n is None or n >= len(records):
        return list(records)
    if n < 1:
        raise ValueError(f"`n`={n} must be a positive number of structures.")
    idx = np.sort(np.random.default_rng(seed).choice(len(records), size=n, replace=False))
    return [records[i] for i in idx]


def structure_text(atoms: Any, *, decimals: int = 3) -> str:
    """Plain-text rendering of a structure for text models (the 'atomistic' input of seed 000's LLM runs):
    XYZ-style, ``<n>`` line, formula line (plus ``Lattice="..."`` for periodic cells), one line per atom."""
    buf = io.StringIO()
    buf.write(f"{len(atoms)}\n{atoms.get_chemical_formula()}")
    if atoms.pbc.any():
        lattice = " ".join(f"{v:.{decimals}f}" for v in np.asarray(atoms.cell).ravel())
        buf.write(f' Lattice="{lattice}"')
    for sym, pos in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True):
        buf.write(f"\n{sym} " + " ".join(f"{v:.{decimals}f}" for v in pos))
    return buf.getvalue()
