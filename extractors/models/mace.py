"""MACE (Batatia et al., NeurIPS 2022; MACE-MP-0: Batatia et al., arXiv:2401.00096); weights are local model files.

Loading is the library's own: ``MACECalculator(model_paths=FILE, device=..., default_dtype=..., head=...)`` on a
``torch.save``-d MACE module (the ``.model`` files of the MACE-MP / MACE-OFF / MACE-OMAT releases). Without
``--opt weights=PATH`` the file is looked up where ``mace_mp(model=NAME)`` / ``mace_off(model=NAME)`` cache it
(``$XDG_CACHE_HOME/mace``, default ``~/.cache/mace``); nothing is downloaded.

Features are those of ``MACECalculator.get_descriptors(atoms, invariants_only=...)``: the model's ``node_feats``
output (every interaction layer's node features, concatenated), reduced to the invariant (``0e``) channels of each
layer with ``invariants_only=True`` (the default). The last layer only carries invariants. ``layer`` picks the
columns of one layer: ``"last"`` (the last interaction layer, the default), ``"layer<i>"`` (1-based) or ``"all"``
(every layer, exactly ``get_descriptors``' array). With ``invariants_only=False`` a non-last layer keeps all its
``irreps_out`` channels (equivariant, so not rotation invariant). Structures are batched through the calculator's
data path (``config_from_atoms`` → ``AtomicData.from_config`` → ``Batch``) and one forward pass without forces gives
both the features and the model's energy, equal to the calculator's. MACE must run in its own environment:
mace-torch pins e3nn==0.4.4 (``python -m extractors.envs create mace``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extractors.base import WEIGHTS_PATH, Embedded, Extractor, ModelSpec, per_structure, spec_table
from extractors.datasets import Record

__all__ = ["ENV_REQUIREMENTS", "LAYERS", "SPECS", "MACEExtractor", "build", "layer_columns", "resolve_weights"]

#: The layers this family reads (``layer=`` / ``MODEL@LAYER``); ``last`` is the default, the one the papers use.
LAYERS = {
    "last": "the last interaction layer's invariant node features",
    "layer<i>": "interaction layer i (1-based) of get_descriptors' output",
    "all": "every interaction layer, concatenated (exactly get_descriptors' array)",
}

#: What ``python -m extractors.envs create mace`` installs beside torch==2.13.0 (verified on this machine).
ENV_REQUIREMENTS = ("mace-torch==0.3.16",)

_PACKAGES = ("mace-torch", "torch", "e3nn", "ase")
# id, source ("mp" → mace_mp_urls, "off" → mace_off_urls), key in that table, head, description
_ROWS = (
    ("mace-mp-0-small", "mp", "small", None, "MACE-MP-0 small (MPtrj)"),
    ("mace-mp-0-medium", "mp", "medium", None, "MACE-MP-0 medium (MPtrj)"),
    ("mace-mp-0-large", "mp", "large", None, "MACE-MP-0 large (MPtrj)"),
    ("mace-mp-0b3-medium", "mp", "medium-0b3", None, "MACE-MP-0b3 medium (MPtrj)"),
    ("mace-mpa-0-medium", "mp", "medium-mpa-0", None, "MACE-MPA-0 medium (MPtrj + sAlex)"),
    ("mace-omat-0-medium", "mp", "medium-omat-0", None, "MACE-OMAT-0 medium (OMat24; ASL licence)"),
    ("mace-matpes-pbe-0", "mp", "mace-matpes-pbe-0", None, "MACE-MATPES-PBE-0 (MatPES PBE; ASL licence)"),
    ("mace-matpes-r2scan-0", "mp", "mace-matpes-r2scan-0", None, "MACE-MATPES-r2SCAN-0 (MatPES r2SCAN; ASL)"),
    ("mace-mh-1", "mp", "mh-1", None, "MACE-MH-1 multi-head (pass --opt head=NAME)"),
    ("mace-off23-small", "off", "small", None, "MACE-OFF23 small (organic molecules; ASL licence)"),
    ("mace-off23-medium", "off", "medium", None, "MACE-OFF23 medium (organic molecules; ASL licence)"),
    ("mace-off23-large", "off", "large", None, "MACE-OFF23 large (organic molecules; ASL licence)"),
    ("mace", None, None, None, "any MACE model file (--opt weights=PATH [head=NAME])"),
)
SPECS = spec_table("mace", ("source", "checkpoint", "head"), _ROWS, status=WEIGHTS_PATH, packages=_PACKAGES)


def _cache_path(source: str, key: str) -> tuple[Path, str]:
    """Where ``mace_mp(model=key)`` / ``mace_off(model=key)`` cache the file, and the URL they would fetch."""
    from mace.calculators.foundations_models import mace_mp_urls, mace_off_urls
    from mace.tools.utils import get_cache_dir

    url = (mace_off_urls if source == "off" else mace_mp_urls)[key]
    base = os.path.basename(url).split("?")[0]
    if source != "off":  # download_mace_mp_checkpoint keeps only alphanumerics and "_"
        base = "".join(c for c in base if c.isalnum() or c == "_")
    return Path(get_cache_dir()) / base, url


def resolve_weights(spec: ModelSpec, weights: str | os.PathLike | None) -> Path:
    """The model file: ``weights`` when given, else the file in MACE's own download cache; never downloads."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{spec.id}: weights file {path} does not exist.")
        return path
    if spec.config.get("checkpoint") is None:
        raise ValueError(f"model {spec.id!r} needs a local model file: pass --opt weights=/path/to/file.model.")
    path, url = _cache_path(spec.config["source"], spec.config["checkpoint"])
    if not path.is_file():
        raise FileNotFoundError(
            f"{spec.id}: no local model file. Download {url} and pass --opt weights=PATH (or place it at {path})."
        )
    return path


def layer_columns(layer: str, widths: Sequence[int]) -> slice:
    """Columns of ``layer`` (``last``, ``all`` or ``layer<i>``, 1-based) in features whose layers have ``widths``."""
    n = len(widths)
    if layer == "all":
        return slice(0, int(sum(widths)))
    if layer == "last":
        index = n
    elif layer.startswith("layer") and layer[5:].isdigit() and 1 <= int(layer[5:]) <= n:
        index = int(layer[5:])
    else:
        raise ValueError(f"MACE layer must be 'last', 'all' or one of layer1..layer{n}, got {layer!r}.")
    start = int(sum(widths[: index - 1]))
    return slice(start, start + int(widths[index - 1]))


class MACEExtractor(Extractor):
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
        dtype: str = "",
        invariants_only: bool = True,
    ) -> None:
        super().__init__(
            spec,
            layer=layer,
            weights=weights,
            head=head,
            device=device,
            dtype=dtype,
            invariants_only=invariants_only,
        )
        os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 and .model files are pickles
        from e3nn import o3
        from mace.calculators import MACECalculator

        self.weights = resolve_weights(spec, weights)
        head = head if head is not None else spec.config.get("head")
        kwargs = {"head": head} if head is not None else {}
        self.calc = MACECalculator(
            model_paths=str(self.weights), device=device, default_dtype=dtype, model_type="MACE", **kwargs
        )
        if self.calc.num_models != 1:
            raise ValueError(f"{spec.id}: one model file expected, got {self.calc.num_models} (a committee).")
        self.model = self.calc.models[0].eval()
        self.invariants_only = bool(invariants_only)
        self.n_layers = int(self.model.num_interactions)
        irreps = o3.Irreps(str(self.model.products[0].linear.irreps_out))
        self.l_max = irreps.lmax
        self.n_invariant = irreps.dim // (self.l_max + 1) ** 2
        self.widths = (
            [self.n_invariant] * self.n_layers
            if self.invariants_only
            else [irreps.dim] * (self.n_layers - 1) + [self.n_invariant]
        )
        self.columns = layer_columns(layer, self.widths)
        self.z_table = {int(z) for z in self.model.atomic_numbers}

    def check(self, record: Record) -> str | None:
        reason = super().check(record)
        if reason is None:
            bad = sorted({int(z) for z in record.atoms.numbers} - self.z_table)
            if bad:
                reason = f"unsupported atomic numbers {bad} (not in the model's z table)"
        return reason

    def batch(self, atoms_list: Sequence[Any]) -> Any:
        """The calculator's data path (``MACECalculator._atoms_to_batch``) for several structures at once."""
        from mace import data as mace_data
        from mace.tools import torch_geometric, torch_tools

        calc = self.calc
        keyspec = mace_data.KeySpecification(
            info_keys=calc.info_keys, arrays_keys={**calc.arrays_keys, calc.charges_key: "charges"}
        )
        with torch_tools.default_dtype(calc.default_dtype):
            graphs = [
                mace_data.AtomicData.from_config(
                    mace_data.config_from_atoms(a, key_specification=keyspec, head_name=calc.head),
                    z_table=calc.z_table,
                    cutoff=calc.r_max,
                    heads=calc.available_heads,
                )
                for a in atoms_list
            ]
        return torch_geometric.Batch.from_data_list(graphs).to(calc.device)

    def embed(self, records: Sequence[Record]) -> list[Embedded]:
        import torch
        from mace.modules.utils import extract_invariant

        batch = self.batch([r.atoms for r in records])
        with torch.no_grad():
            out = self.model(batch.to_dict(), compute_force=False)
        feats = out["node_feats"]
        if self.invariants_only:
            feats = extract_invariant(feats, num_layers=self.n_layers, num_features=self.n_invariant, l_max=self.l_max)
        per_atom = feats[:, : sum(self.widths)][:, self.columns].detach().float().cpu().numpy()
        energies = (out["energy"].detach() * self.calc.energy_units_to_eV).cpu().numpy().reshape(-1)
        return per_structure(per_atom, [len(r.atoms) for r in records], energies)

    def info(self) -> dict[str, Any]:
        return {
            "layer_detail": (
                "MACECalculator.get_descriptors(invariants_only="
                f"{self.invariants_only}) columns {self.columns.start}:{self.columns.stop} "
                f"(layer widths {self.widths}, {self.n_layers} interaction layers)"
            ),
            "weights": str(self.weights),
            "head": self.calc.head,
            "dtype": self.calc.default_dtype,
            "energy_unit": "eV (total)",
        }


def build(spec: ModelSpec, **options: Any) -> MACEExtractor:
    return MACEExtractor(spec, **options)
