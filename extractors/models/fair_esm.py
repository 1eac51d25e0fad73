"""Meta's protein models through ``fair-esm`` 2.0.0: ESM2 (Lin et al. 2023, Science 379, 1123) and the inverse-
folding model ESM-IF1 (Hsu et al. 2022, ICML, GVP-Transformer).

ESM2 (SPEC §13): ``model(tokens, repr_layers=[n])["representations"][n]`` with ``n = model.num_layers`` (layer
``last``; ``--layer K`` picks representation layer K, 0 = embeddings), mean over the residue positions — BOS and
EOS excluded, exactly fair-esm's ``scripts/extract.py --include mean``. Sequences are truncated to their first
``truncation_seq_length`` = 1022 residues, as extract.py does (the positional limit is 1024 tokens).

ESM-IF1: the GVP-Transformer encoder's output for the backbone (``esm.inverse_folding.util.get_encoder_output``:
last encoder layer, BOS/EOS dropped), mean over residues. It reads N, CA, C coordinates, (L, 3, 3) in Å, from
``Record.backbone_coords`` (Cα alone is not enough); residues with a missing atom (NaN) are masked by the model.

Weights: ``--opt weights=PATH`` names the fair-esm checkpoint (e.g. ``esm2_t33_650M_UR50D.pt`` or
``esm_if1_gvp4_t16_142M_UR50.pt``; the file name selects the loader, so keep the original name), read by
``esm.pretrained.load_model_and_alphabet_local``; ESM2's ``<name>-contact-regression.pt`` beside it is optional
(contacts are not used; without it the model loads through ``load_model_and_alphabet_core`` without the contact
head's regression weights). Without ``weights`` the model is fetched by name (``torch.hub`` cache, downloading
when online). torch ≥ 2.6 loads checkpoints with ``weights_only=True``; fair-esm's checkpoints store their
arguments as ``argparse.Namespace``, allowed here with ``torch.serialization.safe_globals`` (a checkpoint holding
other objects fails with torch's message naming them; for a trusted file ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
lifts the restriction).

Environment: fair-esm installs the import name ``esm``, as EvolutionaryScale's ``esm`` (family ``esm3``) does, so
the two need separate environments. ESM-IF1 also imports ``torch_geometric``, ``torch_scatter``, ``biotite`` and
``scipy``: torch-scatter has no wheel for torch 2.13 and is compiled from source with
``pip install --no-build-isolation torch-scatter==2.1.2`` (build isolation would pull another torch), and biotite
must be < 1.0 (fair-esm imports ``biotite.structure.filter_backbone``, removed in biotite 1.0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SEPARATE_ENV, Embedded, Extractor, ModelSpec
from extractors.datasets import Record, backbone

__all__ = [
    "ENV_REQUIREMENTS",
    "LAYERS",
    "SPECS",
    "ESM2Extractor",
    "ESMIF1Extractor",
    "build",
    "load_model_and_alphabet",
]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "ESM2: the last representation layer; ESM-IF1: the GVP-Transformer encoder output",
    "<k>": "ESM2 only: representation layer k (0 = token embeddings … num_layers)",
}

#: Requirements of the family's environment (see extractors.envs); ESM-IF1 also needs torch-scatter, built with
#: ``pip install --no-build-isolation torch-scatter==2.1.2`` (see the module docstring).
ENV_REQUIREMENTS = ("fair-esm==2.0.0", "scipy", "biotite<1.0", "torch_geometric")
_PACKAGES = ("fair-esm", "torch")
_IF1_PACKAGES = (*_PACKAGES, "torch_geometric", "torch-scatter", "biotite", "scipy")


def _esm2(model_id: str, name: str, params: str) -> ModelSpec:
    return ModelSpec(
        model_id,
        "fair_esm",
        {"name": name, "kind": "esm2"},
        SEPARATE_ENV,
        _PACKAGES,
        f"ESM2 {params} on the sequence (fair-esm; weights path)",
    )


SPECS = (
    _esm2("esm2-t6-8m", "esm2_t6_8M_UR50D", "8M"),
    _esm2("esm2-t12-35m", "esm2_t12_35M_UR50D", "35M"),
    _esm2("esm2-t30-150m", "esm2_t30_150M_UR50D", "150M"),
    _esm2("esm2-t33-650m", "esm2_t33_650M_UR50D", "650M"),
    _esm2("esm2-t36-3b", "esm2_t36_3B_UR50D", "3B"),
    ModelSpec(
        "esm-if1",
        "fair_esm",
        {"name": "esm_if1_gvp4_t16_142M_UR50", "kind": "if1"},
        SEPARATE_ENV,
        _IF1_PACKAGES,
        "ESM-IF1 GVP-Transformer encoder on N/CA/C backbones (fair-esm + torch-scatter; weights path)",
    ),
)


@contextlib.contextmanager
def _checkpoint_globals() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` rebuild the ``argparse.Namespace`` in fair-esm checkpoints."""
    import argparse

    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        yield


def load_model_and_alphabet(weights: str | Path | None, name: str) -> tuple[Any, Any]:
    """fair-esm's ``(model, alphabet)`` from the checkpoint ``weights`` (its stem names the architecture), or from
    the hub by ``name`` when ``weights`` is None."""
    import esm
    import torch

    with _checkpoint_globals():
        if weights is None:
            return esm.pretrained.load_model_and_alphabet(name)
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"no fair-esm checkpoint at {path}")
        regression = Path(str(path.with_suffix("")) + "-contact-regression.pt")
        if esm.pretrained._has_regression_weights(path.stem) and not regression.is_file():
            model_data = torch.load(str(path), map_location="cpu")
            return esm.pretrained.load_model_and_alphabet_core(path.stem, model_data, None)
        return esm.pretrained.load_model_and_alphabet_local(path)


class ESM2Extractor(Extractor):
    needs = "sequence"
    pooling = "mean over residues (BOS/EOS excluded) of repr_layers=[layer]"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        device: str = "cpu",
        weights: str | None = None,
        truncation_seq_length: int = 1022,
    ) -> None:
        super().__init__(spec, layer=layer, device=device, weights=weights, truncation_seq_length=truncation_seq_length)
        self.model, self.alphabet = load_model_and_alphabet(weights, spec.config["name"])
        self.model = self.model.eval().to(device)
        n = self.model.num_layers
        if layer == "last":
            self.repr_layer = n
        elif str(layer).isdigit() and 0 <= int(layer) <= n:
            self.repr_layer = int(layer)
        else:
            raise ValueError(f"`layer` must be 'last' or a representation layer 0…{n}, got {layer!r}.")
        if truncation_seq_length < 1:
            raise ValueError(f"`truncation_seq_length` must be positive, got {truncation_seq_length}.")
        self.truncation = int(truncation_seq_length)
        self.converter = self.alphabet.get_batch_converter(self.truncation)
        self.device = device
        self.weights = str(weights) if weights else spec.config["name"]

    def representations(self, sequences: Sequence[str]) -> tuple[Any, Any]:
        """(tokens, representation of layer ``repr_layer``) of a padded batch."""
        import torch

        _, _, tokens = self.converter([(str(i), s) for i, s in enumerate(sequences)])
        tokens = tokens.to(self.device)
        with torch.no_grad():
            out = self.model(tokens, repr_layers=[self.repr_layer], return_contacts=False)
        return tokens, out["representations"][self.repr_layer]

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        seqs = [r.sequence for r in records]
        _, rep = self.representations(seqs)
        rep = rep.float().cpu()
        return [
            Embedded(features=rep[i, 1 : min(len(s), self.truncation) + 1].mean(0).numpy()) for i, s in enumerate(seqs)
        ]

    def info(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "repr_layer": self.repr_layer,
            "num_layers": int(self.model.num_layers),
            "embed_dim": int(self.model.embed_dim),
            "truncation_seq_length": self.truncation,
        }


class ESMIF1Extractor(Extractor):
    needs = "backbone"
    pooling = "mean over residues of the GVP-Transformer encoder output"

    def __init__(self, spec: ModelSpec, *, layer: str = "last", device: str = "cpu", weights: str | None = None):
        if layer != "last":
            raise ValueError(f"{spec.id} offers layer='last' (the encoder output), got {layer!r}.")
        super().__init__(spec, layer=layer, device=device, weights=weights)
        import esm.inverse_folding  # noqa: F401  (fails here, not mid-run, when torch_scatter etc. are missing)

        self.model, self.alphabet = load_model_and_alphabet(weights, spec.config["name"])
        self.model = self.model.eval().to(device)
        self.device = device
        self.weights = str(weights) if weights else spec.config["name"]

    def check(self, record: Record) -> str | None:
        coords = backbone(record)
        if coords is None:
            return f"model {self.spec.id} needs N/CA/C backbone coordinates (a pdb: dataset)"
        return None

    def encoder_output(self, coords: np.ndarray) -> Any:
        """(L, d) encoder output: ``esm.inverse_folding.util.get_encoder_output`` on ``self.device``."""
        import torch
        from esm.inverse_folding.util import CoordBatchConverter

        converter = CoordBatchConverter(self.alphabet)
        batch_coords, confidence, _, _, padding_mask = converter([(coords, None, None)], device=self.device)
        with torch.no_grad():
            out = self.model.encoder.forward(batch_coords, padding_mask, confidence, return_all_hiddens=False)
        return out["encoder_out"][0][1:-1, 0]

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        return [Embedded(features=self.encoder_output(backbone(r)).float().mean(0).cpu().numpy()) for r in records]

    def info(self) -> dict[str, Any]:
        return {"weights": self.weights, "embed_dim": int(self.model.encoder.embed_tokens.embedding_dim)}


def build(spec: ModelSpec, **options: Any) -> Extractor:
    cls = ESM2Extractor if spec.config["kind"] == "esm2" else ESMIF1Extractor
    return cls(spec, **options)
