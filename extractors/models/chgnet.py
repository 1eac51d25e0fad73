"""CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)); weights 0.3.0, 0.2.0 and r2scan ship in the wheel.

Last-layer per-atom features are the *input of* ``model.mlp`` (a forward pre-hook), 64-d: the atom features after
the last atom-conv layer (and readout norm) that the readout MLP turns into site energies. ``return_atom_feas=True``
is a different, earlier layer and ``crystal_fea`` is a sum, so neither is used. The energy is the model's own
prediction (eV/atom × n_atoms, as ``CHGNetCalculator`` reports it). Molecules get a cell: ``center(vacuum=10)``
and ``pbc=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from extractors.base import OFFLINE_READY, Embedded, Extractor, ModelSpec, per_structure, spec_table
from extractors.datasets import Record

__all__ = ["SPECS", "CHGNetExtractor", "boxed", "build"]

_PACKAGES = ("chgnet", "torch", "pymatgen", "ase")
SPECS = spec_table(
    "chgnet",
    ("model_name",),
    (
        ("chgnet-0.3.0", "0.3.0", "CHGNet 0.3.0 (MPtrj)"),
        ("chgnet-0.2.0", "0.2.0", "CHGNet 0.2.0 (MPtrj, deprecated)"),
        ("chgnet-r2scan", "r2scan", "CHGNet r2SCAN transfer-learned (MP-r2SCAN)"),
    ),
    status=OFFLINE_READY,
    packages=_PACKAGES,
)


def boxed(atoms: Any, vacuum: float = 10.0) -> Any:
    """A periodic copy of ``atoms``: molecules (any non-periodic axis or a zero cell) are centred in a box with
    ``vacuum`` Å on each side and made periodic; periodic structures are returned as they are."""
    if atoms.pbc.all() and atoms.cell.rank == 3:
        return atoms
    new = atoms.copy()
    new.center(vacuum=vacuum)
    new.pbc = True
    return new


class CHGNetExtractor(Extractor):
    atomistic = True
    has_energy = True
    pooling = "mean"

    def __init__(self, spec: ModelSpec, *, layer: str = "last", device: str = "cpu", vacuum: float = 10.0) -> None:
        if layer != "last":
            raise ValueError(f"CHGNet offers layer='last' (input of model.mlp), got {layer!r}.")
        super().__init__(spec, layer=layer, device=device, vacuum=vacuum)
        from chgnet.model import CHGNet

        self.model = CHGNet.load(model_name=spec.config["model_name"], use_device=device, verbose=False)
        self.model.eval()
        self.model.graph_converter.set_isolated_atom_response("ignore")
        self.vacuum = float(vacuum)
        self.max_z = int(self.model.atom_embedding.embedding.num_embeddings)

    def check(self, record: Record) -> str | None:
        reason = super().check(record)
        if reason is None and int(record.atoms.numbers.max()) > self.max_z:
            bad = sorted({int(z) for z in record.atoms.numbers if z > self.max_z})
            reason = f"unsupported atomic numbers {bad} (CHGNet knows Z <= {self.max_z})"
        return reason

    def graphs(self, records: Sequence[Record]) -> list[Any]:
        from pymatgen.io.ase import AseAtomsAdaptor

        out = []
        for r in records:
            structure = AseAtomsAdaptor.get_structure(boxed(r.atoms, self.vacuum))
            out.append(self.model.graph_converter(structure, graph_id=r.id))
        return out

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        import torch

        graphs = self.graphs(records)
        captured: list[torch.Tensor] = []
        handle = self.model.mlp.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
        try:
            with torch.no_grad():
                pred = self.model(graphs, task="e")
        finally:
            handle.remove()
        counts = pred["atoms_per_graph"]
        energies = (pred["e"] * counts if self.model.is_intensive else pred["e"]).cpu().numpy()
        per_atom = captured[0].float().cpu().numpy()
        return per_structure(per_atom, counts.cpu().numpy(), energies)

    def info(self) -> dict[str, Any]:
        return {
            "layer_detail": "forward pre-hook on model.mlp (atom features after the last atom conv), 64-d",
            "molecules": f"boxed: center(vacuum={self.vacuum}), pbc=True",
            "energy_unit": "eV (total)",
        }


def build(spec: ModelSpec, **options: Any) -> CHGNetExtractor:
    return CHGNetExtractor(spec, **options)
