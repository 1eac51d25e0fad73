"""ProstT5 (Heinzinger et al. 2024, NAR Genom. Bioinform. 6, lqae150): the T5 protein language model translating
between amino-acid sequences and Foldseek 3Di structure strings, through Hugging Face ``transformers``.

Input (the model card's convention): the record's one-letter sequence with the rare residues U, Z, O, B mapped
to X, one space between residues, prefixed by ``<AA2fold>`` (amino-acid input). Embedding: the encoder's
``last_hidden_state`` (``T5EncoderModel``; the decoder is not loaded), mean over the residue positions — the
prefix token and the closing ``</s>`` excluded, as in the model card's per-protein embedding. Sequences longer
than ``max_residues`` are truncated to their first ``max_residues`` residues (the file's metadata says so).

Seed 000 also embedded "ProstT5 Structure" (3Di input, ``<fold2AA>`` prefix, lower-case 3Di letters): that needs
Foldseek's 3Di string per chain, which no dataset reader provides yet, so only the sequence variant is
registered; :func:`model_input` already renders 3Di input.

Weights: ``--opt weights=PATH`` (a local snapshot of ``Rostlab/ProstT5``) or the Hub id (local Hugging Face
cache). The model card runs it in half precision on GPU (``--opt dtype=float16 --opt device=cuda``) and float32
on CPU (the default).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from extractors.base import WEIGHTS_PATH, Embedded, Extractor, ModelSpec
from extractors.datasets import Record
from extractors.models._hf import encode_by_length, load_model, load_tokenizer, masked_mean, resolve_weights

__all__ = ["AA_PREFIX", "FOLD_PREFIX", "LAYERS", "SPECS", "ProstT5Extractor", "build", "model_input"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {"last": "the encoder's last hidden state, mean over residues"}

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
)


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
        if layer != "last":
            raise ValueError(f"{spec.id} offers layer='last' (encoder's last hidden state), got {layer!r}.")
        if max_residues < 1:
            raise ValueError(f"`max_residues` must be positive, got {max_residues}.")
        super().__init__(spec, layer=layer, device=device, dtype=dtype, max_residues=max_residues)
        self.path = resolve_weights(weights, spec.config["hub_id"])
        self.tokenizer = load_tokenizer(self.path, do_lower_case=False)
        self.model = load_model(self.path, auto_class="T5EncoderModel", dtype=dtype, device=device)
        self.max_residues = int(max_residues)
        self.kind = spec.config["input"]

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
            hidden = self.model(input_ids=enc["input_ids"].to(device), attention_mask=mask.to(device)).last_hidden_state
        return masked_mean(hidden, residues)

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        vectors = self.encode([r.sequence for r in records]).cpu().numpy()
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
