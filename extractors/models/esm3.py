"""EvolutionaryScale's ESM3 (Hayes et al. 2025, Science 387, 850) and ESM C (ESM Team 2024, "ESM Cambrian"),
through the ``esm`` package (``pip install esm``; not fair-esm, which installs the same import name ``esm``).

Embedding: the model's own ``embeddings`` output — what ``model.logits(..., LogitsConfig(return_embeddings=True))``
returns: for ESM C the last layer after the final LayerNorm, for ESM3 the last transformer block's output before
it — mean over the residue positions (BOS and EOS excluded), seed 000's "ESMC" and "ESM3" rows.

Inputs: ESM C and ``esm3-sequence`` read the record's sequence; ``esm3-structure`` reads only the backbone
(N, CA, C) coordinates — tokenised by ESM3's VQ-VAE structure encoder and given to its geometric attention, the
sequence track left masked — seed 000's "ESM3 Structure". Records need ``backbone_coords`` (N, CA, C per residue)
for it.

Weights: ``--opt weights=PATH`` — the model's Hugging Face snapshot directory (of
``EvolutionaryScale/esmc-300m-2024-12``, ``esmc-600m-2024-12`` or ``esm3-sm-open-v1``; it holds
``data/weights/<file>.pth``) or the ``.pth`` file itself; ESM3 structure input also loads
``esm3_structure_encoder_v0.pth`` beside it (``--opt structure_encoder=PATH`` names another). The architecture
sizes are those of ``esm.pretrained`` (``--opt arch=...`` overrides them). Without ``weights`` the package's own
``from_pretrained`` resolves the snapshot from the Hugging Face cache (downloading when online).

Environment: ``esm`` ≥ 3.2.2 requires Python ≥ 3.12, so Python 3.11 gets ``esm==3.2.1.post1``; beside
``torch==2.13.0`` pip resolves it to transformers 4.48.1, torchvision 0.28.0 and torchtext 0.18.0 (declared, never
imported by the model code), and ``httpx``, which it imports without declaring, must be added.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import SEPARATE_ENV, Embedded, Extractor, ModelSpec
from extractors.datasets import Record, backbone

__all__ = [
    "ENV_REQUIREMENTS",
    "ESMC_SIZES",
    "LAYERS",
    "SPECS",
    "ESM3Extractor",
    "ESMCExtractor",
    "build",
    "local_tokenizers",
    "snapshot_root",
    "weights_file",
]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {"last": "the model's embeddings output, mean over residues"}

#: Requirements of the family's environment (extractors.envs): the last ``esm`` release for Python 3.11, and
#: ``httpx``, which it imports without declaring.
ENV_REQUIREMENTS = ("esm==3.2.1.post1", "httpx")

_PACKAGES = ("esm", "torch")
_ESM3 = {"d_model": 1536, "n_heads": 24, "v_heads": 256, "n_layers": 48}
_ESM3_ENCODER = {"d_model": 1024, "n_heads": 1, "v_heads": 128, "n_layers": 2, "d_out": 128, "n_codes": 4096}
SPECS = (
    ModelSpec(
        "esmc-300m",
        "esm3",
        {"kind": "esmc", "name": "esmc_300m", "file": "esmc_300m_2024_12_v0.pth"},
        SEPARATE_ENV,
        _PACKAGES,
        "ESM C 300M on the sequence (esm package; weights path)",
    ),
    ModelSpec(
        "esmc-600m",
        "esm3",
        {"kind": "esmc", "name": "esmc_600m", "file": "esmc_600m_2024_12_v0.pth"},
        SEPARATE_ENV,
        _PACKAGES,
        "ESM C 600M on the sequence (esm package; weights path)",
    ),
    ModelSpec(
        "esm3-sequence",
        "esm3",
        {"kind": "esm3", "name": "esm3_sm_open_v1", "file": "esm3_sm_open_v1.pth", "input": "sequence"},
        SEPARATE_ENV,
        _PACKAGES,
        "ESM3 open small (1.4B) on the sequence (esm package; weights path)",
    ),
    ModelSpec(
        "esm3-structure",
        "esm3",
        {"kind": "esm3", "name": "esm3_sm_open_v1", "file": "esm3_sm_open_v1.pth", "input": "structure"},
        SEPARATE_ENV,
        _PACKAGES,
        "ESM3 open small on backbone structure tokens only (esm package; weights path)",
    ),
)
#: esm.pretrained's sizes of each model (d_model, n_heads, n_layers).
ESMC_SIZES = {
    "esmc_300m": {"d_model": 960, "n_heads": 15, "n_layers": 30},
    "esmc_600m": {"d_model": 1152, "n_heads": 18, "n_layers": 36},
}


def weights_file(weights: str | Path, file: str) -> Path:
    """``weights`` itself when it is a file, else ``<weights>/data/weights/<file>`` (a snapshot directory)."""
    path = Path(weights)
    found = path if path.is_file() else path / "data" / "weights" / file
    if not found.is_file():
        raise FileNotFoundError(f"no weights at {found}: pass the model's snapshot directory or its .pth file")
    return found


def snapshot_root(weights: str | Path) -> Path:
    """The snapshot directory of ``weights`` (the directory itself, or ``<root>/data/weights/<file>.pth``)."""
    path = Path(weights)
    if path.is_dir():
        return path
    return path.parents[2] if path.parent.name == "weights" and path.parent.parent.name == "data" else path.parent


def local_tokenizers(root: str | Path) -> Any:
    """ESM3's tokenizer collection (``esm.tokenization.get_esm3_model_tokenizers``) with its data files looked up
    under the local snapshot ``root`` instead of ``esm.utils.constants.esm3.data_root`` (which would call the Hub):
    the residue-annotation CSV and the function LSH table, read only for those tracks (unused here)."""
    from esm.tokenization import (
        InterProQuantizedTokenizer,
        ResidueAnnotationsTokenizer,
        SASADiscretizingTokenizer,
        SecondaryStructureTokenizer,
        StructureTokenizer,
        TokenizerCollection,
    )
    from esm.tokenization.sequence_tokenizer import EsmSequenceTokenizer
    from esm.utils.constants import esm3 as C

    root = Path(root)
    return TokenizerCollection(
        sequence=EsmSequenceTokenizer(),
        structure=StructureTokenizer(),
        secondary_structure=SecondaryStructureTokenizer(kind="ss8"),
        sasa=SASADiscretizingTokenizer(),
        function=InterProQuantizedTokenizer(lsh_path=root / C.LSH_TABLE_PATHS["8bit"]),
        residue_annotations=ResidueAnnotationsTokenizer(csv_path=str(root / C.RESID_CSV)),
    )


def _load_state(module: Any, path: Path, device: str) -> Any:
    import torch

    module.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return module.eval()


def _residue_mean(emb: Any) -> np.ndarray:
    """Mean of one (1, L+2, d) embedding over residues (BOS and EOS dropped), float32."""
    return emb[0, 1:-1].float().mean(dim=0).cpu().numpy()


class _ESMBase(Extractor):
    needs = "sequence"
    pooling = "mean over residues (BOS/EOS excluded) of the model's `embeddings` output"

    def __init__(self, spec: ModelSpec, *, layer: str, device: str, dtype: str, options: dict[str, Any]) -> None:
        if layer != "last":
            raise ValueError(f"{spec.id} offers layer='last' (the model's embeddings output), got {layer!r}.")
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"`dtype` must be 'float32' or 'bfloat16', got {dtype!r}.")
        super().__init__(spec, layer=layer, device=device, dtype=dtype, **options)
        self.device = device
        self.dtype = dtype

    def _finish(self, model: Any) -> Any:
        import torch

        model = model.to(self.device).eval()
        return model.to(torch.bfloat16) if self.dtype == "bfloat16" else model


class ESMCExtractor(_ESMBase):
    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        device: str = "cpu",
        dtype: str = "float32",
        weights: str | None = None,
        arch: dict[str, int] | None = None,
    ) -> None:
        super().__init__(spec, layer=layer, device=device, dtype=dtype, options={"weights": weights, "arch": arch})
        import torch
        from esm.models.esmc import ESMC
        from esm.tokenization import get_esmc_model_tokenizers

        if weights is None:
            self.model = self._finish(ESMC.from_pretrained(spec.config["name"], device=torch.device(device)))
        else:
            sizes = arch or ESMC_SIZES[spec.config["name"]]
            with torch.device(device):
                model = ESMC(**sizes, tokenizer=get_esmc_model_tokenizers(), use_flash_attn=False)
            self.model = self._finish(_load_state(model, weights_file(weights, spec.config["file"]), device))
        self.weights = str(weights) if weights else spec.config["name"]

    def encode(self, sequences: Sequence[str]) -> Any:
        """(n, d) float32 torch tensor: residue means of the embeddings of a padded batch."""
        import torch
        from esm.utils import encoding
        from esm.utils.misc import stack_variable_length_tensors

        tok = self.model.tokenizer
        tokens = stack_variable_length_tensors(
            [encoding.tokenize_sequence(s, tok, add_special_tokens=True) for s in sequences],
            constant_value=tok.pad_token_id,
        ).to(self.device)
        with torch.no_grad():
            emb = self.model(sequence_tokens=tokens).embeddings.float()
        residues = (tokens != tok.pad_token_id).float()
        lengths = residues.sum(dim=1).long()
        residues[:, 0] = 0.0  # BOS
        residues[torch.arange(len(sequences)), lengths - 1] = 0.0  # EOS
        m = residues.unsqueeze(-1)
        return (emb * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        return [Embedded(features=v) for v in self.encode([r.sequence for r in records]).cpu().numpy()]

    def info(self) -> dict[str, Any]:
        return {"weights": self.weights, "embedding": "last layer after the final LayerNorm", "dtype": self.dtype}


class ESM3Extractor(_ESMBase):
    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        device: str = "cpu",
        dtype: str = "float32",
        weights: str | None = None,
        structure_encoder: str | None = None,
        arch: dict[str, int] | None = None,
        encoder_arch: dict[str, int] | None = None,
    ) -> None:
        options = {
            "weights": weights,
            "structure_encoder": structure_encoder,
            "arch": arch,
            "encoder_arch": encoder_arch,
        }
        super().__init__(spec, layer=layer, device=device, dtype=dtype, options=options)
        import torch
        from esm.models.esm3 import ESM3
        from esm.models.vqvae import StructureTokenEncoder

        self.input = spec.config["input"]
        if weights is None:
            self.model = self._finish(ESM3.from_pretrained(spec.config["name"], device=torch.device(device)))
        else:
            encoder_path = Path(structure_encoder) if structure_encoder else None
            if self.input == "structure" and encoder_path is None:
                encoder_path = weights_file(weights, "esm3_structure_encoder_v0.pth")

            def load_encoder(dev: Any) -> Any:
                if encoder_path is None:
                    raise RuntimeError("ESM3 structure encoder weights not given (--opt structure_encoder=PATH)")
                with torch.device(dev):
                    enc = StructureTokenEncoder(**(encoder_arch or _ESM3_ENCODER))
                return _load_state(enc, encoder_path, str(dev))

            def unavailable(_dev: Any) -> Any:
                raise RuntimeError("embedding extraction does not load ESM3's decoders")

            with torch.device(device):
                model = ESM3(
                    **(arch or _ESM3),
                    structure_encoder_fn=load_encoder,
                    structure_decoder_fn=unavailable,
                    function_decoder_fn=unavailable,
                    tokenizers=local_tokenizers(snapshot_root(weights)),
                )
            self.model = self._finish(_load_state(model, weights_file(weights, spec.config["file"]), device))
        self.weights = str(weights) if weights else spec.config["name"]
        if self.input == "structure":
            self.needs = "backbone"  # type: ignore[misc]

    def check(self, record: Record) -> str | None:
        if self.input == "structure":
            coords = backbone(record)
            if coords is None:
                return f"model {self.spec.id} needs N/CA/C backbone coordinates (a pdb: dataset)"
            return None
        return super().check(record)

    def protein(self, record: Record) -> Any:
        """The ``ESMProtein`` the model reads: the sequence, or only atom37 coordinates with N, CA, C filled."""
        import torch
        from esm.sdk.api import ESMProtein

        if self.input == "sequence":
            return ESMProtein(sequence=record.sequence)
        bb = backbone(record)
        atom37 = np.full((bb.shape[0], 37, 3), np.nan, dtype=np.float32)
        atom37[:, :3] = bb  # atom37 order starts N, CA, C
        return ESMProtein(coordinates=torch.from_numpy(atom37))

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        from esm.sdk.api import LogitsConfig

        out = []
        for r in records:  # one protein at a time: the SDK's encode/logits path
            tensor = self.model.encode(self.protein(r))
            emb = self.model.logits(tensor, LogitsConfig(return_embeddings=True)).embeddings
            out.append(Embedded(features=_residue_mean(emb)))
        return out

    def info(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "input": self.input,
            "embedding": "last transformer block before the final LayerNorm (the SDK's return_embeddings)",
            "dtype": self.dtype,
        }


def build(spec: ModelSpec, **options: Any) -> Extractor:
    cls = ESMCExtractor if spec.config["kind"] == "esmc" else ESM3Extractor
    return cls(spec, **options)
