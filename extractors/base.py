"""The extractor interface shared by every model family.

A family module (``extractors/models/<family>.py``) declares its models as :class:`ModelSpec` entries in a
module-level ``SPECS`` tuple (no heavy imports at module level, so ``python -m extractors list`` stays cheap) and a
``build(spec, **options) -> Extractor`` function that loads the model. An :class:`Extractor` embeds a batch of
records into one :class:`Embedded` per record; :mod:`extractors.runner` does batching, failure isolation,
chunking and the file.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from extractors.datasets import Record

__all__ = [
    "OFFLINE_READY",
    "SEPARATE_ENV",
    "STATUSES",
    "WEIGHTS_PATH",
    "Embedded",
    "Extractor",
    "ModelSpec",
    "check_layer",
    "per_structure",
    "spec_table",
    "versions",
]

OFFLINE_READY = "offline-ready"
WEIGHTS_PATH = "needs weights path"
SEPARATE_ENV = "needs separate environment"
STATUSES = (OFFLINE_READY, WEIGHTS_PATH, SEPARATE_ENV)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registry entry: model id → family module, its configuration and how it can run here.

    ``status`` is one of ``offline-ready`` (weights ship in a package of the extractors environment),
    ``needs weights path`` (pass ``--opt weights=PATH``) or ``needs separate environment`` (run with ``--python``
    under an interpreter that has ``packages``).
    """

    id: str
    family: str
    config: dict[str, Any]
    status: str
    packages: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"ModelSpec {self.id}: status must be one of {STATUSES}, got {self.status!r}.")


def spec_table(
    family: str,
    config_keys: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    status: str,
    packages: tuple[str, ...],
    **shared: Any,
) -> tuple[ModelSpec, ...]:
    """The :class:`ModelSpec` of each row ``(id, *values of config_keys, description)`` of one family's table;
    ``shared`` config entries are the same for every row."""
    return tuple(
        ModelSpec(
            id=row[0],
            family=family,
            config={**shared, **dict(zip(config_keys, row[1:-1], strict=True))},
            status=status,
            packages=packages,
            description=row[-1],
        )
        for row in rows
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Embedded:
    """What a model gives for one record: pooled ``features`` (d,), optional per-atom ``atom_features``
    (n_atoms, d_atom) and the model's ``energy`` in eV."""

    features: np.ndarray
    atom_features: np.ndarray | None = None
    energy: float | None = None


class Extractor:
    """Base class: subclasses set the class attributes and implement :meth:`embed`.

    ``needs`` names the record field the model reads (``atoms``, ``smiles``, ``text``, ``sequence``);
    ``atomistic`` models return per-atom features; ``has_energy`` models return an energy.
    """

    needs: ClassVar[str] = "atoms"
    atomistic: ClassVar[bool] = False
    has_energy: ClassVar[bool] = False
    pooling: ClassVar[str] = "mean"

    def __init__(self, spec: ModelSpec, *, layer: str = "last", **options: Any) -> None:
        self.spec = spec
        self.layer = layer
        self.options = options

    # -- hooks ---------------------------------------------------------------------------------------------
    def prepare(self, records: Sequence[Record]) -> None:
        """Called once with every record of the run before any :meth:`embed` (e.g. SOAP fixes its species)."""

    def check(self, record: Record) -> str | None:
        """Why this record cannot be embedded (missing input, unsupported element), or None when it can."""
        if self.needs in ("atoms", "text") and record.atoms is None:
            return f"model {self.spec.id} needs 3D structures; record has none"
        if self.needs == "sequence" and not record.sequence:
            return f"model {self.spec.id} needs a protein sequence; record has none"
        return None

    def embed(self, records: Sequence[Record]) -> list[Embedded | str]:
        """Embed a batch: one :class:`Embedded` per record, or a string — the reason — for a record the model
        refuses (the runner records it in ``meta['failures']``). May raise, in which case the runner retries the
        records one at a time."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Extra metadata for the file (feature dimension, notes, resolved options)."""
        return {}

    def package_versions(self) -> dict[str, str]:
        return versions(self.spec.packages)


def check_layer(spec: ModelSpec, layer: str, layers: dict[str, str]) -> None:
    """Raise ValueError naming ``spec``'s ``layers`` (its family's ``LAYERS``) when ``layer`` is not one of them."""
    if layer not in layers:
        offered = "; ".join(f"{name!r}: {what}" for name, what in layers.items())
        raise ValueError(f"{spec.id} offers layer {offered}; got layer={layer!r}.")


def per_structure(atom_features: np.ndarray, n_atoms: Sequence[int], energies: Sequence[float]) -> list[Embedded]:
    """One :class:`Embedded` per structure of a batch from its stacked (Σ n_atoms, d) per-atom features: the
    structure's atom features, their mean as its pooled features, and its energy."""
    blocks = np.split(atom_features, np.cumsum(np.asarray(n_atoms))[:-1])
    return [
        Embedded(features=f.mean(axis=0), atom_features=f, energy=float(e))
        for f, e in zip(blocks, np.ravel(energies), strict=True)
    ]


def versions(packages: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``packages`` (``"not installed"`` when absent), plus numpy's."""
    out = {}
    for name in ("numpy", *packages):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
