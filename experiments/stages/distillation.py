"""Distillation (``python experiments/distill.py``): a small equinox student learns to align with a teacher's
embeddings through an alignment loss (seed 000 §3.2's regulariser), saving an orbax checkpoint every epoch; then
every checkpoint is compared with the final one and with the teacher (seed 003 §III D's trajectories).

* Input: each structure's features from a descriptor model (``distill.input``, e.g. SOAP), standardised; target:
  the teacher's pooled embedding (``distill.teacher``, e.g. CHGNet 0.3.0). Rows are split once (seeded) into train
  and test structures.
* Student: ``equinox.nn.MLP`` (``distill.hidden`` widths) from the input width to the teacher's width; optimiser
  optax Adam; loss one of :mod:`jaxalign.losses` (``distill.loss``) on shuffled minibatches.
* Checkpoints: ``orbax.checkpoint.CheckpointManager`` under ``cache_dir/distill/<content key>/``, step = epoch
  (0 = the untrained student), each holding the student's arrays, the optimiser state and the loss history. A run
  that finds checkpoints resumes after the last one, so an interrupted run, or a rerun with more epochs, trains only
  what is missing and ends with the same weights bit for bit (each epoch's shuffle is seeded by (seed, epoch)).
* Evaluation on the test structures, per checkpoint: CKA and CKNNA with the teacher and with the final student,
  GFRE and LFRE (checkpoint → final, final → checkpoint, checkpoint → teacher).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.watchdog import beat

__all__ = ["DistillConfig", "evaluate", "train"]

LOSS_NAMES = ("cka", "dcor", "soft_cknna", "reconstruction")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """The ``distill`` section of the config (see conf/distill.yaml)."""

    teacher: str = "chgnet-0.3.0"
    input: str = "soap"
    loss: str = "cka"
    hidden: tuple[int, ...] = (128, 128)
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    test_fraction: float = 0.25
    k: int = 10
    temperature: float = 0.1
    seed: int = 0

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> DistillConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ValueError(f"distill has unknown keys {unknown}; known: {sorted(fields)}.")
        out = cls(**{**dict(cfg), "hidden": tuple(int(h) for h in cfg.get("hidden", cls.hidden))})
        if out.loss not in LOSS_NAMES:
            raise ValueError(f"distill.loss must be one of {LOSS_NAMES}, got {out.loss!r}.")
        if out.epochs < 1 or out.batch_size < 4 or not 0.0 < out.test_fraction < 1.0 or out.learning_rate <= 0:
            raise ValueError(
                "distill needs epochs ≥ 1, batch_size ≥ 4, 0 < test_fraction < 1 and learning_rate > 0; got "
                f"{out.epochs}, {out.batch_size}, {out.test_fraction}, {out.learning_rate}."
            )
        return out

    def loss_fn(self) -> Any:
        from jaxalign import losses

        return {
            "cka": losses.cka_loss,
            "dcor": losses.dcor_loss,
            "soft_cknna": lambda a, b: losses.soft_cknna_loss(a, b, k=self.k, temperature=self.temperature),
            "reconstruction": lambda a, b: losses.reconstruction_loss(b, a),  # how well the student holds the teacher
        }[self.loss]


def _student(cfg: DistillConfig, d_in: int, d_out: int) -> Any:
    import equinox as eqx
    import jax

    hidden = cfg.hidden or (64,)
    if len(set(hidden)) != 1:
        raise ValueError(f"distill.hidden must repeat one width (equinox.nn.MLP), got {list(hidden)}.")
    return eqx.nn.MLP(d_in, d_out, width_size=hidden[0], depth=len(hidden), key=jax.random.PRNGKey(cfg.seed))


def _manager(directory: Path) -> Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.resolve(), options=options)


def train(
    x: np.ndarray, y: np.ndarray, train_rows: np.ndarray, cfg: DistillConfig, directory: Path, entry: dict[str, Any]
) -> list[int]:
    """Train the student on ``x[train_rows] → y[train_rows]`` with a checkpoint per epoch under ``directory``
    (resuming after the last one found); returns the checkpointed steps (0 … epochs)."""
    import equinox as eqx
    import jax
    import optax
    import orbax.checkpoint as ocp

    student = _student(cfg, x.shape[1], y.shape[1])
    params, static = eqx.partition(student, eqx.is_array)
    opt = optax.adam(cfg.learning_rate)
    opt_state = opt.init(params)
    history: dict[str, list[float]] = {"train_loss": []}
    loss_fn = cfg.loss_fn()
    mngr = _manager(directory)
    latest = mngr.latest_step()
    if latest is None:
        mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                              opt_state=ocp.args.StandardSave(opt_state),
                                              history=ocp.args.JsonSave(history)))  # fmt: skip
        latest = 0
    else:
        restored = mngr.restore(latest, args=ocp.args.Composite(params=ocp.args.StandardRestore(params),
                                                                 opt_state=ocp.args.StandardRestore(opt_state),
                                                                 history=ocp.args.JsonRestore()))  # fmt: skip
        params, opt_state, history = restored.params, restored.opt_state, dict(restored.history)
        entry["cached"] += latest

    @jax.jit
    def step(params: Any, opt_state: Any, xb: Any, yb: Any) -> tuple[Any, Any, Any]:
        def objective(p: Any) -> Any:
            model = eqx.combine(p, static)
            return loss_fn(jax.vmap(model)(xb), yb)

        value, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    n_train = train_rows.size
    size = min(cfg.batch_size, n_train)
    for epoch in range(latest + 1, cfg.epochs + 1):
        order = train_rows[np.random.default_rng([cfg.seed, epoch]).permutation(n_train)]
        values = []
        for start in range(0, n_train - size + 1, size):  # whole minibatches only: one compiled shape
            rows = order[start : start + size]
            params, opt_state, value = step(params, opt_state, x[rows], y[rows])
            values.append(float(value))
        history["train_loss"].append(float(np.mean(values)))
        mngr.save(epoch, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                 opt_state=ocp.args.StandardSave(opt_state),
                                                 history=ocp.args.JsonSave(history)))  # fmt: skip
        entry["computed"] += 1
        beat()
    mngr.wait_until_finished()
    return [int(s) for s in sorted(mngr.all_steps()) if s <= cfg.epochs]


def restore_student(directory: Path, step: int, cfg: DistillConfig, d_in: int, d_out: int) -> tuple[Any, list]:
    """The student saved at ``step`` and the loss history up to it."""
    import equinox as eqx
    import orbax.checkpoint as ocp

    params, static = eqx.partition(_student(cfg, d_in, d_out), eqx.is_array)
    restored = _manager(directory).restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(params), history=ocp.args.JsonRestore())
    )
    return eqx.combine(restored.params, static), list(restored.history["train_loss"])


def evaluate(
    x: np.ndarray, y: np.ndarray, test_rows: np.ndarray, steps: Sequence[int], cfg: DistillConfig, directory: Path
) -> dict[str, Any]:
    """Per checkpoint, on the test structures: alignment with the teacher and with the final student (CKA, CKNNA)
    and reconstruction errors (GFRE, LFRE) between checkpoint, final student and teacher."""
    import jax

    from jaxalign.metrics import cka, cknna
    from jaxalign.reconstruction import gfre, lfre

    embed = {}
    for s in steps:
        model, history = restore_student(directory, s, cfg, x.shape[1], y.shape[1])
        embed[s] = np.asarray(jax.vmap(model)(x[test_rows]), dtype=np.float64)
        beat()
    final, teacher = embed[steps[-1]], np.asarray(y[test_rows], dtype=np.float64)
    n = teacher.shape[0]
    k = max(2, min(cfg.k, n - 2))
    k_lfre = max(2, min(n // 2, min(final.shape[1], teacher.shape[1])))
    rows: dict[str, list[float]] = {key: [] for key in (
        "cka_teacher", "cknna_teacher", "cka_final", "cknna_final", "gfre_to_final", "gfre_from_final",
        "lfre_to_final", "gfre_to_teacher", "gfre_from_teacher")}  # fmt: skip

    def safe(fn: Any, *args: Any, **kw: Any) -> float:
        try:
            return float(fn(*args, **kw))
        except ValueError:  # e.g. the untrained student's constant output has no variance to scale
            return float("nan")

    for s in steps:
        z = embed[s]
        rows["cka_teacher"].append(safe(cka, z, teacher))
        rows["cknna_teacher"].append(safe(cknna, z, teacher, k=k))
        rows["cka_final"].append(safe(cka, z, final))
        rows["cknna_final"].append(safe(cknna, z, final, k=k))
        rows["gfre_to_final"].append(safe(gfre, z, final))
        rows["gfre_from_final"].append(safe(gfre, final, z))
        rows["lfre_to_final"].append(safe(lfre, z, final, k=k_lfre))
        rows["gfre_to_teacher"].append(safe(gfre, z, teacher))
        rows["gfre_from_teacher"].append(safe(gfre, teacher, z))
        beat()
    return {"steps": list(steps), "train_loss": [float("nan"), *history], "k": k, "k_lfre": k_lfre, **rows}
