"""MatterSim (Yang et al., arXiv:2405.04967): an M3GNet trained on MatterSim's own data; weights are local files
(``mattersim-v1.0.0-1M.pth``, ``mattersim-v1.0.0-5M.pth``).

Loading is the library's own: ``Potential.from_checkpoint(load_path=FILE, device=...)`` (what
``MatterSimCalculator.from_checkpoint`` calls) builds ``M3Gnet(**checkpoint["model_args"])`` and loads its state
dict. Without ``--opt weights=PATH`` the file is looked up where MatterSim keeps its downloads
(``~/.local/mattersim/pretrained_models``); nothing is downloaded.

Per-atom features are the *input of* the readout ``model.final`` (a forward pre-hook): the atom features after the
last M3GNet block (``units`` wide: 128 for 1M, 256 for 5M). Structures are batched with the calculator's own
``build_dataloader(..., only_inference=True)`` + ``batch_to_dict`` and one ``Potential.forward`` without forces or
stresses gives the features and the energy (``total_energy``), equal to ``MatterSimCalculator``'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import WEIGHTS_PATH, Embedded, Extractor, ModelSpec, per_structure, spec_table
from extractors.datasets import Record

__all__ = ["ENV_REMOVE", "ENV_REQUIREMENTS", "LAYERS", "SPECS", "MatterSimExtractor", "build"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {"last": "per-atom input of model.final (the readout)"}

ENV_REQUIREMENTS = ("mattersim==1.2.3",)  # 1.2.4+ need Python >= 3.12
#: Unused dependencies whose PyPI (CUDA) builds cannot load beside the CPU torch: torchmetrics imports torchvision
#: when present and fails (``operator torchvision::nms does not exist``), so they are removed from the environment.
ENV_REMOVE = ("torchvision", "torchaudio")

_PACKAGES = ("mattersim", "torch", "ase")
_ROWS = (
    ("mattersim-v1.0.0-1m", "mattersim-v1.0.0-1M.pth", "MatterSim v1.0.0, 1M parameters"),
    ("mattersim-v1.0.0-5m", "mattersim-v1.0.0-5M.pth", "MatterSim v1.0.0, 5M parameters"),
)
SPECS = spec_table("mattersim", ("checkpoint",), _ROWS, status=WEIGHTS_PATH, packages=_PACKAGES)
_CACHE = Path("~/.local/mattersim/pretrained_models")  # Potential.from_checkpoint's download folder


def resolve_weights(spec: ModelSpec, weights: str | None) -> str:
    path = Path(weights).expanduser() if weights is not None else _CACHE.expanduser() / spec.config["checkpoint"]
    if not path.is_file():
        hint = "" if weights is not None else f" Download {spec.config['checkpoint']} and pass --opt weights=PATH."
        raise FileNotFoundError(f"{spec.id}: model file {path} does not exist.{hint}")
    return str(path)


class MatterSimExtractor(Extractor):
    atomistic = True
    has_energy = True
    pooling = "mean"

    def __init__(self, spec: ModelSpec, *, layer: str = "last", weights: str | None = None, device: str = "cpu"):
        if layer != "last":
            raise ValueError(f"MatterSim offers layer='last' (input of model.final), got {layer!r}.")
        super().__init__(spec, layer=layer, weights=weights, device=device)
        from mattersim.forcefield.potential import Potential

        self.weights = resolve_weights(spec, weights)
        self.potential = Potential.from_checkpoint(load_path=self.weights, device=device)
        self.potential.model.eval()
        self.device = device
        args = self.potential.model.model_args
        self.cutoff, self.threebody_cutoff = float(args["cutoff"]), float(args["threebody_cutoff"])
        self.max_z = int(args["max_z"])

    def check(self, record: Record) -> str | None:
        reason = super().check(record)
        if reason is None and int(record.atoms.numbers.max()) > self.max_z:
            bad = sorted({int(z) for z in record.atoms.numbers if z > self.max_z})
            reason = f"unsupported atomic numbers {bad} (MatterSim knows Z <= {self.max_z})"
        return reason

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        import torch
        from mattersim.datasets.utils.build import build_dataloader
        from mattersim.forcefield.potential import batch_to_dict

        loader = build_dataloader(
            [r.atoms for r in records],
            model_type="m3gnet",
            cutoff=self.cutoff,
            threebody_cutoff=self.threebody_cutoff,
            batch_size=len(records),
            only_inference=True,
        )
        per_atom, energies = [], []
        captured: list[torch.Tensor] = []
        handle = self.potential.model.final.register_forward_pre_hook(
            lambda _m, args: captured.append(args[0].detach())
        )
        try:
            with torch.no_grad():
                for graph_batch in loader:
                    out = self.potential.forward(
                        batch_to_dict(graph_batch, device=self.device), include_forces=False, include_stresses=False
                    )
                    energies.append(out["total_energy"].detach().cpu().numpy().reshape(-1))
        finally:
            handle.remove()
        per_atom = torch.cat(captured).float().cpu().numpy()
        energy = np.concatenate(energies)
        return per_structure(per_atom, [len(r.atoms) for r in records], energy)

    def info(self) -> dict[str, Any]:
        return {
            "layer_detail": "forward pre-hook on model.final (atom features after the last M3GNet block)",
            "weights": os.fspath(self.weights),
            "cutoff": self.cutoff,
            "energy_unit": "eV (total)",
        }


def build(spec: ModelSpec, **options: Any) -> MatterSimExtractor:
    return MatterSimExtractor(spec, **options)
