"""Orb (Neumann et al., arXiv:2410.22570; orb-v3: Rhodes et al., arXiv:2504.06231); weights are local checkpoints.

Loading is the library's own: ``ORB_PRETRAINED_MODELS[name](weights_path=FILE, device=..., precision=...,
compile=False)`` builds the model's architecture and loads the ``.ckpt`` state dict into it (``load_model``: strict
``load_state_dict``). Without ``--opt weights=PATH`` the file is looked up in ``cached_path``'s cache, where
orb-models keeps the checkpoints it downloaded; nothing is downloaded here.

Per-atom features are ``node_features`` of the backbone's (``MoleculeGNS``) forward output: the node latents after
the last message-passing step (256-d for orb-v2/v3), read with a forward hook on ``model.model`` during the model's
own ``predict`` (the call ``ORBCalculator`` makes), which also gives the energy. Structures are batched with
``ase_atoms_to_atom_graphs`` + ``batch_graphs``. Conservative models differentiate the energy for forces inside
``predict``, so their pass runs with gradients enabled. OMol25 models condition on total charge and spin
multiplicity: ``atoms.info["charge"]``/``["spin"]``, defaulting to the ``charge``/``spin`` options (0 and 1).
``orb-v3-direct-20-omat-randomized`` (seed 000's "Orb V3 OMat Direct 20 Randomized", 25,644,479 parameters like the
trained model) is that architecture with seeded random weights (:func:`random_model`, ``--opt seed=N``): a control
for how much of the alignment the architecture alone gives. orb-models ≥ 0.6 needs Python ≥ 3.12; on Python 3.11
the newest is 0.5.5 (``python -m extractors.envs create orb``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extractors.base import SEPARATE_ENV, WEIGHTS_PATH, Embedded, Extractor, ModelSpec, per_structure, spec_table
from extractors.datasets import Record

__all__ = ["ENV_REQUIREMENTS", "LAYERS", "SPECS", "OrbExtractor", "build", "random_model", "resolve_weights"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {"last": "node_features of the backbone output"}

ENV_REQUIREMENTS = ("orb-models==0.5.5",)

_PACKAGES = ("orb-models", "torch", "ase")
_ROWS = (
    ("orb-v3-conservative-inf-omat", "orb-v3 conservative, unlimited neighbours (OMat24)"),
    ("orb-v3-conservative-20-omat", "orb-v3 conservative, 20 neighbours (OMat24)"),
    ("orb-v3-direct-inf-omat", "orb-v3 direct, unlimited neighbours (OMat24)"),
    ("orb-v3-direct-20-omat", "orb-v3 direct, 20 neighbours (OMat24)"),
    ("orb-v3-conservative-inf-mpa", "orb-v3 conservative, unlimited neighbours (MPtrj + sAlex)"),
    ("orb-v3-direct-inf-mpa", "orb-v3 direct, unlimited neighbours (MPtrj + sAlex)"),
    ("orb-v3-conservative-20-mpa", "orb-v3 conservative, 20 neighbours (MPtrj + sAlex)"),
    ("orb-v3-direct-20-mpa", "orb-v3 direct, 20 neighbours (MPtrj + sAlex)"),
    ("orb-v3-conservative-omol", "orb-v3 conservative (OMol25; charge and spin conditioned)"),
    ("orb-v3-direct-omol", "orb-v3 direct (OMol25; charge and spin conditioned)"),
    ("orb-v2", "orb-v2 (MPtrj + Alexandria)"),
    ("orb-mptraj-only-v2", "orb-v2 trained on MPtrj only"),
)
SPECS = spec_table(
    "orb", ("name",), ((name, name, desc) for name, desc in _ROWS), status=WEIGHTS_PATH, packages=_PACKAGES
) + spec_table(
    "orb",
    ("name",),
    (
        (
            "orb-v3-direct-20-omat-randomized",
            "orb-v3-direct-20-omat",
            "orb-v3 direct-20 OMat architecture with seeded random weights, no checkpoint (seed 000 Table 1)",
        ),
    ),
    status=SEPARATE_ENV,
    packages=_PACKAGES,
    randomized=True,
)
#: The architecture (orb-models' own builder) and graph settings of each model that a randomized row re-creates.
_ARCHITECTURES = {"orb-v3-direct-20-omat": ("orb_v3_direct_architecture", 6.0, 20)}


def resolve_weights(name: str, weights: str | None) -> str:
    """A local checkpoint: ``weights`` when given, else the file ``cached_path`` holds for the model's URL."""
    import inspect

    from orb_models.forcefield.pretrained import ORB_PRETRAINED_MODELS

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{name}: weights file {path} does not exist.")
        return str(path)
    url = inspect.signature(ORB_PRETRAINED_MODELS[name]).parameters["weights_path"].default
    from cached_path import find_latest_cached

    found = find_latest_cached(url)  # the cache lookup alone: no network, nothing downloaded
    if found is None:
        raise FileNotFoundError(f"{name}: no local checkpoint. Download {url} and pass --opt weights=PATH.")
    return str(found)


class OrbExtractor(Extractor):
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
        precision: str = "float32-high",
        charge: float = 0.0,
        spin: float = 1.0,
        seed: int = 0,
    ) -> None:
        if layer != "last":
            raise ValueError(f"Orb offers layer='last' (node_features of the backbone output), got {layer!r}.")
        randomized = bool(spec.config.get("randomized"))
        if randomized and weights is not None:
            raise ValueError(f"{spec.id} has random weights (seed={seed}); it takes no weights file.")
        options = {"seed": int(seed)} if randomized else {}
        super().__init__(
            spec, layer=layer, weights=weights, device=device, precision=precision, charge=charge, spin=spin, **options
        )
        from orb_models.forcefield.pretrained import ORB_PRETRAINED_MODELS

        name = spec.config["name"]
        if name not in ORB_PRETRAINED_MODELS:
            raise ValueError(f"{spec.id}: orb-models has no model {name!r}; it knows {list(ORB_PRETRAINED_MODELS)}.")
        if randomized:
            self.weights = None
            self.model = random_model(name, seed=int(seed), device=device, precision=precision)
        else:
            self.weights = resolve_weights(name, weights)
            self.model = ORB_PRETRAINED_MODELS[name](
                weights_path=self.weights, device=device, precision=precision, compile=False
            )
        self.model.eval()
        self.device = device
        self.precision = precision
        self.conservative = hasattr(self.model, "grad_forces_name")
        conditioner = getattr(self.model.model, "conditioner", None)
        self.charge_spin = conditioner is not None and type(conditioner).__name__ == "ChargeSpinConditioner"
        self.charge, self.spin = float(charge), float(spin)

    def graphs(self, records: Sequence[Record]) -> Any:
        from orb_models.forcefield.atomic_system import ase_atoms_to_atom_graphs
        from orb_models.forcefield.base import batch_graphs

        out = []
        for r in records:
            atoms = r.atoms
            if self.charge_spin and not ("charge" in atoms.info and "spin" in atoms.info):
                atoms = atoms.copy()
                atoms.info.update(charge=self.charge, spin=self.spin)
            out.append(ase_atoms_to_atom_graphs(atoms, system_config=self.model.system_config, device=self.device))
        return batch_graphs(out)

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        import torch

        batch = self.graphs(records)
        captured: list[torch.Tensor] = []
        handle = self.model.model.register_forward_hook(
            lambda _m, _i, out: captured.append(out["node_features"].detach())
        )
        try:
            with torch.set_grad_enabled(self.conservative):
                pred = self.model.predict(batch)
        finally:
            handle.remove()
        per_atom = captured[0].float().cpu().numpy()
        energies = pred["energy"].detach().cpu().numpy().reshape(-1)
        return per_structure(per_atom, [len(r.atoms) for r in records], energies)

    def info(self) -> dict[str, Any]:
        return {
            "layer_detail": "node_features of the backbone (model.model) output, forward hook during predict()",
            "weights": self.weights,
            "precision": self.precision,
            "conservative": self.conservative,
            "charge_spin_defaults": [self.charge, self.spin] if self.charge_spin else None,
            "energy_unit": "eV (total)",
        }


def random_model(name: str, *, seed: int, device: str = "cpu", precision: str = "float32-high") -> Any:
    """``name``'s architecture as orb-models builds it for its checkpoint (the same builder and graph settings),
    with the library's default initialisation under ``torch.manual_seed(seed)`` instead of trained weights, in the
    state ``load_model`` leaves a loaded model (precision, device, eval mode, frozen)."""
    import torch
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.atomic_system import SystemConfig
    from orb_models.utils import set_torch_precision

    builder, radius, neighbours = _ARCHITECTURES[name]
    dtype = set_torch_precision(precision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        system = SystemConfig(radius=radius, max_num_neighbors=neighbours)
        model = getattr(pretrained, builder)(device=None, system_config=system)
    model = model.to(dtype).to(device).eval()
    for p in model.parameters():
        p.requires_grad = False
    return model


def build(spec: ModelSpec, **options: Any) -> OrbExtractor:
    return OrbExtractor(spec, **options)
