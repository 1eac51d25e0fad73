"""Morgan fingerprints (Rogers & Hahn, J. Chem. Inf. Model. 50, 742 (2010)), RDKit: radius 2, 2048 bits.

The fingerprint bits are the features (float32 0/1, no pooling). The SMILES comes from the dataset when it has one,
else from the 3D structure via ``rdDetermineBonds`` (:mod:`extractors.chem`); structures whose bonds cannot be
determined (radicals, some salts) or whose SMILES RDKit cannot parse are reported per structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from extractors.base import OFFLINE_READY, Embedded, Extractor, ModelSpec, check_layer
from extractors.chem import record_smiles
from extractors.datasets import Record

__all__ = ["LAYERS", "SPECS", "MorganExtractor", "build"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {"last": "the fingerprint bits (a descriptor: no other layers)"}

SPECS = (
    ModelSpec(
        id="morgan",
        family="morgan",
        config={"radius": 2, "n_bits": 2048},
        status=OFFLINE_READY,
        packages=("rdkit",),
        description="Morgan fingerprint, radius 2, 2048 bits (RDKit)",
    ),
)


class MorganExtractor(Extractor):
    needs = "smiles"
    pooling = "none"

    def __init__(self, spec: ModelSpec, *, layer: str = "last", radius: int | None = None, n_bits: int | None = None):
        self.radius = int(radius if radius is not None else spec.config["radius"])
        self.n_bits = int(n_bits if n_bits is not None else spec.config["n_bits"])
        check_layer(spec, layer, LAYERS)
        super().__init__(spec, layer=layer, radius=self.radius, n_bits=self.n_bits)
        from rdkit.Chem import rdFingerprintGenerator

        self.generator = rdFingerprintGenerator.GetMorganGenerator(radius=self.radius, fpSize=self.n_bits)

    def check(self, record: Record) -> str | None:
        if not record.smiles and record.atoms is None:
            return "record has neither SMILES nor a 3D structure"
        return None

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        from rdkit import Chem

        out = []
        for r in records:
            smiles, _ = record_smiles(r)
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
            out.append(Embedded(features=self.generator.GetFingerprintAsNumPy(mol).astype(np.float32)))
        return out

    def info(self) -> dict[str, Any]:
        return {"radius": self.radius, "n_bits": self.n_bits, "smiles": "dataset SMILES, else rdDetermineBonds"}


def build(spec: ModelSpec, **options: Any) -> MorganExtractor:
    return MorganExtractor(spec, **options)
