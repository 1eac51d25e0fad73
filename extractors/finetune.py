"""Fine-tuning a pretrained CHGNet with seed 003's five strategies (§III D, Fig. 4), and labelling structures with a
potential: the torch side of ``python experiments/run.py +experiment=finetune``.

Strategies (seed 003 Fig. 4; the *head* is ``model.mlp``, CHGNet's readout MLP, 12,545 of CHGNet 0.3.0's 412,525
weights; the rest is the backbone):

=========  ===========================  ==================  ===========  ================
name       seed 003                     starting weights    head         trained
=========  ===========================  ==================  ===========  ================
ff         full fine-tuning (FF)        pretrained          pretrained   everything
hf         head-only fine-tuning (HF)   pretrained          pretrained   the head
ftl        full transfer learning       pretrained          new, random  everything
htl        head transfer learning       pretrained          new, random  the head
bespoke    bespoke model                random              random       everything
=========  ===========================  ==================  ===========  ================

CHGNet's composition model (the fixed MPtrj AtomRef) stays fixed in every strategy, as CHGNet's own trainer keeps
it. Random weights are PyTorch's default initialisation under ``torch.manual_seed(seed)``.

Training (:func:`finetune`): energy per atom and forces (eV/atom, eV/Å), CHGNet's ``CombinedLoss`` (MSE, weights
``energy_weight``:``force_weight``), Adam with a cosine learning-rate decay over the epochs, minibatches in a
seeded order per epoch (``numpy.random.default_rng([seed, epoch])``), so a resumed run is the uninterrupted one.
After every epoch the model, optimiser, schedule and history go to ``resume.pth.tar``; the epochs listed in
``keep`` (0 = the starting model) are also saved as ``epoch_<NNNN>.pth.tar`` in CHGNet's own file format
(``CHGNet.from_file``; the CHGNet extractor's ``weights=`` option), every file written atomically. A rerun continues
after the last finished epoch. ``history.json`` holds per epoch the mean training loss and the held-out energy and
force MAE and RMSE (seed 003 Table S6).

:func:`label` writes an extended XYZ file of structures with a potential's energies and forces (``calculator`` of
the model's family module: SevenNet-0 for the study).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extractors.faults import UsageError, atomic_target

__all__ = ["STRATEGIES", "FinetuneSpec", "Strategy", "finetune", "initial_model", "label"]


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One of seed 003's training strategies (Fig. 4)."""

    name: str
    title: str
    pretrained: bool  # start from the pretrained weights (else from random ones)
    new_head: bool  # replace the head by a randomly initialised one
    head_only: bool  # train the head only (the backbone stays fixed)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("ff", "full fine-tuning", pretrained=True, new_head=False, head_only=False),
        Strategy("hf", "head-only fine-tuning", pretrained=True, new_head=False, head_only=True),
        Strategy("ftl", "full transfer learning", pretrained=True, new_head=True, head_only=False),
        Strategy("htl", "head transfer learning", pretrained=True, new_head=True, head_only=True),
        Strategy("bespoke", "bespoke (random weights)", pretrained=False, new_head=True, head_only=False),
    )
}


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    """Everything one training run depends on (the JSON file ``python -m extractors finetune --spec`` reads).

    ``data``: extended XYZ with energies (eV) and forces (eV/Å) per frame; ``train``/``test``: frame indices.
    ``keep``: epochs saved as checkpoints (0 = before training); the last epoch is always kept.
    """

    data: str
    strategy: str
    train: tuple[int, ...]
    test: tuple[int, ...]
    epochs: int
    keep: tuple[int, ...] = (0,)
    base: str = "0.3.0"
    learning_rate: float = 1e-3
    batch_size: int = 16
    energy_weight: float = 1.0
    force_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UsageError(f"strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}.")
        if self.epochs < 1:
            raise UsageError(f"epochs must be at least 1, got {self.epochs}.")
        if not self.train:
            raise UsageError("no training structures: give the fine-tuning set more frames.")
        if set(self.train) & set(self.test):
            raise UsageError("train and test frames overlap; give disjoint index lists.")
        if self.learning_rate <= 0 or self.batch_size < 1:
            raise UsageError("learning_rate must be > 0 and batch_size >= 1.")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> FinetuneSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise UsageError(f"unknown fine-tuning setting(s) {unknown}; known: {sorted(fields)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})

    @property
    def saved(self) -> tuple[int, ...]:
        """The epochs written as checkpoints: ``keep`` within range, and the last epoch."""
        return tuple(sorted({e for e in self.keep if 0 <= e <= self.epochs} | {self.epochs}))


def _reset(module: Any) -> None:
    for layer in module.modules():
        if hasattr(layer, "reset_parameters") and layer is not module:
            layer.reset_parameters()


def initial_model(strategy: Strategy, base: str = "0.3.0", seed: int = 0) -> Any:
    """The CHGNet a strategy starts from, with ``requires_grad`` set on the weights it trains."""
    import torch
    from chgnet.model import CHGNet

    pretrained = CHGNet.load(model_name=base, use_device="cpu", verbose=False)
    torch.manual_seed(seed)
    if strategy.pretrained:
        model = pretrained
        if strategy.new_head:
            _reset(model.mlp)
    else:
        model = CHGNet(**pretrained.model_args)  # the same architecture and composition model, random weights
    for name, p in model.named_parameters():
        trainable = not strategy.head_only or name.startswith("mlp.")
        p.requires_grad = trainable and not name.startswith("composition_model.")
    return model


def _frames(path: str) -> list[Any]:
    import ase.io

    frames = ase.io.read(path, index=":")
    for i, a in enumerate(frames):
        if a.calc is None or "energy" not in a.calc.results or "forces" not in a.calc.results:
            raise UsageError(f"{path}, frame {i}: no energy and forces; label the structures first (`label`).")
    return frames


def _graphs(model: Any, frames: Sequence[Any]) -> list[tuple[Any, dict[str, Any]]]:
    import torch
    from pymatgen.io.ase import AseAtomsAdaptor

    out = []
    for i, atoms in enumerate(frames):
        graph = model.graph_converter(AseAtomsAdaptor.get_structure(atoms), graph_id=str(i))
        n = len(atoms)
        out.append(
            (
                graph,
                {
                    "e": torch.tensor(atoms.get_potential_energy() / n, dtype=torch.float32),
                    "f": torch.tensor(atoms.get_forces(), dtype=torch.float32),
                },
            )
        )
    return out


def _batch(items: Sequence[tuple[Any, dict[str, Any]]]) -> tuple[list[Any], dict[str, Any]]:
    import torch

    graphs = [g for g, _ in items]
    for g in graphs:
        g.atom_frac_coord.requires_grad = True
    return graphs, {"e": torch.stack([t["e"] for _, t in items]), "f": [t["f"] for _, t in items]}


def _errors(model: Any, items: Sequence[tuple[Any, dict[str, Any]]], batch_size: int) -> dict[str, float]:
    """Energy-per-atom and force MAE and RMSE (meV/atom, meV/Å) of ``model`` on ``items``."""
    import torch

    if not items:
        return {}
    de, df = [], []
    model.eval()
    for start in range(0, len(items), batch_size):
        graphs, targets = _batch(items[start : start + batch_size])
        pred = model(graphs, task="ef")
        de.append((pred["e"] - targets["e"]).detach().numpy())
        df.append((torch.cat(pred["f"]) - torch.cat(targets["f"])).detach().numpy().ravel())
    e, f = np.concatenate(de) * 1e3, np.concatenate(df) * 1e3
    return {
        "e_mae": float(np.abs(e).mean()),
        "e_rmse": float(np.sqrt((e**2).mean())),
        "f_mae": float(np.abs(f).mean()),
        "f_rmse": float(np.sqrt((f**2).mean())),
    }


def _save_model(model: Any, path: Path, **extra: Any) -> None:
    import torch

    with atomic_target(path) as tmp:
        torch.save({"model": model.as_dict(), **extra}, tmp)


def finetune(
    spec: FinetuneSpec, out: str | Path, *, progress: bool = True, max_epochs: int | None = None
) -> dict[str, Any]:
    """Train ``spec``'s strategy for ``spec.epochs`` epochs into ``out`` (resuming what is there); returns
    ``history`` (per epoch ``train_loss`` and the test errors of :func:`_errors`) and ``done``. ``max_epochs``
    stops after that many epochs in this call (``done`` False; a later call resumes). ``out/history.json`` is
    written when training is done."""
    import torch
    from chgnet.trainer.trainer import CombinedLoss

    out = Path(out)
    strategy = STRATEGIES[spec.strategy]
    model = initial_model(strategy, spec.base, spec.seed)
    frames = _frames(spec.data)
    bad = [i for i in (*spec.train, *spec.test) if not 0 <= i < len(frames)]
    if bad:
        raise UsageError(f"{spec.data} has {len(frames)} frames; indices {bad[:5]} are out of range.")
    items = _graphs(model, frames)
    train, test = [items[i] for i in spec.train], [items[i] for i in spec.test]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=spec.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
    loss_fn = CombinedLoss(
        target_str="ef", criterion="MSE", energy_loss_ratio=spec.energy_weight, force_loss_ratio=spec.force_weight
    )
    resume = out / "resume.pth.tar"
    history: list[dict[str, Any]] = []
    if resume.exists():
        state = torch.load(resume, map_location="cpu", weights_only=False)
        if state["spec"] != dataclasses.asdict(spec):
            raise UsageError(f"{resume} belongs to another fine-tuning run; remove {out} or choose another output.")
        model.load_state_dict(state["model"]["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        history = list(state["history"])
    else:
        history = [{"epoch": 0, "train_loss": math.nan, **_errors(model, test, spec.batch_size)}]
        if 0 in spec.saved:
            _save_model(model, out / "epoch_0000.pth.tar", epoch=0, strategy=spec.strategy)
    start = history[-1]["epoch"] + 1
    stop = spec.epochs if max_epochs is None else min(spec.epochs, start - 1 + int(max_epochs))
    for epoch in range(start, stop + 1):
        model.train()
        order = np.random.default_rng([spec.seed, epoch]).permutation(len(train))
        total = 0.0
        for b in range(0, len(order), spec.batch_size):
            graphs, targets = _batch([train[i] for i in order[b : b + spec.batch_size]])
            loss = loss_fn(targets, model(graphs, task="ef"))["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(graphs)
        schedule.step()
        history.append({"epoch": epoch, "train_loss": total / len(train), **_errors(model, test, spec.batch_size)})
        if epoch in spec.saved:
            _save_model(model, out / f"epoch_{epoch:04d}.pth.tar", epoch=epoch, strategy=spec.strategy)
        _save_model(
            model,
            resume,
            optimizer=optimizer.state_dict(),
            schedule=schedule.state_dict(),
            history=history,
            spec=dataclasses.asdict(spec),
        )
        if progress:
            h = history[-1]
            print(
                f"[finetune] {spec.strategy} epoch {epoch}/{spec.epochs}: loss {h['train_loss']:.4g}, test energy "
                f"MAE {h.get('e_mae', math.nan):.1f} meV/atom, force MAE {h.get('f_mae', math.nan):.0f} meV/Å",
                file=sys.stderr,
            )
    if stop < spec.epochs:
        return {"history": history, "done": False}
    with atomic_target(out / "history.json") as tmp:
        tmp.write_text(json.dumps({"spec": dataclasses.asdict(spec), "history": history}, indent=1) + "\n")
    return {"history": history, "done": True}


def label(model_id: str, data: str | Path, out: str | Path, *, device: str = "cpu") -> Path:
    """Write ``data``'s frames to the extended XYZ file ``out`` with ``model_id``'s energy (eV) and forces (eV/Å)
    on each: the ``calculator`` (an ASE calculator) of the model's family module. A frame the calculator refuses
    (``ValueError``/``KeyError``, e.g. an element outside its type map) is left out and listed, with the reason,
    in ``<out>.skipped.json``; none labelled is an error."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from extractors.registry import _module, get_spec

    spec = get_spec(model_id)
    make = getattr(_module(spec.family), "calculator", None)
    if make is None:
        raise UsageError(f"model {model_id!r} has no ASE calculator to label with; use 7net-0 or chgnet-0.3.0.")
    calc = make(spec, device=device)
    frames = ase.io.read(str(data), index=":")
    labelled, skipped = [], []
    for i, atoms in enumerate(frames):
        atoms = atoms.copy()
        try:
            atoms.calc = calc  # SevenNet checks the elements here
            energy, forces = float(atoms.get_potential_energy()), np.asarray(atoms.get_forces())
        except (ValueError, KeyError) as err:
            skipped.append({"frame": i, "id": str(atoms.info.get("id", i)), "reason": " ".join(str(err).split())[:300]})
            continue
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        labelled.append(atoms)
    if not labelled:
        raise UsageError(f"{model_id} labelled none of the {len(frames)} frames of {data}: {skipped[0]['reason']}")
    if skipped:
        print(
            f"[label] {model_id} left out {len(skipped)} of {len(frames)} frames, e.g. {skipped[0]['id']}: "
            f"{skipped[0]['reason'][:120]}",
            file=sys.stderr,
        )
    out = Path(out)
    with atomic_target(out.with_name(out.name + ".skipped.json")) as tmp:
        tmp.write_text(json.dumps(skipped, indent=1) + "\n")
    with atomic_target(out) as tmp:
        ase.io.write(str(tmp), labelled, format="extxyz")
    return out
