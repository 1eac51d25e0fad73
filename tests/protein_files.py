"""Small protein files the protein-model tests write: ideal α-helices in PDB format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# An α-helix per chain in cylindrical coordinates (radius Å, phase rad, rise Å) per backbone atom; residues advance
# 100° and 1.5 Å. Chain A has a gap (residue 6 absent), a residue without its O and an MSE written as HETATM.
_ATOMS = {
    "N": (1.55, -0.45, -0.85),
    "CA": (2.30, 0.0, 0.0),
    "C": (1.65, 0.50, 0.70),
    "O": (1.95, 0.75, 1.85),
    "CB": (3.30, -0.25, -0.55),
}
_RESIDUES = ("MET", "LYS", "ALA", "LEU", "GLU", "ARG", "ILE", "GLY", "SER", "TRP", "PHE", "VAL", "ASP", "THR")


def helix_pdb(path: Path) -> Path:
    lines, serial = [], 1
    for chain, n_res, shift in (("A", 14, 0.0), ("B", 9, 12.0)):
        for i in range(n_res):
            number = i + 1
            if chain == "A" and number == 6:
                continue  # a missing residue: the library masks a gap
            name = _RESIDUES[i % len(_RESIDUES)]
            record = "ATOM  "
            if chain == "A" and number == 3:
                name, record = "MSE", "HETATM"  # selenomethionine: read as M by both parsers
            for atom, (r, phase, dz) in _ATOMS.items():
                if (chain == "A" and number == 9 and atom == "O") or (atom == "CB" and name == "GLY"):
                    continue  # an incomplete residue (masked by ProteinMPNN); glycine has no CB
                t = np.deg2rad(100.0) * i + phase
                x, y, z = r * np.cos(t) + shift, r * np.sin(t), 1.5 * i + dz
                lines.append(
                    f"{record}{serial:5d}  {atom:<3s} {name} {chain}{number:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                    f"  1.00  0.00           {atom[0]}"
                )
                serial += 1
        lines.append("TER")
    lines.append("END")
    path.write_text("\n".join(lines) + "\n")
    return path
