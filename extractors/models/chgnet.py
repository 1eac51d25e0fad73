"""CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)); weights 0.3.0, 0.2.0 and r2scan ship in the wheel.

Layers (per atom, 64-d, read with forward pre-hooks):

- ``last`` (default): the *input of* ``model.mlp``: the atom features after the last atom-conv layer (and readout
  norm) that the readout MLP turns into site energies — seed 003's "backbone" features. ``return_atom_feas=True``
  is a different, earlier layer and ``crystal_fea`` is a sum, so neither is used.
- ``head``: the input of the readout MLP's final linear layer — seed 003's "last-layer" features, the ones its
  fine-tuning study (Figs. 5, 6, S8) compares; a head-only fine-tuning moves these and not ``last``. Needs a model
  that applies its MLP per atom (``mlp_first``, as 0.3.0 does).

``weights=PATH`` loads a CHGNet file (``CHGNet.from_file``, e.g. a checkpoint of :mod:`extractors.finetune`) instead
of the packaged weights; the model id then names the checkpoint (``chgnet-0.3.0~ff-e0010``, see
:func:`extractors.registry.get_spec`). The energy is the model's own
prediction (eV/atom × n_atoms, as ``CHGNetCalculator`` reports it). Molecules get a cell: ``center(vacuum=10)``
and ``pbc=True``.

CHGNet refuses a structure with an isolated atom — one without a neighbour within its 6 Å atom-graph cutoff, such
as a single atom in its box or a far-away fragment (its graph converter raises; "CHGNet calculation will likely go
wrong"). Such a structure is not embedded: :meth:`CHGNetExtractor.embed` returns the reason for it (naming the
atoms), which the runner records in the file's ``meta['failures']``, and the rest of the batch goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extractors.base import OFFLINE_READY, Embedded, Extractor, ModelSpec, per_structure, spec_table
from extractors.datasets import Record

__all__ = ["LAYERS", "SPECS", "CHGNetExtractor", "boxed", "build", "calculator"]

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
#: layer name → what it reads (module docstring).
LAYERS = {"last": "input of model.mlp (backbone)", "head": "input of model.mlp's final linear layer (last layer)"}


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

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        device: str = "cpu",
        vacuum: float = 10.0,
        weights: str | None = None,
    ) -> None:
        if layer not in LAYERS:
            raise ValueError(f"CHGNet's layers are {LAYERS}, got layer={layer!r}.")
        super().__init__(spec, layer=layer, device=device, vacuum=vacuum, weights=weights)
        from chgnet.model import CHGNet

        if weights is None:
            self.model = CHGNet.load(model_name=spec.config["model_name"], use_device=device, verbose=False)
        else:
            if not Path(weights).is_file():
                raise FileNotFoundError(f"CHGNet weights file {weights} does not exist")
            self.model = CHGNet.from_file(weights).to(device)
        if layer == "head" and not self.model.mlp_first:
            raise ValueError(f"{spec.id}: layer='head' needs a per-atom readout (mlp_first); this model pools first.")
        self.hooked = self.model.mlp if layer == "last" else self.model.mlp.layers[-1]
        self.model.eval()
        self.model.graph_converter.set_isolated_atom_response("error")
        self.vacuum = float(vacuum)
        self.max_z = int(self.model.atom_embedding.embedding.num_embeddings)

    def check(self, record: Record) -> str | None:
        reason = super().check(record)
        if reason is None and int(record.atoms.numbers.max()) > self.max_z:
            bad = sorted({int(z) for z in record.atoms.numbers if z > self.max_z})
            reason = f"unsupported atomic numbers {bad} (CHGNet knows Z <= {self.max_z})"
        return reason

    def graph(self, record: Record) -> Any:
        """The CHGNet crystal graph of ``record``, or why CHGNet refuses it (isolated atoms)."""
        from pymatgen.io.ase import AseAtomsAdaptor

        structure = AseAtomsAdaptor.get_structure(boxed(record.atoms, self.vacuum))
        converter = self.model.graph_converter
        try:
            return converter(structure, graph_id=record.id)
        except ValueError as err:
            if "isolated atom" not in str(err):
                raise
            cutoff = float(converter.atom_graph_cutoff)
            centres = set(structure.get_neighbor_list(r=cutoff, numerical_tol=1e-8)[0].tolist())
            lonely = [f"{structure[i].specie}#{i}" for i in range(len(structure)) if i not in centres]
            return (
                f"isolated atom(s) {', '.join(lonely) or '?'}: no neighbour within CHGNet's {cutoff:g} Å cutoff, and "
                "CHGNet refuses such structures"
            )

    def embed(self, records: Sequence[Record]) -> list[Embedded | str]:
        import torch

        graphs = [self.graph(r) for r in records]
        good = [g for g in graphs if not isinstance(g, str)]
        if not good:
            return graphs
        captured: list[torch.Tensor] = []
        handle = self.hooked.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
        try:
            with torch.no_grad():
                pred = self.model(good, task="e")
        finally:
            handle.remove()
        counts = pred["atoms_per_graph"]
        energies = (pred["e"] * counts if self.model.is_intensive else pred["e"]).cpu().numpy()
        per_atom = captured[0].float().cpu().numpy()
        done = iter(per_structure(per_atom, counts.cpu().numpy(), energies))
        return [g if isinstance(g, str) else next(done) for g in graphs]

    def info(self) -> dict[str, Any]:
        detail = {
            "last": "forward pre-hook on model.mlp (atom features after the last atom conv), 64-d",
            "head": "forward pre-hook on model.mlp.layers[-1] (last hidden layer of the readout MLP), 64-d",
        }
        return {
            "layer_detail": detail[self.layer],
            "weights": self.options.get("weights") or f"packaged {self.spec.config['model_name']}",
            "molecules": f"boxed: center(vacuum={self.vacuum}), pbc=True",
            "energy_unit": "eV (total)",
        }


def build(spec: ModelSpec, **options: Any) -> CHGNetExtractor:
    return CHGNetExtractor(spec, **options)


def calculator(spec: ModelSpec, device: str = "cpu") -> Any:
    """CHGNet's own ASE calculator for ``spec`` (energies and forces)."""
    from chgnet.model import CHGNet, CHGNetCalculator

    model = CHGNet.load(model_name=spec.config["model_name"], use_device=device, verbose=False)
    return CHGNetCalculator(model=model, use_device=device)
