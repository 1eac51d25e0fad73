"""Chemical language models through Hugging Face ``transformers``: ChemBERTa-2 (Ahmad et al. 2022,
arXiv:2209.01712), MoLFormer-XL (Ross et al. 2022, Nat. Mach. Intell. 4, 1256) and ChemGPT (Frey et al. 2023,
Nat. Mach. Intell. 5, 1297).

Input: the record's SMILES (or one derived from its 3D structure, :func:`extractors.chem.record_smiles`),
canonicalised by RDKit as seed 000 did (App. C.1: SMILES "canonicalized before being passed into SMILES-based
models"); ChemGPT reads SELFIES (Krenn et al. 2020), ``selfies.encoder`` of that SMILES.

Embedding (seed 000 §5, "the last hidden layer output before the readout layers", averaged): the base model's
``last_hidden_state`` (no language-model head), mean over the input's tokens — every position of the attention
mask, the tokenizer's special tokens (``<s>``, ``</s>``) included. Batches are right-padded, so a padded batch
embeds each input as it would alone. Inputs longer than ``max_length`` tokens (capped at the tokenizer's
``model_max_length``) are truncated.

Weights cannot ship here: ``--opt weights=PATH`` names a local snapshot directory (``config.json``, weights,
tokenizer files: what ``save_pretrained``/``huggingface-cli download`` writes); without it the Hub id below is
loaded (from the local Hugging Face cache, downloaded only when the machine is online). MoLFormer's architecture
is code inside its checkpoint, loaded with ``trust_remote_code=True`` and ``deterministic_eval=True`` (its model
card's settings: deterministic linear-attention features).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from extractors.base import WEIGHTS_PATH, Embedded, Extractor, ModelSpec
from extractors.chem import record_smiles
from extractors.datasets import Record
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

__all__ = ["LAYERS", "SPECS", "HFChemExtractor", "build", "canonical_smiles", "model_inputs"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "last hidden state, mean over tokens",
    HIDDEN_LAYER: "hidden state k (0 = token embeddings … number of blocks), mean over tokens",
}

_PACKAGES = ("transformers", "tokenizers", "torch", "rdkit")


def _spec(model_id: str, hub_id: str, description: str, *, input: str = "smiles", **config: Any) -> ModelSpec:
    packages = (*_PACKAGES, "selfies") if input == "selfies" else _PACKAGES
    return ModelSpec(
        model_id, "hf_chem", {"hub_id": hub_id, "input": input, **config}, WEIGHTS_PATH, packages, description
    )


SPECS = (
    _spec("chemberta-77m-mlm", "DeepChem/ChemBERTa-77M-MLM", "ChemBERTa-2 77M (masked LM) on canonical SMILES"),
    _spec("chemberta-77m-mtr", "DeepChem/ChemBERTa-77M-MTR", "ChemBERTa-2 77M (multitask regression) on SMILES"),
    _spec(
        "molformer-xl",
        "ibm/MoLFormer-XL-both-10pct",
        "MoLFormer-XL (linear attention, remote code) on canonical SMILES",
        trust_remote_code=True,
        config_overrides={"deterministic_eval": True},
    ),
    _spec("chemgpt-1.2b", "ncfrey/ChemGPT-1.2B", "ChemGPT 1.2B (GPT-Neo) on SELFIES", input="selfies"),
    _spec("chemgpt-4.7m", "ncfrey/ChemGPT-4.7M", "ChemGPT 4.7M (GPT-Neo) on SELFIES", input="selfies"),
)


def canonical_smiles(smiles: str) -> str:
    """RDKit's canonical SMILES; ValueError when RDKit cannot parse ``smiles``."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    return Chem.MolToSmiles(mol)


def model_inputs(record: Record, *, input: str = "smiles", canonical: bool = True) -> str:
    """The string a chemical language model reads for ``record``: (canonical) SMILES, or its SELFIES."""
    smiles = record_smiles(record)[0]
    if canonical:
        smiles = canonical_smiles(smiles)
    if input == "smiles":
        return smiles
    if input == "selfies":
        import selfies

        try:
            return selfies.encoder(smiles, strict=True)
        except selfies.EncoderError as err:
            raise ValueError(f"SELFIES cannot encode {smiles!r}: {err}") from None
    raise ValueError(f"`input` must be 'smiles' or 'selfies', got {input!r}.")


class HFChemExtractor(Extractor):
    needs = "smiles"
    pooling = "mean over tokens (attention mask, special tokens included) of the last hidden state"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        device: str = "cpu",
        weights: str | None = None,
        dtype: str = "float32",
        max_length: int = 512,
        canonical: bool = True,
    ) -> None:
        self.hidden = hidden_layer(spec.id, layer, LAYERS)
        super().__init__(spec, layer=layer, device=device, dtype=dtype, max_length=max_length, canonical=canonical)
        self.path = resolve_weights(weights, spec.config["hub_id"])
        remote = bool(spec.config.get("trust_remote_code", False))
        self.tokenizer = load_tokenizer(self.path, trust_remote_code=remote)
        self.model = load_model(
            self.path,
            dtype=dtype,
            device=device,
            trust_remote_code=remote,
            config_overrides=spec.config.get("config_overrides"),
        )
        check_hidden_layer(spec.id, self.hidden, self.model)
        self.device = device
        self.input = spec.config["input"]
        self.canonical = bool(canonical)
        limit = getattr(self.tokenizer, "model_max_length", None) or max_length
        self.max_length = int(min(max_length, limit))

    def check(self, record: Record) -> str | None:
        return None if (record.smiles or record.atoms is not None) else "record has neither SMILES nor 3D structure"

    def texts(self, records: Sequence[Record]) -> list[str]:
        return [model_inputs(r, input=self.input, canonical=self.canonical) for r in records]

    def encode(self, texts: Sequence[str]) -> Any:
        """(n, d) float32 torch tensor: the masked token mean of the last hidden state (length-sorted sub-batches)."""
        return encode_by_length(self._encode_padded, texts)

    def _encode_padded(self, texts: list[str]) -> Any:
        import torch

        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids = enc["input_ids"].to(self.model.device)
        mask = enc["attention_mask"].to(self.model.device)
        with torch.no_grad():
            hidden = hidden_state(self.model, self.hidden, input_ids=ids, attention_mask=mask)
        return masked_mean(hidden, mask)

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        vectors = self.encode(self.texts(records)).cpu().numpy()
        return [Embedded(features=v) for v in vectors]

    def info(self) -> dict[str, Any]:
        return {
            "weights": self.path,
            "input": self.input,
            "canonical_smiles": self.canonical,
            "max_length": self.max_length,
            "hidden_size": int(self.model.config.hidden_size),
        }


def build(spec: ModelSpec, **options: Any) -> HFChemExtractor:
    return HFChemExtractor(spec, **options)
