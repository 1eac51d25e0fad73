"""Model metadata: what the studies group and colour models by (seed 000 Figs. 1B, 1E, C9; seed 003's variants).

Every registered model has a :class:`ModelMeta`: its family's shared facts (:data:`FAMILY_META`) with the model's
own training data and level of theory over them (:data:`MODEL_META`). A run may add or correct metadata for its
own models in config (``models.meta.<id>.<field>``, see :func:`merged`). The parameter count is not stored here: it
is measured when a model is loaded (``n_params`` in each embedding file's metadata).

Fields:
  architecture — the model's architecture (e.g. ``"MACE"``, ``"transformer encoder"``).
  modality — what the model reads: ``"3D structure"``, ``"SMILES"``, ``"SELFIES"``, ``"text"``, ``"protein sequence"``,
    ``"protein structure"`` or ``"none"``.
  training_data — the datasets the weights were fitted on (empty: not trained, e.g. a descriptor).
  level_of_theory — the reference method of the training energies (``"—"`` for models without an energy target).
  equivariance — the architecture's symmetry under rotations of 3D input: ``"invariant"``, ``"equivariant"`` or
    ``"neither"`` (not constrained, or no 3D input).
  energy_head — whether the model predicts an energy.
  citation — the paper to cite for the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["EQUIVARIANCE", "FAMILY_META", "MODEL_META", "ModelMeta", "merged", "model_meta", "unreadable"]

EQUIVARIANCE = ("invariant", "equivariant", "neither")


@dataclasses.dataclass(frozen=True)
class ModelMeta:
    """One model's metadata (module docstring)."""

    architecture: str
    modality: str
    training_data: tuple[str, ...]
    level_of_theory: str
    equivariance: str
    energy_head: bool
    citation: str

    def __post_init__(self) -> None:
        if self.equivariance not in EQUIVARIANCE:
            raise ValueError(f"`equivariance` must be one of {EQUIVARIANCE}, got {self.equivariance!r}.")
        if not isinstance(self.energy_head, bool):
            raise ValueError(f"`energy_head` must be true or false, got {self.energy_head!r}.")

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "training_data": list(self.training_data)}


_PBE = "PBE/PBE+U"


def _mlip(architecture: str, equivariance: str, citation: str, data: tuple[str, ...], theory: str) -> ModelMeta:
    return ModelMeta(architecture, "3D structure", data, theory, equivariance, True, citation)


#: The facts a family's models share (training data and level of theory: the family's usual ones).
FAMILY_META: dict[str, ModelMeta] = {
    "chgnet": _mlip("CHGNet", "invariant", "Deng et al., Nat. Mach. Intell. 5, 1031 (2023)", ("MPtrj",), _PBE),
    "sevennet": _mlip(
        "SevenNet (NequIP)", "equivariant", "Park et al., J. Chem. Theory Comput. 20, 4857 (2024)", ("MPtrj",), _PBE
    ),
    "mace": _mlip("MACE", "equivariant", "Batatia et al., arXiv:2401.00096 (2024)", ("MPtrj",), _PBE),
    "orb": _mlip("Orb", "neither", "Rhodes et al., arXiv:2504.06231 (2025)", ("OMat24",), _PBE),
    "fairchem": _mlip("UMA (eSEN)", "equivariant", "Wood et al., arXiv:2506.23971 (2025)", ("OMat24",), _PBE),
    "petmad": _mlip("PET", "neither", "Mazitov et al., arXiv:2503.14118 (2025)", ("MAD",), "r2SCAN"),
    "dpa3": _mlip("DPA-3", "invariant", "Zhang et al., arXiv:2506.01686 (2025)", ("OpenLAM",), _PBE),
    "mattersim": _mlip("MatterSim (M3GNet)", "invariant", "Yang et al., arXiv:2405.04967 (2024)", ("MatterSim",), _PBE),
    "soap": ModelMeta(
        "SOAP descriptor",
        "3D structure",
        (),
        "—",
        "invariant",
        False,
        "Bartók, Kondor & Csányi, Phys. Rev. B 87, 184115 (2013)",
    ),
    "morgan": ModelMeta(
        "Morgan fingerprint", "SMILES", (), "—", "neither", False, "Rogers & Hahn, J. Chem. Inf. Model. 50, 742 (2010)"
    ),
    "minilm": ModelMeta(
        "transformer encoder (MiniLM)",
        "SMILES",
        ("sentence pairs (general text)",),
        "—",
        "neither",
        False,
        "Wang et al., NeurIPS (2020)",
    ),
    "hf_chem": ModelMeta(
        "transformer (chemical language model)",
        "SMILES",
        ("PubChem",),
        "—",
        "neither",
        False,
        "Ahmad et al., arXiv:2209.01712 (2022)",
    ),
    "hf_llm": ModelMeta(
        "decoder-only LLM", "text", ("general text",), "—", "neither", False, "DeepSeek-AI, arXiv:2501.12948 (2025)"
    ),
    "fair_esm": ModelMeta(
        "ESM2 (transformer)",
        "protein sequence",
        ("UniRef",),
        "—",
        "neither",
        False,
        "Lin et al., Science 379, 1123 (2023)",
    ),
    "esm3": ModelMeta(
        "ESM C (transformer)",
        "protein sequence",
        ("UniRef", "metagenomic sequences"),
        "—",
        "neither",
        False,
        "ESM Team, ESM Cambrian (2024)",
    ),
    "prostt5": ModelMeta(
        "T5 encoder (ProstT5)",
        "protein sequence",
        ("UniRef", "AlphaFold DB 3Di"),
        "—",
        "neither",
        False,
        "Heinzinger et al., NAR Genom. Bioinform. 6, lqae150 (2024)",
    ),
    "proteinmpnn": ModelMeta(
        "message-passing network (ProteinMPNN)",
        "protein structure",
        ("PDB assemblies (CATH-clustered at 30 %)",),
        "—",
        "invariant",
        False,
        "Dauparas et al., Science 378, 49 (2022)",
    ),
    "baseline": ModelMeta("random features", "none", (), "—", "neither", False, "—"),
}

_MPA = ("MPtrj", "sAlex")
_OMOL = {"training_data": ("OMol25",), "level_of_theory": "ωB97M-V"}
_R2SCAN = {"training_data": ("MP-r2SCAN",), "level_of_theory": "r2SCAN"}

#: Per-model facts that differ from the family's (training data, level of theory, architecture, modality …).
MODEL_META: dict[str, dict[str, Any]] = {
    "chgnet-r2scan": _R2SCAN,
    "7net-mf-0-pbe": {"training_data": ("MPtrj", "MP-r2SCAN")},
    "7net-mf-0-r2scan": {"training_data": ("MPtrj", "MP-r2SCAN"), "level_of_theory": "r2SCAN"},
    "mace-mpa-0-medium": {"training_data": _MPA},
    "mace-omat-0-medium": {"training_data": ("OMat24",)},
    "mace-matpes-pbe-0": {"training_data": ("MatPES",), "level_of_theory": "PBE"},
    "mace-matpes-r2scan-0": {"training_data": ("MatPES",), "level_of_theory": "r2SCAN"},
    "mace-mh-1": {
        "training_data": ("OMat24", "OMol25", "OC20", "MatPES", "MPtrj", "sAlex"),
        "level_of_theory": "multi",
    },
    **{
        f"mace-off23-{size}": {"training_data": ("SPICE",), "level_of_theory": "ωB97M-D3(BJ)"}
        for size in ("small", "medium", "large")
    },
    "orb-v3-conservative-inf-mpa": {"training_data": _MPA},
    "orb-v3-direct-inf-mpa": {"training_data": _MPA},
    "orb-v3-conservative-20-mpa": {"training_data": _MPA},
    "orb-v3-direct-20-mpa": {"training_data": _MPA},
    "orb-v3-direct-20-omat-randomized": {"training_data": (), "level_of_theory": "—"},  # random weights
    "orb-v3-conservative-omol": _OMOL,
    "orb-v3-direct-omol": _OMOL,
    "orb-v2": {"training_data": ("MPtrj", "Alexandria"), "citation": "Neumann et al., arXiv:2410.22570 (2024)"},
    "orb-mptraj-only-v2": {"training_data": ("MPtrj",), "citation": "Neumann et al., arXiv:2410.22570 (2024)"},
    "uma-s-1p1-omol": _OMOL,
    "uma-m-1p1-omol": _OMOL,
    "uma-s-1p2-omol": _OMOL,
    "uma-s-1p1-oc20": {"training_data": ("OC20",), "level_of_theory": "RPBE"},
    "uma-m-1p1-oc20": {"training_data": ("OC20",), "level_of_theory": "RPBE"},
    "uma-s-1p1-odac": {"training_data": ("ODAC23",), "level_of_theory": "PBE+D3"},
    "uma-m-1p1-odac": {"training_data": ("ODAC23",), "level_of_theory": "PBE+D3"},
    "uma-s-1p1-omc": {"training_data": ("OMC25",), "level_of_theory": "PBE+D3"},
    "uma-m-1p1-omc": {"training_data": ("OMC25",), "level_of_theory": "PBE+D3"},
    "esen-sm-conserving-all-omol": {**_OMOL, "architecture": "eSEN", "citation": "Fu et al., arXiv:2502.12147 (2025)"},
    "esen-md-direct-all-omol": {**_OMOL, "architecture": "eSEN", "citation": "Fu et al., arXiv:2502.12147 (2025)"},
    "esen-30m-oam": {
        "training_data": ("OMat24", "MPtrj", "sAlex"),
        "architecture": "eSEN",
        "citation": "Fu et al., arXiv:2502.12147 (2025)",
    },
    "esen-30m-mp": {
        "training_data": ("MPtrj",),
        "architecture": "eSEN",
        "citation": "Fu et al., arXiv:2502.12147 (2025)",
    },
    "esen-30m-omat": {
        "training_data": ("OMat24",),
        "architecture": "eSEN",
        "citation": "Fu et al., arXiv:2502.12147 (2025)",
    },
    **{
        f"eqv2-{name}": {
            "training_data": data,
            "architecture": "EquiformerV2",  # DeNS is a training objective: seed 000 counts eleven EqV2 models
            "citation": "Barroso-Luque et al., arXiv:2410.12771 (2024)",
        }
        for name, data in (
            ("31m-omat", ("OMat24",)),
            ("86m-omat", ("OMat24",)),
            ("153m-omat", ("OMat24",)),
            ("31m-mp", ("MPtrj",)),
            ("dens-31m-mp", ("MPtrj",)),
            ("dens-86m-mp", ("MPtrj",)),
            ("dens-153m-mp", ("MPtrj",)),
        )
    },
    **{
        f"eqv2-{size}-omat-mp-salex": {
            "training_data": ("OMat24", "MPtrj", "sAlex"),
            "architecture": "EquiformerV2",
            "citation": "Barroso-Luque et al., arXiv:2410.12771 (2024)",
        }
        for size in ("31m", "86m", "153m")
    },
    "pet-mad-s-v1.0.2": {"level_of_theory": "PBEsol"},
    "pet-mad-dos": {
        "level_of_theory": "PBEsol",
        "energy_head": False,  # a density-of-states head
        "citation": "How et al., arXiv:2508.09000 (2025)",
    },
    **{f"pet-omat-{size}": {"training_data": ("OMat24",), "level_of_theory": _PBE} for size in ("xs", "s", "m", "l")},
    "pet-omat-xl": {"training_data": ("OMat24",), "level_of_theory": _PBE},
    "pet-omad-l": {"training_data": ("OMat24", "MAD"), "level_of_theory": "PBEsol"},  # seed 003 Table S1
    "pet-omatpes-l": {"training_data": ("OMat24", "MatPES"), "level_of_theory": "r2SCAN"},
    "pet-oam-l": {"training_data": ("OMat24", "sAlex", "MPtrj"), "level_of_theory": _PBE},
    "pet-omol-s": _OMOL,
    "pet-spice-s": {"training_data": ("SPICE",), "level_of_theory": "ωB97M-D3(BJ)"},
    "dpa-3.1-3m-mptrj": {"training_data": ("OpenLAM", "MPtrj head")},
    "dpa-3.1-3m-oc20": {"training_data": ("OpenLAM", "OC20 head"), "level_of_theory": "RPBE"},
    "dpa-3.1-3m-odac": {"training_data": ("OpenLAM", "ODAC23 head"), "level_of_theory": "PBE-D3"},
    "dpa-3.1-3m-spice": {"training_data": ("OpenLAM", "SPICE2 head"), "level_of_theory": "ωB97M-D3(BJ)"},
    "minilm-text": {"modality": "text"},
    "molformer-xl": {
        "training_data": ("ZINC", "PubChem"),
        "citation": "Ross et al., Nat. Mach. Intell. 4, 1256 (2022)",
    },
    **{
        f"chemgpt-{size}": {"modality": "SELFIES", "citation": "Frey et al., Nat. Mach. Intell. 5, 1297 (2023)"}
        for size in ("1.2b", "4.7m")
    },
    **{
        f"qwen3-30b-a3b-thinking{v}": {"citation": "Yang et al., arXiv:2505.09388 (2025)"}
        for v in ("", "-blank", "-blank-atomistic")
    },
    **{f"gpt-oss-20b{v}": {"citation": "OpenAI, arXiv:2508.10925 (2025)"} for v in ("", "-blank", "-blank-atomistic")},
    "prostt5-3di": {"modality": "protein structure"},  # the Foldseek 3Di string of the backbone
    "proteinmpnn-soluble": {"training_data": ("PDB assemblies, membrane proteins excluded",)},
    "esm-if1": {
        "architecture": "GVP-Transformer (ESM-IF1)",
        "modality": "protein structure",
        "equivariance": "equivariant",
        "training_data": ("CATH", "AlphaFold2 predictions"),
        "citation": "Hsu et al., ICML (2022)",
    },
    "esm3-sequence": {"architecture": "ESM3 (transformer)", "citation": "Hayes et al., Science 387, 850 (2025)"},
    "esm3-structure": {
        "architecture": "ESM3 (transformer)",
        "modality": "protein structure",
        "equivariance": "invariant",
        "citation": "Hayes et al., Science 387, 850 (2025)",
    },
}


def merged(base: ModelMeta, overrides: Mapping[str, Any] | None) -> ModelMeta:
    """``base`` with ``overrides`` (field → value; lists become tuples) applied; an unknown field is a ValueError
    naming it and the known ones."""
    if not overrides:
        return base
    fields = {f.name for f in dataclasses.fields(ModelMeta)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"model metadata has unknown fields {unknown}; known: {sorted(fields)}.")
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in overrides.items()}
    return dataclasses.replace(base, **values)


def model_meta(model: str, family: str, overrides: Mapping[str, Any] | None = None) -> ModelMeta:
    """The metadata of registered ``model`` of ``family``, with a run's ``overrides`` on top."""
    if family not in FAMILY_META:
        raise ValueError(f"no metadata for family {family!r} (model {model!r}); add it to extractors.metadata.")
    base = model.partition("@")[0].partition("~")[0]  # a layer (``7net-0@2_equivariant_gate``) or checkpoint
    # (``chgnet-0.3.0~ff-e0010``) of a model shares its metadata
    return merged(merged(FAMILY_META[family], MODEL_META.get(base)), overrides)


def unreadable(modality: str, record: Any) -> str | None:
    """Why a model of ``modality`` cannot read ``record`` (an :class:`extractors.datasets.Record`), or None.

    Decided from the record's fields before any model runs, so that a study runs each model only on the datasets it
    can embed: SMILES/SELFIES models read a SMILES or a molecule's 3D structure (RDKit derives the SMILES; a
    periodic structure has none), protein models read a sequence (structure models also the backbone), 3D models
    and text models read a 3D structure (text models also a SMILES). A model may still fail on a readable record
    (an element it does not support, bonds RDKit cannot assign): the extractor records those per structure.
    """
    atoms = getattr(record, "atoms", None)
    if modality in ("SMILES", "SELFIES"):
        if getattr(record, "smiles", None) or (atoms is not None and not atoms.pbc.any()):
            return None
        return "periodic structure: no SMILES" if atoms is not None else "no SMILES and no 3D structure"
    if modality == "protein sequence":
        return None if getattr(record, "sequence", None) else "no protein sequence"
    if modality == "protein structure":
        if getattr(record, "sequence", None) and getattr(record, "backbone_coords", None) is not None:
            return None
        return "no protein backbone"
    if modality == "3D structure":
        return None if atoms is not None else "no 3D structure"
    if modality == "text":
        return None if atoms is not None or getattr(record, "smiles", None) else "no 3D structure and no SMILES"
    return None  # "none": the random baseline reads nothing
