"""SMILES from 3D coordinates (RDKit), shared by the SMILES-reading models.

``rdDetermineBonds.DetermineBonds`` (xyz2mol, Kim & Kim 2015) assigns connectivity and bond orders for a neutral
molecule; it fails for radicals and some salts (34 of ASE's 162 g2 entries), which the caller records as a
per-structure failure. Periodic structures have no SMILES.
"""

from __future__ import annotations

from typing import Any

__all__ = ["record_smiles", "smiles_from_atoms"]


def smiles_from_atoms(atoms: Any, *, charge: int = 0) -> str:
    """Canonical SMILES (implicit hydrogens) of a molecule given as ``ase.Atoms``; ValueError when bonds cannot be
    determined."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    if atoms.pbc.any():
        raise ValueError("periodic structure: no SMILES")
    RDLogger.DisableLog("rdApp.*")
    lines = [str(len(atoms)), ""]
    lines += [
        f"{s} {x:.8f} {y:.8f} {z:.8f}"
        for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)
    ]
    mol = Chem.MolFromXYZBlock("\n".join(lines) + "\n")
    if mol is None:
        raise ValueError("RDKit could not read the coordinates")
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=charge)
    except Exception as err:  # RDKit raises ValueError or RuntimeError depending on the failure
        raise ValueError(f"DetermineBonds failed: {str(err).splitlines()[0]}") from None
    return Chem.MolToSmiles(Chem.RemoveHs(mol))  # hydrogens implicit, as in dataset SMILES


def record_smiles(record: Any) -> tuple[str, bool]:
    """The record's SMILES, or one derived from its 3D structure; returns (smiles, derived)."""
    if record.smiles:
        return record.smiles, False
    if record.atoms is None:
        raise ValueError("record has neither SMILES nor a 3D structure")
    return smiles_from_atoms(record.atoms), True
