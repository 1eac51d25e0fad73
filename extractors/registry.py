"""Model registry: model id → (family module, config, status).

Each family is one module ``extractors.models.<family>`` exposing ``SPECS`` (a tuple of
:class:`~extractors.base.ModelSpec`) and ``build(spec, **options)``. Family modules import their heavy packages
only inside ``build``, so listing the registry costs nothing. A new family (MACE, Orb, fairchem, …) is added by
writing its module in ``extractors/models/``: :data:`FAMILIES` discovers it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import pkgutil
import sys
from typing import Any

from extractors import models
from extractors.base import WEIGHTS_PATH, Extractor, ModelSpec
from extractors.faults import UsageError, check_device

__all__ = [
    "FAMILIES",
    "UNAVAILABLE",
    "available",
    "base_id",
    "build_extractor",
    "environment",
    "get_spec",
    "layers",
    "specs",
    "split_layer",
]

#: Family modules listed first, in this order; any other module in extractors/models/ follows alphabetically.
_FIRST = ("chgnet", "sevennet", "minilm", "soap", "morgan", "baseline")


def _discover() -> tuple[str, ...]:
    found = {m.name for m in pkgutil.iter_modules(models.__path__) if not m.name.startswith("_")}
    return tuple(f for f in _FIRST if f in found) + tuple(sorted(found - set(_FIRST)))


FAMILIES: tuple[str, ...] = _discover()

#: Models of the seeds' tables that cannot be registered here, id → (what it is, why): ``python -m extractors list``
#: shows them with status ``unavailable``; asking for one is an error giving the reason.
UNAVAILABLE: dict[str, tuple[str, str]] = {
    "geom2vec": (
        "Geom2Vec (Pengmei et al.): TorchMD-Net equivariant transformer pretrained on OrbNet Denali (seed 000 Table 1)",
        "not on the package index (`pip install geom2vec`: No matching distribution found for geom2vec); its code "
        "and checkpoints are on GitHub only (zpengmei/geom2vec), out of this machine's reach",
    ),
}


def _module(family: str) -> Any:
    return importlib.import_module(f"extractors.models.{family}")


def specs() -> dict[str, ModelSpec]:
    """Every registered model, by id, in family order."""
    out: dict[str, ModelSpec] = {}
    for family in FAMILIES:
        for spec in _module(family).SPECS:
            if spec.id in out:
                raise RuntimeError(f"model id {spec.id!r} is registered twice ({out[spec.id].family}, {family}).")
            out[spec.id] = spec
    return out


def split_layer(model_id: str) -> tuple[str, str | None]:
    """A run's model id and the layer it names: ``"7net-0@2_equivariant_gate"`` → ``("7net-0",
    "2_equivariant_gate")``, ``"7net-0"`` → ``("7net-0", None)``. The layer in the id lets one run hold several
    layers of one model (seed 003 Figs. S3, S9: backbone vs last layer); each family documents its layers."""
    base, sep, layer = str(model_id).partition("@")
    if sep and (not base or not layer):
        raise UsageError(f"model id {model_id!r}: write MODEL@LAYER with both parts, e.g. 7net-0@2_equivariant_gate.")
    return base, (layer if sep else None)


def base_id(model_id: str) -> str:
    """The registered model behind a run's id: ``"chgnet-0.3.0~ff-e0010@head"`` → ``"chgnet-0.3.0"`` (a layer
    after ``@``, a checkpoint after ``~``)."""
    return split_layer(model_id)[0].partition("~")[0]


def get_spec(model: str) -> ModelSpec:
    """The spec of ``model``; ValueError listing the known ids otherwise.

    ``MODEL~TAG`` is ``MODEL``'s architecture with other weights — a checkpoint, e.g. ``chgnet-0.3.0~ff-e0010``
    (full fine-tuning, epoch 10; :mod:`extractors.finetune`). ``TAG`` only names them; the file comes in the
    model's ``weights`` option, so the spec's status is ``needs weights path``."""
    table = specs()
    base, sep, tag = model.partition("~")
    if base in UNAVAILABLE:
        raise UsageError(f"model {base!r} is not available: {UNAVAILABLE[base][1]}.")
    if base not in table or (sep and not tag):
        raise UsageError(
            f"unknown model {model!r}; known models: {', '.join(table)} (see `python -m extractors list`; other "
            "weights of a model are MODEL~TAG with the weights option)."
        )
    if not sep:
        return table[model]
    spec = table[base]
    return dataclasses.replace(spec, id=model, status=WEIGHTS_PATH, description=f"{spec.description}, weights {tag}")


def layers(model: str) -> dict[str, str]:
    """The layers ``model`` offers (a run's id, ``MODEL@LAYER`` or ``MODEL~TAG`` included): its family module's
    ``LAYERS``, layer name or pattern → what it reads; ``last``, the first, is the default. UsageError for an
    unknown model."""
    return dict(_module(get_spec(base_id(model)).family).LAYERS)


def available(spec: ModelSpec) -> list[str]:
    """The packages of ``spec`` missing from this interpreter (empty when it can run here)."""
    missing = []
    for name in spec.packages:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def environment(spec: ModelSpec) -> str | None:
    """The declared environment (:mod:`extractors.envs`) ``spec`` runs in when its packages are missing here: its
    config's ``env`` (e.g. ``fairchem-v1`` for EquiformerV2), else its family's when the family declares one, else
    None."""
    from extractors.envs import families

    name = spec.config.get("env") or spec.family
    return name if name in families() else None


def build_extractor(model: str, **options: Any) -> Extractor:
    """Load ``model`` (its weights, tokenizer, …) and return its extractor; ``options`` go to the family's
    ``build`` (e.g. ``layer``, ``device``, SOAP ``species``).

    Checked before anything loads, each a one-line :class:`~extractors.faults.UsageError`: an unknown model, its
    packages missing here and a ``device`` this torch cannot use; a weights file that does not exist is one too."""
    spec = get_spec(model)
    missing = available(spec)
    if missing:
        raise UsageError(
            f"model {model!r} needs the package(s) {missing}, missing from this interpreter; install them or run "
            "under an interpreter that has them with --python /path/to/env/bin/python."
        )
    check_device(options.get("device"))
    with contextlib.redirect_stdout(sys.stderr):  # keep load chatter off stdout (the CLI prints the file path there)
        try:
            return _module(spec.family).build(spec, **options)
        except FileNotFoundError as err:  # a weights file or directory given by the user (--opt weights=...)
            raise UsageError(f"model {model!r}: {err}; check the path given in its options.") from None
