"""Stages 3–6: model × model matrices, intrinsic dimension, feature reconstruction, energy errors, structure maps.

Every stage is cached under a content key made of the compared models' extraction keys, the common structure ids,
the preprocessing, the library versions and the stage's own section of ``analysis``; its items (models, model pairs
of the reconstruction, units of the matrix sweep) are checkpointed as they finish, so a killed run resumes after the
last saved item and a rerun reads the finished result. The alignment matrices come from one
:func:`jaxalign.sweep.pairwise_matrices` call (per-model neighbour graphs, then passes over row tiles that serve
every pair at once), journaled under ``<cache>/analysis/sweep``.

Matrix conventions: entry [i, j] is metric(model i, model j); for the asymmetric measures the row is the source:
information imbalance [i, j] = Δ(i → j), reconstruction errors [i, j] = error of reconstructing j from i.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.cache import Checkpoint, content_key, read_json, read_npz, write_json, write_npz
from experiments.features import Aligned, compact, compact_width, preprocess
from experiments.watchdog import beat

__all__ = [
    "Context",
    "InjectedFailure",
    "alignment_matrices",
    "energy_errors",
    "intrinsic_dimensions",
    "reconstruction",
    "structure_maps",
]


class InjectedFailure(RuntimeError):
    """Raised by ``debug.fail_after_items`` (tests kill a run mid-stage this way)."""


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("jax", "jaxlib", "numpy", "jaxalign"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@functools.cache
def code_digest() -> str:
    """sha256 of the analysis code (jaxalign without its plots, and this package's analysis modules): part of every
    analysis key, so results computed by older code are never reused."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    files = [p for p in (root / "jaxalign").rglob("*.py") if "plots" not in p.parts]
    files += [root / "experiments" / "analysis.py", root / "experiments" / "features.py"]
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False
    )


@dataclasses.dataclass
class Context:
    """What every analysis stage needs: the aligned models, the ``analysis`` config, where to cache, and the
    failure-injection counter."""

    aligned: Aligned
    cfg: Mapping[str, Any]
    root: Path
    progress: bool = True
    fail_after: int | None = None
    computed: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.base = {
            "models": list(zip(self.aligned.models, self.aligned.keys, strict=True)),
            "ids": _ids_digest(self.aligned.ids),
            "preprocessing": list(self.cfg.get("preprocessing") or []),
            "versions": _versions(),
            "code": code_digest(),
        }
        self._features: dict[str, np.ndarray] = {}
        self._compact: dict[str, np.ndarray] = {}

    @property
    def models(self) -> list[str]:
        return self.aligned.models

    @property
    def n(self) -> int:
        return self.aligned.n

    def key(self, stage: str, params: Any) -> str:
        return content_key(stage, {"base": self.base, "params": params})

    def tick(self) -> None:
        self.computed += 1
        if self.fail_after is not None and self.computed >= self.fail_after:
            raise InjectedFailure(f"debug.fail_after_items={self.fail_after}: stopping after {self.computed} items")

    # -- features ------------------------------------------------------------------------------------------------
    def features(self, model: str) -> np.ndarray:
        """Pooled features after ``analysis.preprocessing`` (float32)."""
        if model not in self._features:
            emb = self.aligned.embeddings[model]
            self._features[model] = preprocess(emb.features, self.cfg.get("preprocessing") or [])
        return self._features[model]

    def compact_features(self, model: str) -> np.ndarray:
        """:meth:`features` compacted to the width shared by every model (see :func:`experiments.features.compact`)."""
        if model not in self._compact:
            dims = [self.aligned.embeddings[m].features.shape[1] for m in self.models]
            self._compact[model] = compact(self.features(model), compact_width(self.n, dims))
        return self._compact[model]

    # -- item runner ---------------------------------------------------------------------------------------------
    def run_items(
        self,
        name: str,
        key: str,
        items: Sequence[tuple[str, Callable[[], Any]]],
        entry: dict[str, Any],
    ) -> dict[str, Any]:
        """Compute each ``(item, thunk)`` not yet saved under ``key``; returns item → value. The finished result is
        written to ``<root>/<name>-<key>.json`` and a rerun reads it back."""
        final = self.root / f"{name}-{key}.json"
        if final.exists():
            entry["cached"] += len(items)
            return read_json(final)["values"]
        partial = self.root / f"{name}-{key}.partial.json"
        with Checkpoint(partial, key) as ck:
            done = sum(item in ck for item, _ in items)
            bar = _progress(len(items), done, name, self.progress)
            try:
                for item, thunk in items:
                    if item in ck:
                        entry["cached"] += 1
                        continue
                    ck.put(item, _plain(thunk()))
                    entry["computed"] += 1
                    bar.update(1)
                    beat()
                    self.tick()
            finally:
                bar.close()
            values = {item: ck.get(item) for item, _ in items}
        write_json(final, {"key": key, "values": values})
        partial.unlink(missing_ok=True)
        return values


def _ids_digest(ids: np.ndarray) -> str:
    from jaxalign.io import structure_ids_sha256

    return structure_ids_sha256(ids.tolist())


def _plain(value: Any) -> Any:
    """jax/numpy scalars and arrays → JSON-able floats and lists (NaN stays NaN)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    arr = np.asarray(value)
    if arr.ndim == 0:
        return float(arr) if arr.dtype.kind == "f" else arr.item()
    return arr.astype(float).tolist() if arr.dtype.kind == "f" else arr.tolist()


def _matrix(values: Mapping[str, Any], names: Sequence[str], field: str, *, symmetric: bool, prefix: str = "") -> Any:
    m = len(names)
    out = np.full((m, m), np.nan)
    for i in range(m):
        for j in range(m):
            item = f"{prefix}{names[i]}|{names[j]}"
            if item in values:
                out[i, j] = values[item][field] if field else values[item]
                if symmetric:
                    out[j, i] = out[i, j]
    return out


# --------------------------------------------------------------------------------------------------- graphs
def cknna_ks(cfg: Mapping[str, Any], n: int) -> tuple[list[int], bool]:
    """The k sweep and whether k = N − 1 is added. Sweep values above N/2 are dropped: there the masks cover most
    of the kernel and the masked unbiased HSIC of a few hundred samples swings wildly (the seeds use k ≤ N/20);
    the configured ``cknna.k`` is kept whenever k ≤ N − 2."""
    ck = cfg.get("cknna") or {}
    main = int(ck.get("k", 25))
    ks = {int(k) for k in (ck.get("k_sweep") or []) if 2 <= int(k) <= n // 2}
    ks = sorted(ks | ({main} if 2 <= main <= n - 2 else set()))
    full = bool(ck.get("full_k", True)) and n <= int(ck.get("full_k_max_n", 5000))
    return ks, full


def _graphs(ctx: Context, entry: dict[str, Any], *, ip: bool) -> dict[str, tuple[Any, Any]]:
    """Per model: the Euclidean graph (intrinsic dimension) and, with ``ip``, the inner-product graph at k = N − 1
    (the report's CKNNA(k = N − 1) check); cached as .npz."""
    from jaxalign import NeighborGraph, knn

    n = ctx.n
    ii_ks = [int(k) for k in (ctx.cfg.get("information_imbalance") or {}).get("k", [1])]
    id_cfg = ctx.cfg.get("intrinsic_dimension") or {}
    k_base = max([*ii_ks, int(id_cfg.get("mle_k", 20)), 2])
    out = {}
    for model in ctx.models:
        # identical rows (e.g. one fingerprint for a molecule and its strained copy) must be skipped to reach k
        # distinct neighbours: widen the Euclidean graph by the largest multiplicity
        _, counts = np.unique(ctx.compact_features(model), axis=0, return_counts=True)
        k_eu = min(n - 1, (k_base + 1) * int(counts.max()) + int(id_cfg.get("duplicate_margin", 8)))
        k_ip = n - 1 if ip else 0
        key = ctx.key("graphs", {"model": model, "k_ip": k_ip, "k_eu": k_eu})
        path = ctx.root / "graphs" / f"{model}-{key}.npz"
        if path.exists():
            z = read_npz(path)
            entry["cached"] += 1
        else:
            x = ctx.compact_features(model)
            ge = knn(x, k_eu, metric="euclidean")
            z = {"eu_i": ge.indices, "eu_v": ge.values}
            if k_ip:
                gi = knn(x, k_ip, metric="ip")
                z.update(ip_i=gi.indices, ip_v=gi.values)
            write_npz(path, z)
            entry["computed"] += 1
            beat()
        ip_graph = NeighborGraph(z["ip_i"], z["ip_v"], "ip", True) if "ip_i" in z else None
        out[model] = (ip_graph, NeighborGraph(z["eu_i"], z["eu_v"], "euclidean", True))
    return out


# --------------------------------------------------------------------------------------------------- matrices
class _SweepProgress:
    """One progress bar per pass of the sweep; counts computed and cached units, beats the watchdog and ticks the
    failure-injection counter after each computed unit."""

    def __init__(self, ctx: Context, entry: dict[str, Any]) -> None:
        self.ctx, self.entry, self.bars = ctx, entry, {}

    def __call__(self, label: str, done: int, total: int, cached: bool) -> None:
        if label not in self.bars:
            self.bars[label] = _progress(total, 0, f"matrices: {label}", self.ctx.progress)
        self.bars[label].update(1)
        self.entry["cached" if cached else "computed"] += 1
        if not cached:
            beat()
            self.ctx.tick()
        if done == total:
            self.bars.pop(label).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def alignment_matrices(ctx: Context, entry: dict[str, Any]) -> dict[str, Any]:
    """CKNNA (k and the k sweep), mutual kNN, CKA, unbiased CKA, dCor and information imbalance for every model
    pair, from one :func:`jaxalign.sweep.pairwise_matrices` call whose units are journaled under the cache (per-model
    graphs keyed by the model's features, distance-pass units by the model set). CKNNA(k = N − 1) is computed
    separately from the inner-product graphs alone (the masked sparse sums), for the report's check against unbiased
    CKA. Returns name → (M, M) matrix, plus ``cknna_k`` (the sweep's ks) and ``ii_k``."""
    from jaxalign.metrics import cknna
    from jaxalign.sweep import pairwise_matrices

    cfg, n, names = ctx.cfg, ctx.n, ctx.models
    ks, full = cknna_ks(cfg, n)
    k_mutual = min(int((cfg.get("mutual_knn") or {}).get("k", 25)), n - 1)
    ii_ks = [k for k in (int(k) for k in (cfg.get("information_imbalance") or {}).get("k", [1])) if 1 <= k <= n - 1]
    exponent = float((cfg.get("dcor") or {}).get("exponent", 1.0))
    params = {"ks": ks, "full": full, "mutual": k_mutual, "ii": ii_ks, "exponent": exponent}
    final = ctx.root / f"matrices-{ctx.key('matrices', params)}.npz"
    m = len(names)
    if final.exists():
        stored = read_npz(final)
        entry["cached"] += 1
    else:
        progress = _SweepProgress(ctx, entry)
        try:
            swept = pairwise_matrices(
                {name: ctx.compact_features(name) for name in names},
                metrics=("cknna", "mutual_knn", "cka", "unbiased_cka", "dcor", "information_imbalance")
                if ks
                else ("mutual_knn", "cka", "unbiased_cka", "dcor", "information_imbalance"),
                k=ks or k_mutual,
                mutual_k=k_mutual,
                ii_k=ii_ks,
                exponent=exponent,
                journal=ctx.root / "sweep",
                progress=progress,
            )
        finally:
            progress.close()
        stored = {f"cknna@{k}": swept[f"cknna@{k}"] for k in ks}
        stored.update({name: swept[name] for name in ("mutual_knn", "cka", "unbiased_cka", "dcor")})
        stored.update({f"ii@{k}": swept[f"information_imbalance@{k}"] for k in ii_ks})
        if full:
            graphs = _graphs(ctx, entry, ip=True)
            mat = np.full((m, m), np.nan)
            for i in range(m):
                for j in range(m):
                    gi, gj = graphs[names[i]][0], graphs[names[j]][0]
                    mat[i, j] = float(cknna(None, None, k=n - 1, graph_x=gi, graph_y=gj))
            stored["cknna@full"] = mat
        write_npz(final, stored)
    result: dict[str, Any] = {"cknna_k": ks, "ii_k": ii_ks, "full_k": full, "n": n, **stored}
    k_main = int((cfg.get("cknna") or {}).get("k", 25))
    result["cknna"] = result.get(f"cknna@{k_main}", result[f"cknna@{ks[-1]}"] if ks else result["cknna@full"])
    result["cknna_k_main"] = k_main if f"cknna@{k_main}" in result else (ks[-1] if ks else n - 1)
    entry["summary"] = (
        f"{m} models × {m}, N = {n}: CKNNA (k = {result['cknna_k_main']}, sweep {ks}{' + N−1' if full else ''}), "
        f"mutual kNN, CKA, unbiased CKA, dCor, Δ (k = {ii_ks})"
    )
    return result


# --------------------------------------------------------------------------------------------------- significance
#: The matrices the permutation null covers, as the sweep names them → as the app's matrices name them.
NULL_METRICS = {"cknna": "cknna", "mutual_knn": "mutual_knn", "cka": "cka", "unbiased_cka": "unbiased_cka",
                "dcor": "dcor"}  # fmt: skip


def significance(ctx: Context, mats: Mapping[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Which cells of the matrices exceed chance: :func:`jaxalign.statistics.permutation_null` (config
    ``significance``: ``draws`` permutations on a seeded subsample of ``rows`` structures, level ``alpha``) for the
    configured ``metrics`` (default all) — CKNNA at the main k, mutual kNN, CKA, unbiased CKA, dCor, and information
    imbalance at every configured k. Returns the subsample size, draws, alpha and per matrix key the (M, M)
    p-values, null means and standard deviations (on the subsample; the observed values there too), cached as
    .npz."""
    from jaxalign.statistics import permutation_null

    cfg = ctx.cfg.get("significance") or {}
    draws, alpha, seed = int(cfg.get("draws", 49)), float(cfg.get("alpha", 0.05)), int(cfg.get("seed", 0))
    rows = min(int(cfg.get("rows", 1000)), ctx.n)
    wanted = [str(name) for name in cfg.get("metrics", [*NULL_METRICS, "information_imbalance"])]
    unknown = [name for name in wanted if name not in (*NULL_METRICS, "information_imbalance")]
    if unknown:
        raise ValueError(
            f"analysis.significance.metrics has unknown {unknown}; choose from "
            f"{[*NULL_METRICS, 'information_imbalance']}."
        )
    null_metrics = tuple(name for name in NULL_METRICS if name in wanted)
    ii_ks = [k for k in mats["ii_k"] if k <= rows - 1] if "information_imbalance" in wanted else []
    k = min(int(mats["cknna_k_main"]), rows - 2)
    k_mutual = min(int((ctx.cfg.get("mutual_knn") or {}).get("k", 25)), rows - 1)
    exponent = float((ctx.cfg.get("dcor") or {}).get("exponent", 1.0))
    params = {"draws": draws, "rows": rows, "seed": seed, "k": k, "mutual": k_mutual, "ii": ii_ks, "p": exponent,
              "metrics": list(null_metrics)}  # fmt: skip
    path = ctx.root / f"significance-{ctx.key('significance', params)}.npz"
    if path.exists():
        stored = read_npz(path)
        entry["cached"] += 1
    else:

        def progress(label: str, done: int, total: int, cached: bool) -> None:
            beat()

        null = permutation_null(
            {name: ctx.compact_features(name) for name in ctx.models},
            draws=draws,
            rows=rows,
            seed=seed,
            metrics=null_metrics + (("information_imbalance",) if ii_ks else ()),
            k=k,
            mutual_k=k_mutual,
            ii_k=ii_ks or (1,),
            exponent=exponent,
            progress=progress,
        )
        keys = {name: NULL_METRICS[name] for name in null_metrics}
        keys.update({f"information_imbalance@{kk}": f"ii@{kk}" for kk in ii_ks})
        stored = {}
        for name, key in keys.items():
            res = null[name]
            stored.update({f"{key}:p": res.p_value, f"{key}:mean": res.mean, f"{key}:std": res.std})
            stored[f"{key}:observed"] = res.observed
        write_npz(path, stored)
        entry["computed"] += 1
    keys = sorted({name.split(":")[0] for name in stored})
    m = len(ctx.models)
    off = ~np.eye(m, dtype=bool)
    counts = {key: int((stored[f"{key}:p"][off] <= alpha).sum()) for key in keys}
    entry["summary"] = (
        f"{draws} permutations on {rows} structures, alpha = {alpha}: significant off-diagonal cells "
        + ", ".join(f"{key} {c}/{m * (m - 1)}" for key, c in counts.items())
    )
    out: dict[str, Any] = {"draws": draws, "rows": rows, "alpha": alpha, "k": k, "keys": keys}
    out.update({name: np.asarray(v) for name, v in stored.items()})
    return out


# --------------------------------------------------------------------------------------------------- intrinsic dim
def intrinsic_dimensions(ctx: Context, entry: dict[str, Any]) -> dict[str, Any]:
    """TwoNN and MLE per model, plus per-point Levina–Bickel estimates (for the violins)."""
    import warnings

    import jax

    from jaxalign.metrics import mle_id, twonn
    from jaxalign.metrics.intrinsic_dimension import distinct_neighbor_distances

    id_cfg = ctx.cfg.get("intrinsic_dimension") or {}
    k = min(int(id_cfg.get("mle_k", 20)), ctx.n - 2)
    graphs = _graphs(ctx, {"computed": 0, "cached": 0}, ip=False)
    distinct = jax.jit(distinct_neighbor_distances, static_argnames=("k",))

    def one(model: str) -> dict[str, Any]:
        _, ge = graphs[model]
        x = ctx.compact_features(model)
        has_dup = bool((np.asarray(ge.values[:, 0]) == 0).any())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d2 = twonn(x) if has_dup else twonn(x, graph=ge)  # with x: log ratios from exact differences
            dm = mle_id(x, k=k) if has_dup else mle_id(x, k=k, graph=ge)
        dist, keep, complete = (np.asarray(a) for a in distinct(ge.indices, ge.values, k=k))
        with np.errstate(divide="ignore", invalid="ignore"):
            local = (k - 1) / np.log(dist[:, -1:] / dist).sum(1)
        local = np.where(complete, local, np.nan)[keep]
        return {"twonn": d2, "mle": dm, "local_mle": local, "n_distinct": int(keep.sum())}

    items = [(m, functools.partial(one, m)) for m in ctx.models]
    values = ctx.run_items(
        "intrinsic_dimension", ctx.key("intrinsic_dimension", {"k": k, "id": dict(id_cfg)}), items, entry
    )
    entry["summary"] = "TwoNN " + ", ".join(f"{m} {values[m]['twonn']:.1f}" for m in ctx.models)
    return {"k": k, **{m: values[m] for m in ctx.models}}


# --------------------------------------------------------------------------------------------------- reconstruction
def reconstruction_models(ctx: Context) -> list[str]:
    """Models entering the reconstruction stage: ``analysis.reconstruction.models`` = ``mlip`` (atomistic models
    with an energy head), ``atomistic`` (every model with per-atom features) or an explicit list."""
    sel = (ctx.cfg.get("reconstruction") or {}).get("models", "mlip")
    atomistic = [m for m in ctx.models if ctx.aligned.embeddings[m].atom_features is not None]
    if sel == "atomistic":
        return atomistic
    if sel == "mlip":
        return [m for m in atomistic if ctx.aligned.embeddings[m].energy is not None]
    return [m for m in atomistic if m in set(sel)]


def _atom_rows(ctx: Context, models: Sequence[str], max_atoms: int | None, seed: int) -> np.ndarray:
    counts = [ctx.aligned.embeddings[m].n_atoms for m in models]
    for m, c in zip(models, counts, strict=True):
        if not np.array_equal(c, counts[0]):
            raise ValueError(f"model {m} stores a different number of atoms per structure than {models[0]}.")
    total = int(counts[0].sum())
    if max_atoms is None or total <= max_atoms:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=int(max_atoms), replace=False))


def _split(n: int, max_test: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-matter's default split, and the first ``max_test`` test rows for LFRE."""
    from jaxalign.reconstruction import train_test_indices

    train, test = train_test_indices(n)
    return train, test, test if max_test is None else test[: int(max_test)]


def reconstruction(ctx: Context, entry: dict[str, Any]) -> dict[str, Any]:
    """GFRE and LFRE between the reconstruction models, atom level and cumulant level, and the cumulant-order
    matrix GFRE(φ(i) → φ(j)) for ``order_models``."""
    from jaxalign.descriptors import cumulant_descriptors
    from jaxalign.reconstruction import gfre, lfre

    rc = dict(ctx.cfg.get("reconstruction") or {})
    models = reconstruction_models(ctx)
    if len(models) < 2:
        entry["summary"] = f"skipped: {len(models)} atomistic model(s) selected (need 2)"
        return {"models": models}
    seed = int(rc.get("seed", 0))
    max_test = rc.get("lfre_max_test")
    levels = [lvl for lvl in ("atom", "cumulant") if rc.get(f"{lvl}_level", True)]
    order = int(rc.get("cumulant_order", 2))
    orders = [int(o) for o in rc.get("cumulant_orders", [1, 2, 3, 4, 5, 6, 7, 8])]
    families = {m: ctx.aligned.family(m) for m in models}
    order_sel = rc.get("order_models", "auto")
    if order_sel == "auto":
        order_models = list({families[m]: m for m in reversed(models)}.values())[::-1]
    else:
        order_models = [m for m in models if m in set(order_sel or [])]

    rows = _atom_rows(ctx, models, rc.get("max_atoms"), seed)
    embs = {m: ctx.aligned.embeddings[m] for m in models}
    dims = {m: embs[m].atom_features.shape[1] for m in models}

    # zero-pad atom features to the widest model (an isometry) so that one compilation serves every pair, unless
    # the widths differ so much (e.g. SOAP next to an MLIP) that padding would cost more than compiling
    atom_width = max(dims.values()) if max(dims.values()) <= 4 * min(dims.values()) else None

    @functools.cache
    def atom_x(m: str) -> np.ndarray:
        return compact(np.asarray(embs[m].atom_features[rows], dtype=np.float32), atom_width)

    n_train = ctx.n // 2
    components = rc.get("cumulant_components", "auto")

    def n_components(m: str, max_order: int) -> int:
        """Principal components of the atom features kept before the cumulants: ``auto`` keeps φ(max_order) below
        half the training structures (a linear map from more columns than training rows is underdetermined)."""
        if components is None:
            return dims[m]
        if components == "auto":
            return max(1, min(dims[m], n_train // (2 * max_order)))
        return max(1, min(dims[m], int(components)))

    @functools.cache
    def reduced(m: str, p: int) -> np.ndarray:
        a = np.asarray(embs[m].atom_features, dtype=np.float64)
        if p >= a.shape[1]:
            return a.astype(np.float32)
        a = a - a.mean(0)
        _, _, vt = np.linalg.svd(a, full_matrices=False)
        return (a @ vt[:p].T).astype(np.float32)

    @functools.cache
    def phi(m: str, o: int, p: int) -> np.ndarray:
        return np.asarray(cumulant_descriptors(reduced(m, p), embs[m].n_atoms, order=o), dtype=np.float32)

    p_cum = {m: n_components(m, order) for m in models}
    p_ord = {m: n_components(m, max(orders)) for m in order_models}
    width_c = compact_width(ctx.n, [order * p for p in p_cum.values()])
    width_o = compact_width(ctx.n, [max(orders) * p for p in p_ord.values()] or [1])

    @functools.cache
    def cum_x(m: str) -> np.ndarray:
        return compact(phi(m, order, p_cum[m]), width_c)

    @functools.cache
    def ord_x(m: str, o: int) -> np.ndarray:
        return compact(phi(m, max(orders), p_ord[m])[:, : o * p_ord[m]], width_o)

    splits = {"atom": _split(len(rows), max_test), "cumulant": _split(ctx.n, max_test)}

    def pair(level: str, a: str, b: str) -> dict[str, Any]:
        xa, xb = (atom_x(a), atom_x(b)) if level == "atom" else (cum_x(a), cum_x(b))
        da, db = (dims[a], dims[b]) if level == "atom" else (order * p_cum[a], order * p_cum[b])
        train, _, test_l = splits[level]
        k = max(2, min(da, db, train.size - 1))
        return {
            "gfre": gfre(xa, xb),
            "lfre": lfre(xa, xb, k=k, train_idx=train, test_idx=test_l),
            "lfre_k": k,
        }

    items = []
    for level in levels:
        items += [(f"{level}:{a}|{b}", functools.partial(pair, level, a, b)) for a in models for b in models if a != b]
    for m in order_models:
        items += [
            (f"order:{m}:{i}|{j}", functools.partial(lambda m, i, j: {"gfre": gfre(ord_x(m, i), ord_x(m, j))}, m, i, j))
            for i in orders
            for j in orders
            if i != j
        ]
    params = {**rc, "models": models, "order_models": order_models, "rows": int(rows.size)}
    values = ctx.run_items("reconstruction", ctx.key("reconstruction", params), items, entry)
    out: dict[str, Any] = {
        "models": models,
        "levels": levels,
        "order": order,
        "orders": orders,
        "order_models": order_models,
        "n_atoms_used": int(rows.size),
        "lfre_max_test": max_test,
        "components_cumulant": p_cum,
        "components_orders": p_ord,
    }
    for level in levels:
        for f in ("gfre", "lfre"):
            mat = _matrix(values, models, f, symmetric=False, prefix=f"{level}:")
            np.fill_diagonal(mat, 0.0)  # a space reconstructs itself exactly; not computed
            out[f"{level}_{f}"] = mat
    for m in order_models:
        mat = np.zeros((len(orders), len(orders)))
        for a, i in enumerate(orders):
            for b, j in enumerate(orders):
                if i != j:
                    mat[a, b] = values[f"order:{m}:{i}|{j}"]["gfre"]
        out[f"order:{m}"] = mat
    entry["summary"] = (
        f"{len(models)} models, levels {levels} ({rows.size} atoms; φ({order}) on {ctx.n} structures), "
        f"cumulant orders {orders} for {order_models}"
    )
    return out


# --------------------------------------------------------------------------------------------------- energy
def _residuals(e: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """E − (wᵀc + b), least squares (seed 000 eqs. 1–3)."""
    design = np.concatenate([comp, np.ones((comp.shape[0], 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, e, rcond=None)
    return e - design @ coef


def energy_errors(ctx: Context, dataset_summary: Mapping[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Energy-regression MAE per model with energies (seed 000 eqs. 1–4) against ``analysis.energy.reference``:
    ``dataset`` (reference energies in the data), ``consensus`` (for each model, the median over the *other*
    energy models of their composition-detrended energies) or a model id; ``auto`` = dataset when every structure
    has one, else consensus. Also per-structure |ΔE_ref − ΔE_f| per atom, for the error maps."""
    from jaxalign.energy import composition_matrix, energy_regression_mae

    ref_sel = (ctx.cfg.get("energy") or {}).get("reference", "auto")
    models = [m for m in ctx.models if ctx.aligned.embeddings[m].energy is not None]

    def skip(reason: str) -> dict[str, Any]:
        entry["summary"] = f"skipped: {reason}"
        return {"models": [], "reference": None, "target": None, "note": reason}

    if not models:
        return skip("no compared model predicts energies")
    first = ctx.aligned.embeddings[models[0]]
    if first.numbers is None:
        return skip("the dataset has no 3D structures (no compositions)")
    comp = np.asarray(composition_matrix(first.numbers, first.n_atoms)[0], dtype=np.float64)
    n_atoms = first.n_atoms.astype(np.float64)
    ref_energy = {r["id"]: r["energy"] for r in dataset_summary.get("records", [])}
    e_data = np.array([np.nan if ref_energy.get(i) is None else ref_energy[i] for i in ctx.aligned.ids.tolist()])
    if ref_sel == "auto":
        ref_sel = "dataset" if np.isfinite(e_data).all() else "consensus"
    if ref_sel == "dataset" and not np.isfinite(e_data).all():
        raise ValueError("analysis.energy.reference=dataset but some structures have no reference energy.")
    if ref_sel not in ("dataset", "consensus") and ref_sel not in models:
        raise ValueError(f"analysis.energy.reference={ref_sel!r}: use auto, dataset, consensus or one of {models}.")
    if ref_sel == "consensus" and len(models) < 2:
        return skip(f"no reference energies in the data and a consensus needs ≥ 2 energy models (have {models})")
    energies = {m: np.asarray(ctx.aligned.embeddings[m].energy, dtype=np.float64) for m in models}
    detrended = {m: _residuals(e, comp) for m, e in energies.items()}
    out: dict[str, Any] = {
        "models": models,
        "reference": ref_sel,
        "mae_ev": {},
        "mae_mev_atom": {},
        "per_structure": {},
    }
    for m in models:
        if ref_sel == "dataset":
            ref = e_data
        elif ref_sel == "consensus":
            ref = np.median(np.stack([detrended[o] for o in models if o != m]), axis=0)
        else:
            ref = energies[ref_sel]
        mae = float(energy_regression_mae(ref, energies[m], comp))
        per = np.abs(_residuals(ref, comp) - detrended[m]) / n_atoms * 1000.0
        out["mae_ev"][m] = mae
        out["mae_mev_atom"][m] = float(per.mean())
        out["per_structure"][m] = per
    if ref_sel == "dataset":
        out["target"] = _residuals(e_data, comp)
    elif ref_sel == "consensus":
        out["target"] = np.median(np.stack(list(detrended.values())), axis=0)
    else:
        out["target"] = detrended[ref_sel]
    entry["computed"] += len(models)
    best = min(out["mae_mev_atom"], key=out["mae_mev_atom"].get)
    entry["summary"] = (
        f"{len(models)} models vs {ref_sel} reference; lowest error {best} ({out['mae_mev_atom'][best]:.1f} meV/atom)"
    )
    return out


# --------------------------------------------------------------------------------------------------- maps
def structure_maps(ctx: Context, target: np.ndarray | None, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """2-D PCovR map of the structures per model (α = ``analysis.maps.alpha``; target: the reference energy
    residual when there is one, else a PCA, α = 1)."""
    from jaxalign.preprocessing import center_scale_total_variance
    from jaxalign.projection import pcovr

    alpha = float((ctx.cfg.get("maps") or {}).get("alpha", 0.5))
    y = np.zeros(ctx.n) if target is None else np.asarray(target, dtype=np.float64)
    if target is None or not np.isfinite(y).all() or y.std() == 0:
        y, alpha = np.zeros(ctx.n), 1.0
    else:
        y = (y - y.mean()) / y.std()
    key = ctx.key("maps", {"alpha": alpha, "y": content_key("y", {"y": np.round(y, 8).tolist()})})
    path = ctx.root / f"maps-{key}.npz"
    entry["summary"] = f"PCovR (α = {alpha:g}) maps of {ctx.n} structures for {len(ctx.models)} models"
    if path.exists():
        entry["cached"] += len(ctx.models)
        return read_npz(path)
    out = {}
    for m in ctx.models:
        x = np.asarray(center_scale_total_variance(ctx.compact_features(m)), dtype=np.float32)
        fit = pcovr(x, y.astype(np.float32), alpha=alpha, n_components=2)
        out[m] = np.asarray(fit.transform(x))
        entry["computed"] += 1
        beat()
    write_npz(path, out)
    return out


def umap_maps(ctx: Context, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """2-D UMAP embedding of the structures per model when ``umap-learn`` is installed (``analysis.maps.umap``:
    ``auto`` = when importable, ``false`` = never); empty otherwise."""
    setting = (ctx.cfg.get("maps") or {}).get("umap", "auto")
    if setting is False or setting == "false":
        return {}
    try:
        import umap
    except ImportError:
        if setting is True:
            raise ValueError(
                "analysis.maps.umap=true but umap-learn is not installed (pip install umap-learn)."
            ) from None
        return {}
    n_neighbors = min(15, ctx.n - 1)
    key = ctx.key("umap", {"n_neighbors": n_neighbors, "version": getattr(umap, "__version__", "?")})
    path = ctx.root / f"umap-{key}.npz"
    if path.exists():
        entry["cached"] += len(ctx.models)
        return read_npz(path)
    out = {}
    for m in ctx.models:
        reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=0)
        out[m] = np.asarray(reducer.fit_transform(ctx.features(m)), dtype=np.float32)
        entry["computed"] += 1
        beat()
    write_npz(path, out)
    return out
