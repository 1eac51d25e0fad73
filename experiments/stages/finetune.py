"""Stages of seed 003's fine-tuning study (§III D, Figs. 4–6, S8; SI X): ``python experiments/run.py
+experiment=finetune``.

1. **Fine-tuning set** (:func:`fine_tuning_structures`, :func:`labelled_set`): rattled and strained supercells of
   the embedded crystals (ASE's dcdft; ``finetune.structures``), labelled with SevenNet-0's energies and forces in a
   torch process (``python -m extractors label``); or an extended XYZ file of one's own (``finetune.source``, e.g.
   LPS with its DFT labels, kept when ``finetune.labeller`` is null). Split once into train and test structures.
2. **Training** (:func:`train_strategies`): one process per strategy (``python -m extractors finetune``,
   :mod:`extractors.finetune`): ff, hf, ftl, htl and bespoke from CHGNet 0.3.0, checkpoints at the epochs in
   ``finetune.keep``; cached by content, resumed after an interruption, locked so two runs share one cache safely.
3. **Models** (:func:`checkpoint_models`): every checkpoint is a model id, ``chgnet-0.3.0~ff-e0004@head`` (strategy,
   epoch, layer), with its file in the ``weights`` option, so the extraction stage runs it like any model.
4. **Analysis** (:func:`reconstruction_study`, :func:`projections`): GFRE/LFRE among the final models and the
   pretrained one on the fine-tuning set's atom environments (Fig. 5); each checkpoint against its own final model
   (Fig. 6); PCovR of every model's structure features (mean and standard deviation of the atom features, seed 003
   SI X B) fitted on another dataset, with the fine-tuning set projected into it (Fig. S8).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cache import content_key, read_json, read_npz, write_json, write_npz
from experiments.stages.extraction import ExtractionError, run_child
from experiments.watchdog import beat

__all__ = [
    "FinetuneConfig",
    "checkpoint_models",
    "fine_tuning_structures",
    "labelled_background",
    "labelled_set",
    "projections",
    "reconstruction_study",
    "split_structures",
    "train_strategies",
]

_TRAINING = ("learning_rate", "batch_size", "energy_weight", "force_weight", "seed")


def _code() -> str:
    """The analysis code's digest and this module's: part of every analysis key, so older results are not reused."""
    import hashlib

    from experiments.stages.context import code_digest

    return code_digest() + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The ``finetune`` section of the config (conf/experiment/finetune.yaml documents every key)."""

    base: str = "chgnet-0.3.0"
    labeller: str | None = "7net-0"
    layer: str = "head"
    strategies: tuple[str, ...] = ("ff", "hf", "ftl", "htl", "bespoke")
    source: str | None = None
    structures: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    test_fraction: float = 0.2
    epochs: int = 30
    keep: tuple[int, ...] = (0, 1, 2, 4, 8, 12, 16, 20, 25)
    learning_rate: float = 1e-3
    batch_size: int = 8
    energy_weight: float = 1.0
    force_weight: float = 1.0
    seed: int = 0
    threads: int | None = None
    reconstruction: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    background: Mapping[str, Any] | None = None
    pcovr_alpha: float = 0.5

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> FinetuneConfig:
        from extractors.finetune import STRATEGIES

        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ValueError(f"finetune has unknown key(s) {unknown}; known: {sorted(fields)}.")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        out = cls(**values)
        bad = [s for s in out.strategies if s not in STRATEGIES]
        if bad or not out.strategies:
            raise ValueError(f"finetune.strategies={list(out.strategies)}: choose from {list(STRATEGIES)}.")
        if not 0 < out.test_fraction < 1:
            raise ValueError(f"finetune.test_fraction={out.test_fraction}: use a fraction in (0, 1), e.g. 0.2.")
        if int(out.epochs) < 1:
            raise ValueError(f"finetune.epochs={out.epochs}: train at least 1 epoch.")
        if out.source is None and out.labeller is None:
            raise ValueError("finetune.labeller=null needs finetune.source=FILE (extended XYZ with energies, forces).")
        return out

    @property
    def saved(self) -> tuple[int, ...]:
        """The checkpoint epochs: ``keep`` within range and the last epoch (as :class:`FinetuneSpec.saved`)."""
        return tuple(sorted({int(e) for e in self.keep if 0 <= int(e) <= self.epochs} | {int(self.epochs)}))


# --------------------------------------------------------------------------------------------------- data
def fine_tuning_structures(
    collections: Sequence[str] = ("dcdft",),
    *,
    copies: int = 2,
    min_atoms: int = 8,
    rattle: float = 0.05,
    strain: float = 0.03,
    seed: int = 0,
    n: int | None = None,
    elements: Sequence[str] | None = None,
) -> list[Any]:
    """Rattled and strained supercells of the periodic structures of ASE's ``collections``: each structure repeated
    to at least ``min_atoms`` atoms, then ``copies`` copies, each with a random symmetric strain (components uniform
    in ±``strain``) and Gaussian displacements (σ = ``rattle`` Å); ``info["id"]`` = ``collection/name/c<copy>``.
    ``elements``: keep only the structures made of these elements (a narrow chemistry, as a material-specific
    fine-tuning set is; None: all). ``n``: a seeded draw of that many of them (in their order), None for all."""
    import ase.collections

    if copies < 1 or min_atoms < 1 or rattle < 0 or strain < 0:
        raise ValueError("finetune.structures: copies and min_atoms must be ≥ 1, rattle and strain ≥ 0.")
    rng = np.random.default_rng(seed)
    out = []
    for name in collections:
        coll = getattr(ase.collections, str(name), None)
        if coll is None:
            raise ValueError(f"finetune.structures.collections: ASE has no collection {name!r} (e.g. dcdft).")
        for label, atoms in zip(coll.names, coll, strict=True):
            if not atoms.pbc.all() or (elements is not None and not set(atoms.symbols) <= set(elements)):
                continue
            reps = 1
            while len(atoms) * reps**3 < min_atoms:
                reps += 1
            base = atoms.repeat(reps)
            for c in range(copies):
                a = base.copy()
                eps = rng.uniform(-strain, strain, (3, 3))
                a.set_cell(a.cell[:] @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
                a.positions = a.positions + rng.normal(0.0, rattle, a.positions.shape)
                a.info = {"id": f"{name}/{label}/c{c}"}
                out.append(a)
    if not out:
        raise ValueError(
            f"finetune.structures: collections {list(collections)} hold no periodic structure made of elements "
            f"{elements}; widen them."
        )
    if n is not None:
        if not 4 <= int(n) <= len(out):
            raise ValueError(f"finetune.structures.n={n}: choose 4 … {len(out)} (or null for all).")
        out = [out[i] for i in np.sort(np.random.default_rng(seed).choice(len(out), int(n), replace=False))]
    return out


def _child(cmd: list[str], what: str, progress: bool) -> str:
    code, stdout, tail = run_child(cmd, progress=progress)
    if code != 0:
        said = [line[len("error: ") :] for line in tail if line.startswith("error: ")]
        if said:
            raise ExtractionError(f"{what}: {said[-1]}")
        raise ExtractionError(f"{what} exited with code {code}:\n" + "\n".join(tail))
    return stdout


def _labelled(
    name: str, params: Mapping[str, Any], write_raw: Any, fc: FinetuneConfig, cache_dir: Path, progress: bool
) -> tuple[Path, bool]:
    from extractors.base import versions

    spec = {**params, "labeller": fc.labeller, "versions": versions(("sevenn", "chgnet", "torch", "ase"))}
    root = cache_dir / "finetune" / f"{name}-{content_key('finetune-' + name, spec)}"
    out = root / "labelled.xyz"
    if out.exists():
        return out, True
    root.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "extractors",
        "label",
        "--model",
        str(fc.labeller),
        "--data",
        str(write_raw(root)),
        "--out",
        str(out),
        *(["--threads", str(fc.threads)] if fc.threads else []),
    ]
    _child(cmd, f"labelling the {name} structures with {fc.labeller}", progress)
    return out, False


def labelled_set(fc: FinetuneConfig, cache_dir: Path, *, progress: bool) -> tuple[Path, bool]:
    """The labelled fine-tuning set (extended XYZ with energies and forces) and whether it came from the cache."""
    import ase.io

    if fc.source is None:
        sc = dict(fc.structures)

        def write_raw(root: Path) -> Path:
            ase.io.write(str(root / "structures.xyz"), fine_tuning_structures(**sc), format="extxyz")
            return root / "structures.xyz"

        return _labelled("set", {"structures": sc}, write_raw, fc, cache_dir, progress)
    source = Path(fc.source).expanduser()
    if not source.is_file():
        raise ValueError(f"finetune.source={fc.source}: no such file; give an extended XYZ file of structures.")
    if fc.labeller is None:
        return source, True
    stat = source.stat()
    params = {"source": str(source.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns}
    return _labelled("set", params, lambda root: source, fc, cache_dir, progress)


def labelled_background(fc: FinetuneConfig, stage: Any, cache_dir: Path, *, progress: bool) -> tuple[Path, bool]:
    """The drawn background dataset (a :class:`~experiments.stages.dataset.DatasetStage`) written as extended XYZ
    with the labeller's energies (Fig. S8's PCovR target), ids kept in ``info['id']``."""
    import ase.io

    def write_raw(root: Path) -> Path:
        frames = []
        for r in stage.records():
            a = r.atoms.copy()
            a.calc, a.info = None, {"id": r.id}
            frames.append(a)
        ase.io.write(str(root / "structures.xyz"), frames, format="extxyz")
        return root / "structures.xyz"

    if fc.labeller is None:
        raise ValueError("Fig. S8 labels the background dataset: set finetune.labeller (e.g. 7net-0).")
    params = {"dataset": stage.key, "digest": stage.summary["digest"]}
    return _labelled("background", params, write_raw, fc, cache_dir, progress)


def split_structures(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) frame indices: a seeded draw of round(test_fraction · n) test structures (at least 2)."""
    n_test = max(2, round(test_fraction * n))
    if n - n_test < 2:
        raise ValueError(f"the fine-tuning set has {n} structures; it needs at least 4 (2 to train, 2 to test).")
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[n_test:]), sorted(int(i) for i in perm[:n_test])


# --------------------------------------------------------------------------------------------------- training
def train_strategies(
    fc: FinetuneConfig,
    data: Path,
    train: Sequence[int],
    test: Sequence[int],
    cache_dir: Path,
    entry: dict[str, Any],
    *,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """Train every strategy (cached by content; a rerun resumes an interrupted one); returns strategy → {``dir``,
    ``history``, ``checkpoints``: epoch → file}."""
    from extractors.base import versions
    from extractors.faults import exclusive_lock
    from extractors.registry import get_spec

    model_name = get_spec(fc.base).config.get("model_name")
    if get_spec(fc.base).family != "chgnet" or model_name is None:
        raise ValueError(f"finetune.base={fc.base!r}: the fine-tuning study trains a packaged CHGNet (chgnet-0.3.0).")
    stat = data.stat()
    out: dict[str, dict[str, Any]] = {}
    for name in fc.strategies:
        spec = {
            "data": str(data),
            "strategy": name,
            "train": list(train),
            "test": list(test),
            "epochs": fc.epochs,
            "keep": list(fc.saved),
            "base": model_name,
            **{k: getattr(fc, k) for k in _TRAINING},
        }
        key = content_key(
            "finetune",
            {"spec": spec, "data": [stat.st_size, stat.st_mtime_ns], "versions": versions(("chgnet", "torch"))},
        )
        root = cache_dir / "finetune" / f"{name}-{key}"
        history = root / "history.json"
        if not history.exists():
            root.mkdir(parents=True, exist_ok=True)
            with exclusive_lock(root / ".training.lock", wait=True, poll=beat):
                if not history.exists():
                    write_json(root / "spec.json", spec)
                    cmd = [
                        sys.executable,
                        "-m",
                        "extractors",
                        "finetune",
                        "--spec",
                        str(root / "spec.json"),
                        "--out",
                        str(root),
                        *(["--threads", str(fc.threads)] if fc.threads else []),
                        *([] if progress else ["--no-progress"]),
                    ]
                    _child(cmd, f"fine-tuning strategy {name}", progress)
                    entry["computed"] += 1
        else:
            entry["cached"] += 1
        hist = read_json(history)["history"]
        out[name] = {
            "dir": str(root),
            "history": hist,
            "checkpoints": {e: str(root / f"epoch_{e:04d}.pth.tar") for e in fc.saved},
        }
    return out


def checkpoint_models(fc: FinetuneConfig, trained: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The extraction stage's model set: the pretrained model and every checkpoint, ``BASE~STRATEGY-eNNNN@LAYER``
    with its file as the ``weights`` option; also ``pretrained``, ``final`` (strategy → id) and ``by_strategy``
    (strategy → [(epoch, id)])."""
    pretrained = f"{fc.base}@{fc.layer}"
    ids, options, by_strategy = [pretrained], {}, {}
    for name, run in trained.items():
        by_strategy[name] = []
        for epoch, path in sorted(run["checkpoints"].items()):
            mid = f"{fc.base}~{name}-e{int(epoch):04d}@{fc.layer}"
            ids.append(mid)
            options[mid] = {"weights": path}
            by_strategy[name].append((int(epoch), mid))
    final = {name: pairs[-1][1] for name, pairs in by_strategy.items()}
    return {"ids": ids, "options": options, "pretrained": pretrained, "final": final, "by_strategy": by_strategy}


# --------------------------------------------------------------------------------------------------- analysis
def reconstruction_study(
    aligned: Any, plan: Mapping[str, Any], rc: Mapping[str, Any], cache_dir: Path, entry: dict[str, Any]
) -> dict[str, Any]:
    """GFRE and LFRE on the atom environments of the fine-tuning set (seed 003 §III A conventions: ``rc.test``
    environments held out — 1,000 in the seed, at most half — all others train, features centred and scaled on all
    of them; LFRE with k = the smaller width, on at most ``rc.lfre_max_test`` test environments).

    Returns ``models`` (pretrained then each strategy's final), ``gfre``/``lfre`` (source → target matrices among
    them, Fig. 5) and per strategy ``trajectory`` lists over its checkpoints: ``epochs``, ``gfre_to_final``,
    ``lfre_to_final`` (Fig. 6), ``gfre_from_pretrained`` and ``gfre_to_pretrained`` (how far training moved away)."""
    from experiments.stages.reconstruction import environment_split
    from jaxalign.reconstruction import gfre, lfre

    models = [plan["pretrained"], *plan["final"].values()]
    embs = aligned.embeddings
    n_env = int(embs[models[0]].n_atoms.sum())
    test_size = int(rc.get("test", 1000))
    max_test = rc.get("lfre_max_test", 500)
    scale = str(rc.get("scale", "all"))
    seed = int(rc.get("seed", 0))
    train, test, lfre_test = environment_split(n_env, max_test, test_size=test_size, seed=seed)
    params = {
        "keys": aligned.keys,
        "ids": aligned.ids.tolist(),
        "rc": dict(rc),
        "plan": plan["by_strategy"],
        "code": _code(),
    }
    path = cache_dir / "finetune" / f"analysis-{content_key('finetune-analysis', params)}.json"
    if path.exists():
        entry["cached"] += 1
        return read_json(path)

    def x(m: str) -> np.ndarray:
        return np.asarray(embs[m].atom_features, dtype=np.float64)

    def k_of(a: str, b: str) -> int:
        return int(min(x(a).shape[1], x(b).shape[1], train.size - 1))

    def g(a: str, b: str) -> float:
        beat()
        return float(gfre(x(a), x(b), train_idx=train, test_idx=test, scale=scale))

    def lo(a: str, b: str) -> float:
        beat()
        return float(lfre(x(a), x(b), k=k_of(a, b), train_idx=train, test_idx=lfre_test, scale=scale))

    m = len(models)
    gm, lm = np.zeros((m, m)), np.zeros((m, m))
    for i, a in enumerate(models):
        for j, b in enumerate(models):
            if i != j:
                gm[i, j], lm[i, j] = g(a, b), lo(a, b)
    trajectories = {}
    for name, pairs in plan["by_strategy"].items():
        final = plan["final"][name]
        t: dict[str, list[float]] = {
            "epochs": [e for e, _ in pairs],
            "gfre_to_final": [],
            "lfre_to_final": [],
            "gfre_from_pretrained": [],
            "gfre_to_pretrained": [],
        }
        for _, mid in pairs:
            same = mid == final
            t["gfre_to_final"].append(0.0 if same else g(mid, final))
            t["lfre_to_final"].append(0.0 if same else lo(mid, final))
            t["gfre_from_pretrained"].append(g(plan["pretrained"], mid))
            t["gfre_to_pretrained"].append(g(mid, plan["pretrained"]))
        trajectories[name] = t
    result = {
        "models": models,
        "gfre": gm.tolist(),
        "lfre": lm.tolist(),
        "trajectories": trajectories,
        "n_environments": n_env,
        "n_train": int(train.size),
        "n_test": int(test.size),
        "n_lfre_test": int(lfre_test.size),
        "scale": scale,
    }
    write_json(path, result)
    entry["computed"] += 1
    return result


def _mean_std(emb: Any) -> np.ndarray:
    """Structure features: the mean and standard deviation of the atom features (seed 003 SI X B)."""
    from jaxalign.descriptors import cumulants

    kappa = np.asarray(cumulants(np.asarray(emb.atom_features, np.float64), emb.n_atoms, order=2), np.float64)
    return np.concatenate([kappa[:, 0], np.sqrt(np.maximum(kappa[:, 1], 0.0))], axis=1)


def _energy_per_atom(summary: Mapping[str, Any], ids: Sequence[str]) -> np.ndarray:
    rows = {r["id"]: r for r in summary["records"]}
    return np.array(
        [rows[i]["energy"] / rows[i]["n_atoms"] if rows[i].get("energy") is not None else np.nan for i in ids]
    )


def projections(
    background: Any,
    target: Any,
    models: Sequence[str],
    energies: tuple[Mapping[str, Any], Mapping[str, Any]],
    alpha: float,
    cache_dir: Path,
    entry: dict[str, Any],
) -> dict[str, np.ndarray]:
    """Seed 003 Fig. S8: per model, PCovR (mixing ``alpha``) of the ``background`` dataset's structure features
    (mean and standard deviation of the atom features), centred and scaled on the background, with its
    labelled energy per atom as target (standardised); the fine-tuning set (``target``) is projected into that
    space. Seed 003's target is the cohesive energy, which differs from the energy per atom by the isolated-atom
    energies — a composition trend that the map then shows too (a composition detrending would leave nothing of an
    elemental crystal's energy). ``energies``: the two datasets' summaries (their records' labelled energies).
    Returns ``bg:<m>``, ``ft:<m>`` (coordinates), ``bg_energy``, ``ft_energy`` (eV/atom)."""
    from jaxalign.preprocessing import center_scale_total_variance
    from jaxalign.projection import pcovr

    params = {
        "bg": background.keys,
        "ft": target.keys,
        "models": list(models),
        "alpha": alpha,
        "ids": [background.ids.tolist(), target.ids.tolist()],
        "code": _code(),
    }
    path = cache_dir / "finetune" / f"projections-{content_key('finetune-projections', params)}.npz"
    if path.exists():
        entry["cached"] += 1
        return read_npz(path)
    bg_ids, ft_ids = background.ids.tolist(), target.ids.tolist()
    e_bg, e_ft = _energy_per_atom(energies[0], bg_ids), _energy_per_atom(energies[1], ft_ids)
    if not (np.isfinite(e_bg).all() and np.isfinite(e_ft).all()):
        raise ValueError("Fig. S8 needs an energy for every structure of both datasets; set finetune.labeller.")
    y = ((e_bg - e_bg.mean()) / e_bg.std()).astype(np.float32)
    out: dict[str, np.ndarray] = {"bg_energy": e_bg, "ft_energy": e_ft}
    n_bg = len(bg_ids)
    for m in models:
        both = np.concatenate([_mean_std(background.embeddings[m]), _mean_std(target.embeddings[m])])
        xs = np.asarray(center_scale_total_variance(both, fit_rows=np.arange(n_bg)), dtype=np.float32)
        fit = pcovr(xs[:n_bg], y, alpha=alpha, n_components=2)
        out[f"bg:{m}"] = np.asarray(fit.transform(xs[:n_bg]), np.float32)
        out[f"ft:{m}"] = np.asarray(fit.transform(xs[n_bg:]), np.float32)
        entry["computed"] += 1
        beat()
    write_npz(path, out)
    return out
