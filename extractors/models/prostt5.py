"""ProstT5 (Heinzinger et al. 2024, NAR Genom. Bioinform. 6, lqae150): the T5 protein language model translating
between amino-acid sequences and Foldseek 3Di structure strings, through Hugging Face ``transformers``.

Input (the model card's convention): the record's one-letter sequence with the rare residues U, Z, O, B mapped
to X, one space between residues, prefixed by ``<AA2fold>`` (amino-acid input). Embedding: the encoder's
``last_hidden_state`` (``T5EncoderModel``; the decoder is not loaded), mean over the residue positions — the
prefix token and the closing ``</s>`` excluded, as in the model card's per-protein embedding. Sequences longer
than ``max_residues`` are truncated to their first ``max_residues`` residues (the file's metadata says so).

``prostt5-3di`` is seed 000's "ProstT5 Structure": the chain's Foldseek 3Di string (one letter per residue, from
its N, CA, C and CB coordinates, ``Record.backbone_coords``; a missing CB, e.g. glycine's, is placed as Foldseek
places it) computed by ``mini3di`` (a NumPy port of Foldseek's 3Di encoder), lower case after ``<fold2AA>``, the
model card's structure input; the same encoder and pooling as the sequence variant.

Weights: ``--opt weights=PATH`` (a local snapshot of ``Rostlab/ProstT5``) or the Hub id (local Hugging Face
cache). The model card runs it in half precision on GPU (``--opt dtype=float16 --opt device=cuda``) and float32
on CPU (the default).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from extractors.base import WEIGHTS_PATH, Embedded, Extractor, ModelSpec
from extractors.datasets import Record, backbone
from extractors.models._hf import (
    HIDDEN_LAYER,
    check_hidden_layer,
    encode_by_length,
    hidden_layer,
    hidden_state,
    load_model,
    load_tokenizer,
    masked_mean,
    resolve_weights,
)

__all__ = ["AA_PREFIX", "FOLD_PREFIX", "LAYERS", "SPECS", "ProstT5Extractor", "build", "model_input", "three_di"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "the encoder's last hidden state, mean over residues",
    HIDDEN_LAYER: "the encoder's hidden state k (0 = token embeddings … 24 blocks), mean over residues",
}

AA_PREFIX = "<AA2fold>"
FOLD_PREFIX = "<fold2AA>"
_PACKAGES = ("transformers", "tokenizers", "torch", "sentencepiece")
SPECS = (
    ModelSpec(
        "prostt5",
        "prostt5",
        {"hub_id": "Rostlab/ProstT5", "input": "sequence"},
        WEIGHTS_PATH,
        _PACKAGES,
        "ProstT5 encoder on the amino-acid sequence (<AA2fold>)",
    ),
    ModelSpec(
        "prostt5-3di",
        "prostt5",
        {"hub_id": "Rostlab/ProstT5", "input": "3di"},
        WEIGHTS_PATH,
        (*_PACKAGES, "mini3di"),
        "ProstT5 encoder on the chain's Foldseek 3Di string (<fold2AA>; 3Di by mini3di)",
    ),
)


def three_di(record: Record) -> str | None:
    """The record's Foldseek 3Di string (one upper-case letter per residue) from its N, CA, C and CB coordinates,
    by ``mini3di.Encoder`` (missing CB approximated as Foldseek does); None when the record has no backbone."""
    import mini3di

    coords = backbone(record, 5)
    if coords is None:
        return None
    encoder = mini3di.Encoder()
    states = encoder.encode_atoms(ca=coords[:, 1], cb=coords[:, 4], n=coords[:, 0], c=coords[:, 2])
    return encoder.build_sequence(states)


def model_input(sequence: str, *, kind: str = "sequence") -> str:
    """ProstT5's input text: ``"<AA2fold> M K T ..."`` for an amino-acid sequence (U, Z, O, B → X, upper case),
    ``"<fold2AA> d v v ..."`` for a 3Di string (lower case)."""
    if kind == "sequence":
        return AA_PREFIX + " " + " ".join(re.sub(r"[UZOB]", "X", sequence.upper()))
    if kind == "3di":
        return FOLD_PREFIX + " " + " ".join(sequence.lower())
    raise ValueError(f"`kind` must be 'sequence' or '3di', got {kind!r}.")


class ProstT5Extractor(Extractor):
    needs = "sequence"
    pooling = "mean over residues (prefix token and </s> excluded) of the encoder's last hidden state"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        device: str = "cpu",
        weights: str | None = None,
        dtype: str = "float32",
        max_residues: int = 4000,
    ) -> None:
        self.hidden = hidden_layer(spec.id, layer, LAYERS)
        if max_residues < 1:
            raise ValueError(f"`max_residues` must be positive, got {max_residues}.")
        super().__init__(spec, layer=layer, device=device, dtype=dtype, max_residues=max_residues)
        self.path = resolve_weights(weights, spec.config["hub_id"])
        self.tokenizer = load_tokenizer(self.path, do_lower_case=False)
        self.model = load_model(self.path, auto_class="T5EncoderModel", dtype=dtype, device=device)
        check_hidden_layer(spec.id, self.hidden, self.model)
        self.max_residues = int(max_residues)
        self.kind = spec.config["input"]
        if self.kind == "3di":
            self.needs = "backbone"  # type: ignore[misc]

    def check(self, record: Record) -> str | None:
        if self.kind == "3di" and (not record.sequence or backbone(record, 5) is None):
            return f"model {self.spec.id} needs N/CA/C/CB coordinates (Record.backbone_coords, a pdb: dataset)"
        return super().check(record)

    def model_text(self, record: Record) -> str:
        """The residue letters the model reads: the sequence, or the 3Di string for ``prostt5-3di``."""
        return three_di(record) if self.kind == "3di" else record.sequence

    def encode(self, sequences: Sequence[str]) -> Any:
        """(n, d) float32 torch tensor: each sequence's mean over its residue positions (length-sorted
        sub-batches)."""
        return encode_by_length(self._encode_padded, [s[: self.max_residues] for s in sequences])

    def _encode_padded(self, seqs: list[str]) -> Any:
        import torch

        enc = self.tokenizer(
            [model_input(s, kind=self.kind) for s in seqs], padding=True, add_special_tokens=True, return_tensors="pt"
        )
        mask = enc["attention_mask"]
        lengths = mask.sum(dim=1)
        for s, n in zip(seqs, lengths.tolist(), strict=True):
            if n != len(s) + 2:
                raise ValueError(f"ProstT5 tokenizer gave {n} tokens for {len(s)} residues (expected one per residue)")
        residues = mask.clone()
        residues[:, 0] = 0  # the <AA2fold> prefix
        residues[torch.arange(len(seqs)), lengths - 1] = 0  # </s>
        device = self.model.device
        with torch.no_grad():
            ids, on = enc["input_ids"].to(device), mask.to(device)
            hidden = hidden_state(self.model, self.hidden, input_ids=ids, attention_mask=on)
        return masked_mean(hidden, residues)

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        vectors = self.encode([self.model_text(r) for r in records]).cpu().numpy()
        return [Embedded(features=v) for v in vectors]

    def info(self) -> dict[str, Any]:
        return {
            "weights": self.path,
            "input": self.kind,
            "max_residues": self.max_residues,
            "hidden_size": int(self.model.config.d_model),
        }


def build(spec: ModelSpec, **options: Any) -> ProstT5Extractor:
    return ProstT5Extractor(spec, **options)
