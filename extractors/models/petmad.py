"""PET-MAD (Mazitov et al., arXiv:2503.14118) and the other UPET models (PET-OMat, PET-OAM, PET-SPICE, …; the ``upet``
package); weights are local metatrain checkpoints (``pet-mad-s-v1.6.0.ckpt`` …) or exported metatomic models.

Loading is the library's own: ``UPETCalculator(checkpoint_path=FILE, device=..., dtype=..., variants=...)`` —
metatrain's ``load_model`` rebuilds the PET architecture from the checkpoint, ``export()`` wraps it in a metatomic
``AtomisticModel`` and TorchScript compiles it. Without ``--opt weights=PATH`` the checkpoint is looked up in the
Hugging Face cache that ``UPETCalculator(model=NAME)`` fills (``lab-cosmo/upet``, ``local_files_only``: nothing is
downloaded). The ``pet-mad`` package itself pins metatensor-torch < 0.9 (torch < 2.12) and cannot be installed beside
torch 2.13; ``upet`` serves the same PET-MAD checkpoints.

Features are metatomic outputs requested per atom through the calculator's ``MetatomicCalculator.run_model`` for a
whole batch: ``layer="last"`` → ``mtt::aux::energy_last_layer_features`` (the input of the energy head's last
linear layer), ``layer="backbone"`` → the standard ``feature`` output (``features`` in older metatomic). The energy
is requested in the same call and equals the calculator's. ``variant`` picks an energy head (e.g. ``r2scan`` for
``energy/r2scan``) where a model has several; the last-layer features of that head are then read. ``pet-mad-dos``
(PET-MAD-DOS, How et al., arXiv:2508.09000: the PET-MAD architecture and data, trained on the electronic density of
states) loads through ``upet.ase.dos.get_pet_mad_dos`` (what ``PETMADDOSCalculator`` uses) and reads the DOS head's
last-layer features (``mtt::aux::dos_last_layer_features``) or the backbone's; it has no energy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import WEIGHTS_PATH, Embedded, Extractor, ModelSpec, spec_table
from extractors.datasets import Record

__all__ = ["ENV_REQUIREMENTS", "LAYERS", "SPECS", "PETExtractor", "build", "feature_output"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "mtt::aux::energy_last_layer_features (input of the energy head's last linear layer)",
    "backbone": "the standard feature output of the PET backbone",
}

ENV_REQUIREMENTS = ("upet==0.3.1",)

_PACKAGES = ("upet", "metatomic-torch", "metatrain", "torch", "ase")
# id, UPET model, size, pinned version (None: the newest cached), description
_ROWS = (
    ("pet-mad-s", "pet-mad", "s", None, "PET-MAD-S (MAD; r2SCAN since 1.5)"),
    ("pet-mad-xs", "pet-mad", "xs", None, "PET-MAD-XS (MAD; r2SCAN)"),
    ("pet-mad-m", "pet-mad", "m", None, "PET-MAD-M (MAD; r2SCAN)"),
    ("pet-mad-s-v1.0.2", "pet-mad", "s", "1.0.2", "PET-MAD 1.0.2 (MAD; PBEsol), the original release"),
    ("pet-omat-xs", "pet-omat", "xs", None, "PET-OMat-XS (OMat24; PBE)"),
    ("pet-omat-s", "pet-omat", "s", None, "PET-OMat-S (OMat24; PBE)"),
    ("pet-omat-m", "pet-omat", "m", None, "PET-OMat-M (OMat24; PBE)"),
    ("pet-omat-l", "pet-omat", "l", None, "PET-OMat-L (OMat24; PBE)"),
    ("pet-omat-xl", "pet-omat", "xl", None, "PET-OMat-XL (OMat24; PBE)"),
    ("pet-oam-l", "pet-oam", "l", None, "PET-OAM-L (OMat24 + sAlex + MPtrj; MP-compatible PBE)"),
    ("pet-omad-l", "pet-omad", "l", None, "PET-OMAD-L (OMat24 pre-training, MAD; PBEsol)"),
    ("pet-omatpes-l", "pet-omatpes", "l", None, "PET-OMATPES-L (OMat24 pre-training, MatPES; r2SCAN)"),
    ("pet-omol-s", "pet-omol", "s", None, "PET-OMol-S (OMol25; ωB97M-V)"),
    ("pet-spice-s", "pet-spice", "s", None, "PET-SPICE-S (SPICE; ωB97M-D3)"),
    ("upet", None, None, None, "any UPET / metatrain PET checkpoint (--opt weights=PATH)"),
)
SPECS = spec_table("petmad", ("model", "size", "version"), _ROWS, status=WEIGHTS_PATH, packages=_PACKAGES) + spec_table(
    "petmad",
    ("model", "version"),
    (("pet-mad-dos", "pet-mad-dos", "1.0", "PET-MAD-DOS 1.0 (MAD; electronic density of states, seed 003 §IV)"),),
    status=WEIGHTS_PATH,
    packages=_PACKAGES,
    target="mtt::dos",
)

LAST_LAYER = "mtt::aux::energy_last_layer_features"


def feature_output(available: Sequence[str], layer: str, variant: str | None, target: str = "energy") -> str:
    """The metatomic output holding ``layer``'s features among the model's ``available`` outputs: the last-layer
    features of ``target``'s head (``energy``; ``mtt::dos`` for PET-MAD-DOS: metatrain names them
    ``mtt::aux::<target without mtt::>_last_layer_features``) or the backbone's ``feature`` output."""
    suffix = "" if variant is None else f"/{variant}"
    if layer == "backbone":  # metatomic renamed the standard output "features" → "feature"
        names = [f"feature{suffix}", f"features{suffix}"]
    elif layer == "last":
        head = target.removeprefix("mtt::")
        names = [f"mtt::aux::{head}{suffix}_last_layer_features"]
    else:
        raise ValueError(f"PET offers layer='last' ({LAST_LAYER}) or 'backbone' (feature), got {layer!r}.")
    for name in names:
        if name in available:
            return name
    raise ValueError(f"the model has no output {names[0]!r}; it offers {sorted(available)}.")


def _local_checkpoint(spec: ModelSpec, weights: str | None) -> str:
    """``weights``, else the newest (or the pinned) ``<model>-<size>-v<version>.ckpt`` in the Hugging Face cache
    that ``UPETCalculator(model=...)`` downloads into (repository ``lab-cosmo/upet``, folder ``models``)."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{spec.id}: weights file {path} does not exist.")
        return str(path)
    model, size, version = spec.config.get("model"), spec.config.get("size"), spec.config.get("version")
    if model is None:
        raise ValueError(f"model {spec.id!r} needs a local checkpoint: pass --opt weights=/path/to/model.ckpt.")
    from huggingface_hub.constants import HF_HUB_CACHE

    if model == "pet-mad-dos":  # its own repository: lab-cosmo/pet-mad-dos, models/pet-mad-dos-v<version>.ckpt
        found = sorted(
            (Path(HF_HUB_CACHE) / "models--lab-cosmo--pet-mad-dos" / "snapshots").glob(
                f"*/models/pet-mad-dos-v{version}.ckpt"
            )
        )
        if not found:
            raise FileNotFoundError(
                f"{spec.id}: no pet-mad-dos-v{version}.ckpt in the Hugging Face cache; download it from "
                "lab-cosmo/pet-mad-dos (models/) and pass --opt weights=PATH."
            )
        return str(found[-1])
    from upet._models import parse_checkpoint_filename

    snapshots = Path(HF_HUB_CACHE) / "models--lab-cosmo--upet" / "snapshots"
    found = []
    for path in snapshots.glob(f"*/models/{model}-{size}-v*.ckpt"):
        name, got_size, got_version = parse_checkpoint_filename(str(path))
        if name == model and got_size == size and (version is None or str(got_version) == version):
            found.append((got_version, str(path)))
    if not found:
        wanted = f"{model}-{size}-v{version or '<version>'}.ckpt"
        raise FileNotFoundError(
            f"{spec.id}: no {wanted} in the Hugging Face cache {snapshots}; download it from lab-cosmo/upet "
            "(models/) and pass --opt weights=PATH."
        )
    return max(found)[1]


class PETExtractor(Extractor):
    atomistic = True
    has_energy = True
    pooling = "mean"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        weights: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__(spec, layer=layer, weights=weights, device=device, dtype=dtype, variant=variant)
        self.weights = _local_checkpoint(spec, weights)
        self.target = spec.config.get("target", "energy")
        if self.target == "energy":
            from upet.ase import UPETCalculator

            self.calc = UPETCalculator(
                checkpoint_path=self.weights,
                device=device,
                dtype=dtype,
                variants={"energy": variant} if variant else None,
                uncertainty_threshold=None,
            )
            self.runner = self.calc._base_calculator  # the MetatomicCalculator UPETCalculator wraps
        else:  # PET-MAD-DOS: upet's own loader (metatrain load_model + export), run like PETMADDOSCalculator does
            from metatomic_ase import MetatomicCalculator
            from upet.ase.dos import get_pet_mad_dos

            if dtype is not None or variant is not None:
                raise ValueError(f"{spec.id} takes neither dtype nor variant (one DOS head, the checkpoint's dtype).")
            model = get_pet_mad_dos(version=spec.config["version"], model_path=self.weights)
            self.runner = MetatomicCalculator(model, additional_outputs={}, device=device)
        capabilities = self.runner._model.capabilities()
        available = list(capabilities.outputs.keys())
        self.output = feature_output(available, layer, variant, self.target)
        self.energy_key = None
        if self.target == "energy":
            self.energy_key = "energy" if variant is None else f"energy/{variant}"
            if self.energy_key not in available:
                raise ValueError(f"{spec.id}: the model has no {self.energy_key!r} output (it offers {available}).")
        self.has_energy = self.energy_key is not None  # type: ignore[misc]
        self.types = {int(z) for z in capabilities.atomic_types}

    def check(self, record: Record) -> str | None:
        reason = super().check(record)
        if reason is None:
            bad = sorted({int(z) for z in record.atoms.numbers} - self.types)
            if bad:
                reason = f"unsupported atomic numbers {bad} (not among the model's atomic types)"
        return reason

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        from metatomic.torch import ModelOutput

        outputs = {self.output: ModelOutput(per_atom=True)}
        if self.energy_key is not None:
            outputs[self.energy_key] = ModelOutput(per_atom=False)
        result = self.runner.run_model([r.atoms for r in records], outputs)
        block = result[self.output].block()
        samples = block.samples.values.cpu().numpy()  # (system, atom) pairs
        values = block.values.detach().reshape(len(samples), -1).float().cpu().numpy()
        energies: dict[int, Any] = {}
        if self.energy_key is not None:
            energy_block = result[self.energy_key].block()
            systems = energy_block.samples.values[:, 0].cpu().numpy()
            energies = dict(zip(systems.tolist(), energy_block.values.detach().reshape(-1).cpu().numpy(), strict=True))
        out = []
        for i, r in enumerate(records):
            rows = samples[:, 0] == i
            feats = np.empty((len(r.atoms), values.shape[1]), dtype=np.float32)
            feats[samples[rows, 1]] = values[rows]
            if rows.sum() != len(r.atoms):
                raise RuntimeError(f"{self.output}: {rows.sum()} rows for {len(r.atoms)} atoms")
            energy = float(energies[i]) if self.energy_key is not None else None
            out.append(Embedded(features=feats.mean(axis=0), atom_features=feats, energy=energy))
        return out

    def info(self) -> dict[str, Any]:
        return {
            "layer_detail": f"metatomic output {self.output} (per atom), MetatomicCalculator.run_model",
            "weights": self.weights,
            "energy_output": self.energy_key,
            "energy_unit": "eV (total)" if self.energy_key else None,
        }


def build(spec: ModelSpec, **options: Any) -> PETExtractor:
    return PETExtractor(spec, **options)
