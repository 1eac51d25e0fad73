"""SevenNet (Park et al., J. Chem. Theory Comput. 20, 4857 (2024)); checkpoints ship in the ``sevenn`` wheel.

Per-atom features are the output ``x`` of the module ``4_equivariant_gate`` (the last interaction block; 128
scalars), read with a forward hook; ``layer="<i>_equivariant_gate"`` reads an earlier block, keeping its invariant
(0e) channels only. The model is built with ``model_from_checkpoint`` and its ``force_output``
module deleted (no autograd pass: 4–5× faster than ``SevenNetCalculator``); the energy is the model's own
``inferred_total_energy``, identical to the calculator's. Batches go through ``torch_geometric``'s
``Batch.from_data_list`` with the model in batch mode. 7net-mf-0 is multi-fidelity: ``modal`` is ``"PBE"`` or
``"R2SCAN"`` and the features differ by fidelity. Elements outside the checkpoint's type map (e.g. Po, Rn) are
reported per structure.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from extractors.base import OFFLINE_READY, Embedded, Extractor, ModelSpec, per_structure, spec_table
from extractors.datasets import Record

__all__ = ["LAYERS", "SPECS", "SevenNetExtractor", "build", "calculator", "load_model"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "invariant (0e) output x of the last interaction block's gate (4_equivariant_gate in 7net-0; 128 scalars)",
    "<i>_equivariant_gate": "block i's gate output, its invariant channels (i from 0 to the last block)",
}

_PACKAGES = ("sevenn", "torch", "e3nn", "torch-geometric", "ase")
_ROWS = (
    ("7net-0", "7net-0_11Jul2024", None, "SevenNet-0 (11Jul2024, MPtrj)"),
    ("7net-0-22may2024", "7net-0_22May2024", None, "SevenNet-0 (22May2024, MPtrj)"),
    ("7net-mf-0-pbe", "7net-mf-0", "PBE", "SevenNet-MF-0, PBE head"),
    ("7net-mf-0-r2scan", "7net-mf-0", "R2SCAN", "SevenNet-MF-0, R2SCAN head"),
    ("7net-l3i5", "7net-l3i5", None, "SevenNet-l3i5 (lmax 3, 5 layers, MPtrj)"),
)
SPECS = spec_table("sevennet", ("checkpoint", "modal"), _ROWS, status=OFFLINE_READY, packages=_PACKAGES)


@functools.lru_cache(maxsize=4)
def load_model(checkpoint: str, device: str = "cpu") -> tuple[Any, dict]:
    """``model_from_checkpoint`` with ``force_output`` deleted, in eval and batch mode; cached per checkpoint, so
    both heads of 7net-mf-0 share one model in a process."""
    from sevenn.util import model_from_checkpoint, pretrained_name_to_path

    path = checkpoint if os.path.isfile(checkpoint) else pretrained_name_to_path(checkpoint)
    model, config = model_from_checkpoint(path)
    model.delete_module_by_key("force_output")
    model.set_is_batch_data(True)
    model.eval()
    return model.to(device), config


class SevenNetExtractor(Extractor):
    atomistic = True
    has_energy = True
    pooling = "mean"

    def __init__(self, spec: ModelSpec, *, layer: str = "last", device: str = "cpu") -> None:
        super().__init__(spec, layer=layer, device=device)
        import sevenn._keys as keys

        self.keys = keys
        self.model, config = load_model(spec.config["checkpoint"], device)
        self.device = device
        self.cutoff = float(config[keys.CUTOFF])
        self.type_map = {int(z) for z in config[keys.TYPE_MAP]}
        self.modal = spec.config.get("modal")
        if self.model.modal_map and self.modal not in self.model.modal_map:
            raise ValueError(f"{spec.id}: modal must be one of {list(self.model.modal_map)}, got {self.modal!r}.")
        gates = [k for k in self.model._modules if k.endswith("_equivariant_gate")]
        self.module_key = gates[-1] if layer == "last" else layer
        if self.module_key not in gates:
            raise ValueError(f"{spec.id}: layer must be 'last' or one of {gates}, got {layer!r}.")
        self.scalars = _scalar_columns(self.model.get_irreps_in(self.module_key, "irreps_out"))

    def check(self, record: Record) -> str | None:
        reason = super().check(record)
        if reason is None:
            bad = sorted({int(z) for z in record.atoms.numbers} - self.type_map)
            if bad:
                reason = f"unsupported atomic numbers {bad} (not in the {self.spec.id} type map)"
        return reason

    def graph(self, atoms: Any) -> Any:
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self.cutoff))
        if self.modal is not None:
            data[self.keys.DATA_MODALITY] = self.modal
        return data

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        import torch
        from torch_geometric.data import Batch

        keys = self.keys
        batch = Batch.from_data_list([self.graph(r.atoms) for r in records]).to(self.device)
        captured: list[torch.Tensor] = []
        module = self.model._modules[self.module_key]
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out[keys.NODE_FEATURE].detach()))
        try:
            with torch.no_grad():
                out = self.model(batch)
        finally:
            handle.remove()
        per_atom = captured[0][:, self.scalars].float().cpu().numpy()
        energies = out[keys.PRED_TOTAL_ENERGY].detach().cpu().numpy().reshape(-1)
        return per_structure(per_atom, [len(r.atoms) for r in records], energies)

    def info(self) -> dict[str, Any]:
        return {
            "layer_detail": f"output x of module {self.module_key} (forward hook), force_output deleted",
            "scalar_features": len(self.scalars),
            "modal": self.modal,
            "cutoff": self.cutoff,
            "energy_unit": "eV (total)",
        }


def _scalar_columns(irreps: str) -> list[int]:
    """Columns of the invariant (0e) channels in a feature of irreps ``irreps`` (e.g. ``128x0e+64x1e+32x2e``)."""
    from e3nn.o3 import Irreps

    parsed = Irreps(irreps)
    cols: list[int] = []
    for (_, ir), sl in zip(parsed, parsed.slices(), strict=True):
        if ir.l == 0 and ir.p == 1:
            cols.extend(range(sl.start, sl.stop))
    return cols


def build(spec: ModelSpec, **options: Any) -> SevenNetExtractor:
    return SevenNetExtractor(spec, **options)


def calculator(spec: ModelSpec, device: str = "cpu") -> Any:
    """SevenNet's own ASE calculator for ``spec`` (energies and forces; used to label fine-tuning data)."""
    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator(model=spec.config["checkpoint"], modal=spec.config.get("modal"), device=device)
