"""fairchem: UMA (Wood et al., arXiv:2506.23971), eSEN (Fu et al., arXiv:2502.12147) and EquiformerV2 (Liao et al.,
ICLR 2024; OMat24 models: Barroso-Luque et al., arXiv:2410.12771); weights are local checkpoints.

UMA and eSEN (fairchem-core 2.x): loading is the library's own ``load_predict_unit(FILE, inference_settings,
device=...)`` (what ``pretrained_mlip.get_predict_unit(name)`` does after downloading); without ``--opt weights=PATH``
the file is looked up in the Hugging Face cache that ``get_predict_unit`` fills (``local_files_only``: nothing is
downloaded), together with the isolated-atom references when cached. The task head is chosen with ``task``
(``omat``, ``omol``, ``oc20``, ``odac``, ``omc``, …; each spec sets its default), exactly as ``FAIRChemCalculator(
predict_unit, task_name=...)``. Structures go through the calculator's ``AtomicData.from_ase`` (radius 6 Å, charge
and spin from ``atoms.info`` with the task's defaults) and are batched with ``atomicdata_list_to_batch``; the
``batch`` inference settings keep the mixture of linear experts unmerged so a heterogeneous batch is exact.

Features are the model's ``embeddings`` output (``MLP_EFS_Head``: the backbone's ``node_embedding`` after the last
layer, shape ``(n_atoms, (lmax+1)², C)``, read with a forward hook during ``predict``) — ``layer="last"`` keeps the
invariant L=0 part ``[:, 0]`` (C channels, 128 for UMA-S); ``layer="last_l1"`` appends the L=1 coefficients
(flattened, not rotation invariant). The energy is ``predict``'s, equal to ``FAIRChemCalculator``'s.

EquiformerV2 OMat24 checkpoints need fairchem-core 1.x (``OCPCalculator``), which pins torch~=2.4 and so cannot be
installed beside torch 2.13: those specs (generation 1) carry the loading code for a 1.x environment — features =
the L=0 part of the backbone's ``node_embedding`` (``SO3_Embedding.embedding[:, 0]``), energy = the trainer's
prediction — and are not tested here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extractors.base import WEIGHTS_PATH, Embedded, Extractor, ModelSpec, per_structure, spec_table
from extractors.datasets import Record

__all__ = ["ENV_REQUIREMENTS", "EXTRA_ENVS", "LAYERS", "SPECS", "EquiformerV2Extractor", "FairchemExtractor", "build"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "L=0 (invariant) part of the backbone's final node embedding",
    "last_l1": "L=0 and L=1 coefficients of the final node embedding",
}

ENV_REQUIREMENTS = ("fairchem-core==2.24.0",)
#: EquiformerV2 needs fairchem-core 1.x, which pins torch~=2.4.0: its environment starts from the torch 2.4 base
#: (PyPI's CUDA build) and compiles torch-scatter and torch-sparse, which fairchem 1.x imports and the index ships as
#: source only (5.8 GiB; first build on two cores: the install 301 s, the two compilations 3.7 and 18.4 min).
EXTRA_ENVS = {
    "fairchem-v1": {
        "requirements": ("fairchem-core==1.10.0", "scipy==1.14.1"),  # scipy 1.15 dropped sph_harm, which 1.x imports
        "base": "torch-2.4",
        "compiled": ("torch-scatter==2.1.2", "torch-sparse==0.6.18"),
    }
}

_PACKAGES = ("fairchem-core", "torch", "ase")
# id, registered checkpoint name (fairchem's pretrained_models.json or the OMat24 release), default task, description
_ROWS_V2 = (
    ("uma-s-1p1-omat", "uma-s-1p1", "omat", "UMA-S 1.1, OMat24 task head"),
    ("uma-s-1p1-omol", "uma-s-1p1", "omol", "UMA-S 1.1, OMol25 task head"),
    ("uma-s-1p1-oc20", "uma-s-1p1", "oc20", "UMA-S 1.1, OC20 task head"),
    ("uma-s-1p1-odac", "uma-s-1p1", "odac", "UMA-S 1.1, ODAC23 task head (MOFs with adsorbates)"),
    ("uma-s-1p1-omc", "uma-s-1p1", "omc", "UMA-S 1.1, OMC25 task head (molecular crystals)"),
    ("uma-m-1p1-omat", "uma-m-1p1", "omat", "UMA-M 1.1, OMat24 task head"),
    ("uma-m-1p1-omol", "uma-m-1p1", "omol", "UMA-M 1.1, OMol25 task head"),
    ("uma-m-1p1-oc20", "uma-m-1p1", "oc20", "UMA-M 1.1, OC20 task head"),
    ("uma-m-1p1-odac", "uma-m-1p1", "odac", "UMA-M 1.1, ODAC23 task head (MOFs with adsorbates)"),
    ("uma-m-1p1-omc", "uma-m-1p1", "omc", "UMA-M 1.1, OMC25 task head (molecular crystals)"),
    ("uma-s-1p2-omat", "uma-s-1p2", "omat", "UMA-S 1.2, OMat24 task head"),
    ("uma-s-1p2-omol", "uma-s-1p2", "omol", "UMA-S 1.2, OMol25 task head"),
    ("esen-sm-conserving-all-omol", "esen-sm-conserving-all-omol", "omol", "eSEN-sm conserving (OMol25)"),
    ("esen-md-direct-all-omol", "esen-md-direct-all-omol", "omol", "eSEN-md direct (OMol25)"),
    ("esen-30m-oam", None, None, "eSEN-30M-OAM (OMat24 + MPtrj + sAlex; --opt weights=esen_30m_oam.pt)"),
    ("esen-30m-mp", None, None, "eSEN-30M-MP (MPtrj; --opt weights=PATH)"),
    ("esen-30m-omat", None, None, "eSEN-30M-OMat (OMat24; --opt weights=PATH)"),
    ("fairchem", None, None, "any fairchem-core 2 checkpoint (--opt weights=PATH [task=NAME])"),
)
_ROWS_V1 = (
    ("eqv2-31m-omat-mp-salex", "eqV2_31M_omat_mp_salex.pt", "EquiformerV2 31M, OMat24 → MPtrj + sAlex (fairchem 1.x)"),
    ("eqv2-86m-omat-mp-salex", "eqV2_86M_omat_mp_salex.pt", "EquiformerV2 86M, OMat24 → MPtrj + sAlex (fairchem 1.x)"),
    ("eqv2-153m-omat-mp-salex", "eqV2_153M_omat_mp_salex.pt", "EquiformerV2 153M, OMat24 → MPtrj + sAlex (1.x)"),
    ("eqv2-31m-omat", "eqV2_31M_omat.pt", "EquiformerV2 31M, OMat24 only (fairchem 1.x)"),
    ("eqv2-86m-omat", "eqV2_86M_omat.pt", "EquiformerV2 86M, OMat24 only (fairchem 1.x)"),
    ("eqv2-153m-omat", "eqV2_153M_omat.pt", "EquiformerV2 153M, OMat24 only (fairchem 1.x)"),
    ("eqv2-31m-mp", "eqV2_31M_mp.pt", "EquiformerV2 31M, MPtrj only (fairchem 1.x)"),
    ("eqv2-dens-31m-mp", "eqV2_dens_31M_mp.pt", "EquiformerV2 31M with DeNS, MPtrj (fairchem 1.x)"),
    ("eqv2-dens-86m-mp", "eqV2_dens_86M_mp.pt", "EquiformerV2 86M with DeNS, MPtrj (fairchem 1.x)"),
    ("eqv2-dens-153m-mp", "eqV2_dens_153M_mp.pt", "EquiformerV2 153M with DeNS, MPtrj (fairchem 1.x)"),
)
SPECS = spec_table(
    "fairchem", ("checkpoint", "task"), _ROWS_V2, status=WEIGHTS_PATH, packages=_PACKAGES, generation=2
) + spec_table(
    "fairchem",
    ("checkpoint",),
    _ROWS_V1,
    status=WEIGHTS_PATH,
    packages=_PACKAGES,
    generation=1,
    task=None,
    env="fairchem-v1",
)

_RADIUS = 6.0  # FAIRChemCalculator's graph radius


def _local_checkpoint(spec: ModelSpec, weights: str | None) -> tuple[str, dict | None]:
    """The checkpoint file and isolated-atom references: ``weights`` (no references), else the files
    ``get_predict_unit(name)`` cached from Hugging Face."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{spec.id}: weights file {path} does not exist.")
        return str(path), None
    name = spec.config.get("checkpoint")
    if name is None or spec.config["generation"] != 2:
        raise ValueError(f"model {spec.id!r} needs a local checkpoint: pass --opt weights=/path/to/checkpoint.pt.")
    from fairchem.core._config import CACHE_DIR
    from fairchem.core.calculate import pretrained_mlip
    from huggingface_hub import hf_hub_download
    from omegaconf import OmegaConf

    entry = pretrained_mlip._MODEL_CKPTS.checkpoints[name]
    common = {"repo_id": entry.repo_id, "revision": entry.revision, "cache_dir": CACHE_DIR, "local_files_only": True}
    try:
        path = hf_hub_download(filename=entry.filename, subfolder=entry.subfolder, **common)
    except Exception:
        raise FileNotFoundError(
            f"{spec.id}: {entry.filename} is not in the Hugging Face cache {CACHE_DIR}; download it from "
            f"{entry.repo_id} and pass --opt weights=PATH."
        ) from None
    refs = None
    if entry.atom_refs is not None:
        try:
            refs_path = hf_hub_download(
                filename=entry.atom_refs["filename"], subfolder=entry.atom_refs["subfolder"], **common
            )
            refs = OmegaConf.load(refs_path)
        except Exception:
            refs = None  # only single isolated atoms need them; those are then reported per structure
    return path, refs


def _embeddings(output: dict[str, Any], task: str) -> Any:
    """The ``embeddings`` entry of a fairchem model output: ``<task>_embeddings`` (dataset-specific heads) or
    ``embeddings`` (single head), unwrapped from ``{"embeddings": tensor}``."""
    for key in (f"{task}_embeddings", "embeddings"):
        if key in output:
            value = output[key]
            return value["embeddings"] if isinstance(value, dict) else value
    for value in output.values():
        if isinstance(value, dict) and "embeddings" in value:
            return value["embeddings"]
    raise RuntimeError(f"the model's output has no 'embeddings' entry (keys: {sorted(output)}).")


class FairchemExtractor(Extractor):
    atomistic = True
    has_energy = True
    pooling = "mean"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layer: str = "last",
        weights: str | None = None,
        task: str | None = None,
        device: str = "cpu",
        inference_settings: str = "batch",
    ) -> None:
        if layer not in ("last", "last_l1"):
            raise ValueError(f"fairchem offers layer='last' (L=0 of embeddings) or 'last_l1', got {layer!r}.")
        super().__init__(
            spec, layer=layer, weights=weights, task=task, device=device, inference_settings=inference_settings
        )
        from fairchem.core.units.mlip_unit import load_predict_unit

        self.weights, refs = _local_checkpoint(spec, weights)
        self.unit = load_predict_unit(
            self.weights, inference_settings=inference_settings, device=device, atom_refs=refs
        )
        tasks = list(self.unit.dataset_to_tasks)
        task = task if task is not None else spec.config.get("task")
        if task is None and len(tasks) == 1:
            task = tasks[0]
        if task not in tasks:
            raise ValueError(f"{spec.id}: task must be one of {tasks} (pass --opt task=NAME), got {task!r}.")
        self.task = task
        self.device = device
        backbone = self.unit.model.module.backbone
        self.max_z = int(getattr(backbone, "max_num_elements", 100)) - 1
        self.single_atoms = bool(getattr(self.unit.model.module, "supports_single_atoms", False))

    def check(self, record: Record) -> str | None:
        reason = super().check(record)
        if reason is None:
            atoms = record.atoms
            if int(atoms.numbers.max()) > self.max_z:
                reason = f"unsupported atomic numbers {sorted({int(z) for z in atoms.numbers if z > self.max_z})}"
            elif len(atoms) == 1 and not atoms.pbc.any() and not self.single_atoms:
                reason = "single isolated atom: fairchem returns a reference energy without running the model"
        return reason

    def data(self, atoms: Any) -> Any:
        from fairchem.core.datasets.atomic_data import AtomicData

        atoms = atoms.copy()
        self.unit.validate_atoms_data(atoms, self.task)  # the calculator's defaults (e.g. omol charge and spin)
        return AtomicData.from_ase(
            atoms,
            task_name=self.task,
            r_edges=False,
            r_data_keys=["spin", "charge"],
            max_neigh=None,
            radius=_RADIUS,
            target_dtype=self.unit.inference_settings.base_precision_dtype,
        )

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        import torch
        from fairchem.core.datasets.atomic_data import atomicdata_list_to_batch

        batch = atomicdata_list_to_batch([self.data(r.atoms) for r in records])
        captured: list[Any] = []
        handle = self.unit.model.register_forward_hook(lambda _m, _i, out: captured.append(_embeddings(out, self.task)))
        try:
            pred = self.unit.predict(batch)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("fairchem answered without running the model (isolated single atom).")
        emb = captured[0].detach()
        per_atom = emb[:, 0] if self.layer == "last" else emb[:, :4].reshape(emb.shape[0], -1)
        per_atom = per_atom.to(torch.float32).cpu().numpy()
        energies = pred["energy"].detach().cpu().numpy().reshape(-1)
        return per_structure(per_atom, [len(r.atoms) for r in records], energies)

    def info(self) -> dict[str, Any]:
        return {
            "layer_detail": "embeddings output (node_embedding after the last layer), "
            + ("L=0 part [:, 0]" if self.layer == "last" else "L=0 and L=1 parts [:, :4], flattened"),
            "weights": self.weights,
            "task": self.task,
            "inference_settings": self.options["inference_settings"],
            "energy_unit": "eV (total)",
        }


class EquiformerV2Extractor(Extractor):
    """EquiformerV2 through fairchem-core 1.x's ``OCPCalculator(checkpoint_path=FILE, cpu=...)``, in the
    ``fairchem-v1`` environment (torch 2.4; ``python -m extractors.envs create fairchem-v1``)."""

    atomistic = True
    has_energy = True
    pooling = "mean"

    def __init__(self, spec: ModelSpec, *, layer: str = "last", weights: str | None = None, device: str = "cpu"):
        if layer != "last":
            raise ValueError(f"EquiformerV2 offers layer='last' (L=0 of node_embedding), got {layer!r}.")
        super().__init__(spec, layer=layer, weights=weights, device=device)
        if weights is None or not os.path.isfile(weights):
            raise FileNotFoundError(f"{spec.id}: pass --opt weights=/path/to/{spec.config['checkpoint']}.")
        from fairchem.core.common.relaxation.ase_utils import OCPCalculator

        self.weights = str(weights)
        self.calc = OCPCalculator(checkpoint_path=self.weights, cpu=device == "cpu", seed=0)
        model = self.calc.trainer.model
        self.model = getattr(model, "module", model)

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        """One pass per periodicity among ``records``: fairchem 1.x's ``radius_graph_pbc`` reads a batch's periodic
        axes from its first structure (``AtomsToGraphs`` stores ``pbc`` as (3,), so a batch's flags collate flat), so a
        crystal after a molecule would lose its images. Each group is one batch, its flags (1, 3) per structure, as
        the library's calculator sees one structure."""
        groups: dict[tuple[bool, ...], list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault(tuple(bool(x) for x in r.atoms.pbc), []).append(i)
        out: list[Embedded | None] = [None] * len(records)
        for index in groups.values():
            for i, e in zip(index, self._embed_batch([records[i] for i in index]), strict=True):
                out[i] = e
        return [e for e in out if e is not None]

    def _embed_batch(self, records: Sequence[Record]) -> list[Embedded]:
        import torch
        from fairchem.core.datasets import data_list_collater

        graphs = [self.calc.a2g.convert(r.atoms) for r in records]
        for g in graphs:
            g.pbc = g.pbc.reshape(1, 3)  # collated (B, 3): every structure's own flags
        batch = data_list_collater(graphs, otf_graph=True)
        captured: list[Any] = []
        handle = self.model.backbone.register_forward_hook(
            lambda _m, _i, out: captured.append(out["node_embedding"].embedding[:, 0].detach())
        )
        try:
            pred = self.calc.trainer.predict(batch, per_image=False, disable_tqdm=True)
        finally:
            handle.remove()
        per_atom = captured[0].to(torch.float32).cpu().numpy()
        energies = pred["energy"].detach().cpu().numpy().reshape(-1)
        return per_structure(per_atom, [len(r.atoms) for r in records], energies)

    def info(self) -> dict[str, Any]:
        return {
            "layer_detail": "backbone node_embedding (SO3_Embedding) L=0 part, forward hook during trainer.predict",
            "weights": self.weights,
            "energy_unit": "eV (total)",
        }


def build(spec: ModelSpec, **options: Any) -> Extractor:
    if spec.config["generation"] == 1:
        return EquiformerV2Extractor(spec, **options)
    return FairchemExtractor(spec, **options)
