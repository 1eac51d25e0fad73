"""Stage: feature reconstruction between the atomistic models (seed 003: GFRE/LFRE of atom features and cumulant
descriptors, Figs. 1–3; the cumulant orders of Fig. 8)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.features import compact, compact_width
from experiments.stages.context import Context, pair_matrix, seeded_rows


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
    return seeded_rows(int(counts[0].sum()), max_atoms, seed)


def environment_split(
    n: int, max_test: int | None, *, test_size: int | None = None, labels: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, test, LFRE test) rows. Default: scikit-matter's 50/50 split, LFRE on its first ``max_test`` test rows.
    With ``test_size``: a random sample of that many rows (at most half), stratified by ``labels`` (each stratum in
    proportion to its size), every other row training — seed 003 §III A: 1,000 environments sampled across the
    dataset's subsets, "all remaining environments" as train."""
    from jaxalign.reconstruction import train_test_indices

    if test_size is None:
        train, test = train_test_indices(n)
    else:
        test = _stratified(np.zeros(n, int) if labels is None else labels, min(int(test_size), n // 2), seed)
        train = np.setdiff1d(np.arange(n), test)
    return train, test, test if max_test is None else test[: int(max_test)]


def _stratified(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` rows without replacement, each label's share proportional to its count (largest remainders), sorted."""
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * size / counts.sum()
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: size - int(take.sum())]] += 1
    drawn = [rng.choice(np.flatnonzero(inverse == s), size=t, replace=False) for s, t in enumerate(take) if t]
    return np.sort(np.concatenate(drawn))


def _strata(ctx: Context, how: str | None) -> np.ndarray | None:
    """A label per structure: ``id_prefix`` (the part of the record id before the first "/", e.g. the collection
    g2 / s22 / dcdft of the default dataset or a subset of MAD), or None (no strata)."""
    if how in (None, "none"):
        return None
    if how != "id_prefix":
        raise ValueError(f"analysis.reconstruction.split.strata={how!r}: use id_prefix or null.")
    return np.array([str(i).split("/")[0] for i in ctx.aligned.ids.tolist()])


def reconstruction(ctx: Context, entry: dict[str, Any]) -> dict[str, Any]:
    """GFRE and LFRE between the reconstruction models, atom level and cumulant level, and for ``order_models`` the
    cumulant-order matrices GFRE(φ(i) → φ(j)) (seed 003 Fig. 8; nested, so 0 for i > j) and GFRE(κ̃_i → κ̃_j) between
    single orders (not nested: whether a lower order holds a higher one's information can come out either way)."""
    from jaxalign.descriptors import cumulant_descriptors
    from jaxalign.reconstruction import gfre, lfre

    rc = dict(ctx.cfg.get("reconstruction") or {})
    models = reconstruction_models(ctx)
    if len(models) < 2:
        entry["summary"] = f"skipped: {len(models)} atomistic model(s) selected (need 2)"
        return {"models": models}
    seed = int(rc.get("seed", 0))
    scale = str(rc.get("scale", "train"))  # the rows the feature scalers are fitted on (seed 003: "all")
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

    split_cfg = dict(rc.get("split") or {})
    test_size = split_cfg.get("test")
    strata = _strata(ctx, split_cfg.get("strata", "id_prefix"))
    atom_labels = None if strata is None else np.repeat(strata, embs[models[0]].n_atoms)[rows]
    splits = {
        "atom": environment_split(len(rows), max_test, test_size=test_size, labels=atom_labels, seed=seed),
        "cumulant": environment_split(ctx.n, max_test, test_size=test_size, labels=strata, seed=seed),
    }
    n_train = splits["cumulant"][0].size
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

    @functools.cache
    def single_x(m: str, o: int, upto: int | None = None) -> np.ndarray:
        """κ̃_o alone (or κ̃_o … κ̃_upto): blocks of φ(max) that no lower order's φ holds."""
        p = p_ord[m]
        return compact(phi(m, max(orders), p)[:, (o - 1) * p : (upto or o) * p], width_o)

    top_orders = sorted(orders)[-2:] if len(orders) >= 2 else []
    order_lfre = bool(rc.get("order_lfre", False))

    def cumulant_gfre(xa: np.ndarray, xb: np.ndarray) -> float:
        train, test, _ = splits["cumulant"]
        return gfre(xa, xb, train_idx=train, test_idx=test, scale=scale)

    def order_pair(m: str, i: int, j: int) -> dict[str, Any]:
        """GFRE(φ(i) → φ(j)); with ``order_lfre`` also LFRE at k = the larger of the two widths (seed 003 Fig. 8)."""
        xa, xb = ord_x(m, i), ord_x(m, j)
        out: dict[str, Any] = {"gfre": cumulant_gfre(xa, xb)}
        if order_lfre:
            train, _, test_l = splits["cumulant"]
            k = max(2, min(max(i, j) * p_ord[m], train.size - 1))
            out.update(lfre=lfre(xa, xb, k=k, train_idx=train, test_idx=test_l, scale=scale), lfre_k=k)
        return out

    def next_gfre(m: str) -> dict[str, float]:
        below, top = top_orders
        return {"gfre": cumulant_gfre(ord_x(m, below), single_x(m, below + 1, top))}

    def pair(level: str, a: str, b: str) -> dict[str, Any]:
        xa, xb = (atom_x(a), atom_x(b)) if level == "atom" else (cum_x(a), cum_x(b))
        da, db = (dims[a], dims[b]) if level == "atom" else (order * p_cum[a], order * p_cum[b])
        train, test, test_l = splits[level]
        k = max(2, min(da, db, train.size - 1))
        return {
            "gfre": gfre(xa, xb, train_idx=train, test_idx=test, scale=scale),
            "lfre": lfre(xa, xb, k=k, train_idx=train, test_idx=test_l, scale=scale),
            "lfre_k": k,
        }

    items = []
    for level in levels:
        items += [(f"{level}:{a}|{b}", functools.partial(pair, level, a, b)) for a in models for b in models if a != b]
    for m in order_models:
        items += [
            (f"order:{m}:{i}|{j}", functools.partial(order_pair, m, i, j)) for i in orders for j in orders if i != j
        ]
        items += [
            (
                f"single:{m}:{i}|{j}",
                functools.partial(lambda m, i, j: {"gfre": cumulant_gfre(single_x(m, i), single_x(m, j))}, m, i, j),
            )
            for i in orders
            for j in orders
            if i != j
        ]
        if top_orders:  # φ(M') → the orders above it: is the highest order new information?
            items.append((f"next:{m}:{top_orders[0]}|{top_orders[1]}", functools.partial(next_gfre, m)))
    params = {**rc, "models": models, "order_models": order_models, "rows": int(rows.size)}
    values = ctx.run_items("reconstruction", ctx.key("reconstruction", params), items, entry)
    out: dict[str, Any] = {
        "models": models,
        "levels": levels,
        "order": order,
        "orders": orders,
        "order_models": order_models,
        "n_atoms_used": int(rows.size),
        "test_rows": {level: int(splits[level][1].size) for level in splits},
        "lfre_max_test": max_test,
        "components_cumulant": p_cum,
        "components_orders": p_ord,
    }
    for level in levels:
        for f in ("gfre", "lfre"):
            mat = pair_matrix(values, models, f, symmetric=False, prefix=f"{level}:")
            np.fill_diagonal(mat, 0.0)  # a space reconstructs itself exactly; not computed
            out[f"{level}_{f}"] = mat

    def order_matrix(kind: str, m: str, field: str) -> np.ndarray:
        """(orders, orders) matrix of ``field`` over the items ``<kind>:<m>:<i>|<j>``; 0 on the diagonal."""
        mat = np.zeros((len(orders), len(orders)))
        for a, i in enumerate(orders):
            for b, j in enumerate(orders):
                if i != j:
                    mat[a, b] = values[f"{kind}:{m}:{i}|{j}"][field]
        return mat

    for m in order_models:
        out[f"order:{m}"] = order_matrix("order", m, "gfre")  # φ(i) → φ(j): nested, 0 for i > j by construction
        out[f"single:{m}"] = order_matrix("single", m, "gfre")  # κ̃_i → κ̃_j
        if order_lfre:
            out[f"order_lfre:{m}"] = order_matrix("order", m, "lfre")
        if top_orders:
            out[f"next:{m}"] = values[f"next:{m}:{top_orders[0]}|{top_orders[1]}"]["gfre"]
    entry["summary"] = (
        f"{len(models)} models, levels {levels} ({rows.size} atoms; φ({order}) on {ctx.n} structures), "
        f"cumulant orders {orders} for {order_models}"
    )
    return out
