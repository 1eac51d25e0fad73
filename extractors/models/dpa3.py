"""DPA-3 (Zhang et al., arXiv:2506.01686; deepmd-kit, PyTorch backend); weights are local ``.pt`` checkpoints such as
the multi-task ``DPA-3.1-3M.pt`` (OpenLAM), read through a head: ``Omat24``, ``MP_traj_v024_alldata_mixu``,
``OC20M``, ``ODAC23`` and ``SPICE2`` are the branches of seed 003 Fig. S4.

Loading is the library's own: ``DeepPot(FILE, head=HEAD)`` (what ``deepmd.calculator.DP(model=FILE, head=HEAD)``
builds) reads the checkpoint's ``model_params``, keeps the chosen branch of a multi-task model, builds it with
``get_model`` and loads its weights. Nothing is downloaded; pass ``--opt weights=PATH`` (``head=NAME`` picks another
branch, case-insensitive; ``dp --pt show FILE model-branch`` lists them).

Features come from the library's own feature API: ``layer="last"`` → ``DeepPot.eval_fitting_last_layer`` (the
energy fitting net's last hidden layer per atom, the input of its output layer), ``layer="backbone"`` →
``DeepPot.eval_descriptor`` (the DPA-3 descriptor per atom). The energy is ``DeepPot.eval``'s, i.e. the calculator's.
deepmd evaluates one structure shape at a time, so structures are embedded one by one; molecules (no periodic axis)
are evaluated without a cell.

deepmd-kit 3.2.0's binary wheel ships C++ ops compiled for torch 2.11 (``deepmd-kit[torch]`` pins
``torch==2.11.0``); beside torch 2.13 they cannot load and ``import deepmd.pt`` raises. The ops are only needed for
LAMMPS, multi-GPU message passing and compressed models, not for Python inference, so :func:`import_deepmd_pt`
retries the import with the op library hidden (deepmd's own ``ENABLE_CUSTOMIZED_OP = False`` path) and records it.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import WEIGHTS_PATH, Embedded, Extractor, ModelSpec, spec_table
from extractors.datasets import Record

__all__ = ["ENV_REQUIREMENTS", "LAYERS", "SPECS", "DPA3Extractor", "build", "import_deepmd_pt"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "the energy fitting net's last hidden layer per atom (eval_fitting_last_layer)",
    "backbone": "the DPA-3 descriptor per atom (eval_descriptor)",
}

#: deepmd-kit[torch]'s requirements with torch 2.13 instead of its torch==2.11.0 pin (mpich: the wheel links it).
ENV_REQUIREMENTS = ("deepmd-kit==3.2.0", "mpich", "e3nn>=0.5.9", "vesin[torch]")

_PACKAGES = ("deepmd-kit", "torch", "ase")
_ROWS = (
    ("dpa-3.1-3m-omat24", "DPA-3.1-3M.pt", "Omat24", "DPA-3.1-3M (OpenLAM multi-task), OMat24 head"),
    ("dpa-3.1-3m-mptrj", "DPA-3.1-3M.pt", "MP_traj_v024_alldata_mixu", "DPA-3.1-3M, MPtrj head"),
    ("dpa-3.1-3m-oc20", "DPA-3.1-3M.pt", "OC20M", "DPA-3.1-3M, OC20 head (seed 003 Fig. S4)"),
    ("dpa-3.1-3m-odac", "DPA-3.1-3M.pt", "ODAC23", "DPA-3.1-3M, ODAC23 head (seed 003 Fig. S4)"),
    ("dpa-3.1-3m-spice", "DPA-3.1-3M.pt", "SPICE2", "DPA-3.1-3M, SPICE2 head (seed 003 Fig. S4)"),
    ("dpa3", None, None, "any deepmd-kit PyTorch checkpoint (--opt weights=PATH [head=NAME])"),
)
SPECS = spec_table("dpa3", ("checkpoint", "head"), _ROWS, status=WEIGHTS_PATH, packages=_PACKAGES)

_OPS_NOTE: list[str] = []


def import_deepmd_pt() -> Any:
    """``import deepmd.pt``; when its compiled op library was built for another torch, import it without the ops."""
    try:
        import deepmd.pt as pt
    except RuntimeError as err:
        if "version of PyTorch used to compile" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "deepmd.pt" or m.startswith("deepmd.pt.")]:
            del sys.modules[name]
        import deepmd.env

        deepmd.env.SHARED_LIB_DIR = Path(tempfile.mkdtemp(prefix="deepmd-no-ops-"))  # hide libdeepmd_op_pt
        import deepmd.pt as pt

        _OPS_NOTE.append(str(err).splitlines()[0])
    return pt


class DPA3Extractor(Extractor):
    atomistic = True
    has_energy = True
    pooling = "mean"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        weights: str | None = None,
        head: str | None = None,
        device: str = "cpu",
    ) -> None:
        if layer not in ("last", "backbone"):
            raise ValueError(
                f"DPA-3 offers layer='last' (fitting last layer) or 'backbone' (descriptor), got {layer!r}."
            )
        super().__init__(spec, layer=layer, weights=weights, head=head, device=device)
        if weights is None:
            hint = spec.config.get("checkpoint") or "model.pt"
            raise ValueError(f"model {spec.id!r} needs a local checkpoint: pass --opt weights=/path/to/{hint}.")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{spec.id}: weights file {path} does not exist.")
        import_deepmd_pt()
        from deepmd.infer.deep_pot import DeepPot

        self.weights = str(path)
        self.head = head if head is not None else spec.config.get("head")
        self.dp = DeepPot(self.weights, head=self.head)
        self.type_map = list(self.dp.get_type_map())

    def check(self, record: Record) -> str | None:
        reason = super().check(record)
        if reason is None:
            bad = sorted(set(record.atoms.get_chemical_symbols()) - set(self.type_map))
            if bad:
                reason = f"unsupported elements {bad} (not in the model's type map)"
        return reason

    def _one(self, atoms: Any) -> Embedded:
        coords = atoms.get_positions().reshape(1, -1)
        cells = atoms.get_cell().array.reshape(1, 9) if atoms.pbc.any() else None
        types = np.array([self.type_map.index(s) for s in atoms.get_chemical_symbols()], dtype=np.int32)
        energy = self.dp.eval(coords, cells, types)[0]
        fn = self.dp.eval_fitting_last_layer if self.layer == "last" else self.dp.eval_descriptor
        feats = np.asarray(fn(coords, cells, types), dtype=np.float32).reshape(len(atoms), -1)
        return Embedded(features=feats.mean(axis=0), atom_features=feats, energy=float(np.ravel(energy)[0]))

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        return [self._one(r.atoms) for r in records]

    def info(self) -> dict[str, Any]:
        return {
            "layer_detail": "DeepPot.eval_fitting_last_layer (energy fitting net, last hidden layer)"
            if self.layer == "last"
            else "DeepPot.eval_descriptor (DPA-3 descriptor)",
            "weights": self.weights,
            "head": self.head,
            "custom_ops": "disabled: " + _OPS_NOTE[0] if _OPS_NOTE else "loaded or absent",
            "energy_unit": "eV (total)",
        }


def build(spec: ModelSpec, **options: Any) -> DPA3Extractor:
    return DPA3Extractor(spec, **options)
