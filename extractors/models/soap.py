"""SOAP descriptors (Bartók, Kondor & Csányi, Phys. Rev. B 87, 184115 (2013)) with dscribe.

The descriptor length grows with the species list, so the species are fixed per dataset: :meth:`prepare` takes the
sorted union of the elements of every record in the run (or the ``species`` option). Per-atom power spectra
(``average="off"``) are the atom features and their mean the structure features (dscribe's ``average="outer"``;
``"inner"`` would average the expansion coefficients first). Molecules use a non-periodic SOAP, crystals a periodic
one with the same settings. Defaults: ``r_cut`` = 5 Å, ``n_max`` = 6, ``l_max`` = 4, σ = 1 Å, GTO radial basis and
``compression="crossover"`` (keeps the length linear in the number of species: 105 per species here); pass
``--opt compression=off`` for the full power spectrum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from extractors.base import OFFLINE_READY, Embedded, Extractor, ModelSpec, check_layer
from extractors.datasets import Record

__all__ = ["LAYERS", "SPECS", "SOAPExtractor", "build"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {"last": "the SOAP power spectrum (a descriptor: no other layers)"}

SPECS = (
    ModelSpec(
        id="soap",
        family="soap",
        config={"r_cut": 5.0, "n_max": 6, "l_max": 4, "sigma": 1.0, "compression": "crossover"},
        status=OFFLINE_READY,
        packages=("dscribe", "ase"),
        description="SOAP power spectrum (dscribe), species fixed per dataset",
    ),
)


class SOAPExtractor(Extractor):
    atomistic = True
    pooling = "mean"

    def __init__(self, spec: ModelSpec, *, layer: str = "last", species: Sequence[str | int] | None = None, **params):
        unknown = set(params) - set(spec.config)
        if unknown:
            raise ValueError(f"unknown SOAP option(s) {sorted(unknown)}; known: {sorted(spec.config)} and species.")
        self.params = {**spec.config, **params}
        check_layer(spec, layer, LAYERS)
        super().__init__(spec, layer=layer, species=species, **self.params)
        self.species = None if species is None else _numbers(species)
        self._soap: dict[bool, Any] = {}

    def prepare(self, records: Sequence[Record]) -> None:
        if self.species is None:
            zs = {int(z) for r in records if r.atoms is not None for z in r.atoms.numbers}
            if not zs:
                raise ValueError("SOAP needs 3D structures; the dataset has none.")
            self.species = sorted(zs)
        from dscribe.descriptors import SOAP

        p = self.params
        for periodic in (False, True):
            self._soap[periodic] = SOAP(
                species=self.species,
                r_cut=float(p["r_cut"]),
                n_max=int(p["n_max"]),
                l_max=int(p["l_max"]),
                sigma=float(p["sigma"]),
                periodic=periodic,
                compression={"mode": p["compression"]},
                average="off",
            )

    def check(self, record: Record) -> str | None:
        reason = super().check(record)
        if reason is None and self.species is not None:
            bad = sorted({int(z) for z in record.atoms.numbers} - set(self.species))
            if bad:
                reason = f"atomic numbers {bad} not in the fixed SOAP species {self.species}"
        return reason

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        if not self._soap:
            self.prepare(records)
        out = []
        for r in records:
            periodic = bool(r.atoms.pbc.all())
            feats = np.asarray(self._soap[periodic].create(r.atoms), dtype=np.float32)
            out.append(Embedded(features=feats.mean(axis=0), atom_features=feats))
        return out

    def info(self) -> dict[str, Any]:
        dim = self._soap[False].get_number_of_features() if self._soap else None
        return {"species": self.species, **self.params, "feature_dim": dim}


def _numbers(species: Sequence[str | int]) -> list[int]:
    from ase.data import atomic_numbers

    return sorted({int(s) if str(s).isdigit() else atomic_numbers[str(s)] for s in species})


def build(spec: ModelSpec, **options: Any) -> SOAPExtractor:
    return SOAPExtractor(spec, **options)
